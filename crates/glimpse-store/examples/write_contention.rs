//! How long a debit + settle takes when N callers write at once (what N concurrent HTTP clients
//! do between two forward passes): `cargo run --release -p glimpse-store --example
//! write_contention -- [DB_URL] [CALLERS] [ROUNDS]` prints the per-call wall times (median, p90,
//! max) and the time for each round of N calls to finish.

use std::time::{Duration, Instant};

use glimpse_store::{connect_with, DebitRequest, StoreOptions};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let default_url = format!("sqlite://{}", dir.path().join("w.db").display());
    let url = args
        .get(1)
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or(default_url);
    let callers: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8);
    let rounds: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(50);
    let store = connect_with(&url, StoreOptions::default())
        .await
        .expect("open store");
    let key = store
        .create_key("contention", 1_000_000)
        .await
        .expect("key");
    let mut calls = Vec::new();
    let mut round_ms = Vec::new();
    for _ in 0..rounds {
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|_| {
                let store = store.clone();
                let key_id = key.id.clone();
                tokio::spawn(async move {
                    let t = Instant::now();
                    let d = store
                        .debit(&DebitRequest {
                            key_id,
                            cost: 1,
                            endpoint: "clip".into(),
                            model: "m".into(),
                        })
                        .await
                        .expect("debit");
                    store.settle(&d.id, 200, 1.0).await.expect("settle");
                    t.elapsed()
                })
            })
            .collect();
        for t in tasks {
            calls.push(t.await.expect("task"));
        }
        round_ms.push(t0.elapsed());
    }
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        let q = |p: f64| ms(&v[((v.len() - 1) as f64 * p).round() as usize]);
        format!("median {:.2} p90 {:.2} max {:.2}", q(0.5), q(0.9), q(1.0))
    };
    println!("callers {callers} rounds {rounds}");
    println!("call  ms: {}", stats(&mut calls));
    println!("round ms: {}", stats(&mut round_ms));
}
