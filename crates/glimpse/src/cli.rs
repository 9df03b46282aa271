//! The command line (contract, section Operating). Commands and variables here are a public
//! interface: add, don't rename.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::TypedValueParser;
use clap::{Args, FromArgMatches, Parser, Subcommand};
use glimpse_core::Task;

/// Read with [`crate::config_file::command`] (the `--config` file beneath the variables), not
/// `Cli::parse`.
#[derive(Debug, Parser)]
#[command(
    name = "glimpse",
    version,
    about = "Self-hosted image classification: CLIP zero-shot and ViT ImageNet"
)]
pub struct Cli {
    /// TOML file with settings (keys are the GLIMPSE_* variable names without the prefix, snake case).
    /// Flags beat variables beat the file; an unknown key is an error.
    #[arg(long, global = true, env = "GLIMPSE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// What `Parser::parse` does, on `cmd` (`Cli`'s command with the config file's defaults):
    /// clap's errors, `--help` and `--version` print and exit as usual.
    pub fn parse_with(mut cmd: clap::Command, args: Vec<OsString>) -> Self {
        let mut m = cmd.clone().get_matches_from(args);
        Self::from_arg_matches_mut(&mut m).unwrap_or_else(|e| e.format(&mut cmd).exit())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API server.
    Serve(Box<glimpse_server::ServerConfig>),
    /// Classify local images without a server.
    Classify(Box<ClassifyArgs>),
    /// Pull models from the Hugging Face Hub, or list the cached ones.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Manage API keys and credits.
    Keys(KeysArgs),
    /// Saved classifiers (taught by example images) in the local database.
    Classifiers(ClassifiersArgs),
    /// Benchmark the model path on random weights at real dimensions.
    Bench(BenchArgs),
}

/// `clip` or `vit`: the endpoint whose task to run (see [`Task::endpoint`]).
fn task_parser() -> impl clap::builder::TypedValueParser<Value = Task> {
    clap::builder::PossibleValuesParser::new(Task::ALL.map(Task::endpoint))
        .map(|name| Task::from_endpoint(&name).expect("a possible value"))
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["images", "input_dir"]))]
pub struct ClassifyArgs {
    /// `clip` (zero-shot against --labels) or `vit` (ImageNet mapped to categories).
    #[arg(value_parser = task_parser())]
    pub kind: Task,
    /// Image files (or `--input-dir` for a whole folder; exactly one of the two).
    pub images: Vec<PathBuf>,
    /// Bulk mode: classify every file under DIR (recursively, sorted by relative path) into
    /// `--output`, one JSON line per file.
    #[arg(long, value_name = "DIR", requires = "output")]
    pub input_dir: Option<PathBuf>,
    /// Bulk mode: the JSON-lines results file. Appended to; files already in it are skipped, so
    /// rerunning after a crash resumes. Must be outside `--input-dir`.
    #[arg(long, value_name = "FILE", requires = "input_dir")]
    pub output: Option<PathBuf>,
    /// Bulk mode: only the files whose index in the sorted list is I modulo N (0-based `I/N`).
    #[arg(long, value_name = "I/N", requires = "input_dir")]
    pub shard: Option<String>,
    /// Bulk mode: shard count for a Kubernetes Indexed Job; the shard index is read from
    /// `JOB_COMPLETION_INDEX`. Ignored when `--shard` is given.
    #[arg(long, env = "GLIMPSE_SHARDS", value_name = "N")]
    pub shards: Option<usize>,
    /// Bulk mode: images per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Bulk mode: threads decoding and preprocessing while the model runs (default: up to 4).
    #[arg(long, value_name = "N")]
    pub decode_threads: Option<usize>,
    /// Bulk mode: when stderr is not a terminal, print a progress line every N files.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub progress_every: usize,
    /// Comma-separated labels for CLIP (default car,document,motorcycle,truck,person,other).
    #[arg(long, conflicts_with = "classifier")]
    pub labels: Option<String>,
    /// CLIP only: score against this saved classifier's stored prototypes (`glimpse
    /// classifiers`) instead of `--labels`; needs `--key-id`, and `--model` must be the model
    /// it was made with.
    #[arg(long, requires = "key_id")]
    pub classifier: Option<String>,
    /// The key owning `--classifier`.
    #[arg(long)]
    pub key_id: Option<String>,
    /// The store holding `--classifier` (`sqlite://PATH` or `postgres://…`).
    #[arg(
        long,
        env = "GLIMPSE_DATABASE_URL",
        default_value = glimpse_server::config::DEFAULT_DATABASE_URL
    )]
    pub database_url: String,
    /// Model: a Hub id or a local folder (default: GLIMPSE_CLIP_MODEL / GLIMPSE_VIT_MODEL or the
    /// built-in default).
    #[arg(long)]
    pub model: Option<String>,
    /// Print one API-shaped JSON response per line, with the image's path as `file` (as bulk
    /// mode writes it).
    #[arg(long)]
    pub json: bool,
    /// Weights to run, as `serve` does: `fp32` (answers within 1e-4 of transformers), `bf16` or
    /// `int8` (faster on CPUs with AVX-512 BF16 / VNNI / AMX; within cosine 0.999 of fp32).
    #[arg(long, env = "GLIMPSE_PRECISION", default_value = "fp32", ignore_case = true,
          value_parser = glimpse_server::config::precision_parser())]
    pub precision: glimpse_candle::Precision,
    /// How JPEGs are decoded, as `serve` does: `exact` (identical to Pillow) or `fast` (scaled by
    /// libjpeg to at least twice the model's resize target, then the same resize).
    #[arg(
        long = "decode",
        env = "GLIMPSE_DECODE",
        value_enum,
        default_value = "exact"
    )]
    pub decode_mode: glimpse_server::config::DecodeModeName,
    /// Prompt templates for CLIP, `|`-separated; `{label}` is replaced.
    #[arg(long, env = "GLIMPSE_PROMPT_TEMPLATES", default_value = glimpse_core::labels::DEFAULT_TEMPLATE)]
    pub templates: String,
    /// Where pulled models live.
    #[arg(long, env = "GLIMPSE_MODEL_CACHE")]
    pub model_cache: Option<PathBuf>,
    /// The configured models (`--model` overrides the default of the chosen family).
    #[command(flatten)]
    pub configured: ConfiguredModels,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Download models (default: every configured CLIP and ViT model) into the cache.
    Pull {
        ids: Vec<String>,
        #[arg(long, env = "GLIMPSE_MODEL_CACHE")]
        model_cache: Option<PathBuf>,
        #[command(flatten)]
        configured: ConfiguredModels,
    },
    /// The configured models (GLIMPSE_CLIP_MODEL(S), GLIMPSE_VIT_MODEL(S)) with their family and
    /// where they come from, then any other model in the cache.
    List {
        #[arg(long, env = "GLIMPSE_MODEL_CACHE")]
        model_cache: Option<PathBuf>,
        /// One JSON array: `{"id", "family", "source", "path", "configured"}` per model.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        configured: ConfiguredModels,
    },
}

/// The models `serve` would load, from the same variables.
#[derive(Debug, Args)]
pub struct ConfiguredModels {
    #[arg(
        long,
        env = "GLIMPSE_CLIP_MODEL",
        default_value = glimpse_server::config::DEFAULT_CLIP_MODEL,
        hide = true
    )]
    pub default_clip: String,
    #[arg(
        long,
        env = "GLIMPSE_VIT_MODEL",
        default_value = glimpse_server::config::DEFAULT_VIT_MODEL,
        hide = true
    )]
    pub default_vit: String,
    #[arg(long, env = "GLIMPSE_CLIP_MODELS", value_delimiter = ',', hide = true)]
    pub extra_clip: Vec<String>,
    #[arg(long, env = "GLIMPSE_VIT_MODELS", value_delimiter = ',', hide = true)]
    pub extra_vit: Vec<String>,
}

impl ConfiguredModels {
    /// `(family, specs)`: the default first, then the extras, blanks and repeats dropped.
    pub fn by_family(&self) -> [(&'static str, Vec<String>); 2] {
        use glimpse_server::config::specs;
        [
            ("clip", specs(&self.default_clip, &self.extra_clip)),
            ("vit", specs(&self.default_vit, &self.extra_vit)),
        ]
    }
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    /// `sqlite://PATH` or `postgres://…`.
    #[arg(
        long,
        env = "GLIMPSE_DATABASE_URL",
        default_value = glimpse_server::config::DEFAULT_DATABASE_URL,
        global = true
    )]
    pub database_url: String,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a key; prints it once.
    Create {
        #[arg(long)]
        credits: i64,
        #[arg(long, default_value = "")]
        name: String,
        /// Print `{"id","key","name","credits"}`.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never the secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add credits to a key.
    Topup { key_id: String, credits: i64 },
    /// Revoke a key; it fails on its next request on every replica (within the 5 s key cache).
    Revoke { key_id: String },
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model shape to time, with random weights at the real dimensions (speed does not depend on
    /// weight values): CLIP ViT-B/32, B/16 or L/14 image tower, SigLIP (2) B/16 image tower
    /// with its attention-pooling head, or ViT-B/16, DeiT-B/16 distilled or DeiT-S/16
    /// classifier.
    #[arg(long, value_parser = ["clip-b32", "clip-b16", "clip-l14", "siglip-b16", "siglip2-b16", "vit-b16", "deit-b16", "deit-s16"],
          default_value = "clip-b32")]
    pub arch: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Threads for the forward pass (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Weights to run: fp32, bf16 or int8 (as `GLIMPSE_PRECISION`).
    #[arg(long, value_parser = ["fp32", "bf16", "int8"], default_value = "fp32")]
    pub precision: String,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 11)]
    pub iters: usize,
    /// Untimed runs first (caches, page faults, the kernel race at load).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Time the text tower instead (CLIP archs): N new prompts in one pass, each 9 tokens long
    /// like "a photo of a red bicycle." with its start and end tokens (`--batch` is ignored).
    #[arg(long, value_name = "N")]
    pub texts: Option<usize>,
}

pub fn run_serve(config: glimpse_server::ServerConfig) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        glimpse_server::init_tracing(&config);
        let listener = tokio::net::TcpListener::bind(config.listen.bind)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {} (GLIMPSE_BIND): {e}",
                    config.listen.bind
                )
            })?;
        glimpse_server::serve(config, listener, glimpse_server::shutdown_signal()).await
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct ClassifiersArgs {
    /// `sqlite://PATH` or `postgres://…`.
    #[arg(
        long,
        env = "GLIMPSE_DATABASE_URL",
        default_value = glimpse_server::config::DEFAULT_DATABASE_URL,
        global = true
    )]
    pub database_url: String,
    #[command(subcommand)]
    pub command: ClassifiersCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClassifiersCommand {
    /// Teach a classifier from a folder: one sub-folder per label, its images the examples, an
    /// optional `prompts.txt` (one prompt per line) per label.
    Create {
        /// 1 to 64 of a-z, 0-9, '-' and '_'.
        name: String,
        /// The key that owns it (`glimpse keys list`).
        #[arg(long)]
        key_id: String,
        #[arg(long, value_name = "DIR")]
        from_dir: PathBuf,
        /// The CLIP model: a Hub id or a local folder; its id must be one the server serves.
        #[arg(long, env = "GLIMPSE_CLIP_MODEL", default_value = glimpse_server::config::DEFAULT_CLIP_MODEL)]
        model: String,
        /// Prompt templates for labels without `prompts.txt`, `|`-separated.
        #[arg(long, env = "GLIMPSE_PROMPT_TEMPLATES", default_value = glimpse_core::labels::DEFAULT_TEMPLATE)]
        templates: String,
        #[arg(long, env = "GLIMPSE_MODEL_CACHE")]
        model_cache: Option<PathBuf>,
    },
    /// The key's classifiers.
    List {
        #[arg(long)]
        key_id: String,
        /// One JSON array of `{"name","model","labels","createdAt"}`.
        #[arg(long)]
        json: bool,
    },
    /// One classifier, as JSON (labels, prompts, example counts; no embeddings).
    Show {
        name: String,
        #[arg(long)]
        key_id: String,
    },
    /// Delete one.
    Delete {
        name: String,
        #[arg(long)]
        key_id: String,
    },
}
