//! Property test of the Pillow resample port: several hundred random (input size, output size,
//! filter) triples drawn by `tools/make_resize_cases.py` (1-pixel rows and columns, ratios past
//! 1:20 both ways, one axis unchanged, upscales, 4000x3000-class downscales), each checked against
//! the SHA-256 of Pillow's own `Image.resize` bytes. The inputs are regenerated here from the same
//! integer formula (`pattern`), so the fixture holds only sizes and hashes.
//!
//! Every case runs through the full resize and through the window path that preprocessing uses
//! (a centre window must equal the same crop of the full output).

use std::path::PathBuf;

use glimpse_core::preprocess::resample::{
    force_scalar, resize_rgb8, resize_window_rgb8, Filter, Window,
};
use sha2::{Digest, Sha256};

/// Mirror of `pattern` in tools/make_resize_cases.py.
fn pattern(w: u32, h: u32, kind: u32, seed: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    let (wm, hm) = ((w - 1).max(1), (h - 1).max(1));
    for y in 0..h {
        for x in 0..w {
            for c in 0..3u32 {
                let mut v = x
                    .wrapping_mul(0x9E37_79B1)
                    .wrapping_add(y.wrapping_mul(0x85EB_CA77))
                    .wrapping_add(c.wrapping_mul(0xC2B2_AE3D))
                    .wrapping_add(seed);
                v ^= v >> 16;
                v = v.wrapping_mul(0x7FEB_352D);
                v ^= v >> 15;
                v = v.wrapping_mul(0x846C_A68B);
                v ^= v >> 16;
                let noise = v & 255;
                let px = match kind {
                    0 => noise,
                    1 => match c {
                        0 => x * 255 / wm,
                        1 => y * 255 / hm,
                        _ => ((x / (7 + seed % 31) + y / (5 + seed % 29)) % 2) * 255,
                    },
                    _ => {
                        if noise > 250 {
                            255
                        } else {
                            40 + c * 50
                        }
                    }
                };
                out.push(px as u8);
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn resize_matches_pillow_on_random_shapes() {
    check_all_cases(false);
}

/// The same cases through the portable code (what a CPU without AVX2 runs).
#[test]
fn portable_resize_matches_pillow_on_random_shapes() {
    check_all_cases(true);
}

fn check_all_cases(portable: bool) {
    force_scalar(portable);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/resize/random_cases.json");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("random_cases.json")).unwrap();
    let cases = manifest["cases"].as_array().unwrap();
    assert!(cases.len() >= 300, "only {} cases", cases.len());
    let num = |c: &serde_json::Value, k: &str| c[k].as_u64().unwrap() as u32;
    let mut failures = Vec::new();
    let mut by_shape = [0usize; 3]; // wide, square-ish, tall inputs among the cases
    for (i, case) in cases.iter().enumerate() {
        let (w, h, ow, oh) = (
            num(case, "w"),
            num(case, "h"),
            num(case, "ow"),
            num(case, "oh"),
        );
        let f = Filter::from_pil(num(case, "filter")).unwrap();
        by_shape[if w > 2 * h {
            0
        } else if h > 2 * w {
            2
        } else {
            1
        }] += 1;
        let src = pattern(w, h, num(case, "kind"), num(case, "seed"));
        let (w, h, ow, oh) = (w as usize, h as usize, ow as usize, oh as usize);
        let got = resize_rgb8(&src, (w, h), (ow, oh), f);
        let what = format!("case {i}: {w}x{h} -> {ow}x{oh} {f:?}");
        if hex(&got) != case["sha256"].as_str().unwrap() {
            failures.push(what);
            continue;
        }
        // The window path (what preprocessing calls): a centre window, as a crop would take it.
        let win = Window {
            x: ow / 4,
            y: oh / 3,
            width: (ow - ow / 4).min(ow / 2 + 1),
            height: (oh - oh / 3).min(oh / 2 + 1),
        };
        let part = resize_window_rgb8(&src, (w, h), (ow, oh), win, f);
        let mut crop = Vec::with_capacity(part.len());
        for y in win.y..win.y + win.height {
            crop.extend_from_slice(&got[(y * ow + win.x) * 3..(y * ow + win.x + win.width) * 3]);
        }
        if part != crop {
            failures.push(format!("{what}: window {win:?} differs from the crop"));
        }
    }
    assert!(
        by_shape.iter().all(|&n| n >= 50),
        "the draw should cover wide, square and tall inputs: {by_shape:?}"
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from Pillow (portable code: {portable}):\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
