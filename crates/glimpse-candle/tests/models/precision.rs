//! Reduced precision (bf16 weights, dynamic int8) against f32: cosine ≥ 0.999 between the image
//! embeddings (CLIP) and the logits (ViT), on the transformers fixture models and on random
//! models at the real sizes (the same seeded weights at every precision).

use crate::common::{model_dir, pixels, single};
use glimpse_candle::{
    load_clip, load_vit, random_clip_with, random_vit_with, ClipPreset, LoadOptions, Precision,
    VitPreset,
};
use glimpse_core::backend::{PixelBatch, ZeroShotModel};

const MIN_COSINE: f32 = 0.999;

fn opts(precision: Precision) -> LoadOptions {
    LoadOptions {
        precision,
        threads: None,
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

fn check(what: &str, want: &[Vec<f32>], got: &[Vec<f32>]) {
    assert_eq!(want.len(), got.len());
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        let c = cosine(w, g);
        eprintln!("{what} row {i}: cosine {c:.6}");
        assert!(c >= MIN_COSINE, "{what} row {i}: cosine {c} < {MIN_COSINE}");
        // Not trivially equal: the reduced path really ran.
        assert!(w != g, "{what} row {i}: identical to f32");
    }
}

/// Two different images, so a row mix-up would show.
fn two_images(side: usize) -> PixelBatch {
    let a: Vec<f32> = (0..3 * side * side)
        .map(|i| ((i % 97) as f32 / 48.0) - 1.0)
        .collect();
    let b: Vec<f32> = (0..3 * side * side)
        .map(|i| ((i * 31 % 89) as f32 / 44.0) - 1.0)
        .collect();
    PixelBatch::stack(&[a, b], side, side)
}

fn fixture_pixels() -> PixelBatch {
    let exp = crate::common::expected("clip-tiny");
    let (_, rel, _) = crate::common::images_with_pixels(&exp).remove(0);
    single(pixels(&rel))
}

#[test]
fn reduced_precision_clip_fixture_tracks_f32() {
    let px = fixture_pixels();
    let f32m = load_clip(&model_dir("clip-tiny"), &opts(Precision::F32)).unwrap();
    let want = f32m.embed_images(&px).unwrap();
    for p in [Precision::Bf16, Precision::Int8] {
        let m = load_clip(&model_dir("clip-tiny"), &opts(p)).unwrap();
        check(
            &format!("clip-tiny {p:?}"),
            &want,
            &m.embed_images(&px).unwrap(),
        );
    }
}

#[test]
fn reduced_precision_vit_fixture_tracks_f32() {
    let exp = crate::common::expected("vit-tiny");
    let (_, rel, _) = crate::common::images_with_pixels(&exp).remove(0);
    let px = single(pixels(&rel));
    let want = load_vit(&model_dir("vit-tiny"), &opts(Precision::F32))
        .unwrap()
        .logits(&px)
        .unwrap();
    for p in [Precision::Bf16, Precision::Int8] {
        let m = load_vit(&model_dir("vit-tiny"), &opts(p)).unwrap();
        check(&format!("vit-tiny {p:?}"), &want, &m.logits(&px).unwrap());
    }
}

#[test]
fn reduced_precision_real_size_models_track_f32() {
    let px = two_images(224);
    let want = random_clip_with(ClipPreset::B32, &opts(Precision::F32))
        .unwrap()
        .embed_images(&px)
        .unwrap();
    let want_vit = random_vit_with(VitPreset::B16, &opts(Precision::F32))
        .unwrap()
        .logits(&px)
        .unwrap();
    for p in [Precision::Bf16, Precision::Int8] {
        let m = random_clip_with(ClipPreset::B32, &opts(p)).unwrap();
        check(
            &format!("clip-b32 {p:?}"),
            &want,
            &m.embed_images(&px).unwrap(),
        );
        let m = random_vit_with(VitPreset::B16, &opts(p)).unwrap();
        check(
            &format!("vit-b16 {p:?}"),
            &want_vit,
            &m.logits(&px).unwrap(),
        );
    }
}

/// The same seeded preset is the same model: two f32 builds agree exactly.
#[test]
fn random_presets_are_deterministic() {
    let px = two_images(224);
    let a = random_clip_with(ClipPreset::B32, &opts(Precision::F32)).unwrap();
    let b = random_clip_with(ClipPreset::B32, &opts(Precision::F32)).unwrap();
    assert_eq!(a.embed_images(&px).unwrap(), b.embed_images(&px).unwrap());
}
