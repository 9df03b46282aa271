//! The batch routes (issue 25): `POST /api/image-classification/{clip,vit}/batch` answer every
//! item as the single route would, in order; a bad item fails only itself and is not charged; a
//! key that cannot pay for every item gets 402 before any work; SSRF refusals are per item (with
//! a loopback canary that must see no connection); the items share forward passes; limits and
//! `Idempotency-Key` hold.

use base64::Engine as _;
use glimpse_core::Task;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

use crate::support::upstream::Canary;
use crate::support::*;

const CLIP_BATCH: &str = "/api/image-classification/clip/batch";
const VIT_BATCH: &str = "/api/image-classification/vit/batch";
const VIT: &str = "/api/image-classification/vit";
const LABELS: &str = "car,document,motorcycle,truck,person,other";

fn images_form(images: &[(&str, Vec<u8>)], fields: &[(&str, &str)]) -> Form {
    let mut f = Form::new();
    for (name, bytes) in images {
        f = f.part(
            "image",
            Part::bytes(bytes.clone()).file_name(name.to_string()),
        );
    }
    for (k, v) in fields {
        f = f.text(k.to_string(), v.to_string());
    }
    f
}

fn data_uri(name: &str) -> String {
    format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(image_bytes(name))
    )
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value, Option<i64>) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let credits = res
        .headers()
        .get("x-credits-remaining")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"));
    (status, body, credits)
}

/// `results[i]` without `index` and `timingMs`, for comparing with a single-route answer.
fn answer_of(item: &Value) -> Value {
    let mut v = item.clone();
    let m = v.as_object_mut().unwrap();
    m.remove("index");
    m.remove("timingMs");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_batch_answers_in_order_and_charges_only_answered_items() {
    let s = TestServer::builder().credits(20).start().await;
    let names = ["motorcycle.jpg", "page.jpg", "chelsea.jpg"];
    let images = vec![
        (names[0], image_bytes(names[0])),
        ("garbage.jpg", b"this is not an image".to_vec()),
        (names[1], image_bytes(names[1])),
        ("empty.jpg", Vec::new()),
        (names[2], image_bytes(names[2])),
    ];
    let req = s
        .http
        .post(s.url(CLIP_BATCH))
        .header("X-API-Key", &s.key)
        .multipart(images_form(&images, &[("labels", LABELS)]));
    let (status, body, credits) = send(req).await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 5, "{body}");
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], i, "{body}");
    }
    for (i, name) in [(0, names[0]), (2, names[1]), (4, names[2])] {
        assert_matches(&results[i], &expected_clip(name, LABELS));
    }
    for i in [1, 3] {
        let e = &results[i]["error"];
        assert_eq!(e["code"], "VALIDATION_ERROR", "{body}");
        assert!(e["message"].as_str().unwrap().len() > 5, "{body}");
        assert_eq!(results[i].as_object().unwrap().len(), 2, "{body}");
    }
    // Three answered items, three calls' credits; the header tells the balance after.
    let cost = s.credits_per_call();
    assert_eq!(s.balance().await, 20 - 3 * cost);
    assert_eq!(credits, Some(20 - 3 * cost));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_urls_and_data_uris_with_per_item_errors() {
    let s = TestServer::builder().credits(20).start().await;
    let (host, hits) = image_host(image_bytes("motorcycle.jpg")).await;
    let body = json!({
        "urls": [
            format!("{host}/m.jpg"),
            data_uri("page.jpg"),
            "ftp://example.com/a.jpg",
            "data:image/png;base64,@@@",
        ],
        "labels": ["car", "document", "motorcycle", "truck", "person", "other"],
        "topK": 2,
    });
    let req = s
        .http
        .post(s.url(CLIP_BATCH))
        .header("X-API-Key", &s.key)
        .json(&body);
    let (status, got, _) = send(req).await;
    assert_eq!(status, 200, "{got}");
    let results = got["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    let mut want = expected_clip("motorcycle.jpg", LABELS);
    want.predictions.truncate(2);
    assert_eq!(results[0]["result"], want.result.as_str(), "{got}");
    assert_eq!(results[0]["predictions"].as_array().unwrap().len(), 2);
    let page = expected_clip("page.jpg", LABELS);
    assert_eq!(results[1]["result"], page.result.as_str(), "{got}");
    assert_eq!(results[2]["error"]["code"], "VALIDATION_ERROR", "{got}");
    assert_eq!(results[3]["error"]["code"], "VALIDATION_ERROR", "{got}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(s.balance().await, 20 - 2 * s.credits_per_call());

    // The same items through the vit route answer what the single vit route answers.
    let (host2, _) = image_host(image_bytes("chelsea.jpg")).await;
    let single = s.get_by_url(VIT, &format!("{host2}/c.jpg"));
    let (status, single, _) = send(single).await;
    assert_eq!(status, 200, "{single}");
    let req = s
        .http
        .post(s.url(VIT_BATCH))
        .header("X-API-Key", &s.key)
        .json(&json!({"urls": [format!("{host2}/c.jpg")]}));
    let (status, got, _) = send(req).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(answer_of(&got["results"][0]), answer_of(&single));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_refusals_are_per_item_and_never_connect() {
    let canary = Canary::start().await;
    let s = TestServer::builder()
        .credits(10)
        .allow_private_urls(false)
        .start()
        .await;
    let urls = json!({"urls": [
        format!("http://127.0.0.1:{}/x.jpg", canary.port()),
        data_uri("motorcycle.jpg"),
        format!("http://[::ffff:127.0.0.1]:{}/x.jpg", canary.port()),
        format!("http://localhost:{}/x.jpg", canary.port()),
    ], "labels": LABELS});
    let req = s
        .http
        .post(s.url(CLIP_BATCH))
        .header("X-API-Key", &s.key)
        .json(&urls);
    let (status, got, _) = send(req).await;
    assert_eq!(status, 200, "{got}");
    let results = got["results"].as_array().unwrap();
    assert_matches(&results[1], &expected_clip("motorcycle.jpg", LABELS));
    for i in [0, 2, 3] {
        assert_eq!(results[i]["error"]["code"], "VALIDATION_ERROR", "{got}");
    }
    assert_eq!(canary.accepted(), 0, "a refused URL reached the canary");
    assert_eq!(s.balance().await, 10 - s.credits_per_call());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_cannot_pay_for_every_item_gets_402_before_any_work() {
    let s = TestServer::builder().credits(2).start().await;
    let (host, hits) = image_host(image_bytes("motorcycle.jpg")).await;
    let urls: Vec<String> = (0..3).map(|i| format!("{host}/{i}.jpg")).collect();
    let req = s
        .http
        .post(s.url(CLIP_BATCH))
        .header("X-API-Key", &s.key)
        .json(&json!({"urls": urls}));
    let (status, body, credits) = send(req).await;
    assert_error(
        reqwest::StatusCode::from_u16(status).unwrap(),
        &body,
        402,
        "INSUFFICIENT_CREDITS",
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(s.balance().await, 2);
    assert_eq!(credits, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_on_items_bytes_and_fields_are_clear_errors() {
    let s = TestServer::builder()
        .credits(50)
        .max_batch_images(3)
        .max_batch_bytes(200 * 1024)
        .start()
        .await;
    let img = image_bytes("motorcycle.jpg");
    let post = |form: Form| {
        s.http
            .post(s.url(CLIP_BATCH))
            .header("X-API-Key", &s.key)
            .multipart(form)
    };
    let four: Vec<_> = (0..4).map(|_| ("m.jpg", img.clone())).collect();
    let (status, body, _) = send(post(images_form(&four, &[]))).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("at most 3"),
        "{body}"
    );
    // Over the request's byte limit (each image under the upload limit).
    let big: Vec<_> = (0..3).map(|_| ("big.png", vec![7u8; 100 * 1024])).collect();
    let (status, body, _) = send(post(images_form(&big, &[]))).await;
    assert_eq!(status, 413, "{body}");
    // JSON: too many urls, no urls, unknown field, bad model, multiLabel on a softmax model.
    for (json, code) in [
        (
            json!({"urls": ["https://a.example/1", "https://a.example/2", "https://a.example/3", "https://a.example/4"]}),
            400,
        ),
        (json!({"urls": []}), 400),
        (json!({"urls": ["https://a.example/1"], "lables": "x"}), 400),
        (
            json!({"urls": ["https://a.example/1"], "clipModel": "nope"}),
            400,
        ),
        (
            json!({"urls": ["https://a.example/1"], "multiLabel": true}),
            400,
        ),
        (json!({"images": []}), 400),
    ] {
        let req = s
            .http
            .post(s.url(CLIP_BATCH))
            .header("X-API-Key", &s.key)
            .json(&json);
        let (status, body, _) = send(req).await;
        assert_eq!(status, code, "{json}: {body}");
        assert_eq!(body["code"], "VALIDATION_ERROR", "{json}: {body}");
    }
    let (status, body, _) = send(post(Form::new().text("labels", "a,b"))).await;
    assert_eq!(status, 400, "{body}");
    let (status, _, _) = send(s.http.post(s.url(CLIP_BATCH)).json(&json!({"urls": []}))).await;
    assert_eq!(status, 401);
    assert_eq!(s.balance().await, 50, "refused requests are free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_32_shares_forward_passes() {
    let s = TestServer::builder()
        .credits(100)
        .batch_size(8)
        .batch_window_ms(50)
        .start()
        .await;
    let batcher = &s
        .state
        .models()
        .default_for(Task::ZeroShot)
        .unwrap()
        .batcher;
    let before = batcher.stats();
    let images: Vec<_> = (0..32)
        .map(|_| ("m.jpg", image_bytes("motorcycle.jpg")))
        .collect();
    let req = s
        .http
        .post(s.url(CLIP_BATCH))
        .header("X-API-Key", &s.key)
        .multipart(images_form(&images, &[("labels", LABELS)]));
    let (status, body, _) = send(req).await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 32);
    // Every item is the single route's answer (scores within 1e-5: a pass of several images may
    // round its last bits differently from a pass of one).
    let want = expected_clip("motorcycle.jpg", LABELS);
    for r in results {
        assert_matches(r, &want);
    }
    let after = batcher.stats();
    let passes = after.batches - before.batches;
    assert_eq!(after.jobs - before.jobs, 32);
    assert!(
        passes < 32 && after.max_batch_seen > 1,
        "{passes} passes: {after:?}"
    );
    // /metrics shows it too: passes of more than one image.
    let metrics = s.get_text("/metrics").await;
    let one = metrics
        .lines()
        .find(|l| l.starts_with("glimpse_batch_size_bucket{le=\"1\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap();
    let count = metrics
        .lines()
        .find(|l| l.starts_with("glimpse_batch_size_count"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap();
    assert!(count > one, "no pass above one image:\n{metrics}");
    assert_eq!(s.balance().await, 100 - 32 * s.credits_per_call());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_replays_a_batch_without_a_second_charge() {
    let s = TestServer::builder().credits(10).start().await;
    let req = || {
        s.http
            .post(s.url(CLIP_BATCH))
            .header("X-API-Key", &s.key)
            .header("Idempotency-Key", "batch-1")
            .json(&json!({"urls": [data_uri("motorcycle.jpg"), data_uri("page.jpg")], "labels": LABELS}))
    };
    let (status, first, _) = send(req()).await;
    assert_eq!(status, 200, "{first}");
    let (status, again, _) = send(req()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(first, again);
    assert_eq!(s.balance().await, 10 - 2 * s.credits_per_call());
    // The same key with another body is refused.
    let other = s
        .http
        .post(s.url(CLIP_BATCH))
        .header("X-API-Key", &s.key)
        .header("Idempotency-Key", "batch-1")
        .json(&json!({"urls": [data_uri("page.jpg")]}));
    let (status, body, _) = send(other).await;
    assert_eq!(status, 422, "{body}");
}
