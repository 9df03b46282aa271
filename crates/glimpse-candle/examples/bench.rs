//! `cargo run --release -p glimpse-candle --example bench -- ARCH BATCH THREADS PRECISION [ITERS]`:
//! the same measurement as `glimpse bench` without building the whole server binary.

use std::time::Instant;

use glimpse_candle::{random_clip, random_vit, ClipPreset, LoadOptions, Precision, VitPreset};
use glimpse_core::backend::{ImageClassifier, PixelBatch, ZeroShotModel};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arch = a.first().map_or("clip-b32", |s| s.as_str()).to_string();
    let batch: usize = a.get(1).map_or(1, |s| s.parse().unwrap());
    let threads: usize = a.get(2).map_or(2, |s| s.parse().unwrap());
    let precision: Precision = a.get(3).map_or("f32", |s| s.as_str()).parse().unwrap();
    let iters: usize = a.get(4).map_or(11, |s| s.parse().unwrap());
    let opts = LoadOptions {
        precision,
        threads: Some(threads),
    };
    type Runner = Box<dyn Fn(&PixelBatch)>;
    let runner: Runner = if arch == "vit-b16" {
        let m = glimpse_candle::random_vit_with(VitPreset::B16, &opts).unwrap();
        Box::new(move |px| drop(m.classify(px).unwrap()))
    } else {
        let m =
            glimpse_candle::random_clip_with(arch.parse::<ClipPreset>().unwrap(), &opts).unwrap();
        Box::new(move |px| drop(m.embed_images(px).unwrap()))
    };
    let _ = (random_clip, random_vit);
    let (h, w) = (224, 224);
    let data: Vec<f32> = (0..batch * 3 * h * w)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let px = PixelBatch {
        data,
        batch,
        height: h,
        width: w,
    };
    for _ in 0..2 {
        runner(&px);
    }
    let cpu0 = cpu_ms();
    let mut ms: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            runner(&px);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    // CPU time per forward pass (all threads): unlike wall time, barely moved by other load.
    let cpu = (cpu_ms() - cpu0) / iters as f64;
    ms.sort_by(f64::total_cmp);
    let p50 = ms[ms.len() / 2];
    println!(
        "{arch} b{batch} t{threads} {}: p50 {p50:.1} ms (p10 {:.1}, p90 {:.1}), {:.2} img/s, \
         cpu {cpu:.0} ms/iter",
        precision.as_str(),
        ms[(ms.len() - 1) / 10],
        ms[(ms.len() - 1) * 9 / 10],
        batch as f64 * 1000.0 / p50
    );
}

/// utime + stime of this process from /proc/self/stat, in ms (0 where there is no procfs).
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14 and 15 (utime, stime) are 11 and 12 after the ")"; ticks of 10 ms.
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) * 10.0
}
