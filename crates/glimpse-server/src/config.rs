//! `glimpse serve` settings. Every field is a flag and a `GLIMPSE_…` variable; the `///` docs are
//! the `--help` text. `validate` runs at start and names the variable to fix.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

#[derive(Args, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    #[arg(long, env = "GLIMPSE_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,

    /// Key store: `sqlite://PATH` (created if missing) or `postgres://…`.
    #[arg(
        long,
        env = "GLIMPSE_DATABASE_URL",
        default_value = "sqlite://glimpse.db"
    )]
    pub database_url: String,

    /// Default CLIP model: a Hugging Face Hub id or a local folder.
    #[arg(
        long,
        env = "GLIMPSE_CLIP_MODEL",
        default_value = "openai/clip-vit-base-patch32"
    )]
    pub clip_model: String,

    /// Default ViT model: a Hugging Face Hub id or a local folder.
    #[arg(
        long,
        env = "GLIMPSE_VIT_MODEL",
        default_value = "google/vit-base-patch16-224"
    )]
    pub vit_model: String,

    /// More CLIP models a request may pick with `clipModel` (comma list of Hub ids or folders).
    #[arg(
        long = "clip-models",
        env = "GLIMPSE_CLIP_MODELS",
        value_delimiter = ','
    )]
    pub extra_clip_models: Vec<String>,

    /// More ViT models a request may pick with `vitModel` (comma list of Hub ids or folders).
    #[arg(long = "vit-models", env = "GLIMPSE_VIT_MODELS", value_delimiter = ',')]
    pub extra_vit_models: Vec<String>,

    /// Where pulled models live (default: the Hugging Face cache).
    #[arg(long, env = "GLIMPSE_MODEL_CACHE")]
    pub model_cache: Option<PathBuf>,

    /// Bearer token that enables the `/admin` API; unset, `/admin` answers 404.
    #[arg(long, env = "GLIMPSE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Let `url=` reach loopback and private addresses (tests and trusted networks only).
    #[arg(long, env = "GLIMPSE_ALLOW_PRIVATE_URLS", default_value_t = false)]
    pub allow_private_urls: bool,

    /// Credits one classification costs.
    #[arg(long, env = "GLIMPSE_CREDITS_PER_CALL", default_value_t = 1)]
    pub credits_per_call: i64,

    /// Largest upload or fetched image, in bytes.
    #[arg(long, env = "GLIMPSE_MAX_UPLOAD_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub max_upload_bytes: usize,

    /// Largest image area (width × height) accepted, checked before decoding.
    #[arg(long, env = "GLIMPSE_MAX_IMAGE_PIXELS", default_value_t = 40_000_000)]
    pub max_image_pixels: u64,

    /// Largest image width or height accepted.
    #[arg(long, env = "GLIMPSE_MAX_IMAGE_SIDE", default_value_t = 12_000)]
    pub max_image_side: u32,

    /// Memory all image decodes together may hold, in MB. Each decode is admitted for what its
    /// header says it needs at its peak (a 40 MP 16-bit RGBA PNG: ~770 MB; a 12 MP phone JPEG:
    /// ~110 MB); one that must wait past the decode time limit is shed with 503, one that alone
    /// needs more is refused with 400.
    #[arg(long, env = "GLIMPSE_DECODE_MEMORY_MB", default_value_t = 1024)]
    pub decode_memory_mb: u32,

    /// Images decoded at once (default: one per CPU core). A decode holds its slot until it
    /// really ends, even past its caller's time limit.
    #[arg(long, env = "GLIMPSE_DECODE_THREADS")]
    pub decode_threads: Option<usize>,

    /// Classification calls served at once; more are shed with 503 OVERLOADED.
    #[arg(long, env = "GLIMPSE_MAX_IN_FLIGHT", default_value_t = 64)]
    pub max_in_flight: usize,

    /// Forward passes run at once over all models (each already uses every core); a model's
    /// batcher runs one pass at a time, the others' wait their turn.
    #[arg(long, env = "GLIMPSE_INFERENCE_WORKERS", default_value_t = 1)]
    pub inference_workers: usize,

    /// Weights of every loaded model: `fp32` (answers within 1e-4 of transformers), `bf16` or
    /// `int8` (faster on CPUs with AVX-512 BF16 / VNNI; embeddings within cosine 0.999 of fp32).
    #[arg(long, env = "GLIMPSE_PRECISION", default_value = "fp32")]
    pub precision: String,

    /// Most images one forward pass takes: calls waiting for the same model are batched up to
    /// this (1 turns batching off).
    #[arg(long, env = "GLIMPSE_BATCH_SIZE", default_value_t = 8)]
    pub batch_size: usize,

    /// Milliseconds a model's worker may wait, after the first call arrives, for calls still
    /// being decoded for the same model to join its batch (a lone call never waits; 0: batch only
    /// what is already queued). 10 lets calls that come back together (8 clients answered by one
    /// pass) be decoded on 2 cores and make one full pass again, instead of two half passes.
    #[arg(long, env = "GLIMPSE_BATCH_WINDOW_MS", default_value_t = 10)]
    pub batch_window_ms: u64,

    /// Calls per second allowed per API key (token bucket); 0 turns the limit off.
    #[arg(long, env = "GLIMPSE_RATE_LIMIT_PER_SECOND", default_value_t = 0.0)]
    pub rate_limit_per_second: f64,

    /// `?url=` fetches that may fail per key per minute (refused addresses, unreachable or
    /// misbehaving hosts, wrong content); past it the key's `url=` calls get 429 before any fetch
    /// until the window refills. Failed fetches are free, so this is what bounds using the server
    /// to probe other hosts. 0 turns it off.
    #[arg(long, env = "GLIMPSE_FAILED_FETCHES_PER_MINUTE", default_value_t = 10)]
    pub failed_fetches_per_minute: u32,

    /// Calls a key may make in a burst above its steady rate.
    #[arg(long, env = "GLIMPSE_RATE_LIMIT_BURST", default_value_t = 10)]
    pub rate_limit_burst: u32,

    /// Prompt templates, `|`-separated; each must contain `{label}`. Several are averaged
    /// (prompt ensembling).
    #[arg(
        long,
        env = "GLIMPSE_PROMPT_TEMPLATES",
        value_delimiter = '|',
        default_value = "a photo of a {label}."
    )]
    pub prompt_templates: Vec<String>,

    /// Seconds allowed for decoding and preprocessing one image.
    #[arg(long, env = "GLIMPSE_DECODE_TIMEOUT_SECS", default_value_t = 20)]
    pub decode_timeout_secs: u64,

    /// Seconds allowed for each TCP/TLS connect of a `?url=` fetch.
    #[arg(long, env = "GLIMPSE_FETCH_CONNECT_TIMEOUT_SECS", default_value_t = 3)]
    pub fetch_connect_timeout_secs: u64,

    /// Seconds allowed for a whole `?url=` fetch: resolving, every redirect and the body.
    #[arg(long, env = "GLIMPSE_FETCH_TIMEOUT_SECS", default_value_t = 10)]
    pub fetch_timeout_secs: u64,

    /// Seconds a client gets to send a request's headers (slow clients are cut off).
    #[arg(long, env = "GLIMPSE_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,

    /// Seconds a new connection may stay silent before its first byte; silent ones are closed.
    #[arg(long, env = "GLIMPSE_FIRST_BYTE_TIMEOUT_SECS", default_value_t = 5)]
    pub first_byte_timeout_secs: u64,

    /// Seconds a connection (HTTP/1 keep-alive or HTTP/2) may stay open with no request in
    /// flight before the server closes it. HTTP/1 is also cut by the header timeout while it
    /// waits for its next request.
    #[arg(long, env = "GLIMPSE_IDLE_TIMEOUT_SECS", default_value_t = 30)]
    pub idle_timeout_secs: u64,

    /// Seconds between HTTP/2 keep-alive pings on a quiet connection; a ping not answered within
    /// as long again closes it.
    #[arg(long, env = "GLIMPSE_HTTP2_KEEP_ALIVE_SECS", default_value_t = 20)]
    pub http2_keep_alive_secs: u64,

    /// Open client connections at most (lowered to fit the open-file limit). At the cap, idle
    /// connections are closed to make room; if none frees up, the newcomer gets a 503 and is
    /// closed.
    #[arg(long, env = "GLIMPSE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Seconds, after SIGTERM, during which the server keeps serving while `/readyz` answers 503
    /// so load balancers stop sending; then it stops accepting.
    #[arg(long, env = "GLIMPSE_SHUTDOWN_DRAIN_SECS", default_value_t = 5)]
    pub shutdown_drain_secs: u64,

    /// Seconds, after the drain, that calls in flight get to finish before the process exits
    /// anyway (idle connections are closed at once). Keep preStop + drain + grace under the
    /// orchestrator's kill deadline (Kubernetes `terminationGracePeriodSeconds`, 40 in deploy/).
    #[arg(long, env = "GLIMPSE_SHUTDOWN_GRACE_SECS", default_value_t = 25)]
    pub shutdown_grace_secs: u64,

    /// Seconds after which a reservation still open is taken to belong to a request that died
    /// (a killed replica) and is refunded by the reaper; it runs every quarter of this (at most
    /// every minute). Keep it well above the longest request.
    #[arg(long, env = "GLIMPSE_REAP_AFTER_SECS", default_value_t = 600)]
    pub reap_after_secs: u64,

    /// Seconds a call whose answer is ready keeps retrying its settle (the charge) while the
    /// store fails (a write lock held by another process, a dropped database connection) before
    /// it answers 503 uncharged instead: a 200 is only sent once its charge is committed. At most
    /// half of GLIMPSE_REAP_AFTER_SECS is used, so the reaper never refunds a call still settling.
    #[arg(long, env = "GLIMPSE_SETTLE_RETRY_SECS", default_value_t = 30)]
    pub settle_retry_secs: u64,

    /// Seconds an `Idempotency-Key` answer is kept and replayed (Stripe keeps 24 h); older rows
    /// are pruned by the reaper and a reused key after that runs as new.
    #[arg(long, env = "GLIMPSE_IDEMPOTENCY_TTL_SECS", default_value_t = 86_400)]
    pub idempotency_ttl_secs: u64,

    /// Most stored `Idempotency-Key` answers (within the TTL) one API key may hold; a call with a
    /// new Idempotency-Key over that answers 429 RATE_LIMITED and stores nothing (nothing older
    /// is evicted, so a stored answer is never lost before its TTL).
    #[arg(long, env = "GLIMPSE_IDEMPOTENCY_MAX_PER_KEY", default_value_t = 5000)]
    pub idempotency_max_per_key: u32,

    /// Log format: `text` or `json`.
    #[arg(long, env = "GLIMPSE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("bind", &self.bind)
            .field("database_url", &redact_url(&self.database_url))
            .field("clip_model", &self.clip_model)
            .field("vit_model", &self.vit_model)
            .field("extra_clip_models", &self.extra_clip_models)
            .field("extra_vit_models", &self.extra_vit_models)
            .field("model_cache", &self.model_cache)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<REDACTED>"),
            )
            .field("allow_private_urls", &self.allow_private_urls)
            .field("credits_per_call", &self.credits_per_call)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("max_image_pixels", &self.max_image_pixels)
            .field("max_image_side", &self.max_image_side)
            .field("decode_memory_mb", &self.decode_memory_mb)
            .field("decode_threads", &self.decode_threads)
            .field("max_in_flight", &self.max_in_flight)
            .field("inference_workers", &self.inference_workers)
            .field("precision", &self.precision)
            .field("batch_size", &self.batch_size)
            .field("batch_window_ms", &self.batch_window_ms)
            .field("rate_limit_per_second", &self.rate_limit_per_second)
            .field("failed_fetches_per_minute", &self.failed_fetches_per_minute)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field("prompt_templates", &self.prompt_templates)
            .field("decode_timeout_secs", &self.decode_timeout_secs)
            .field(
                "fetch_connect_timeout_secs",
                &self.fetch_connect_timeout_secs,
            )
            .field("fetch_timeout_secs", &self.fetch_timeout_secs)
            .field("header_timeout_secs", &self.header_timeout_secs)
            .field("first_byte_timeout_secs", &self.first_byte_timeout_secs)
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .field("http2_keep_alive_secs", &self.http2_keep_alive_secs)
            .field("max_connections", &self.max_connections)
            .field("shutdown_drain_secs", &self.shutdown_drain_secs)
            .field("shutdown_grace_secs", &self.shutdown_grace_secs)
            .field("reap_after_secs", &self.reap_after_secs)
            .field("settle_retry_secs", &self.settle_retry_secs)
            .field("idempotency_ttl_secs", &self.idempotency_ttl_secs)
            .field("idempotency_max_per_key", &self.idempotency_max_per_key)
            .field("log_format", &self.log_format)
            .finish()
    }
}

/// A Postgres URL may carry a password (`postgres://user:secret@host/db`): keep it out of logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://<REDACTED>@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl Default for ServerConfig {
    /// The documented defaults, as `glimpse serve` with no flags and no variables would have them.
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            c: ServerConfig,
        }
        // Parse from an empty command line without reading the environment, so `Default` is the
        // same whatever GLIMPSE_* variables the process happens to have.
        let cmd = <Wrap as clap::CommandFactory>::command();
        let cmd = cmd.mut_args(|a| a.env(None::<&str>));
        let m = cmd
            .try_get_matches_from(["glimpse"])
            .expect("defaults parse");
        <Wrap as clap::FromArgMatches>::from_arg_matches(&m)
            .expect("defaults parse")
            .c
    }
}

impl ServerConfig {
    /// The default model first, then the extras, without duplicates or blanks.
    pub fn clip_specs(&self) -> Vec<String> {
        specs(&self.clip_model, &self.extra_clip_models)
    }
    pub fn vit_specs(&self) -> Vec<String> {
        specs(&self.vit_model, &self.extra_vit_models)
    }

    /// How long a served call retries its settle: `settle_retry_secs`, at most half of
    /// `reap_after_secs`.
    pub fn settle_retry(&self) -> Duration {
        Duration::from_secs(self.settle_retry_secs)
            .min(Duration::from_secs(self.reap_after_secs) / 2)
    }

    /// The store's tuning from these settings (what `serve` opens the store with).
    pub fn store_options(&self) -> glimpse_store::StoreOptions {
        glimpse_store::StoreOptions {
            idempotency_ttl: Duration::from_secs(self.idempotency_ttl_secs),
            idempotency_max_per_key: self.idempotency_max_per_key,
            ..glimpse_store::StoreOptions::default()
        }
    }

    /// Check everything that can be checked without I/O. The message names the variable.
    pub fn validate(&self) -> anyhow::Result<()> {
        let bad = |var: &str, why: String| anyhow::anyhow!("invalid {var}: {why}");
        self.bind
            .parse::<SocketAddr>()
            .map_err(|_| bad("GLIMPSE_BIND", format!("'{}' is not HOST:PORT", self.bind)))?;
        let db = &self.database_url;
        if !(db.starts_with("sqlite:")
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://"))
        {
            return Err(bad(
                "GLIMPSE_DATABASE_URL",
                "must start with sqlite:// or postgres://".into(),
            ));
        }
        // An empty default turns that family's endpoint off (its route answers 404), but one of
        // the two must serve something.
        if self.clip_specs().is_empty() && self.vit_specs().is_empty() {
            return Err(bad(
                "GLIMPSE_CLIP_MODEL / GLIMPSE_VIT_MODEL",
                "both are empty: set at least one model to serve".into(),
            ));
        }
        if let Some(t) = &self.admin_token {
            if t.len() < 16 {
                return Err(bad(
                    "GLIMPSE_ADMIN_TOKEN",
                    "must be at least 16 characters (or unset to turn the admin API off)".into(),
                ));
            }
        }
        if !(0..=glimpse_store::MAX_CREDITS).contains(&self.credits_per_call) {
            return Err(bad("GLIMPSE_CREDITS_PER_CALL", "must be 0 or more".into()));
        }
        if self.max_upload_bytes == 0 {
            return Err(bad("GLIMPSE_MAX_UPLOAD_BYTES", "must be at least 1".into()));
        }
        if self.decode_memory_mb < 16 {
            return Err(bad(
                "GLIMPSE_DECODE_MEMORY_MB",
                "must be at least 16".into(),
            ));
        }
        if self.decode_threads == Some(0) {
            return Err(bad("GLIMPSE_DECODE_THREADS", "must be at least 1".into()));
        }
        if self.max_image_pixels == 0 || self.max_image_side == 0 {
            return Err(bad(
                "GLIMPSE_MAX_IMAGE_PIXELS / GLIMPSE_MAX_IMAGE_SIDE",
                "must be at least 1".into(),
            ));
        }
        if self.max_in_flight == 0 {
            return Err(bad("GLIMPSE_MAX_IN_FLIGHT", "must be at least 1".into()));
        }
        if self.inference_workers == 0 {
            return Err(bad(
                "GLIMPSE_INFERENCE_WORKERS",
                "must be at least 1".into(),
            ));
        }
        if let Err(e) = self.precision.parse::<glimpse_candle::Precision>() {
            return Err(bad("GLIMPSE_PRECISION", e.to_string()));
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(bad(
                "GLIMPSE_BATCH_SIZE",
                format!("must be 1 to {MAX_BATCH_SIZE}"),
            ));
        }
        if self.batch_window_ms > MAX_BATCH_WINDOW_MS {
            return Err(bad(
                "GLIMPSE_BATCH_WINDOW_MS",
                format!(
                    "must be at most {MAX_BATCH_WINDOW_MS} (it is added to a lone call's latency)"
                ),
            ));
        }
        if !self.rate_limit_per_second.is_finite() || self.rate_limit_per_second < 0.0 {
            return Err(bad(
                "GLIMPSE_RATE_LIMIT_PER_SECOND",
                "must be 0 (off) or a positive number".into(),
            ));
        }
        if self.rate_limit_per_second > 0.0 && self.rate_limit_burst == 0 {
            return Err(bad("GLIMPSE_RATE_LIMIT_BURST", "must be at least 1".into()));
        }
        if self.prompt_templates.is_empty() {
            return Err(bad(
                "GLIMPSE_PROMPT_TEMPLATES",
                "must hold a template".into(),
            ));
        }
        if let Some(t) = self
            .prompt_templates
            .iter()
            .find(|t| !t.contains("{label}"))
        {
            return Err(bad(
                "GLIMPSE_PROMPT_TEMPLATES",
                format!("template '{t}' has no {{label}}"),
            ));
        }
        if self.decode_timeout_secs == 0 {
            return Err(bad(
                "GLIMPSE_DECODE_TIMEOUT_SECS",
                "must be at least 1".into(),
            ));
        }
        if self.reap_after_secs == 0 {
            return Err(anyhow::anyhow!(
                "GLIMPSE_REAP_AFTER_SECS must be at least 1"
            ));
        }
        if self.settle_retry_secs == 0 {
            return Err(bad(
                "GLIMPSE_SETTLE_RETRY_SECS",
                "must be at least 1".into(),
            ));
        }
        if self.idempotency_ttl_secs == 0 {
            return Err(bad(
                "GLIMPSE_IDEMPOTENCY_TTL_SECS",
                "must be at least 1".into(),
            ));
        }
        if self.idempotency_max_per_key == 0 {
            return Err(bad(
                "GLIMPSE_IDEMPOTENCY_MAX_PER_KEY",
                "must be at least 1".into(),
            ));
        }
        if self.fetch_timeout_secs == 0 {
            return Err(bad(
                "GLIMPSE_FETCH_TIMEOUT_SECS",
                "must be at least 1".into(),
            ));
        }
        if self.fetch_connect_timeout_secs == 0
            || self.fetch_connect_timeout_secs > self.fetch_timeout_secs
        {
            return Err(bad(
                "GLIMPSE_FETCH_CONNECT_TIMEOUT_SECS",
                format!(
                    "must be from 1 to GLIMPSE_FETCH_TIMEOUT_SECS ({})",
                    self.fetch_timeout_secs
                ),
            ));
        }
        if self.header_timeout_secs == 0 {
            return Err(bad(
                "GLIMPSE_HEADER_TIMEOUT_SECS",
                "must be at least 1".into(),
            ));
        }
        for (var, v) in [
            (
                "GLIMPSE_FIRST_BYTE_TIMEOUT_SECS",
                self.first_byte_timeout_secs,
            ),
            ("GLIMPSE_IDLE_TIMEOUT_SECS", self.idle_timeout_secs),
            ("GLIMPSE_HTTP2_KEEP_ALIVE_SECS", self.http2_keep_alive_secs),
            ("GLIMPSE_SHUTDOWN_GRACE_SECS", self.shutdown_grace_secs),
        ] {
            if !(1..=MAX_CONN_SECS).contains(&v) {
                return Err(bad(var, format!("must be 1 to {MAX_CONN_SECS}")));
            }
        }
        if self.shutdown_drain_secs > MAX_CONN_SECS {
            return Err(bad(
                "GLIMPSE_SHUTDOWN_DRAIN_SECS",
                format!("must be 0 to {MAX_CONN_SECS}"),
            ));
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections) {
            return Err(bad(
                "GLIMPSE_MAX_CONNECTIONS",
                format!("must be 1 to {MAX_CONNECTIONS}"),
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(bad("GLIMPSE_LOG_FORMAT", "must be text or json".into()));
        }
        Ok(())
    }
}

/// A batch is one tensor in memory: 256 images of 224² are ~150 MB of pixels alone.
const MAX_BATCH_SIZE: usize = 256;
const MAX_BATCH_WINDOW_MS: u64 = 1000;

/// Connection timeouts and the shutdown periods: a day is already far past any sane value.
const MAX_CONN_SECS: u64 = 86_400;
/// Each connection is a file descriptor and a task; the cap is also clamped to the fd limit.
const MAX_CONNECTIONS: usize = 1_000_000;

fn specs(default: &str, extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in std::iter::once(default).chain(extra.iter().map(String::as_str)) {
        let s = s.trim();
        if !s.is_empty() && !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        let c = ServerConfig::default();
        assert_eq!(c.bind, "127.0.0.1:8080");
        assert_eq!(c.database_url, "sqlite://glimpse.db");
        assert_eq!(c.clip_specs(), vec!["openai/clip-vit-base-patch32"]);
        assert_eq!(c.prompt_templates, vec!["a photo of a {label}."]);
        assert_eq!(c.credits_per_call, 1);
        assert_eq!((c.batch_size, c.batch_window_ms), (8, 10));
        assert_eq!(c.precision, "fp32");
        assert_eq!(
            (
                c.settle_retry_secs,
                c.idempotency_ttl_secs,
                c.idempotency_max_per_key
            ),
            (30, 86_400, 5000)
        );
        assert_eq!(c.settle_retry(), Duration::from_secs(30));
        let c2 = ServerConfig {
            reap_after_secs: 10,
            ..ServerConfig::default()
        };
        assert_eq!(c2.settle_retry(), Duration::from_secs(5));
        let o = c.store_options();
        assert_eq!(o.idempotency_ttl, glimpse_store::DEFAULT_IDEMPOTENCY_TTL);
        assert_eq!(
            o.idempotency_max_per_key,
            glimpse_store::DEFAULT_IDEMPOTENCY_MAX_PER_KEY
        );
        for (settle, reap, ok) in [(0, 600, false), (600, 600, true), (1, 1, true)] {
            let c = ServerConfig {
                settle_retry_secs: settle,
                reap_after_secs: reap,
                ..ServerConfig::default()
            };
            match c.validate() {
                Ok(()) => assert!(ok, "{settle}/{reap} accepted"),
                Err(e) => {
                    assert!(!ok, "{settle}/{reap} refused: {e}");
                    assert!(e.to_string().contains("GLIMPSE_SETTLE_RETRY_SECS"), "{e}");
                }
            }
        }
        assert_eq!(
            (c.fetch_connect_timeout_secs, c.fetch_timeout_secs),
            (3, 10)
        );
        assert_eq!(
            (
                c.first_byte_timeout_secs,
                c.idle_timeout_secs,
                c.http2_keep_alive_secs,
                c.max_connections,
            ),
            (5, 30, 20, 1024)
        );
        // preStop (5 s in deploy/k8s) + drain + grace stays under terminationGracePeriodSeconds.
        assert!(5 + c.shutdown_drain_secs + c.shutdown_grace_secs < 40);
        c.validate().unwrap();
        for (precision, ok) in [("bf16", true), ("INT8", true), ("int4", false), ("", false)] {
            let c = ServerConfig {
                precision: precision.into(),
                ..ServerConfig::default()
            };
            match c.validate() {
                Ok(()) => assert!(ok, "{precision} accepted"),
                Err(e) => {
                    assert!(!ok, "{precision} refused: {e}");
                    assert!(e.to_string().contains("GLIMPSE_PRECISION"), "{e}");
                }
            }
        }
        let c = ServerConfig {
            batch_size: 0,
            ..ServerConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("GLIMPSE_BATCH_SIZE"));
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = ServerConfig {
            admin_token: Some("super-secret-token-123".into()),
            database_url: "postgres://u:pw123@db/glimpse".into(),
            ..ServerConfig::default()
        };
        let s = format!("{c:?}");
        assert!(!s.contains("super-secret"), "{s}");
        assert!(!s.contains("pw123"), "{s}");
        assert!(s.contains("<REDACTED>"));
    }

    #[test]
    fn validation_names_the_variable() {
        let c = ServerConfig {
            prompt_templates: vec!["no placeholder".into()],
            ..ServerConfig::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("GLIMPSE_PROMPT_TEMPLATES"), "{e}");
        let c = ServerConfig {
            bind: "nope".into(),
            ..ServerConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("GLIMPSE_BIND"));
        for (connect, total, var) in [
            (3, 0, "GLIMPSE_FETCH_TIMEOUT_SECS"),
            (0, 10, "GLIMPSE_FETCH_CONNECT_TIMEOUT_SECS"),
            (11, 10, "GLIMPSE_FETCH_CONNECT_TIMEOUT_SECS"),
        ] {
            let c = ServerConfig {
                fetch_connect_timeout_secs: connect,
                fetch_timeout_secs: total,
                ..ServerConfig::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(var), "{connect}/{total}: {e}");
        }
    }

    #[test]
    fn connection_settings_are_checked() {
        type Set = fn(&mut ServerConfig);
        let rows: [(Set, &str); 5] = [
            (
                |c| c.first_byte_timeout_secs = 0,
                "GLIMPSE_FIRST_BYTE_TIMEOUT_SECS",
            ),
            (|c| c.idle_timeout_secs = 0, "GLIMPSE_IDLE_TIMEOUT_SECS"),
            (
                |c| c.http2_keep_alive_secs = 0,
                "GLIMPSE_HTTP2_KEEP_ALIVE_SECS",
            ),
            (|c| c.max_connections = 0, "GLIMPSE_MAX_CONNECTIONS"),
            (|c| c.shutdown_grace_secs = 0, "GLIMPSE_SHUTDOWN_GRACE_SECS"),
        ];
        for (set, var) in rows {
            let mut c = ServerConfig::default();
            set(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(var), "{var}: {e}");
        }
        let c = ServerConfig {
            shutdown_drain_secs: 0,
            ..ServerConfig::default()
        };
        c.validate().unwrap();
    }

    #[test]
    fn specs_put_the_default_first_and_dedup() {
        let c = ServerConfig {
            clip_model: "a".into(),
            extra_clip_models: vec!["b".into(), " a ".into(), "".into()],
            ..ServerConfig::default()
        };
        assert_eq!(c.clip_specs(), vec!["a", "b"]);
    }
}
