//! The OpenAPI declarations of `/api/classifiers` (issue 24), merged into the document by
//! `openapi::document`; kept beside the handlers so the shared `openapi.rs` changes by a line.
#![allow(dead_code)]

use utoipa::{OpenApi, ToSchema};

use super::classifiers::{ClassifierList, ClassifierView, Include, LabelView};
use crate::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    paths(list, create, get_one, replace, delete),
    components(schemas(ClassifierView, LabelView, ClassifierList, ClassifierBody, LabelBody,
        ClassifierForm)),
    tags((name = "classifiers", description = "Saved classifiers, taught by prompts and example \
        images, owned by the key that made them (another key gets 404). Use one with \
        `/api/image-classification/clip?classifier=NAME`."))
)]
pub struct ClassifiersDoc;

/// A classifier as sent to create or replace it.
#[derive(ToSchema)]
pub struct ClassifierBody {
    /// 1 to 64 of `[a-z0-9-_]`. Required to create; to replace, the path's name (or left out).
    #[schema(nullable = false, pattern = "^[a-z0-9_-]{1,64}$")]
    pub name: Option<String>,
    /// A CLIP model id from the server's allow-list. Default: the server's CLIP model.
    #[schema(nullable = false)]
    pub model: Option<String>,
    /// 1 to 64 labels.
    #[schema(min_items = 1, max_items = 64)]
    pub labels: Vec<LabelBody>,
    /// Default `minConfidence` of calls that use the classifier (they may override it).
    #[schema(
        rename = "minConfidence",
        nullable = false,
        minimum = 0.0,
        maximum = 1.0
    )]
    pub min_confidence: Option<f64>,
    /// Default `fallback` (1 to 64 characters).
    #[schema(nullable = false, min_length = 1, max_length = 64)]
    pub fallback: Option<String>,
    /// Default `multiLabel` (allowed: a classifier's scores are independent per label).
    #[schema(rename = "multiLabel", nullable = false)]
    pub multi_label: Option<bool>,
}

/// One label.
#[derive(ToSchema)]
pub struct LabelBody {
    /// 1 to 100 characters, unique in the classifier.
    pub name: String,
    /// Up to 16 prompts of up to 300 characters: templates with `{label}` or whole sentences.
    /// Default: the server's prompt templates.
    #[schema(nullable = false, max_items = 16)]
    pub prompts: Option<Vec<String>>,
    /// Example images: `http(s)://` URLs (fetched like `?url=`) or `data:image/…;base64,` URIs;
    /// with uploads (multipart), at most 32 per label in all. One credit each.
    #[schema(nullable = false, max_items = 32)]
    pub examples: Option<Vec<String>>,
}

/// The multipart form of a create or replace.
#[derive(ToSchema)]
pub struct ClassifierForm {
    /// The classifier as JSON (`ClassifierBody`).
    pub classifier: String,
    /// Example images of label LABEL, as file fields named `examples[LABEL]` (repeat the field
    /// for several).
    #[schema(rename = "examples[LABEL]", value_type = Option<String>, format = Binary, nullable = false)]
    pub examples: Option<Vec<u8>>,
}

#[utoipa::path(get, path = "/api/classifiers", tag = "classifiers",
    summary = "The calling key's saved classifiers",
    params(Include),
    responses(
        (status = 200, description = "Its classifiers, by name", body = ClassifierList),
        (status = 400, description = "VALIDATION_ERROR", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
        (status = 503, description = "OVERLOADED", body = ErrorBody)),
    security(("api_key" = [])))]
fn list() {}

#[utoipa::path(post, path = "/api/classifiers", tag = "classifiers",
    summary = "Save a classifier (one credit per example image; all or nothing)",
    request_body(content(
        (ClassifierBody = "application/json"),
        (ClassifierForm = "multipart/form-data"))),
    responses(
        (status = 201, description = "Saved", body = ClassifierView,
            headers(("X-Credits-Remaining" = i64, description = "Balance after this call"))),
        (status = 400, description = "VALIDATION_ERROR: a bad field, a limit, a name in use, an example that cannot be fetched or decoded (nothing saved, nothing charged)", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
        (status = 402, description = "INSUFFICIENT_CREDITS: fewer credits than examples", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody),
        (status = 503, description = "OVERLOADED", body = ErrorBody)),
    security(("api_key" = [])))]
fn create() {}

#[utoipa::path(get, path = "/api/classifiers/{name}", tag = "classifiers",
    summary = "One saved classifier",
    params(("name" = String, Path, description = "The classifier's name"), Include),
    responses(
        (status = 200, description = "The classifier", body = ClassifierView),
        (status = 400, description = "VALIDATION_ERROR", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: this key has no classifier of that name", body = ErrorBody)),
    security(("api_key" = [])))]
fn get_one() {}

#[utoipa::path(put, path = "/api/classifiers/{name}", tag = "classifiers",
    summary = "Replace a saved classifier (recomputed; one credit per example image)",
    params(("name" = String, Path, description = "The classifier's name")),
    request_body(content(
        (ClassifierBody = "application/json"),
        (ClassifierForm = "multipart/form-data"))),
    responses(
        (status = 200, description = "Replaced", body = ClassifierView),
        (status = 400, description = "VALIDATION_ERROR", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
        (status = 402, description = "INSUFFICIENT_CREDITS", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody)),
    security(("api_key" = [])))]
fn replace() {}

#[utoipa::path(delete, path = "/api/classifiers/{name}", tag = "classifiers",
    summary = "Delete a saved classifier",
    params(("name" = String, Path, description = "The classifier's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody)),
    security(("api_key" = [])))]
fn delete() {}
