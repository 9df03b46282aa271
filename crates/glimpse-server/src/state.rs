//! Everything a request handler needs, shared behind one `Arc`: the store, the loaded models with
//! their allow-lists, the URL fetcher and the limits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glimpse_core::batcher::{BatchOptions, PassGate};
use glimpse_core::image::DecodeLimits;
use glimpse_core::{ImageClassifier, Registry, ServedModel, ZeroShotModel};
use glimpse_store::Store;
use tokio::sync::Semaphore;

use crate::config::ServerConfig;
use crate::fetch::{FetchOptions, Fetcher};
use crate::limits::RateLimiter;

/// The models a server starts with, in the order they were configured: each task's first model
/// is its default (see [`Registry`]).
pub struct Models(pub Vec<ServedModel>);

impl Models {
    /// From zero-shot and classifier networks (CLIP and ViT families) with their ids: what tests
    /// and embedders with models already in hand call.
    pub fn new(
        clip: Vec<(String, Arc<dyn ZeroShotModel>)>,
        vit: Vec<(String, Arc<dyn ImageClassifier>)>,
    ) -> Self {
        let clip = clip
            .into_iter()
            .map(|(id, m)| ServedModel::zero_shot(id, m));
        let vit = vit
            .into_iter()
            .map(|(id, m)| ServedModel::classifier(id, m));
        Models(clip.chain(vit).collect())
    }
}

/// Where the server gets `?url=` images. The real one is the SSRF-safe [`Fetcher`]; tests may
/// count calls with their own.
#[async_trait::async_trait]
pub trait ImageSource: Send + Sync {
    async fn fetch(&self, url: &str) -> Result<Vec<u8>, crate::fetch::FetchError>;
}

#[async_trait::async_trait]
impl ImageSource for Fetcher {
    async fn fetch(&self, url: &str) -> Result<Vec<u8>, crate::fetch::FetchError> {
        Fetcher::fetch(self, url).await
    }
}

/// Settings the handlers read on every call, taken from `ServerConfig` once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub credits_per_call: i64,
    pub max_upload_bytes: usize,
    /// Items per request on the batch and embeddings routes (`GLIMPSE_MAX_BATCH_IMAGES`).
    pub max_batch_images: usize,
    /// Body bytes per request on the batch and embeddings routes (`GLIMPSE_MAX_BATCH_BYTES`).
    pub max_batch_bytes: usize,
    pub templates: Vec<String>,
    pub admin_token: Option<String>,
    pub header_timeout: Duration,
    /// Open reservations older than this are refunded by the reaper.
    pub reap_after: Duration,
    /// Connection timeouts, the connection cap and the shutdown periods (the accept loop's).
    pub conn: crate::listen::ConnLimits,
    /// How long a served call retries a failing settle before it answers 503 uncharged.
    pub settle_retry: Duration,
    /// Stored `Idempotency-Key` answers older than this are pruned by the reaper.
    pub idempotency_ttl: Duration,
}

pub struct Inner {
    pub(crate) settings: Settings,
    pub(crate) store: Arc<dyn Store>,
    /// The served models, each with the batching queue + worker thread its forward passes run on.
    pub(crate) models: Registry,
    pub(crate) images: Arc<dyn ImageSource>,
    /// Classification calls in progress; `try_acquire` failing means shed with 503.
    pub(crate) in_flight: Arc<Semaphore>,
    pub(crate) rate: Option<RateLimiter>,
    /// Failed `?url=` fetches per key (`GLIMPSE_FAILED_FETCHES_PER_MINUTE`).
    pub(crate) failed_fetches: Option<RateLimiter>,
    /// Cleared when shutdown starts, so `/readyz` tells load balancers to stop sending.
    pub(crate) ready: AtomicBool,
    /// What `/metrics` reports.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Image decodes: memory budget, thread pool, time limit.
    pub(crate) decoder: crate::decode::DecodeGate,
}

/// Cheap to clone; the router's state.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// State from already-loaded models and an open store (what `serve` does after loading, and
    /// what tests call directly). `config.validate()` is run here too.
    pub fn new(
        config: &ServerConfig,
        store: Arc<dyn Store>,
        models: Models,
    ) -> anyhow::Result<Self> {
        let fetcher = Fetcher::new(FetchOptions {
            allow_private: config.fetch.allow_private_urls,
            max_bytes: config.limits.max_upload_bytes as u64,
            connect_timeout: Duration::from_secs(config.fetch.fetch_connect_timeout_secs),
            total_timeout: Duration::from_secs(config.fetch.fetch_timeout_secs),
            ..FetchOptions::default()
        });
        Self::with_image_source(config, store, models, Arc::new(fetcher))
    }

    /// As `new`, with a custom source for `?url=` images.
    pub fn with_image_source(
        config: &ServerConfig,
        store: Arc<dyn Store>,
        models: Models,
        images: Arc<dyn ImageSource>,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let settings = Settings {
            credits_per_call: config.store.credits_per_call,
            max_upload_bytes: config.limits.max_upload_bytes,
            max_batch_images: config.limits.max_batch_images,
            max_batch_bytes: config.limits.max_batch_bytes,
            templates: config.models.prompt_templates.clone(),
            admin_token: config.store.admin_token.clone().filter(|t| !t.is_empty()),
            header_timeout: Duration::from_secs(config.listen.header_timeout_secs),
            reap_after: Duration::from_secs(config.store.reap_after_secs),
            conn: crate::listen::ConnLimits::from_config(config),
            settle_retry: config.settle_retry(),
            idempotency_ttl: Duration::from_secs(config.store.idempotency_ttl_secs),
        };
        let rate = (config.limits.rate_limit_per_second > 0.0).then(|| {
            RateLimiter::new(
                config.limits.rate_limit_per_second,
                config.limits.rate_limit_burst,
            )
        });
        // A task with no model has its endpoint turned off (404); none at all serves nothing.
        // `GLIMPSE_INFERENCE_WORKERS` passes at once over all models (each uses every core).
        let gate = Some(Arc::new(PassGate::new(config.batching.inference_workers)));
        let bounds = config.prompt_cache_bounds();
        let models = Registry::new(
            models
                .0
                .into_iter()
                .map(|m| m.with_prompt_cache(bounds))
                .collect(),
            config.models.prompt_templates.clone(),
            batch_options(config),
            gate,
        )?;
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let m = Arc::clone(&metrics);
        models.on_batch(move |_, pass| m.observe_pass(pass));
        Ok(AppState(Arc::new(Inner {
            settings,
            store,
            models,
            images,
            in_flight: Arc::new(Semaphore::new(config.limits.max_in_flight)),
            rate,
            failed_fetches: (config.fetch.failed_fetches_per_minute > 0).then(|| {
                let n = config.fetch.failed_fetches_per_minute;
                RateLimiter::new(f64::from(n) / 60.0, n)
            }),
            ready: AtomicBool::new(true),
            metrics,
            decoder: crate::decode::DecodeGate::new(
                config
                    .decode
                    .decode_threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
                config.decode.decode_memory_mb,
                DecodeLimits {
                    max_pixels: config.decode.max_image_pixels,
                    max_side: config.decode.max_image_side,
                    ..DecodeLimits::default()
                },
                Duration::from_secs(config.decode.decode_timeout_secs),
            )
            .with_mode(config.decode.decode_mode.into()),
        })))
    }

    /// The served models and their batchers.
    pub fn models(&self) -> &Registry {
        &self.models
    }

    /// The key store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// How every model's batcher forms its passes.
fn batch_options(config: &ServerConfig) -> BatchOptions {
    BatchOptions {
        max_batch: config.batching.batch_size,
        window: Duration::from_millis(config.batching.batch_window_ms),
        // `max_in_flight` already sheds the excess; the queue bound is the last guard when
        // several models share it.
        queue_capacity: config.limits.max_in_flight,
        // Calls announce themselves on arrival: a lone call never waits the window.
        wait_for_announced: true,
        // Closed-loop clients split into alternating groups; keep the groups equal.
        balance: true,
        // ... unless one pass of both groups is timed faster than two; then regroup them.
        regroup: true,
    }
}
