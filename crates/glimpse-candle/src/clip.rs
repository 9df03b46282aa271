//! CLIP (transformers' `CLIPModel`): a causal text transformer pooled at the end token and a ViT
//! image tower pooled at the class token, each projected into a shared space and L2-normalised.

use std::path::Path;

use candle_core::Device;
use candle_nn::init::Init;
use candle_nn::{layer_norm, linear_no_bias, VarBuilder};
use glimpse_core::backend::{PixelBatch, ZeroShotModel};
use glimpse_core::preprocess::PreprocessConfig;
use glimpse_core::scoring::l2_normalize;
use glimpse_core::{CoreError, Result};

use crate::config::{self, model_err, ClipConfig, ClipTextConfig, VisionConfig};
use crate::engine::{AttentionKernel, Dense, Norm, TextEncoder, TokenTable, VisionEncoder};
use crate::kernels::Kernels;
use crate::layers::{check_pixels, first_argmax, Encoder, PatchEmbedding, CLIP_NAMES};
use crate::presets::ClipPreset;
use crate::runtime::Runtime;
use crate::tokenizer::ClipTokenizer;
use crate::{Error, LoadOptions, Precision};
use glimpse_core::ModelFamily;

/// transformers initialises embeddings and class tokens with this standard deviation.
const INIT_STD: f64 = 0.02;

/// The text tower on the fused engine (like the image tower): the candle modules are built (so
/// loading, names and random init stay transformers'), converted once, and dropped.
#[derive(Debug, Clone)]
struct TextTower {
    engine: TextEncoder,
}

impl TextTower {
    fn new(
        cfg: &ClipTextConfig,
        projection_dim: usize,
        vb: &VarBuilder,
        kernels: Kernels,
    ) -> candle_core::Result<Self> {
        let t = vb.pp("text_model");
        let h = cfg.encoder.hidden_size;
        let randn = Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        };
        let e = t.pp("embeddings");
        let token = e
            .pp("token_embedding")
            .get_with_hints((cfg.vocab_size, h), "weight", randn)?;
        let pos = e.pp("position_embedding").get_with_hints(
            (cfg.max_position_embeddings, h),
            "weight",
            randn,
        )?;
        let encoder = Encoder::new(&cfg.encoder, &CLIP_NAMES, t.pp("encoder.layers"))?;
        let final_layer_norm = layer_norm(h, cfg.encoder.layer_norm_eps, t.pp("final_layer_norm"))?;
        let projection = linear_no_bias(h, projection_dim, vb.pp("text_projection"))?;
        // int8 text: CLIP's prompt embeddings moved label scores by up to 0.037 on the tiny
        // fixture (over the 0.02 bound int8 is held to); bf16 keeps them within it. The text
        // tower is small next to the image tower's passes, so int8 models run it in bf16.
        let kernels = match kernels.precision {
            Precision::Int8 => kernels.at(Precision::Bf16),
            _ => kernels,
        };
        let mut blocks = encoder.blocks(kernels)?;
        for b in &mut blocks {
            b.attention = AttentionKernel::GemmCausal;
        }
        Ok(TextTower {
            engine: TextEncoder {
                token: TokenTable::new(token.flatten_all()?.to_vec1()?, kernels.precision),
                pos: pos.flatten_all()?.to_vec1()?,
                blocks,
                final_norm: Norm::new(&final_layer_norm)?,
                // Tiny (batch rows): kept f32, as the image tower's.
                projection: Dense::from_linear(&projection, kernels.at(Precision::F32))?,
            },
        })
    }

    /// Projected (not yet normalised) embeddings of equal-length id rows.
    fn forward(&self, ids: &[Vec<u32>], pooled_at: &[usize]) -> Vec<Vec<f32>> {
        self.engine.pooled(ids, pooled_at, None)
    }
}

/// The image tower on the fused engine: the candle modules are built (so loading, names and
/// random init stay as for the text tower) and converted once.
#[derive(Debug, Clone)]
struct VisionTower {
    engine: VisionEncoder,
    post_layernorm: Norm,
    projection: Dense,
}

impl VisionTower {
    fn new(
        cfg: &VisionConfig,
        projection_dim: usize,
        vb: &VarBuilder,
        kernels: Kernels,
    ) -> candle_core::Result<Self> {
        let v = vb.pp("vision_model");
        let (h, eps) = (cfg.encoder.hidden_size, cfg.encoder.layer_norm_eps);
        let e = v.pp("embeddings");
        let randn = Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        };
        let cls = e.get_with_hints(h, "class_embedding", randn)?;
        let pos = e.pp("position_embedding").get_with_hints(
            (cfg.num_patches() + 1, h),
            "weight",
            randn,
        )?;
        let embeddings = PatchEmbedding::new(cfg, false, e.pp("patch_embedding"), cls, pos)?;
        let pre = layer_norm(h, eps, v.pp("pre_layrnorm"))?;
        let encoder = Encoder::new(&cfg.encoder, &CLIP_NAMES, v.pp("encoder.layers"))?;
        let post = layer_norm(h, eps, v.pp("post_layernorm"))?;
        let projection = linear_no_bias(h, projection_dim, vb.pp("visual_projection"))?;
        Ok(VisionTower {
            engine: embeddings.into_engine(cfg, Some(&pre), &encoder, kernels)?,
            post_layernorm: Norm::new(&post)?,
            // Tiny (batch rows): kept f32.
            projection: Dense::from_linear(&projection, kernels.at(Precision::F32))?,
        })
    }

    /// Projected (not yet normalised) embeddings, one row per image.
    fn forward(&self, pixels: &[f32], batch: usize) -> Vec<Vec<f32>> {
        let cls = self.engine.class_tokens(pixels, batch);
        let mut normed = vec![0f32; cls.len()];
        self.post_layernorm.forward(&cls, &mut normed);
        let n = self.projection.out_features();
        let mut out = vec![0f32; batch * n];
        self.projection.forward(&normed, &mut out, false);
        out.chunks_exact(n).map(|r| r.to_vec()).collect()
    }
}

/// A loaded CLIP model; see [`ZeroShotModel`] for what it computes.
#[derive(Debug, Clone)]
pub struct ClipModel {
    config: ClipConfig,
    text: TextTower,
    vision: VisionTower,
    tokenizer: Option<ClipTokenizer>,
    logit_scale: f32,
    preprocess: PreprocessConfig,
    runtime: Runtime,
}

/// Load a CLIP model from a Hugging Face folder: `config.json`, `preprocessor_config.json`,
/// `tokenizer.json` and `model.safetensors` (or `pytorch_model.bin`).
pub fn load_clip(dir: &Path, opts: &LoadOptions) -> Result<ClipModel, Error> {
    let json = config::read_config_json(dir)?;
    if config::kind_of(&json)? != ModelFamily::Clip {
        return Err(model_err(format!(
            "{}: config.json describes a ViT classifier, not a CLIP model",
            dir.display()
        )));
    }
    let config = ClipConfig::from_json(&json)?;
    let preprocess = read_preprocess_config(dir)?;
    let tokenizer = ClipTokenizer::from_dir(dir, config.text.max_position_embeddings)?;
    let device = Device::Cpu;
    let (vb, file) = crate::weights::open(dir, &device)?;
    let bad = |source| Error::Weights {
        context: file.display().to_string(),
        source,
    };
    let mut model = build(config, &vb, preprocess, opts.precision).map_err(bad)?;
    model.tokenizer = Some(tokenizer);
    model.runtime = Runtime::new(opts.threads)?;
    tracing::debug!(weights = %file.display(), config = ?model.config, "loaded CLIP");
    Ok(model)
}

/// A CLIP of the preset's real architecture with random weights, for benchmarks. It has no
/// tokenizer: `embed_texts` answers with an error, `embed_token_ids` works.
pub fn random_clip(preset: ClipPreset) -> ClipModel {
    random_clip_in(preset, Precision::F32)
}

pub(crate) fn random_clip_in(preset: ClipPreset, precision: Precision) -> ClipModel {
    let device = Device::Cpu;
    let vb = crate::random::seeded_vb(&device);
    build(preset.config(), &vb, preset.preprocess(), precision)
        .expect("a preset CLIP always builds from seeded weights")
}

pub(crate) fn read_preprocess_config(dir: &Path) -> Result<PreprocessConfig, Error> {
    let path = dir.join("preprocessor_config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        context: format!(
            "model folder {} has no readable preprocessor_config.json",
            dir.display()
        ),
        source,
    })?;
    // Its errors already name preprocessor_config.json.
    PreprocessConfig::from_json_str(&text).map_err(|source| Error::Preprocess {
        context: format!("model folder {}", dir.display()),
        source,
    })
}

fn build(
    config: ClipConfig,
    vb: &VarBuilder,
    preprocess: PreprocessConfig,
    precision: Precision,
) -> candle_core::Result<ClipModel> {
    // The kernels are chosen here, once per model, and kept by every layer built from them.
    let kernels = Kernels::choose(precision);
    let text = TextTower::new(&config.text, config.projection_dim, vb, kernels)?;
    let vision = VisionTower::new(&config.vision, config.projection_dim, vb, kernels)?;
    let logit_scale = vb
        .get_with_hints(
            (),
            "logit_scale",
            Init::Const(config.logit_scale_init_value),
        )?
        .to_scalar::<f32>()?
        .exp();
    Ok(ClipModel {
        config,
        text,
        vision,
        tokenizer: None,
        logit_scale,
        preprocess,
        runtime: Runtime::default(),
    })
}

impl ClipModel {
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    pub fn tokenizer(&self) -> Option<&ClipTokenizer> {
        self.tokenizer.as_ref()
    }

    /// Run forward passes on a pool of `threads` threads (`None`: rayon's global pool).
    pub fn set_threads(&mut self, threads: Option<usize>) -> Result<()> {
        self.runtime = Runtime::new(threads)?;
        Ok(())
    }

    /// Where the text tower pools each row: transformers' rule. Configs with the legacy
    /// `eos_token_id == 2` pool at the (first) largest id, the end token in openai's vocabulary;
    /// others at the first `eos_token_id` (position 0 if there is none, as torch's argmax gives).
    fn pooled_positions(&self, ids: &[Vec<u32>]) -> Vec<usize> {
        let eos = self.config.text.eos_token_id;
        ids.iter()
            .map(|row| {
                if eos == 2 {
                    first_argmax(row)
                } else {
                    row.iter().position(|&t| i64::from(t) == eos).unwrap_or(0)
                }
            })
            .collect()
    }

    /// L2-normalised text embeddings of already tokenized rows (all the same length; pad after
    /// the end token, which the causal mask keeps from changing the result).
    pub fn embed_token_ids(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let Some(first) = ids.first() else {
            return Ok(Vec::new());
        };
        let (s, max) = (first.len(), self.config.text.max_position_embeddings);
        if s == 0 || s > max || ids.iter().any(|r| r.len() != s) {
            return Err(CoreError::internal(format!(
                "token rows must share one length between 1 and {max}"
            )));
        }
        let vocab = self.config.text.vocab_size;
        if let Some(bad) = ids.iter().flatten().find(|&&t| t as usize >= vocab) {
            return Err(CoreError::internal(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        let at = self.pooled_positions(ids);
        let out = self.runtime.run(|| self.text.forward(ids, &at));
        Ok(normalized(out))
    }
}

fn normalized(mut rows: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
    rows.iter_mut().for_each(|r| l2_normalize(r));
    rows
}

impl ZeroShotModel for ClipModel {
    fn preprocess_config(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    fn embed_images(&self, pixels: &PixelBatch) -> Result<Vec<Vec<f32>>> {
        if pixels.batch == 0 {
            return Ok(Vec::new());
        }
        check_pixels(pixels, &self.config.vision)?;
        let out = self
            .runtime
            .run(|| self.vision.forward(&pixels.data, pixels.batch));
        Ok(normalized(out))
    }

    fn embed_texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let tok = self.tokenizer.as_ref().ok_or_else(|| {
            CoreError::model(
                "this CLIP model has no tokenizer (random weights, for image benchmarks); \
                 load a model folder with tokenizer.json to embed text",
            )
        })?;
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        self.embed_token_ids(&tok.encode_batch(texts)?)
    }

    fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    fn count_tokens(&self, texts: &[String]) -> Result<Vec<usize>> {
        let tok = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| CoreError::model("this CLIP model has no tokenizer"))?;
        texts.iter().map(|t| Ok(tok.encode(t)?.len())).collect()
    }
}
