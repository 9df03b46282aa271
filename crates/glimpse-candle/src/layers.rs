//! The pre-LN transformer block CLIP (both towers) and ViT share:
//! `x + attn(ln1(x))`, then `x + fc2(act(fc1(ln2(x))))`. Only the weight names differ.

use candle_core::{Module, Result, Tensor};
use candle_nn::{layer_norm, linear, linear_no_bias, LayerNorm, Linear, VarBuilder};

use crate::config::{Activation, EncoderConfig};

impl Module for Activation {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Activation::Gelu => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
            Activation::Relu => xs.relu(),
            Activation::Silu => xs.silu(),
        }
    }
}

impl From<Activation> for crate::kernels::Act {
    fn from(a: Activation) -> Self {
        use crate::kernels::Act;
        match a {
            Activation::QuickGelu => Act::QuickGelu,
            Activation::Gelu => Act::GeluErf,
            Activation::GeluTanh => Act::GeluTanh,
            Activation::Relu => Act::Relu,
            Activation::Silu => Act::Silu,
        }
    }
}

/// Weight names inside one layer, relative to the layer's prefix.
#[derive(Debug, Clone, Copy)]
pub struct LayerNames {
    pub ln1: &'static str,
    pub ln2: &'static str,
    pub q: &'static str,
    pub k: &'static str,
    pub v: &'static str,
    pub o: &'static str,
    pub fc1: &'static str,
    pub fc2: &'static str,
}

pub const CLIP_NAMES: LayerNames = LayerNames {
    ln1: "layer_norm1",
    ln2: "layer_norm2",
    q: "self_attn.q_proj",
    k: "self_attn.k_proj",
    v: "self_attn.v_proj",
    o: "self_attn.out_proj",
    fc1: "mlp.fc1",
    fc2: "mlp.fc2",
};

/// ViT as published on the Hub and as `save_pretrained` writes it (`save_original_format`).
pub const VIT_NAMES: LayerNames = LayerNames {
    ln1: "layernorm_before",
    ln2: "layernorm_after",
    q: "attention.attention.query",
    k: "attention.attention.key",
    v: "attention.attention.value",
    o: "attention.output.dense",
    fc1: "intermediate.dense",
    fc2: "output.dense",
};

/// ViT as transformers 5 names its modules (a raw `torch.save(model.state_dict())`).
pub const VIT_V5_NAMES: LayerNames = LayerNames {
    ln1: "layernorm_before",
    ln2: "layernorm_after",
    q: "attention.q_proj",
    k: "attention.k_proj",
    v: "attention.v_proj",
    o: "attention.o_proj",
    fc1: "mlp.fc1",
    fc2: "mlp.fc2",
};

#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    fn new(cfg: &EncoderConfig, names: &LayerNames, vb: &VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let qkv = |name: &str| {
            if cfg.qkv_bias {
                linear(h, h, vb.pp(name))
            } else {
                linear_no_bias(h, h, vb.pp(name))
            }
        };
        let head_dim = h / cfg.num_attention_heads;
        Ok(Attention {
            q: qkv(names.q)?,
            k: qkv(names.k)?,
            v: qkv(names.v)?,
            o: linear(h, h, vb.pp(names.o))?,
            heads: cfg.num_attention_heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// `mask`: additive `[seq, seq]` (causal for the CLIP text tower).
    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, s, h) = xs.dims3()?;
        let split = |t: Tensor| {
            t.reshape((b, s, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q.forward(xs)?)?;
        let k = split(self.k.forward(xs)?)?;
        let v = split(self.v.forward(xs)?)?;
        let mut scores = (q.matmul(&k.t()?)? * self.scale)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, s, h))?;
        self.o.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    fc1: Linear,
    act: Activation,
    fc2: Linear,
}

impl EncoderLayer {
    fn new(cfg: &EncoderConfig, names: &LayerNames, vb: VarBuilder) -> Result<Self> {
        let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        Ok(EncoderLayer {
            ln1: layer_norm(h, eps, vb.pp(names.ln1))?,
            attn: Attention::new(cfg, names, &vb)?,
            ln2: layer_norm(h, eps, vb.pp(names.ln2))?,
            fc1: linear(h, i, vb.pp(names.fc1))?,
            act: cfg.hidden_act,
            fc2: linear(i, h, vb.pp(names.fc2))?,
        })
    }

    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let xs = (xs + self.attn.forward(&self.ln1.forward(xs)?, mask)?)?;
        let ys = self.fc2.forward(
            &self
                .act
                .forward(&self.fc1.forward(&self.ln2.forward(&xs)?)?)?,
        )?;
        xs + ys
    }
}

/// A stack of layers read from `<prefix>.0`, `<prefix>.1`, …
#[derive(Debug, Clone)]
pub struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    pub fn new(cfg: &EncoderConfig, names: &LayerNames, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(cfg, names, vb.pp(i)))
            .collect::<Result<_>>()?;
        Ok(Encoder { layers })
    }

    /// The same layers for the fused CPU engine ([`crate::engine`]), weights re-laid out once.
    pub(crate) fn blocks(
        &self,
        kernels: crate::kernels::Kernels,
    ) -> Result<Vec<crate::engine::Block>> {
        use crate::engine::{AttentionKernel, Block, Dense, Norm};
        self.layers
            .iter()
            .map(|l| {
                let a = &l.attn;
                Ok(Block {
                    ln1: Norm::new(&l.ln1)?,
                    qkv: Dense::fused_qkv(&a.q, &a.k, &a.v, a.scale as f32, kernels)?,
                    o: Dense::from_linear(&a.o, kernels)?,
                    ln2: Norm::new(&l.ln2)?,
                    fc1: Dense::from_linear(&l.fc1, kernels)?,
                    act: l.act.into(),
                    fc2: Dense::from_linear(&l.fc2, kernels)?,
                    heads: a.heads,
                    attention: AttentionKernel::choose(kernels, a.head_dim),
                })
            })
            .collect()
    }

    pub fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let mut xs = xs.clone();
        for layer in &self.layers {
            xs = layer.forward(&xs, mask)?;
        }
        Ok(xs)
    }
}

/// Index of the first maximum along the last dimension, as torch's `argmax` picks it.
pub(crate) fn first_argmax<T: PartialOrd + Copy>(xs: &[T]) -> usize {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if *x > xs[best] {
            best = i;
        }
    }
    best
}

/// Patch embedding shared by the CLIP vision tower and ViT: a stride-`patch` convolution, the
/// class token in front, learned position embeddings added. Loaded with candle (names, shapes,
/// random init) and run only as part of the fused engine (`into_engine`).
#[derive(Debug, Clone)]
pub struct PatchEmbedding {
    conv: candle_nn::Conv2d,
    /// `[1, lead, hidden]`: the class token (DeiT: then the distillation token).
    cls: Tensor,
    /// `[1, lead + patches, hidden]`.
    pos: Tensor,
}

impl PatchEmbedding {
    /// `cls` is any shape holding `hidden` values, `pos` any shape holding `(1 + patches) * hidden`.
    pub fn new(
        cfg: &crate::config::VisionConfig,
        conv_bias: bool,
        conv_vb: VarBuilder,
        cls: Tensor,
        pos: Tensor,
    ) -> Result<Self> {
        Self::with_lead_tokens(cfg, conv_bias, conv_vb, (cls, 1), pos)
    }

    /// [`PatchEmbedding::new`] with `lead` learned tokens in front of the patches (DeiT: class
    /// and distillation token, 2): `tokens` holds `lead * hidden` values, `pos`
    /// `(lead + patches) * hidden`.
    pub fn with_lead_tokens(
        cfg: &crate::config::VisionConfig,
        conv_bias: bool,
        conv_vb: VarBuilder,
        (tokens, lead): (Tensor, usize),
        pos: Tensor,
    ) -> Result<Self> {
        let cls = tokens;
        let (ph, pw) = cfg.patch_size;
        if ph != pw {
            candle_core::bail!("non-square patch_size [{ph}, {pw}] is not supported");
        }
        let hidden = cfg.encoder.hidden_size;
        let conv_cfg = candle_nn::Conv2dConfig {
            stride: ph,
            ..Default::default()
        };
        let conv = if conv_bias {
            candle_nn::conv2d(cfg.num_channels, hidden, ph, conv_cfg, conv_vb)?
        } else {
            candle_nn::conv2d_no_bias(cfg.num_channels, hidden, ph, conv_cfg, conv_vb)?
        };
        Ok(PatchEmbedding {
            conv,
            cls: cls.reshape((1, lead, hidden))?,
            pos: pos.reshape((1, cfg.num_patches() + lead, hidden))?,
        })
    }

    /// This embedding, `pre_norm` and `encoder` as one fused-engine image encoder.
    pub(crate) fn into_engine(
        self,
        cfg: &crate::config::VisionConfig,
        pre_norm: Option<&LayerNorm>,
        encoder: &Encoder,
        kernels: crate::kernels::Kernels,
    ) -> Result<crate::engine::VisionEncoder> {
        Ok(crate::engine::VisionEncoder {
            patch: cfg.patch_size.0,
            channels: cfg.num_channels,
            image: cfg.image_size,
            // At f32 this one matmul took ~10% of an int8 pass; int8 here cost CLIP-B/32 0.0003
            // of cosine to f32 (0.9991 left), bf16 next to nothing, so reduced modes use bf16.
            conv: crate::engine::conv_dense(
                &self.conv,
                kernels.at(match kernels.precision {
                    crate::Precision::F32 => crate::Precision::F32,
                    _ => crate::Precision::Bf16,
                }),
            )?,
            cls: self.cls.flatten_all()?.to_vec1()?,
            lead: self.cls.dim(1)?,
            pos: self.pos.flatten_all()?.to_vec1()?,
            pre_norm: pre_norm.map(crate::engine::Norm::new).transpose()?,
            blocks: encoder.blocks(kernels)?,
        })
    }
}

/// Check a `PixelBatch` has the size the model was built for (transformers refuses other sizes
/// unless asked to interpolate) and holds `batch × channels × h × w` values.
pub(crate) fn check_pixels(
    pixels: &glimpse_core::backend::PixelBatch,
    cfg: &crate::config::VisionConfig,
) -> std::result::Result<(), glimpse_core::CoreError> {
    let (h, w) = cfg.image_size;
    let c = cfg.num_channels;
    if pixels.height != h || pixels.width != w {
        return Err(glimpse_core::CoreError::internal(format!(
            "model expects {h}x{w} images, got {}x{}",
            pixels.height, pixels.width
        )));
    }
    if pixels.data.len() != pixels.batch * c * h * w {
        return Err(glimpse_core::CoreError::internal(format!(
            "pixel batch holds {} values, expected {} x {c} x {h} x {w}",
            pixels.data.len(),
            pixels.batch
        )));
    }
    Ok(())
}
