//! CLIP and ViT forward passes on candle, loaded from Hugging Face model folders.
//!
//! The modules are written here rather than taken from `candle-transformers`, whose CLIP hard-codes
//! the layer-norm epsilon (1e-5) and the activation (quick_gelu), always pools the text tower at
//! `argmax(input_ids)` and invents a random `class_embedding` when the weight is missing; its ViT
//! only knows the pre-v5 weight names. Glimpse's bar is agreement with `transformers` to 1e-4.
//!
//! Layout: [`config`] reads `config.json` with transformers' defaults, [`weights`] opens
//! `model.safetensors` / `pytorch_model.bin`, [`layers`] is the pre-LN transformer block both
//! models share, [`clip`] and [`vit`] are the models, [`tokenizer`] the CLIP tokenizer.

pub mod clip;
pub mod config;
pub mod layers;
pub mod presets;
mod runtime;
pub mod tokenizer;
pub mod vit;
pub mod weights;

use std::path::Path;

use glimpse_core::CoreError;

pub use clip::{load_clip, random_clip, ClipModel};
pub use presets::{ClipPreset, VitPreset};
pub use vit::{load_vit, random_vit, VitModel};

/// Numeric format of the weights and activations.
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

impl LoadOptions {
    fn check_precision(&self) -> Result<(), CoreError> {
        match self.precision {
            Precision::F32 => Ok(()),
            p => Err(CoreError::Model(format!(
                "precision {} is not yet supported; use f32",
                p.as_str()
            ))),
        }
    }
}

/// The two model families Glimpse runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Clip,
    Vit,
}

/// Which model a Hugging Face folder holds, from `config.json`'s `model_type` (or, failing that,
/// its `architectures`).
pub fn detect_kind(dir: &Path) -> Result<ModelKind, CoreError> {
    let cfg = config::read_config_json(dir)?;
    config::kind_of(&cfg)
}
