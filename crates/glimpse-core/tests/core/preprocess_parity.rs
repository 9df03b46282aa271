//! Decode + preprocess against the Python reference (tools/make_fixtures.py: PIL decode, then the
//! transformers PIL-backend image processors).
//!
//! - `decoded.json`: the RGB8 bytes after first frame, EXIF orientation, 16→8 bit and alpha
//!   flattening must hash the same as PIL's.
//! - `pixels/<model>/<image>.f32`: `[3, H, W]` float32 tensors; ours must match within 1e-5.
//!
//! Both are exact for every format, JPEG included: JPEG pixels come from libjpeg-turbo's decoder
//! (the `mozjpeg` crate), the decoder PIL uses. (zune-jpeg, the `image` crate's, was measured at
//! up to 5 per sample off on 10–16% of samples, which shows up here as ~0.06 after normalising.)

use std::path::{Path, PathBuf};

use glimpse_core::image::{decode, DecodeLimits};
use glimpse_core::preprocess::PreprocessConfig;
use sha2::{Digest, Sha256};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn decode_fixture(name: &str) -> image::RgbImage {
    let bytes = std::fs::read(fixtures().join("images").join(name)).unwrap();
    decode(&bytes, &DecodeLimits::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn decoded_rgb8_matches_pil() {
    let text = std::fs::read_to_string(fixtures().join("expected/decoded.json")).unwrap();
    let expected: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(expected.len() >= 15, "only {} images", expected.len());
    let mut failures = Vec::new();
    for (name, want) in &expected {
        let img = decode_fixture(name);
        let dims = (img.width() as u64, img.height() as u64);
        let want_dims = (
            want["width"].as_u64().unwrap(),
            want["height"].as_u64().unwrap(),
        );
        if dims != want_dims {
            failures.push(format!("{name}: {dims:?}, PIL {want_dims:?}"));
            continue;
        }
        let hash = format!("{:x}", Sha256::digest(img.as_raw()));
        if hash != want["sha256_rgb8"].as_str().unwrap() {
            failures.push(format!("{name}: RGB8 differs from PIL's"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn pixel_values_match_transformers() {
    let root = fixtures().join("expected/pixels");
    let mut checked = 0;
    let mut failures = Vec::new();
    for model in std::fs::read_dir(&root).unwrap() {
        let model = model.unwrap().path();
        let model_name = model.file_name().unwrap().to_str().unwrap().to_string();
        let config = PreprocessConfig::from_file(
            &fixtures()
                .join("models")
                .join(&model_name)
                .join("preprocessor_config.json"),
        )
        .unwrap();
        let (h, w) = config.output_size();
        for file in std::fs::read_dir(&model).unwrap() {
            let file = file.unwrap().path();
            let image_name = file
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches(".f32");
            let want = read_f32(&file);
            let got = config.preprocess(&decode_fixture(image_name));
            assert_eq!(
                want.len(),
                3 * h * w,
                "{model_name}/{image_name}: reference size"
            );
            assert_eq!(got.len(), want.len(), "{model_name}/{image_name}: our size");
            let max = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // One unit of a u8 sample would be 1/255/0.2613 = 0.015 here; we ask for 1e-5.
            let tol = 1e-5;
            println!("{model_name}/{image_name}: max abs diff {max:e}");
            if max > tol {
                failures.push(format!(
                    "{model_name}/{image_name}: max abs diff {max} > {tol}"
                ));
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} reference tensors found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
