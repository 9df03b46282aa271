//! `POST /api/image-classification/{clip,vit}/batch`: many images in one call.
//!
//! The body is a multipart form with up to `GLIMPSE_MAX_BATCH_IMAGES` `image` file fields (and the
//! single route's text fields: `labels`, `clipModel`/`vitModel`, the decision controls; query
//! parameters win), or JSON `{"urls": [...], "labels"?, "clipModel"?/"vitModel"?, decision
//! controls?}` where each entry is an `http(s)` URL or a `data:image/…;base64,` URI. Every item
//! gets the answer the single route would give it, in order, as `{"results": [{"index", …answer}
//! | {"index", "error": {message, code}}]}`: one bad image fails only its own item.
//!
//! Credits (see `items.rs`): 402 before any work unless the key holds one call's credits per
//! item; an item is charged only when answered. The items are decoded concurrently (under the
//! decode gate) and ride the model's batching queue together, so they share forward passes.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use glimpse_core::batcher::ModelJob;
use glimpse_core::decision::{Decision, RawDecision};
use glimpse_core::{Answer, Task};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::classify::{idempotency_key, respond, run_claimed, with_balance, Outcome};
use super::input::{read_input, FormItem, FormLimits};
use super::items::{self, ImageRef};
use crate::auth::ApiKey;
use crate::batch::submit;
use crate::error::ApiError;
use crate::state::AppState;

pub async fn clip(State(state): State<AppState>, key: ApiKey, req: Request) -> Response {
    batch(Task::ZeroShot, state, key, req).await
}

pub async fn vit(State(state): State<AppState>, key: ApiKey, req: Request) -> Response {
    batch(Task::Classify, state, key, req).await
}

/// The JSON form of a batch call.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BatchJson {
    urls: Vec<String>,
    #[serde(default)]
    labels: Option<Value>,
    #[serde(default)]
    clip_model: Option<String>,
    #[serde(default)]
    vit_model: Option<String>,
    #[serde(default)]
    min_confidence: Option<Value>,
    #[serde(default)]
    fallback: Option<String>,
    #[serde(default)]
    top_k: Option<Value>,
    #[serde(default)]
    multi_label: Option<Value>,
}

/// One item of `results`: its index, then its answer's fields.
#[derive(serde::Serialize)]
struct Indexed<'a, T: serde::Serialize> {
    index: usize,
    #[serde(flatten)]
    answer: &'a T,
}

#[derive(serde::Serialize)]
struct ItemError {
    error: crate::error::ErrorBody,
}

/// A validated batch call.
struct Plan {
    slot: std::sync::Arc<glimpse_core::registry::Slot>,
    labels: Vec<String>,
    decision: Decision,
    items: Vec<Result<ImageRef, ApiError>>,
}

async fn batch(task: Task, state: AppState, key: ApiKey, req: Request) -> Response {
    let started = Instant::now();
    let idem = match idempotency_key(req.headers()) {
        Ok(k) => k,
        Err(e) => return with_balance(&state, &key, e.into_response()).await,
    };
    let (plan, fingerprint) = match read_plan(task, &state, req).await {
        Ok(p) => p,
        Err(e) => return with_balance(&state, &key, e.into_response()).await,
    };
    let task_state = state.clone();
    let task_key = key.clone();
    let work = tokio::spawn(
        async move {
            let run = run(&task_state, &task_key, plan, started);
            run_claimed(&task_state, &task_key, idem, fingerprint, run).await
        }
        .in_current_span(),
    );
    respond(&state, &key, work.await).await
}

async fn read_plan(task: Task, state: &AppState, req: Request) -> Result<(Plan, String), ApiError> {
    let max_images = state.settings.max_batch_images;
    let max_bytes = state.settings.max_batch_bytes;
    let max_upload = state.settings.max_upload_bytes;
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if is_json {
        let mut hash = Sha256::new();
        hash.update(req.uri().path().as_bytes());
        hash.update([0]);
        hash.update(req.uri().query().unwrap_or("").as_bytes());
        hash.update([0]);
        let body = read_json_body(req, max_bytes).await?;
        hash.update(&body);
        let json: BatchJson = serde_json::from_slice(&body).map_err(|e| {
            ApiError::validation(format!(
                "the JSON body must be {{\"urls\": [...], \"labels\"?, \"{}\"?, ...}}: {e}",
                task.model_param()
            ))
        })?;
        let fingerprint = super::input::hex(&hash.finalize());
        let model = match task {
            Task::ZeroShot => json.clip_model.clone(),
            Task::Classify => json.vit_model.clone(),
        };
        let labels = match &json.labels {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|v| {
                        v.as_str().map(str::to_string).ok_or_else(|| {
                            ApiError::validation("labels must be a string or a list of strings")
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join(","),
            ),
            Some(_) => {
                return Err(ApiError::validation(
                    "labels must be a string or a list of strings",
                ))
            }
        };
        let (min_confidence, top_k, multi_label) = (
            scalar(&json.min_confidence, "minConfidence")?,
            scalar(&json.top_k, "topK")?,
            scalar(&json.multi_label, "multiLabel")?,
        );
        let raw = RawDecision {
            min_confidence: min_confidence.as_deref(),
            fallback: json.fallback.as_deref(),
            top_k: top_k.as_deref(),
            multi_label: multi_label.as_deref(),
        };
        if json.urls.is_empty() {
            return Err(ApiError::validation("urls must hold at least one image"));
        }
        if json.urls.len() > max_images {
            return Err(ApiError::validation(format!(
                "at most {max_images} images per request (GLIMPSE_MAX_BATCH_IMAGES); got {}",
                json.urls.len()
            )));
        }
        let items = json
            .urls
            .iter()
            .map(|u| ImageRef::parse(u, max_upload))
            .collect();
        let plan = plan(task, state, model.as_deref(), labels.as_deref(), raw, items)?;
        return Ok((plan, fingerprint));
    }
    let limits = FormLimits::many(max_upload, max_images, max_bytes, false);
    let input = read_input(req, state, task.model_param(), limits).await?;
    if input.items.is_empty() {
        return Err(ApiError::validation(
            "no images: send multipart/form-data 'image' fields (one per image), or JSON \
             {\"urls\": [...]}",
        ));
    }
    let items = input
        .items
        .iter()
        .map(|i| match i {
            FormItem::Image(b) if b.is_empty() => {
                Err(ApiError::validation("the uploaded image is empty"))
            }
            FormItem::Image(b) => Ok(ImageRef::Bytes(b.clone())),
            FormItem::Text(_) => Err(ApiError::validation("not an image")),
        })
        .collect();
    let plan = plan(
        task,
        state,
        input.model.as_deref(),
        input.labels.as_deref(),
        input.decision(),
        items,
    )?;
    Ok((plan, input.fingerprint))
}

/// A JSON scalar as the text the query-string parser would have seen.
fn scalar(v: &Option<Value>, name: &str) -> Result<Option<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(ApiError::validation(format!(
            "{name} must be a number, a boolean or a string"
        ))),
    }
}

fn plan(
    task: Task,
    state: &AppState,
    model: Option<&str>,
    labels: Option<&str>,
    decision: RawDecision<'_>,
    items: Vec<Result<ImageRef, ApiError>>,
) -> Result<Plan, ApiError> {
    let slot = state
        .models
        .pick(task, model)
        .map_err(|e| ApiError::validation(e.to_string()))?
        .cloned()
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "the {} endpoint is turned off on this server ({} is empty)",
                task.title(),
                task.model_var()
            ))
        })?;
    let labels = task.labels(labels)?;
    let decision = Decision::parse(decision)?;
    decision.check_model(slot.model.id(), slot.model.independent_scores())?;
    Ok(Plan {
        slot,
        labels,
        decision,
        items,
    })
}

/// A JSON body of at most `max` bytes.
pub(super) async fn read_json_body(req: Request, max: usize) -> Result<Bytes, ApiError> {
    let body = req.into_body();
    axum::body::to_bytes(body, max).await.map_err(|_| {
        ApiError::too_large(format!(
            "the request body is larger than {max} bytes (GLIMPSE_MAX_BATCH_BYTES), or it \
             could not be read"
        ))
    })
}

async fn run(
    state: &AppState,
    key: &ApiKey,
    plan: Plan,
    started: Instant,
) -> Result<Outcome, ApiError> {
    items::can_pay(state, key, plan.items.len()).await?;
    let endpoint = format!("{}/batch", plan.slot.model.task().endpoint());
    let handles: Vec<_> = plan
        .items
        .into_iter()
        .map(|item| {
            let (state, key, slot) = (state.clone(), key.clone(), plan.slot.clone());
            let (labels, decision, endpoint) =
                (plan.labels.clone(), plan.decision.clone(), endpoint.clone());
            tokio::spawn(
                async move {
                    let image = item?;
                    let from_url = matches!(image, ImageRef::Url(_));
                    let bytes = items::bytes_of(&state, &key, image).await?;
                    // Counted from here: a pass about to start waits (up to the window) for
                    // this request's other images instead of running them one by one.
                    let incoming = slot.batcher.announce();
                    let preprocess = slot.model.preprocess_config().clone();
                    let pixels = items::decode(&state, &key, from_url, bytes, preprocess).await?;
                    let debit = items::reserve(&state, &key, &endpoint, slot.model.id(), 1).await?;
                    let job = ModelJob::classify(pixels, labels);
                    let answer = Answer::classified(submit(&slot.batcher, job, incoming).await)
                        .map_err(ApiError::from);
                    let ms = started.elapsed().as_secs_f64() * 1e3;
                    match answer {
                        Ok(mut r) => {
                            decision.apply(&mut r);
                            r.set_timing_ms(ms);
                            items::charge(&state, &debit, ms).await?;
                            Ok(r)
                        }
                        Err(e) => {
                            items::release(&state, &debit, e.status().as_u16(), ms).await;
                            Err(e)
                        }
                    }
                }
                .in_current_span(),
            )
        })
        .collect();
    // Each item serialised on its own (so its numbers read exactly as the single route writes
    // them), `index` first.
    let mut results = Vec::with_capacity(handles.len());
    for (index, h) in handles.into_iter().enumerate() {
        let item = match h.await {
            Ok(r) => r,
            Err(join) => Err(ApiError::internal(format!(
                "batch item task failed: {join}"
            ))),
        };
        let json = match item {
            Ok(r) => serde_json::to_string(&Indexed { index, answer: &r }),
            Err(e) => serde_json::to_string(&Indexed {
                index,
                answer: &ItemError { error: e.body() },
            }),
        };
        results.push(json.map_err(ApiError::internal)?);
    }
    let body = format!("{{\"results\":[{}]}}", results.join(","));
    Ok(Outcome {
        status: StatusCode::OK,
        body,
        balance: None,
    })
}
