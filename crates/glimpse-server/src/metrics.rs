//! `/metrics` in the Prometheus text format (version 0.0.4), through the `metrics` facade and
//! `metrics-exporter-prometheus`.
//!
//! No global recorder: each `AppState` holds its own [`Metrics`] with its own
//! [`PrometheusRecorder`], so tests running several servers in one process do not mix counts.
//! The unlabelled series are registered once, here, and kept as handles; the labelled ones (by
//! route, by model) are looked up in this recorder's registry when recorded.
//!
//! Handlers and the batching engine record through the `pub fn`s on [`Metrics`]
//! (`state.metrics.observe_stage(Stage::Fetch, elapsed)`, `metrics.observe_pass(&report)`…).
//! This module uses no other module of the crate: the router installs [`track`] with the
//! `Arc<Metrics>` as its state and serves the scrape (it also reads the decode gauges then).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ::metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
    with_local_recorder, Counter, Gauge, Histogram,
};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use glimpse_core::batcher::PassReport;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

// The exported names: dashboards and alerts (docs/OPERATIONS.md) depend on them.
const REQUESTS: &str = "glimpse_http_requests_total";
const REQUEST_DURATION: &str = "glimpse_http_request_duration_seconds";
const INFLIGHT: &str = "glimpse_inflight_requests";
const QUEUE_DEPTH: &str = "glimpse_queue_depth";
const BATCH_SIZE: &str = "glimpse_batch_size";
const STAGE_DURATION: &str = "glimpse_stage_duration_seconds";
const CREDITS_DEBITED: &str = "glimpse_credits_debited_total";
const CREDITS_REFUNDED: &str = "glimpse_credits_refunded_total";
const RESERVATIONS_REAPED: &str = "glimpse_reservations_reaped_total";
const DECODE_MEMORY: &str = "glimpse_decode_memory_bytes";
const DECODE_BUDGET: &str = "glimpse_decode_memory_budget_bytes";
const PROMPT_CACHE_ENTRIES: &str = "glimpse_prompt_cache_entries";
const PROMPT_CACHE_BYTES: &str = "glimpse_prompt_cache_bytes";
const PROMPT_CACHE_MISSES: &str = "glimpse_prompt_cache_misses_total";
const MODEL_RESIDENT: &str = "glimpse_model_resident_bytes";
const PROCESS_RESIDENT: &str = "glimpse_process_resident_bytes";

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
    /// In declaration order, so `stage as usize` indexes it.
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

/// Every series the server exports. Cheap to share (`Arc<Metrics>` in the state).
#[derive(Debug)]
pub struct Metrics {
    recorder: PrometheusRecorder,
    inflight: Gauge,
    batch_size: Histogram,
    /// By `Stage as usize`. Like every series registered here, exported from the start, at 0.
    stages: [Histogram; 5],
    credits_debited: Counter,
    credits_refunded: Counter,
    reservations_reaped: Counter,
    decode_memory: Gauge,
    decode_budget: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let with_buckets = |b: PrometheusBuilder, name: &str, buckets| {
            b.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
        };
        // Without buckets the exporter would write these as summaries (quantiles).
        let recorder = with_buckets(PrometheusBuilder::new(), REQUEST_DURATION, LATENCY_BUCKETS)
            .and_then(|b| with_buckets(b, STAGE_DURATION, LATENCY_BUCKETS))
            .and_then(|b| with_buckets(b, BATCH_SIZE, BATCH_BUCKETS))
            .expect("the bucket lists are not empty")
            .build_recorder();
        with_local_recorder(&recorder, || {
            describe_counter!(
                REQUESTS,
                "HTTP requests answered, by route template, method and status."
            );
            describe_histogram!(
                REQUEST_DURATION,
                "Time from request to response headers, by route template."
            );
            describe_gauge!(INFLIGHT, "HTTP requests being handled now.");
            describe_gauge!(
                QUEUE_DEPTH,
                "Classification calls waiting for or holding an inference slot, by model."
            );
            describe_histogram!(BATCH_SIZE, "Images per forward pass.");
            describe_histogram!(
                STAGE_DURATION,
                "Time spent in each step of a classification call."
            );
            describe_counter!(CREDITS_DEBITED, "Credits taken for classification calls.");
            describe_counter!(
                CREDITS_REFUNDED,
                "Credits given back after a server-side failure."
            );
            describe_counter!(
                RESERVATIONS_REAPED,
                "Open reservations refunded by the stale-reservation reaper."
            );
            describe_gauge!(
                DECODE_MEMORY,
                "Memory admitted to image decodes running now (their header-computed peak)."
            );
            describe_gauge!(
                DECODE_BUDGET,
                "GLIMPSE_DECODE_MEMORY_MB: the most all decodes together may hold."
            );
            describe_gauge!(
                PROMPT_CACHE_ENTRIES,
                "Prompt embeddings a zero-shot model's cache holds, by model."
            );
            describe_gauge!(
                PROMPT_CACHE_BYTES,
                "Estimated bytes of a zero-shot model's prompt cache (floats x 4 + prompt bytes)."
            );
            describe_counter!(
                PROMPT_CACHE_MISSES,
                "Prompts a zero-shot model's text tower embedded (prompt-cache misses), by model."
            );
            describe_gauge!(
                MODEL_RESIDENT,
                "Resident memory the process gained loading and warming up each model, by model."
            );
            describe_gauge!(
                PROCESS_RESIDENT,
                "Resident memory of the whole process (RSS)."
            );
        });
        let (inflight, decode_memory, decode_budget) = with_local_recorder(&recorder, || {
            (
                gauge!(INFLIGHT),
                gauge!(DECODE_MEMORY),
                gauge!(DECODE_BUDGET),
            )
        });
        let (batch_size, stages) = with_local_recorder(&recorder, || {
            let stages = Stage::ALL.map(|s| histogram!(STAGE_DURATION, "stage" => s.as_str()));
            (histogram!(BATCH_SIZE), stages)
        });
        let (credits_debited, credits_refunded, reservations_reaped) =
            with_local_recorder(&recorder, || {
                (
                    counter!(CREDITS_DEBITED),
                    counter!(CREDITS_REFUNDED),
                    counter!(RESERVATIONS_REAPED),
                )
            });
        Metrics {
            recorder,
            inflight,
            batch_size,
            stages,
            credits_debited,
            credits_refunded,
            reservations_reaped,
            decode_memory,
            decode_budget,
        }
    }
}

impl Metrics {
    /// Runs `f` with this server's recorder behind the `metrics` macros (on this thread only).
    fn local<T>(&self, f: impl FnOnce() -> T) -> T {
        with_local_recorder(&self.recorder, f)
    }

    /// One finished HTTP request.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.local(|| {
            counter!(REQUESTS,
                "route" => route.to_owned(),
                "method" => method.to_owned(),
                "status" => status.to_string())
            .increment(1);
            histogram!(REQUEST_DURATION, "route" => route.to_owned()).record(elapsed);
        });
    }

    pub fn observe_stage(&self, stage: Stage, elapsed: Duration) {
        self.stages[stage as usize].record(elapsed);
    }

    /// One forward pass (the batching engine calls this once per batch): its size, and each
    /// call's queue wait and pass time as stages.
    pub fn observe_pass(&self, pass: &PassReport) {
        self.batch_size.record(pass.size as f64);
        for w in &pass.waits {
            self.observe_stage(Stage::Queue, *w);
        }
        self.stages[Stage::Inference as usize].record_many(pass.ran, pass.size);
    }

    /// Count one call as queued on `model` until the guard is dropped.
    pub fn queued(&self, model: &str) -> QueueGuard {
        let depth = self.queue_depth(model);
        depth.increment(1.0);
        QueueGuard(depth)
    }

    fn queue_depth(&self, model: &str) -> Gauge {
        self.local(|| gauge!(QUEUE_DEPTH, "model" => model.to_owned()))
    }

    pub fn credits_debited(&self, credits: i64) {
        self.credits_debited.increment(credits.max(0) as u64);
    }

    pub fn credits_refunded(&self, credits: i64) {
        self.credits_refunded.increment(credits.max(0) as u64);
    }

    /// Open reservations the reaper refunded (left by a process that died mid-call).
    pub fn reservations_reaped(&self, n: u64) {
        self.reservations_reaped.increment(n);
    }

    /// The decode gate's admitted bytes and budget; the scrape handler sets them just before
    /// rendering, as the gate keeps the live numbers.
    pub fn set_decode_memory(&self, in_use: u64, budget: u64) {
        self.decode_memory.set(in_use as f64);
        self.decode_budget.set(budget as f64);
    }

    /// One zero-shot model's prompt cache; the scrape handler sets them just before rendering,
    /// as each model's cache keeps the live numbers.
    pub fn set_prompt_cache(&self, model: &str, stats: glimpse_core::PromptCacheStats) {
        self.local(|| {
            gauge!(PROMPT_CACHE_ENTRIES, "model" => model.to_owned()).set(stats.entries as f64);
            gauge!(PROMPT_CACHE_BYTES, "model" => model.to_owned()).set(stats.bytes as f64);
            counter!(PROMPT_CACHE_MISSES, "model" => model.to_owned()).absolute(stats.misses);
        });
    }

    /// What loading each model added to the resident set, and the process's resident set now
    /// (set by the scrape handler just before rendering).
    pub fn set_memory(&self, models: &[(&str, u64)], process: Option<u64>) {
        self.local(|| {
            for (model, bytes) in models {
                gauge!(MODEL_RESIDENT, "model" => model.to_string()).set(*bytes as f64);
            }
            if let Some(rss) = process {
                gauge!(PROCESS_RESIDENT).set(rss as f64);
            }
        });
    }

    /// The whole registry in the Prometheus text format.
    pub fn render(&self) -> String {
        self.recorder.handle().render()
    }

    /// The `GET /metrics` answer: [`render`](Self::render) with its content type.
    pub fn scrape(&self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            self.render(),
        )
            .into_response()
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
pub struct QueueGuard(Gauge);

impl Drop for QueueGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Keeps `glimpse_inflight_requests` right when a request future is dropped mid-way.
struct InflightGuard(Gauge);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Middleware (on `Router::layer`, so every route and the fallback): counts and times requests
/// by matched route template.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_string());
    let method = method_label(req.method());
    metrics.inflight.increment(1.0);
    let _guard = InflightGuard(metrics.inflight.clone());
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

/// Hands the heap's free pages back to the kernel (glibc's `malloc_trim(0)`; elsewhere a no-op).
///
/// Loading a model reads every weight as f32, converts it to the precision it runs at and frees
/// the f32 copies: glibc keeps those freed pages (the arenas' free chunks below the top, and the
/// dynamic mmap threshold moves large blocks onto the heap), so without this the process keeps
/// the f32 model's footprint behind int8 or bf16 weights (measured with the default two real-size
/// models in int8: 837 MB resident after load, 481 MB after the trim).
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The process's resident set size in bytes (Linux: `/proc/self/statm`; elsewhere `None`).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

#[cfg(unix)]
fn page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

#[cfg(not(unix))]
fn page_size() -> u64 {
    4096
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each `# TYPE` line of a scrape, as `name → type`.
    fn types(text: &str) -> Vec<(String, String)> {
        let mut out: Vec<_> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn every_series_is_exported_with_its_type() {
        let m = Metrics::default();
        m.observe_request("/healthz", "GET", 200, Duration::from_millis(1));
        let _q = m.queued("clip");
        m.set_prompt_cache("clip", glimpse_core::PromptCacheStats::default());
        m.set_memory(&[("clip", 1)], Some(2));
        let out = m.render();
        let want = [
            (REQUEST_DURATION, "histogram"),
            (REQUESTS, "counter"),
            (BATCH_SIZE, "histogram"),
            (CREDITS_DEBITED, "counter"),
            (CREDITS_REFUNDED, "counter"),
            (DECODE_BUDGET, "gauge"),
            (DECODE_MEMORY, "gauge"),
            (INFLIGHT, "gauge"),
            (QUEUE_DEPTH, "gauge"),
            (PROMPT_CACHE_BYTES, "gauge"),
            (PROMPT_CACHE_ENTRIES, "gauge"),
            (PROMPT_CACHE_MISSES, "counter"),
            (MODEL_RESIDENT, "gauge"),
            (PROCESS_RESIDENT, "gauge"),
            (RESERVATIONS_REAPED, "counter"),
            (STAGE_DURATION, "histogram"),
        ];
        let mut want: Vec<_> = want
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        want.sort();
        assert_eq!(types(&out), want, "{out}");
        assert!(
            out.contains("# HELP glimpse_batch_size Images per forward pass.\n"),
            "{out}"
        );
        for line in [
            "glimpse_credits_debited_total 0\n",
            "glimpse_inflight_requests 0\n",
        ] {
            assert!(out.contains(line), "{line:?} in {out}");
        }
        for s in Stage::ALL {
            let line = format!(
                "glimpse_stage_duration_seconds_count{{stage=\"{}\"}} 0\n",
                s.as_str()
            );
            assert!(out.contains(&line), "{line:?} in {out}");
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        for ms in [0.5, 2.0, 2.0, 60_000.0] {
            m.observe_stage(Stage::Fetch, Duration::from_secs_f64(ms / 1000.0));
        }
        let out = m.render();
        let bucket = |le: &str, n: u64| {
            format!("glimpse_stage_duration_seconds_bucket{{stage=\"fetch\",le=\"{le}\"}} {n}\n")
        };
        for line in [
            bucket("0.001", 1),
            bucket("0.0025", 3),
            bucket("30", 3),
            bucket("+Inf", 4),
            "glimpse_stage_duration_seconds_count{stage=\"fetch\"} 4\n".into(),
        ] {
            assert!(out.contains(&line), "{line:?} in {out}");
        }
    }

    #[test]
    fn a_pass_counts_its_size_and_each_call() {
        let m = Metrics::default();
        m.observe_pass(&PassReport {
            size: 3,
            waits: vec![Duration::from_millis(1); 3],
            ran: Duration::from_millis(20),
        });
        let out = m.render();
        for line in [
            "glimpse_batch_size_bucket{le=\"2\"} 0\n",
            "glimpse_batch_size_bucket{le=\"4\"} 1\n",
            "glimpse_batch_size_sum 3\n",
            "glimpse_batch_size_count 1\n",
            "glimpse_stage_duration_seconds_count{stage=\"queue\"} 3\n",
            "glimpse_stage_duration_seconds_count{stage=\"inference\"} 3\n",
        ] {
            assert!(out.contains(line), "{line:?} in {out}");
        }
    }

    #[test]
    fn servers_do_not_share_counts() {
        let (a, b) = (Metrics::default(), Metrics::default());
        a.credits_debited(3);
        a.set_decode_memory(5, 1 << 20);
        assert!(a.render().contains("glimpse_credits_debited_total 3\n"));
        assert!(a
            .render()
            .contains("glimpse_decode_memory_budget_bytes 1048576\n"));
        assert!(b.render().contains("glimpse_credits_debited_total 0\n"));
        assert!(b.render().contains("glimpse_decode_memory_bytes 0\n"));
    }

    #[test]
    fn queue_guard_decrements() {
        let m = Metrics::default();
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
