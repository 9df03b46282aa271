//! Embeddings: `POST /v1/embeddings` (shaped like OpenAI's embeddings API, so the official
//! `openai` clients work unchanged) and `POST /api/embeddings` (multipart, for curl).
//!
//! Vectors are the zero-shot model's L2-normalised image or text features, in its joint
//! projection space (an image and a text compare by dot product). Images ride the model's
//! batching queue like classifications ([`ModelJob::embed`]); a request's texts go through the
//! text tower in one pass, padded to the longest (not to the context length), truncated to the
//! model's context as `transformers` does; `usage` counts their real tokens (special tokens
//! included). Credits: one call's worth per input item, checked before any work (402); on
//! `/v1/embeddings` any bad input fails the whole request uncharged (OpenAI's shape has no
//! per-item error).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use glimpse_core::batcher::ModelJob;
use glimpse_core::registry::Slot;
use glimpse_core::{Answer, Task};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;
use utoipa::ToSchema;

use super::batch::read_json_body;
use super::classify::{idempotency_key, respond, run_claimed, with_balance, Outcome};
use super::input::{read_input, FormItem, FormLimits};
use super::items::{self, ImageRef};
use crate::auth::ApiKey;
use crate::batch::submit;
use crate::error::ApiError;
use crate::state::AppState;

/// Longest text input, in bytes (it is truncated to the model's context anyway; this bounds the
/// tokenizer's work).
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// Most text inputs per request.
pub const MAX_TEXTS: usize = 256;

/// `POST /v1/embeddings` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EmbeddingsRequest {
    /// A zero-shot model id this server serves (`GET /api/account` lists none; see
    /// `GLIMPSE_CLIP_MODELS`). Optional here: the default CLIP model when left out.
    #[serde(default)]
    pub model: Option<String>,
    /// A string or a list of strings: texts, or with `modality: "image"` image URLs
    /// (`http(s)://`, fetched through the SSRF-safe fetcher) or `data:image/...;base64,` URIs.
    #[schema(value_type = Object)]
    pub input: Value,
    /// `float` (default) or `base64` (little-endian float32 bytes, as OpenAI sends them).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Matryoshka-style truncation: none of the served model families supports it, so any value
    /// other than the model's own dimension is a 400.
    #[serde(default)]
    pub dimensions: Option<u64>,
    /// `text` (default) or `image` (as Infinity names it).
    #[serde(default)]
    pub modality: Option<String>,
    /// Accepted and ignored (OpenAI clients may send it).
    #[serde(default)]
    pub user: Option<String>,
}

/// One vector.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingData {
    /// Always `embedding`.
    pub object: &'static str,
    pub index: usize,
    pub embedding: Embedding,
}

/// A list of floats, or (`encoding_format: base64`) a base64 string of little-endian float32
/// bytes.
#[derive(Debug, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Embedding {
    Float(Vec<f32>),
    Base64(String),
}

/// Token counts: `prompt_tokens` = `total_tokens` = the texts' tokens after truncation, special
/// tokens included; images count none.
#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// The answer of both embeddings routes.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingsResponse {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: Usage,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Encoding {
    Float,
    Base64,
}

/// One validated input.
enum Item {
    Text(String),
    Image(ImageRef),
}

struct Plan {
    slot: Arc<Slot>,
    items: Vec<Item>,
    encoding: Encoding,
    dimensions: Option<u64>,
}

pub async fn openai(State(state): State<AppState>, key: ApiKey, req: Request) -> Response {
    let started = Instant::now();
    let planned = async {
        let idem = idempotency_key(req.headers())?;
        let fingerprint = fingerprint_of(&req);
        let body = read_json_body(req, state.settings.max_batch_bytes).await?;
        let fingerprint = format!("{fingerprint}:{}", hex_sha256(&body));
        let r: EmbeddingsRequest = serde_json::from_slice(&body).map_err(|e| {
            ApiError::validation(format!(
                "the body must be JSON {{\"model\", \"input\": string | [string], \
                 \"encoding_format\"?, \"modality\"?}}: {e}"
            ))
        })?;
        Ok::<_, ApiError>((plan_openai(&state, r)?, idem, fingerprint))
    }
    .await;
    go(state, key, planned, started).await
}

pub async fn multipart(State(state): State<AppState>, key: ApiKey, req: Request) -> Response {
    let started = Instant::now();
    let planned = async {
        let idem = idempotency_key(req.headers())?;
        let limits = FormLimits::many(
            state.settings.max_upload_bytes,
            state.settings.max_batch_images,
            state.settings.max_batch_bytes,
            true,
        );
        let input = read_input(req, &state, "model", limits).await?;
        let slot = pick(&state, input.model.as_deref())?;
        if input.items.is_empty() {
            return Err(ApiError::validation(
                "no inputs: send multipart/form-data 'image' file fields and/or 'text' fields",
            ));
        }
        let items = input
            .items
            .into_iter()
            .map(|i| match i {
                FormItem::Image(b) if b.is_empty() => {
                    Err(ApiError::validation("an uploaded image is empty"))
                }
                FormItem::Image(b) => Ok(Item::Image(ImageRef::Bytes(b))),
                FormItem::Text(t) => check_text(t).map(Item::Text),
            })
            .collect::<Result<Vec<_>, _>>()?;
        check_counts(&state, &items)?;
        let plan = Plan {
            slot,
            items,
            encoding: Encoding::Float,
            dimensions: None,
        };
        Ok((plan, idem, input.fingerprint))
    }
    .await;
    go(state, key, planned, started).await
}

async fn go(
    state: AppState,
    key: ApiKey,
    planned: Result<(Plan, Option<String>, String), ApiError>,
    started: Instant,
) -> Response {
    let (plan, idem, fingerprint) = match planned {
        Ok(p) => p,
        Err(e) => return with_balance(&state, &key, e.into_response()).await,
    };
    let (task_state, task_key) = (state.clone(), key.clone());
    let work = tokio::spawn(
        async move {
            let run = run(&task_state, &task_key, plan, started);
            run_claimed(&task_state, &task_key, idem, fingerprint, run).await
        }
        .in_current_span(),
    );
    respond(&state, &key, work.await).await
}

fn fingerprint_of(req: &Request) -> String {
    format!(
        "{} {}?{}",
        req.method(),
        req.uri().path(),
        req.uri().query().unwrap_or("")
    )
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    super::input::hex(&sha2::Sha256::digest(bytes))
}

/// The zero-shot model a request names (the default when none): embeddings exist only in a
/// joint image-text space.
fn pick(state: &AppState, model: Option<&str>) -> Result<Arc<Slot>, ApiError> {
    let requested = model.map(str::trim).filter(|m| !m.is_empty());
    if let Some(m) = requested {
        if state
            .models
            .for_task(Task::ZeroShot)
            .all(|s| s.model.id() != m)
            && state
                .models
                .for_task(Task::Classify)
                .any(|s| s.model.id() == m)
        {
            return Err(ApiError::validation(format!(
                "model '{m}' is an image classifier: it has no image-text embedding space; \
                 use one of: {}",
                state.models.ids(Task::ZeroShot).join(", ")
            )));
        }
    }
    state
        .models
        .pick(Task::ZeroShot, requested)
        .map_err(|e| ApiError::validation(e.to_string().replacen("clipModel", "model", 1)))?
        .cloned()
        .ok_or_else(|| {
            ApiError::not_found(
                "embeddings need a zero-shot model, and this server serves none \
                 (GLIMPSE_CLIP_MODEL is empty)",
            )
        })
}

fn plan_openai(state: &AppState, r: EmbeddingsRequest) -> Result<Plan, ApiError> {
    let slot = pick(state, r.model.as_deref())?;
    let encoding = match r.encoding_format.as_deref().map(str::trim) {
        None | Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "encoding_format must be 'float' or 'base64'; got '{other}'"
            )))
        }
    };
    let image = match r.modality.as_deref().map(str::trim) {
        None | Some("text") => false,
        Some("image") => true,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "modality must be 'text' or 'image'; got '{other}'"
            )))
        }
    };
    let strings: Vec<String> = match r.input {
        Value::String(s) => vec![s],
        Value::Array(a) if a.is_empty() => {
            return Err(ApiError::validation("input must not be an empty list"))
        }
        Value::Array(a) => a
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                Value::Number(_) | Value::Array(_) => Err(ApiError::validation(
                    "input as token ids is not supported: send the text itself",
                )),
                _ => Err(ApiError::validation(
                    "input must be a string or a list of strings",
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::validation(
                "input must be a string or a list of strings",
            ))
        }
    };
    let max_upload = state.settings.max_upload_bytes;
    let items = strings
        .into_iter()
        .map(|s| {
            if image {
                ImageRef::parse(&s, max_upload).map(Item::Image)
            } else {
                check_text(s).map(Item::Text)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_counts(state, &items)?;
    if r.dimensions == Some(0) {
        return Err(ApiError::validation("dimensions must be at least 1"));
    }
    Ok(Plan {
        slot,
        items,
        encoding,
        dimensions: r.dimensions,
    })
}

fn check_text(t: String) -> Result<String, ApiError> {
    if t.trim().is_empty() {
        return Err(ApiError::validation("a text input is empty"));
    }
    if t.len() > MAX_TEXT_BYTES {
        return Err(ApiError::validation(format!(
            "a text input is longer than {MAX_TEXT_BYTES} bytes"
        )));
    }
    Ok(t)
}

fn check_counts(state: &AppState, items: &[Item]) -> Result<(), ApiError> {
    let images = items.iter().filter(|i| matches!(i, Item::Image(_))).count();
    let texts = items.len() - images;
    let max_images = state.settings.max_batch_images;
    if images > max_images {
        return Err(ApiError::validation(format!(
            "at most {max_images} images per request (GLIMPSE_MAX_BATCH_IMAGES); got {images}"
        )));
    }
    if texts > MAX_TEXTS {
        return Err(ApiError::validation(format!(
            "at most {MAX_TEXTS} texts per request; got {texts}"
        )));
    }
    Ok(())
}

async fn run(
    state: &AppState,
    key: &ApiKey,
    plan: Plan,
    started: Instant,
) -> Result<Outcome, ApiError> {
    items::can_pay(state, key, plan.items.len()).await?;
    let slot = plan.slot;
    let model = slot.model.id().to_string();
    // Every image is fetched and decoded first (free), so a bad one fails the request before
    // anything is charged.
    let mut texts = Vec::new();
    let mut images = Vec::new();
    for (i, item) in plan.items.into_iter().enumerate() {
        match item {
            Item::Text(t) => texts.push((i, t)),
            Item::Image(img) => {
                let (state, key, slot) = (state.clone(), key.clone(), slot.clone());
                images.push((
                    i,
                    tokio::spawn(
                        async move {
                            let from_url = matches!(img, ImageRef::Url(_));
                            let bytes = items::bytes_of(&state, &key, img).await?;
                            let incoming = slot.batcher.announce();
                            let cfg = slot.model.preprocess_config().clone();
                            let px = items::decode(&state, &key, from_url, bytes, cfg).await?;
                            Ok::<_, ApiError>((px, incoming))
                        }
                        .in_current_span(),
                    ),
                ));
            }
        }
    }
    let mut decoded = Vec::with_capacity(images.len());
    let mut first_error = None;
    for (i, h) in images {
        match h.await {
            Ok(Ok(px)) => decoded.push((i, px)),
            Ok(Err(e)) => {
                first_error.get_or_insert(with_index(i, e));
            }
            Err(join) => {
                first_error.get_or_insert(ApiError::internal(format!("decode task: {join}")));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    // Every item's credits, in one reservation (the request is answered whole or not at all).
    let n = texts.len() + decoded.len();
    let reservation = items::reserve(state, key, "embeddings", &model, n).await?;
    let result = embed(state, &slot, texts, decoded).await;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let result = result.and_then(|(vectors, tokens)| {
        let dim = vectors.first().map_or(0, |(_, v)| v.len());
        match plan.dimensions {
            Some(d) if d as usize != dim => Err(ApiError::validation(format!(
                "model '{model}' does not support dimensions (Matryoshka truncation): its \
                 embeddings have {dim} dimensions; leave dimensions out or send {dim}"
            ))),
            _ => Ok((vectors, tokens)),
        }
    });
    let (mut vectors, tokens) = match result {
        Ok(v) => v,
        Err(e) => {
            items::release(state, &reservation, e.status().as_u16(), ms).await;
            return Err(e);
        }
    };
    items::charge(state, &reservation, ms).await?;
    vectors.sort_by_key(|(i, _)| *i);
    let data = vectors
        .into_iter()
        .map(|(index, v)| EmbeddingData {
            object: "embedding",
            index,
            embedding: encode(v, plan.encoding),
        })
        .collect();
    let body = EmbeddingsResponse {
        object: "list",
        data,
        model,
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    };
    Ok(Outcome {
        status: StatusCode::OK,
        body: serde_json::to_string(&body).map_err(ApiError::internal)?,
        balance: None,
    })
}

type Decoded = (
    glimpse_core::backend::PixelBatch,
    glimpse_core::batcher::Incoming,
);

/// The vectors (by input index) and the texts' token count: images through the batcher, all
/// texts in one text-tower pass.
async fn embed(
    state: &AppState,
    slot: &Arc<Slot>,
    texts: Vec<(usize, String)>,
    images: Vec<(usize, Decoded)>,
) -> Result<(Vec<(usize, Vec<f32>)>, usize), ApiError> {
    let image_jobs: Vec<_> = images
        .into_iter()
        .map(|(i, (px, incoming))| {
            let slot = slot.clone();
            tokio::spawn(async move {
                let r = submit(&slot.batcher, ModelJob::embed(px), incoming).await;
                (i, Answer::embedding(r))
            })
        })
        .collect();
    let mut out = Vec::new();
    let mut tokens = 0;
    if !texts.is_empty() {
        let (idx, texts): (Vec<usize>, Vec<String>) = texts.into_iter().unzip();
        let model = Arc::clone(&slot.model);
        let gate = state.models.gate();
        let (vectors, counts) = tokio::task::spawn_blocking(move || {
            let run = || -> glimpse_core::Result<_> {
                Ok((model.embed_texts(&texts)?, model.count_tokens(&texts)?))
            };
            match gate {
                Some(g) => g.run(run),
                None => run(),
            }
        })
        .await
        .map_err(|e| ApiError::internal(format!("text embedding task: {e}")))??;
        tokens = counts.iter().sum();
        out.extend(idx.into_iter().zip(vectors));
    }
    for h in image_jobs {
        let (i, r) = h
            .await
            .map_err(|e| ApiError::internal(format!("image embedding task: {e}")))?;
        out.push((i, r.map_err(|e| with_index(i, ApiError::from(e)))?));
    }
    Ok((out, tokens))
}

fn with_index(i: usize, e: ApiError) -> ApiError {
    ApiError {
        message: format!("input {i}: {}", e.message),
        ..e
    }
}

fn encode(v: Vec<f32>, encoding: Encoding) -> Embedding {
    match encoding {
        Encoding::Float => Embedding::Float(v),
        Encoding::Base64 => {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            Embedding::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32() {
        let v = vec![1.0f32, -0.5, 0.25];
        let Embedding::Base64(s) = encode(v.clone(), Encoding::Base64) else {
            panic!()
        };
        let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        let back: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(back, v);
        let json = serde_json::to_string(&encode(vec![0.1, -0.5], Encoding::Float)).unwrap();
        assert_eq!(json, "[0.1,-0.5]");
    }
}
