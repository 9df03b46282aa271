//! Bulk mode of `glimpse classify`: every file under `--input-dir` into a JSON-lines `--output`.
//!
//! - Deterministic: files are sorted by relative path, so `--shard I/N` (index ≡ I mod N) splits the
//!   same list the same way on every machine.
//! - Resumable: files already in the output (answers and error lines alike) are skipped; a torn last
//!   line from a crash is cut off and redone. Each line goes out in one write, so a kill loses at
//!   most the line in progress.
//! - Decoding and preprocessing run on a small pool, a couple of batches ahead of the model.
//!
//! Exit status: 0 when every file of the shard has an answer, 1 when any has an error line (this run
//! or an earlier one), other errors (bad options, model failure, I/O on the output) also 1 with a
//! message and no line for the batch in flight.

mod progress;
mod results;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use anyhow::Context;
use glimpse_core::backend::PixelBatch;
use rayon::prelude::*;

use progress::Progress;
pub(crate) use results::AnswerLine;
use results::{ErrorBody, ErrorLine, Results};

use crate::cli::ClassifyArgs;
use crate::session::{prepare, Session};

#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error("bad --shard '{0}': expected I/N with 0 <= I < N, e.g. --shard 0/4")]
    BadShard(String),
    #[error("--shards / GLIMPSE_SHARDS must be at least 1")]
    ZeroShards,
    #[error("bad JOB_COMPLETION_INDEX '{value}': expected a whole number below --shards / GLIMPSE_SHARDS ({count})")]
    BadJobIndex { value: String, count: usize },
    #[error("--shards {0} needs JOB_COMPLETION_INDEX (a Kubernetes Indexed Job sets it); elsewhere use --shard I/N")]
    NoJobIndex(usize),
    #[error("--batch and --decode-threads must be at least 1")]
    ZeroSize,
    #[error("--input-dir needs --output FILE")]
    NoOutput,
    #[error("--input-dir {0}: not a directory")]
    NotADirectory(PathBuf),
    #[error("--output {0} is inside --input-dir: put it elsewhere (it would be classified itself, and shards would read each other's results)")]
    OutputInsideInput(PathBuf),
    #[error("{path}: line {line} is not a glimpse results line ({why}); refusing to append to it")]
    NotResults {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("{what} {path}: {err}")]
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BulkError + 'a {
    move |err| BulkError::Io {
        what,
        path: path.to_path_buf(),
        err,
    }
}

/// This process's part of the file list: files whose sorted index ≡ `index` (mod `count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

/// `--shard I/N` wins; otherwise `--shards N` with the index from `JOB_COMPLETION_INDEX`.
/// `JOB_COMPLETION_INDEX` alone means nothing (the caller warns): the count must be given.
pub fn resolve_shard(
    shard: Option<&str>,
    shards: Option<usize>,
    job_index: Option<&str>,
) -> Result<Option<Shard>, BulkError> {
    if let Some(spec) = shard {
        let bad = || BulkError::BadShard(spec.to_string());
        let (i, n) = spec.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        return Ok(Some(Shard { index, count }));
    }
    match (shards, job_index) {
        (None, _) => Ok(None),
        (Some(0), _) => Err(BulkError::ZeroShards),
        (Some(count), None) => Err(BulkError::NoJobIndex(count)),
        (Some(count), Some(value)) => match value.trim().parse::<usize>() {
            Ok(index) if index < count => Ok(Some(Shard { index, count })),
            _ => Err(BulkError::BadJobIndex {
                value: value.to_string(),
                count,
            }),
        },
    }
}

/// Bulk options, checked before the model loads.
#[derive(Debug)]
pub struct Plan {
    pub input_dir: PathBuf,
    pub output: PathBuf,
    pub shard: Option<Shard>,
    pub batch: usize,
    pub decode_threads: usize,
    pub progress_every: usize,
}

impl Plan {
    pub fn from_args(args: &ClassifyArgs, input_dir: PathBuf) -> Result<Plan, BulkError> {
        let job_index = std::env::var("JOB_COMPLETION_INDEX").ok();
        let shard = resolve_shard(args.shard.as_deref(), args.shards, job_index.as_deref())?;
        if shard.is_none() && job_index.is_some() {
            eprintln!("glimpse: JOB_COMPLETION_INDEX is set but --shards / GLIMPSE_SHARDS is not: classifying every file");
        }
        let decode_threads = args
            .decode_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get().min(4)));
        if args.batch == 0 || decode_threads == 0 {
            return Err(BulkError::ZeroSize);
        }
        if !input_dir.is_dir() {
            return Err(BulkError::NotADirectory(input_dir));
        }
        let output = args.output.clone().ok_or(BulkError::NoOutput)?;
        let real_in = input_dir
            .canonicalize()
            .map_err(io_err("cannot read", &input_dir))?;
        let parent = output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // Check before creating anything, so a refused output leaves no folder in the input.
        if real_path(parent).starts_with(&real_in) {
            return Err(BulkError::OutputInsideInput(output));
        }
        // A Job's /out volume exists; a local `out/` often does not.
        std::fs::create_dir_all(parent).map_err(io_err("cannot create the folder of", &output))?;
        Ok(Plan {
            input_dir,
            output,
            shard,
            batch: args.batch,
            decode_threads,
            progress_every: args.progress_every,
        })
    }
}

/// `path` with symlinks resolved as far as it exists; the missing tail is appended as written.
fn real_path(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = abs.as_path();
    let mut tail = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            // The missing part cannot hold symlinks, so `..` there is plain lexical.
            return tail.iter().rev().fold(real, |mut p, c| {
                if c == ".." {
                    p.pop();
                } else if c != "." {
                    p.push(c);
                }
                p
            });
        }
        match (existing.parent(), existing.file_name()) {
            (Some(up), Some(name)) => {
                tail.push(name.to_os_string());
                existing = up;
            }
            _ => return abs,
        }
    }
}

/// Every file under `root` (symlinks to files included, symlinked folders not followed, so no
/// loops), as (relative path with `/` separators, full path), sorted by relative path. An
/// unreadable folder fails the run: skipping it would shift every later shard index.
pub fn list_files(root: &Path) -> Result<Vec<(String, PathBuf)>, BulkError> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io_err("cannot list", &dir))? {
            let entry = entry.map_err(io_err("cannot list", &dir))?;
            let path = entry.path();
            let ty = entry.file_type().map_err(io_err("cannot stat", &path))?;
            let is_file =
                ty.is_file() || (ty.is_symlink() && path.metadata().is_ok_and(|m| m.is_file()));
            if ty.is_dir() {
                stack.push(path);
            } else if is_file {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                let rel: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push((rel.join("/"), path));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// One file, decoded and preprocessed (or why not), with the time that took.
struct Prepared {
    rel: String,
    input: Result<Vec<f32>, String>,
    ms: f64,
}

pub fn run(plan: Plan, session: &Session) -> anyhow::Result<ExitCode> {
    let all = list_files(&plan.input_dir)?;
    let found = all.len();
    let mine: Vec<(String, PathBuf)> = all
        .into_iter()
        .enumerate()
        .filter(|(i, _)| plan.shard.is_none_or(|s| i % s.count == s.index))
        .map(|(_, f)| f)
        .collect();
    let mut results = Results::open(&plan.output)?;
    if results.torn_bytes > 0 {
        eprintln!(
            "glimpse: {}: dropped a torn last line ({} bytes) from an interrupted run",
            plan.output.display(),
            results.torn_bytes
        );
    }
    let total = mine.len();
    let earlier_failures = mine
        .iter()
        .filter(|(rel, _)| results.failed.contains(rel))
        .count();
    let todo: Vec<(String, PathBuf)> = mine
        .into_iter()
        .filter(|(rel, _)| !results.done.contains(rel))
        .collect();
    let shard = plan.shard.map_or(String::new(), |s| {
        format!(" (shard {}/{} of {found})", s.index, s.count)
    });
    eprintln!(
        "glimpse: {total} files{shard}, {} already in {}, {} to classify",
        total - todo.len(),
        plan.output.display(),
        todo.len()
    );
    let mut progress = Progress::new(total, total - todo.len(), plan.progress_every);
    let stop = stop_on_ctrl_c();
    let failures = pipeline(&todo, &plan, session, &mut results, &mut progress, &stop);
    progress.finish();
    let failures = failures?;
    if stop.load(Ordering::SeqCst) {
        eprintln!(
            "glimpse: interrupted: {} of {total} files are in {}; rerun the same command to \
             resume where it stopped",
            progress.done(),
            plan.output.display()
        );
        return Ok(ExitCode::from(130));
    }
    eprintln!(
        "glimpse: done: {} classified, {failures} failed in this run, {earlier_failures} failed earlier; results in {}",
        todo.len() - failures,
        plan.output.display()
    );
    Ok(if failures + earlier_failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Decode on the pool (a bounded channel keeps it at most two batches ahead), run the model here,
/// write lines in file order. Returns the number of error lines written.
/// Set on the first Ctrl-C (SIGINT) or SIGTERM: the run stops after the batch in hand, with every
/// answered file written, and says how to resume. A second Ctrl-C quits at once.
fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            glimpse_server::shutdown_signal().await;
            flag.store(true, Ordering::SeqCst);
            eprintln!("\nglimpse: stopping after this batch (Ctrl-C again to quit at once)");
            glimpse_server::shutdown_signal().await;
            std::process::exit(130);
        });
    });
    stop
}

fn pipeline(
    todo: &[(String, PathBuf)],
    plan: &Plan,
    session: &Session,
    results: &mut Results,
    progress: &mut Progress,
    stop: &AtomicBool,
) -> anyhow::Result<usize> {
    let cfg = session.preprocess_config().clone();
    let limits = session.limits;
    let mode = session.mode;
    let (h, w) = cfg.output_size();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(plan.decode_threads)
        .thread_name(|i| format!("glimpse-decode-{i}"))
        .build()?;
    let (tx, rx) = mpsc::sync_channel::<Vec<Prepared>>(2);
    std::thread::scope(|s| {
        s.spawn(move || {
            for chunk in todo.chunks(plan.batch) {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let batch: Vec<Prepared> = pool.install(|| {
                    chunk
                        .par_iter()
                        .map(|(rel, path)| {
                            let t = Instant::now();
                            let input =
                                prepare(path, &cfg, &limits, mode).map_err(|e| format!("{e:#}"));
                            Prepared {
                                rel: rel.clone(),
                                input,
                                ms: t.elapsed().as_secs_f64() * 1000.0,
                            }
                        })
                        .collect()
                });
                // A send fails only when the model side stopped on an error: stop too.
                if tx.send(batch).is_err() {
                    break;
                }
            }
        });
        // Leaving this closure early (an error) drops `rx`, which stops the feeder above.
        let mut failures = 0;
        for batch in rx {
            failures += answer_batch(batch, session, (h, w), results, progress)?;
        }
        Ok(failures)
    })
}

fn answer_batch(
    mut batch: Vec<Prepared>,
    session: &Session,
    (h, w): (usize, usize),
    results: &mut Results,
    progress: &mut Progress,
) -> anyhow::Result<usize> {
    let inputs: Vec<Vec<f32>> = batch
        .iter_mut()
        .filter_map(|p| p.input.as_mut().ok().map(std::mem::take))
        .collect();
    let (answers, forward_ms) = if inputs.is_empty() {
        (Vec::new(), 0.0)
    } else {
        let t = Instant::now();
        let answers = session.classify(&PixelBatch::stack(&inputs, h, w))?;
        (
            answers,
            t.elapsed().as_secs_f64() * 1000.0 / inputs.len() as f64,
        )
    };
    let mut answers = answers.into_iter();
    let mut failures = 0;
    for p in &batch {
        match &p.input {
            Ok(_) => {
                let mut answer = answers.next().context("model gave too few answers")?;
                // This image's own decode time plus its share of the batch's forward pass.
                answer.set_timing_ms(p.ms + forward_ms);
                results.write_line(&AnswerLine {
                    file: &p.rel,
                    answer: &answer,
                })?;
            }
            Err(message) => {
                failures += 1;
                let error = ErrorBody {
                    message,
                    code: "VALIDATION_ERROR",
                };
                results.write_line(&ErrorLine {
                    file: &p.rel,
                    error,
                })?;
            }
        }
        progress.inc();
    }
    Ok(failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_specs() {
        let s = |i, n| Ok(Some(Shard { index: i, count: n }));
        assert_eq!(
            resolve_shard(Some("0/2"), None, None).map_err(|e| e.to_string()),
            s(0, 2)
        );
        assert_eq!(
            resolve_shard(Some(" 3 / 4 "), Some(9), Some("1")).map_err(|e| e.to_string()),
            s(3, 4)
        );
        for bad in ["2/2", "0/0", "1", "a/2", "-1/2", "1/2/3", ""] {
            let e = resolve_shard(Some(bad), None, None)
                .unwrap_err()
                .to_string();
            assert!(e.contains("--shard") && e.contains(bad), "{bad}: {e}");
        }
        assert_eq!(
            resolve_shard(None, Some(4), Some("3")).map_err(|e| e.to_string()),
            s(3, 4)
        );
        assert!(matches!(
            resolve_shard(None, Some(4), Some("4")),
            Err(BulkError::BadJobIndex { .. })
        ));
        assert!(matches!(
            resolve_shard(None, Some(4), Some("x")),
            Err(BulkError::BadJobIndex { .. })
        ));
        assert!(matches!(
            resolve_shard(None, Some(4), None),
            Err(BulkError::NoJobIndex(4))
        ));
        assert!(matches!(
            resolve_shard(None, Some(0), Some("0")),
            Err(BulkError::ZeroShards)
        ));
        assert_eq!(resolve_shard(None, None, Some("2")).unwrap(), None);
    }

    #[test]
    fn listing_is_recursive_sorted_and_relative() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("b/c")).unwrap();
        std::fs::create_dir_all(d.path().join("empty")).unwrap();
        for f in ["z.jpg", "b/c/x.png", "b/a.png", "a.jpg"] {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        let names: Vec<String> = list_files(d.path())
            .unwrap()
            .into_iter()
            .map(|f| f.0)
            .collect();
        assert_eq!(names, ["a.jpg", "b/a.png", "b/c/x.png", "z.jpg"]);
    }
}
