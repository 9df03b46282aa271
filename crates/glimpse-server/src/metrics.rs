//! `/metrics` in the Prometheus text format (version 0.0.4), from a small registry of atomics and
//! mutex-guarded maps. Hand-rolled rather than a metrics crate: a dozen series, no global
//! recorder (each `AppState` has its own, so tests running several servers do not mix counts).
//!
//! Handlers and the batching engine record through the `pub fn`s on [`Metrics`]
//! (`state.metrics.observe_stage(Stage::Fetch, elapsed)`, `metrics.observe_pass(&report)`…).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use glimpse_core::batcher::PassReport;

use crate::state::AppState;

/// Latency buckets (seconds): from a cache-warm health check to a slow CPU forward pass.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Images per forward pass.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// The route label of a request that matched no route (404s from the fallback): raw paths
/// would make the label set unbounded.
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// The method label of a request with a non-standard method.
pub const OTHER_METHOD: &str = "other";

/// The steps of a classification call timed by `glimpse_stage_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Downloading a `?url=` image.
    Fetch,
    /// Decoding and preprocessing the image.
    Decode,
    /// Taking the credit and closing it afterwards (the debit, then the settle or refund).
    Ledger,
    /// In the model's queue: from submit to its forward pass starting (the batch window, the
    /// pass before it, a busy inference slot).
    Queue,
    /// The forward pass the call was in (once per call: a pass of 8 counts 8 times).
    Inference,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Fetch,
        Stage::Decode,
        Stage::Ledger,
        Stage::Queue,
        Stage::Inference,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Decode => "decode",
            Stage::Ledger => "ledger",
            Stage::Queue => "queue",
            Stage::Inference => "inference",
        }
    }
}

/// A cumulative-on-render histogram.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); one more than `bounds` for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    /// `labels` is the `k="v",` prefix (possibly empty) shared by every line.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut acc = 0;
        for (i, c) in self.counts.iter().enumerate() {
            acc += c;
            let le = match self.bounds.get(i) {
                Some(b) => b.to_string(),
                None => "+Inf".into(),
            };
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {acc}");
        }
        let bare = labels.trim_end_matches(',');
        let _ = writeln!(out, "{name}_sum{{{bare}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{bare}}} {}", self.count);
    }
}

/// Every series the server exports. Cheap to share (`Arc<Metrics>` in the state).
#[derive(Debug)]
pub struct Metrics {
    /// (route template, method, status) → count.
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    durations: Mutex<BTreeMap<String, Histogram>>,
    inflight: AtomicI64,
    /// Model id → calls waiting for or holding an inference slot.
    queue_depth: Mutex<BTreeMap<String, i64>>,
    batch_size: Mutex<Histogram>,
    stages: Mutex<BTreeMap<Stage, Histogram>>,
    credits_debited: AtomicU64,
    credits_refunded: AtomicU64,
    reservations_reaped: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            durations: Mutex::default(),
            inflight: AtomicI64::new(0),
            queue_depth: Mutex::default(),
            batch_size: Mutex::new(Histogram::new(BATCH_BUCKETS)),
            stages: Mutex::new(
                Stage::ALL
                    .iter()
                    .map(|s| (*s, Histogram::new(LATENCY_BUCKETS)))
                    .collect(),
            ),
            credits_debited: AtomicU64::new(0),
            credits_refunded: AtomicU64::new(0),
            reservations_reaped: AtomicU64::new(0),
        }
    }
}

/// A poisoned lock only means a panic elsewhere mid-update of a counter; keep counting.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Label values are route templates, methods and model ids; escape them anyway.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// One finished HTTP request.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        *lock(&self.requests)
            .entry((route.to_string(), method.to_string(), status))
            .or_insert(0) += 1;
        lock(&self.durations)
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_stage(&self, stage: Stage, elapsed: Duration) {
        if let Some(h) = lock(&self.stages).get_mut(&stage) {
            h.observe(elapsed.as_secs_f64());
        }
    }

    /// One forward pass (the batching engine calls this once per batch): its size, and each
    /// call's queue wait and pass time as stages.
    pub fn observe_pass(&self, pass: &PassReport) {
        lock(&self.batch_size).observe(pass.size as f64);
        let mut stages = lock(&self.stages);
        if let Some(h) = stages.get_mut(&Stage::Queue) {
            for w in &pass.waits {
                h.observe(w.as_secs_f64());
            }
        }
        if let Some(h) = stages.get_mut(&Stage::Inference) {
            for _ in 0..pass.size {
                h.observe(pass.ran.as_secs_f64());
            }
        }
    }

    /// Set the queue depth of `model` (for an engine that knows its queue length).
    pub fn set_queue_depth(&self, model: &str, depth: i64) {
        lock(&self.queue_depth).insert(model.to_string(), depth);
    }

    /// Count one call as queued on `model` until the guard is dropped.
    pub fn queued(self: &Arc<Self>, model: &str) -> QueueGuard {
        *lock(&self.queue_depth)
            .entry(model.to_string())
            .or_insert(0) += 1;
        QueueGuard {
            metrics: Arc::clone(self),
            model: model.to_string(),
        }
    }

    pub fn credits_debited(&self, credits: i64) {
        self.credits_debited
            .fetch_add(credits.max(0) as u64, Ordering::Relaxed);
    }

    pub fn credits_refunded(&self, credits: i64) {
        self.credits_refunded
            .fetch_add(credits.max(0) as u64, Ordering::Relaxed);
    }

    /// Open reservations the reaper refunded (left by a process that died mid-call).
    pub fn reservations_reaped(&self, n: u64) {
        self.reservations_reaped.fetch_add(n, Ordering::Relaxed);
    }

    /// The whole registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP glimpse_http_requests_total HTTP requests answered, by route template, method and status.\n# TYPE glimpse_http_requests_total counter\n");
        for ((route, method, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "glimpse_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                esc(route),
                esc(method)
            );
        }
        out.push_str("# HELP glimpse_http_request_duration_seconds Time from request to response headers, by route template.\n# TYPE glimpse_http_request_duration_seconds histogram\n");
        for (route, h) in lock(&self.durations).iter() {
            let labels = format!("route=\"{}\",", esc(route));
            h.render(&mut out, "glimpse_http_request_duration_seconds", &labels);
        }
        let _ = writeln!(
            out,
            "# HELP glimpse_inflight_requests HTTP requests being handled now.\n# TYPE glimpse_inflight_requests gauge\nglimpse_inflight_requests {}",
            self.inflight.load(Ordering::Relaxed)
        );
        out.push_str("# HELP glimpse_queue_depth Classification calls waiting for or holding an inference slot, by model.\n# TYPE glimpse_queue_depth gauge\n");
        for (model, n) in lock(&self.queue_depth).iter() {
            let _ = writeln!(out, "glimpse_queue_depth{{model=\"{}\"}} {n}", esc(model));
        }
        out.push_str("# HELP glimpse_batch_size Images per forward pass.\n# TYPE glimpse_batch_size histogram\n");
        lock(&self.batch_size).render(&mut out, "glimpse_batch_size", "");
        out.push_str("# HELP glimpse_stage_duration_seconds Time spent in each step of a classification call.\n# TYPE glimpse_stage_duration_seconds histogram\n");
        for (stage, h) in lock(&self.stages).iter() {
            let labels = format!("stage=\"{}\",", stage.as_str());
            h.render(&mut out, "glimpse_stage_duration_seconds", &labels);
        }
        let _ = writeln!(
            out,
            "# HELP glimpse_credits_debited_total Credits taken for classification calls.\n# TYPE glimpse_credits_debited_total counter\nglimpse_credits_debited_total {}",
            self.credits_debited.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP glimpse_credits_refunded_total Credits given back after a server-side failure.\n# TYPE glimpse_credits_refunded_total counter\nglimpse_credits_refunded_total {}",
            self.credits_refunded.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP glimpse_reservations_reaped_total Open reservations refunded by the stale-reservation reaper.\n# TYPE glimpse_reservations_reaped_total counter\nglimpse_reservations_reaped_total {}",
            self.reservations_reaped.load(Ordering::Relaxed)
        );
        out
    }
}

/// Await `f`, recording how long it took as `stage` (a one-line wrap at each call site).
pub async fn timed<F: std::future::Future>(metrics: &Metrics, stage: Stage, f: F) -> F::Output {
    let started = Instant::now();
    let out = f.await;
    metrics.observe_stage(stage, started.elapsed());
    out
}

/// Decrements the model's queue depth when dropped (whatever way the call ends).
#[derive(Debug)]
pub struct QueueGuard {
    metrics: Arc<Metrics>,
    model: String,
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.metrics.queue_depth).get_mut(&self.model) {
            *n -= 1;
        }
    }
}

/// Keeps `glimpse_inflight_requests` right when a request future is dropped mid-way.
struct InflightGuard(Arc<Metrics>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Middleware (on `Router::layer`, so every route and the fallback): counts and times requests
/// by matched route template.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_string());
    let method = method_label(req.method());
    let metrics = Arc::clone(&state.metrics);
    metrics.inflight.fetch_add(1, Ordering::Relaxed);
    let _guard = InflightGuard(Arc::clone(&metrics));
    let started = Instant::now();
    let res = next.run(req).await;
    metrics.observe_request(&route, method, res.status().as_u16(), started.elapsed());
    res
}

/// The method label: the standard methods by name, anything else (hyper accepts any token as a
/// method, up to the header size limit) as `other`, so the label set stays bounded.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => OTHER_METHOD,
    }
}

/// `GET /metrics`.
pub async fn scrape(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render() + &decode_gauges(&state.decoder),
    )
        .into_response()
}

/// The decode memory budget and what of it is admitted now.
fn decode_gauges(d: &crate::decode::DecodeGate) -> String {
    format!(
        "# HELP glimpse_decode_memory_bytes Memory admitted to image decodes running now (their header-computed peak).\n\
         # TYPE glimpse_decode_memory_bytes gauge\nglimpse_decode_memory_bytes {}\n\
         # HELP glimpse_decode_memory_budget_bytes GLIMPSE_DECODE_MEMORY_MB: the most all decodes together may hold.\n\
         # TYPE glimpse_decode_memory_budget_bytes gauge\nglimpse_decode_memory_budget_bytes {}\n",
        d.memory_in_use(),
        d.memory_budget()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.5, 1.5, 9.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\",");
        assert!(out.contains("x_bucket{a=\"b\",le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"2\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_sum{a=\"b\"} 12.5\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 4\n"), "{out}");
    }

    #[test]
    fn queue_guard_decrements() {
        let m = Arc::new(Metrics::default());
        let g = m.queued("clip");
        let _h = m.queued("clip");
        assert!(m
            .render()
            .contains("glimpse_queue_depth{model=\"clip\"} 2\n"));
        drop(g);
        assert!(m
            .render()
            .contains("glimpse_queue_depth{model=\"clip\"} 1\n"));
    }

    #[test]
    fn unknown_methods_are_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        for m in ["FOO", "get", "PROPFIND"] {
            assert_eq!(
                method_label(&Method::from_bytes(m.as_bytes()).unwrap()),
                "other"
            );
        }
    }

    #[test]
    fn labels_are_escaped() {
        let m = Metrics::default();
        m.observe_request("/a\"b", "GET", 200, Duration::from_millis(1));
        let out = m.render();
        assert!(
            out.contains("route=\"/a\\\"b\",method=\"GET\",status=\"200\"} 1"),
            "{out}"
        );
    }
}
