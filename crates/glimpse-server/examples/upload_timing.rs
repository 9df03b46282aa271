//! End-to-end time of one request by what is sent, against a running `glimpse serve`: uploads of
//! several sizes made from one photo, then label sets the server has never seen. Prints one JSON
//! line per row with the server's own `timingMs` (median and spread over `--runs`), so decode,
//! queue and text-tower costs show without the client's share.
//!
//! cargo run --release -p glimpse-server --example upload_timing -- \
//!     --url http://127.0.0.1:8080 --key gk_... --image tests/fixtures/images/motorcycle.jpg \
//!     [--runs 9] [--jpeg-mp 0.16,2,12] [--chroma 420,444] [--png-mp 4] [--new-labels 6,64] \
//!     [--endpoint clip]
//!
//! The uploads are the photo resized (Catmull-Rom) to each pixel count at the photo's aspect
//! ratio, with a fixed ±6-level noise so they compress like camera output rather than like a
//! smooth upscale, then JPEG-encoded at quality 90 or PNG-encoded. Each JPEG size is sent in
//! each `--chroma` layout: `420` is what phone cameras, Pillow and libjpeg write by default
//! (chroma at half resolution both ways; libjpeg-turbo's encoder, baseline, standard tables: a
//! 12 MP one is ~2.0 MB), `444` keeps full-resolution chroma (the `image` crate's encoder: twice
//! the colour data to entropy-decode, ~2.6 MB at 12 MP).
//!
//! Labels: "new" rows send `--new-labels` labels no request used before (fresh words
//! every run) with the smallest JPEG, and report the extra time over that image's cached-label
//! median; "subset" and "reorder" rows send parts of the cached label set, which must cost nothing
//! extra (the prompt cache is per prompt).

use std::io::Cursor;

use image::{ImageFormat, RgbImage};
use reqwest::multipart::{Form, Part};

struct Args {
    url: String,
    key: String,
    image: String,
    endpoint: String,
    runs: usize,
    jpeg_mp: Vec<f64>,
    chroma: Vec<u32>,
    png_mp: Vec<f64>,
    new_labels: Vec<usize>,
}

const CACHED: [&str; 6] = ["car", "document", "person", "motorcycle", "cat", "dog"];

fn parse() -> Result<Args, String> {
    let mut a = Args {
        url: "http://127.0.0.1:8080".into(),
        key: String::new(),
        image: "tests/fixtures/images/motorcycle.jpg".into(),
        endpoint: "clip".into(),
        runs: 9,
        jpeg_mp: vec![0.16, 2.0, 12.0],
        chroma: vec![420, 444],
        png_mp: vec![4.0],
        new_labels: vec![6, 64],
    };
    let list = |v: &str| -> Result<Vec<f64>, String> {
        v.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("not a number: {s}"))
            })
            .collect()
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => a.url = v,
            "--key" => a.key = v,
            "--image" => a.image = v,
            "--endpoint" => a.endpoint = v,
            "--runs" => a.runs = v.parse().map_err(|_| "--runs: not a number")?,
            "--jpeg-mp" => a.jpeg_mp = list(&v)?,
            "--chroma" => {
                a.chroma = list(&v)?.into_iter().map(|c| c as u32).collect();
                if a.chroma.iter().any(|c| ![420, 444].contains(c)) {
                    return Err("--chroma: 420 and/or 444".into());
                }
            }
            "--png-mp" => a.png_mp = list(&v)?,
            "--new-labels" => a.new_labels = list(&v)?.into_iter().map(|n| n as usize).collect(),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.key.is_empty() || a.runs == 0 {
        return Err("--key is required and --runs at least 1".into());
    }
    Ok(a)
}

/// The photo at about `mp` megapixels, with fixed pseudo-random noise; a JPEG's chroma at half
/// resolution (`Some(420)`, libjpeg's encoder) or full (`Some(444)`, the `image` crate's).
fn upload(
    photo: &RgbImage,
    mp: f64,
    format: ImageFormat,
    chroma: Option<u32>,
) -> (Vec<u8>, u32, u32) {
    let aspect = photo.width() as f64 / photo.height() as f64;
    let h = (mp * 1e6 / aspect).sqrt().round().max(1.0) as u32;
    let w = (h as f64 * aspect).round().max(1.0) as u32;
    let mut img = image::imageops::resize(photo, w, h, image::imageops::FilterType::CatmullRom);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for p in img.pixels_mut() {
        for c in p.0.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state % 13) as i32 - 6;
            *c = (*c as i32 + noise).clamp(0, 255) as u8;
        }
    }
    let mut bytes = Vec::new();
    match format {
        ImageFormat::Jpeg if chroma == Some(420) => {
            let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
            // libjpeg-turbo's own defaults (baseline, 2×2 chroma, standard Huffman tables),
            // not mozjpeg's progressive, trellis-quantised profile.
            c.set_fastest_defaults();
            c.set_size(w as usize, h as usize);
            c.set_quality(90.0);
            c.set_chroma_sampling_pixel_sizes((2, 2), (2, 2));
            let mut started = c.start_compress(Vec::new()).expect("start JPEG");
            started.write_scanlines(img.as_raw()).expect("encode JPEG");
            bytes = started.finish().expect("finish JPEG");
        }
        ImageFormat::Jpeg => {
            let enc =
                image::codecs::jpeg::JpegEncoder::new_with_quality(Cursor::new(&mut bytes), 90);
            img.write_with_encoder(enc).expect("encode JPEG");
        }
        _ => img
            .write_to(&mut Cursor::new(&mut bytes), format)
            .expect("encode"),
    }
    (bytes, w, h)
}

/// One request; the server's `timingMs`.
async fn one(
    http: &reqwest::Client,
    a: &Args,
    bytes: &[u8],
    name: &str,
    labels: &str,
) -> Result<f64, String> {
    let form = Form::new()
        .part(
            "image",
            Part::bytes(bytes.to_vec()).file_name(name.to_string()),
        )
        .text("labels", labels.to_string());
    let res = http
        .post(format!("{}/api/image-classification/{}", a.url, a.endpoint))
        .header("X-API-Key", &a.key)
        .multipart(form)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status();
    let body: serde_json::Value = res.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {body}"));
    }
    body["timingMs"]
        .as_f64()
        .ok_or_else(|| format!("no timingMs in {body}"))
}

fn summary(mut ms: Vec<f64>) -> serde_json::Value {
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    let r = |x: f64| (x * 10.0).round() / 10.0;
    serde_json::json!({"ms_p50": r(at(0.5)), "ms_min": r(ms[0]), "ms_max": r(ms[ms.len() - 1])})
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Two-word labels ("amber bicycle") no earlier request of this process used: label `i` of run
/// `run`, from 48 × 48 word pairs. Real label words, so a prompt is as many tokens as a user's
/// ("a photo of a amber bicycle." is 9 with the start and end tokens), not a made-up string that
/// the tokenizer splits into many pieces.
fn fresh_labels(n: usize, run: usize, offset: usize) -> String {
    const ADJ: [&str; 48] = [
        "amber", "black", "blue", "brass", "bright", "broken", "brown", "calm", "clean", "cold",
        "copper", "dark", "dusty", "empty", "faded", "giant", "golden", "green", "grey", "heavy",
        "hollow", "icy", "large", "little", "metal", "misty", "modern", "muddy", "narrow", "old",
        "orange", "pale", "pink", "plastic", "purple", "quiet", "red", "round", "rusty", "shiny",
        "silver", "small", "soft", "striped", "tall", "white", "wooden", "yellow",
    ];
    const NOUN: [&str; 48] = [
        "anchor", "apple", "basket", "bicycle", "boat", "bottle", "bridge", "bucket", "cabin",
        "camera", "candle", "castle", "chair", "clock", "cloud", "desk", "door", "drum", "engine",
        "fence", "flower", "garden", "guitar", "hammer", "helmet", "kettle", "ladder", "lamp",
        "lantern", "mirror", "mountain", "piano", "pillow", "river", "rocket", "saddle", "shelf",
        "shovel", "statue", "street", "table", "tent", "tower", "tractor", "train", "tree",
        "umbrella", "wagon",
    ];
    (0..n)
        .map(|i| {
            let k = offset + run * n + i;
            format!("{} {}", ADJ[k % 48], NOUN[(k / 48) % 48])
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("upload_timing: {e}");
            std::process::exit(2);
        }
    };
    let photo = match image::open(&a.image) {
        Ok(img) => img.to_rgb8(),
        Err(e) => {
            eprintln!("upload_timing: cannot read --image {}: {e}", a.image);
            std::process::exit(2);
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let cached = CACHED.join(",");
    let fail = |e: String| -> ! {
        eprintln!("upload_timing: {e}");
        std::process::exit(1)
    };
    let mut uploads: Vec<(String, Vec<u8>, u32, u32)> = Vec::new();
    for &mp in &a.jpeg_mp {
        for &chroma in &a.chroma {
            let (b, w, h) = upload(&photo, mp, ImageFormat::Jpeg, Some(chroma));
            let layout = if chroma == 420 { "4:2:0" } else { "4:4:4" };
            uploads.push((format!("jpeg {mp} MP {layout}"), b, w, h));
        }
    }
    for &mp in &a.png_mp {
        let (b, w, h) = upload(&photo, mp, ImageFormat::Png, None);
        uploads.push((format!("png {mp} MP"), b, w, h));
    }
    let mut smallest_cached = None;
    for (what, bytes, w, h) in &uploads {
        let name = if what.starts_with("png") {
            "upload.png"
        } else {
            "upload.jpg"
        };
        // Warm-up: lazy state, the label set's prompts, the allocator.
        for _ in 0..2 {
            one(&http, &a, bytes, name, &cached)
                .await
                .unwrap_or_else(|e| fail(e));
        }
        let mut ms = Vec::with_capacity(a.runs);
        for _ in 0..a.runs {
            ms.push(
                one(&http, &a, bytes, name, &cached)
                    .await
                    .unwrap_or_else(|e| fail(e)),
            );
        }
        if smallest_cached.is_none() {
            smallest_cached = Some((bytes.clone(), median(ms.clone())));
        }
        let mut row = summary(ms);
        row["what"] = serde_json::json!(what);
        row["width"] = serde_json::json!(w);
        row["height"] = serde_json::json!(h);
        row["bytes"] = serde_json::json!(bytes.len());
        println!("{row}");
    }
    let Some((small, base)) = smallest_cached else {
        return;
    };
    let mut offset = 0;
    let extra_row = |what: String, ms: Vec<f64>| {
        let extra: Vec<f64> = ms.iter().map(|m| m - base).collect();
        let mut row = summary(ms);
        row["what"] = serde_json::json!(what);
        row["extra_ms_p50"] = serde_json::json!((median(extra) * 10.0).round() / 10.0);
        row["cached_ms_p50"] = serde_json::json!((base * 10.0).round() / 10.0);
        row
    };
    for &n in &a.new_labels {
        let mut ms = Vec::with_capacity(a.runs);
        if offset + n * a.runs > 48 * 48 {
            fail(format!(
                "{n} new labels × {} runs: more than 2304 word pairs",
                a.runs
            ));
        }
        for run in 0..a.runs {
            let labels = fresh_labels(n, run, offset);
            ms.push(
                one(&http, &a, &small, "upload.jpg", &labels)
                    .await
                    .unwrap_or_else(|e| fail(e)),
            );
        }
        offset += n * a.runs;
        println!("{}", extra_row(format!("{n} new labels"), ms));
    }
    // Parts of the cached set: a subset and a reorder.
    for (what, labels) in [
        ("subset of cached labels", CACHED[1..4].join(",")),
        ("cached labels reordered", {
            let mut v = CACHED.to_vec();
            v.reverse();
            v.join(",")
        }),
    ] {
        let mut ms = Vec::with_capacity(a.runs);
        for _ in 0..a.runs {
            ms.push(
                one(&http, &a, &small, "upload.jpg", &labels)
                    .await
                    .unwrap_or_else(|e| fail(e)),
            );
        }
        println!("{}", extra_row(what.to_string(), ms));
    }
}
