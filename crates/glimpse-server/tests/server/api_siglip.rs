//! A SigLIP model on the zero-shot route (issue 23): served by `clipModel` like a CLIP model, it
//! answers the seed's shape with independent sigmoid scores (the in-process pipeline's, which do
//! not sum to 1), and `multiLabel=true` is allowed for it.

use crate::support::*;
use glimpse_core::backend::PixelBatch;
use glimpse_core::{ModelFamily, Network, ServedModel};
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use std::sync::Arc;

const CLIP: &str = "/api/image-classification/clip";
const LABELS: &str = "car,person,document,truck,cat";

/// What the in-process pipeline answers for `image` on the SigLIP fixture.
fn expected_siglip(image_name: &str) -> glimpse_core::response::ClassificationResponse {
    let dir = fixtures().join("models/siglip-tiny");
    let net = glimpse_candle::load_siglip(&dir, &glimpse_candle::LoadOptions::default()).unwrap();
    let model = ServedModel::new(
        "siglip-tiny",
        ModelFamily::Siglip,
        Network::ZeroShot(Arc::new(net)),
    )
    .unwrap();
    let img = glimpse_core::image::decode(
        &image_bytes(image_name),
        &glimpse_core::image::DecodeLimits::default(),
    )
    .unwrap();
    let cfg = model.preprocess_config();
    let (h, w) = cfg.output_size();
    let px = PixelBatch::stack(&[cfg.preprocess(&img)], h, w);
    let labels = glimpse_core::labels::parse_labels(Some(LABELS)).unwrap();
    let templates = vec![glimpse_core::labels::DEFAULT_TEMPLATE.to_string()];
    model
        .classify_all(&px, &labels, &templates)
        .unwrap()
        .remove(0)
}

fn upload(image: &str, fields: &[(&str, &str)]) -> Form {
    let mut f = Form::new().part(
        "image",
        Part::bytes(image_bytes(image)).file_name(image.to_string()),
    );
    for (k, v) in fields {
        f = f.text(k.to_string(), v.to_string());
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siglip_answers_on_the_clip_route_with_sigmoid_scores() {
    let s = TestServer::builder()
        .credits(10)
        .clip_model(&fixtures().join("models/siglip-tiny"))
        .start()
        .await;
    let post = |fields: &[(&str, &str)]| {
        s.http
            .post(s.url(CLIP))
            .header("X-API-Key", &s.key)
            .multipart(upload("chelsea.jpg", fields))
    };
    let res = post(&[("labels", LABELS), ("clipModel", "siglip-tiny")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let got: Value = res.json().await.unwrap();
    let want = expected_siglip("chelsea.jpg");
    assert_eq!(got["model"], "clip", "{got}");
    assert_eq!(got["modelId"], "siglip-tiny", "{got}");
    assert_eq!(got["result"], want.result.as_str(), "{got}");
    let preds = got["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 5, "{got}");
    let mut sum = 0.0;
    for (g, e) in preds.iter().zip(&want.predictions) {
        assert_eq!(g["label"], e.label.as_str(), "{got}");
        let score = g["score"].as_f64().unwrap();
        assert!((score - f64::from(e.score)).abs() < 1e-6, "{got}");
        assert!(score > 0.0 && score < 1.0, "{got}");
        sum += score;
    }
    // Independent sigmoids: unlike CLIP's softmax, they do not sum to 1.
    assert!((sum - 1.0).abs() > 1e-2, "scores sum to {sum}: {got}");

    // multiLabel is allowed: every label at or above minConfidence, highest first.
    let threshold = f64::from(want.predictions[2].score);
    let t = threshold.to_string();
    let res = post(&[
        ("labels", LABELS),
        ("multiLabel", "true"),
        ("minConfidence", t.as_str()),
    ])
    .send()
    .await
    .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let multi: Value = res.json().await.unwrap();
    let results = multi["results"].as_array().unwrap();
    let expected: Vec<&str> = want
        .predictions
        .iter()
        .filter(|p| f64::from(p.score) >= threshold)
        .map(|p| p.label.as_str())
        .collect();
    let labels: Vec<&str> = results
        .iter()
        .map(|r| r["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, expected, "{multi}");
    assert!(labels.len() >= 3, "{multi}");
    let charged = s.credits - s.balance().await;
    assert_eq!(charged, 2 * s.credits_per_call(), "both calls charged once");
}
