//! `/metrics` counts exactly what was answered (by route template and status), the credits
//! debited and the stage histograms; every answer carries an `X-Request-Id`.

use std::collections::BTreeMap;

use crate::support::*;
use reqwest::multipart::{Form, Part};

const CLIP: &str = "/api/image-classification/clip";

fn form(bytes: Vec<u8>) -> Form {
    Form::new().part(
        "image",
        Part::bytes(bytes)
            .file_name("image.jpg")
            .mime_str("image/jpeg")
            .unwrap(),
    )
}

/// Every sample of a scrape, by `name{labels}` exactly as exported.
async fn scrape(s: &TestServer) -> BTreeMap<String, f64> {
    let res = s.http.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = res.text().await.unwrap();
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect(line);
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        assert!(out.insert(series.to_string(), v).is_none(), "dup {series}");
    }
    out
}

fn get(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, series: &str) -> f64 {
    get(after, series) - get(before, series)
}

fn requests(route: &str, method: &str, status: u16) -> String {
    format!(
        "glimpse_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_what_was_answered() {
    let s = TestServer::builder()
        .credits(1000)
        .credits_per_call(3)
        .start()
        .await;
    let cost = s.credits_per_call() as f64;
    let (n_ok, n_bad, n_nokey) = (3, 2, 2);
    let before = scrape(&s).await;

    for _ in 0..n_ok {
        let res = s
            .http
            .post(s.url(CLIP))
            .header("x-api-key", &s.key)
            .multipart(form(image_bytes("astronaut.jpg")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    for _ in 0..n_bad {
        let res = s
            .http
            .post(s.url(CLIP))
            .header("x-api-key", &s.key)
            .multipart(form(b"not an image at all".to_vec()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400);
    }
    for _ in 0..n_nokey {
        let res = s
            .http
            .post(s.url(CLIP))
            .multipart(form(image_bytes("astronaut.jpg")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
    }
    // A raw path with an id in it must not become a label of its own.
    let res = s.http.get(s.url("/no/such/thing/42")).send().await.unwrap();
    assert_eq!(res.status(), 404);

    let after = scrape(&s).await;
    let d = |series: &str| delta(&before, &after, series);
    assert_eq!(d(&requests(CLIP, "POST", 200)), n_ok as f64);
    assert_eq!(d(&requests(CLIP, "POST", 400)), n_bad as f64);
    assert_eq!(d(&requests(CLIP, "POST", 401)), n_nokey as f64);
    assert_eq!(d(&requests("unmatched", "GET", 404)), 1.0);
    assert!(
        !after.keys().any(|k| k.contains("/no/such")),
        "raw paths leaked into labels"
    );
    // The first scrape itself was counted by the time of the second.
    assert_eq!(d(&requests("/metrics", "GET", 200)), 1.0);

    let all = (n_ok + n_bad + n_nokey) as f64;
    let hist = format!("glimpse_http_request_duration_seconds_count{{route=\"{CLIP}\"}}");
    assert_eq!(d(&hist), all);
    let inf =
        format!("glimpse_http_request_duration_seconds_bucket{{route=\"{CLIP}\",le=\"+Inf\"}}");
    assert_eq!(d(&inf), all);

    assert_eq!(d("glimpse_credits_debited_total"), n_ok as f64 * cost);
    assert_eq!(d("glimpse_credits_refunded_total"), 0.0);
    assert_eq!(s.balance().await, 1000 - n_ok * 3);

    let stage = |name: &str| format!("glimpse_stage_duration_seconds_count{{stage=\"{name}\"}}");
    // Bad images are decoded (and fail there); missing keys never get that far.
    assert_eq!(d(&stage("decode")), (n_ok + n_bad) as f64);
    // Recorded by the batcher before it answers: complete once the responses are in.
    assert_eq!(d(&stage("queue")), n_ok as f64);
    assert_eq!(d(&stage("inference")), n_ok as f64);
    // A debit and a settle per charged call.
    assert_eq!(d(&stage("ledger")), 2.0 * n_ok as f64);
    assert_eq!(d(&stage("fetch")), 0.0);

    // Nothing is left counted as in flight but the scrape itself.
    assert_eq!(get(&after, "glimpse_inflight_requests"), 1.0);
    s.stop().await.unwrap();
}

/// Each CLIP model's prompt cache is read at scrape time, bounded by
/// `GLIMPSE_PROMPT_CACHE_ENTRIES`: with room for three prompts, `car,person` then
/// `person,dog,cat` (one template) embed four and keep the three most recently used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_cache_gauges_follow_the_label_sets() {
    let s = TestServer::builder()
        .credits(10)
        .prompt_cache_entries(3)
        .start()
        .await;
    let entries = "glimpse_prompt_cache_entries{model=\"clip-tiny\"}";
    let bytes = "glimpse_prompt_cache_bytes{model=\"clip-tiny\"}";
    let misses = "glimpse_prompt_cache_misses_total{model=\"clip-tiny\"}";
    let before = scrape(&s).await;
    assert_eq!(get(&before, entries), 0.0);
    for (labels, want_entries, want_misses) in
        [("car,person", 2.0, 2.0), ("person,dog,cat", 3.0, 4.0)]
    {
        let res = s
            .http
            .post(s.url(CLIP))
            .header("x-api-key", &s.key)
            .query(&[("labels", labels)])
            .multipart(form(image_bytes("astronaut.jpg")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let m = scrape(&s).await;
        assert_eq!(get(&m, entries), want_entries, "after {labels}");
        assert_eq!(get(&m, misses), want_misses, "after {labels}");
        assert!(get(&m, bytes) > 0.0, "after {labels}");
    }
    // A subset of what is cached costs no text-encoder time.
    let res = s
        .http
        .post(s.url(CLIP))
        .header("x-api-key", &s.key)
        .query(&[("labels", "cat,dog")])
        .multipart(form(image_bytes("astronaut.jpg")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let m = scrape(&s).await;
    assert_eq!((get(&m, entries), get(&m, misses)), (3.0, 4.0));
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_or_made() {
    let s = TestServer::builder().credits(100).start().await;
    let id_of = |res: &reqwest::Response| {
        res.headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let is_uuid = |id: &str| {
        id.len() == 36
            && id.chars().filter(|c| *c == '-').count() == 4
            && id
                .chars()
                .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    };

    // Sent: echoed, on a success and on an error.
    let ok = s
        .http
        .post(s.url(CLIP))
        .header("x-api-key", &s.key)
        .header("x-request-id", "client-id-0001")
        .multipart(form(image_bytes("astronaut.jpg")))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(id_of(&ok).as_deref(), Some("client-id-0001"));
    let err = s
        .http
        .post(s.url(CLIP))
        .header("x-request-id", "client-id-0002")
        .multipart(form(image_bytes("astronaut.jpg")))
        .send()
        .await
        .unwrap();
    assert_eq!(err.status(), 401);
    assert_eq!(id_of(&err).as_deref(), Some("client-id-0002"));

    // Not sent: a fresh UUID each time, on a success, a 400, a 401 and a 404.
    let mut seen = Vec::new();
    for (path, key, body, want) in [
        (CLIP, true, image_bytes("astronaut.jpg"), 200),
        (CLIP, true, b"garbage".to_vec(), 400),
        (CLIP, false, image_bytes("astronaut.jpg"), 401),
        ("/nowhere", false, Vec::new(), 404),
    ] {
        let mut req = s.http.post(s.url(path)).multipart(form(body));
        if key {
            req = req.header("x-api-key", &s.key);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), want);
        let id = id_of(&res).unwrap_or_else(|| panic!("no id on a {want}"));
        assert!(is_uuid(&id), "{id}");
        seen.push(id);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "ids repeat: {seen:?}");

    // Unsafe ids (too long, odd characters) are replaced, never echoed.
    for bad in ["has space", "quote\"d", &"x".repeat(200)] {
        let res = s
            .http
            .get(s.url("/healthz"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let id = id_of(&res).unwrap();
        assert_ne!(id, bad);
        assert!(is_uuid(&id), "{id}");
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn readyz_is_503_with_an_error_body_when_not_ready() {
    use tower::ServiceExt;
    // The router called directly (no socket), on the state of a server that is also running.
    let s = TestServer::builder().start().await;
    let state = s.state.clone();
    let call = |path: &'static str| {
        let app = glimpse_server::app(state.clone());
        async move {
            let req = axum::http::Request::get(path)
                .body(axum::body::Body::empty())
                .unwrap();
            let res = app.oneshot(req).await.unwrap();
            let status = res.status().as_u16();
            let has_id = res.headers().contains_key("x-request-id");
            let body = axum::body::to_bytes(res.into_body(), 1 << 16)
                .await
                .unwrap();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            (status, json, has_id)
        }
    };
    let (status, body, has_id) = call("/readyz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));
    assert!(has_id);
    state.set_ready(false);
    let (status, body, has_id) = call("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "NOT_READY", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(has_id);
    // Liveness does not depend on readiness.
    let (status, body, _) = call("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
}

#[tokio::test]
async fn playground_is_served_from_the_binary() {
    let s = TestServer::builder().credits(1).start().await;
    let page = s.http.get(s.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    for needle in [
        "id=\"chart\"",
        "id=\"key\"",
        "id=\"file\"",
        "href=\"/docs\"",
        "src=\"/playground.js\"",
    ] {
        assert!(html.contains(needle), "{needle} missing");
    }
    // Nothing from elsewhere: no absolute http(s) URLs in what the page loads.
    assert!(!html.contains("src=\"http"), "external script");
    assert!(!html.contains("href=\"http"), "external link/stylesheet");
    for (path, ct) in [
        ("/playground.js", "text/javascript"),
        ("/playground.css", "text/css"),
    ] {
        let res = s.http.get(s.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let got = res.headers()["content-type"].to_str().unwrap().to_string();
        assert!(got.starts_with(ct), "{path}: {got}");
        assert!(!res.text().await.unwrap().contains("://"), "{path}");
    }
    s.stop().await.unwrap();
}

/// Log lines written to a shared buffer (the subscriber is global: the server's tasks run on
/// other threads).
#[derive(Clone, Default)]
struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_request_id() {
    let buf = Buf::default();
    let writer = buf.clone();
    // The same formatter `init_tracing` installs for GLIMPSE_LOG_FORMAT=json.
    tracing_subscriber::fmt()
        .json()
        .with_env_filter("info")
        .with_writer(move || writer.clone())
        .try_init()
        .expect("the only test in this binary that installs a subscriber");
    let s = TestServer::builder().credits(10).start().await;
    let res = s
        .http
        .post(s.url(CLIP))
        .header("x-api-key", &s.key)
        .header("x-request-id", "log-trace-777")
        .multipart(form(b"not an image".to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    s.stop().await.unwrap();
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|v: &serde_json::Value| v["span"]["request_id"] == "log-trace-777")
        .collect();
    let done = lines
        .iter()
        .find(|v| v["fields"]["message"] == "request finished")
        .unwrap_or_else(|| panic!("no finished line for the request in:\n{text}"));
    assert_eq!(done["fields"]["status"], 400, "{done}");
    assert_eq!(done["span"]["route"], CLIP, "{done}");
    assert_eq!(done["span"]["method"], "POST", "{done}");
}

/// Issue 26: each model's resident memory (measured over its load and warm-up) and the
/// process's resident set are in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resident_memory_per_model_and_process() {
    let s = TestServer::builder().start().await;
    let m = scrape(&s).await;
    let process = m["glimpse_process_resident_bytes"];
    assert!(process > 10.0 * 1024.0 * 1024.0, "{process}");
    for slot in s.state.models().slots() {
        let series = format!(
            "glimpse_model_resident_bytes{{model=\"{}\"}}",
            slot.model.id()
        );
        let v = *m
            .get(&series)
            .unwrap_or_else(|| panic!("no {series} in {m:?}"));
        assert!(v >= 0.0 && v < process, "{series} = {v}, process {process}");
        assert_eq!(Some(v as u64), slot.model.resident_bytes());
    }
}
