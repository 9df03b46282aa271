//! `glimpse classify clip|vit IMAGE...`: the server's pipeline, locally. `--json` prints exactly what
//! the API would answer, one line per image. `--input-dir` hands over to bulk mode (`bulk.rs`).

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use glimpse_core::backend::PixelBatch;
use glimpse_core::image::{decode, DecodeLimits};
use glimpse_core::labels::parse_labels;
use glimpse_core::pipeline::{classify_clip, classify_vit, PromptCache};
use glimpse_core::preprocess::PreprocessConfig;
use glimpse_core::response::ClassificationResponse;
use glimpse_core::{ImageClassifier, ZeroShotModel};
use glimpse_server::hub::{model_id_for, resolve_model, HubOptions};

use crate::bulk;
use crate::cli::{ClassifyArgs, Kind};

enum Loaded {
    // Boxed: the model structs are large and differ in size.
    Clip(Box<glimpse_candle::ClipModel>),
    Vit(Box<glimpse_candle::VitModel>),
}

/// A loaded model plus everything a classification needs besides the pixels.
pub struct Session {
    model: Loaded,
    model_id: String,
    cache: PromptCache,
    labels: Vec<String>,
    templates: Vec<String>,
    pub limits: DecodeLimits,
}

impl Session {
    pub fn load(args: &ClassifyArgs) -> anyhow::Result<Self> {
        let labels = match args.kind {
            Kind::Clip => parse_labels(args.labels.as_deref())?,
            Kind::Vit => Vec::new(),
        };
        let templates: Vec<String> = args.templates.split('|').map(str::to_string).collect();
        let spec = args.model.clone().unwrap_or_else(|| match args.kind {
            Kind::Clip => args.configured.default_clip.clone(),
            Kind::Vit => args.configured.default_vit.clone(),
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
        let model = match args.kind {
            Kind::Clip => Loaded::Clip(Box::new(glimpse_candle::load_clip(&dir, &opts)?)),
            Kind::Vit => Loaded::Vit(Box::new(glimpse_candle::load_vit(&dir, &opts)?)),
        };
        Ok(Session {
            model,
            model_id: model_id_for(&spec),
            cache: PromptCache::new(4096),
            labels,
            templates,
            limits: DecodeLimits::default(),
        })
    }

    pub fn preprocess_config(&self) -> &PreprocessConfig {
        match &self.model {
            Loaded::Clip(m) => m.preprocess_config(),
            Loaded::Vit(m) => m.preprocess_config(),
        }
    }

    /// One answer per image of the batch, in order (`timingMs` left at 0 for the caller).
    pub fn classify(&self, pixels: &PixelBatch) -> anyhow::Result<Vec<ClassificationResponse>> {
        let out = match &self.model {
            Loaded::Clip(m) => classify_clip(
                m.as_ref(),
                &self.model_id,
                &self.cache,
                pixels,
                &self.labels,
                &self.templates,
            )?,
            Loaded::Vit(m) => classify_vit(m.as_ref(), &self.model_id, pixels)?,
        };
        anyhow::ensure!(
            out.len() == pixels.batch,
            "model gave {} answers for {} images",
            out.len(),
            pixels.batch
        );
        Ok(out)
    }
}

/// Read, decode and preprocess one file into the model's `[3, h, w]` input.
pub fn prepare(
    path: &Path,
    cfg: &PreprocessConfig,
    limits: &DecodeLimits,
) -> anyhow::Result<Vec<f32>> {
    let bytes = std::fs::read(path).context("cannot read file")?;
    let image = decode(&bytes, limits)?;
    Ok(cfg.preprocess(&image))
}

pub fn run(args: ClassifyArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = args.input_dir.clone() {
        // Check the bulk options before the (slow) model load, so a typo fails at once.
        let plan = bulk::Plan::from_args(&args, dir)?;
        let session = Session::load(&args)?;
        return bulk::run(plan, &session);
    }
    let session = Session::load(&args)?;
    let mut failures = 0;
    for path in &args.images {
        match classify_one(path, &session) {
            Ok(resp) => print(&resp, path, args.json)?,
            Err(e) => {
                failures += 1;
                eprintln!("glimpse: {}: {e:#}", path.display());
            }
        }
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn classify_one(path: &Path, session: &Session) -> anyhow::Result<ClassificationResponse> {
    let started = Instant::now();
    let cfg = session.preprocess_config();
    let (h, w) = cfg.output_size();
    let pixels = PixelBatch::single(prepare(path, cfg, &session.limits)?, h, w);
    let mut resp = session
        .classify(&pixels)?
        .pop()
        .context("model returned no answer")?;
    resp.set_timing_ms(started.elapsed().as_secs_f64() * 1000.0);
    Ok(resp)
}

fn print(resp: &ClassificationResponse, path: &Path, json: bool) -> anyhow::Result<()> {
    if json {
        let line = bulk::AnswerLine {
            file: &path.to_string_lossy(),
            answer: resp,
        };
        println!("{}", serde_json::to_string(&line)?);
    } else {
        let top: Vec<String> = resp
            .predictions
            .iter()
            .take(3)
            .map(|p| format!("{} {:.3}", p.label, p.score))
            .collect();
        println!(
            "{}\t{}\t{:.3}\t[{}]",
            path.display(),
            resp.result,
            resp.confidence,
            top.join(", ")
        );
    }
    Ok(())
}
