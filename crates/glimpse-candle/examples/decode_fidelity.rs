//! `GLIMPSE_DECODE=fast` against `exact` on the fixture photos at several upload sizes: each
//! JPEG in tests/fixtures/images is resized (Catmull-Rom) by 0.5×, 1×, 2×, 4× and 8× and
//! re-encoded (quality 90; the 1× row is the file itself), then decoded both ways, preprocessed
//! and run through the tiny fixture models (CLIP: the six default prompts; ViT: its labels).
//! Prints, per model, image and size, the scale the fast decode chose, the largest |Δ| of the
//! model input, the largest |Δp| and whether top-1 agrees; then the worst over all rows.
//!
//!     cargo run --release -p glimpse-candle --example decode_fidelity

use std::io::Cursor;
use std::path::PathBuf;

use glimpse_candle::{load_clip, load_vit, LoadOptions};
use glimpse_core::backend::{ImageClassifier, PixelBatch, ZeroShotModel};
use glimpse_core::image::{decode, decode_sized, DecodeLimits, DecodeMode};
use glimpse_core::preprocess::PreprocessConfig;
use glimpse_core::scoring::clip_probabilities;
use image::codecs::jpeg::JpegEncoder;
use image::{imageops, RgbImage};

const FACTORS: [f32; 5] = [0.5, 1.0, 2.0, 4.0, 8.0];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// SOI + an APP1 Exif segment with orientation 6, in front of a JPEG's tail.
fn with_orientation_6(jpeg: &[u8]) -> Vec<u8> {
    let mut tiff = b"MM\0*".to_vec();
    tiff.extend_from_slice(&8u32.to_be_bytes());
    tiff.extend_from_slice(&1u16.to_be_bytes());
    tiff.extend_from_slice(&0x0112u16.to_be_bytes());
    tiff.extend_from_slice(&3u16.to_be_bytes());
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&6u16.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes());
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// The photo at `factor` times its size, as a phone or a thumbnailer would upload it. A file
/// with EXIF orientation 6 keeps its stored (sideways) pixels and gets the tag back.
fn variant(name: &str, bytes: &[u8], factor: f32) -> Vec<u8> {
    if factor == 1.0 {
        return bytes.to_vec();
    }
    let upright = decode(bytes, &DecodeLimits::default()).expect("decode");
    let rotated = name.contains("exif6");
    let stored: RgbImage = if rotated {
        imageops::rotate270(&upright)
    } else {
        upright
    };
    let (w, h) = (
        ((stored.width() as f32 * factor).round() as u32).max(1),
        ((stored.height() as f32 * factor).round() as u32).max(1),
    );
    let img = imageops::resize(&stored, w, h, imageops::FilterType::CatmullRom);
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(Cursor::new(&mut out), 90)
        .encode_image(&img)
        .expect("encode");
    if rotated {
        with_orientation_6(&out)
    } else {
        out
    }
}

fn input(cfg: &PreprocessConfig, bytes: &[u8], mode: DecodeMode) -> (Vec<f32>, (u32, u32)) {
    let img = decode_sized(bytes, &DecodeLimits::default(), cfg.decode_size(mode)).unwrap();
    (cfg.preprocess(&img), img.dimensions())
}

fn argmax(p: &[f32]) -> usize {
    (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn main() {
    let dir = fixtures();
    let clip = load_clip(&dir.join("models/clip-tiny"), &LoadOptions::default()).unwrap();
    let vit = load_vit(&dir.join("models/vit-tiny"), &LoadOptions::default()).unwrap();
    let prompts: Vec<String> = glimpse_core::labels::DEFAULT_LABELS
        .iter()
        .map(|l| glimpse_core::labels::DEFAULT_TEMPLATE.replace("{label}", l))
        .collect();
    let text = clip.embed_texts(&prompts).unwrap();
    type Run<'a> = Box<dyn Fn(&[f32]) -> Vec<f32> + 'a>;
    let models: [(&str, &PreprocessConfig, Run); 2] = [
        (
            "clip-tiny",
            clip.preprocess_config(),
            Box::new(|x: &[f32]| {
                let emb = clip
                    .embed_images(&PixelBatch::single(x.to_vec(), 224, 224))
                    .unwrap()
                    .remove(0);
                clip_probabilities(&emb, &text, clip.logit_scale())
            }),
        ),
        (
            "vit-tiny",
            vit.preprocess_config(),
            Box::new(|x: &[f32]| {
                vit.classify(&PixelBatch::single(x.to_vec(), 224, 224))
                    .unwrap()
                    .remove(0)
            }),
        ),
    ];
    let mut names: Vec<String> = std::fs::read_dir(dir.join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jpg"))
        .collect();
    names.sort();
    println!("| model | image | upload | fast decodes | max abs Δ input | max abs Δp | top-1 |");
    println!("|---|---|---|---|---|---|---|");
    let (mut worst_p, mut worst_in, mut rows, mut flips) = (0f32, 0f32, 0, 0);
    for name in &names {
        let bytes = std::fs::read(dir.join("images").join(name)).unwrap();
        for factor in FACTORS {
            let file = variant(name, &bytes, factor);
            for (model, cfg, run) in &models {
                let (x_exact, full) = input(cfg, &file, DecodeMode::Exact);
                let (x_fast, scaled) = input(cfg, &file, DecodeMode::Fast);
                let (p_exact, p_fast) = (run(&x_exact), run(&x_fast));
                let (d_in, d_p) = (max_abs(&x_exact, &x_fast), max_abs(&p_exact, &p_fast));
                let same = argmax(&p_exact) == argmax(&p_fast);
                rows += 1;
                flips += usize::from(!same);
                worst_p = worst_p.max(d_p);
                worst_in = worst_in.max(d_in);
                println!(
                    "| {model} | {name} | {}×{} | {}×{} | {d_in:.3} | {d_p:.1e} | {} |",
                    full.0,
                    full.1,
                    scaled.0,
                    scaled.1,
                    if same { "same" } else { "CHANGED" }
                );
            }
        }
    }
    println!(
        "\n{rows} rows: max abs Δp {worst_p:.2e}, max abs Δ input {worst_in:.3}, top-1 changed in {flips}"
    );
}
