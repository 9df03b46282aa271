//! `glimpse classify --input-dir`: bulk answers equal the single-image `--json` answers, resume after
//! a torn output, shards partition the files, bad files give error lines, Indexed-Job sharding.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{fixtures, glimpse};

/// Relative name → fixture image. Nested folders and a batch size that does not divide the count,
/// so batches mix folders and the last batch is short.
const IMAGES: &[(&str, &str)] = &[
    ("a/chelsea.jpg", "chelsea.jpg"),
    ("a/deeper/coffee.webp", "coffee.webp"),
    ("astronaut.png", "astronaut.png"),
    ("b/grace_hopper.jpg", "grace_hopper.jpg"),
    ("b/page.jpg", "page.jpg"),
    ("motorcycle.jpg", "motorcycle.jpg"),
    ("tall.png", "tall.png"),
];

fn input_dir(extra: &[(&str, &[u8])]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (rel, fixture) in IMAGES {
        let p = d.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::copy(fixtures().join("images").join(fixture), &p).unwrap();
    }
    for (rel, bytes) in extra {
        std::fs::write(d.path().join(rel), bytes).unwrap();
    }
    d
}

fn model_args(kind: &str) -> Vec<String> {
    let model = fixtures().join("models").join(format!("{kind}-tiny"));
    let mut a = vec![
        "classify".into(),
        kind.into(),
        "--model".into(),
        model.display().to_string(),
    ];
    if kind == "clip" {
        a.extend(["--labels".into(), "car,cat,person,document".into()]);
    }
    a
}

fn bulk(kind: &str, input: &Path, output: &Path, extra: &[&str]) -> Output {
    glimpse()
        .args(model_args(kind))
        .arg("--input-dir")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(["--batch", "3"])
        .args(extra)
        .output()
        .unwrap()
}

fn read_lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn by_file(lines: &[Value]) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    for l in lines {
        let f = l["file"].as_str().unwrap().to_string();
        assert!(
            m.insert(f.clone(), l.clone()).is_none(),
            "{f} appears twice"
        );
    }
    m
}

fn names(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["file"].as_str().unwrap().to_string())
        .collect()
}

/// Same answer up to timing: every field equal, scores within 1e-6.
fn assert_same_answer(got: &Value, want: &Value, what: &str) {
    let strip = |v: &Value| {
        let mut v = v.clone();
        let o = v.as_object_mut().unwrap();
        o.remove("timingMs");
        o.remove("file");
        v
    };
    let (g, w) = (strip(got), strip(want));
    assert_eq!(
        g.as_object().unwrap().keys().collect::<Vec<_>>(),
        w.as_object().unwrap().keys().collect::<Vec<_>>(),
        "{what}"
    );
    for key in ["result", "model", "modelId"] {
        assert_eq!(g[key], w[key], "{what}: {key}");
    }
    // A batched pass may round its last bits differently from a pass of one (by up to ~1e-6
    // on CPUs without AVX-512, where gemm splits the work by batch size): 1e-5, well inside the
    // 1e-4 bound to transformers.
    assert!(
        (g["confidence"].as_f64().unwrap() - w["confidence"].as_f64().unwrap()).abs() < 1e-5,
        "{what}"
    );
    for list in ["predictions", "imagenet"] {
        let (gl, wl) = (g[list].as_array(), w[list].as_array());
        assert_eq!(gl.map(Vec::len), wl.map(Vec::len), "{what}: {list}");
        for (a, b) in gl.into_iter().flatten().zip(wl.into_iter().flatten()) {
            assert_eq!(a["label"], b["label"], "{what}: {list}");
            let d = (a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs();
            assert!(d < 1e-5, "{what}: {list} {}: Δ {d}", a["label"]);
        }
    }
    assert!(got["timingMs"].as_f64().unwrap() > 0.0, "{what}: timingMs");
}

fn expected_order() -> Vec<String> {
    let mut v: Vec<String> = IMAGES.iter().map(|(r, _)| r.to_string()).collect();
    v.sort();
    v
}

fn check_equals_single(kind: &str) {
    let input = input_dir(&[]);
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("results.jsonl");
    let run = bulk(kind, input.path(), &out, &[]);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines = read_lines(&out);
    assert_eq!(names(&lines), expected_order(), "sorted by relative path");

    let single = glimpse()
        .args(model_args(kind))
        .arg("--json")
        .args(expected_order().iter().map(|r| input.path().join(r)))
        .output()
        .unwrap();
    assert!(
        single.status.success(),
        "{}",
        String::from_utf8_lossy(&single.stderr)
    );
    let single: Vec<Value> = String::from_utf8(single.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(single.len(), lines.len());
    for (b, s) in lines.iter().zip(&single) {
        assert_same_answer(b, s, &format!("{kind} {}", b["file"]));
    }
}

#[test]
fn clip_bulk_lines_equal_single_json_answers() {
    check_equals_single("clip");
}

#[test]
fn vit_bulk_lines_equal_single_json_answers() {
    check_equals_single("vit");
}

#[test]
fn resume_after_a_torn_output_skips_done_files_and_adds_no_duplicates() {
    let input = input_dir(&[]);
    let out_dir = tempfile::tempdir().unwrap();
    let full = out_dir.path().join("full.jsonl");
    assert!(bulk("vit", input.path(), &full, &[]).status.success());
    let full_text = std::fs::read_to_string(&full).unwrap();

    // A crash after two whole lines and half of the third.
    let cut: Vec<&str> = full_text.split_inclusive('\n').collect();
    let torn = format!("{}{}{}", cut[0], cut[1], &cut[2][..cut[2].len() / 2]);
    let out = out_dir.path().join("resumed.jsonl");
    std::fs::write(&out, &torn).unwrap();
    let run = bulk("vit", input.path(), &out, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("2 already in"), "{stderr}");
    assert!(stderr.contains("torn last line"), "{stderr}");

    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.starts_with(&format!("{}{}", cut[0], cut[1])),
        "whole lines kept as they were"
    );
    let lines = read_lines(&out);
    assert_eq!(names(&lines), expected_order(), "each file once, in order");
    let want = by_file(&read_lines(&full));
    for l in &lines {
        assert_same_answer(l, &want[l["file"].as_str().unwrap()], "resumed");
    }

    // A third run finds everything done and leaves the file alone.
    let again = bulk("vit", input.path(), &out, &[]);
    assert!(again.status.success());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
}

#[test]
fn two_shards_cover_every_file_exactly_once() {
    let input = input_dir(&[]);
    let out_dir = tempfile::tempdir().unwrap();
    let mut seen: Vec<String> = Vec::new();
    let mut per_shard = Vec::new();
    for i in 0..2 {
        let out = out_dir.path().join(format!("r{i}.jsonl"));
        let run = bulk("vit", input.path(), &out, &["--shard", &format!("{i}/2")]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let n = names(&read_lines(&out));
        per_shard.push(n.len());
        seen.extend(n);
    }
    let all = expected_order();
    // Index ≡ I (mod 2) over the sorted list: shard 0 gets 4 of 7, shard 1 gets 3.
    assert_eq!(per_shard, [4, 3]);
    assert_eq!(seen.len(), all.len(), "no file twice");
    assert_eq!(
        seen.iter().cloned().collect::<BTreeSet<_>>(),
        all.iter().cloned().collect(),
        "every file"
    );
    let shard0: Vec<String> = all.iter().step_by(2).cloned().collect();
    assert_eq!(seen[..4], shard0[..]);
}

#[test]
fn unreadable_or_non_image_files_give_error_lines_and_exit_1() {
    let jpeg = std::fs::read(fixtures().join("images/chelsea.jpg")).unwrap();
    let input = input_dir(&[("notes.txt", b"hello"), ("broken.jpg", &jpeg[..200])]);
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("r.jsonl");
    let run = bulk("clip", input.path(), &out, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines = by_file(&read_lines(&out));
    assert_eq!(
        lines.len(),
        IMAGES.len() + 2,
        "the run went on past the bad files"
    );
    for bad in ["notes.txt", "broken.jpg"] {
        let l = &lines[bad];
        assert_eq!(l.as_object().unwrap().len(), 2, "{l}");
        assert_eq!(l["error"]["code"], "VALIDATION_ERROR", "{l}");
        assert!(!l["error"]["message"].as_str().unwrap().is_empty(), "{l}");
    }
    for (rel, _) in IMAGES {
        assert!(
            lines[*rel].get("error").is_none() && lines[*rel]["model"] == "clip",
            "{rel}"
        );
    }
    // A rerun retries nothing and still reports the failures.
    let again = bulk("clip", input.path(), &out, &[]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(read_lines(&out).len(), IMAGES.len() + 2);
}

#[test]
fn job_completion_index_picks_the_shard() {
    let input = input_dir(&[]);
    let out_dir = tempfile::tempdir().unwrap();
    let explicit = out_dir.path().join("explicit.jsonl");
    assert!(bulk("vit", input.path(), &explicit, &["--shard", "1/3"])
        .status
        .success());
    let want = names(&read_lines(&explicit));
    assert_eq!(want, ["a/deeper/coffee.webp", "b/page.jpg"]);

    let flag = out_dir.path().join("flag.jsonl");
    let run = glimpse()
        .args(model_args("vit"))
        .arg("--input-dir")
        .arg(input.path())
        .arg("--output")
        .arg(&flag)
        .args(["--shards", "3"])
        .env("JOB_COMPLETION_INDEX", "1")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(names(&read_lines(&flag)), want);

    let var = out_dir.path().join("var.jsonl");
    let run = glimpse()
        .args(model_args("vit"))
        .arg("--input-dir")
        .arg(input.path())
        .arg("--output")
        .arg(&var)
        .env("GLIMPSE_SHARDS", "3")
        .env("JOB_COMPLETION_INDEX", "1")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(names(&read_lines(&var)), want);
}

#[test]
fn bad_shard_specs_fail_clearly_before_any_work() {
    let input = input_dir(&[]);
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("r.jsonl");
    for (args, env, needle) in [
        (vec!["--shard", "2/2"], None, "--shard '2/2'"),
        (vec!["--shard", "x"], None, "--shard 'x'"),
        (vec!["--shards", "4"], None, "JOB_COMPLETION_INDEX"),
        (vec!["--shards", "4"], Some("4"), "JOB_COMPLETION_INDEX '4'"),
        (vec!["--shards", "0"], Some("0"), "at least 1"),
    ] {
        let mut c = glimpse();
        c.args(model_args("vit"))
            .arg("--input-dir")
            .arg(input.path())
            .arg("--output")
            .arg(&out)
            .args(&args);
        if let Some(i) = env {
            c.env("JOB_COMPLETION_INDEX", i);
        }
        let run = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{args:?}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(
            !out.exists(),
            "{args:?}: no output before the options are good"
        );
    }
    // The output may not live in the folder being classified.
    for inside in ["r.jsonl", "new/r.jsonl", "a/../out/r.jsonl"] {
        let run = bulk("vit", input.path(), &input.path().join(inside), &[]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            !run.status.success() && stderr.contains("inside --input-dir"),
            "{inside}: {stderr}"
        );
    }
    assert!(
        !input.path().join("new").exists() && !input.path().join("out").exists(),
        "no folder made"
    );
}

/// Ctrl-C (SIGINT) in bulk mode stops after the batch in hand with every answered file written,
/// exits 130 and says how to resume; the rerun finishes the folder with each file once.
#[test]
fn ctrl_c_stops_cleanly_and_says_how_to_resume() {
    let input = tempfile::tempdir().unwrap();
    let png = std::fs::read(fixtures().join("images/astronaut.png")).unwrap();
    for i in 0..400 {
        std::fs::write(input.path().join(format!("{i:03}.png")), &png).unwrap();
    }
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("results.jsonl");
    let child = glimpse()
        .args(model_args("vit"))
        .arg("--input-dir")
        .arg(input.path())
        .arg("--output")
        .arg(&output)
        .args(["--batch", "1", "--decode-threads", "1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_to_string(&output).map_or(0, |s| s.lines().count()) < 5 {
        assert!(std::time::Instant::now() < deadline, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("rerun the same command to resume"), "{err}");
    let done = read_lines(&output).len();
    assert!((5..400).contains(&done), "{done} lines after the interrupt");
    let again = glimpse()
        .args(model_args("vit"))
        .arg("--input-dir")
        .arg(input.path())
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let lines = read_lines(&output);
    assert_eq!(lines.len(), 400);
    assert_eq!(
        names(&lines).into_iter().collect::<BTreeSet<_>>().len(),
        400
    );
}

/// `glimpse bench --help` describes every option.
#[test]
fn bench_help_describes_every_option() {
    let out = glimpse().args(["bench", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--arch",
        "--batch",
        "--threads",
        "--precision",
        "--iters",
        "--warmup",
        "--texts",
    ] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} missing: {help}"));
        let text = line.split_once('>').map_or("", |(_, t)| t).trim();
        assert!(text.len() > 10, "{flag} has no description: {line:?}");
    }
}
