//! The ViT endpoint's other classifiers (issue 23): a fine-tune answers its own labels with
//! `transformers`' probabilities and no `imagenet` block; DeiT (distilled) answers ImageNet
//! categories; decision controls work on a fine-tune's labels.

use crate::support::*;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

const VIT: &str = "/api/image-classification/vit";

fn reference(name: &str) -> Value {
    let path = fixtures().join("expected").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn classify(s: &TestServer, model: &str, extra: &[(&str, &str)]) -> Value {
    let mut form = Form::new().part(
        "image",
        Part::bytes(image_bytes("astronaut.jpg")).file_name("astronaut.jpg"),
    );
    for (k, v) in extra {
        form = form.text(k.to_string(), v.to_string());
    }
    let res = s
        .http
        .post(s.url(VIT))
        .query(&[("vitModel", model)])
        .header("X-API-Key", &s.key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

async fn server() -> TestServer {
    TestServer::builder()
        .credits(10)
        .extra_vit_models(vec![
            fixtures().join("models/vit-tiny-ft").display().to_string(),
            fixtures().join("models/deit-tiny").display().to_string(),
        ])
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fine_tune_answers_its_own_labels() {
    let s = server().await;
    let got = classify(&s, "vit-tiny-ft", &[]).await;
    assert_eq!(got["model"], "vit", "{got}");
    assert_eq!(got["modelId"], "vit-tiny-ft", "{got}");
    assert!(got.get("imagenet").is_none(), "{got}");

    // transformers' probabilities for the same image, by label.
    let exp = reference("vit-tiny-ft");
    let probs: Vec<f64> = exp["images"]["astronaut.jpg"]["probs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let labels = ["cat", "dog", "bird", "fish", "horse"];
    let preds = got["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), labels.len(), "{got}");
    for p in preds {
        let i = labels
            .iter()
            .position(|l| *l == p["label"].as_str().unwrap())
            .unwrap_or_else(|| panic!("not one of the model's labels: {p}"));
        let score = p["score"].as_f64().unwrap();
        assert!((score - probs[i]).abs() < 1e-4, "{p} vs {}", probs[i]);
    }
    let best = (0..labels.len())
        .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
        .unwrap();
    assert_eq!(got["result"], labels[best], "{got}");
    assert_eq!(got["result"], preds[0]["label"], "{got}");

    // Decision controls on the model's own labels.
    let got = classify(
        &s,
        "vit-tiny-ft",
        &[("topK", "2"), ("minConfidence", "0.99")],
    )
    .await;
    assert_eq!(got["predictions"].as_array().unwrap().len(), 2, "{got}");
    assert_eq!(got["result"], "other", "{got}");
    assert_eq!(got["abstained"], true, "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deit_answers_imagenet_categories() {
    let s = server().await;
    let got = classify(&s, "deit-tiny", &[]).await;
    assert_eq!(got["modelId"], "deit-tiny", "{got}");
    assert_eq!(got["predictions"].as_array().unwrap().len(), 6, "{got}");
    let top = &reference("deit-tiny")["images"]["astronaut.jpg"]["top5"][0];
    let imagenet = got["imagenet"].as_array().expect("imagenet block");
    assert_eq!(imagenet[0]["label"], top["label"], "{got}");
    let score = imagenet[0]["score"].as_f64().unwrap();
    assert!(
        (score - top["prob"].as_f64().unwrap()).abs() < 1e-4,
        "{got}"
    );
}
