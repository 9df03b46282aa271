//! Test harness: the real server on 127.0.0.1:0 with the tiny fixture models and a temp SQLite
//! store, plus a loopback image host that counts its hits.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use glimpse_server::{load_models, serve_state, AppState, Models, ServerConfig};
use glimpse_store::{Store, StoreOptions};
use tokio::sync::oneshot;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn image(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

pub fn image_bytes(name: &str) -> Vec<u8> {
    std::fs::read(image(name)).expect("fixture image")
}

/// A config for tests: fixture models, a database in `dir`, private URLs allowed (the image host
/// is on loopback), a small upload limit so the 413 test is cheap.
pub fn test_config(dir: &std::path::Path) -> ServerConfig {
    let mut c = ServerConfig::default();
    c.listen.bind = "127.0.0.1:0".parse().unwrap();
    c.store.database_url = format!("sqlite://{}", dir.join("glimpse.db").display());
    c.models.clip_model = fixtures().join("models/clip-tiny").display().to_string();
    c.models.vit_model = fixtures().join("models/vit-tiny").display().to_string();
    c.fetch.allow_private_urls = true;
    c.limits.max_upload_bytes = 512 * 1024;
    // No drain period: `stop()` should not wait for load balancers that are not there.
    c.listen.shutdown_drain_secs = 0;
    c
}

pub struct TestServer {
    pub base: String,
    pub store: Arc<dyn Store>,
    /// A key made through the store with the credits asked for.
    pub key: String,
    pub key_id: String,
    pub config: ServerConfig,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    dir: Option<tempfile::TempDir>,
}

/// Start a server whose config `tweak` may change, with one key holding `credits`.
pub async fn start(credits: i64, tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
    start_with(credits, tweak, |_| None).await
}

/// As `start`, optionally replacing the loaded models (for fault-injection tests).
pub async fn start_with(
    credits: i64,
    tweak: impl FnOnce(&mut ServerConfig),
    models: impl FnOnce(&ServerConfig) -> Option<Models>,
) -> TestServer {
    start_wrapped(credits, tweak, models, |s| s).await
}

/// As `start_with`, the server's store being `wrap` of the real one (for store fault injection;
/// `TestServer::store` stays the real one).
pub async fn start_wrapped(
    credits: i64,
    tweak: impl FnOnce(&mut ServerConfig),
    models: impl FnOnce(&ServerConfig) -> Option<Models>,
    wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    tweak(&mut config);
    // No auth cache: a revocation made through the test's store must bite at once.
    let store = glimpse_store::connect_with(
        &config.store.database_url,
        StoreOptions {
            auth_cache_ttl: Duration::ZERO,
            ..config.store_options()
        },
    )
    .await
    .unwrap();
    let models = match models(&config) {
        Some(m) => m,
        None => load_models(&config).await.unwrap(),
    };
    let state = AppState::new(&config, wrap(Arc::clone(&store)), models).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_state(state, listener, async move {
        let _ = rx.await;
    }));
    let key = store.create_key("test", credits).await.unwrap();
    TestServer {
        base,
        store,
        key: key.key,
        key_id: key.id,
        config,
        http: http_client(),
        stop: Some(tx),
        task: Some(task),
        dir: Some(dir),
    }
}

/// A plain-HTTP client for the tests. The crate's reqwest has no built-in crypto provider (the
/// fetcher brings its own), so install ring's before building one.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// `GET endpoint?url=…` with the key: the request every by-URL test sends.
pub fn get_by_url(
    http: &reqwest::Client,
    endpoint: String,
    key: &str,
    url: &str,
) -> reqwest::RequestBuilder {
    http.get(endpoint)
        .header("X-API-Key", key)
        .query(&[("url", url)])
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `GET path?url=url` with this server's key.
    pub fn get_by_url(&self, path: &str, url: &str) -> reqwest::RequestBuilder {
        get_by_url(&self.http, self.url(path), &self.key, url)
    }

    pub async fn balance(&self) -> i64 {
        self.store.balance(&self.key_id).await.unwrap()
    }

    /// Graceful stop; returns what `serve_state` returned.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop_keeping_dir().await.0
    }

    /// Ask for shutdown (what SIGTERM does) without waiting: the handle resolves when
    /// `serve_state` returns.
    pub fn begin_stop(&mut self) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("stopped once")
    }

    /// Graceful stop, handing over the temp folder (and so the database) to look at afterwards.
    pub async fn stop_keeping_dir(mut self) -> (anyhow::Result<()>, tempfile::TempDir) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let result = self.task.take().unwrap().await.unwrap();
        (result, self.dir.take().unwrap())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A loopback HTTP server answering every GET with `body` (as image/jpeg), counting requests.
pub async fn image_host(body: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    let body = Arc::new(body);
    let app = axum::Router::new().fallback(move || {
        let h = Arc::clone(&h);
        let body = Arc::clone(&body);
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            (
                [(axum::http::header::CONTENT_TYPE, "image/jpeg")],
                body.as_ref().clone(),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, hits)
}

/// The tiny CLIP fixture, loaded once per test binary, for in-process reference answers.
pub fn reference_clip() -> &'static glimpse_candle::ClipModel {
    static M: OnceLock<glimpse_candle::ClipModel> = OnceLock::new();
    M.get_or_init(|| {
        glimpse_candle::load_clip(
            &fixtures().join("models/clip-tiny"),
            &glimpse_candle::LoadOptions::default(),
        )
        .unwrap()
    })
}

/// What the in-process pipeline answers for `image` with `labels` on the tiny CLIP.
pub fn expected_clip(
    image_name: &str,
    labels: &str,
) -> glimpse_core::response::ClassificationResponse {
    use glimpse_core::backend::{PixelBatch, ZeroShotModel};
    let model = reference_clip();
    let img = glimpse_core::image::decode(
        &image_bytes(image_name),
        &glimpse_core::image::DecodeLimits::default(),
    )
    .unwrap();
    let cfg = model.preprocess_config();
    let (h, w) = cfg.output_size();
    let px = PixelBatch::stack(&[cfg.preprocess(&img)], h, w);
    let labels = glimpse_core::labels::parse_labels(Some(labels)).unwrap();
    let templates = vec![glimpse_core::labels::DEFAULT_TEMPLATE.to_string()];
    let cache = glimpse_core::pipeline::PromptCache::new(100);
    glimpse_core::pipeline::classify_clip(model, "clip-tiny", &cache, &px, &labels, &templates)
        .unwrap()
        .remove(0)
}

/// Assert a JSON answer has the seed's success shape and equals `expected` (scores within 1e-6).
pub fn assert_matches(
    got: &serde_json::Value,
    expected: &glimpse_core::response::ClassificationResponse,
) {
    assert_eq!(got["result"], expected.result.as_str(), "{got}");
    assert_eq!(got["model"], expected.model.as_str(), "{got}");
    assert_eq!(got["modelId"], expected.model_id.as_str(), "{got}");
    assert!(got["timingMs"].as_f64().unwrap() >= 0.0, "{got}");
    let conf = got["confidence"].as_f64().unwrap();
    assert!((conf - expected.confidence as f64).abs() < 1e-6, "{got}");
    let preds = got["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), expected.predictions.len(), "{got}");
    let mut sum = 0.0;
    for (g, e) in preds.iter().zip(&expected.predictions) {
        assert_eq!(g["label"], e.label.as_str(), "{got}");
        let s = g["score"].as_f64().unwrap();
        assert!((s - e.score as f64).abs() < 1e-6, "{got}");
        sum += s;
    }
    assert!((sum - 1.0).abs() < 1e-4, "scores sum to {sum}");
}

pub fn assert_error(status: reqwest::StatusCode, body: &serde_json::Value, want: u16, code: &str) {
    assert_eq!(status.as_u16(), want, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(
        body.as_object().unwrap().len(),
        2,
        "only message and code: {body}"
    );
}
