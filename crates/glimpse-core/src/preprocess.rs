//! Preprocessing that reproduces the Hugging Face image processors (the PIL backend of
//! `CLIPImageProcessor` and `ViTImageProcessor`): resize on u8 with Pillow's filter, centre crop
//! (zero padding when the image is smaller), `x * rescale_factor` in f64 cast to f32, then
//! `(x - mean) / std` in f32, laid out `[3, H, W]`.

pub mod resample;

use std::path::Path;

use serde_json::{Map, Value};

use crate::{CoreError, Result};
use resample::Filter;

/// `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD` of transformers.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
// The literals are transformers' own, kept verbatim; `as f32` rounding is what numpy does.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
/// `IMAGENET_STANDARD_MEAN` / `IMAGENET_STANDARD_STD` (what `ViTImageProcessor` defaults to).
pub const IMAGENET_STANDARD_MEAN: [f32; 3] = [0.5, 0.5, 0.5];
pub const IMAGENET_STANDARD_STD: [f32; 3] = [0.5, 0.5, 0.5];

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTarget {
    /// Resize so the shorter side equals this, keeping aspect ratio (CLIP).
    ShortestEdge(u32),
    /// Resize to exactly `(height, width)` (ViT).
    Exact(u32, u32),
}

/// Which transformers processor class the config names; it decides the defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Clip,
    Vit,
    /// `DeiTImageProcessor` / `DeiTFeatureExtractor`: bicubic to a 256 square, centre crop 224;
    /// an int `size` is a square (`default_to_square`), not a shortest edge.
    Deit,
    Unknown,
}

fn model_err(msg: impl Into<String>) -> CoreError {
    CoreError::model(format!("preprocessor_config.json: {}", msg.into()))
}

fn get_bool(obj: &Map<String, Value>, key: &str, default: Option<bool>) -> Result<bool> {
    match obj.get(key) {
        None | Some(Value::Null) => default.ok_or_else(|| model_err(format!("`{key}` is missing"))),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(model_err(format!("`{key}` must be true or false, got {v}"))),
    }
}

fn positive_u32(v: &Value, what: &str) -> Result<u32> {
    v.as_u64()
        .filter(|n| (1..=65_536).contains(n))
        .map(|n| n as u32)
        .ok_or_else(|| {
            model_err(format!(
                "`{what}` must be a whole number from 1 to 65536, got {v}"
            ))
        })
}

/// `size` / `crop_size`: an int, or a dict with `shortest_edge` or `height` + `width`.
fn parse_size(v: &Value, key: &str, int_is_square: bool) -> Result<ResizeTarget> {
    match v {
        Value::Number(_) => {
            let n = positive_u32(v, key)?;
            Ok(if int_is_square {
                ResizeTarget::Exact(n, n)
            } else {
                ResizeTarget::ShortestEdge(n)
            })
        }
        Value::Object(o) => {
            if let (Some(h), Some(w)) = (o.get("height"), o.get("width")) {
                Ok(ResizeTarget::Exact(
                    positive_u32(h, &format!("{key}.height"))?,
                    positive_u32(w, &format!("{key}.width"))?,
                ))
            } else if let Some(s) = o.get("shortest_edge") {
                if o.get("longest_edge").is_some_and(|v| !v.is_null()) {
                    return Err(model_err(format!("`{key}.longest_edge` is not supported")));
                }
                Ok(ResizeTarget::ShortestEdge(positive_u32(
                    s,
                    &format!("{key}.shortest_edge"),
                )?))
            } else {
                Err(model_err(format!(
                    "`{key}` must have `shortest_edge` or `height` and `width`, got {v}"
                )))
            }
        }
        _ => Err(model_err(format!(
            "`{key}` must be a number or an object, got {v}"
        ))),
    }
}

fn parse_triple(
    obj: &Map<String, Value>,
    key: &str,
    default: Option<[f32; 3]>,
) -> Result<[f32; 3]> {
    let bad = || model_err(format!("`{key}` must be a number or a list of 3 numbers"));
    match obj.get(key) {
        None | Some(Value::Null) => default.ok_or_else(|| model_err(format!("`{key}` is missing"))),
        Some(Value::Number(n)) => {
            let x = n.as_f64().ok_or_else(bad)? as f32;
            Ok([x; 3])
        }
        Some(Value::Array(a)) if a.len() == 3 => {
            let mut out = [0f32; 3];
            for (o, v) in out.iter_mut().zip(a) {
                // numpy builds these arrays as float32: round-to-nearest, like `as f32`.
                *o = v.as_f64().ok_or_else(bad)? as f32;
            }
            Ok(out)
        }
        Some(_) => Err(bad()),
    }
}

impl PreprocessConfig {
    /// Resize to exactly `side`×`side` (bicubic), scale to 0–1, no crop and no normalisation: what
    /// stand-in models in tests and benchmarks declare.
    pub fn plain(side: u32) -> Self {
        PreprocessConfig {
            do_resize: true,
            size: ResizeTarget::Exact(side, side),
            resample: 3,
            do_center_crop: false,
            crop_size: (side, side),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: false,
            image_mean: [0.0; 3],
            image_std: [1.0; 3],
        }
    }

    pub fn from_json_str(s: &str) -> Result<Self> {
        let v: Value =
            serde_json::from_str(s).map_err(|e| model_err(format!("not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| model_err("the top level must be an object"))?;
        let type_name = ["image_processor_type", "feature_extractor_type"]
            .iter()
            .find_map(|k| obj.get(*k).and_then(Value::as_str))
            .unwrap_or("");
        let kind = if type_name.starts_with("CLIP") {
            Kind::Clip
        } else if type_name.starts_with("ViT") {
            Kind::Vit
        } else if type_name.starts_with("DeiT") {
            Kind::Deit
        } else {
            Kind::Unknown
        };
        let (def_resample, def_crop, def_mean, def_std) = match kind {
            Kind::Clip => (Some(3), Some(true), Some(CLIP_MEAN), Some(CLIP_STD)),
            Kind::Vit => (
                Some(2),
                Some(false),
                Some(IMAGENET_STANDARD_MEAN),
                Some(IMAGENET_STANDARD_STD),
            ),
            Kind::Deit => (
                Some(3),
                Some(true),
                Some(IMAGENET_STANDARD_MEAN),
                Some(IMAGENET_STANDARD_STD),
            ),
            Kind::Unknown => (None, Some(false), None, None),
        };

        let do_resize = get_bool(obj, "do_resize", Some(true))?;
        let do_center_crop = get_bool(obj, "do_center_crop", def_crop)?;
        // An int `size` is the shortest edge for CLIP-style processors (which crop afterwards)
        // and the square side for ViT-style ones, as transformers' `default_to_square` decides.
        let int_is_square = match kind {
            Kind::Clip => false,
            Kind::Vit | Kind::Deit => true,
            Kind::Unknown => !do_center_crop,
        };
        let size = match obj.get("size") {
            None | Some(Value::Null) => match kind {
                Kind::Clip => ResizeTarget::ShortestEdge(224),
                Kind::Vit => ResizeTarget::Exact(224, 224),
                Kind::Deit => ResizeTarget::Exact(256, 256),
                Kind::Unknown => return Err(model_err("`size` is missing")),
            },
            Some(v) => parse_size(v, "size", int_is_square)?,
        };
        let crop_size = match obj.get("crop_size") {
            None | Some(Value::Null) => (224, 224),
            Some(v) => match parse_size(v, "crop_size", true)? {
                ResizeTarget::Exact(h, w) => (h, w),
                ResizeTarget::ShortestEdge(_) => {
                    return Err(model_err("`crop_size` must have `height` and `width`"))
                }
            },
        };
        let resample = match obj.get("resample") {
            None | Some(Value::Null) => {
                def_resample.ok_or_else(|| model_err("`resample` is missing"))?
            }
            Some(v) => v
                .as_u64()
                .filter(|&n| Filter::from_pil(n as u32).is_some())
                .ok_or_else(|| {
                    model_err(format!(
                        "`resample` must be a Pillow filter 0 to 5, got {v}"
                    ))
                })? as u32,
        };
        let do_rescale = get_bool(obj, "do_rescale", Some(true))?;
        let rescale_factor = match obj.get("rescale_factor") {
            None | Some(Value::Null) => 1.0 / 255.0,
            Some(v) => v
                .as_f64()
                .filter(|f| f.is_finite())
                .ok_or_else(|| model_err(format!("`rescale_factor` must be a number, got {v}")))?,
        };
        let do_normalize = get_bool(obj, "do_normalize", Some(true))?;
        let (image_mean, image_std) = if do_normalize {
            let mean = parse_triple(obj, "image_mean", def_mean)?;
            let std = parse_triple(obj, "image_std", def_std)?;
            if std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
                return Err(model_err("`image_std` must be finite and non-zero"));
            }
            (mean, std)
        } else {
            ([0.0; 3], [1.0; 3])
        };

        // The models take one fixed input size; a shortest-edge resize (or none) without a crop
        // gives every image its own size.
        if !do_center_crop && (!do_resize || matches!(size, ResizeTarget::ShortestEdge(_))) {
            return Err(model_err(
                "without `do_center_crop`, `size` must give both height and width",
            ));
        }

        Ok(PreprocessConfig {
            do_resize,
            size,
            resample,
            do_center_crop,
            crop_size,
            do_rescale,
            rescale_factor,
            do_normalize,
            image_mean,
            image_std,
        })
    }

    /// The openai CLIP checkpoints' processor at `side` pixels: shortest edge `side` (bicubic),
    /// centre crop `side`², rescale 1/255, OpenAI's mean/std — what `from_json_str` gives a
    /// `CLIPImageProcessor` config that names only its sizes.
    pub fn clip(side: u32) -> Self {
        PreprocessConfig {
            do_resize: true,
            size: ResizeTarget::ShortestEdge(side),
            resample: 3,
            do_center_crop: true,
            crop_size: (side, side),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
        }
    }

    /// Read and parse a `preprocessor_config.json` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let s = std::fs::read_to_string(path)
            .map_err(|e| CoreError::model(format!("cannot read {}: {e}", path.display())))?;
        Self::from_json_str(&s)
    }

    /// What a decode in `mode` must keep of a JPEG for this preprocessing: everything in exact
    /// mode or without a resize step, else enough for the resize target.
    pub fn decode_size(&self, mode: crate::image::DecodeMode) -> crate::image::DecodeSize {
        use crate::image::{DecodeMode, DecodeSize};
        match mode {
            DecodeMode::Fast if self.do_resize => DecodeSize::AtLeast(self.size),
            _ => DecodeSize::Full,
        }
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

    /// `(height, width)` after the resize step for an image of `(height, width)`, as transformers'
    /// `get_resize_output_image_size` computes it.
    pub fn resized_size(&self, height: u32, width: u32) -> (u32, u32) {
        if !self.do_resize {
            return (height, width);
        }
        match self.size {
            ResizeTarget::Exact(h, w) => (h, w),
            ResizeTarget::ShortestEdge(s) => {
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                // Python: `int(size * long / short)`, integer product then true division.
                let new_long = ((s as u64 * long as u64) as f64 / short.max(1) as f64) as u32;
                if width <= height {
                    (new_long, s)
                } else {
                    (s, new_long)
                }
            }
        }
    }

    /// `[3, h, w]` float tensor, row-major, `(h, w) == self.output_size()`.
    pub fn preprocess(&self, img: &image::RgbImage) -> Vec<f32> {
        let (oh, ow) = self.output_size();
        let rgb = self.resize_and_crop(img);
        let plane = oh * ow;
        // A channel's value depends only on its byte: 3 × 256 normalisations, then lookups.
        let lut: [[f32; 256]; 3] =
            std::array::from_fn(|c| std::array::from_fn(|v| self.normalize(v as u8, c)));
        let mut out = vec![0f32; 3 * plane];
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (((px, r), g), b) in rgb.chunks_exact(3).zip(r).zip(g).zip(b) {
            *r = lut[0][px[0] as usize];
            *g = lut[1][px[1] as usize];
            *b = lut[2][px[2] as usize];
        }
        out
    }

    fn normalize(&self, v: u8, c: usize) -> f32 {
        let x = if self.do_rescale {
            // transformers: `image.astype(np.float64) * scale`, then `.astype(np.float32)`.
            (v as f64 * self.rescale_factor) as f32
        } else {
            v as f32
        };
        if self.do_normalize {
            (x - self.image_mean[c]) / self.image_std[c]
        } else {
            x
        }
    }

    /// Interleaved RGB8 of `output_size()`: the resized image's centre window, zero-padded where
    /// the resized image is smaller than the crop. Only the window is ever computed, so a very
    /// long thin image never materialises its (huge) full-size resize.
    fn resize_and_crop(&self, img: &image::RgbImage) -> Vec<u8> {
        let (ih, iw) = (img.height(), img.width());
        let (oh, ow) = self.output_size();
        let (rh, rw) = self.resized_size(ih, iw);
        let (rh, rw) = (rh as usize, rw as usize);
        // Only a hand-built config (parsing refuses zero sizes) or an empty image gets here:
        // give padding rather than panic.
        if ih == 0 || iw == 0 || rh == 0 || rw == 0 || oh == 0 || ow == 0 {
            return vec![0u8; oh * ow * 3];
        }
        // Per axis: where the window starts in the resized image, where it lands in the output,
        // and its length (transformers' `center_crop`, including its padding arithmetic).
        let axis = |resized: usize, out: usize| -> (usize, usize, usize) {
            if !self.do_center_crop || resized >= out {
                ((resized - out.min(resized)) / 2, 0, out.min(resized))
            } else {
                (0, (out - resized).div_ceil(2), resized)
            }
        };
        let (sy, dy, ly) = axis(rh, oh);
        let (sx, dx, lx) = axis(rw, ow);
        let filter = Filter::from_pil(self.resample).unwrap_or(Filter::Bilinear);
        let window = if (rh, rw) == (ih as usize, iw as usize) {
            crop_rgb8(img.as_raw(), iw as usize, sx, sy, lx, ly)
        } else {
            resample::resize_window_rgb8(
                img.as_raw(),
                (iw as usize, ih as usize),
                (rw, rh),
                resample::Window {
                    x: sx,
                    y: sy,
                    width: lx,
                    height: ly,
                },
                filter,
            )
        };
        if (dx, dy, lx, ly) == (0, 0, ow, oh) {
            return window;
        }
        let mut out = vec![0u8; oh * ow * 3];
        for (y, row) in window.chunks_exact(lx * 3).enumerate() {
            let start = ((y + dy) * ow + dx) * 3;
            out[start..start + lx * 3].copy_from_slice(row);
        }
        out
    }
}

fn crop_rgb8(src: &[u8], w: usize, x: usize, y: usize, cw: usize, ch: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(cw * ch * 3);
    for row in y..y + ch {
        let start = (row * w + x) * 3;
        out.extend_from_slice(&src[start..start + cw * 3]);
    }
    out
}

#[cfg(test)]
#[path = "preprocess/tests.rs"]
mod tests;
