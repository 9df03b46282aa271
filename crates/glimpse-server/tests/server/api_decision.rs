//! Decision controls (issue 24) over HTTP: `minConfidence` + `fallback` abstain, `topK` trims,
//! `multiLabel` is refused for softmax models without a charge, every bad value is a 400 naming
//! its field, by GET query and POST form alike, and the fields are part of the Idempotency-Key
//! fingerprint.

use crate::support::*;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

const CLIP: &str = "/api/image-classification/clip";
const VIT: &str = "/api/image-classification/vit";
const LABELS: &str = "car,person,document,truck";

/// An upload form with extra text fields.
fn form(image: &str, fields: &[(&str, &str)]) -> Form {
    let mut f = Form::new().part(
        "image",
        Part::bytes(image_bytes(image)).file_name(image.to_string()),
    );
    for (k, v) in fields {
        f = f.text(k.to_string(), v.to_string());
    }
    f
}

async fn ok_json(req: reqwest::RequestBuilder) -> Value {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// The answer without its timing, which differs call to call.
fn untimed(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("timingMs");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_confidence_abstains_with_the_fallback_by_form_and_query() {
    let s = TestServer::builder().credits(20).start().await;
    let (host, _) = image_host(image_bytes("motorcycle.jpg")).await;
    let image_url = format!("{host}/m.jpg");
    let base = untimed(ok_json(s.get_by_url(CLIP, &image_url).query(&[("labels", LABELS)])).await);
    assert!(base.get("abstained").is_none(), "{base}");
    let top = base["confidence"].as_f64().unwrap();
    let above = format!("{}", top + (1.0 - top) / 2.0);
    let below = format!("{}", top / 2.0);

    // Above the top score, by POST form: the fallback, the top score kept, `abstained`.
    let req = s
        .http
        .post(s.url(CLIP))
        .header("X-API-Key", &s.key)
        .multipart(form(
            "motorcycle.jpg",
            &[
                ("labels", LABELS),
                ("minConfidence", above.as_str()),
                ("fallback", "none of these"),
            ],
        ));
    let got = untimed(ok_json(req).await);
    assert_eq!(got["result"], "none of these", "{got}");
    assert_eq!(got["confidence"], base["confidence"], "{got}");
    assert_eq!(got["abstained"], true, "{got}");
    assert_eq!(got["predictions"], base["predictions"], "{got}");

    // By GET query, with the default fallback.
    let req = s
        .get_by_url(CLIP, &image_url)
        .query(&[("labels", LABELS), ("minConfidence", above.as_str())]);
    let got = untimed(ok_json(req).await);
    assert_eq!(got["result"], "other", "{got}");
    assert_eq!(got["abstained"], true, "{got}");

    // Below the top score: exactly the answer without the field.
    let req = s
        .get_by_url(CLIP, &image_url)
        .query(&[("labels", LABELS), ("minConfidence", below.as_str())]);
    assert_eq!(untimed(ok_json(req).await), base);
    let req = s
        .http
        .post(s.url(CLIP))
        .header("X-API-Key", &s.key)
        .multipart(form(
            "motorcycle.jpg",
            &[
                ("labels", LABELS),
                ("minConfidence", below.as_str()),
                ("fallback", "x"),
            ],
        ));
    assert_eq!(untimed(ok_json(req).await), base);

    // ViT too: its top category is the one replaced.
    let vit_base = untimed(ok_json(s.get_by_url(VIT, &image_url)).await);
    let req = s
        .get_by_url(VIT, &image_url)
        .query(&[("minConfidence", "1")]);
    let got = untimed(ok_json(req).await);
    assert_eq!(got["result"], "other", "{got}");
    assert_eq!(got["confidence"], vit_base["confidence"], "{got}");
    assert_eq!(got["abstained"], true, "{got}");
    assert_eq!(got["imagenet"], vit_base["imagenet"], "{got}");
    // Seven successful calls, each charged once.
    assert_eq!(s.balance().await, 20 - 7 * s.credits_per_call());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_k_trims_predictions() {
    let s = TestServer::builder().credits(20).start().await;
    let req = s
        .http
        .post(s.url(CLIP))
        .header("X-API-Key", &s.key)
        .multipart(form("coffee.jpg", &[("labels", LABELS)]));
    let base = untimed(ok_json(req).await);
    let req = s
        .http
        .post(s.url(CLIP))
        .header("X-API-Key", &s.key)
        .multipart(form("coffee.jpg", &[("labels", LABELS), ("topK", "2")]));
    let got = untimed(ok_json(req).await);
    let preds = got["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 2, "{got}");
    assert_eq!(preds[..], base["predictions"].as_array().unwrap()[..2]);
    assert_eq!(got["result"], base["result"]);
    assert_eq!(got["confidence"], base["confidence"]);

    // By query on ViT: `predictions` trimmed, `imagenet` keeps its 5.
    let (host, _) = image_host(image_bytes("coffee.jpg")).await;
    let req = s
        .get_by_url(VIT, &format!("{host}/c.jpg"))
        .query(&[("topK", "1")]);
    let got = ok_json(req).await;
    assert_eq!(got["predictions"].as_array().unwrap().len(), 1, "{got}");
    assert_eq!(got["imagenet"].as_array().unwrap().len(), 5, "{got}");
    assert_eq!(got["result"], got["predictions"][0]["label"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_label_on_a_softmax_model_is_a_free_400() {
    let s = TestServer::builder().credits(5).start().await;
    for (name, req) in [
        (
            "clip form",
            s.http
                .post(s.url(CLIP))
                .header("X-API-Key", &s.key)
                .multipart(form("coffee.jpg", &[("multiLabel", "true")])),
        ),
        (
            "clip query",
            s.http
                .post(s.url(CLIP))
                .header("X-API-Key", &s.key)
                .query(&[("multiLabel", "true"), ("minConfidence", "0.3")])
                .multipart(form("coffee.jpg", &[])),
        ),
        (
            "vit query",
            s.get_by_url(VIT, "http://example.com/a.jpg")
                .query(&[("multiLabel", "true")]),
        ),
    ] {
        let msg = s.row(name, req, 400, "VALIDATION_ERROR").await;
        assert!(
            msg.contains("multiLabel") && msg.contains("softmax") && msg.contains("-tiny"),
            "{name}: {msg}"
        );
    }
    assert_eq!(s.balance().await, 5);
    // multiLabel=false asks nothing: an ordinary answer, no `results`.
    let req = s
        .http
        .post(s.url(CLIP))
        .header("X-API-Key", &s.key)
        .multipart(form("coffee.jpg", &[("multiLabel", "false")]));
    let got = ok_json(req).await;
    assert!(got.get("results").is_none(), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_decision_values_are_free_400s_naming_the_field() {
    let s = TestServer::builder().credits(5).start().await;
    let long = "x".repeat(65);
    let cases: &[(&str, &str)] = &[
        ("minConfidence", "high"),
        ("minConfidence", "-0.5"),
        ("minConfidence", "1.5"),
        ("minConfidence", "NaN"),
        ("fallback", long.as_str()),
        ("topK", "0"),
        ("topK", "65"),
        ("topK", "2.5"),
        ("topK", "three"),
        ("multiLabel", "yes"),
        ("multiLabel", "1"),
    ];
    for (field, value) in cases {
        for endpoint in [CLIP, VIT] {
            let by_query = s
                .http
                .post(s.url(endpoint))
                .header("X-API-Key", &s.key)
                .query(&[(field, value)])
                .multipart(form("coffee.jpg", &[]));
            let by_form = s
                .http
                .post(s.url(endpoint))
                .header("X-API-Key", &s.key)
                .multipart(form("coffee.jpg", &[(field, value)]));
            for (how, req) in [("query", by_query), ("form", by_form)] {
                let name = format!("{endpoint} {how} {field}={value}");
                let msg = s.row(&name, req, 400, "VALIDATION_ERROR").await;
                assert!(msg.contains(field), "{name}: {msg}");
            }
        }
    }
    // An empty query `fallback=` is a fallback of no characters (an empty form field is an
    // unfilled one, as for every field).
    let req = s
        .get_by_url(CLIP, "http://example.com/a.jpg")
        .query(&[("fallback", "")]);
    let msg = s.row("empty fallback", req, 400, "VALIDATION_ERROR").await;
    assert!(msg.contains("fallback"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_fields_are_part_of_the_idempotency_fingerprint() {
    let s = TestServer::builder().credits(5).start().await;
    let send = |fields: &[(&str, &str)]| {
        s.http
            .post(s.url(CLIP))
            .header("X-API-Key", &s.key)
            .header("Idempotency-Key", "decide-1")
            .multipart(form("coffee.jpg", fields))
    };
    ok_json(send(&[("topK", "2")])).await;
    let res = send(&[("topK", "3")]).send().await.unwrap();
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_error(status, &body, 422, "IDEMPOTENCY_MISMATCH");
    assert_eq!(s.balance().await, 5 - s.credits_per_call());
}
