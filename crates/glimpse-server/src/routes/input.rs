//! Reading a classification request: the query string and, for a multipart POST, the form.
//!
//! Rules (documented in the OpenAPI description too):
//! - the image is the multipart file field `image`; exactly one file field is accepted, and any
//!   other file field is refused, so a typo is not silently ignored;
//! - `labels`, `url`, `clipModel`/`vitModel` and the decision controls (`minConfidence`,
//!   `fallback`, `topK`, `multiLabel`; see `glimpse_core::decision`) and `classifier` (a saved
//!   classifier's name, issue 24) may come as query parameters or as text fields of
//!   the form; when both give one, the query string wins (the seed documents them as query
//!   parameters, the form fields are a convenience);
//! - an upload and a `url` together: the upload wins; neither: 400;
//! - routes that take several items (the batch and embeddings routes, [`FormLimits::many`]) read
//!   every `image` file field (and, where asked, every `text` field) into [`RawInput::items`], in
//!   the order sent, up to a count and a total byte limit;
//! - an empty form text field counts as not sent (a form's unfilled inputs);
//! - a POST that is not multipart is read as URL mode and its body is not read.
//!
//! While reading, a SHA-256 fingerprint of the request (method, path, query, and each form field's
//! name, file name and content) is built for `Idempotency-Key`. Hashing the parsed form rather
//! than the raw body makes a retry match even though clients pick a new multipart boundary each
//! time. A request without that header is not hashed (a 12 MP upload's SHA-256 is ~1.5 ms).

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, Method, StatusCode};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// The whole multipart body must arrive within this many header timeouts (120 s by default).
const BODY_TIME_FACTOR: u32 = 12;

/// Longest text field accepted (64 labels of 100 characters fit; so does any sane URL).
const MAX_TEXT_FIELD: usize = 16 * 1024;

/// The request as sent, before validation.
#[derive(Debug, Default)]
pub struct RawInput {
    pub labels: Option<String>,
    pub url: Option<String>,
    /// `clipModel` or `vitModel`, whichever the endpoint reads.
    pub model: Option<String>,
    pub min_confidence: Option<String>,
    pub fallback: Option<String>,
    pub top_k: Option<String>,
    pub multi_label: Option<String>,
    /// A saved classifier's name (`clip` only; issue 24).
    pub classifier: Option<String>,
    pub upload: Option<Vec<u8>>,
    /// The items of a multi-item form, in the order sent ([`FormLimits::many`]).
    pub items: Vec<FormItem>,
    /// Hex SHA-256 of the request, for idempotency.
    pub fingerprint: String,
}

/// One item of a multi-item form.
#[derive(Debug)]
pub enum FormItem {
    Image(Vec<u8>),
    Text(String),
}

/// What a form may hold.
#[derive(Debug, Clone, Copy)]
pub struct FormLimits {
    /// Bytes of one file field.
    pub max_upload: usize,
    /// File fields; 1 reads the single-image form ([`RawInput::upload`]).
    pub max_files: usize,
    /// Bytes of the whole form.
    pub max_total: usize,
    /// Read repeated `text` fields as items (the embeddings route).
    pub texts: bool,
}

impl FormLimits {
    /// The single-image form of the classification routes.
    pub fn single(max_upload: usize) -> Self {
        FormLimits {
            max_upload,
            max_files: 1,
            max_total: usize::MAX,
            texts: false,
        }
    }

    /// A form of up to `max_files` images (and, with `texts`, text items) totalling `max_total`.
    pub fn many(max_upload: usize, max_files: usize, max_total: usize, texts: bool) -> Self {
        FormLimits {
            max_upload,
            max_files: max_files.max(2),
            max_total,
            texts,
        }
    }

    fn is_many(&self) -> bool {
        self.max_files > 1
    }
}

impl RawInput {
    /// The slot of a text parameter, by its name; `None` for names this endpoint does not read.
    fn slot(&mut self, name: &str, model_param: &str) -> Option<&mut Option<String>> {
        Some(match name {
            "labels" => &mut self.labels,
            "url" => &mut self.url,
            "minConfidence" => &mut self.min_confidence,
            "fallback" => &mut self.fallback,
            "topK" => &mut self.top_k,
            "multiLabel" => &mut self.multi_label,
            "classifier" => &mut self.classifier,
            n if n == model_param => &mut self.model,
            _ => return None,
        })
    }

    /// The decision fields, for `glimpse_core::decision::Decision::parse`.
    pub fn decision(&self) -> glimpse_core::decision::RawDecision<'_> {
        glimpse_core::decision::RawDecision {
            min_confidence: self.min_confidence.as_deref(),
            fallback: self.fallback.as_deref(),
            top_k: self.top_k.as_deref(),
            multi_label: self.multi_label.as_deref(),
        }
    }

    /// Each text parameter this one lacks, taken from `other` (the query wins over the form).
    fn fill_from(&mut self, other: RawInput) {
        let RawInput {
            labels,
            url,
            model,
            min_confidence,
            fallback,
            top_k,
            multi_label,
            classifier,
            ..
        } = other;
        for (mine, theirs) in [
            (&mut self.labels, labels),
            (&mut self.url, url),
            (&mut self.model, model),
            (&mut self.min_confidence, min_confidence),
            (&mut self.fallback, fallback),
            (&mut self.top_k, top_k),
            (&mut self.multi_label, multi_label),
            (&mut self.classifier, classifier),
        ] {
            if mine.is_none() {
                *mine = theirs;
            }
        }
    }
}

/// Read query and form. `model_param` is `clipModel` or `vitModel` (`model` on the embeddings
/// route).
pub async fn read_input(
    req: Request,
    state: &AppState,
    model_param: &str,
    limits: FormLimits,
) -> Result<RawInput, ApiError> {
    let mut hash = Fingerprint(
        req.headers()
            .contains_key("idempotency-key")
            .then(Sha256::new),
    );
    hash_part(&mut hash, req.method().as_str().as_bytes());
    hash_part(&mut hash, req.uri().path().as_bytes());
    let query = req.uri().query().unwrap_or("").to_string();
    hash_part(&mut hash, query.as_bytes());

    let mut input = RawInput::default();
    // serde_urlencoded decodes lossily: `labels=%ff` would become a U+FFFD label and be charged.
    if !percent_decodes_to_utf8(&query) {
        return Err(ApiError::validation(
            "the query string percent-decodes to bytes that are not UTF-8",
        ));
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&query)
        .map_err(|_| ApiError::validation("the query string is not valid URL encoding"))?;
    // The first occurrence of a repeated parameter counts.
    for (k, v) in pairs {
        let Some(slot) = input.slot(&k, model_param) else {
            continue;
        };
        if slot.is_none() {
            *slot = Some(v);
        }
    }

    if req.method() == Method::POST && is_multipart(&req) {
        let mp = Multipart::from_request(req, state)
            .await
            .map_err(|_| ApiError::validation("malformed multipart/form-data body"))?;
        // The header timeout does not cover the body: without these limits a client that stops
        // (or drips) mid-upload holds an in-flight slot forever. No gap may exceed the header
        // timeout, and the whole form must arrive within BODY_TIME_FACTOR times it.
        let idle = state.settings.header_timeout;
        let total = idle.saturating_mul(BODY_TIME_FACTOR);
        let form = read_form(mp, &mut input, &mut hash, model_param, limits, idle);
        tokio::time::timeout(total, form)
            .await
            .map_err(|_| slow_body())??;
    }
    input.fingerprint = hash.0.map(|h| hex(&h.finalize())).unwrap_or_default();
    Ok(input)
}

/// Whether every `%XX` escape of `query` (a `%` not followed by two hex digits stays literal, as
/// in the WHATWG rules) together with the plain bytes makes valid UTF-8.
fn percent_decodes_to_utf8(query: &str) -> bool {
    let b = query.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap() * 16 + hex(l).unwrap()) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&out).is_ok()
}

fn is_multipart(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        })
}

async fn read_form(
    mut mp: Multipart,
    input: &mut RawInput,
    hash: &mut Fingerprint,
    model_param: &str,
    limits: FormLimits,
    idle: std::time::Duration,
) -> Result<(), ApiError> {
    let max_upload = limits.max_upload;
    let mut form = RawInput::default();
    let (mut files, mut total) = (0usize, 0usize);
    while let Some(mut field) = tokio::time::timeout(idle, mp.next_field())
        .await
        .map_err(|_| slow_body())?
        .map_err(multipart_error)?
    {
        let name = field.name().unwrap_or("").to_string();
        let file_name = field.file_name().map(str::to_string);
        let is_file = name == "image" || file_name.is_some();
        let is_text_item = limits.texts && name == "text" && !is_file;
        hash_part(hash, name.as_bytes());
        hash_part(hash, file_name.as_deref().unwrap_or("").as_bytes());
        let limit = if is_file { max_upload } else { MAX_TEXT_FIELD };
        if is_file && limits.is_many() {
            files += 1;
            if files > limits.max_files {
                return Err(ApiError::validation(format!(
                    "at most {} images per request (GLIMPSE_MAX_BATCH_IMAGES)",
                    limits.max_files
                )));
            }
        }
        let mut data: Vec<u8> = Vec::new();
        while let Some(chunk) = tokio::time::timeout(idle, field.chunk())
            .await
            .map_err(|_| slow_body())?
            .map_err(multipart_error)?
        {
            if data.len() + chunk.len() > limit {
                return Err(if is_file {
                    ApiError::too_large(format!(
                        "the uploaded image is larger than {max_upload} bytes"
                    ))
                } else {
                    ApiError::validation(format!(
                        "form field '{name}' is longer than {MAX_TEXT_FIELD} bytes"
                    ))
                });
            }
            total += chunk.len();
            if total > limits.max_total {
                return Err(ApiError::too_large(format!(
                    "the request's files and fields total more than {} bytes \
                     (GLIMPSE_MAX_BATCH_BYTES)",
                    limits.max_total
                )));
            }
            data.extend_from_slice(&chunk);
        }
        if let Some(h) = &mut hash.0 {
            hash_part_into(h, &Sha256::digest(&data));
        }
        if is_file {
            if name != "image" {
                return Err(ApiError::validation(format!(
                    "unexpected file field '{name}'; send the image in the field 'image'"
                )));
            }
            if limits.is_many() {
                input.items.push(FormItem::Image(data));
                continue;
            }
            if input.upload.is_some() {
                return Err(ApiError::validation(
                    "send exactly one file field ('image')",
                ));
            }
            input.upload = Some(data);
            continue;
        }
        if is_text_item {
            let text = String::from_utf8(data)
                .map_err(|_| ApiError::validation("a 'text' field is not UTF-8 text"))?;
            input.items.push(FormItem::Text(text));
            continue;
        }
        let Some(slot) = form.slot(&name, model_param) else {
            continue;
        };
        let text = String::from_utf8(data)
            .map_err(|_| ApiError::validation(format!("form field '{name}' is not UTF-8 text")))?;
        // An empty form field is an unfilled one (Swagger's "Try it out" and HTML forms send
        // them): the same as leaving it out.
        if !text.trim().is_empty() {
            slot.get_or_insert(text);
        }
    }
    // The query string wins over the form.
    input.fill_from(form);
    Ok(())
}

fn slow_body() -> ApiError {
    ApiError::validation("the request body arrived too slowly")
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large("the request body is larger than the upload limit")
    } else {
        ApiError::validation("malformed multipart/form-data body")
    }
}

/// The request's SHA-256 while it is read, kept only when an `Idempotency-Key` will use it.
struct Fingerprint(Option<Sha256>);

fn hash_part(h: &mut Fingerprint, bytes: &[u8]) {
    if let Some(h) = &mut h.0 {
        hash_part_into(h, bytes);
    }
}

/// Length-prefixed so that field boundaries cannot be shifted to forge a collision.
fn hash_part_into(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
