//! Real architectures at real sizes for `glimpse bench`: the dimensions and image processors of
//! openai/clip-vit-base-patch32, openai/clip-vit-base-patch16 and google/vit-base-patch16-224.

use glimpse_core::preprocess::{
    PreprocessConfig, ResizeTarget, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD,
};
use glimpse_core::CoreError;

use crate::config::{ClipConfig, VisionConfig, VitConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipPreset {
    /// openai/clip-vit-base-patch32.
    B32,
    /// openai/clip-vit-base-patch16.
    B16,
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
            _ => Err(CoreError::Validation(format!(
                "unknown CLIP preset '{s}'; expected clip-b32 or clip-b16"
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
        }
    }

    pub fn config(self) -> ClipConfig {
        let mut c = ClipConfig::default_b32();
        if self == ClipPreset::B16 {
            c.vision.patch_size = (16, 16);
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
