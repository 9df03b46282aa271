//! Everything a request handler needs, shared behind one `Arc`: the store, the loaded models with
//! their allow-lists, the URL fetcher and the limits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glimpse_core::image::DecodeLimits;
use glimpse_core::pipeline::PromptCache;
use glimpse_core::{ImageClassifier, ZeroShotModel};
use glimpse_store::Store;
use tokio::sync::Semaphore;

use crate::batch::Batchers;
use crate::config::ServerConfig;
use crate::fetch::{FetchOptions, Fetcher};
use crate::limits::RateLimiter;

/// A loaded CLIP model and the id requests name it by.
pub struct ClipEntry {
    pub id: String,
    pub model: Arc<dyn ZeroShotModel>,
    /// Prompt embeddings of this model, by prompt text.
    pub prompts: Arc<PromptCache>,
}

pub struct VitEntry {
    pub id: String,
    pub model: Arc<dyn ImageClassifier>,
}

/// The models a server holds. The first of each kind is the default; all of them form the
/// allow-list a `clipModel`/`vitModel` parameter is checked against.
pub struct Models {
    pub clip: Vec<ClipEntry>,
    pub vit: Vec<VitEntry>,
}

impl Models {
    pub fn new(
        clip: Vec<(String, Arc<dyn ZeroShotModel>)>,
        vit: Vec<(String, Arc<dyn ImageClassifier>)>,
    ) -> Self {
        Models {
            clip: clip
                .into_iter()
                .map(|(id, model)| ClipEntry {
                    id,
                    model,
                    prompts: Arc::new(PromptCache::new(PROMPT_CACHE_CAPACITY)),
                })
                .collect(),
            vit: vit
                .into_iter()
                .map(|(id, model)| VitEntry { id, model })
                .collect(),
        }
    }
}

/// Prompts kept per model: 64 labels × a few templates × many label sets.
const PROMPT_CACHE_CAPACITY: usize = 8192;

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
    pub settings: Settings,
    pub store: Arc<dyn Store>,
    pub models: Models,
    /// One batching queue + worker thread per model: every forward pass runs there.
    pub batchers: Batchers,
    pub images: Arc<dyn ImageSource>,
    /// Classification calls in progress; `try_acquire` failing means shed with 503.
    pub in_flight: Arc<Semaphore>,
    pub rate: Option<RateLimiter>,
    /// Failed `?url=` fetches per key (`GLIMPSE_FAILED_FETCHES_PER_MINUTE`).
    pub failed_fetches: Option<RateLimiter>,
    /// Cleared when shutdown starts, so `/readyz` tells load balancers to stop sending.
    pub ready: AtomicBool,
    /// What `/metrics` reports.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Image decodes: memory budget, thread pool, time limit.
    pub decoder: crate::decode::DecodeGate,
}

/// Cheap to clone; the router's state.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

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
        // A family with no model has its endpoint turned off (404); none at all serves nothing.
        if models.clip.is_empty() && models.vit.is_empty() {
            anyhow::bail!("the server needs at least one CLIP or ViT model");
        }
        let settings = Settings {
            credits_per_call: config.store.credits_per_call,
            max_upload_bytes: config.limits.max_upload_bytes,
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
        let batchers = Batchers::new(config, &models)?;
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let m = Arc::clone(&metrics);
        batchers.on_batch(&models, move |_, _, pass| m.observe_pass(pass));
        Ok(AppState(Arc::new(Inner {
            settings,
            store,
            batchers,
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
            ),
        })))
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}
