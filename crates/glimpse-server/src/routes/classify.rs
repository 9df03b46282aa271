//! `GET|POST /api/image-classification/{clip,vit}`: the walk of a classification call.
//!
//! key (401) → read and validate input (400, free) → idempotency claim → balance check (402,
//! before any URL is fetched) → bytes (upload or fetcher) → decode + preprocess on the blocking
//! pool under a time limit (400 for bad images, free) → debit (402) → forward pass through the
//! model's batching queue → settle, retried while the store fails, before the 200 leaves (a 200
//! is never sent uncharged); a server-side failure after the debit (500, or 503 when the queue
//! is full or the settle never commits) refunds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use glimpse_core::backend::PixelBatch;
use glimpse_core::batcher::{Incoming, ModelJob};
use glimpse_core::decision::{Decision, RawDecision};
use glimpse_core::prototypes::{score, Prototype};
use glimpse_core::registry::Slot;
use glimpse_core::response::ClassificationResponse;
use glimpse_core::{Answer, Task};
use glimpse_store::{Classifier, DebitRequest, IdempotencyClaim, StoreError};
use tracing::Instrument;

use super::input::{read_input, FormLimits, RawInput};
use super::items::{self, ImageRef};
use crate::auth::{add_credits_header, set_credits_header, ApiKey};
use crate::batch::submit;
use crate::error::{ApiError, ErrorCode};
use crate::metrics::{timed, Stage};
use crate::state::AppState;

pub async fn clip(State(state): State<AppState>, key: ApiKey, req: Request) -> Response {
    classify(Task::ZeroShot, state, key, req).await
}

pub async fn vit(State(state): State<AppState>, key: ApiKey, req: Request) -> Response {
    classify(Task::Classify, state, key, req).await
}

/// A validated call, ready to run.
struct Plan {
    model: Arc<Slot>,
    /// The image's labels (zero-shot models; empty for classifiers).
    labels: Vec<String>,
    /// What to make of the scores (`minConfidence`, `fallback`, `topK`, `multiLabel`).
    decision: Decision,
    /// `?classifier=NAME`: the saved classifier's labels and prototypes, scored instead of
    /// `labels` (no text-encoder call).
    saved: Option<Vec<(String, Vec<f32>)>>,
    source: Source,
    /// The call announced to its endpoint's default model from its arrival (see `classify`).
    early: Option<Incoming>,
    /// The key's balance was checked on arrival (every call but an idempotent replay's), so an
    /// upload need not read it again: the debit itself refuses a key that ran short since.
    funds_checked: bool,
}

enum Source {
    Upload(Vec<u8>),
    Url(String),
}

/// What a finished call answers: status, JSON body (stored verbatim for idempotent replays) and
/// the balance after it.
pub(super) struct Outcome {
    pub status: StatusCode,
    pub body: String,
    pub balance: Option<i64>,
}

async fn classify(task: Task, state: AppState, key: ApiKey, req: Request) -> Response {
    let started = Instant::now();
    // axum answers HEAD with the GET handler; a HEAD must not run (and charge) a classification.
    if req.method() == axum::http::Method::HEAD {
        let e = ApiError::new(ErrorCode::MethodNotAllowed, "use GET or POST");
        return with_balance(&state, &key, e.into_response()).await;
    }
    let idem = match idempotency_key(req.headers()) {
        Ok(k) => k,
        Err(e) => return with_balance(&state, &key, e.into_response()).await,
    };
    // A key that cannot pay is answered before its body is read, so it cannot hold in-flight
    // slots by dripping uploads. Only an Idempotency-Key this key already used (whose stored
    // answer must replay whatever the balance is now) waits for the body (`run` checks again).
    let replay = match &idem {
        Some(ik) => match state.store.idempotency_known(&key.id, ik).await {
            Ok(known) => known,
            Err(e) => return own_key_error(e).into_response(),
        },
        None => false,
    };
    if !replay {
        match state.store.balance(&key.id).await {
            Ok(b) if b < state.settings.credits_per_call => {
                let mut res = ApiError::insufficient_credits().into_response();
                set_credits_header(res.headers_mut(), b);
                return res;
            }
            Ok(_) => {}
            Err(e) => return own_key_error(e).into_response(),
        }
    }
    // A task whose default model is set empty is turned off on this server.
    let Some(default) = state.models.default_for(task) else {
        let e = ApiError::not_found(format!(
            "the {} endpoint is turned off on this server ({} is empty)",
            task.title(),
            task.model_var()
        ));
        return with_balance(&state, &key, e.into_response()).await;
    };
    // Announced from arrival, while the body is still being read, so a batch about to start
    // waits (up to the window) for the calls right behind it; `run` hands over to the chosen
    // model's own announcement.
    let early = Some(default.batcher.announce());
    let limits = FormLimits::single(state.settings.max_upload_bytes);
    let planned = match read_input(req, &state, task.model_param(), limits).await {
        Ok(input) => match saved_classifier(task, &state, &key, &input).await {
            Ok(saved) => validate(task, &state, input, saved),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let (mut plan, fingerprint) = match planned {
        Ok(p) => p,
        Err(e) => return with_balance(&state, &key, e.into_response()).await,
    };
    plan.early = early;
    plan.funds_checked = !replay;
    // The rest runs in its own task: a client hanging up must not cancel it between the debit
    // and its settle/refund, nor leave an idempotency claim half-written.
    let task_state = state.clone();
    let task_key = key.clone();
    let task = tokio::spawn(
        async move {
            let run = run(&task_state, &task_key, plan, started);
            run_claimed(&task_state, &task_key, idem, fingerprint, run).await
        }
        .in_current_span(),
    );
    respond(&state, &key, task.await).await
}

/// The response of a call that ran in its own task: its outcome with `X-Credits-Remaining`, or
/// its error.
pub(super) async fn respond(
    state: &AppState,
    key: &ApiKey,
    joined: Result<Result<Outcome, ApiError>, tokio::task::JoinError>,
) -> Response {
    let outcome = match joined {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return with_balance(state, key, e.into_response()).await,
        Err(join) => {
            let e = ApiError::internal(format!("request task failed: {join}"));
            return with_balance(state, key, e.into_response()).await;
        }
    };
    let mut res = (
        outcome.status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        outcome.body,
    )
        .into_response();
    match outcome.balance {
        Some(b) => set_credits_header(res.headers_mut(), b),
        None => add_credits_header(state, key, res.headers_mut()).await,
    }
    res
}

pub(super) async fn with_balance(state: &AppState, key: &ApiKey, mut res: Response) -> Response {
    add_credits_header(state, key, res.headers_mut()).await;
    res
}

/// `Idempotency-Key`: optional, 1 to 255 visible ASCII characters.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::validation("Idempotency-Key must be 1 to 255 visible ASCII characters")
        })?;
    Ok(Some(s.to_string()))
}

/// `?classifier=NAME`: the caller's own saved classifier (another key's is a 404 like a missing
/// one); only on the zero-shot endpoint, never with `labels`.
async fn saved_classifier(
    task: Task,
    state: &AppState,
    key: &ApiKey,
    input: &RawInput,
) -> Result<Option<Classifier>, ApiError> {
    let Some(name) = input.classifier.as_deref().map(str::trim) else {
        return Ok(None);
    };
    if task != Task::ZeroShot {
        return Err(ApiError::validation(
            "classifier is a saved CLIP classifier: use it on /api/image-classification/clip",
        ));
    }
    if input.labels.is_some() {
        return Err(ApiError::validation(
            "send either labels or classifier, not both: a saved classifier has its own labels",
        ));
    }
    super::classifiers::find(state, key, name).await.map(Some)
}

fn validate(
    task: Task,
    state: &AppState,
    input: RawInput,
    saved: Option<Classifier>,
) -> Result<(Plan, String), ApiError> {
    if let Some(c) = &saved {
        let asked = input
            .model
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty());
        if asked.is_some_and(|m| m != c.spec.model) {
            return Err(ApiError::validation(format!(
                "classifier '{}' was made with model '{}'; leave {} out or name that model",
                c.spec.name,
                c.spec.model,
                task.model_param()
            )));
        }
    }
    let requested = match &saved {
        Some(c) => Some(c.spec.model.as_str()),
        None => input.model.as_deref(),
    };
    let model = state
        .models
        .pick(task, requested)
        .map_err(|e| match &saved {
            Some(c) => ApiError::validation(format!(
                "classifier '{}' was made with model '{}', which this server does not serve",
                c.spec.name, c.spec.model
            )),
            None => ApiError::validation(e.to_string()),
        })?
        .cloned()
        .ok_or_else(|| ApiError::internal("the endpoint's task has no model"))?;
    let (labels, decision, saved) = match saved {
        None => {
            let decision = Decision::parse(input.decision())?;
            decision.check_model(model.model.id(), model.model.independent_scores())?;
            (task.labels(input.labels.as_deref())?, decision, None)
        }
        Some(c) => {
            // The classifier's own decision fields are the defaults; the request's win.
            let min = c.spec.min_confidence.map(|v| v.to_string());
            let multi = c.spec.multi_label.to_string();
            let raw = input.decision();
            let decision = Decision::parse(RawDecision {
                min_confidence: raw.min_confidence.or(min.as_deref()),
                fallback: raw.fallback.or(c.spec.fallback.as_deref()),
                top_k: raw.top_k,
                multi_label: raw.multi_label.or(Some(multi.as_str())),
            })?;
            // Cosine scores against stored prototypes are independent per label.
            decision.check_model(model.model.id(), true)?;
            let labels: Vec<String> = c.spec.labels.iter().map(|l| l.name.clone()).collect();
            let protos = c
                .spec
                .labels
                .into_iter()
                .map(|l| (l.name, l.embedding))
                .collect();
            (labels, decision, Some(protos))
        }
    };
    let source = match (input.upload, input.url) {
        (Some(bytes), _) if bytes.is_empty() => {
            return Err(ApiError::validation("the uploaded image is empty"))
        }
        (Some(bytes), _) => Source::Upload(bytes),
        (None, Some(url)) => Source::Url(check_url_shape(&url)?),
        (None, None) => {
            return Err(ApiError::validation(
                "no image: upload a multipart/form-data field 'image' or pass ?url=",
            ))
        }
    };
    Ok((
        Plan {
            model,
            labels,
            decision,
            saved,
            source,
            early: None,
            funds_checked: false,
        },
        input.fingerprint,
    ))
}

/// Syntax only (absolute http/https URL, no credentials); the fetcher does the address checks.
pub(crate) fn check_url_shape(raw: &str) -> Result<String, ApiError> {
    let raw = raw.trim();
    let url = url::Url::parse(raw)
        .map_err(|_| ApiError::validation("url is not a valid absolute URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::validation("url must use http or https"));
    }
    if url.host().is_none() {
        return Err(ApiError::validation("url has no host"));
    }
    Ok(raw.to_string())
}

/// Run `work` under the request's `Idempotency-Key` (if any): a replay answers the stored
/// outcome, a key still running or reused with another request is refused, and `work`'s own
/// outcome is stored when the same request would get it again.
pub(super) async fn run_claimed(
    state: &AppState,
    key: &ApiKey,
    idem: Option<String>,
    fingerprint: String,
    work: impl std::future::Future<Output = Result<Outcome, ApiError>>,
) -> Result<Outcome, ApiError> {
    let Some(ik) = idem else {
        return work.await;
    };
    match state
        .store
        .idempotency_claim(&key.id, &ik, &fingerprint)
        .await?
    {
        IdempotencyClaim::New => {}
        IdempotencyClaim::Completed { status, body } => {
            return Ok(Outcome {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                body,
                balance: None,
            })
        }
        IdempotencyClaim::InProgress => {
            return Err(ApiError::new(
                ErrorCode::IdempotencyInProgress,
                "a request with this Idempotency-Key is still running",
            ))
        }
        IdempotencyClaim::Mismatch => {
            return Err(ApiError::new(
                ErrorCode::IdempotencyMismatch,
                "this Idempotency-Key was used with a different request",
            ))
        }
        IdempotencyClaim::LimitReached => {
            return Err(ApiError {
                retry_after: Some(60),
                ..ApiError::new(
                    ErrorCode::RateLimited,
                    "this API key holds the most stored Idempotency-Key answers allowed \
                     (GLIMPSE_IDEMPOTENCY_MAX_PER_KEY); retry later, when older ones expire, \
                     or without an Idempotency-Key",
                )
            })
        }
    }
    let result = work.await;
    // Stored: the success and a bad image (the same request would fail the same way). Not
    // stored, so a retry can succeed: 402 (top up and retry), 5xx, 503, and any transient
    // failure (a fetch that timed out, could not connect or met an upstream error; a decode
    // over the time limit).
    let stored = match &result {
        Ok(o) => Some((o.status.as_u16(), o.body.clone())),
        Err(e)
            if !e.transient
                && (e.code == ErrorCode::Validation || e.code == ErrorCode::PayloadTooLarge) =>
        {
            Some((
                e.status().as_u16(),
                serde_json::to_string(&e.body()).unwrap_or_default(),
            ))
        }
        Err(_) => None,
    };
    let write = match stored {
        Some((status, body)) => {
            state
                .store
                .idempotency_complete(&key.id, &ik, status, &body)
                .await
        }
        None => state.store.idempotency_abort(&key.id, &ik).await,
    };
    if let Err(e) = write {
        tracing::error!(error = %e, "could not record the idempotency outcome");
    }
    result
}

async fn run(
    state: &AppState,
    key: &ApiKey,
    plan: Plan,
    started: Instant,
) -> Result<Outcome, ApiError> {
    let cost = state.settings.credits_per_call;
    // Before any fetch: a key with no credits must not get a free URL fetcher.
    let from_url = matches!(plan.source, Source::Url(_));
    if (from_url || !plan.funds_checked)
        && state.store.balance(&key.id).await.map_err(own_key_error)? < cost
    {
        return Err(ApiError::insufficient_credits());
    }
    let mut early = plan.early;
    let bytes = match plan.source {
        Source::Upload(b) => b,
        Source::Url(u) => {
            // A fetch can take seconds: no batch should wait for it.
            drop(early.take());
            items::bytes_of(state, key, ImageRef::Url(u)).await?
        }
    };
    let slot = plan.model;
    let preprocess = slot.model.preprocess_config().clone();
    let model_id = slot.model.id().to_string();
    let _queued = state.metrics.queued(&model_id);
    // From here the model's batcher counts this call as on its way (see `wait_for_announced`).
    let incoming = slot.batcher.announce();
    drop(early);
    let pixels = items::decode(state, key, from_url, bytes, preprocess).await?;
    let debit = timed(
        &state.metrics,
        Stage::Ledger,
        state.store.debit(&DebitRequest {
            key_id: key.id.clone(),
            cost,
            endpoint: slot.model.task().endpoint().to_string(),
            model: model_id,
        }),
    )
    .await
    .map_err(own_key_error)?;
    state.metrics.credits_debited(cost);
    let answer = match &plan.saved {
        Some(protos) => infer_saved(&slot, pixels, protos, incoming).await,
        None => infer(&slot, pixels, plan.labels, incoming).await,
    };
    let ms = started.elapsed().as_secs_f64() * 1e3;
    match answer.and_then(|mut r| {
        plan.decision.apply(&mut r);
        r.set_timing_ms(ms);
        serde_json::to_string(&r).map_err(ApiError::internal)
    }) {
        Ok(body) => {
            // A 200 leaves only once its charge is committed: an open reservation is the
            // reaper's to refund, so an answer sent before its settle commits could be free.
            let settled = match settle(state, &debit.id, ms).await {
                Ok(()) => Ok(()),
                // Its last try may have committed unheard: then the answer stands.
                Err(e) => match state.store.reservation(&debit.id).await {
                    Ok(r) if r.state == "settled" => Ok(()),
                    _ => Err(e),
                },
            };
            if let Err(e) = settled {
                tracing::error!(error = %e, debit = %debit.id, "settle failed for good; answering 503");
                let refund = state.store.refund(&debit.id, 503, ms);
                match timed(&state.metrics, Stage::Ledger, refund).await {
                    Ok(_) => state.metrics.credits_refunded(cost),
                    Err(re) => {
                        tracing::error!(error = %re, debit = %debit.id, "refund failed; the reaper will retry")
                    }
                }
                return Err(ApiError::overloaded(
                    "the key store is unavailable; the call was not charged, retry later",
                    1,
                ));
            }
            Ok(Outcome {
                status: StatusCode::OK,
                body,
                balance: Some(debit.balance),
            })
        }
        Err(e) => {
            let refund = state.store.refund(&debit.id, e.status().as_u16(), ms);
            if let Err(re) = timed(&state.metrics, Stage::Ledger, refund).await {
                tracing::error!(error = %re, debit = %debit.id, "refund failed; the reaper will retry");
            } else {
                state.metrics.credits_refunded(cost);
            }
            Err(e)
        }
    }
}

/// A store error about the caller's own key. The key was valid when authenticated (perhaps from
/// the few-second authentication cache); "not found" now means it was revoked or deleted since,
/// which is the same 401 as any bad key, never a 404.
pub(crate) fn own_key_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(_) => ApiError::unauthorized(),
        other => ApiError::from(other),
    }
}

/// Settles a served call, retrying while the store fails for up to `settle_retry` (a write
/// lock held by another process, a database connection that died): 50 ms, doubling to 1 s.
/// `Ok` once the reservation is settled (a settle that committed unheard is found by the next
/// try: settling a settled reservation is a no-op).
pub(crate) async fn settle(state: &AppState, debit_id: &str, ms: f64) -> Result<(), StoreError> {
    let deadline = Instant::now() + state.settings.settle_retry;
    let mut pause = Duration::from_millis(50);
    loop {
        let settle = state.store.settle(debit_id, 200, ms);
        match timed(&state.metrics, Stage::Ledger, settle).await {
            Ok(()) => return Ok(()),
            Err(e @ StoreError::Database(_)) if Instant::now() + pause < deadline => {
                tracing::warn!(error = %e, debit = %debit_id, "settle failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The forward pass: the call joins its model's batching queue and waits for its own answer. A
/// full queue is shed as 503 OVERLOADED (after the debit, so `run` refunds it).
async fn infer(
    slot: &Slot,
    pixels: PixelBatch,
    labels: Vec<String>,
    incoming: Incoming,
) -> Result<ClassificationResponse, ApiError> {
    // Queue wait and pass time are recorded by the batcher's pass hook (`Metrics::observe_pass`).
    let job = ModelJob::classify(pixels, labels);
    Answer::classified(submit(&slot.batcher, job, incoming).await).map_err(ApiError::from)
}

/// A saved classifier's forward pass: the image's embedding through the same batching queue,
/// scored against the stored prototypes (the text tower is not used).
async fn infer_saved(
    slot: &Slot,
    pixels: PixelBatch,
    protos: &[(String, Vec<f32>)],
    incoming: Incoming,
) -> Result<ClassificationResponse, ApiError> {
    let job = ModelJob::embed(pixels);
    let image = Answer::embedding(submit(&slot.batcher, job, incoming).await)?;
    let protos: Vec<Prototype<'_>> = protos
        .iter()
        .map(|(label, embedding)| Prototype { label, embedding })
        .collect();
    Ok(score(
        &image,
        &protos,
        slot.model.task().endpoint(),
        slot.model.id(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_shapes() {
        assert!(check_url_shape("https://example.com/a.jpg").is_ok());
        assert!(check_url_shape("not a url").is_err());
        assert!(check_url_shape("ftp://example.com/a.jpg").is_err());
        assert!(check_url_shape("file:///etc/passwd").is_err());
    }
}
