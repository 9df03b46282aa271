//! Time the per-request image work the HTTP path does before the model: decode, then
//! preprocess with a CLIP (B/32, 224) or ViT (224 square) config. Prints median ms per stage.
//!
//!     cargo run --release -p glimpse-core --example decode_timing -- IMAGE [ITERS]

use std::time::Instant;

use glimpse_core::image::{decode, DecodeLimits};
use glimpse_core::preprocess::PreprocessConfig;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: decode_timing IMAGE [ITERS]");
    let iters: usize = args.next().map_or(50, |s| s.parse().expect("ITERS"));
    let bytes = std::fs::read(&path).expect("read image");
    let limits = DecodeLimits::default();
    let configs = [
        ("clip", r#"{"image_processor_type":"CLIPImageProcessor"}"#),
        ("vit", r#"{"image_processor_type":"ViTImageProcessor"}"#),
    ];
    let mut dec = Vec::new();
    for _ in 0..iters {
        let t = Instant::now();
        let img = decode(&bytes, &limits).expect("decode");
        dec.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(img);
    }
    let img = decode(&bytes, &limits).expect("decode");
    println!(
        "{path}: {}x{}, decode p50 {:.2} ms",
        img.width(),
        img.height(),
        median(dec)
    );
    for (name, json) in configs {
        let cfg = PreprocessConfig::from_json_str(json).expect("config");
        let mut pre = Vec::new();
        for _ in 0..iters {
            let t = Instant::now();
            std::hint::black_box(cfg.preprocess(&img));
            pre.push(t.elapsed().as_secs_f64() * 1e3);
        }
        println!("  preprocess {name} p50 {:.2} ms", median(pre));
    }
}
