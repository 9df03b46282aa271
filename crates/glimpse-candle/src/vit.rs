//! ViT image classification (transformers' `ViTForImageClassification`): the encoder's final
//! layer norm on the class token, a linear classifier, softmax.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Module};
use candle_nn::init::Init;
use candle_nn::{layer_norm, linear, LayerNorm, Linear, VarBuilder, VarMap};
use glimpse_core::backend::{ImageClassifier, PixelBatch};
use glimpse_core::preprocess::PreprocessConfig;
use glimpse_core::scoring::softmax;
use glimpse_core::{CoreError, Result};

use crate::clip::read_preprocess_config;
use crate::config::{self, model_err, VitConfig};
use crate::layers::{
    pixel_tensor, rows, Encoder, LayerNames, PatchEmbedding, VIT_NAMES, VIT_V5_NAMES,
};
use crate::presets::VitPreset;
use crate::runtime::Runtime;
use crate::{LoadOptions, ModelKind};

#[derive(Debug, Clone)]
pub struct VitModel {
    config: VitConfig,
    embeddings: PatchEmbedding,
    encoder: Encoder,
    layernorm: LayerNorm,
    classifier: Linear,
    preprocess: PreprocessConfig,
    runtime: Runtime,
    device: Device,
}

/// Load a ViT classifier from a Hugging Face folder: `config.json`, `preprocessor_config.json`
/// and `model.safetensors` (or `pytorch_model.bin`).
pub fn load_vit(dir: &Path, opts: &LoadOptions) -> Result<VitModel> {
    opts.check_precision()?;
    let json = config::read_config_json(dir)?;
    if config::kind_of(&json)? != ModelKind::Vit {
        return Err(model_err(format!(
            "{}: config.json describes a CLIP model, not a ViT classifier",
            dir.display()
        )));
    }
    let config = VitConfig::from_json(&json)?;
    let preprocess = read_preprocess_config(dir)?;
    let device = Device::Cpu;
    let (vb, file) = crate::weights::open(dir, &device)?;
    let bad = |e: candle_core::Error| model_err(format!("{}: {e}", file.display()));
    let mut model = build(config, &vb, preprocess, device).map_err(bad)?;
    model.runtime = Runtime::new(opts.threads)?;
    tracing::debug!(weights = %file.display(), vision = ?model.config.vision,
        classes = model.config.id2label.len(), "loaded ViT");
    Ok(model)
}

/// A ViT of the preset's real architecture (1000 classes) with random weights, for benchmarks.
pub fn random_vit(preset: VitPreset) -> VitModel {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    build(preset.config(), &vb, preset.preprocess(), device)
        .expect("a preset ViT always builds from a VarMap")
}

/// Hub checkpoints (and `save_pretrained`) use the original names; a raw transformers-5
/// `state_dict()` uses the renamed modules. Pick whichever the file has.
fn layer_naming(vb: &VarBuilder) -> (&'static str, LayerNames) {
    let v5 = "vit.layers";
    if !vb.contains_tensor("vit.encoder.layer.0.layernorm_before.weight")
        && vb.contains_tensor(&format!("{v5}.0.layernorm_before.weight"))
    {
        (v5, VIT_V5_NAMES)
    } else {
        ("vit.encoder.layer", VIT_NAMES)
    }
}

fn build(
    config: VitConfig,
    vb: &VarBuilder,
    preprocess: PreprocessConfig,
    device: Device,
) -> candle_core::Result<VitModel> {
    let cfg = &config.vision;
    let h = cfg.encoder.hidden_size;
    let e = vb.pp("vit.embeddings");
    let randn = Init::Randn {
        mean: 0.0,
        stdev: 0.02,
    };
    let cls = e.get_with_hints((1, 1, h), "cls_token", randn)?;
    let pos = e.get_with_hints((1, cfg.num_patches() + 1, h), "position_embeddings", randn)?;
    let embeddings = PatchEmbedding::new(cfg, true, e.pp("patch_embeddings.projection"), cls, pos)?;
    let (prefix, names) = layer_naming(vb);
    let encoder = Encoder::new(&cfg.encoder, &names, vb.pp(prefix))?;
    let layernorm = layer_norm(h, cfg.encoder.layer_norm_eps, vb.pp("vit.layernorm"))?;
    let classifier = linear(h, config.id2label.len(), vb.pp("classifier"))?;
    Ok(VitModel {
        config,
        embeddings,
        encoder,
        layernorm,
        classifier,
        preprocess,
        runtime: Runtime::default(),
        device,
    })
}

impl VitModel {
    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// Run forward passes on a pool of `threads` threads (`None`: rayon's global pool).
    pub fn set_threads(&mut self, threads: Option<usize>) -> Result<()> {
        self.runtime = Runtime::new(threads)?;
        Ok(())
    }

    /// Class logits, one row per image.
    pub fn logits(&self, pixels: &PixelBatch) -> Result<Vec<Vec<f32>>> {
        if pixels.batch == 0 {
            return Ok(Vec::new());
        }
        let x = pixel_tensor(pixels, &self.config.vision, &self.device)?;
        self.runtime
            .run(|| {
                let xs = self.encoder.forward(&self.embeddings.forward(&x)?, None)?;
                // The final layer norm is per token; only the class token is classified.
                let cls = xs.i((.., 0, ..))?.contiguous()?;
                rows(&self.classifier.forward(&self.layernorm.forward(&cls)?)?)
            })
            .map_err(|e| CoreError::Internal(format!("ViT forward pass failed: {e}")))
    }
}

impl ImageClassifier for VitModel {
    fn preprocess_config(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    fn classify(&self, pixels: &PixelBatch) -> Result<Vec<Vec<f32>>> {
        Ok(self.logits(pixels)?.iter().map(|l| softmax(l)).collect())
    }

    fn id2label(&self) -> &[String] {
        &self.config.id2label
    }
}
