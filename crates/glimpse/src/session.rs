//! A model loaded for local classification (`glimpse classify` and its bulk mode): the same
//! [`ServedModel`] scoring path the server's batcher runs.

use std::path::Path;

use anyhow::Context;
use glimpse_core::backend::PixelBatch;
use glimpse_core::image::{decode_sized, DecodeLimits, DecodeMode};
use glimpse_core::preprocess::PreprocessConfig;
use glimpse_core::prototypes::{score, Prototype};
use glimpse_core::response::ClassificationResponse;
use glimpse_core::{ServedModel, Task};
use glimpse_server::hub::{model_id_for, resolve_model, HubOptions};

use crate::cli::ClassifyArgs;

/// A loaded model plus everything a classification needs besides the pixels.
pub struct Session {
    model: ServedModel,
    labels: Vec<String>,
    templates: Vec<String>,
    /// `--classifier`: its labels and stored prototypes, scored instead of `labels`.
    saved: Option<Vec<(String, Vec<f32>)>>,
    pub limits: DecodeLimits,
    /// `GLIMPSE_DECODE` / `--decode`.
    pub mode: DecodeMode,
}

impl Session {
    pub fn load(args: &ClassifyArgs) -> anyhow::Result<Self> {
        let task = args.kind;
        let labels = task.labels(args.labels.as_deref())?;
        let templates: Vec<String> = args.templates.split('|').map(str::to_string).collect();
        let spec = args.model.clone().unwrap_or_else(|| match task {
            Task::ZeroShot => args.configured.default_clip.clone(),
            Task::Classify => args.configured.default_vit.clone(),
        });
        let mut hub = HubOptions::from_env(args.model_cache.clone());
        hub.progress = true;
        let dir = resolve_model(&spec, &hub)?;
        let opts = glimpse_candle::LoadOptions {
            precision: args.precision,
            ..Default::default()
        };
        // What `serve` logs at start-up: which matmul kernel a reduced precision runs on here
        // (fp32, the default, stays quiet: stderr is one line per failed image).
        match glimpse_candle::kernel_for(opts.precision) {
            _ if opts.precision == glimpse_candle::Precision::F32 => {}
            (kernel, true) => eprintln!(
                "glimpse: precision {}, matmul kernel {kernel}",
                opts.precision.as_str()
            ),
            (kernel, false) => eprintln!(
                "glimpse: warning: precision {} has no fast kernel on this CPU ({kernel})",
                opts.precision.as_str()
            ),
        }
        let model = glimpse_server::load_served(&dir, model_id_for(&spec), task, &opts)?;
        let saved = match &args.classifier {
            Some(name) => Some(saved_classifier(args, name, task, model.id())?),
            None => None,
        };
        Ok(Session {
            model,
            labels,
            templates,
            saved,
            limits: DecodeLimits::default(),
            mode: args.decode_mode.into(),
        })
    }

    pub fn preprocess_config(&self) -> &PreprocessConfig {
        self.model.preprocess_config()
    }

    /// One answer per image of the batch, in order (`timingMs` left at 0 for the caller).
    pub fn classify(&self, pixels: &PixelBatch) -> anyhow::Result<Vec<ClassificationResponse>> {
        if let Some(saved) = &self.saved {
            let protos: Vec<Prototype<'_>> = saved
                .iter()
                .map(|(label, embedding)| Prototype { label, embedding })
                .collect();
            let endpoint = self.model.task().endpoint();
            return self
                .model
                .embed_images(pixels)?
                .iter()
                .map(|img| Ok(score(img, &protos, endpoint, self.model.id())?))
                .collect();
        }
        Ok(self
            .model
            .classify_all(pixels, &self.labels, &self.templates)?)
    }
}

/// Read, decode and preprocess one file into the model's `[3, h, w]` input.
pub fn prepare(
    path: &Path,
    cfg: &PreprocessConfig,
    limits: &DecodeLimits,
    mode: DecodeMode,
) -> anyhow::Result<Vec<f32>> {
    let bytes = std::fs::read(path).context("cannot read file")?;
    let image = decode_sized(&bytes, limits, cfg.decode_size(mode))?;
    Ok(cfg.preprocess(&image))
}

/// `--classifier NAME` of `--key-id` from `--database-url`: its labels and prototypes, after
/// checking it was made with the loaded model.
fn saved_classifier(
    args: &ClassifyArgs,
    name: &str,
    task: Task,
    model_id: &str,
) -> anyhow::Result<Vec<(String, Vec<f32>)>> {
    anyhow::ensure!(
        task == Task::ZeroShot,
        "--classifier is a saved CLIP classifier: use `glimpse classify clip`"
    );
    let key_id = args
        .key_id
        .as_deref()
        .context("--classifier needs --key-id")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let c = rt.block_on(async {
        let store = glimpse_store::connect(&args.database_url).await?;
        let c = store.get_classifier(key_id, name).await;
        store.close().await;
        c
    })?;
    let c = c.with_context(|| format!("{key_id} has no classifier named '{name}'"))?;
    anyhow::ensure!(
        c.spec.model == model_id,
        "classifier '{name}' was made with model '{}', not '{model_id}': pass --model for it",
        c.spec.model
    );
    Ok(c.spec
        .labels
        .into_iter()
        .map(|l| (l.name, l.embedding))
        .collect())
}
