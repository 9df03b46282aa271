//! `glimpse classify clip|vit IMAGE...`: the server's pipeline, locally. `--json` prints exactly what
//! the API would answer, one line per image.

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

use crate::cli::{ClassifyArgs, Kind};

enum Loaded {
    Clip(glimpse_candle::ClipModel),
    Vit(glimpse_candle::VitModel),
}

impl Loaded {
    fn preprocess_config(&self) -> &PreprocessConfig {
        match self {
            Loaded::Clip(m) => m.preprocess_config(),
            Loaded::Vit(m) => m.preprocess_config(),
        }
    }
}

pub fn run(args: ClassifyArgs) -> anyhow::Result<ExitCode> {
    let labels = match args.kind {
        Kind::Clip => parse_labels(args.labels.as_deref())?,
        Kind::Vit => Vec::new(),
    };
    let templates: Vec<String> = args.templates.split('|').map(str::to_string).collect();
    let spec = args.model.clone().unwrap_or_else(|| match args.kind {
        Kind::Clip => args.default_clip.clone(),
        Kind::Vit => args.default_vit.clone(),
    });
    let mut hub = HubOptions::from_env(args.model_cache.clone());
    hub.progress = true;
    let dir = resolve_model(&spec, &hub)?;
    let model_id = model_id_for(&spec);
    let opts = glimpse_candle::LoadOptions::default();
    let model = match args.kind {
        Kind::Clip => Loaded::Clip(glimpse_candle::load_clip(&dir, &opts)?),
        Kind::Vit => Loaded::Vit(glimpse_candle::load_vit(&dir, &opts)?),
    };
    let cache = PromptCache::new(4096);
    let limits = DecodeLimits::default();
    let mut failures = 0;
    for path in &args.images {
        match classify_one(path, &model, &model_id, &cache, &labels, &templates, &limits) {
            Ok(resp) => print(&resp, path, args.json)?,
            Err(e) => {
                failures += 1;
                eprintln!("glimpse: {}: {e:#}", path.display());
            }
        }
    }
    Ok(if failures == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn classify_one(
    path: &Path,
    model: &Loaded,
    model_id: &str,
    cache: &PromptCache,
    labels: &[String],
    templates: &[String],
    limits: &DecodeLimits,
) -> anyhow::Result<ClassificationResponse> {
    let started = Instant::now();
    let bytes = std::fs::read(path).context("cannot read file")?;
    let image = decode(&bytes, limits)?;
    let cfg = model.preprocess_config();
    let (h, w) = cfg.output_size();
    let pixels = PixelBatch::stack(&[cfg.preprocess(&image)], h, w);
    let mut out = match model {
        Loaded::Clip(m) => classify_clip(m, model_id, cache, &pixels, labels, templates)?,
        Loaded::Vit(m) => classify_vit(m, model_id, &pixels)?,
    };
    let mut resp = out.pop().context("model returned no answer")?;
    resp.timing_ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok(resp)
}

fn print(resp: &ClassificationResponse, path: &Path, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(resp)?);
    } else {
        let top: Vec<String> = resp
            .predictions
            .iter()
            .take(3)
            .map(|p| format!("{} {:.3}", p.label, p.score))
            .collect();
        println!("{}\t{}\t{:.3}\t[{}]", path.display(), resp.result, resp.confidence, top.join(", "));
    }
    Ok(())
}
