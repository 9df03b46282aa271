//! Our Pillow resample port against Pillow itself: every case of
//! `tests/fixtures/resize/manifest.json` (made by `tools/make_resize_fixtures.py`) must come out
//! byte-identical, for all six filters, up- and downscaling, 1 px and very non-square sizes.

use std::path::PathBuf;

use glimpse_core::preprocess::resample::{resize_rgb8, Filter};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/resize")
}

fn load_png(name: &str) -> image::RgbImage {
    let path = fixtures().join(name);
    image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

/// Mirror of `synthetic` in tools/make_resize_fixtures.py.
fn synthetic(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / (w - 1).max(1)) as u8,
            (y * 255 / (h - 1).max(1)) as u8,
            (((x / 37 + y / 29) % 2) * 255) as u8,
        ])
    })
}

#[test]
fn resize_matches_pillow_byte_for_byte() {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest.json"),
    )
    .unwrap();
    let cases = manifest["cases"].as_array().unwrap();
    assert!(cases.len() > 100, "manifest has only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let input = case["input"].as_str().unwrap();
        let src = match input.strip_prefix("synthetic:") {
            Some(dims) => {
                let (w, h) = dims.split_once('x').unwrap();
                synthetic(w.parse().unwrap(), h.parse().unwrap())
            }
            None => load_png(input),
        };
        let (w, h) = (
            case["width"].as_u64().unwrap() as usize,
            case["height"].as_u64().unwrap() as usize,
        );
        let filter = Filter::from_pil(case["filter"].as_u64().unwrap() as u32).unwrap();
        let expected = load_png(case["output"].as_str().unwrap());
        assert_eq!(
            (expected.width() as usize, expected.height() as usize),
            (w, h)
        );
        let got = resize_rgb8(
            src.as_raw(),
            (src.width() as usize, src.height() as usize),
            (w, h),
            filter,
        );
        let diff = got
            .iter()
            .zip(expected.as_raw())
            .filter(|(a, b)| a != b)
            .count();
        let max = got
            .iter()
            .zip(expected.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        if diff > 0 {
            failures.push(format!(
                "{}: {diff} bytes differ, max {max}",
                case["output"].as_str().unwrap()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
