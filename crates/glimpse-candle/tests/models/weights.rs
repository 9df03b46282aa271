//! Weight files beyond the plain f32 fixtures: fp16/bf16 checkpoints (converted to f32 on load)
//! and ViT weights under transformers 5's module names.

use std::collections::HashMap;

use crate::common::*;
use candle_core::{DType, Device, Tensor};
use glimpse_candle::{load_clip, load_vit, LoadOptions};
use glimpse_core::backend::ZeroShotModel;

/// Copy a fixture folder, rewriting model.safetensors through `f` (name, tensor) -> (name, tensor).
fn rewrite(name: &str, f: impl Fn(&str, Tensor) -> (String, Tensor)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(model_dir(name)).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "model.safetensors" {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    let tensors =
        candle_core::safetensors::load(model_dir(name).join("model.safetensors"), &Device::Cpu)
            .unwrap();
    let out: HashMap<String, Tensor> = tensors.into_iter().map(|(k, t)| f(&k, t)).collect();
    candle_core::safetensors::save(&out, dir.path().join("model.safetensors")).unwrap();
    dir
}

#[test]
fn half_precision_checkpoints_load_as_f32() {
    let reference = load_clip(&model_dir("clip-tiny"), &LoadOptions::default()).unwrap();
    let px = pixels("pixels/clip-tiny/astronaut.jpg.f32");
    let want = reference.embed_images(&single(px.clone())).unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let dir = rewrite("clip-tiny", |k, t| {
            (k.to_string(), t.to_dtype(dtype).unwrap())
        });
        let model = load_clip(dir.path(), &LoadOptions::default()).unwrap();
        let got = model.embed_images(&single(px.clone())).unwrap();
        let d = max_abs_diff_rows(&got, &want);
        eprintln!("{dtype:?} checkpoint: image embeds max |diff| vs f32 {d:.2e}");
        // Rounding the weights moves the embedding a little, never wildly.
        assert!(d > 0.0 && d < 0.05, "{dtype:?}: {d}");
    }
}

#[test]
fn vit_weights_under_transformers5_names_load() {
    let renames = [
        ("vit.encoder.layer.", "vit.layers."),
        ("attention.attention.query", "attention.q_proj"),
        ("attention.attention.key", "attention.k_proj"),
        ("attention.attention.value", "attention.v_proj"),
        ("attention.output.dense", "attention.o_proj"),
        ("intermediate.dense", "mlp.fc1"),
        ("output.dense", "mlp.fc2"),
    ];
    let dir = rewrite("vit-tiny", |k, t| {
        let k = renames
            .iter()
            .fold(k.to_string(), |k, (a, b)| k.replace(a, b));
        (k, t)
    });
    let px = single(pixels("pixels/vit-tiny/astronaut.jpg.f32"));
    let want = load_vit(&model_dir("vit-tiny"), &LoadOptions::default())
        .unwrap()
        .logits(&px)
        .unwrap();
    let got = load_vit(dir.path(), &LoadOptions::default())
        .unwrap()
        .logits(&px)
        .unwrap();
    assert_eq!(got, want);
}

#[test]
fn own_thread_pool_gives_the_same_answer() {
    let px = single(pixels("pixels/clip-tiny/wide.jpg.f32"));
    let shared = load_clip(&model_dir("clip-tiny"), &LoadOptions::default()).unwrap();
    let opts = LoadOptions {
        threads: Some(1),
        ..Default::default()
    };
    let own = load_clip(&model_dir("clip-tiny"), &opts).unwrap();
    let d = max_abs_diff_rows(
        &own.embed_images(&px).unwrap(),
        &shared.embed_images(&px).unwrap(),
    );
    assert!(d <= 1e-6, "{d}");
}
