//! The harness: [`TestServer`], the real server on 127.0.0.1:0 with the tiny fixture models and a
//! temp SQLite store; a loopback image host that counts its hits; reference answers and the
//! assertions on answer shapes. `upstream` holds the raw loopback servers the fetcher tests
//! script byte by byte, `hostile` the misbehaving upstream and hand-made hostile files.
#![allow(dead_code)]

pub mod hostile;
pub mod upstream;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use glimpse_server::{load_models, serve_state, AppState, ImageSource, Models, ServerConfig};
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

/// What every test server starts from: fixture models, a database in `dir`, private URLs allowed
/// (the image hosts are on loopback), a small upload limit so the 413 test is cheap.
fn test_config(dir: &Path) -> ServerConfig {
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

/// The real server on 127.0.0.1:0 (fixture models, a temp SQLite store) with one key, made
/// through the store. Dropping it stops the server.
pub struct TestServer {
    pub base: String,
    /// The real store (also when the server's is wrapped, see [`TestServerBuilder::wrap_store`]),
    /// with no authentication cache: a revocation made through it bites at once.
    pub store: Arc<dyn Store>,
    /// A key holding [`TestServer::credits`] when the server started.
    pub key: String,
    pub key_id: String,
    pub credits: i64,
    /// The running server's state: its batchers, store and settings.
    pub state: AppState,
    pub http: reqwest::Client,
    config: ServerConfig,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    dir: Option<tempfile::TempDir>,
}

/// How a test asks for its server: `TestServer::builder().credits(5).max_in_flight(1).start()`.
/// Every setting a test changes has a method here, so the tests never name a `ServerConfig`
/// field: when the config's layout changes, this file is the one to follow it.
pub struct TestServerBuilder {
    config: ServerConfig,
    dir: tempfile::TempDir,
    credits: i64,
    models: Option<Models>,
    images: Option<Arc<dyn ImageSource>>,
    wrap_store: Option<StoreWrap>,
}

/// What [`TestServerBuilder::wrap_store`] keeps: the real store in, the served one out.
type StoreWrap = Box<dyn FnOnce(Arc<dyn Store>) -> Arc<dyn Store>>;

/// Builder methods that set one config value each: `name: type => field;`.
macro_rules! settings {
    ($($(#[$doc:meta])* $name:ident: $ty:ty => $($field:ident).+;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: $ty) -> Self {
                self.config.$($field).+ = value;
                self
            }
        )*
    };
}

impl TestServerBuilder {
    /// The key's credits when the server starts (0 unless set).
    pub fn credits(mut self, credits: i64) -> Self {
        self.credits = credits;
        self
    }

    /// Serve these models instead of loading the fixtures (fault injection).
    pub fn models(mut self, models: Models) -> Self {
        self.models = Some(models);
        self
    }

    /// Fetch `?url=` images with this source instead of the fetcher the config describes.
    pub fn image_source(mut self, images: impl ImageSource + 'static) -> Self {
        self.images = Some(Arc::new(images));
        self
    }

    /// Serve with `wrap` of the real store (store fault injection); [`TestServer::store`] stays
    /// the real one.
    pub fn wrap_store(
        mut self,
        wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store> + 'static,
    ) -> Self {
        self.wrap_store = Some(Box::new(wrap));
        self
    }

    /// Guard `/admin` with this bearer token.
    pub fn admin_token(mut self, token: &str) -> Self {
        self.config.store.admin_token = Some(token.into());
        self
    }

    /// Use this database (`sqlite://…` of an earlier server: a restart; or a [`PgSchema`]'s
    /// URL) instead of a fresh SQLite file.
    pub fn database_url(mut self, url: &str) -> Self {
        self.config.store.database_url = url.to_string();
        self
    }

    /// Serve the model folder `dir` as the zero-shot (CLIP route) default model.
    pub fn clip_model(mut self, dir: &Path) -> Self {
        self.config.models.clip_model = dir.display().to_string();
        self
    }

    /// Serve no ViT model (its endpoint answers 404).
    pub fn no_vit_model(mut self) -> Self {
        self.config.models.vit_model = String::new();
        self
    }

    /// `fp32`, `bf16` or `int8`.
    pub fn precision(mut self, precision: &str) -> Self {
        self.config.models.precision = precision.parse().unwrap();
        self
    }

    settings! {
        allow_private_urls: bool => fetch.allow_private_urls;
        credits_per_call: i64 => store.credits_per_call;
        max_in_flight: usize => limits.max_in_flight;
        batch_size: usize => batching.batch_size;
        batch_window_ms: u64 => batching.batch_window_ms;
        rate_limit_per_second: f64 => limits.rate_limit_per_second;
        rate_limit_burst: u32 => limits.rate_limit_burst;
        failed_fetches_per_minute: u32 => fetch.failed_fetches_per_minute;
        fetch_timeout_secs: u64 => fetch.fetch_timeout_secs;
        fetch_connect_timeout_secs: u64 => fetch.fetch_connect_timeout_secs;
        header_timeout_secs: u64 => listen.header_timeout_secs;
        first_byte_timeout_secs: u64 => listen.first_byte_timeout_secs;
        idle_timeout_secs: u64 => listen.idle_timeout_secs;
        http2_keep_alive_secs: u64 => listen.http2_keep_alive_secs;
        max_connections: usize => listen.max_connections;
        shutdown_drain_secs: u64 => listen.shutdown_drain_secs;
        shutdown_grace_secs: u64 => listen.shutdown_grace_secs;
        reap_after_secs: u64 => store.reap_after_secs;
        settle_retry_secs: u64 => store.settle_retry_secs;
        idempotency_ttl_secs: u64 => store.idempotency_ttl_secs;
        idempotency_max_per_key: u32 => store.idempotency_max_per_key;
        prompt_cache_entries: usize => models.prompt_cache_entries;
        max_batch_images: usize => limits.max_batch_images;
        max_batch_bytes: usize => limits.max_batch_bytes;
        extra_vit_models: Vec<String> => models.extra_vit_models;
        extra_clip_models: Vec<String> => models.extra_clip_models;
    }

    /// Open the store, load the models, serve on 127.0.0.1:0 and make the key.
    pub async fn start(self) -> TestServer {
        let config = self.config;
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
        let models = match self.models {
            Some(m) => m,
            None => load_models(&config).await.unwrap(),
        };
        let served = match self.wrap_store {
            Some(wrap) => wrap(Arc::clone(&store)),
            None => Arc::clone(&store),
        };
        let state = match self.images {
            Some(images) => AppState::with_image_source(&config, served, models, images),
            None => AppState::new(&config, served, models),
        }
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_state(state.clone(), listener, async move {
            let _ = rx.await;
        }));
        let key = store.create_key("test", self.credits).await.unwrap();
        TestServer {
            base,
            store,
            key: key.key,
            key_id: key.id,
            credits: self.credits,
            state,
            http: http_client(),
            config,
            stop: Some(tx),
            task: Some(task),
            dir: Some(self.dir),
        }
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
    pub fn builder() -> TestServerBuilder {
        let dir = tempfile::tempdir().unwrap();
        TestServerBuilder {
            config: test_config(dir.path()),
            dir,
            credits: 0,
            models: None,
            images: None,
            wrap_store: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The body of `GET path`, sent without a key.
    pub async fn get_text(&self, path: &str) -> String {
        let res = self.http.get(self.url(path)).send().await.unwrap();
        res.text().await.unwrap()
    }

    /// `GET path?url=url` with this server's key.
    pub fn get_by_url(&self, path: &str, url: &str) -> reqwest::RequestBuilder {
        get_by_url(&self.http, self.url(path), &self.key, url)
    }

    pub async fn balance(&self) -> i64 {
        self.store.balance(&self.key_id).await.unwrap()
    }

    /// What one successful call costs on this server.
    pub fn credits_per_call(&self) -> i64 {
        self.config.store.credits_per_call
    }

    /// The largest upload this server takes.
    pub fn max_upload_bytes(&self) -> usize {
        self.config.limits.max_upload_bytes
    }

    /// The server's `sqlite://` URL.
    pub fn database_url(&self) -> &str {
        &self.config.store.database_url
    }

    /// Send `req` and assert the row: status, `{message, code}` body, no credit gone, no debit
    /// in the ledger. Returns the message.
    pub async fn row(
        &self,
        name: &str,
        req: reqwest::RequestBuilder,
        status: u16,
        code: &str,
    ) -> String {
        let res = req.send().await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = res.status();
        let text = res.text().await.unwrap();
        let body: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{name}: not JSON ({got}): {text}"));
        assert_eq!(got.as_u16(), status, "{name}: {body}");
        assert_error(got, &body, status, code);
        let msg = body["message"].as_str().unwrap();
        assert!(
            !msg.contains("/work/") && !msg.contains(".rs"),
            "{name} leaks: {msg}"
        );
        self.assert_uncharged(name).await;
        msg.to_string()
    }

    /// The key still holds what it started with and the ledger has no debit.
    pub async fn assert_uncharged(&self, name: &str) {
        let balance = self.store.balance(&self.key_id).await.unwrap();
        assert_eq!(balance, self.credits, "{name} cost a credit");
        let totals = self.store.ledger_totals(&self.key_id).await.unwrap();
        assert_eq!(totals.debits, 0, "{name} wrote a debit");
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
pub fn reference_clip() -> &'static glimpse_core::ServedModel {
    static M: OnceLock<glimpse_core::ServedModel> = OnceLock::new();
    M.get_or_init(|| {
        let model = glimpse_candle::load_clip(
            &fixtures().join("models/clip-tiny"),
            &glimpse_candle::LoadOptions::default(),
        )
        .unwrap();
        glimpse_core::ServedModel::zero_shot("clip-tiny", std::sync::Arc::new(model))
    })
}

/// What the in-process pipeline answers for `image` with `labels` on the tiny CLIP.
pub fn expected_clip(
    image_name: &str,
    labels: &str,
) -> glimpse_core::response::ClassificationResponse {
    use glimpse_core::backend::PixelBatch;
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
    model
        .classify_all(&px, &labels, &templates)
        .unwrap()
        .remove(0)
}

/// Assert a JSON answer has the seed's success shape and equals `expected` (scores within 1e-5).
pub fn assert_matches(
    got: &serde_json::Value,
    expected: &glimpse_core::response::ClassificationResponse,
) {
    assert_eq!(got["result"], expected.result.as_str(), "{got}");
    assert_eq!(got["model"], expected.model.as_str(), "{got}");
    assert_eq!(got["modelId"], expected.model_id.as_str(), "{got}");
    assert!(got["timingMs"].as_f64().unwrap() >= 0.0, "{got}");
    let conf = got["confidence"].as_f64().unwrap();
    // 1e-5: a pass of several images may round the last bits differently from the reference's
    // pass of one (up to ~1.2e-6 with the gemm kernels of CPUs without AVX-512).
    assert!((conf - expected.confidence as f64).abs() < 1e-5, "{got}");
    let preds = got["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), expected.predictions.len(), "{got}");
    let mut sum = 0.0;
    for (g, e) in preds.iter().zip(&expected.predictions) {
        assert_eq!(g["label"], e.label.as_str(), "{got}");
        let s = g["score"].as_f64().unwrap();
        assert!((s - e.score as f64).abs() < 1e-5, "{got}");
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

/// A fresh PostgreSQL schema on `GLIMPSE_TEST_POSTGRES_URL` for one test, dropped (with its
/// tables) when this is dropped; `url` selects it through `search_path`.
pub struct PgSchema {
    pub url: String,
    base: String,
    schema: String,
}

impl PgSchema {
    /// `None`, after saying so, when the variable is not set; panics when it is set but the
    /// database cannot be used.
    pub async fn create() -> Option<PgSchema> {
        const PG_ENV: &str = "GLIMPSE_TEST_POSTGRES_URL";
        let Ok(base) = std::env::var(PG_ENV) else {
            eprintln!("{PG_ENV} not set: PostgreSQL half of this test not run");
            return None;
        };
        let admin = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(5))
            .connect(&base)
            .await
            .unwrap_or_else(|e| panic!("{PG_ENV} is set but connecting to it failed: {e}"));
        let schema = format!("glimpse_srv_test_{:016x}", rand::random::<u64>());
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create schema {schema}: {e}"));
        admin.close().await;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        Some(PgSchema { url, base, schema })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (base, schema) = (self.base.clone(), self.schema.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(pool) = sqlx::postgres::PgPoolOptions::new().connect(&base).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                        .execute(&pool)
                        .await;
                    pool.close().await;
                }
            });
        })
        .join();
    }
}
