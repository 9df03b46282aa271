//! Money and back-pressure over HTTP: a success costs exactly `credits_per_call` and the header
//! matches the store; a server failure refunds; idempotent retries charge once; the rate limit
//! and the in-flight limit answer 429/503 with Retry-After.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use glimpse_core::backend::{ImageClassifier, PixelBatch, ZeroShotModel};
use glimpse_core::preprocess::PreprocessConfig;
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

/// `motorcycle.jpg` posted to the CLIP endpoint with the test key; callers add labels, headers.
fn clip_upload(s: &TestServer) -> reqwest::RequestBuilder {
    s.http
        .post(s.url(CLIP))
        .header("X-API-Key", &s.key)
        .multipart(form("motorcycle.jpg"))
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
    let s = TestServer::builder()
        .credits(10)
        .credits_per_call(3)
        .start()
        .await;
    let res = clip_upload(&s)
        .query(&[("labels", "car,person,document")])
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
    let res = clip_upload(&s)
        .query(&[("url", "http://192.0.2.1/never-fetched.jpg")])
        .send()
        .await
        .unwrap();
    let (status, _, body) = json(res).await;
    assert_eq!(status, 200, "upload must win over url: {body}");
    assert_eq!(s.balance().await, 1);

    // 1 credit left, cost 3: 402, balance unchanged.
    let res = clip_upload(&s).send().await.unwrap();
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
    let s = TestServer::builder().credits(10).start().await;
    let send = |labels: &'static str, key: &'static str| {
        clip_upload(&s)
            .header("Idempotency-Key", key)
            .query(&[("labels", labels)])
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
    let s = TestServer::builder()
        .credits(10)
        .rate_limit_per_second(0.2)
        .rate_limit_burst(2)
        .start()
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
        resample: 2,
        ..PreprocessConfig::plain(8)
    }
}

impl ZeroShotModel for FakeClip {
    fn preprocess_config(&self) -> &PreprocessConfig {
        &self.cfg
    }
    fn embed_images(&self, pixels: &PixelBatch) -> CoreResult<Vec<Vec<f32>>> {
        match self.behaviour {
            Behaviour::Fail => Err(CoreError::internal(
                "/secret/weights.safetensors: bad tensor",
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
        let s = TestServer::builder()
            .credits(5)
            .models(fake(behaviour))
            .start()
            .await;
        let res = clip_upload(&s).send().await.unwrap();
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
    let s = TestServer::builder()
        .credits(5)
        .max_in_flight(1)
        .models(fake(Behaviour::Slow))
        .start()
        .await;
    let slow_request = || clip_upload(&s).header("Idempotency-Key", "slow-1").send();
    let first = tokio::spawn(slow_request());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let res = clip_upload(&s).send().await.unwrap();
    assert_eq!(res.headers()["retry-after"], "1");
    let (status, _, body) = json(res).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("OVERLOADED")));
    // The same idempotent request while the first still runs: 409 (with room in flight for it).
    let s = {
        s.stop().await.unwrap();
        assert_eq!(first.await.unwrap().unwrap().status(), 200);
        TestServer::builder()
            .credits(5)
            .max_in_flight(4)
            .models(fake(Behaviour::Slow))
            .start()
            .await
    };
    let slow_request = || clip_upload(&s).header("Idempotency-Key", "slow-1").send();
    let slow = tokio::spawn(slow_request());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let res = slow_request().await.unwrap();
    let (status, _, body) = json(res).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("IDEMPOTENCY_IN_PROGRESS"))
    );
    // Shut down while the slow call runs: it still completes and is charged once.
    let db = s.database_url().to_string();
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

/// The real store, except that `settle` fails (as a locked or lost database would) while
/// `failing_settles` is above zero, counting down, and that `balance` reads answer
/// `stale_balance` when it is not negative (a read taken before another call spent the credits).
struct FlakySettle {
    inner: Arc<dyn glimpse_store::Store>,
    failing_settles: std::sync::atomic::AtomicUsize,
    stale_balance: std::sync::atomic::AtomicI64,
}

mod flaky {
    use super::FlakySettle;
    use glimpse_store::*;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    #[async_trait::async_trait]
    impl Store for FlakySettle {
        async fn settle(&self, debit_id: &str, status: u16, latency_ms: f64) -> Result<()> {
            let failing =
                self.failing_settles
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if failing.is_ok() {
                return Err(StoreError::Database("simulated: database is locked".into()));
            }
            self.inner.settle(debit_id, status, latency_ms).await
        }
        async fn create_key(&self, name: &str, credits: i64) -> Result<NewKey> {
            self.inner.create_key(name, credits).await
        }
        async fn list_keys(&self) -> Result<Vec<KeyInfo>> {
            self.inner.list_keys().await
        }
        async fn topup(&self, key_id: &str, credits: i64) -> Result<i64> {
            self.inner.topup(key_id, credits).await
        }
        async fn revoke(&self, key_id: &str) -> Result<()> {
            self.inner.revoke(key_id).await
        }
        async fn authenticate(&self, raw_key: &str) -> Result<Option<KeyInfo>> {
            self.inner.authenticate(raw_key).await
        }
        async fn balance(&self, key_id: &str) -> Result<i64> {
            match self.stale_balance.load(Ordering::SeqCst) {
                stale if stale >= 0 => Ok(stale),
                _ => self.inner.balance(key_id).await,
            }
        }
        async fn debit(&self, req: &DebitRequest) -> Result<Debit> {
            self.inner.debit(req).await
        }
        async fn refund(&self, debit_id: &str, status: u16, latency_ms: f64) -> Result<i64> {
            self.inner.refund(debit_id, status, latency_ms).await
        }
        async fn account(&self, key_id: &str, recent: usize) -> Result<Account> {
            self.inner.account(key_id, recent).await
        }
        async fn reap_stale(&self, older_than: Duration) -> Result<u64> {
            self.inner.reap_stale(older_than).await
        }
        async fn idempotency_claim(&self, k: &str, ik: &str, h: &str) -> Result<IdempotencyClaim> {
            self.inner.idempotency_claim(k, ik, h).await
        }
        async fn idempotency_complete(&self, k: &str, ik: &str, s: u16, b: &str) -> Result<()> {
            self.inner.idempotency_complete(k, ik, s, b).await
        }
        async fn idempotency_abort(&self, k: &str, ik: &str) -> Result<()> {
            self.inner.idempotency_abort(k, ik).await
        }
        async fn prune_idempotency(&self, older_than: Duration) -> Result<u64> {
            self.inner.prune_idempotency(older_than).await
        }
        async fn ping(&self) -> Result<()> {
            self.inner.ping().await
        }
        async fn check_writes(&self) -> Result<()> {
            self.inner.check_writes().await
        }
        async fn ledger_totals(&self, key_id: &str) -> Result<LedgerTotals> {
            self.inner.ledger_totals(key_id).await
        }
        async fn reservation(&self, debit_id: &str) -> Result<Reservation> {
            self.inner.reservation(debit_id).await
        }
        async fn close(&self) {
            self.inner.close().await
        }
    }
}

/// `builder`'s server on a [`FlakySettle`] store (nothing failing yet), and that store.
async fn start_flaky(builder: TestServerBuilder) -> (TestServer, Arc<FlakySettle>) {
    let flaky: Arc<std::sync::OnceLock<Arc<FlakySettle>>> = Arc::default();
    let slot = Arc::clone(&flaky);
    let s = builder
        .wrap_store(move |inner| {
            let f = Arc::new(FlakySettle {
                inner,
                failing_settles: 0.into(),
                stale_balance: (-1).into(),
            });
            let _ = slot.set(Arc::clone(&f));
            f
        })
        .start()
        .await;
    let flaky = Arc::clone(flaky.get().unwrap());
    (s, flaky)
}

/// Issue 20 item 5: a settle that fails after the answer is ready must not give the answer away.
/// Settles that fail for a while are retried (the call is answered 200 and charged); settles
/// that keep failing past `GLIMPSE_SETTLE_RETRY_SECS` answer 503 uncharged. After the reaper
/// has run, the key is charged exactly once per 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_calls_are_charged_even_when_the_settle_fails() {
    use std::sync::atomic::Ordering;
    let builder = TestServer::builder()
        .credits(10)
        .reap_after_secs(2)
        .settle_retry_secs(1);
    let (s, flaky) = start_flaky(builder).await;
    let send = || clip_upload(&s).send();
    let mut ok = 0;
    // Three failed tries (50 + 100 + 200 ms of back-off), then the settle goes through.
    flaky.failing_settles.store(3, Ordering::SeqCst);
    let (status, headers, body) = json(send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-credits-remaining"], "9");
    ok += 1;
    let (status, _, body) = json(send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    ok += 1;
    // A store that stays down past the retry budget: no 200 leaves.
    flaky.failing_settles.store(usize::MAX, Ordering::SeqCst);
    let t = std::time::Instant::now();
    let res = send().await.unwrap();
    assert_eq!(res.headers()["retry-after"], "1");
    let (status, _, body) = json(res).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("OVERLOADED")));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    flaky.failing_settles.store(0, Ordering::SeqCst);
    // The reaper (every 0.5 s here, for reservations over 2 s old) changes nothing now.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(s.balance().await, 10 - ok);
    let t = s.store.ledger_totals(&s.key_id).await.unwrap();
    assert_eq!(t.debits - t.refunds, ok, "{t:?}");
    s.stop().await.unwrap();
}

/// An upload's balance is read once, on arrival; a key that ran short after that read is
/// refused by the debit itself: 402, nothing charged, no ledger row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_ran_short_after_its_balance_read_is_refused_by_the_debit() {
    use std::sync::atomic::Ordering;
    let (s, flaky) = start_flaky(TestServer::builder().credits(1)).await;
    let send = || clip_upload(&s).send();
    let (status, _, body) = json(send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.balance().await, 0);
    // Every balance read now says the key can pay, as one taken before the last call would.
    flaky.stale_balance.store(1, Ordering::SeqCst);
    let (status, _, body) = json(send().await.unwrap()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (402, Some("INSUFFICIENT_CREDITS")),
        "{body}"
    );
    flaky.stale_balance.store(-1, Ordering::SeqCst);
    assert_eq!(s.balance().await, 0);
    let t = s.store.ledger_totals(&s.key_id).await.unwrap();
    assert_eq!((t.debits, t.refunds), (1, 0), "{t:?}");
    s.stop().await.unwrap();
}

/// Issue 20 items 6 and 7 over HTTP: a fetch that failed for a passing reason (upstream 5xx,
/// timeout) is not stored, so the retry with the same Idempotency-Key runs and succeeds; a key
/// holds at most GLIMPSE_IDEMPOTENCY_MAX_PER_KEY stored answers (429 past that); the server
/// prunes answers older than GLIMPSE_IDEMPOTENCY_TTL_SECS on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_stores_no_transient_failure_and_is_bounded() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // First hit of each path fails (500, or answers after the 1 s fetch limit), then the image.
    let hits = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    let img = Arc::new(image_bytes("motorcycle.jpg"));
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let first = h.fetch_add(1, Ordering::SeqCst).is_multiple_of(2);
        let img = Arc::clone(&img);
        async move {
            use axum::response::IntoResponse;
            if first && uri.path() == "/flaky-500" {
                return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
            if first && uri.path() == "/flaky-slow" {
                tokio::time::sleep(Duration::from_millis(2500)).await;
            }
            (
                [(axum::http::header::CONTENT_TYPE, "image/jpeg")],
                img.as_ref().clone(),
            )
                .into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let s = TestServer::builder()
        .credits(20)
        .fetch_timeout_secs(1)
        .fetch_connect_timeout_secs(1)
        .idempotency_max_per_key(3)
        .idempotency_ttl_secs(2)
        .reap_after_secs(4)
        .start()
        .await;
    let by_url = |path: &str, ik: &str| {
        s.get_by_url(VIT, &format!("{up}{path}"))
            .header("Idempotency-Key", ik)
            .send()
    };
    for (path, ik) in [("/flaky-500", "t-500"), ("/flaky-slow", "t-slow")] {
        let (status, _, body) = json(by_url(path, ik).await.unwrap()).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("VALIDATION_ERROR")),
            "{path}: {body}"
        );
        let (status, _, body) = json(by_url(path, ik).await.unwrap()).await;
        assert_eq!(
            status, 200,
            "{path}: the retry got the stored failure: {body}"
        );
    }
    assert_eq!(s.balance().await, 18);
    // Two answers stored (t-500, t-slow): one more fits, the next new key does not.
    let (status, _, _) = json(by_url("/ok", "k-3").await.unwrap()).await;
    assert_eq!(status, 200);
    let res = by_url("/ok", "k-4").await.unwrap();
    assert!(res.headers().contains_key("retry-after"));
    let (status, _, body) = json(res).await;
    assert_eq!((status, body["code"].as_str()), (429, Some("RATE_LIMITED")));
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("GLIMPSE_IDEMPOTENCY_MAX_PER_KEY"),
        "{body}"
    );
    assert_eq!(s.balance().await, 17, "the refused call is not charged");
    // Stored answers still replay at the cap.
    let (status, headers, _) = json(by_url("/ok", "k-3").await.unwrap()).await;
    assert_eq!(
        (status, &headers["x-credits-remaining"]),
        (200, &"17".parse().unwrap())
    );
    // The reaper (every second here) prunes the answers once they are 2 s old: nothing is left
    // for a prune to find, and the key has room again.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        s.store
            .prune_idempotency(Duration::from_secs(2))
            .await
            .unwrap(),
        0,
        "the server did not prune expired idempotency answers"
    );
    let (status, _, body) = json(by_url("/ok", "k-4").await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    s.stop().await.unwrap();
}

/// `/readyz` follows the write path: a database file deleted under the running server (which
/// would otherwise keep "charging" into the deleted file) turns it 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_when_the_database_file_is_deleted() {
    let s = TestServer::builder().credits(1).start().await;
    let res = s.http.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let db = s.database_url().trim_start_matches("sqlite://").to_string();
    std::fs::remove_file(&db).unwrap();
    let res = s.http.get(s.url("/readyz")).send().await.unwrap();
    let status = res.status();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_error(status, &body, 503, "NOT_READY");
    s.stop().await.unwrap();
}
