//! The seed's three client examples (curl, Python requests, Node fetch), run unchanged but for
//! host, key and image path against a live server. Each answer must have the seed's shape and
//! equal what the in-process pipeline gives for the same model and image. None is skipped: a
//! missing `curl`, `python3` (with requests) or `node` fails the test.

mod api_support;

use std::path::PathBuf;
use std::process::Command;

use api_support::*;

const IMAGE: &str = "motorcycle.jpg";
const LABELS: &str = "car,document,motorcycle,truck,person,other";

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Run a client with the server's address, the key and the image in its environment; stdout.
async fn run_client(server: &TestServer, program: &str, args: Vec<String>) -> String {
    let mut cmd = Command::new(program);
    cmd.args(&args)
        .env("GLIMPSE_BASE", &server.base)
        .env("GLIMPSE_API_KEY", &server.key)
        .env("GLIMPSE_IMAGE", image(IMAGE))
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run {program} (it is required): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_clients_get_the_pipelines_answer() {
    let server = start(10, |_| {}).await;
    let expected = expected_clip(IMAGE, LABELS);
    let dir = clients_dir();

    let curl = run_client(
        &server,
        "sh",
        vec![dir.join("seed_curl.sh").display().to_string()],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&curl).expect(&curl);
    assert_matches(&v, &expected);
    assert_eq!(server.balance().await, 9);

    let py = run_client(
        &server,
        "python3",
        vec![
            dir.join("run_requests.py").display().to_string(),
            dir.join("seed_requests.py").display().to_string(),
        ],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&py).expect(&py);
    assert_matches(&v, &expected);
    assert_eq!(server.balance().await, 8);

    let node = run_client(
        &server,
        "node",
        vec![
            "--import".into(),
            dir.join("capture_json.mjs").display().to_string(),
            dir.join("seed_fetch.mjs").display().to_string(),
        ],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&node).expect(&node);
    assert_eq!(v["status"], 200, "{v}");
    assert_matches(&v["body"], &expected);
    assert_eq!(server.balance().await, 7);

    server.stop().await.unwrap();
}
