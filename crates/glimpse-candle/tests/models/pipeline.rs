//! Whole path from file bytes: glimpse-core's decode + preprocessing, then the model, against
//! transformers (PIL decode + image processor + model) for the images whose pixels the reference
//! did not save. Every format agrees to 1e-4 on the probabilities today, JPEG included (the
//! decoder matches libjpeg's output here); a failure on a JPEG alone points at the decoder.

use crate::common::*;
use glimpse_candle::{load_clip, load_vit, LoadOptions};
use glimpse_core::backend::{ImageClassifier, PixelBatch, ZeroShotModel};
use glimpse_core::image::{decode, DecodeLimits};
use glimpse_core::preprocess::PreprocessConfig;
use glimpse_core::scoring::clip_probabilities;

fn prepare(cfg: &PreprocessConfig, name: &str) -> PixelBatch {
    let bytes = std::fs::read(fixtures().join("images").join(name)).unwrap();
    let rgb = decode(&bytes, &DecodeLimits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let (h, w) = cfg.output_size();
    PixelBatch::stack(&[cfg.preprocess(&rgb)], h, w)
}

/// `(name, max |diff| of probs)` for every image without reference pixels.
fn report(model: &str, diffs: &[(String, f32)]) {
    for (n, d) in diffs {
        eprintln!("{model} {n}: max |diff| probs {d:.2e}");
    }
}

#[test]
fn clip_from_files_matches_transformers() {
    clip_from_files("clip-tiny");
}

/// Patch 14 at 56 px (old-style config) and at 42 px (new-style config) from file bytes.
#[test]
fn clip_variants_from_files_match_transformers() {
    clip_from_files("clip-tiny-l14-336");
    clip_from_files("clip-tiny-laion");
}

fn clip_from_files(name: &str) {
    let model = load_clip(&model_dir(name), &LoadOptions::default()).unwrap();
    let exp = expected(name);
    let prompts: Vec<String> = exp["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let text = model.embed_texts(&prompts).unwrap();
    let mut diffs = Vec::new();
    for (name, e) in exp["images"].as_object().unwrap() {
        let emb = model
            .embed_images(&prepare(model.preprocess_config(), name))
            .unwrap()
            .remove(0);
        let p = clip_probabilities(&emb, &text, model.logit_scale());
        diffs.push((name.clone(), max_abs_diff(&p, &f32s(&e["probs"]))));
    }
    report(name, &diffs);
    check(&diffs);
}

#[test]
fn vit_from_files_matches_transformers() {
    let model = load_vit(&model_dir("vit-tiny"), &LoadOptions::default()).unwrap();
    let exp = expected("vit-tiny");
    let mut diffs = Vec::new();
    for (name, e) in exp["images"].as_object().unwrap() {
        let p = model
            .classify(&prepare(model.preprocess_config(), name))
            .unwrap()
            .remove(0);
        diffs.push((name.clone(), max_abs_diff(&p, &f32s(&e["probs"]))));
    }
    report("vit-tiny", &diffs);
    check(&diffs);
}

fn check(diffs: &[(String, f32)]) {
    assert!(diffs.len() >= 10);
    for (name, d) in diffs {
        assert!(*d <= 1e-4, "{name}: probs differ by {d}");
    }
}
