//! Bad model folders give `CoreError::Model` naming the file or field; bad calls give errors, not
//! panics.

use std::path::Path;

use crate::common::*;
use glimpse_candle::{detect_kind, load_clip, load_vit, LoadOptions, Precision};
use glimpse_core::backend::{PixelBatch, ZeroShotModel};
use glimpse_core::CoreError;
use glimpse_core::ModelFamily;
use serde_json::Value;

/// A copy of a fixture model folder, with `edit` applied to its config.json.
fn copy_model(name: &str, skip: &[&str], edit: impl FnOnce(&mut Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(model_dir(name)).unwrap() {
        let entry = entry.unwrap();
        let file = entry.file_name().into_string().unwrap();
        if !skip.contains(&file.as_str()) {
            std::fs::copy(entry.path(), dir.path().join(&file)).unwrap();
        }
    }
    let cfg_path = dir.path().join("config.json");
    if cfg_path.exists() {
        let mut cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
        edit(&mut cfg);
        std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    }
    dir
}

/// The message of a load error, which must reach glimpse-core's callers as `CoreError::Model`.
fn model_error<E: Into<CoreError>>(r: Result<impl std::fmt::Debug, E>) -> String {
    match r.map_err(Into::into) {
        Err(e @ CoreError::Model { .. }) => e.to_string(),
        other => panic!("expected CoreError::Model, got {other:?}"),
    }
}

fn clip_err(dir: &Path) -> String {
    model_error(load_clip(dir, &LoadOptions::default()).map(|_| ()))
}

#[test]
fn kinds_are_detected() {
    assert_eq!(
        detect_kind(&model_dir("clip-tiny")).unwrap(),
        ModelFamily::Clip
    );
    assert_eq!(
        detect_kind(&model_dir("vit-tiny-bin")).unwrap(),
        ModelFamily::Vit
    );
}

#[test]
fn missing_weights_file_is_named() {
    let dir = copy_model("clip-tiny", &["model.safetensors"], |_| {});
    let e = clip_err(dir.path());
    assert!(
        e.contains("has no model.safetensors or pytorch_model.bin"),
        "{e}"
    );
}

#[test]
fn unknown_model_type_is_refused() {
    let dir = copy_model("clip-tiny", &[], |c| {
        c["model_type"] = "bert".into();
        c["architectures"] = serde_json::json!(["BertModel"]);
    });
    let e = model_error(detect_kind(dir.path()));
    assert!(
        e.contains("unknown model_type 'bert'; Glimpse runs 'clip', 'vit', 'deit' and 'siglip'"),
        "{e}"
    );
    assert!(clip_err(dir.path()).contains("unknown model_type 'bert'"));
}

#[test]
fn config_field_of_the_wrong_type_is_named() {
    let dir = copy_model("clip-tiny", &[], |c| {
        c["vision_config"]["hidden_size"] = "48".into();
    });
    let e = clip_err(dir.path());
    assert!(
        e.contains("vision_config.hidden_size must be a non-negative integer"),
        "{e}"
    );
}

#[test]
fn config_that_disagrees_with_the_weights_names_the_file() {
    let dir = copy_model("vit-tiny", &[], |c| c["intermediate_size"] = 80.into());
    let e = model_error(load_vit(dir.path(), &LoadOptions::default()).map(|_| ()));
    assert!(
        e.contains("model.safetensors") && e.contains("shape"),
        "{e}"
    );
}

#[test]
fn missing_config_tokenizer_and_processor_are_named() {
    let dir = copy_model("clip-tiny", &["config.json"], |_| {});
    assert!(clip_err(dir.path()).contains("has no config.json"));
    let dir = copy_model("clip-tiny", &["tokenizer.json"], |_| {});
    assert!(clip_err(dir.path()).contains("has no tokenizer.json"));
    let dir = copy_model("clip-tiny", &["preprocessor_config.json"], |_| {});
    assert!(clip_err(dir.path()).contains("preprocessor_config.json"));
}

#[test]
fn corrupt_weights_are_a_model_error() {
    let dir = copy_model("vit-tiny-bin", &["pytorch_model.bin"], |_| {});
    std::fs::write(dir.path().join("pytorch_model.bin"), b"not a zip").unwrap();
    let e = model_error(load_vit(dir.path(), &LoadOptions::default()).map(|_| ()));
    assert!(e.contains("pytorch_model.bin"), "{e}");
}

#[test]
fn wrong_family_and_unsupported_precision_are_refused() {
    let e = model_error(load_vit(&model_dir("clip-tiny"), &LoadOptions::default()).map(|_| ()));
    assert!(e.contains("not a ViT"), "{e}");
    // Every precision loads (the accuracy of the reduced ones is tested in precision.rs).
    for p in [Precision::F32, Precision::Bf16, Precision::Int8] {
        let opts = LoadOptions {
            precision: p,
            threads: None,
        };
        assert!(load_clip(&model_dir("clip-tiny"), &opts).is_ok(), "{p:?}");
    }
}

#[test]
fn wrongly_sized_pixels_are_an_internal_error() {
    let model = load_clip(&model_dir("clip-tiny"), &LoadOptions::default()).unwrap();
    let bad = PixelBatch {
        data: vec![0.0; 3 * 32 * 32],
        batch: 1,
        height: 32,
        width: 32,
    };
    assert!(matches!(
        model.embed_images(&bad),
        Err(CoreError::Internal { .. })
    ));
    let short = PixelBatch {
        data: vec![0.0; 10],
        batch: 1,
        height: 224,
        width: 224,
    };
    assert!(matches!(
        model.embed_images(&short),
        Err(CoreError::Internal { .. })
    ));
    assert!(matches!(
        model.embed_token_ids(&[vec![49406, 99999]]),
        Err(CoreError::Internal { .. })
    ));
    assert!(model
        .embed_images(&PixelBatch::stack(&[], 224, 224))
        .unwrap()
        .is_empty());
    assert!(model.embed_texts(&[]).unwrap().is_empty());
}
