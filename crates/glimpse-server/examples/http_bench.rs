//! HTTP load for a running `glimpse serve`: N clients, each POSTing one multipart upload after
//! another for a fixed time, then latency percentiles and throughput as one JSON line.
//!
//! cargo run --release -p glimpse-server --example http_bench -- \
//!     --url http://127.0.0.1:8080 --key gk_... --image tests/fixtures/images/coffee.jpg \
//!     --clients 8 --seconds 20 [--endpoint clip] [--labels "cat,dog,coffee"] [--warmup 3]
//!
//! Only 2xx answers count; any other status is reported and counted as an error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};

struct Args {
    url: String,
    key: String,
    image: String,
    labels: String,
    endpoint: String,
    clients: usize,
    seconds: f64,
    warmup: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        url: "http://127.0.0.1:8080".into(),
        key: String::new(),
        image: String::new(),
        labels: "cat,dog,coffee,person,car".into(),
        endpoint: "clip".into(),
        clients: 1,
        seconds: 10.0,
        warmup: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("{flag}: not a number"))
        };
        match flag.as_str() {
            "--url" => a.url = v,
            "--key" => a.key = v,
            "--image" => a.image = v,
            "--labels" => a.labels = v,
            "--endpoint" => a.endpoint = v,
            "--clients" => a.clients = num(&v)? as usize,
            "--seconds" => a.seconds = num(&v)?,
            "--warmup" => a.warmup = num(&v)? as usize,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.key.is_empty() || a.image.is_empty() || a.clients == 0 {
        return Err("--key and --image are required, --clients at least 1".into());
    }
    Ok(a)
}

async fn one(http: &reqwest::Client, a: &Args, bytes: &[u8]) -> Result<Duration, String> {
    let form = Form::new()
        .part("image", Part::bytes(bytes.to_vec()).file_name("image"))
        .text("labels", a.labels.clone());
    let t = Instant::now();
    let res = http
        .post(format!("{}/api/image-classification/{}", a.url, a.endpoint))
        .header("X-API-Key", &a.key)
        .multipart(form)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status();
    let body = res.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    Ok(t.elapsed())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = match parse() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("http_bench: {e}");
            std::process::exit(2);
        }
    };
    let bytes = Arc::new(std::fs::read(&a.image).expect("read --image"));
    // The crate's reqwest brings no crypto provider of its own (see src/fetch); plain HTTP still
    // needs one installed before a client is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    // Warm-up, one client: loads lazy state and puts the label set in the prompt cache.
    for _ in 0..a.warmup {
        if let Err(e) = one(&http, &a, &bytes).await {
            eprintln!("http_bench: warm-up failed: {e}");
            std::process::exit(1);
        }
    }
    let deadline = Instant::now() + Duration::from_secs_f64(a.seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..a.clients)
        .map(|_| {
            let (a, bytes, http) = (Arc::clone(&a), Arc::clone(&bytes), http.clone());
            tokio::spawn(async move {
                let (mut ok, mut errors) = (Vec::new(), Vec::new());
                while Instant::now() < deadline {
                    match one(&http, &a, &bytes).await {
                        Ok(d) => ok.push(d.as_secs_f64() * 1e3),
                        Err(e) => errors.push(e),
                    }
                }
                (ok, errors)
            })
        })
        .collect();
    let (mut lat, mut errors) = (Vec::new(), Vec::new());
    for t in tasks {
        let (ok, err) = t.await.unwrap();
        lat.extend(ok);
        errors.extend(err);
    }
    let wall = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    if let Some(e) = errors.first() {
        eprintln!("http_bench: {} errors, first: {e}", errors.len());
    }
    let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    println!(
        "{}",
        serde_json::json!({
            "endpoint": a.endpoint,
            "clients": a.clients,
            "requests": lat.len(),
            "errors": errors.len(),
            "seconds": (wall * 100.0).round() / 100.0,
            "ms_mean": (mean * 10.0).round() / 10.0,
            "ms_p10": (pct(&lat, 0.10) * 10.0).round() / 10.0,
            "ms_p50": (pct(&lat, 0.50) * 10.0).round() / 10.0,
            "ms_p90": (pct(&lat, 0.90) * 10.0).round() / 10.0,
            "img_per_s": (lat.len() as f64 / wall * 100.0).round() / 100.0,
        })
    );
}
