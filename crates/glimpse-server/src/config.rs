//! `glimpse serve` settings, grouped by what they tune. Every field is a flag and a `GLIMPSE_…`
//! variable; the `///` docs are the `--help` text, and each group is a heading there. Values are
//! typed (socket address, enums, ranges) so clap refuses a bad one with its own message naming
//! the flag; `validate` keeps only what clap cannot say (checks across fields, and values whose
//! echo in clap's message could leak a secret).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{EnumValueParser, RangedU64ValueParser, TypedValueParser};
use clap::{value_parser, Args, ValueEnum};

/// The CLIP model served when none is configured (`GLIMPSE_CLIP_MODEL`).
pub const DEFAULT_CLIP_MODEL: &str = "openai/clip-vit-base-patch32";
/// The ViT model served when none is configured (`GLIMPSE_VIT_MODEL`).
pub const DEFAULT_VIT_MODEL: &str = "google/vit-base-patch16-224";
/// The key store when none is configured (`GLIMPSE_DATABASE_URL`), for `serve` and `keys`.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://glimpse.db";

/// A batch is one tensor in memory: 256 images of 224² are ~150 MB of pixels alone.
const MAX_BATCH_SIZE: u64 = 256;
/// The window is added to a lone call's latency.
const MAX_BATCH_WINDOW_MS: u64 = 1000;
/// Connection timeouts and the shutdown periods: a day is already far past any sane value.
const MAX_CONN_SECS: u64 = 86_400;
/// Each connection is a file descriptor and a task; the cap is also clamped to the fd limit.
const MAX_CONNECTIONS: u64 = 1_000_000;
/// Prompt-cache bounds per model: ten million prompts or 64 GiB is past any label vocabulary.
const MAX_PROMPT_CACHE_ENTRIES: u64 = 10_000_000;
const MAX_PROMPT_CACHE_MB: i64 = 65_536;

#[derive(Args, Clone, Debug)]
pub struct ServerConfig {
    #[command(flatten)]
    pub listen: ListenConfig,
    #[command(flatten)]
    pub store: StoreConfig,
    #[command(flatten)]
    pub models: ModelConfig,
    #[command(flatten)]
    pub batching: BatchingConfig,
    #[command(flatten)]
    pub limits: LimitsConfig,
    #[command(flatten)]
    pub decode: DecodeConfig,
    #[command(flatten)]
    pub fetch: FetchConfig,
    #[command(flatten)]
    pub logging: LoggingConfig,
}

/// The socket and what the accept loop bounds around each connection.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Listening")]
pub struct ListenConfig {
    /// Address to listen on.
    #[arg(long, env = "GLIMPSE_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// Seconds a client gets to send a request's headers (slow clients are cut off).
    #[arg(long, env = "GLIMPSE_HEADER_TIMEOUT_SECS", default_value_t = 10,
          value_parser = value_parser!(u64).range(1..))]
    pub header_timeout_secs: u64,

    /// Seconds a new connection may stay silent before its first byte; silent ones are closed.
    #[arg(long, env = "GLIMPSE_FIRST_BYTE_TIMEOUT_SECS", default_value_t = 5,
          value_parser = value_parser!(u64).range(1..=MAX_CONN_SECS))]
    pub first_byte_timeout_secs: u64,

    /// Seconds a connection (HTTP/1 keep-alive or HTTP/2) may stay open with no request in
    /// flight before the server closes it. HTTP/1 is also cut by the header timeout while it
    /// waits for its next request.
    #[arg(long, env = "GLIMPSE_IDLE_TIMEOUT_SECS", default_value_t = 30,
          value_parser = value_parser!(u64).range(1..=MAX_CONN_SECS))]
    pub idle_timeout_secs: u64,

    /// Seconds between HTTP/2 keep-alive pings on a quiet connection; a ping not answered within
    /// as long again closes it.
    #[arg(long, env = "GLIMPSE_HTTP2_KEEP_ALIVE_SECS", default_value_t = 20,
          value_parser = value_parser!(u64).range(1..=MAX_CONN_SECS))]
    pub http2_keep_alive_secs: u64,

    /// Open client connections at most (lowered to fit the open-file limit). At the cap, idle
    /// connections are closed to make room; if none frees up, the newcomer gets a 503 and is
    /// closed.
    #[arg(long, env = "GLIMPSE_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_CONNECTIONS))]
    pub max_connections: usize,

    /// Seconds, after SIGTERM, during which the server keeps serving while `/readyz` answers 503
    /// so load balancers stop sending; then it stops accepting.
    #[arg(long, env = "GLIMPSE_SHUTDOWN_DRAIN_SECS", default_value_t = 5,
          value_parser = value_parser!(u64).range(0..=MAX_CONN_SECS))]
    pub shutdown_drain_secs: u64,

    /// Seconds, after the drain, that calls in flight get to finish before the process exits
    /// anyway (idle connections are closed at once). Keep preStop + drain + grace under the
    /// orchestrator's kill deadline (Kubernetes `terminationGracePeriodSeconds`, 40 in deploy/).
    #[arg(long, env = "GLIMPSE_SHUTDOWN_GRACE_SECS", default_value_t = 25,
          value_parser = value_parser!(u64).range(1..=MAX_CONN_SECS))]
    pub shutdown_grace_secs: u64,
}

/// Keys, credits and the ledger.
#[derive(Args, Clone)]
#[command(next_help_heading = "Keys and credits")]
pub struct StoreConfig {
    /// Key store: `sqlite://PATH` (created if missing) or `postgres://…`.
    #[arg(long, env = "GLIMPSE_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Bearer token that enables the `/admin` API; unset, `/admin` answers 404.
    #[arg(long, env = "GLIMPSE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Credits one classification costs.
    #[arg(long, env = "GLIMPSE_CREDITS_PER_CALL", default_value_t = 1,
          value_parser = value_parser!(i64).range(0..=glimpse_store::MAX_CREDITS))]
    pub credits_per_call: i64,

    /// Seconds after which a reservation still open is taken to belong to a request that died
    /// (a killed replica) and is refunded by the reaper; it runs every quarter of this (at most
    /// every minute). Keep it well above the longest request.
    #[arg(long, env = "GLIMPSE_REAP_AFTER_SECS", default_value_t = 600,
          value_parser = value_parser!(u64).range(1..))]
    pub reap_after_secs: u64,

    /// Seconds a call whose answer is ready keeps retrying its settle (the charge) while the
    /// store fails (a write lock held by another process, a dropped database connection) before
    /// it answers 503 uncharged instead: a 200 is only sent once its charge is committed. At most
    /// half of GLIMPSE_REAP_AFTER_SECS is used, so the reaper never refunds a call still settling.
    #[arg(long, env = "GLIMPSE_SETTLE_RETRY_SECS", default_value_t = 30,
          value_parser = value_parser!(u64).range(1..))]
    pub settle_retry_secs: u64,

    /// Seconds an `Idempotency-Key` answer is kept and replayed (Stripe keeps 24 h); older rows
    /// are pruned by the reaper and a reused key after that runs as new.
    #[arg(long, env = "GLIMPSE_IDEMPOTENCY_TTL_SECS", default_value_t = 86_400,
          value_parser = value_parser!(u64).range(1..))]
    pub idempotency_ttl_secs: u64,

    /// Most stored `Idempotency-Key` answers (within the TTL) one API key may hold; a call with a
    /// new Idempotency-Key over that answers 429 RATE_LIMITED and stores nothing (nothing older
    /// is evicted, so a stored answer is never lost before its TTL).
    #[arg(long, env = "GLIMPSE_IDEMPOTENCY_MAX_PER_KEY", default_value_t = 5000,
          value_parser = value_parser!(u32).range(1..))]
    pub idempotency_max_per_key: u32,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("database_url", &redact_url(&self.database_url))
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<REDACTED>"),
            )
            .field("credits_per_call", &self.credits_per_call)
            .field("reap_after_secs", &self.reap_after_secs)
            .field("settle_retry_secs", &self.settle_retry_secs)
            .field("idempotency_ttl_secs", &self.idempotency_ttl_secs)
            .field("idempotency_max_per_key", &self.idempotency_max_per_key)
            .finish()
    }
}

/// Which models are served and how they run.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Models")]
pub struct ModelConfig {
    /// Default CLIP model: a Hugging Face Hub id or a local folder.
    #[arg(long, env = "GLIMPSE_CLIP_MODEL", default_value = DEFAULT_CLIP_MODEL)]
    pub clip_model: String,

    /// Default ViT model: a Hugging Face Hub id or a local folder.
    #[arg(long, env = "GLIMPSE_VIT_MODEL", default_value = DEFAULT_VIT_MODEL)]
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

    /// Weights of every loaded model: `fp32` (answers within 1e-4 of transformers), `bf16` or
    /// `int8` (faster on CPUs with AVX-512 BF16 / VNNI; embeddings within cosine 0.999 of fp32).
    #[arg(long, env = "GLIMPSE_PRECISION", default_value = "fp32",
          ignore_case = true, value_parser = precision_parser())]
    pub precision: glimpse_candle::Precision,

    /// Prompt templates, `|`-separated; each must contain `{label}`. Several are averaged
    /// (prompt ensembling).
    #[arg(
        long,
        env = "GLIMPSE_PROMPT_TEMPLATES",
        value_delimiter = '|',
        default_value = glimpse_core::labels::DEFAULT_TEMPLATE,
        value_parser = parse_template
    )]
    pub prompt_templates: Vec<String>,

    /// Prompt embeddings each CLIP model keeps, so a repeated, reordered, narrowed or overlapping
    /// label set sends only its new prompts to the text tower; the least recently used go first.
    /// 0 keeps none.
    #[arg(long, env = "GLIMPSE_PROMPT_CACHE_ENTRIES", default_value_t = 8192,
          value_parser = RangedU64ValueParser::<usize>::new().range(0..=MAX_PROMPT_CACHE_ENTRIES))]
    pub prompt_cache_entries: usize,

    /// Memory each CLIP model's prompt cache may hold, in MB (an entry counts its floats × 4 plus
    /// its prompt's bytes). The default, 64, holds the default 8192 entries even of a 1024-wide
    /// text tower (about 4 KiB each, some 33 MiB), so by default the entry bound binds. 0 keeps none.
    #[arg(long, env = "GLIMPSE_PROMPT_CACHE_MB", default_value_t = 64,
          value_parser = value_parser!(u32).range(0..=MAX_PROMPT_CACHE_MB))]
    pub prompt_cache_mb: u32,
}

/// How calls waiting for the same model share a forward pass.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Batching")]
pub struct BatchingConfig {
    /// Most images one forward pass takes: calls waiting for the same model are batched up to
    /// this (1 turns batching off).
    #[arg(long, env = "GLIMPSE_BATCH_SIZE", default_value_t = 8,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_BATCH_SIZE))]
    pub batch_size: usize,

    /// Milliseconds a model's worker may wait, after the first call arrives, for calls still
    /// being decoded for the same model to join its batch (a lone call never waits; 0: batch only
    /// what is already queued). 10 lets calls that come back together (8 clients answered by one
    /// pass) be decoded on 2 cores and make one full pass again, instead of two half passes.
    #[arg(long, env = "GLIMPSE_BATCH_WINDOW_MS", default_value_t = 10,
          value_parser = value_parser!(u64).range(0..=MAX_BATCH_WINDOW_MS))]
    pub batch_window_ms: u64,

    /// Forward passes run at once over all models (each already uses every core); a model's
    /// batcher runs one pass at a time, the others' wait their turn.
    #[arg(long, env = "GLIMPSE_INFERENCE_WORKERS", default_value_t = 1,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub inference_workers: usize,
}

/// What one call, and one key, may ask of the server.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Limits")]
pub struct LimitsConfig {
    /// Classification calls served at once; more are shed with 503 OVERLOADED.
    #[arg(long, env = "GLIMPSE_MAX_IN_FLIGHT", default_value_t = 64,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_in_flight: usize,

    /// Largest upload or fetched image, in bytes.
    #[arg(long, env = "GLIMPSE_MAX_UPLOAD_BYTES", default_value_t = 20 * 1024 * 1024,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_upload_bytes: usize,

    /// Images per request on the batch routes (`/api/image-classification/*/batch`) and the
    /// embeddings routes.
    #[arg(long, env = "GLIMPSE_MAX_BATCH_IMAGES", default_value_t = 32,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub max_batch_images: usize,

    /// Largest request body on the batch and embeddings routes, in bytes (all images and fields
    /// together; each image is still bounded by GLIMPSE_MAX_UPLOAD_BYTES).
    #[arg(long, env = "GLIMPSE_MAX_BATCH_BYTES", default_value_t = 64 * 1024 * 1024,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_batch_bytes: usize,

    /// Calls per second allowed per API key (token bucket); 0 turns the limit off.
    #[arg(long, env = "GLIMPSE_RATE_LIMIT_PER_SECOND", default_value_t = 0.0,
          value_parser = parse_rate)]
    pub rate_limit_per_second: f64,

    /// Calls a key may make in a burst above its steady rate.
    #[arg(long, env = "GLIMPSE_RATE_LIMIT_BURST", default_value_t = 10)]
    pub rate_limit_burst: u32,
}

/// Image decoding: what is refused before decoding, and what decoding may hold.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Image decoding")]
pub struct DecodeConfig {
    /// Largest image area (width × height) accepted, checked before decoding.
    #[arg(long, env = "GLIMPSE_MAX_IMAGE_PIXELS", default_value_t = 40_000_000,
          value_parser = value_parser!(u64).range(1..))]
    pub max_image_pixels: u64,

    /// Largest image width or height accepted.
    #[arg(long, env = "GLIMPSE_MAX_IMAGE_SIDE", default_value_t = 12_000,
          value_parser = value_parser!(u32).range(1..))]
    pub max_image_side: u32,

    /// Memory all image decodes together may hold, in MB. Each decode is admitted for what its
    /// header says it needs at its peak (a 40 MP 16-bit RGBA PNG: ~770 MB; a 12 MP phone JPEG:
    /// ~110 MB); one that must wait past the decode time limit is shed with 503, one that alone
    /// needs more is refused with 400.
    #[arg(long, env = "GLIMPSE_DECODE_MEMORY_MB", default_value_t = 1024,
          value_parser = value_parser!(u32).range(16..))]
    pub decode_memory_mb: u32,

    /// Images decoded at once (default: one per CPU core). A decode holds its slot until it
    /// really ends, even past its caller's time limit.
    #[arg(long, env = "GLIMPSE_DECODE_THREADS",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub decode_threads: Option<usize>,

    /// How JPEGs are decoded: `exact` (every pixel, then the resize: preprocessing identical to
    /// Pillow's) or `fast` (libjpeg scales by 1/2, 1/4 or 1/8 while decoding, keeping at least
    /// twice the model's resize target, then the same resize; see docs/ACCURACY.md).
    #[arg(
        long = "decode",
        env = "GLIMPSE_DECODE",
        value_enum,
        default_value = "exact"
    )]
    pub decode_mode: DecodeModeName,

    /// Seconds allowed for decoding and preprocessing one image.
    #[arg(long, env = "GLIMPSE_DECODE_TIMEOUT_SECS", default_value_t = 20,
          value_parser = value_parser!(u64).range(1..))]
    pub decode_timeout_secs: u64,
}

/// `?url=` images: where they may come from and how long fetching them may take.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "URL fetches")]
pub struct FetchConfig {
    /// Let `url=` reach loopback and private addresses (tests and trusted networks only).
    #[arg(long, env = "GLIMPSE_ALLOW_PRIVATE_URLS", default_value_t = false)]
    pub allow_private_urls: bool,

    /// Seconds allowed for each TCP/TLS connect of a `?url=` fetch.
    #[arg(long, env = "GLIMPSE_FETCH_CONNECT_TIMEOUT_SECS", default_value_t = 3,
          value_parser = value_parser!(u64).range(1..))]
    pub fetch_connect_timeout_secs: u64,

    /// Seconds allowed for a whole `?url=` fetch: resolving, every redirect and the body.
    #[arg(long, env = "GLIMPSE_FETCH_TIMEOUT_SECS", default_value_t = 10,
          value_parser = value_parser!(u64).range(1..))]
    pub fetch_timeout_secs: u64,

    /// `?url=` fetches that may fail per key per minute (refused addresses, unreachable or
    /// misbehaving hosts, wrong content); past it the key's `url=` calls get 429 before any fetch
    /// until the window refills. Failed fetches are free, so this is what bounds using the server
    /// to probe other hosts. 0 turns it off.
    #[arg(long, env = "GLIMPSE_FAILED_FETCHES_PER_MINUTE", default_value_t = 10)]
    pub failed_fetches_per_minute: u32,
}

#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Logging")]
pub struct LoggingConfig {
    /// Log format.
    #[arg(long, env = "GLIMPSE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The names `GLIMPSE_DECODE` / `--decode` take (`glimpse-core` stays free of clap).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum DecodeModeName {
    /// Every pixel, then the Pillow-exact resize.
    #[default]
    Exact,
    /// JPEGs decoded at a DCT scale of at least twice the resize target, then the same resize.
    Fast,
}

impl From<DecodeModeName> for glimpse_core::image::DecodeMode {
    fn from(m: DecodeModeName) -> Self {
        match m {
            DecodeModeName::Exact => Self::Exact,
            DecodeModeName::Fast => Self::Fast,
        }
    }
}

/// The names `GLIMPSE_PRECISION` / `--precision` take. `glimpse-candle` stays free of clap, so
/// this mirror gives clap the list (shown in `--help`, named in its errors) and converts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PrecisionName {
    #[value(name = "fp32", alias = "f32", alias = "float32")]
    Fp32,
    #[value(alias = "bfloat16")]
    Bf16,
    #[value(alias = "i8")]
    Int8,
}

impl From<PrecisionName> for glimpse_candle::Precision {
    fn from(p: PrecisionName) -> Self {
        match p {
            PrecisionName::Fp32 => Self::F32,
            PrecisionName::Bf16 => Self::Bf16,
            PrecisionName::Int8 => Self::Int8,
        }
    }
}

/// The value parser of every `--precision` flag (`serve`, `classify`): `fp32`, `bf16` or `int8`.
/// Use it with `ignore_case = true`, as the names were always taken in any case.
pub fn precision_parser() -> impl TypedValueParser<Value = glimpse_candle::Precision> {
    EnumValueParser::<PrecisionName>::new().map(glimpse_candle::Precision::from)
}

fn parse_template(s: &str) -> Result<String, String> {
    if s.contains("{label}") {
        Ok(s.to_string())
    } else {
        Err("a template must contain {label}".into())
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err("must be 0 (off) or a positive number".into()),
    }
}

/// A Postgres URL may carry a password (`postgres://user:secret@host/db`): keep it out of logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://<REDACTED>@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// A group's documented defaults, as `glimpse serve` with no flags and no variables would have
/// them: parsed from an empty command line without reading the environment, so the defaults are
/// written once (in the `#[arg]` attributes) and `Default` is the same whatever `GLIMPSE_*`
/// variables the process happens to have.
fn clap_defaults<T: Args + clap::FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("glimpse")).mut_args(|a| a.env(None::<&str>));
    let m = cmd
        .try_get_matches_from(["glimpse"])
        .expect("defaults parse");
    T::from_arg_matches(&m).expect("defaults parse")
}

macro_rules! default_from_clap {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                clap_defaults()
            }
        }
    )*};
}
default_from_clap!(
    ServerConfig,
    ListenConfig,
    StoreConfig,
    ModelConfig,
    BatchingConfig,
    LimitsConfig,
    DecodeConfig,
    FetchConfig,
    LoggingConfig
);

impl ServerConfig {
    /// The default model first, then the extras, without duplicates or blanks.
    pub fn clip_specs(&self) -> Vec<String> {
        specs(&self.models.clip_model, &self.models.extra_clip_models)
    }
    pub fn vit_specs(&self) -> Vec<String> {
        specs(&self.models.vit_model, &self.models.extra_vit_models)
    }

    /// Each zero-shot model's prompt-cache bounds from `GLIMPSE_PROMPT_CACHE_ENTRIES` and
    /// `GLIMPSE_PROMPT_CACHE_MB` (MB of 2^20 bytes).
    pub fn prompt_cache_bounds(&self) -> glimpse_core::PromptCacheBounds {
        glimpse_core::PromptCacheBounds {
            entries: self.models.prompt_cache_entries,
            bytes: (self.models.prompt_cache_mb as usize) << 20,
        }
    }

    /// How long a served call retries its settle: `settle_retry_secs`, at most half of
    /// `reap_after_secs`.
    pub fn settle_retry(&self) -> Duration {
        Duration::from_secs(self.store.settle_retry_secs)
            .min(Duration::from_secs(self.store.reap_after_secs) / 2)
    }

    /// The store's tuning from these settings (what `serve` opens the store with).
    pub fn store_options(&self) -> glimpse_store::StoreOptions {
        glimpse_store::StoreOptions {
            idempotency_ttl: Duration::from_secs(self.store.idempotency_ttl_secs),
            idempotency_max_per_key: self.store.idempotency_max_per_key,
            ..glimpse_store::StoreOptions::default()
        }
    }

    /// What clap cannot check: rules across settings, and the two values that may hold a secret
    /// (clap's error would print the value; these messages do not). Single values are checked
    /// by their parsers when the command line is read. The message names the variable.
    pub fn validate(&self) -> anyhow::Result<()> {
        let bad = |var: &str, why: String| anyhow::anyhow!("invalid {var}: {why}");
        let db = &self.store.database_url;
        if !(db.starts_with("sqlite:")
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://"))
        {
            return Err(bad(
                "GLIMPSE_DATABASE_URL",
                "must start with sqlite:// or postgres://".into(),
            ));
        }
        if let Some(t) = &self.store.admin_token {
            if t.len() < 16 {
                return Err(bad(
                    "GLIMPSE_ADMIN_TOKEN",
                    "must be at least 16 characters (or unset to turn the admin API off)".into(),
                ));
            }
        }
        // An empty default turns that family's endpoint off (its route answers 404), but one of
        // the two must serve something.
        if self.clip_specs().is_empty() && self.vit_specs().is_empty() {
            return Err(bad(
                "GLIMPSE_CLIP_MODEL / GLIMPSE_VIT_MODEL",
                "both are empty: set at least one model to serve".into(),
            ));
        }
        // Each template is checked as it is parsed; an empty list can only be built in code.
        if self.models.prompt_templates.is_empty() {
            return Err(bad(
                "GLIMPSE_PROMPT_TEMPLATES",
                "must hold a template".into(),
            ));
        }
        if self.limits.rate_limit_per_second > 0.0 && self.limits.rate_limit_burst == 0 {
            return Err(bad("GLIMPSE_RATE_LIMIT_BURST", "must be at least 1".into()));
        }
        let f = &self.fetch;
        if f.fetch_connect_timeout_secs > f.fetch_timeout_secs {
            return Err(bad(
                "GLIMPSE_FETCH_CONNECT_TIMEOUT_SECS",
                format!(
                    "must be from 1 to GLIMPSE_FETCH_TIMEOUT_SECS ({})",
                    f.fetch_timeout_secs
                ),
            ));
        }
        Ok(())
    }
}

/// The default model first, then the extras, blanks and repeats dropped (what `serve` loads and
/// what the CLI's `models` commands list).
pub fn specs(default: &str, extra: &[String]) -> Vec<String> {
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

    /// `glimpse serve ARGS…` as clap reads it, with no variable set.
    fn parse(args: &[&str]) -> Result<ServerConfig, clap::Error> {
        let cmd = ServerConfig::augment_args(clap::Command::new("serve"))
            .mut_args(|a| a.env(None::<&str>));
        let m = cmd.try_get_matches_from(std::iter::once("serve").chain(args.iter().copied()))?;
        <ServerConfig as clap::FromArgMatches>::from_arg_matches(&m)
    }

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        let c = ServerConfig::default();
        assert_eq!(c.listen.bind, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.store.database_url, "sqlite://glimpse.db");
        assert_eq!(c.clip_specs(), vec!["openai/clip-vit-base-patch32"]);
        assert_eq!(c.vit_specs(), vec!["google/vit-base-patch16-224"]);
        assert_eq!(c.models.prompt_templates, vec!["a photo of a {label}."]);
        assert_eq!(c.store.credits_per_call, 1);
        assert_eq!((c.batching.batch_size, c.batching.batch_window_ms), (8, 10));
        assert_eq!(c.models.precision, glimpse_candle::Precision::F32);
        assert_eq!(
            c.prompt_cache_bounds(),
            glimpse_core::PromptCacheBounds::default()
        );
        assert_eq!(c.prompt_cache_bounds().bytes, 64 << 20);
        assert_eq!(c.logging.log_format, LogFormat::Text);
        assert_eq!(c.decode.decode_mode, DecodeModeName::Exact);
        assert_eq!(
            (
                c.store.settle_retry_secs,
                c.store.idempotency_ttl_secs,
                c.store.idempotency_max_per_key
            ),
            (30, 86_400, 5000)
        );
        assert_eq!(c.settle_retry(), Duration::from_secs(30));
        let mut c2 = ServerConfig::default();
        c2.store.reap_after_secs = 10;
        assert_eq!(c2.settle_retry(), Duration::from_secs(5));
        let o = c.store_options();
        assert_eq!(o.idempotency_ttl, glimpse_store::DEFAULT_IDEMPOTENCY_TTL);
        assert_eq!(
            o.idempotency_max_per_key,
            glimpse_store::DEFAULT_IDEMPOTENCY_MAX_PER_KEY
        );
        assert_eq!(
            (
                c.fetch.fetch_connect_timeout_secs,
                c.fetch.fetch_timeout_secs
            ),
            (3, 10)
        );
        assert_eq!(
            (
                c.listen.first_byte_timeout_secs,
                c.listen.idle_timeout_secs,
                c.listen.http2_keep_alive_secs,
                c.listen.max_connections,
            ),
            (5, 30, 20, 1024)
        );
        // preStop (5 s in deploy/k8s) + drain + grace stays under terminationGracePeriodSeconds.
        assert!(5 + c.listen.shutdown_drain_secs + c.listen.shutdown_grace_secs < 40);
        c.validate().unwrap();
        // The groups' own defaults are the same values.
        assert_eq!(BatchingConfig::default().batch_size, c.batching.batch_size);
        assert_eq!(ModelConfig::default().clip_model, DEFAULT_CLIP_MODEL);
    }

    #[test]
    fn flags_reach_their_group() {
        let c = parse(&[
            "--bind",
            "0.0.0.0:9000",
            "--precision",
            "INT8",
            "--log-format",
            "json",
            "--batch-size",
            "4",
            "--clip-models",
            "a,b",
            "--prompt-templates",
            "a {label}|b {label}",
            "--allow-private-urls",
            "--decode",
            "fast",
        ])
        .unwrap();
        assert_eq!(
            glimpse_core::image::DecodeMode::from(c.decode.decode_mode),
            glimpse_core::image::DecodeMode::Fast
        );
        assert_eq!(c.listen.bind, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.models.precision, glimpse_candle::Precision::Int8);
        assert_eq!(c.logging.log_format, LogFormat::Json);
        assert_eq!(c.batching.batch_size, 4);
        assert_eq!(c.models.extra_clip_models, vec!["a", "b"]);
        assert_eq!(c.models.prompt_templates, vec!["a {label}", "b {label}"]);
        assert!(c.fetch.allow_private_urls);
        for (name, p) in [
            ("fp32", glimpse_candle::Precision::F32),
            ("f32", glimpse_candle::Precision::F32),
            ("BF16", glimpse_candle::Precision::Bf16),
            ("bfloat16", glimpse_candle::Precision::Bf16),
            ("i8", glimpse_candle::Precision::Int8),
        ] {
            let c = parse(&["--precision", name]).unwrap();
            assert_eq!(c.models.precision, p, "{name}");
        }
    }

    #[test]
    fn clap_refuses_bad_values_naming_the_flag() {
        for (args, flag) in [
            (&["--precision", "int4"][..], "--precision"),
            (&["--precision", ""], "--precision"),
            (&["--bind", "nope"], "--bind"),
            (&["--bind", "localhost"], "--bind"),
            (&["--log-format", "xml"], "--log-format"),
            (&["--decode", "quick"], "--decode"),
            (&["--batch-size", "0"], "--batch-size"),
            (&["--batch-size", "257"], "--batch-size"),
            (&["--batch-window-ms", "1001"], "--batch-window-ms"),
            (&["--credits-per-call=-1"], "--credits-per-call"),
            (&["--max-upload-bytes", "0"], "--max-upload-bytes"),
            (&["--decode-memory-mb", "15"], "--decode-memory-mb"),
            (&["--decode-threads", "0"], "--decode-threads"),
            (&["--max-in-flight", "0"], "--max-in-flight"),
            (&["--inference-workers", "0"], "--inference-workers"),
            (&["--rate-limit-per-second=-1"], "--rate-limit-per-second"),
            (
                &["--rate-limit-per-second", "inf"],
                "--rate-limit-per-second",
            ),
            (
                &["--prompt-templates", "no placeholder"],
                "--prompt-templates",
            ),
            (&["--settle-retry-secs", "0"], "--settle-retry-secs"),
            (&["--reap-after-secs", "0"], "--reap-after-secs"),
            (&["--idempotency-ttl-secs", "0"], "--idempotency-ttl-secs"),
            (
                &["--idempotency-max-per-key", "0"],
                "--idempotency-max-per-key",
            ),
            (&["--fetch-timeout-secs", "0"], "--fetch-timeout-secs"),
            (
                &["--fetch-connect-timeout-secs", "0"],
                "--fetch-connect-timeout-secs",
            ),
            (&["--header-timeout-secs", "0"], "--header-timeout-secs"),
            (
                &["--first-byte-timeout-secs", "0"],
                "--first-byte-timeout-secs",
            ),
            (&["--idle-timeout-secs", "86401"], "--idle-timeout-secs"),
            (&["--http2-keep-alive-secs", "0"], "--http2-keep-alive-secs"),
            (&["--shutdown-grace-secs", "0"], "--shutdown-grace-secs"),
            (&["--shutdown-drain-secs", "86401"], "--shutdown-drain-secs"),
            (&["--max-connections", "0"], "--max-connections"),
            (&["--max-image-pixels", "0"], "--max-image-pixels"),
            (&["--max-image-side", "0"], "--max-image-side"),
            (&["--decode-timeout-secs", "0"], "--decode-timeout-secs"),
        ] {
            let e = parse(args).expect_err(&format!("{args:?} accepted"));
            use clap::error::ErrorKind::{InvalidValue, ValueValidation};
            assert!(
                matches!(e.kind(), InvalidValue | ValueValidation),
                "{args:?}: {e}"
            );
            assert!(e.to_string().contains(flag), "{args:?}: {e}");
        }
        // The edges that are allowed.
        let c = parse(&["--shutdown-drain-secs", "0", "--batch-window-ms", "0"]).unwrap();
        assert_eq!(
            (c.listen.shutdown_drain_secs, c.batching.batch_window_ms),
            (0, 0)
        );
        parse(&["--batch-size", "256", "--credits-per-call", "0"]).unwrap();
    }

    #[test]
    fn debug_redacts_secrets() {
        let mut c = ServerConfig::default();
        c.store.admin_token = Some("super-secret-token-123".into());
        c.store.database_url = "postgres://u:pw123@db/glimpse".into();
        let s = format!("{c:?}");
        assert!(!s.contains("super-secret"), "{s}");
        assert!(!s.contains("pw123"), "{s}");
        assert!(s.contains("<REDACTED>"));
        assert!(s.contains("batch_size"), "{s}");
    }

    #[test]
    fn validation_names_the_variable() {
        type Set = fn(&mut ServerConfig);
        let rows: [(Set, &str); 8] = [
            (
                |c| c.store.database_url = "mysql://u:pw@h/db".into(),
                "GLIMPSE_DATABASE_URL",
            ),
            (
                |c| c.store.admin_token = Some("short".into()),
                "GLIMPSE_ADMIN_TOKEN",
            ),
            (
                |c| {
                    c.models.clip_model = " ".into();
                    c.models.vit_model = String::new();
                },
                "GLIMPSE_CLIP_MODEL",
            ),
            (
                |c| c.models.prompt_templates.clear(),
                "GLIMPSE_PROMPT_TEMPLATES",
            ),
            (
                |c| {
                    c.limits.rate_limit_per_second = 1.0;
                    c.limits.rate_limit_burst = 0;
                },
                "GLIMPSE_RATE_LIMIT_BURST",
            ),
            (
                |c| {
                    c.fetch.fetch_connect_timeout_secs = 11;
                    c.fetch.fetch_timeout_secs = 10;
                },
                "GLIMPSE_FETCH_CONNECT_TIMEOUT_SECS",
            ),
            (
                |c| c.store.admin_token = Some(String::new()),
                "GLIMPSE_ADMIN_TOKEN",
            ),
            (
                |c| c.store.database_url = "glimpse.db".into(),
                "GLIMPSE_DATABASE_URL",
            ),
        ];
        for (set, var) in rows {
            let mut c = ServerConfig::default();
            set(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(var), "{var}: {e}");
            assert!(!e.contains("pw"), "a secret in the message: {e}");
        }
        // What each rule allows.
        let mut c = ServerConfig::default();
        c.models.vit_model = String::new();
        c.limits.rate_limit_burst = 0;
        c.fetch.fetch_connect_timeout_secs = c.fetch.fetch_timeout_secs;
        c.store.admin_token = Some("0123456789abcdef".into());
        c.store.database_url = "postgresql://h/db".into();
        c.validate().unwrap();
    }

    #[test]
    fn specs_put_the_default_first_and_dedup() {
        let mut c = ServerConfig::default();
        c.models.clip_model = "a".into();
        c.models.extra_clip_models = vec!["b".into(), " a ".into(), "".into()];
        assert_eq!(c.clip_specs(), vec!["a", "b"]);
    }
}
