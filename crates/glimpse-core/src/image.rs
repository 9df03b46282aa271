//! Image decoding with limits. STUB: filled in by the core-image work.

use crate::{CoreError, Result};

#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest `width * height` accepted, checked from the header before decoding.
    pub max_pixels: u64,
    /// Largest width or height accepted.
    pub max_side: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_pixels: 40_000_000,
            max_side: 12_000,
        }
    }
}

/// Decode bytes into RGB8: sniff the format from the bytes, check dimensions before decoding,
/// decode the first frame, apply EXIF orientation, flatten alpha onto white.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<image::RgbImage> {
    let _ = limits;
    let img = image::load_from_memory(bytes).map_err(|e| CoreError::InvalidImage(e.to_string()))?;
    Ok(img.to_rgb8())
}
