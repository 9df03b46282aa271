//! ViT image classification (transformers' `ViTForImageClassification`): the encoder's final
//! layer norm on the class token, a linear classifier, softmax.

use std::path::Path;

use candle_core::Device;
use candle_nn::init::Init;
use candle_nn::{layer_norm, linear, VarBuilder};
use glimpse_core::backend::{ImageClassifier, PixelBatch};
use glimpse_core::preprocess::PreprocessConfig;
use glimpse_core::scoring::softmax;
use glimpse_core::Result;

use crate::clip::read_preprocess_config;
use crate::config::{self, model_err, VitConfig};
use crate::engine::{Dense, Norm, VisionEncoder};
use crate::kernels::Kernels;
use crate::layers::{check_pixels, Encoder, LayerNames, PatchEmbedding, VIT_NAMES, VIT_V5_NAMES};
use crate::presets::VitPreset;
use crate::runtime::Runtime;
use crate::{Error, LoadOptions, Precision};
use glimpse_core::ModelFamily;

#[derive(Debug, Clone)]
pub struct VitModel {
    config: VitConfig,
    engine: VisionEncoder,
    layernorm: Norm,
    classifier: Dense,
    preprocess: PreprocessConfig,
    runtime: Runtime,
}

/// Load a ViT classifier from a Hugging Face folder: `config.json`, `preprocessor_config.json`
/// and `model.safetensors` (or `pytorch_model.bin`).
pub fn load_vit(dir: &Path, opts: &LoadOptions) -> Result<VitModel, Error> {
    let json = config::read_config_json(dir)?;
    if config::kind_of(&json)? != ModelFamily::Vit {
        return Err(model_err(format!(
            "{}: config.json describes a CLIP model, not a ViT classifier",
            dir.display()
        )));
    }
    let config = VitConfig::from_json(&json)?;
    let preprocess = read_preprocess_config(dir)?;
    let device = Device::Cpu;
    let (vb, file) = crate::weights::open(dir, &device)?;
    let bad = |source| Error::Weights {
        context: file.display().to_string(),
        source,
    };
    let mut model = build(config, &vb, preprocess, opts.precision).map_err(bad)?;
    model.runtime = Runtime::new(opts.threads)?;
    tracing::debug!(weights = %file.display(), vision = ?model.config.vision,
        classes = model.config.id2label.len(), "loaded ViT");
    Ok(model)
}

/// A ViT of the preset's real architecture (1000 classes) with random weights, for benchmarks.
pub fn random_vit(preset: VitPreset) -> VitModel {
    random_vit_in(preset, Precision::F32)
}

pub(crate) fn random_vit_in(preset: VitPreset, precision: Precision) -> VitModel {
    let device = Device::Cpu;
    let vb = crate::random::seeded_vb(&device);
    build(preset.config(), &vb, preset.preprocess(), precision)
        .expect("a preset ViT always builds from seeded weights")
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
    precision: Precision,
) -> candle_core::Result<VitModel> {
    // The kernels are chosen here, once per model, and kept by every layer built from them.
    let kernels = Kernels::choose(precision);
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
    let engine = embeddings.into_engine(cfg, None, &encoder, kernels)?;
    Ok(VitModel {
        engine,
        layernorm: Norm::new(&layernorm)?,
        // Batch rows only: kept f32.
        classifier: Dense::from_linear(&classifier, kernels.at(Precision::F32))?,
        config,
        preprocess,
        runtime: Runtime::default(),
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
        check_pixels(pixels, &self.config.vision)?;
        let batch = pixels.batch;
        Ok(self.runtime.run(|| {
            // The final layer norm is per token; only the class token is classified.
            let cls = self.engine.class_tokens(&pixels.data, batch);
            let mut normed = vec![0f32; cls.len()];
            self.layernorm.forward(&cls, &mut normed);
            let n = self.classifier.out_features();
            let mut out = vec![0f32; batch * n];
            self.classifier.forward(&normed, &mut out, false);
            out.chunks_exact(n).map(|r| r.to_vec()).collect()
        }))
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
