//! `/api/classifiers`: saved classifiers (issue 24), owned by the key that made them.
//!
//! A create (`POST`) or replace (`PUT /{name}`) reads a spec (JSON body, or the multipart text
//! field `classifier` holding the same JSON with example images as file fields
//! `examples[LABEL]`), validates all of it for free, then debits one call's credits per example
//! image, fetches (the SSRF-safe fetcher) or decodes (`data:` URIs, uploads) every example under
//! the classification decode limits, embeds them through the model's batcher (sharing its
//! forward passes), embeds the prompts in one text-tower batch, builds each label's prototype
//! (`glimpse_core::prototypes`) and stores it. Any failure after the debit refunds it, and
//! nothing is stored: one bad example creates nothing and costs nothing.
//!
//! Another key's classifier is a 404, exactly like a name nobody uses.

use std::time::{Duration, Instant};

use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use glimpse_core::batcher::ModelJob;
use glimpse_core::decision::{Decision, RawDecision};
use glimpse_core::labels::{prompts_for, MAX_LABEL_CHARS};
use glimpse_core::prototypes::prototype;
use glimpse_core::registry::Slot;
use glimpse_core::{Answer, Task};
use glimpse_store::{Classifier, ClassifierLabel, ClassifierSpec, DebitRequest, StoreError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::classify::{check_url_shape, own_key_error, settle};
use crate::auth::{add_credits_header, set_credits_header, ApiKey};
use crate::batch::submit;
use crate::error::ApiError;
use crate::metrics::{timed, Stage};
use crate::state::AppState;

/// Most labels in one classifier.
pub const MAX_LABELS: usize = 64;
/// Most example images per label.
pub const MAX_EXAMPLES_PER_LABEL: usize = 32;
/// Most classifiers one key holds.
pub const MAX_CLASSIFIERS_PER_KEY: u32 = 100;
/// Most prompts per label, and the longest prompt (characters).
pub const MAX_PROMPTS_PER_LABEL: usize = 16;
pub const MAX_PROMPT_CHARS: usize = 300;
/// Longest classifier name.
pub const MAX_NAME_CHARS: usize = 64;
/// The whole body of a create or replace (every example image together).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// The JSON spec (without uploaded files; `data:` URIs count).
const MAX_SPEC_BYTES: usize = 48 * 1024 * 1024;
/// The ledger's endpoint name for example embeddings.
const LEDGER_ENDPOINT: &str = "classifiers";

/// A label as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelIn {
    name: String,
    #[serde(default)]
    prompts: Vec<String>,
    /// `http(s)://` URLs or `data:` URIs.
    #[serde(default)]
    examples: Vec<String>,
}

/// A create/replace body as sent.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SpecIn {
    name: Option<String>,
    model: Option<String>,
    labels: Vec<LabelIn>,
    min_confidence: Option<f64>,
    fallback: Option<String>,
    multi_label: Option<bool>,
}

/// Where one example image comes from.
enum Example {
    Bytes(Vec<u8>),
    Url(String),
}

struct LabelPlan {
    name: String,
    prompts: Vec<String>,
    examples: Vec<Example>,
}

/// A validated create/replace, ready to run.
struct Plan {
    name: String,
    slot: Arc<Slot>,
    labels: Vec<LabelPlan>,
    min_confidence: Option<f32>,
    fallback: Option<String>,
    multi_label: bool,
}

impl Plan {
    fn examples(&self) -> usize {
        self.labels.iter().map(|l| l.examples.len()).sum()
    }
}

/// A label as answered; `embedding` only with `?include=embeddings`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelView {
    pub name: String,
    /// The prompts as given (empty: the server's templates with the label's name).
    pub prompts: Vec<String>,
    /// Example images embedded into this label.
    pub examples: u32,
    /// The label's stored prototype (L2-normalised), with `?include=embeddings` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
}

/// A saved classifier as answered.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassifierView {
    pub name: String,
    /// The CLIP model id its embeddings belong to.
    pub model: String,
    pub labels: Vec<LabelView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_confidence: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    pub multi_label: bool,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl ClassifierView {
    fn of(c: Classifier, embeddings: bool) -> Self {
        let s = c.spec;
        ClassifierView {
            name: s.name,
            model: s.model,
            labels: s
                .labels
                .into_iter()
                .map(|l| LabelView {
                    name: l.name,
                    prompts: l.prompts,
                    examples: l.examples,
                    embedding: embeddings.then_some(l.embedding),
                })
                .collect(),
            min_confidence: s.min_confidence,
            fallback: s.fallback,
            multi_label: s.multi_label,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// `GET /api/classifiers` answers `{ "classifiers": [...] }`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClassifierList {
    pub classifiers: Vec<ClassifierView>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Include {
    /// `embeddings` adds each label's stored prototype.
    pub include: Option<String>,
}

impl Include {
    fn embeddings(&self) -> Result<bool, ApiError> {
        match self.include.as_deref().map(str::trim) {
            None | Some("") => Ok(false),
            Some("embeddings") => Ok(true),
            Some(other) => Err(ApiError::validation(format!(
                "include may only be 'embeddings'; got '{other}'"
            ))),
        }
    }
}

/// An answer with the key's balance in `X-Credits-Remaining`.
async fn answer(state: &AppState, key: &ApiKey, r: Result<Response, ApiError>) -> Response {
    let mut res = r.unwrap_or_else(IntoResponse::into_response);
    add_credits_header(state, key, res.headers_mut()).await;
    res
}

pub async fn list(
    State(state): State<AppState>,
    key: ApiKey,
    Query(q): Query<Include>,
) -> Response {
    let r = async {
        let embeddings = q.embeddings()?;
        let all = state
            .store
            .list_classifiers(&key.id)
            .await
            .map_err(own_key_error)?;
        let classifiers = all
            .into_iter()
            .map(|c| ClassifierView::of(c, embeddings))
            .collect();
        Ok(Json(ClassifierList { classifiers }).into_response())
    }
    .await;
    answer(&state, &key, r).await
}

pub async fn get_one(
    State(state): State<AppState>,
    key: ApiKey,
    Path(name): Path<String>,
    Query(q): Query<Include>,
) -> Response {
    let r = async {
        let embeddings = q.embeddings()?;
        let c = find(&state, &key, &name).await?;
        Ok(Json(ClassifierView::of(c, embeddings)).into_response())
    }
    .await;
    answer(&state, &key, r).await
}

pub async fn delete(
    State(state): State<AppState>,
    key: ApiKey,
    Path(name): Path<String>,
) -> Response {
    let r = async {
        let gone = state
            .store
            .delete_classifier(&key.id, &name)
            .await
            .map_err(own_key_error)?;
        if !gone {
            return Err(not_found(&name));
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    answer(&state, &key, r).await
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("this key has no classifier named '{name}'"))
}

/// The key's classifier `name` (another key's is a 404 like a missing one).
pub async fn find(state: &AppState, key: &ApiKey, name: &str) -> Result<Classifier, ApiError> {
    state
        .store
        .get_classifier(&key.id, name)
        .await
        .map_err(own_key_error)?
        .ok_or_else(|| not_found(name))
}

pub async fn create(State(state): State<AppState>, key: ApiKey, req: Request) -> Response {
    let r = save(&state, &key, None, req).await;
    finish(&state, &key, r, StatusCode::CREATED).await
}

pub async fn replace(
    State(state): State<AppState>,
    key: ApiKey,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    let r = save(&state, &key, Some(name), req).await;
    finish(&state, &key, r, StatusCode::OK).await
}

async fn finish(
    state: &AppState,
    key: &ApiKey,
    r: Result<(Classifier, Option<i64>), ApiError>,
    status: StatusCode,
) -> Response {
    match r {
        Ok((c, balance)) => {
            let mut res = (status, Json(ClassifierView::of(c, false))).into_response();
            match balance {
                Some(b) => set_credits_header(res.headers_mut(), b),
                None => add_credits_header(state, key, res.headers_mut()).await,
            }
            res
        }
        Err(e) => answer(state, key, Err(e)).await,
    }
}

/// Create (`path_name` none) or replace: read, validate, charge, embed, store.
async fn save(
    state: &AppState,
    key: &ApiKey,
    path_name: Option<String>,
    req: Request,
) -> Result<(Classifier, Option<i64>), ApiError> {
    let (spec, uploads) = read_body(state, req).await?;
    let plan = validate(state, path_name.as_deref(), spec, uploads)?;
    // Before any charge or fetch: the name's state and the key's count.
    let existing = state
        .store
        .get_classifier(&key.id, &plan.name)
        .await
        .map_err(own_key_error)?;
    match (&path_name, existing.is_some()) {
        (None, true) => {
            return Err(ApiError::validation(format!(
                "a classifier named '{0}' already exists; PUT /api/classifiers/{0} replaces it",
                plan.name
            )))
        }
        (Some(name), false) => return Err(not_found(name)),
        _ => {}
    }
    if path_name.is_none() {
        let held = state
            .store
            .count_classifiers(&key.id)
            .await
            .map_err(own_key_error)?;
        if held >= u64::from(MAX_CLASSIFIERS_PER_KEY) {
            return Err(ApiError::validation(format!(
                "this key already holds {held} classifiers, the most allowed \
                 ({MAX_CLASSIFIERS_PER_KEY}); delete one first"
            )));
        }
    }
    let cost = state.settings.credits_per_call * plan.examples() as i64;
    let started = Instant::now();
    let debit = if cost > 0 {
        let d = timed(
            &state.metrics,
            Stage::Ledger,
            state.store.debit(&DebitRequest {
                key_id: key.id.clone(),
                cost,
                endpoint: LEDGER_ENDPOINT.to_string(),
                model: plan.slot.model.id().to_string(),
            }),
        )
        .await
        .map_err(|e| match e {
            StoreError::InsufficientCredits { .. } => ApiError::insufficient_credits(),
            other => own_key_error(other),
        })?;
        state.metrics.credits_debited(cost);
        Some(d)
    } else {
        None
    };
    // The work, then the write, as one outcome: anything failing refunds the whole debit.
    let worked = async {
        let spec = build(state, key, &plan).await?;
        let saved = match path_name {
            None => {
                state
                    .store
                    .create_classifier(&key.id, &spec, MAX_CLASSIFIERS_PER_KEY)
                    .await
            }
            Some(_) => state.store.replace_classifier(&key.id, &spec).await,
        };
        saved.map_err(own_key_error)
    }
    .await;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let Some(debit) = debit else {
        return worked.map(|c| (c, None));
    };
    match worked {
        Ok(c) => {
            if let Err(e) = settle(state, &debit.id, ms).await {
                // The classifier is stored; the reservation stays open for the reaper, which
                // refunds it: the caller is not charged for a write it cannot see confirmed.
                tracing::error!(error = %e, debit = %debit.id, "settle of a classifier save failed");
            }
            Ok((c, Some(debit.balance)))
        }
        Err(e) => {
            let refund = state.store.refund(&debit.id, e.status().as_u16(), ms);
            match timed(&state.metrics, Stage::Ledger, refund).await {
                Ok(_) => state.metrics.credits_refunded(cost),
                Err(re) => {
                    tracing::error!(error = %re, debit = %debit.id, "refund failed; the reaper will retry")
                }
            }
            Err(e)
        }
    }
}

/// Fetch, decode and embed every example, embed the prompts, make the prototypes.
async fn build(state: &AppState, key: &ApiKey, plan: &Plan) -> Result<ClassifierSpec, ApiError> {
    let slot = &plan.slot;
    let preprocess = slot.model.preprocess_config().clone();
    let mut example_embeddings: Vec<Vec<Vec<f32>>> = Vec::with_capacity(plan.labels.len());
    for label in &plan.labels {
        let mut embs = Vec::with_capacity(label.examples.len());
        for (i, ex) in label.examples.iter().enumerate() {
            let which = || format!("label '{}', example {}", label.name, i + 1);
            let bytes = match ex {
                Example::Bytes(b) => b.clone(),
                Example::Url(u) => {
                    if let Some(limit) = &state.failed_fetches {
                        limit
                            .peek(&key.id)
                            .map_err(crate::limits::fetches_limited)?;
                    }
                    timed(&state.metrics, Stage::Fetch, state.images.fetch(u))
                        .await
                        .map_err(|e| {
                            if let Some(limit) = &state.failed_fetches {
                                let _ = limit.check(&key.id);
                            }
                            prefixed(ApiError::from(e), &which())
                        })?
                }
            };
            let incoming = slot.batcher.announce();
            let pixels = timed(
                &state.metrics,
                Stage::Decode,
                state.decoder.decode(bytes, preprocess.clone()),
            )
            .await
            .map_err(|e| prefixed(e, &which()))?;
            let job = ModelJob::embed(pixels);
            let emb = Answer::embedding(submit(&slot.batcher, job, incoming).await)
                .map_err(ApiError::from)?;
            embs.push(emb);
        }
        example_embeddings.push(embs);
    }
    // Every label's prompts in one text-tower batch, off the async threads.
    let prompt_lists: Vec<Vec<String>> = plan
        .labels
        .iter()
        .map(|l| prompt_texts(l, &state.settings.templates))
        .collect();
    let all: Vec<String> = prompt_lists.iter().flatten().cloned().collect();
    let model = Arc::clone(&slot.model);
    let texts = tokio::task::spawn_blocking(move || model.embed_texts(&all))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)?;
    let mut texts = texts.into_iter();
    let mut labels = Vec::with_capacity(plan.labels.len());
    for ((label, prompts), examples) in plan
        .labels
        .iter()
        .zip(&prompt_lists)
        .zip(example_embeddings)
    {
        let prompt_embs: Vec<Vec<f32>> = texts.by_ref().take(prompts.len()).collect();
        let embedding = prototype(&prompt_embs, &examples).map_err(ApiError::from)?;
        labels.push(ClassifierLabel {
            name: label.name.clone(),
            prompts: label.prompts.clone(),
            examples: examples.len() as u32,
            embedding,
        });
    }
    Ok(ClassifierSpec {
        name: plan.name.clone(),
        model: slot.model.id().to_string(),
        labels,
        min_confidence: plan.min_confidence,
        fallback: plan.fallback.clone(),
        multi_label: plan.multi_label,
    })
}

/// A label's prompt texts: each given prompt with `{label}` filled in (one without it is a
/// whole sentence), or the server's templates when none were given.
fn prompt_texts(label: &LabelPlan, templates: &[String]) -> Vec<String> {
    if label.prompts.is_empty() {
        prompts_for(&label.name, templates)
    } else {
        prompts_for(&label.name, &label.prompts)
    }
}

/// `e` with the example it is about in front of its message.
fn prefixed(mut e: ApiError, which: &str) -> ApiError {
    e.message = format!("{which}: {}", e.message);
    e
}

/// The spec and the uploaded examples (`examples[LABEL]` file fields, in order).
async fn read_body(
    state: &AppState,
    req: Request,
) -> Result<(SpecIn, Vec<(String, Vec<u8>)>), ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim_start()
        .to_ascii_lowercase();
    let idle = state.settings.header_timeout;
    let total = idle.saturating_mul(12);
    if content_type.starts_with("multipart/form-data") {
        let mp = Multipart::from_request(req, state)
            .await
            .map_err(|_| ApiError::validation("malformed multipart/form-data body"))?;
        let form = read_form(mp, state.settings.max_upload_bytes, idle);
        return tokio::time::timeout(total, form)
            .await
            .map_err(|_| ApiError::validation("the request body arrived too slowly"))?;
    }
    if !content_type.starts_with("application/json") {
        return Err(ApiError::validation(
            "send the classifier as application/json, or as multipart/form-data with the JSON \
             in the field 'classifier' and example images as files 'examples[LABEL]'",
        ));
    }
    let body = tokio::time::timeout(total, axum::body::to_bytes(req.into_body(), MAX_SPEC_BYTES))
        .await
        .map_err(|_| ApiError::validation("the request body arrived too slowly"))?
        .map_err(|_| {
            ApiError::too_large(format!("the JSON body is over {MAX_SPEC_BYTES} bytes"))
        })?;
    Ok((parse_spec(&body)?, Vec::new()))
}

fn parse_spec(bytes: &[u8]) -> Result<SpecIn, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::validation(format!("the classifier is not valid JSON: {e}")))
}

async fn read_form(
    mut mp: Multipart,
    max_upload: usize,
    idle: Duration,
) -> Result<(SpecIn, Vec<(String, Vec<u8>)>), ApiError> {
    let mut spec: Option<SpecIn> = None;
    let mut uploads = Vec::new();
    let slow = || ApiError::validation("the request body arrived too slowly");
    let malformed = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!("the request body is over {MAX_BODY_BYTES} bytes"))
        } else {
            ApiError::validation("malformed multipart/form-data body")
        }
    };
    while let Some(mut field) = tokio::time::timeout(idle, mp.next_field())
        .await
        .map_err(|_| slow())?
        .map_err(malformed)?
    {
        let name = field.name().unwrap_or("").to_string();
        let label = name
            .strip_prefix("examples[")
            .and_then(|s| s.strip_suffix(']'))
            .map(str::to_string);
        let limit = match (&label, name.as_str()) {
            (Some(_), _) => max_upload,
            (None, "classifier") => MAX_SPEC_BYTES,
            _ => {
                return Err(ApiError::validation(format!(
                    "unexpected form field '{name}'; send 'classifier' (JSON) and files \
                     'examples[LABEL]'"
                )))
            }
        };
        let mut data = Vec::new();
        while let Some(chunk) = tokio::time::timeout(idle, field.chunk())
            .await
            .map_err(|_| slow())?
            .map_err(malformed)?
        {
            if data.len() + chunk.len() > limit {
                return Err(ApiError::too_large(match &label {
                    Some(l) => format!("an example of label '{l}' is larger than {limit} bytes"),
                    None => format!("the field 'classifier' is larger than {limit} bytes"),
                }));
            }
            data.extend_from_slice(&chunk);
        }
        match label {
            Some(l) => uploads.push((l, data)),
            None if spec.is_some() => {
                return Err(ApiError::validation("send the field 'classifier' once"))
            }
            None => spec = Some(parse_spec(&data)?),
        }
    }
    let spec = spec.ok_or_else(|| {
        ApiError::validation("the form has no field 'classifier' (the classifier as JSON)")
    })?;
    Ok((spec, uploads))
}

/// Whether `name` is 1–64 of `[a-z0-9-_]`.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_CHARS).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Every check that needs no I/O, in the order a client would fix them.
fn validate(
    state: &AppState,
    path_name: Option<&str>,
    spec: SpecIn,
    uploads: Vec<(String, Vec<u8>)>,
) -> Result<Plan, ApiError> {
    let name = match (path_name, spec.name.as_deref().map(str::trim)) {
        (Some(p), Some(n)) if n != p => {
            return Err(ApiError::validation(format!(
                "the body's name '{n}' is not the path's '{p}'"
            )))
        }
        (Some(p), _) => p.to_string(),
        (None, Some(n)) => n.to_string(),
        (None, None) => return Err(ApiError::validation("name is required")),
    };
    if !valid_name(&name) {
        return Err(ApiError::validation(format!(
            "name must be 1 to {MAX_NAME_CHARS} characters of a-z, 0-9, '-' and '_'; got '{name}'"
        )));
    }
    let slot = state
        .models
        .pick(Task::ZeroShot, spec.model.as_deref())
        .map_err(|e| ApiError::validation(e.to_string().replace("clipModel", "model")))?
        .cloned()
        .ok_or_else(|| ApiError::not_found("the CLIP endpoint is turned off on this server"))?;
    if spec.labels.is_empty() || spec.labels.len() > MAX_LABELS {
        return Err(ApiError::validation(format!(
            "labels must hold 1 to {MAX_LABELS} labels; got {}",
            spec.labels.len()
        )));
    }
    let mut labels: Vec<LabelPlan> = Vec::with_capacity(spec.labels.len());
    for l in spec.labels {
        let lname = l.name.trim().to_string();
        let chars = lname.chars().count();
        if chars == 0 || chars > MAX_LABEL_CHARS || lname.chars().any(char::is_control) {
            return Err(ApiError::validation(format!(
                "a label name must be 1 to {MAX_LABEL_CHARS} characters with no control \
                 characters; got '{lname}'"
            )));
        }
        if labels.iter().any(|p| p.name == lname) {
            return Err(ApiError::validation(format!(
                "label '{lname}' is given twice"
            )));
        }
        if l.prompts.len() > MAX_PROMPTS_PER_LABEL {
            return Err(ApiError::validation(format!(
                "label '{lname}' has {} prompts; at most {MAX_PROMPTS_PER_LABEL}",
                l.prompts.len()
            )));
        }
        let mut prompts = Vec::with_capacity(l.prompts.len());
        for p in l.prompts {
            let p = p.trim().to_string();
            let chars = p.chars().count();
            if chars == 0 || chars > MAX_PROMPT_CHARS || p.chars().any(char::is_control) {
                return Err(ApiError::validation(format!(
                    "label '{lname}': a prompt must be 1 to {MAX_PROMPT_CHARS} characters with \
                     no control characters"
                )));
            }
            prompts.push(p);
        }
        let mut examples = Vec::with_capacity(l.examples.len());
        for (i, ex) in l.examples.iter().enumerate() {
            let ex = ex.trim();
            examples.push(if ex.starts_with("data:") {
                Example::Bytes(data_uri(ex).map_err(|m| {
                    ApiError::validation(format!("label '{lname}', example {}: {m}", i + 1))
                })?)
            } else {
                Example::Url(
                    check_url_shape(ex)
                        .map_err(|e| prefixed(e, &format!("label '{lname}', example {}", i + 1)))?,
                )
            });
        }
        labels.push(LabelPlan {
            name: lname,
            prompts,
            examples,
        });
    }
    for (label, bytes) in uploads {
        let Some(l) = labels.iter_mut().find(|l| l.name == label.trim()) else {
            return Err(ApiError::validation(format!(
                "file field 'examples[{label}]' names no label of the classifier"
            )));
        };
        if bytes.is_empty() {
            return Err(ApiError::validation(format!(
                "an uploaded example of label '{label}' is empty"
            )));
        }
        l.examples.push(Example::Bytes(bytes));
    }
    for l in &labels {
        if l.examples.len() > MAX_EXAMPLES_PER_LABEL {
            return Err(ApiError::validation(format!(
                "label '{}' has {} examples; at most {MAX_EXAMPLES_PER_LABEL}",
                l.name,
                l.examples.len()
            )));
        }
    }
    // The decision defaults, checked exactly as a classification call checks them.
    let min = spec.min_confidence.map(|v| v.to_string());
    let decision = Decision::parse(RawDecision {
        min_confidence: min.as_deref(),
        fallback: spec.fallback.as_deref(),
        top_k: None,
        multi_label: None,
    })?;
    Ok(Plan {
        name,
        slot,
        labels,
        min_confidence: decision.min_confidence,
        fallback: spec.fallback.map(|_| decision.fallback),
        multi_label: spec.multi_label.unwrap_or(false),
    })
}

/// The bytes of a `data:[<type>][;base64],<data>` URI (base64 only: images are binary).
fn data_uri(uri: &str) -> Result<Vec<u8>, String> {
    let rest = &uri["data:".len()..];
    let (meta, data) = rest
        .split_once(',')
        .ok_or("a data: URI needs a ',' before its data")?;
    if !meta.to_ascii_lowercase().ends_with(";base64") {
        return Err("a data: URI must be base64 (data:image/jpeg;base64,…)".into());
    }
    let bytes = base64_decode(data).ok_or("the data: URI is not valid base64")?;
    if bytes.is_empty() {
        return Err("the data: URI holds no bytes".into());
    }
    Ok(bytes)
}

/// Standard or URL-safe base64, padding optional, whitespace ignored.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches(|c: char| c == '=' || c.is_ascii_whitespace());
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    let mut count = 0usize;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            c if c.is_ascii_whitespace() => continue,
            _ => return None,
        };
        count += 1;
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // One character alone cannot end a group.
    (count % 4 != 1).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("parcels-v2_a"));
        assert!(!valid_name(""));
        assert!(!valid_name("Parcels"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"a".repeat(65)));
        assert!(valid_name(&"a".repeat(64)));
    }

    #[test]
    fn base64_and_data_uris() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("/+8=").unwrap(), vec![0xff, 0xef]);
        assert_eq!(base64_decode("_-8").unwrap(), vec![0xff, 0xef]);
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("a*bc").is_none());
        assert_eq!(data_uri("data:image/png;base64,aGk=").unwrap(), b"hi");
        assert!(data_uri("data:image/png,hi").is_err());
        assert!(data_uri("data:image/png;base64").is_err());
        assert!(data_uri("data:;base64,").is_err());
    }
}
