//! SigLIP and SigLIP 2 (transformers' `SiglipModel`, `model_type: siglip`): a ViT image tower
//! without a class token (learned position embeddings, post-layernorm, then the attention-pooling
//! "MAP" head: one learned probe attends over every patch, then a residual MLP), a bidirectional
//! text tower pooled at the last position (text is padded to a fixed length) through a linear
//! head, and a learned `logit_scale` and `logit_bias`. Scores are independent sigmoids.
//!
//! Both towers run on the fused engine (`engine/`), so f32, bf16 and int8 work as for CLIP (int8
//! models run the text tower in bf16, as CLIP's); the pooling head and the text head stay f32.

use std::path::Path;

use candle_core::Module;
use candle_nn::init::Init;
use candle_nn::{layer_norm, linear, Linear, VarBuilder};
use glimpse_core::backend::{PixelBatch, Scoring, ZeroShotModel};
use glimpse_core::preprocess::PreprocessConfig;
use glimpse_core::scoring::l2_normalize;
use glimpse_core::{CoreError, ModelFamily, Result};
use rayon::prelude::*;

use crate::clip::read_preprocess_config;
use crate::config::{self, model_err, SiglipConfig, SiglipTextConfig, VisionConfig};
use crate::engine::{conv_dense, Dense, Norm, TextEncoder, TokenTable, VisionEncoder};
use crate::kernels::{Act, Kernels};
use crate::layers::{check_pixels, Encoder, CLIP_NAMES};
use crate::presets::SiglipPreset;
use crate::runtime::Runtime;
use crate::siglip_tokenizer::SiglipTokenizer;
use crate::{Error, LoadOptions, Precision};

const INIT_STD: f64 = 0.02;

/// The text tower on the fused engine, as CLIP's: the candle modules are built (so loading,
/// names and random init stay transformers'), converted once, and dropped. Unlike CLIP's, its
/// attention is not causal (every token, the padding included, attends to every token unless
/// the tokenizer gives a mask) and it pools at the last position.
#[derive(Debug, Clone)]
struct TextTower {
    engine: TextEncoder,
}

impl TextTower {
    fn new(cfg: &SiglipTextConfig, vb: &VarBuilder, kernels: Kernels) -> candle_core::Result<Self> {
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
        let head = linear(h, cfg.projection_size, t.pp("head"))?;
        // As CLIP's text tower (see clip.rs): int8 models run text in bf16.
        let kernels = match kernels.precision {
            Precision::Int8 => kernels.at(Precision::Bf16),
            _ => kernels,
        };
        Ok(TextTower {
            engine: TextEncoder {
                token: TokenTable::new(token.flatten_all()?.to_vec1()?, kernels.precision),
                pos: pos.flatten_all()?.to_vec1()?,
                // Full attention: the kernel `Encoder::blocks` chose for the layers.
                blocks: encoder.blocks(kernels)?,
                final_norm: Norm::new(&final_layer_norm)?,
                // Tiny (batch rows): kept f32, as the image tower's head.
                projection: Dense::from_linear(&head, kernels.at(Precision::F32))?,
            },
        })
    }

    /// Head outputs (not yet normalised) of equal-length id rows, pooled at the last position.
    /// `masks[i][j]` false: row `i`'s token `j` is padding no token attends to.
    fn forward(&self, ids: &[Vec<u32>], masks: Option<&[Vec<bool>]>) -> Vec<Vec<f32>> {
        let last = ids[0].len() - 1;
        let keep: Option<Vec<bool>> = masks.map(|m| m.iter().flatten().copied().collect());
        self.engine
            .pooled(ids, &vec![last; ids.len()], keep.as_deref())
    }
}

/// The attention-pooling head (`vision_model.head`): a learned probe as the one query of a
/// `torch.nn.MultiheadAttention` over all tokens, then `x + mlp(layernorm(x))`.
///
/// With one fixed query the key and value projections fold away (exact up to f32 rounding):
/// head `i`'s score of token `x` is `qᵢ·(Kᵢx + bᵢ) = (Kᵢᵀqᵢ)·x + qᵢ·bᵢ`, and the constant
/// `qᵢ·bᵢ` cancels in the softmax; its output is `Σₜ pₜ(Vᵢxₜ + cᵢ) = Vᵢ(Σₜ pₜxₜ) + cᵢ` (the
/// `pₜ` sum to 1). So a token costs `heads` dot products instead of a `[2h, h]` projection (at
/// batch 8: 1.85 GFLOP, 2–3 % of a bf16 pass), and V runs once per (image, head).
#[derive(Debug, Clone)]
struct MapHead {
    /// `Kᵢᵀqᵢ` per head, `[heads, h]`, with the probe's query projected and scaled by
    /// 1/√head_dim at load: each token's `heads` scores in one `[h] → [heads]` layer.
    keys: Dense,
    /// The value projection `[h, h]` with its bias.
    values: Dense,
    out: Dense,
    norm: Norm,
    fc1: Dense,
    act: Act,
    fc2: Dense,
    heads: usize,
}

impl MapHead {
    fn new(cfg: &VisionConfig, vb: VarBuilder, kernels: Kernels) -> candle_core::Result<Self> {
        let h = cfg.encoder.hidden_size;
        let heads = cfg.encoder.num_attention_heads;
        let d = h / heads;
        let randn = Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        };
        let probe = vb.get_with_hints((1, 1, h), "probe", randn)?.reshape(h)?;
        let a = vb.pp("attention");
        let w = a.get_with_hints((3 * h, h), "in_proj_weight", randn)?;
        let b = a.get_with_hints(3 * h, "in_proj_bias", Init::Const(0.0))?;
        let q = Linear::new(w.narrow(0, 0, h)?, Some(b.narrow(0, 0, h)?));
        let scale = (d as f64).powf(-0.5);
        let query = (q.forward(&probe.unsqueeze(0)?)? * scale)?;
        // [heads, 1, d] · [heads, d, h] → [heads, h]: row i is Kᵢᵀqᵢ.
        let keys = query
            .reshape((heads, 1, d))?
            .matmul(&w.narrow(0, h, h)?.reshape((heads, d, h))?)?
            .reshape((heads, h))?;
        let values = Linear::new(w.narrow(0, 2 * h, h)?, Some(b.narrow(0, 2 * h, h)?));
        let f32k = kernels.at(Precision::F32);
        let out = linear(h, h, a.pp("out_proj"))?;
        let norm = layer_norm(h, cfg.encoder.layer_norm_eps, vb.pp("layernorm"))?;
        let fc1 = linear(h, cfg.encoder.intermediate_size, vb.pp("mlp.fc1"))?;
        let fc2 = linear(cfg.encoder.intermediate_size, h, vb.pp("mlp.fc2"))?;
        Ok(MapHead {
            keys: Dense::from_linear(&Linear::new(keys, None), f32k)?,
            values: Dense::from_linear(&values, f32k)?,
            out: Dense::from_linear(&out, f32k)?,
            norm: Norm::new(&norm)?,
            fc1: Dense::from_linear(&fc1, f32k)?,
            act: cfg.encoder.hidden_act.into(),
            fc2: Dense::from_linear(&fc2, f32k)?,
            heads,
        })
    }

    /// `tokens`: `[batch·seq, h]` (after the post-layernorm); returns `[batch, h]`.
    fn forward(&self, tokens: &[f32], batch: usize, seq: usize) -> Vec<f32> {
        let (h, heads) = (self.values.out_features(), self.heads);
        let d = h / heads;
        let mut scores = vec![0f32; batch * seq * heads];
        self.keys.forward(tokens, &mut scores, false);
        // Per (image, head): softmax over the tokens, then the weighted mean of the tokens.
        let mut pooled = vec![0f32; batch * heads * h];
        pooled.par_chunks_mut(h).enumerate().for_each(|(i, z)| {
            let (b, head) = (i / heads, i % heads);
            let s = |t: usize| scores[(b * seq + t) * heads + head];
            let max = (0..seq).map(s).fold(f32::NEG_INFINITY, f32::max);
            let p: Vec<f32> = (0..seq).map(|t| (s(t) - max).exp()).collect();
            let sum: f32 = p.iter().sum();
            for (t, p) in p.iter().enumerate() {
                let (p, x) = (p / sum, &tokens[(b * seq + t) * h..][..h]);
                z.iter_mut().zip(x).for_each(|(z, x)| *z += p * x);
            }
        });
        // Every head's mean through the whole V; head i keeps its own d columns.
        let mut v = vec![0f32; batch * heads * h];
        self.values.forward(&pooled, &mut v, false);
        let mut attn = vec![0f32; batch * h];
        for (i, v) in v.chunks_exact(h).enumerate() {
            let (b, head) = (i / heads, i % heads);
            attn[b * h + head * d..][..d].copy_from_slice(&v[head * d..][..d]);
        }
        let mut x = vec![0f32; batch * h];
        self.out.forward(&attn, &mut x, false);
        let mut normed = vec![0f32; batch * h];
        self.norm.forward(&x, &mut normed);
        let mut mid = vec![0f32; batch * self.fc1.out_features()];
        self.fc1
            .run(&normed, &mut mid, false, Some(self.act), Some(&self.fc2));
        self.fc2.forward(&mid, &mut x, true);
        x
    }
}

#[derive(Debug, Clone)]
struct VisionTower {
    engine: VisionEncoder,
    post_layernorm: Norm,
    head: MapHead,
}

impl VisionTower {
    fn new(cfg: &VisionConfig, vb: &VarBuilder, kernels: Kernels) -> candle_core::Result<Self> {
        let v = vb.pp("vision_model");
        let (ph, pw) = cfg.patch_size;
        if ph != pw {
            candle_core::bail!("non-square patch_size [{ph}, {pw}] is not supported");
        }
        let h = cfg.encoder.hidden_size;
        let e = v.pp("embeddings");
        let conv = candle_nn::conv2d(
            cfg.num_channels,
            h,
            ph,
            candle_nn::Conv2dConfig {
                stride: ph,
                ..Default::default()
            },
            e.pp("patch_embedding"),
        )?;
        let pos = e.pp("position_embedding").get_with_hints(
            (cfg.num_patches(), h),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: INIT_STD,
            },
        )?;
        let encoder = Encoder::new(&cfg.encoder, &CLIP_NAMES, v.pp("encoder.layers"))?;
        let post = layer_norm(h, cfg.encoder.layer_norm_eps, v.pp("post_layernorm"))?;
        // As for CLIP and ViT: the patch embedding runs bf16 in both reduced modes.
        let conv_precision = match kernels.precision {
            Precision::F32 => Precision::F32,
            _ => Precision::Bf16,
        };
        let engine = VisionEncoder {
            patch: ph,
            channels: cfg.num_channels,
            image: cfg.image_size,
            conv: conv_dense(&conv, kernels.at(conv_precision))?,
            cls: Vec::new(),
            lead: 0,
            pos: pos.flatten_all()?.to_vec1()?,
            pre_norm: None,
            blocks: encoder.blocks(kernels)?,
        };
        Ok(VisionTower {
            engine,
            post_layernorm: Norm::new(&post)?,
            head: MapHead::new(cfg, v.pp("head"), kernels)?,
        })
    }

    /// Pooled (not yet normalised) embeddings, one row per image.
    fn forward(&self, pixels: &[f32], batch: usize) -> Vec<Vec<f32>> {
        let seq = self.engine.seq();
        let tokens = self.engine.all_tokens(pixels, batch);
        let mut normed = vec![0f32; tokens.len()];
        self.post_layernorm.forward(&tokens, &mut normed);
        let out = self.head.forward(&normed, batch, seq);
        out.chunks_exact(out.len() / batch.max(1))
            .map(|r| r.to_vec())
            .collect()
    }
}

/// A loaded SigLIP / SigLIP 2 model; see [`ZeroShotModel`] for what it computes.
#[derive(Debug, Clone)]
pub struct SiglipModel {
    config: SiglipConfig,
    text: TextTower,
    vision: VisionTower,
    tokenizer: Option<SiglipTokenizer>,
    logit_scale: f32,
    logit_bias: f32,
    preprocess: PreprocessConfig,
    runtime: Runtime,
}

/// Load a SigLIP model from a Hugging Face folder: `config.json`, `preprocessor_config.json`,
/// a tokenizer (`tokenizer.json`, or SigLIP v1's SentencePiece `spiece.model`) with its
/// `tokenizer_config.json`, and `model.safetensors` (or `pytorch_model.bin`).
pub fn load_siglip(dir: &Path, opts: &LoadOptions) -> Result<SiglipModel, Error> {
    let json = config::read_config_json(dir)?;
    let family = config::kind_of(&json)?;
    if family != ModelFamily::Siglip {
        return Err(model_err(format!(
            "{}: config.json describes a {family} model, not SigLIP",
            dir.display()
        )));
    }
    let config = SiglipConfig::from_json(&json)?;
    let preprocess = read_preprocess_config(dir)?;
    let tokenizer = SiglipTokenizer::from_dir(dir, config.text_length())?;
    let (vb, file) = crate::weights::open(dir, &candle_core::Device::Cpu)?;
    let bad = |source| Error::Weights {
        context: file.display().to_string(),
        source,
    };
    let mut model = build(config, &vb, preprocess, opts.precision).map_err(bad)?;
    model.tokenizer = Some(tokenizer);
    model.runtime = Runtime::new(opts.threads)?;
    tracing::debug!(weights = %file.display(), config = ?model.config, "loaded SigLIP");
    Ok(model)
}

/// A SigLIP of the preset's real architecture with random weights, for benchmarks (no
/// tokenizer: `embed_texts` answers with an error, `embed_token_ids` works).
pub fn random_siglip(preset: SiglipPreset) -> SiglipModel {
    random_siglip_in(preset, Precision::F32)
}

pub(crate) fn random_siglip_in(preset: SiglipPreset, precision: Precision) -> SiglipModel {
    let vb = crate::random::seeded_vb(&candle_core::Device::Cpu);
    build(preset.config(), &vb, preset.preprocess(), precision)
        .expect("a preset SigLIP always builds from seeded weights")
}

fn build(
    config: SiglipConfig,
    vb: &VarBuilder,
    preprocess: PreprocessConfig,
    precision: Precision,
) -> candle_core::Result<SiglipModel> {
    let kernels = Kernels::choose(precision);
    let text = TextTower::new(&config.text, vb, kernels)?;
    let vision = VisionTower::new(&config.vision, vb, kernels)?;
    // Random models (benchmarks) start where SigLIP's training did: scale log 10, bias -10.
    let logit_scale = vb
        .get_with_hints(1, "logit_scale", Init::Const(10f64.ln()))?
        .flatten_all()?
        .to_vec1::<f32>()?[0]
        .exp();
    let logit_bias = vb
        .get_with_hints(1, "logit_bias", Init::Const(-10.0))?
        .flatten_all()?
        .to_vec1::<f32>()?[0];
    Ok(SiglipModel {
        config,
        text,
        vision,
        tokenizer: None,
        logit_scale,
        logit_bias,
        preprocess,
        runtime: Runtime::default(),
    })
}

fn normalized(mut rows: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
    rows.iter_mut().for_each(|r| l2_normalize(r));
    rows
}

impl SiglipModel {
    pub fn config(&self) -> &SiglipConfig {
        &self.config
    }

    pub fn tokenizer(&self) -> Option<&SiglipTokenizer> {
        self.tokenizer.as_ref()
    }

    /// `exp(logit_scale)` and `logit_bias`: logits are `scale · cos + bias`.
    pub fn logit_scale_and_bias(&self) -> (f32, f32) {
        (self.logit_scale, self.logit_bias)
    }

    /// Run forward passes on a pool of `threads` threads (`None`: rayon's global pool).
    pub fn set_threads(&mut self, threads: Option<usize>) -> Result<()> {
        self.runtime = Runtime::new(threads)?;
        Ok(())
    }

    /// L2-normalised text embeddings of already tokenized rows, all the same length (the model's
    /// fixed text length, as its tokenizer pads them). `masks`: per token, whether it is attended
    /// to (`None`: every token is, as the real checkpoints' tokenizers give no attention mask).
    pub fn embed_token_ids(
        &self,
        ids: &[Vec<u32>],
        masks: Option<&[Vec<bool>]>,
    ) -> Result<Vec<Vec<f32>>> {
        let Some(first) = ids.first() else {
            return Ok(Vec::new());
        };
        let (s, max) = (first.len(), self.config.text.max_position_embeddings);
        if s == 0 || s > max || ids.iter().any(|r| r.len() != s) {
            return Err(CoreError::internal(format!(
                "token rows must share one length between 1 and {max}"
            )));
        }
        if let Some(m) = masks {
            if m.len() != ids.len() || m.iter().any(|r| r.len() != s) {
                return Err(CoreError::internal(
                    "attention masks must match the token rows",
                ));
            }
        }
        let vocab = self.config.text.vocab_size;
        if let Some(bad) = ids.iter().flatten().find(|&&t| t as usize >= vocab) {
            return Err(CoreError::internal(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        let out = self.runtime.run(|| self.text.forward(ids, masks));
        Ok(normalized(out))
    }
}

impl ZeroShotModel for SiglipModel {
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
                "this SigLIP model has no tokenizer (random weights, for image benchmarks); \
                 load a model folder with its tokenizer to embed text",
            )
        })?;
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let batch = tok.encode_batch(texts)?;
        let masks = tok.uses_attention_mask().then_some(&batch.masks[..]);
        self.embed_token_ids(&batch.ids, masks)
    }

    fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    fn count_tokens(&self, texts: &[String]) -> Result<Vec<usize>> {
        let tok = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| CoreError::model("this SigLIP model has no tokenizer"))?;
        let max = tok.max_length();
        texts
            .iter()
            .map(|t| Ok(tok.encode_unpadded(t)?.len().min(max)))
            .collect()
    }

    fn scoring(&self) -> Scoring {
        Scoring::Sigmoid {
            bias: self.logit_bias,
        }
    }
}
