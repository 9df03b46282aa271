//! Real architectures at real sizes for `glimpse bench`: the dimensions and image processors of
//! openai/clip-vit-base-patch32, openai/clip-vit-base-patch16, openai/clip-vit-large-patch14,
//! google/vit-base-patch16-224, facebook/deit-base-distilled-patch16-224,
//! facebook/deit-small-patch16-224, google/siglip-base-patch16-224 and
//! google/siglip2-base-patch16-224.

use glimpse_core::preprocess::{
    PreprocessConfig, ResizeTarget, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD,
};
use glimpse_core::{CoreError, ModelFamily};

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
    /// facebook/deit-base-distilled-patch16-224: ViT-B/16 with a distillation token and its
    /// second head.
    DeitB16,
    /// facebook/deit-small-patch16-224: hidden 384, 6 heads, one head.
    DeitS16,
}

/// The `preprocessor_config.json` both DeiT checkpoints ship: resize to 256 (bicubic), centre
/// crop 224, ImageNet's default mean/std.
const DEIT_PREPROCESSOR: &str = r#"{
  "crop_size": 224,
  "do_center_crop": true,
  "do_normalize": true,
  "do_resize": true,
  "feature_extractor_type": "DeiTFeatureExtractor",
  "image_mean": [0.485, 0.456, 0.406],
  "image_std": [0.229, 0.224, 0.225],
  "resample": 3,
  "size": 256
}"#;

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
            "deit-b16" => Ok(VitPreset::DeitB16),
            "deit-s16" => Ok(VitPreset::DeitS16),
            _ => Err(CoreError::Validation(format!(
                "unknown ViT preset '{s}'; expected vit-b16, deit-b16 or deit-s16"
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
        match self {
            VitPreset::B16 => "vit-b16",
            VitPreset::DeitB16 => "deit-b16",
            VitPreset::DeitS16 => "deit-s16",
        }
    }

    /// DeiT (a distillation token after the class token) or plain ViT.
    pub fn family(self) -> ModelFamily {
        match self {
            VitPreset::B16 => ModelFamily::Vit,
            VitPreset::DeitB16 | VitPreset::DeitS16 => ModelFamily::Deit,
        }
    }

    /// Two heads (class and distillation token), averaged: DeiT-B/16 distilled.
    pub fn is_distilled(self) -> bool {
        self == VitPreset::DeitB16
    }

    pub fn config(self) -> VitConfig {
        let mut vision: VisionConfig = VitConfig::default_vision();
        if self == VitPreset::DeitS16 {
            vision.encoder.hidden_size = 384;
            vision.encoder.intermediate_size = 1536;
            vision.encoder.num_attention_heads = 6;
        }
        VitConfig {
            vision,
            id2label: (0..1000).map(|i| format!("LABEL_{i}")).collect(),
        }
    }

    /// google/vit-base-patch16-224's processor: resize to 224x224 (bilinear), mean/std 0.5; the
    /// DeiT checkpoints' (`DEIT_PREPROCESSOR`) for DeiT.
    pub fn preprocess(self) -> PreprocessConfig {
        if self.family() == ModelFamily::Deit {
            return PreprocessConfig::from_json_str(DEIT_PREPROCESSOR)
                .expect("the DeiT processor config parses");
        }
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
