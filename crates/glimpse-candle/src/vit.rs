//! ViT image classification (transformers' `ViTForImageClassification`): the encoder's final
//! layer norm on the class token, a linear classifier, softmax.
//!
//! DeiT (`DeiTForImageClassification`, `DeiTForImageClassificationWithTeacher`) is the same
//! encoder under `deit.` with a distillation token after the class token (position embeddings
//! for both). The plain head reads the class token; the distilled one has two heads, `cls_classifier`
//! on the class token and `distillation_classifier` on the distillation token, and its logits are
//! their mean, as `transformers` computes them.

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
    family: ModelFamily,
    engine: VisionEncoder,
    layernorm: Norm,
    classifier: Dense,
    /// DeiT with teacher: the head on the distillation token (`classifier` is then the
    /// `cls_classifier`), averaged with the class token's.
    distillation: Option<Dense>,
    preprocess: PreprocessConfig,
    runtime: Runtime,
}

/// Load a ViT or DeiT classifier from a Hugging Face folder: `config.json`,
/// `preprocessor_config.json` and `model.safetensors` (or `pytorch_model.bin`).
pub fn load_vit(dir: &Path, opts: &LoadOptions) -> Result<VitModel, Error> {
    let json = config::read_config_json(dir)?;
    let family = config::kind_of(&json)?;
    if family.task() != glimpse_core::Task::Classify {
        return Err(model_err(format!(
            "{}: config.json describes a {family} model, not a ViT or DeiT image classifier",
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
    // DeiT with teacher has two heads: which ones the file holds decides, as the checkpoint's
    // class (`architectures`) would.
    let distilled = vb.contains_tensor("cls_classifier.weight");
    let mut model =
        build(family, config, &vb, preprocess, opts.precision, distilled).map_err(bad)?;
    model.runtime = Runtime::new(opts.threads)?;
    tracing::debug!(weights = %file.display(), vision = ?model.config.vision,
        classes = model.config.id2label.len(), %family,
        distilled = model.distillation.is_some(), "loaded image classifier");
    Ok(model)
}

/// A ViT of the preset's real architecture (1000 classes) with random weights, for benchmarks.
pub fn random_vit(preset: VitPreset) -> VitModel {
    random_vit_in(preset, Precision::F32)
}

pub(crate) fn random_vit_in(preset: VitPreset, precision: Precision) -> VitModel {
    let device = Device::Cpu;
    let vb = crate::random::seeded_vb(&device);
    build(
        preset.family(),
        preset.config(),
        &vb,
        preset.preprocess(),
        precision,
        preset.is_distilled(),
    )
    .expect("a preset ViT always builds from seeded weights")
}

/// Hub checkpoints (and `save_pretrained`) use the original names; a raw transformers-5
/// `state_dict()` uses the renamed modules. Pick whichever the file has.
fn layer_naming(vb: &VarBuilder, base: &str) -> (String, LayerNames) {
    let v5 = format!("{base}.layers");
    let v4 = format!("{base}.encoder.layer");
    if !vb.contains_tensor(&format!("{v4}.0.layernorm_before.weight"))
        && vb.contains_tensor(&format!("{v5}.0.layernorm_before.weight"))
    {
        (v5, VIT_V5_NAMES)
    } else {
        (v4, VIT_NAMES)
    }
}

fn build(
    family: ModelFamily,
    config: VitConfig,
    vb: &VarBuilder,
    preprocess: PreprocessConfig,
    precision: Precision,
    distilled: bool,
) -> candle_core::Result<VitModel> {
    // The kernels are chosen here, once per model, and kept by every layer built from them.
    let kernels = Kernels::choose(precision);
    let cfg = &config.vision;
    let h = cfg.encoder.hidden_size;
    let base = match family {
        ModelFamily::Deit => "deit",
        _ => "vit",
    };
    let e = vb.pp(format!("{base}.embeddings"));
    let randn = Init::Randn {
        mean: 0.0,
        stdev: 0.02,
    };
    let cls = e.get_with_hints((1, 1, h), "cls_token", randn)?;
    let (tokens, lead) = if family == ModelFamily::Deit {
        let dist = e.get_with_hints((1, 1, h), "distillation_token", randn)?;
        (candle_core::Tensor::cat(&[&cls, &dist], 1)?, 2)
    } else {
        (cls, 1)
    };
    let pos = e.get_with_hints(
        (1, cfg.num_patches() + lead, h),
        "position_embeddings",
        randn,
    )?;
    let embeddings = PatchEmbedding::with_lead_tokens(
        cfg,
        true,
        e.pp("patch_embeddings.projection"),
        (tokens, lead),
        pos,
    )?;
    let (prefix, names) = layer_naming(vb, base);
    let encoder = Encoder::new(&cfg.encoder, &names, vb.pp(prefix))?;
    let layernorm = layer_norm(
        h,
        cfg.encoder.layer_norm_eps,
        vb.pp(format!("{base}.layernorm")),
    )?;
    let n = config.id2label.len();
    // Batch rows only: kept f32.
    let head = |name: &str| -> candle_core::Result<Dense> {
        Dense::from_linear(&linear(h, n, vb.pp(name))?, kernels.at(Precision::F32))
    };
    // DeiT with teacher has two heads (`distilled`: the caller's reading of the file).
    let (classifier, distillation) = if family == ModelFamily::Deit && distilled {
        (
            head("cls_classifier")?,
            Some(head("distillation_classifier")?),
        )
    } else {
        (head("classifier")?, None)
    };
    let engine = embeddings.into_engine(cfg, None, &encoder, kernels)?;
    Ok(VitModel {
        engine,
        layernorm: Norm::new(&layernorm)?,
        classifier,
        distillation,
        family,
        config,
        preprocess,
        runtime: Runtime::default(),
    })
}

impl VitModel {
    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// ViT or DeiT.
    pub fn family(&self) -> ModelFamily {
        self.family
    }

    /// DeiT with teacher: two heads, averaged.
    pub fn is_distilled(&self) -> bool {
        self.distillation.is_some()
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
            // The final layer norm is per token; only the class token (DeiT: and the
            // distillation token) is classified.
            let cls = self.engine.class_tokens(&pixels.data, batch);
            let mut normed = vec![0f32; cls.len()];
            self.layernorm.forward(&cls, &mut normed);
            let n = self.classifier.out_features();
            let h = self.config.vision.encoder.hidden_size;
            let lead = cls.len() / batch / h;
            // Each image's class token, then (DeiT) its distillation token.
            let token = |t: usize| -> Vec<f32> {
                (0..batch)
                    .flat_map(|b| {
                        normed[(b * lead + t) * h..(b * lead + t + 1) * h]
                            .iter()
                            .copied()
                    })
                    .collect()
            };
            let mut out = vec![0f32; batch * n];
            self.classifier.forward(&token(0), &mut out, false);
            if let Some(dist) = &self.distillation {
                let mut d = vec![0f32; batch * n];
                dist.forward(&token(1), &mut d, false);
                // transformers: logits = (cls_logits + distillation_logits) / 2.
                out.iter_mut()
                    .zip(&d)
                    .for_each(|(o, d)| *o = (*o + d) / 2.0);
            }
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
