//! Real architectures at real sizes for `glimpse bench`: the dimensions and image processors of
//! openai/clip-vit-base-patch32, openai/clip-vit-base-patch16, openai/clip-vit-large-patch14,
//! google/vit-base-patch16-224, google/siglip-base-patch16-224 and google/siglip2-base-patch16-224.

use glimpse_core::preprocess::{
    PreprocessConfig, ResizeTarget, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD,
};
use glimpse_core::CoreError;

use crate::config::{ClipConfig, SiglipConfig, VisionConfig, VitConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipPreset {
    /// openai/clip-vit-base-patch32.
    B32,
    /// openai/clip-vit-base-patch16.
    B16,
    /// openai/clip-vit-large-patch14.
    L14,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VitPreset {
    /// google/vit-base-patch16-224 (1000 ImageNet classes).
    B16,
}

impl std::str::FromStr for ClipPreset {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, CoreError> {
        match s {
            "clip-b32" => Ok(ClipPreset::B32),
            "clip-b16" => Ok(ClipPreset::B16),
            "clip-l14" => Ok(ClipPreset::L14),
            _ => Err(CoreError::Validation(format!(
                "unknown CLIP preset '{s}'; expected clip-b32, clip-b16 or clip-l14"
            ))),
        }
    }
}

impl std::str::FromStr for VitPreset {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, CoreError> {
        match s {
            "vit-b16" => Ok(VitPreset::B16),
            _ => Err(CoreError::Validation(format!(
                "unknown ViT preset '{s}'; expected vit-b16"
            ))),
        }
    }
}

impl ClipPreset {
    pub fn name(self) -> &'static str {
        match self {
            ClipPreset::B32 => "clip-b32",
            ClipPreset::B16 => "clip-b16",
            ClipPreset::L14 => "clip-l14",
        }
    }

    pub fn config(self) -> ClipConfig {
        let mut c = ClipConfig::default_b32();
        match self {
            ClipPreset::B32 => {}
            ClipPreset::B16 => c.vision.patch_size = (16, 16),
            ClipPreset::L14 => {
                c.text.encoder.hidden_size = 768;
                c.text.encoder.intermediate_size = 3072;
                c.text.encoder.num_attention_heads = 12;
                c.vision.encoder.hidden_size = 1024;
                c.vision.encoder.intermediate_size = 4096;
                c.vision.encoder.num_hidden_layers = 24;
                c.vision.encoder.num_attention_heads = 16;
                c.vision.patch_size = (14, 14);
                c.projection_dim = 768;
            }
        }
        c
    }

    /// `preprocessor_config.json` of the openai checkpoints: shortest edge 224 (bicubic), centre
    /// crop 224, OpenAI's mean/std.
    pub fn preprocess(self) -> PreprocessConfig {
        PreprocessConfig::clip(224)
    }
}

impl VitPreset {
    pub fn name(self) -> &'static str {
        "vit-b16"
    }

    pub fn config(self) -> VitConfig {
        let vision: VisionConfig = VitConfig::default_vision();
        VitConfig {
            vision,
            id2label: (0..1000).map(|i| format!("LABEL_{i}")).collect(),
        }
    }

    /// google/vit-base-patch16-224's processor: resize to 224x224 (bilinear), mean/std 0.5.
    pub fn preprocess(self) -> PreprocessConfig {
        PreprocessConfig {
            do_resize: true,
            size: ResizeTarget::Exact(224, 224),
            resample: 2,
            do_center_crop: false,
            crop_size: (224, 224),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: IMAGENET_STANDARD_MEAN,
            image_std: IMAGENET_STANDARD_STD,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiglipPreset {
    /// google/siglip-base-patch16-224 (text vocabulary 32 000).
    B16,
    /// google/siglip2-base-patch16-224: the same towers, Gemma's 256 000-token vocabulary.
    Siglip2B16,
}

impl std::str::FromStr for SiglipPreset {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, CoreError> {
        match s {
            "siglip-b16" => Ok(SiglipPreset::B16),
            "siglip2-b16" => Ok(SiglipPreset::Siglip2B16),
            _ => Err(CoreError::Validation(format!(
                "unknown SigLIP preset '{s}'; expected siglip-b16 or siglip2-b16"
            ))),
        }
    }
}

impl SiglipPreset {
    pub fn name(self) -> &'static str {
        match self {
            SiglipPreset::B16 => "siglip-b16",
            SiglipPreset::Siglip2B16 => "siglip2-b16",
        }
    }

    pub fn config(self) -> SiglipConfig {
        let mut c = SiglipConfig::default_base();
        if self == SiglipPreset::Siglip2B16 {
            c.text.vocab_size = 256_000;
        }
        c
    }

    /// Their `SiglipImageProcessor`: resize to 224x224 (bicubic), mean/std 0.5, no crop.
    pub fn preprocess(self) -> PreprocessConfig {
        PreprocessConfig {
            do_resize: true,
            size: ResizeTarget::Exact(224, 224),
            resample: 3,
            do_center_crop: false,
            crop_size: (224, 224),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: IMAGENET_STANDARD_MEAN,
            image_std: IMAGENET_STANDARD_STD,
        }
    }
}
