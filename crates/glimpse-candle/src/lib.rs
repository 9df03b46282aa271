//! CLIP and ViT forward passes on candle, loaded from Hugging Face model folders.
//!
//! The modules are written here rather than taken from `candle-transformers`, whose CLIP hard-codes
//! the layer-norm epsilon (1e-5) and the activation (quick_gelu), always pools the text tower at
//! `argmax(input_ids)` and invents a random `class_embedding` when the weight is missing; its ViT
//! only knows the pre-v5 weight names. Glimpse's bar is agreement with `transformers` to 1e-4.
//!
//! Layout: [`config`] reads `config.json` with transformers' defaults, [`weights`] opens
//! `model.safetensors` / `pytorch_model.bin`, [`layers`] is the pre-LN transformer block both
//! models share, [`clip`], [`vit`] and [`siglip`] are the models, [`tokenizer`] the CLIP
//! tokenizer and [`siglip_tokenizer`] SigLIP's (`tokenizer.json` or SentencePiece `spiece.model`).
//! The forward pass of the image towers runs on `engine` (layers, attention, encoder) over the
//! CPU kernels in `kernels`, chosen once per model at load.

// Every `unsafe` block says why its preconditions (bounds, CPU features, threads) hold.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod clip;
pub mod config;
mod engine;
mod error;
mod kernels;
pub mod layers;
pub mod presets;
mod random;
mod runtime;
pub mod siglip;
pub mod siglip_tokenizer;
pub mod tokenizer;
pub mod vit;
pub mod weights;

use std::path::Path;

use std::sync::Arc;

use glimpse_core::{CoreError, Network};

pub use glimpse_core::ModelFamily;

pub use clip::{load_clip, random_clip, ClipModel};
pub use error::Error;
pub use presets::{ClipPreset, SiglipPreset, VitPreset};
pub use siglip::{load_siglip, random_siglip, SiglipModel};
pub use vit::{load_vit, random_vit, VitModel};

/// Numeric format of the towers' encoder layers (the patch embedding runs bf16 in both reduced
/// modes; the final norm and projection / classifier / pooling head stay f32; int8 models run
/// their text towers' layers in bf16).
///
/// - `F32`: within 1e-4 of transformers.
/// - `Bf16`: weights rounded to bf16 at load, activations per matmul, f32 accumulation
///   (AVX-512 BF16 where the CPU has it; elsewhere the rounded weights are widened back to f32
///   and run on the f32 kernel, activations unrounded).
/// - `Int8`: dynamic quantisation — weights per output channel, activations per row at run time,
///   i32 accumulation (AVX-512 VNNI where the CPU has it).
///
/// Both reduced modes keep cosine ≥ 0.999 to f32 (`tests/models/precision.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    Int8,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, CoreError> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "int8" | "i8" => Ok(Precision::Int8),
            other => Err(CoreError::Validation(format!(
                "unknown precision '{other}'; expected f32, bf16 or int8"
            ))),
        }
    }
}

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub precision: Precision,
    /// Threads for this model's forward passes. `None` uses rayon's global pool (all cores, or
    /// `RAYON_NUM_THREADS`). `Some(n)` gives the model its own pool of `n` threads, so several
    /// models in one process do not fight over one global setting. candle's element-wise kernels
    /// use a separate pool sized once per process from `CANDLE_NUM_THREADS` / `RAYON_NUM_THREADS`;
    /// set those in the environment to bound them too.
    pub threads: Option<usize>,
}

/// The matmul kernel `precision` runs on this CPU, and whether it is a fast one (for start-up logs
/// and `glimpse bench`): a reduced precision without its instructions is no faster than fp32
/// (bf16) or much slower (int8 on the scalar tile). For bf16 it ends with why its weights stay
/// bf16 or are widened, e.g. `bf16 on AVX-512 BF16 (known: AMD Zen 4/5, bf16 dot product beats
/// f32 FMAs)`.
pub fn kernel_for(precision: Precision) -> (String, bool) {
    kernels::Kernels::choose(precision).describe()
}

/// Which model a Hugging Face folder holds, from `config.json`'s `model_type` (or, failing that,
/// its `architectures`).
pub fn detect_kind(dir: &Path) -> Result<ModelFamily, Error> {
    let cfg = config::read_config_json(dir)?;
    config::kind_of(&cfg)
}

/// Load whatever model a Hugging Face folder holds, as the family its `config.json` names: the
/// one place that maps a family to its loader.
pub fn load_model(dir: &Path, opts: &LoadOptions) -> Result<(ModelFamily, Network), Error> {
    Ok(match detect_kind(dir)? {
        ModelFamily::Clip => (
            ModelFamily::Clip,
            Network::ZeroShot(Arc::new(load_clip(dir, opts)?)),
        ),
        ModelFamily::Vit => (
            ModelFamily::Vit,
            Network::Classifier(Arc::new(load_vit(dir, opts)?)),
        ),
        // DeiT is ViT's encoder with a distillation token: the same loader and engine.
        ModelFamily::Deit => (
            ModelFamily::Deit,
            Network::Classifier(Arc::new(load_vit(dir, opts)?)),
        ),
        ModelFamily::Siglip => (
            ModelFamily::Siglip,
            Network::ZeroShot(Arc::new(load_siglip(dir, opts)?)),
        ),
    })
}

/// [`random_clip`] with load options (precision, threads), for benchmarks.
pub fn random_clip_with(preset: ClipPreset, opts: &LoadOptions) -> Result<ClipModel, CoreError> {
    let mut m = clip::random_clip_in(preset, opts.precision);
    m.set_threads(opts.threads)?;
    Ok(m)
}

/// [`random_vit`] with load options (precision, threads), for benchmarks.
pub fn random_vit_with(preset: VitPreset, opts: &LoadOptions) -> Result<VitModel, CoreError> {
    let mut m = vit::random_vit_in(preset, opts.precision);
    m.set_threads(opts.threads)?;
    Ok(m)
}

/// [`random_siglip`] with load options (precision, threads), for benchmarks.
pub fn random_siglip_with(
    preset: SiglipPreset,
    opts: &LoadOptions,
) -> Result<SiglipModel, CoreError> {
    let mut m = siglip::random_siglip_in(preset, opts.precision);
    m.set_threads(opts.threads)?;
    Ok(m)
}
