//! The seed's three client examples (curl, Python requests, Node fetch), run unchanged but for
//! host, key and image path against a live server. Each answer must have the seed's shape and
//! equal what the in-process pipeline gives for the same model and image. None is skipped: a
//! missing `curl`, `python3` (with requests) or `node` fails the test.

use std::path::PathBuf;
use std::process::Command;

use crate::support::*;

const IMAGE: &str = "motorcycle.jpg";
const LABELS: &str = "car,document,motorcycle,truck,person,other";

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Run a client with the server's address, the key and the image in its environment; stdout.
async fn run_client(server: &TestServer, program: &str, args: Vec<String>) -> String {
    run_client_with(server, &server.key, &image(IMAGE), program, args).await
}

async fn run_client_with(
    server: &TestServer,
    key: &str,
    image_path: &std::path::Path,
    program: &str,
    args: Vec<String>,
) -> String {
    let mut cmd = Command::new(program);
    cmd.args(&args)
        .env("GLIMPSE_BASE", &server.base)
        .env("GLIMPSE_API_KEY", key)
        .env("GLIMPSE_IMAGE", image_path)
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
    let server = TestServer::builder().credits(10).start().await;
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

/// The most common first mistake, a wrong key, reaches every seed client as the documented 401
/// JSON, whatever the upload's size: the server answers before reading the body, then reads and
/// discards the rest, so a client still writing its upload (Node's fetch) is not cut off with
/// EPIPE. The same for a key that cannot pay (402, also before the body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_clients_read_the_error_before_the_body_is_read() {
    let server = TestServer::builder().start().await;
    let dir = clients_dir();
    // A 1 KB PNG (the case) and a 400 KB one (several socket buffers, under the
    // test server's 512 KB upload limit).
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big.png");
    let noise: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut png = std::fs::read(image("tiny.png")).unwrap();
    png.extend_from_slice(&noise); // trailing bytes: never read, the key is refused first
    std::fs::write(&big, &png).unwrap();
    let cases = [
        ("gk_wrong_key_0000000000000000000000", 401, "UNAUTHORIZED"),
        (server.key.as_str(), 402, "INSUFFICIENT_CREDITS"),
    ];
    for (key, status, code) in cases {
        for img in [image("tiny.png"), big.clone()] {
            let curl = run_client_with(
                &server,
                key,
                &img,
                "sh",
                vec![dir.join("seed_curl.sh").display().to_string()],
            )
            .await;
            let v: serde_json::Value = serde_json::from_str(&curl).expect(&curl);
            assert_eq!(v["code"], code, "curl {}: {v}", img.display());
            let py = run_client_with(
                &server,
                key,
                &img,
                "python3",
                vec![
                    dir.join("run_requests.py").display().to_string(),
                    dir.join("seed_requests.py").display().to_string(),
                ],
            )
            .await;
            let v: serde_json::Value = serde_json::from_str(&py).expect(&py);
            assert_eq!(v["code"], code, "python {}: {v}", img.display());
            for round in 0..3 {
                let node = run_client_with(
                    &server,
                    key,
                    &img,
                    "node",
                    vec![
                        "--import".into(),
                        dir.join("capture_json.mjs").display().to_string(),
                        dir.join("seed_fetch.mjs").display().to_string(),
                    ],
                )
                .await;
                let v: serde_json::Value = serde_json::from_str(&node).expect(&node);
                assert_eq!(
                    v["status"],
                    status,
                    "node {} round {round}: {v}",
                    img.display()
                );
                assert_eq!(v["body"]["code"], code, "node {}: {v}", img.display());
            }
        }
    }
    assert_eq!(server.balance().await, 0);
    server.stop().await.unwrap();
}
