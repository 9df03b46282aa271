//! `glimpse classify clip|vit IMAGE...`: the server's pipeline, locally. `--json` prints exactly what
//! the API would answer, one line per image. `--input-dir` hands over to bulk mode (`bulk.rs`).

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use glimpse_core::backend::PixelBatch;
use glimpse_core::response::ClassificationResponse;

use crate::bulk;
use crate::cli::ClassifyArgs;
use crate::session::{prepare, Session};

pub fn run(args: ClassifyArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = args.input_dir.clone() {
        // Check the bulk options before the (slow) model load, so a typo fails at once.
        let plan = bulk::Plan::from_args(&args, dir)?;
        let session = Session::load(&args)?;
        return bulk::run(plan, &session);
    }
    let session = Session::load(&args)?;
    let mut failures = 0;
    for path in &args.images {
        match classify_one(path, &session) {
            Ok(resp) => print(&resp, path, args.json)?,
            Err(e) => {
                failures += 1;
                eprintln!("glimpse: {}: {e:#}", path.display());
            }
        }
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn classify_one(path: &Path, session: &Session) -> anyhow::Result<ClassificationResponse> {
    let started = Instant::now();
    let cfg = session.preprocess_config();
    let (h, w) = cfg.output_size();
    let pixels = PixelBatch::single(prepare(path, cfg, &session.limits, session.mode)?, h, w);
    let mut resp = session
        .classify(&pixels)?
        .pop()
        .context("model returned no answer")?;
    resp.set_timing_ms(started.elapsed().as_secs_f64() * 1000.0);
    Ok(resp)
}

fn print(resp: &ClassificationResponse, path: &Path, json: bool) -> anyhow::Result<()> {
    if json {
        let line = bulk::AnswerLine {
            file: &path.to_string_lossy(),
            answer: resp,
        };
        println!("{}", serde_json::to_string(&line)?);
    } else {
        let top: Vec<String> = resp
            .predictions
            .iter()
            .take(3)
            .map(|p| format!("{} {:.3}", p.label, p.score))
            .collect();
        println!(
            "{}\t{}\t{:.3}\t[{}]",
            path.display(),
            resp.result,
            resp.confidence,
            top.join(", ")
        );
    }
    Ok(())
}
