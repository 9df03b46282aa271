//! `glimpse serve` with a model folder it cannot serve stops at start-up with an error naming the
//! folder, the field and what is supported: exit status 1, never a panic (101), never a server
//! that answers wrong numbers.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{fixtures, free_port, glimpse};

/// A copy of fixture model `name` without the files in `skip`, with `edit` applied to its
/// config.json.
fn copy_model(name: &str, skip: &[&str], edit: impl FnOnce(&mut Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join("models").join(name)).unwrap() {
        let entry = entry.unwrap();
        let file = entry.file_name().into_string().unwrap();
        if !skip.contains(&file.as_str()) {
            std::fs::copy(entry.path(), dir.path().join(&file)).unwrap();
        }
    }
    let path = dir.path().join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, serde_json::to_string(&cfg).unwrap()).unwrap();
    dir
}

/// `glimpse serve` with these models; it must exit within 60 s (a server that starts serving
/// instead is killed and the test fails).
fn serve(clip: &Path, vit: &Path) -> (Output, String) {
    let db = tempfile::tempdir().unwrap();
    let mut child = glimpse()
        .arg("serve")
        .env("GLIMPSE_BIND", format!("127.0.0.1:{}", free_port()))
        .env(
            "GLIMPSE_DATABASE_URL",
            format!("sqlite://{}", db.path().join("g.db").display()),
        )
        .env("GLIMPSE_CLIP_MODEL", clip)
        .env("GLIMPSE_VIT_MODEL", vit)
        .env_remove("GLIMPSE_CLIP_MODELS")
        .env_remove("GLIMPSE_VIT_MODELS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run glimpse serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "glimpse serve did not stop at start-up: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

/// Exit status 1 (an error, not a panic) and every piece of `want` in the message.
fn assert_refused(out: &Output, stderr: &str, want: &[&str]) {
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for w in want {
        assert!(stderr.contains(w), "missing {w:?} in: {stderr}");
    }
}

fn clip_tiny() -> std::path::PathBuf {
    fixtures().join("models/clip-tiny")
}

#[test]
fn unknown_model_type_names_folder_field_and_supported_types() {
    let dir = copy_model("vit-tiny", &[], |c| c["model_type"] = "convnext".into());
    let (out, err) = serve(&clip_tiny(), dir.path());
    let folder = dir.path().display().to_string();
    assert_refused(
        &out,
        &err,
        &[
            &folder,
            "model_type 'convnext'",
            "'clip', 'vit', 'deit' and 'siglip'",
        ],
    );
}

#[test]
fn missing_tokenizer_is_named() {
    let dir = copy_model("clip-tiny", &["tokenizer.json"], |_| {});
    let (out, err) = serve(dir.path(), &fixtures().join("models/vit-tiny"));
    let folder = dir.path().display().to_string();
    assert_refused(&out, &err, &[&folder, "has no tokenizer.json"]);
}

#[test]
fn config_field_it_does_not_understand_is_named_with_the_choices() {
    let dir = copy_model("deit-tiny", &[], |c| c["hidden_act"] = "mish".into());
    let (out, err) = serve(&clip_tiny(), dir.path());
    let folder = dir.path().display().to_string();
    assert_refused(
        &out,
        &err,
        &[&folder, "hidden_act 'mish' is not supported", "gelu"],
    );
}

#[test]
fn zero_shot_model_configured_as_the_vit_model_is_refused() {
    let (out, err) = serve(&clip_tiny(), &clip_tiny());
    assert_refused(
        &out,
        &err,
        &[
            &clip_tiny().display().to_string(),
            "model_type 'clip'",
            "GLIMPSE_VIT_MODEL takes model_type 'vit' or 'deit'",
        ],
    );
}
