//! Preprocessing that reproduces the Hugging Face image processors. STUB: filled in by the
//! core-image work.

use crate::{CoreError, Result};

/// What `preprocessor_config.json` says, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    pub do_resize: bool,
    pub size: ResizeTarget,
    /// Pillow resampling filter number (0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming).
    pub resample: u32,
    pub do_center_crop: bool,
    /// `(height, width)`.
    pub crop_size: (u32, u32),
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ResizeTarget {
    /// Resize so the shorter side equals this, keeping aspect ratio (CLIP).
    ShortestEdge(u32),
    /// Resize to exactly `(height, width)` (ViT).
    Exact(u32, u32),
}

impl PreprocessConfig {
    pub fn from_json_str(s: &str) -> Result<Self> {
        let _ = s;
        Err(CoreError::Model("not implemented".into()))
    }

    /// `(height, width)` of the tensor `preprocess` produces.
    pub fn output_size(&self) -> (usize, usize) {
        if self.do_center_crop {
            (self.crop_size.0 as usize, self.crop_size.1 as usize)
        } else {
            match self.size {
                ResizeTarget::Exact(h, w) => (h as usize, w as usize),
                ResizeTarget::ShortestEdge(s) => (s as usize, s as usize),
            }
        }
    }

    /// `[3, h, w]` float tensor, row-major.
    pub fn preprocess(&self, img: &image::RgbImage) -> Vec<f32> {
        let _ = img;
        unimplemented!()
    }
}
