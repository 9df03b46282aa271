//! Shared helpers: where the fixtures are, reading the reference JSON and pixel files, comparing.
#![allow(dead_code)]

use std::path::PathBuf;

use glimpse_core::backend::PixelBatch;
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub fn expected(name: &str) -> Value {
    let path = fixtures().join("expected").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(f32s).collect()
}

/// Raw little-endian f32 `[3, side, side]` from `expected/<rel>`.
pub fn pixels(rel: &str) -> Vec<f32> {
    let path = fixtures().join("expected").join(rel);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// `images/<name>` decoded and preprocessed by glimpse-core, as the server does it.
pub fn preprocess_file(cfg: &glimpse_core::preprocess::PreprocessConfig, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixtures().join("images").join(name)).unwrap();
    let rgb = glimpse_core::image::decode(&bytes, &glimpse_core::image::DecodeLimits::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    cfg.preprocess(&rgb)
}

pub fn single(px: Vec<f32>) -> PixelBatch {
    let side = ((px.len() / 3) as f64).sqrt() as usize;
    assert_eq!(3 * side * side, px.len(), "pixel files are square");
    PixelBatch::stack(&[px], side, side)
}

/// Images of a model's reference whose pixel values were saved: `(name, pixels rel path, entry)`.
pub fn images_with_pixels(exp: &Value) -> Vec<(String, String, Value)> {
    exp["images"]
        .as_object()
        .unwrap()
        .iter()
        .filter_map(|(name, e)| {
            e["pixel_values"]
                .as_str()
                .map(|p| (name.clone(), p.to_string(), e.clone()))
        })
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn max_abs_diff_rows(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "row count mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| max_abs_diff(x, y))
        .fold(0.0, f32::max)
}
