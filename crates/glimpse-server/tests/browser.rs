//! The playground and Swagger UI in a real browser: `tests/browser/playground.mjs` and
//! `swagger.mjs` drive headless Debian chromium (via playwright-core) against a live server:
//! key, upload, Classify, chart, credits; Authorize, Try it out, Execute.
//!
//! Needs `/usr/bin/chromium` (or `CHROMIUM`), node, and `npm ci` run in `tests/browser/`. With
//! `CI` set a missing piece is a failure; without it the test says so loudly and passes.

mod api_support;

use std::path::PathBuf;
use std::process::Command;

use api_support::*;

fn missing_tools(dir: &std::path::Path, chromium: &str) -> Vec<String> {
    let mut missing = Vec::new();
    if !std::path::Path::new(chromium).exists() {
        missing.push(format!(
            "chromium at {chromium} (apt-get install -y chromium)"
        ));
    }
    if !dir.join("node_modules/playwright-core").is_dir() {
        missing.push(format!("{}/node_modules (npm ci there)", dir.display()));
    }
    if Command::new("node").arg("--version").output().is_err() {
        missing.push("node".into());
    }
    missing
}

/// Run `tests/browser/SCRIPT base key` with node and chromium; `None` (said loudly) when a tool is
/// missing outside CI. Fails the test when the script does.
async fn run_script(script: &str, base: &str, key: &str, env: &[(&str, String)]) -> Option<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let missing = missing_tools(&dir, &chromium);
    if !missing.is_empty() {
        let what = missing.join(", ");
        if std::env::var_os("CI").is_some() {
            panic!("browser test cannot run in CI, missing: {what}");
        }
        eprintln!("\n!!!! SKIPPING the {script} browser test, missing: {what} !!!!\n");
        return None;
    }
    let mut cmd = Command::new("node");
    cmd.arg(dir.join(script))
        .arg(base)
        .arg(key)
        .current_dir(&dir)
        .env("CHROMIUM", &chromium);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("node runs");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{log}");
    assert!(out.status.success(), "{script} failed:\n{log}");
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playground_classifies_in_chromium() {
    let credits = 50;
    let s = start(credits, |c| c.store.credits_per_call = 2).await;
    let expect = credits - s.config.store.credits_per_call;
    let screenshot = std::env::var("GLIMPSE_SCREENSHOT").unwrap_or_else(|_| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/playground.png")
            .display()
            .to_string()
    });
    let env = [
        ("GLIMPSE_SCREENSHOT", screenshot.clone()),
        ("GLIMPSE_EXPECT_CREDITS", expect.to_string()),
    ];
    if run_script("playground.mjs", &s.base, &s.key, &env)
        .await
        .is_none()
    {
        return;
    }
    // The page's three good calls (CLIP, ViT, CLIP again) were charged once each; the wrong-key
    // call was free.
    assert_eq!(
        s.balance().await,
        credits - 3 * s.config.store.credits_per_call
    );
    assert!(std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 1000));
    s.stop().await.unwrap();
}

/// Swagger UI's "Try it out" on POST /clip with its own defaults and an image: 200, charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_try_it_out_answers_in_chromium() {
    let s = start(5, |_| {}).await;
    if run_script("swagger.mjs", &s.base, &s.key, &[])
        .await
        .is_none()
    {
        return;
    }
    assert_eq!(s.balance().await, 4);
    s.stop().await.unwrap();
}
