//! Time the per-request image work the HTTP path does before the model: decode, then
//! preprocess with a CLIP (B/32, 224) or ViT (224 square) config, in each `GLIMPSE_DECODE` mode
//! (exact: every pixel; fast: a JPEG decoded at the DCT scale the resize needs). Prints median
//! ms per stage. With `WxH` the image is first resized to that size and re-encoded as a quality
//! 90 JPEG (a phone photo from a fixture: `4032x3024`), or as `png` or (lossless) `webp`.
//!
//!     cargo run --release -p glimpse-core --example decode_timing -- IMAGE [ITERS] [WxH [FORMAT]]

use std::time::Instant;

use image::ImageEncoder;

use glimpse_core::image::{decode, decode_sized, DecodeLimits, DecodeMode};
use glimpse_core::preprocess::PreprocessConfig;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: decode_timing IMAGE [ITERS] [WxH]");
    let iters: usize = args.next().map_or(50, |s| s.parse().expect("ITERS"));
    let mut bytes = std::fs::read(&path).expect("read image");
    let limits = DecodeLimits::default();
    if let Some(size) = args.next() {
        let (w, h) = size.split_once('x').expect("WxH");
        let (w, h): (u32, u32) = (w.parse().expect("W"), h.parse().expect("H"));
        let img = decode(&bytes, &limits).expect("decode");
        let img = image::imageops::resize(&img, w, h, image::imageops::FilterType::CatmullRom);
        bytes.clear();
        match args.next().as_deref().unwrap_or("jpeg") {
            "jpeg" => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
                .encode_image(&img)
                .expect("encode"),
            "png" => image::codecs::png::PngEncoder::new(&mut bytes)
                .write_image(&img, w, h, image::ExtendedColorType::Rgb8)
                .expect("encode"),
            "webp" => image::codecs::webp::WebPEncoder::new_lossless(&mut bytes)
                .encode(&img, w, h, image::ExtendedColorType::Rgb8)
                .expect("encode"),
            other => panic!("FORMAT is jpeg, png or webp, not {other}"),
        }
    }
    let configs = [
        ("clip", r#"{"image_processor_type":"CLIPImageProcessor"}"#),
        ("vit", r#"{"image_processor_type":"ViTImageProcessor"}"#),
    ];
    for (name, json) in configs {
        let cfg = PreprocessConfig::from_json_str(json).expect("config");
        for (mode_name, mode) in [("exact", DecodeMode::Exact), ("fast", DecodeMode::Fast)] {
            let size = cfg.decode_size(mode);
            let (mut dec, mut pre) = (Vec::new(), Vec::new());
            let mut dims = (0, 0);
            for _ in 0..iters {
                let t = Instant::now();
                let img = decode_sized(&bytes, &limits, size).expect("decode");
                dec.push(t.elapsed().as_secs_f64() * 1e3);
                let t = Instant::now();
                std::hint::black_box(cfg.preprocess(&img));
                pre.push(t.elapsed().as_secs_f64() * 1e3);
                dims = img.dimensions();
            }
            println!(
                "{path} ({} bytes) {name} {mode_name}: decoded {}x{}, decode p50 {:.2} ms, \
                 preprocess p50 {:.2} ms",
                bytes.len(),
                dims.0,
                dims.1,
                median(dec),
                median(pre)
            );
        }
    }
}
