//! `glimpse bench`: the real model path (preprocessed tensor → scores) on random weights at real
//! dimensions (seeded, so every run and precision gets the same model). Speed does not depend on
//! weight values. Human-readable lines go to stderr; the last line on stdout is the JSON the
//! contract names.

use std::process::ExitCode;
use std::time::Instant;

use glimpse_candle::{
    random_clip_with, random_siglip_with, random_vit_with, ClipPreset, LoadOptions, Precision,
    SiglipPreset, VitPreset,
};
use glimpse_core::backend::PixelBatch;
use glimpse_core::{ImageClassifier, ZeroShotModel};

use crate::cli::BenchArgs;

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.batch == 0 || args.iters == 0 {
        anyhow::bail!("--batch and --iters must be at least 1");
    }
    let precision: Precision = args.precision.parse()?;
    eprintln!("kernel: {}", glimpse_candle::kernel_for(precision).0);
    let opts = LoadOptions {
        precision,
        threads: args.threads,
    };
    if let Some(n) = args.texts {
        return text_tower(&args, n, &opts);
    }
    type Runner = Box<dyn Fn(&PixelBatch) -> anyhow::Result<()>>;
    let (runner, (h, w)): (Runner, (usize, usize)) = match args.arch.as_str() {
        "vit-b16" | "deit-b16" | "deit-s16" => {
            let m = random_vit_with(args.arch.parse::<VitPreset>()?, &opts)?;
            let size = m.preprocess_config().output_size();
            (
                Box::new(move |px| m.classify(px).map(|_| ()).map_err(Into::into)),
                size,
            )
        }
        "siglip-b16" | "siglip2-b16" => {
            let m = random_siglip_with(args.arch.parse::<SiglipPreset>()?, &opts)?;
            let size = m.preprocess_config().output_size();
            (
                Box::new(move |px| m.embed_images(px).map(|_| ()).map_err(Into::into)),
                size,
            )
        }
        arch => {
            let preset: ClipPreset = arch.parse()?;
            let m = random_clip_with(preset, &opts)?;
            let size = m.preprocess_config().output_size();
            (
                Box::new(move |px| m.embed_images(px).map(|_| ()).map_err(Into::into)),
                size,
            )
        }
    };
    let data: Vec<f32> = (0..args.batch * 3 * h * w)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let px = PixelBatch {
        data,
        batch: args.batch,
        height: h,
        width: w,
    };
    let (p50, p10, p90) = percentiles(timed_runs(&args, || runner(&px))?);
    let out = serde_json::json!({
        "arch": args.arch,
        "batch": args.batch,
        "threads": threads(&args),
        "precision": args.precision,
        "ms_p50": round2(p50),
        "ms_p10": round2(p10),
        "ms_p90": round2(p90),
        "img_per_s": round2(args.batch as f64 * 1000.0 / p50),
    });
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// Prompt length of `--texts`: start token, "a photo of a red bicycle." (7 tokens), end token.
const PROMPT_TOKENS: usize = 9;

/// `--texts N`: the CLIP text tower on N distinct 9-token prompts in one pass (what a request
/// with N labels the prompt cache has never seen costs, less tokenizing).
fn text_tower(args: &BenchArgs, n: usize, opts: &LoadOptions) -> anyhow::Result<ExitCode> {
    if n == 0 {
        anyhow::bail!("--texts must be at least 1");
    }
    let preset: ClipPreset = args
        .arch
        .parse()
        .map_err(|_| anyhow::anyhow!("--texts times a CLIP text tower: pick a clip-* --arch"))?;
    let m = random_clip_with(preset, opts)?;
    // CLIP's start and end tokens (the end token is the largest id, where CLIP pools), and
    // distinct word ids between them.
    let (start, end) = (49_406u32, 49_407u32);
    let ids: Vec<Vec<u32>> = (0..n)
        .map(|i| {
            let mut row = vec![start];
            row.extend((0..PROMPT_TOKENS as u32 - 2).map(|t| 1000 + ((i as u32 * 7 + t) % 40_000)));
            row.push(end);
            row
        })
        .collect();
    let (p50, p10, p90) = percentiles(timed_runs(args, || {
        m.embed_token_ids(&ids)?;
        Ok(())
    })?);
    let out = serde_json::json!({
        "arch": args.arch,
        "texts": n,
        "tokens": PROMPT_TOKENS,
        "threads": threads(args),
        "precision": args.precision,
        "ms_p50": round2(p50),
        "ms_p10": round2(p10),
        "ms_p90": round2(p90),
        "texts_per_s": round2(n as f64 * 1000.0 / p50),
    });
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// `args.warmup` untimed calls of `run`, then `args.iters` timed ones (ms each, printed to stderr).
fn timed_runs(args: &BenchArgs, run: impl Fn() -> anyhow::Result<()>) -> anyhow::Result<Vec<f64>> {
    for _ in 0..args.warmup {
        run()?;
    }
    let mut ms = Vec::with_capacity(args.iters);
    for i in 0..args.iters {
        let t = Instant::now();
        run()?;
        let elapsed = t.elapsed().as_secs_f64() * 1000.0;
        eprintln!("run {}/{}: {elapsed:.1} ms", i + 1, args.iters);
        ms.push(elapsed);
    }
    Ok(ms)
}

fn threads(args: &BenchArgs) -> usize {
    args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// (p50, p10, p90) of the timings.
fn percentiles(mut ms: Vec<f64>) -> (f64, f64, f64) {
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (pick(0.5), pick(0.1), pick(0.9))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
