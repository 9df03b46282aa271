//! Money and back-pressure over HTTP: a success costs exactly `credits_per_call` and the header
//! matches the store; a server failure refunds; idempotent retries charge once; the rate limit
//! and the in-flight limit answer 429/503 with Retry-After.

mod api_support;

use std::sync::Arc;
use std::time::Duration;

use api_support::*;
use glimpse_core::backend::{ImageClassifier, PixelBatch, ZeroShotModel};
use glimpse_core::preprocess::{PreprocessConfig, ResizeTarget};
use glimpse_core::{CoreError, Result as CoreResult};
use glimpse_server::Models;
use reqwest::multipart::{Form, Part};

const CLIP: &str = "/api/image-classification/clip";
const VIT: &str = "/api/image-classification/vit";

fn form(name: &str) -> Form {
    Form::new().part(
        "image",
        Part::bytes(image_bytes(name)).file_name(name.to_string()),
    )
}

async fn json(res: reqwest::Response) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_costs_exactly_credits_per_call() {
    let s = start(10, |c| c.credits_per_call = 3).await;
    let res = s
        .http
        .post(s.url(CLIP))
        .header("X-API-Key", &s.key)
        .query(&[("labels", "car,person,document")])
        .multipart(form("motorcycle.jpg"))
        .send()
        .await
        .unwrap();
    let (status, headers, body) = json(res).await;
    assert_eq!(status, 200, "{body}");
    assert_matches(
        &body,
        &expected_clip("motorcycle.jpg", "car,person,document"),
    );
    assert_eq!(s.balance().await, 7);
    assert_eq!(headers["x-credits-remaining"], "7");

    // ViT by URL (GET), with the extra `imagenet` field.
    let (host, _) = image_host(image_bytes("grace_hopper.jpg")).await;
    let res = s
        .get_by_url(VIT, &format!("{host}/g.jpg"))
        .send()
        .await
        .unwrap();
    let (status, headers, body) = json(res).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "vit");
    assert_eq!(body["modelId"], "vit-tiny");
    let cats: Vec<&str> = body["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_str().unwrap())
        .collect();
    let mut sorted = cats.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["car", "document", "motorcycle", "other", "person", "truck"]
    );
    assert_eq!(body["imagenet"].as_array().unwrap().len(), 5);
    assert_eq!(headers["x-credits-remaining"], "4");
    assert_eq!(s.balance().await, 4);

    // POST with no upload but ?url= works too; an upload beats the url.
    let res = s
        .http
        .post(s.url(CLIP))
        .header("X-API-Key", &s.key)
        .query(&[("url", "http://192.0.2.1/never-fetched.jpg")])
        .multipart(form("motorcycle.jpg"))
        .send()
        .await
        .unwrap();
    let (status, _, body) = json(res).await;
    assert_eq!(status, 200, "upload must win over url: {body}");
    assert_eq!(s.balance().await, 1);

    // 1 credit left, cost 3: 402, balance unchanged.
    let res = s
        .http
        .post(s.url(CLIP))
        .header("X-API-Key", &s.key)
        .multipart(form("motorcycle.jpg"))
        .send()
        .await
        .unwrap();
    let (status, headers, body) = json(res).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (402, Some("INSUFFICIENT_CREDITS"))
    );
    assert_eq!(headers["x-credits-remaining"], "1");

    let totals = s.store.ledger_totals(&s.key_id).await.unwrap();
    assert_eq!((totals.debits, totals.refunds, totals.topups), (9, 0, 10));

    // The account shows the same balance and the usage.
    let res = s
        .http
        .get(s.url("/api/account"))
        .header("X-API-Key", &s.key)
        .send()
        .await
        .unwrap();
    let (status, headers, body) = json(res).await;
    assert_eq!(status, 200);
    assert_eq!(body["credits"], 1);
    assert_eq!(body["keyId"], s.key_id.as_str());
    assert_eq!(headers["x-credits-remaining"], "1");
    assert!(body["usage"].as_array().unwrap().len() >= 3, "{body}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retry_replays_and_charges_once() {
    let s = start(10, |_| {}).await;
    let send = |labels: &'static str, key: &'static str| {
        s.http
            .post(s.url(CLIP))
            .header("X-API-Key", &s.key)
            .header("Idempotency-Key", key)
            .query(&[("labels", labels)])
            .multipart(form("motorcycle.jpg"))
            .send()
    };
    let first = send("car,truck", "retry-1").await.unwrap();
    assert_eq!(first.status(), 200);
    let first_body = first.bytes().await.unwrap();
    // A new multipart boundary, the same request: the same bytes back, no second debit.
    let again = send("car,truck", "retry-1").await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["x-credits-remaining"], "9");
    assert_eq!(again.bytes().await.unwrap(), first_body);
    assert_eq!(s.balance().await, 9);

    let (status, _, body) = json(send("car,person", "retry-1").await.unwrap()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("IDEMPOTENCY_MISMATCH"))
    );

    assert_eq!(s.balance().await, 9);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after() {
    let s = start(10, |c| {
        c.rate_limit_per_second = 0.2;
        c.rate_limit_burst = 2;
    })
    .await;
    let call = || {
        s.http
            .get(s.url("/api/account"))
            .header("X-API-Key", &s.key)
            .send()
    };
    assert_eq!(call().await.unwrap().status(), 200);
    assert_eq!(call().await.unwrap().status(), 200);
    let res = call().await.unwrap();
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    let (status, _, body) = json(res).await;
    assert_eq!((status, body["code"].as_str()), (429, Some("RATE_LIMITED")));
    s.stop().await.unwrap();
}

/// Fake models for fault injection: 8×8 input, a configurable failure, an optional delay.
#[derive(Clone, Copy)]
enum Behaviour {
    Fail,
    Panic,
    Slow,
}

struct FakeClip {
    cfg: PreprocessConfig,
    behaviour: Behaviour,
}

fn cfg() -> PreprocessConfig {
    PreprocessConfig {
        do_resize: true,
        size: ResizeTarget::Exact(8, 8),
        resample: 2,
        do_center_crop: false,
        crop_size: (8, 8),
        do_rescale: true,
        rescale_factor: 1.0 / 255.0,
        do_normalize: false,
        image_mean: [0.0; 3],
        image_std: [1.0; 3],
    }
}

impl ZeroShotModel for FakeClip {
    fn preprocess_config(&self) -> &PreprocessConfig {
        &self.cfg
    }
    fn embed_images(&self, pixels: &PixelBatch) -> CoreResult<Vec<Vec<f32>>> {
        match self.behaviour {
            Behaviour::Fail => Err(CoreError::Internal(
                "/secret/weights.safetensors: bad tensor".into(),
            )),
            Behaviour::Panic => panic!("boom at /secret/src/model.rs"),
            Behaviour::Slow => {
                std::thread::sleep(Duration::from_millis(600));
                Ok(vec![vec![1.0, 0.0]; pixels.batch])
            }
        }
    }
    fn embed_texts(&self, texts: &[String]) -> CoreResult<Vec<Vec<f32>>> {
        Ok(texts.iter().map(|_| vec![1.0, 0.0]).collect())
    }
    fn logit_scale(&self) -> f32 {
        100.0
    }
}

struct FakeVit(PreprocessConfig);

impl ImageClassifier for FakeVit {
    fn preprocess_config(&self) -> &PreprocessConfig {
        &self.0
    }
    fn classify(&self, pixels: &PixelBatch) -> CoreResult<Vec<Vec<f32>>> {
        Ok(vec![vec![1.0 / 1000.0; 1000]; pixels.batch])
    }
    fn id2label(&self) -> &[String] {
        &[]
    }
}

fn fake(behaviour: Behaviour) -> Models {
    let clip: Arc<dyn ZeroShotModel> = Arc::new(FakeClip {
        cfg: cfg(),
        behaviour,
    });
    let vit: Arc<dyn ImageClassifier> = Arc::new(FakeVit(cfg()));
    Models::new(
        vec![("fake-clip".into(), clip)],
        vec![("fake-vit".into(), vit)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_failures_refund_and_hide_details() {
    for behaviour in [Behaviour::Fail, Behaviour::Panic] {
        let s = start_with(5, |_| {}, |_| Some(fake(behaviour))).await;
        let res = s
            .http
            .post(s.url(CLIP))
            .header("X-API-Key", &s.key)
            .multipart(form("motorcycle.jpg"))
            .send()
            .await
            .unwrap();
        let (status, headers, body) = json(res).await;
        assert_error(
            reqwest::StatusCode::from_u16(status).unwrap(),
            &body,
            500,
            "INTERNAL_ERROR",
        );
        let text = body.to_string();
        assert!(!text.contains("secret") && !text.contains("boom"), "{text}");
        assert_eq!(headers["x-credits-remaining"], "5");
        assert_eq!(s.balance().await, 5);
        let t = s.store.ledger_totals(&s.key_id).await.unwrap();
        assert_eq!(
            (t.debits, t.refunds),
            (1, 1),
            "debit then refund in the ledger"
        );
        s.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_server_sheds_with_503_and_finishes_in_flight_on_shutdown() {
    let s = start_with(5, |c| c.max_in_flight = 1, |_| Some(fake(Behaviour::Slow))).await;
    let slow_request = || {
        s.http
            .post(s.url(CLIP))
            .header("X-API-Key", &s.key)
            .header("Idempotency-Key", "slow-1")
            .multipart(form("motorcycle.jpg"))
            .send()
    };
    let first = tokio::spawn(slow_request());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let res = s
        .http
        .post(s.url(CLIP))
        .header("X-API-Key", &s.key)
        .multipart(form("motorcycle.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["retry-after"], "1");
    let (status, _, body) = json(res).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("OVERLOADED")));
    // The same idempotent request while the first still runs: 409 (with room in flight for it).
    let s = {
        s.stop().await.unwrap();
        assert_eq!(first.await.unwrap().unwrap().status(), 200);
        start_with(5, |c| c.max_in_flight = 4, |_| Some(fake(Behaviour::Slow))).await
    };
    let slow_request = || {
        s.http
            .post(s.url(CLIP))
            .header("X-API-Key", &s.key)
            .header("Idempotency-Key", "slow-1")
            .multipart(form("motorcycle.jpg"))
            .send()
    };
    let slow = tokio::spawn(slow_request());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let res = slow_request().await.unwrap();
    let (status, _, body) = json(res).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("IDEMPOTENCY_IN_PROGRESS"))
    );
    // Shut down while the slow call runs: it still completes and is charged once.
    let db = s.config.database_url.clone();
    let key_id = s.key_id.clone();
    let stopped = tokio::spawn(s.stop_keeping_dir());
    let res = slow.await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-credits-remaining"], "4");
    let (result, _dir) = stopped.await.unwrap();
    result.unwrap();
    // The server closed its pool on the way out: look with a fresh one.
    let store = glimpse_store::connect(&db).await.unwrap();
    assert_eq!(store.balance(&key_id).await.unwrap(), 4);
}
