//! Dynamic batching through the real server: concurrent uploads share forward passes and get the
//! same answers (scores within 1e-6) as the same uploads sent one at a time.

use std::sync::Arc;

use crate::support::{image_bytes, TestServer};
use glimpse_core::Task;
use glimpse_server::AppState;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

const IMAGES: [&str; 8] = [
    "motorcycle.jpg",
    "astronaut.jpg",
    "chelsea.jpg",
    "coffee.jpg",
    "grace_hopper.jpg",
    "page.jpg",
    "astronaut.png",
    "coffee.webp",
];
const LABELS: &str = "cat,person,motorcycle,coffee,text";

fn form(image: &str) -> Form {
    Form::new()
        .part(
            "image",
            Part::bytes(image_bytes(image)).file_name(image.to_string()),
        )
        .text("labels", LABELS)
}

async fn call(http: &reqwest::Client, base: &str, key: &str, ep: &str, image: &str) -> Value {
    let res = http
        .post(format!("{base}/api/image-classification/{ep}"))
        .header("X-API-Key", key)
        .multipart(form(image))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{image}");
    res.json().await.unwrap()
}

/// Everything but `timingMs`, with scores compared to 1e-6.
fn assert_same(got: &Value, want: &Value, what: &str) {
    assert_eq!(got["result"], want["result"], "{what}");
    assert_eq!(got["modelId"], want["modelId"], "{what}");
    for field in ["predictions", "imagenet"] {
        let (g, w) = (&got[field], &want[field]);
        if w.is_null() {
            assert!(g.is_null(), "{what}: {field}");
            continue;
        }
        let (g, w) = (g.as_array().unwrap(), w.as_array().unwrap());
        assert_eq!(g.len(), w.len(), "{what}: {field}");
        for (a, b) in g.iter().zip(w) {
            assert_eq!(a["label"], b["label"], "{what}: {field}");
            let (sa, sb) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
            // A pass of several images may round its last bits differently from a pass of one
            // (up to ~1.2e-6 with the gemm kernels of CPUs without AVX-512).
            assert!((sa - sb).abs() <= 1e-5, "{what}: {field} {sa} vs {sb}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_are_batched_and_answer_like_sequential_ones() {
    // A wide window so the 8 concurrent calls surely meet in the queue on a loaded CI machine.
    let s = TestServer::builder()
        .credits(100)
        .batch_size(8)
        .batch_window_ms(300)
        .start()
        .await;
    let (state, base, key, http) = (&s.state, &s.base, &s.key, s.http.clone());

    let mut sequential = Vec::new();
    for ep in ["clip", "vit"] {
        for im in IMAGES {
            sequential.push(call(&http, base, key, ep, im).await);
        }
    }
    let before_clip = batcher(state, Task::ZeroShot).stats();
    let before_vit = batcher(state, Task::Classify).stats();
    assert_eq!(
        before_clip.max_batch_seen, 1,
        "one at a time: {before_clip:?}"
    );

    let http = Arc::new(http);
    let mut tasks = Vec::new();
    for ep in ["clip", "vit"] {
        for im in IMAGES {
            let (http, base, k) = (Arc::clone(&http), base.clone(), key.clone());
            tasks.push(tokio::spawn(
                async move { call(&http, &base, &k, ep, im).await },
            ));
        }
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let got = t.await.unwrap();
        assert_same(&got, &sequential[i], IMAGES[i % IMAGES.len()]);
    }

    for (name, before, after) in [
        ("clip", before_clip, batcher(state, Task::ZeroShot).stats()),
        ("vit", before_vit, batcher(state, Task::Classify).stats()),
    ] {
        let passes = after.batches - before.batches;
        assert_eq!(after.jobs - before.jobs, IMAGES.len(), "{name}");
        assert!(after.max_batch_seen > 1, "{name}: {after:?}");
        assert!(passes < IMAGES.len(), "{name}: {passes} passes for 8 calls");
        assert!(after.max_batch_seen <= 8, "{name}: {after:?}");
    }
    assert_eq!(state.models().queue_depth(), 0);
    // /metrics sees every batch: its histogram counts the passes and sums the images.
    let text = s.get_text("/metrics").await;
    let series = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    };
    let (clip, vit) = (
        batcher(state, Task::ZeroShot).stats(),
        batcher(state, Task::Classify).stats(),
    );
    assert_eq!(
        series("glimpse_batch_size_count"),
        (clip.batches + vit.batches) as f64
    );
    assert_eq!(
        series("glimpse_batch_size_sum"),
        (clip.jobs + vit.jobs) as f64
    );
    // 32 calls, one credit each, none refunded.
    assert_eq!(s.balance().await, 100 - 32);
    drop(s);
}

#[tokio::test]
async fn batch_size_one_still_answers_every_call() {
    let server = TestServer::builder()
        .credits(10)
        .batch_size(1)
        .start()
        .await;
    let (base, key) = (&server.base, &server.key);
    let http = Arc::new(server.http.clone());
    let tasks: Vec<_> = IMAGES[..4]
        .iter()
        .map(|im| {
            let (http, base, k) = (Arc::clone(&http), base.clone(), key.clone());
            tokio::spawn(async move { call(&http, &base, &k, "clip", im).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap()["predictions"].is_array());
    }
    let s = batcher(&server.state, Task::ZeroShot).stats();
    assert_eq!((s.batches, s.jobs, s.max_batch_seen), (4, 4, 1));
}

/// `GLIMPSE_PRECISION` reaches the models: bf16 and int8 servers answer like the fp32 one (same
/// labels, scores within 0.05 on the tiny fixtures) but not bit for bit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reduced_precision_servers_answer_close_to_fp32() {
    let mut answers = Vec::new();
    for precision in ["fp32", "bf16", "int8"] {
        let s = TestServer::builder()
            .credits(100)
            .precision(precision)
            .start()
            .await;
        let (base, key, http) = (&s.base, &s.key, &s.http);
        // (endpoint, image) → labels and scores, in the answer's order.
        let mut calls = Vec::new();
        for ep in ["clip", "vit"] {
            for im in ["motorcycle.jpg", "coffee.jpg"] {
                let v = call(http, base, key, ep, im).await;
                let field = if ep == "clip" {
                    "predictions"
                } else {
                    "imagenet"
                };
                let preds: Vec<(String, f64)> = v[field]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| (p["label"].to_string(), p["score"].as_f64().unwrap()))
                    .collect();
                calls.push((format!("{ep} {im}"), preds));
            }
        }
        drop(s);
        answers.push(calls);
    }
    for (name, got) in [("bf16", &answers[1]), ("int8", &answers[2])] {
        let mut max_diff = 0f64;
        for ((what, g), (_, w)) in got.iter().zip(&answers[0]) {
            assert_eq!(g.len(), w.len(), "{name} {what}");
            // The tiny random ViT has near-ties, so labels are matched by name, not position.
            let mut matched = 0;
            for a in g {
                if let Some(b) = w.iter().find(|b| b.0 == a.0) {
                    max_diff = max_diff.max((a.1 - b.1).abs());
                    matched += 1;
                }
            }
            assert!(matched * 2 > g.len(), "{name} {what}: {g:?} vs {w:?}");
        }
        eprintln!("{name}: largest score difference to fp32 {max_diff}");
        assert!(max_diff <= 0.05, "{name}: scores differ by {max_diff}");
        assert!(
            max_diff > 0.0,
            "{name}: answers identical to fp32, precision not applied"
        );
    }
}

/// The batcher of `task`'s default model.
fn batcher(state: &AppState, task: Task) -> &glimpse_core::batcher::ModelBatcher {
    &state.models().default_for(task).expect("a model").batcher
}
