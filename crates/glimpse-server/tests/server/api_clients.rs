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
    run_client_as(server, key, image_path, None, program, args).await
}

/// `clip_model`: the clients' `CLIP_MODEL` (adds `clipModel` to the seed's query); `None` runs
/// them as the seed wrote them.
async fn run_client_as(
    server: &TestServer,
    key: &str,
    image_path: &std::path::Path,
    clip_model: Option<&str>,
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
    match clip_model {
        Some(m) => cmd.env("CLIP_MODEL", m),
        None => cmd.env_remove("CLIP_MODEL"),
    };
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

/// The three seed clients, each given `CLIP_MODEL` so that only `clipModel` joins the seed's
/// request, against a server with both SigLIP fixtures beside the default CLIP: each answer is
/// the `transformers` zero-shot pipeline's (`expected/<model>.json`, within 1e-4) for the seed's
/// six labels, `modelId` names the SigLIP model, and the scores are independent sigmoids (they do
/// not sum to 1). Without `CLIP_MODEL` the same server still answers with the default CLIP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_clients_get_a_siglip_answer_with_only_clip_model_changed() {
    const SIGLIP_IMAGE: &str = "astronaut.jpg";
    let siglips = ["siglip-tiny", "siglip2-tiny"];
    let server = with_fixture_clip_models(&siglips, 20).await;
    let dir = clients_dir();
    let clients: [(&str, Vec<String>); 3] = [
        ("sh", vec![dir.join("seed_curl.sh").display().to_string()]),
        (
            "python3",
            vec![
                dir.join("run_requests.py").display().to_string(),
                dir.join("seed_requests.py").display().to_string(),
            ],
        ),
        (
            "node",
            vec![
                "--import".into(),
                dir.join("capture_json.mjs").display().to_string(),
                dir.join("seed_fetch.mjs").display().to_string(),
            ],
        ),
    ];
    let img = image(SIGLIP_IMAGE);
    let mut calls = 0;
    for model in siglips {
        let exp = expected_json(model);
        let labels: Vec<&str> = exp["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert_eq!(
            labels.join(","),
            LABELS,
            "the reference scores the seed's labels"
        );
        assert_eq!(exp["template"], glimpse_core::labels::DEFAULT_TEMPLATE);
        let want: Vec<f64> = exp["images"][SIGLIP_IMAGE]["probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap())
            .collect();
        for (program, args) in &clients {
            let out = run_client_as(
                &server,
                &server.key,
                &img,
                Some(model),
                program,
                args.clone(),
            )
            .await;
            let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
            let body = if *program == "node" {
                assert_eq!(v["status"], 200, "{v}");
                &v["body"]
            } else {
                &v
            };
            let what = format!("{program} with clipModel={model}: {body}");
            assert_eq!(body["modelId"], model, "{what}");
            // The seed's shape: `model` is the route's family name, `modelId` the model.
            assert_eq!(body["model"], "clip", "{what}");
            assert!(
                body["timingMs"].as_f64().is_some_and(|t| t >= 0.0),
                "{what}"
            );
            let preds = body["predictions"].as_array().unwrap();
            assert_eq!(preds.len(), labels.len(), "{what}");
            let mut sum = 0.0;
            let mut last = f64::INFINITY;
            for p in preds {
                let label = p["label"].as_str().unwrap();
                let score = p["score"].as_f64().unwrap();
                let i = labels.iter().position(|l| *l == label).unwrap();
                assert!(
                    (score - want[i]).abs() <= 1e-4,
                    "{what}: {label} {score} vs transformers {}",
                    want[i]
                );
                assert!(score <= last, "highest first: {what}");
                last = score;
                sum += score;
            }
            assert_eq!(body["result"], preds[0]["label"], "{what}");
            assert!(
                (body["confidence"].as_f64().unwrap() - preds[0]["score"].as_f64().unwrap()).abs()
                    < 1e-9,
                "{what}"
            );
            // Independent sigmoids, not a softmax: the reference's own sum is far from 1 too.
            let want_sum: f64 = want.iter().sum();
            assert!(
                (want_sum - 1.0).abs() > 0.05,
                "reference sums to {want_sum}"
            );
            assert!((sum - want_sum).abs() < 1e-3, "{what}: sum {sum}");
            calls += 1;
            assert_eq!(server.balance().await, 20 - calls, "{what}");
        }
    }
    // The same clients without CLIP_MODEL send the seed's request: the default CLIP answers.
    let out = run_client_as(
        &server,
        &server.key,
        &image(IMAGE),
        None,
        "sh",
        vec![dir.join("seed_curl.sh").display().to_string()],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_matches(&v, &expected_clip(IMAGE, LABELS));
    server.stop().await.unwrap();
}

/// `tests/fixtures/expected/<name>.json`.
/// A server with `credits` whose extra CLIP-route models are these fixture folders.
async fn with_fixture_clip_models(names: &[&str], credits: i64) -> TestServer {
    TestServer::builder()
        .credits(credits)
        .extra_clip_models(
            names
                .iter()
                .map(|m| fixtures().join("models").join(m).display().to_string())
                .collect(),
        )
        .start()
        .await
}

fn expected_json(name: &str) -> serde_json::Value {
    let path = fixtures().join("expected").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// CLIP at other sizes and sources (L/14@336-shaped, LAION-shaped) served beside the default and
/// picked by `clipModel` through the seed's curl client: each answer is `transformers`' softmax
/// (`expected/<model>.json`, within 1e-4) and sums to 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_curl_gets_other_clip_sizes_and_sources() {
    const CLIP_IMAGE: &str = "astronaut.jpg";
    let variants = ["clip-tiny-l14-336", "clip-tiny-laion"];
    let server = with_fixture_clip_models(&variants, 10).await;
    let curl = vec![clients_dir().join("seed_curl.sh").display().to_string()];
    for model in variants {
        let exp = expected_json(model);
        let labels: Vec<&str> = exp["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert_eq!(labels.join(","), LABELS);
        let want = &exp["images"][CLIP_IMAGE]["probs"];
        let out = run_client_as(
            &server,
            &server.key,
            &image(CLIP_IMAGE),
            Some(model),
            "sh",
            curl.clone(),
        )
        .await;
        let body: serde_json::Value = serde_json::from_str(&out).expect(&out);
        assert_eq!(body["modelId"], model, "{body}");
        let preds = body["predictions"].as_array().unwrap();
        assert_eq!(preds.len(), labels.len(), "{body}");
        let mut sum = 0.0;
        for p in preds {
            let i = labels.iter().position(|l| *l == p["label"]).unwrap();
            let (got, want) = (p["score"].as_f64().unwrap(), want[i].as_f64().unwrap());
            assert!((got - want).abs() <= 1e-4, "{model}: {body} vs {want}");
            sum += got;
        }
        assert!((sum - 1.0).abs() < 1e-4, "{model}: softmax sums to {sum}");
        assert_eq!(body["result"], preds[0]["label"], "{body}");
    }
    server.stop().await.unwrap();
}
