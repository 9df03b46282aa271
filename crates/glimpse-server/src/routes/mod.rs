//! The router: every route of the contract, with the layers that make every failure a
//! `{message, code}` body.

pub mod account;
pub mod admin;
pub mod batch;
pub mod classifiers;
mod classifiers_doc;
pub mod classify;
mod docs;
pub mod embeddings;
pub mod health;
pub mod input;
mod items;
pub mod openapi;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{from_fn, from_fn_with_state, map_response, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;

use crate::drain::Drain;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::{metrics, playground, request_id};

/// The whole HTTP API.
pub fn app(state: AppState) -> Router {
    let classify = Router::new()
        .route(
            "/api/image-classification/clip",
            get(classify::clip).post(classify::clip),
        )
        .route(
            "/api/image-classification/vit",
            get(classify::vit).post(classify::vit),
        )
        .route_layer(from_fn_with_state(state.clone(), shed_load))
        // Outermost: whatever a layer or handler answered early, read the unread upload first.
        .route_layer(from_fn_with_state(
            Drain::new(&state, state.settings.max_upload_bytes),
            crate::drain::drain_unread_body,
        ));
    // Several items per call: a larger body (GLIMPSE_MAX_BATCH_BYTES), otherwise the same
    // layers as the single routes.
    let many = Router::new()
        .route("/api/image-classification/clip/batch", post(batch::clip))
        .route("/api/image-classification/vit/batch", post(batch::vit))
        .route("/v1/embeddings", post(embeddings::openai))
        .route("/api/embeddings", post(embeddings::multipart))
        .route_layer(from_fn_with_state(state.clone(), shed_load))
        .route_layer(from_fn_with_state(
            Drain::new(&state, state.settings.max_batch_bytes),
            crate::drain::drain_unread_body,
        ))
        .layer(DefaultBodyLimit::max(
            state
                .settings
                .max_batch_bytes
                .saturating_add(crate::limits::MULTIPART_SLACK),
        ));

    // Saved classifiers (issue 24): a create or replace carries every example image, so its
    // body limit is its own.
    let classifiers = Router::new()
        .route(
            "/api/classifiers",
            get(classifiers::list).post(classifiers::create),
        )
        .route(
            "/api/classifiers/{name}",
            get(classifiers::get_one)
                .put(classifiers::replace)
                .delete(classifiers::delete),
        )
        .route_layer(DefaultBodyLimit::max(classifiers::MAX_BODY_BYTES))
        .route_layer(from_fn_with_state(state.clone(), shed_load))
        .route_layer(from_fn_with_state(
            Drain::new(&state, classifiers::MAX_BODY_BYTES),
            crate::drain::drain_unread_body,
        ));

    let mut router = Router::new()
        .merge(classify)
        .merge(many)
        .merge(classifiers)
        .route("/api/account", get(account::account))
        .route("/", get(playground::index))
        .route("/playground.js", get(playground::js))
        .route("/playground.css", get(playground::css))
        .route("/metrics", get(scrape_metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(docs::openapi))
        .route("/docs", get(docs::index))
        .route("/docs/", get(docs::index))
        .route("/docs/init.js", get(docs::init_js))
        .route("/docs/swagger-ui.css", get(docs::css))
        .route("/docs/swagger-ui-bundle.js", get(docs::bundle))
        .route("/docs/swagger-ui-standalone-preset.js", get(docs::preset))
        .route("/docs/LICENSE", get(docs::license));
    // Without a token the admin routes do not exist: 404, like any unknown path.
    if state.settings.admin_token.is_some() {
        router = router
            .route("/admin/keys", get(admin::list_keys).post(admin::create_key))
            .route("/admin/keys/{id}/topup", post(admin::topup))
            .route("/admin/keys/{id}/revoke", post(admin::revoke));
    }
    let body_limit = state
        .settings
        .max_upload_bytes
        .saturating_add(crate::limits::MULTIPART_SLACK);
    router
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(|_panic| {
            ApiError::internal("a request handler panicked").into_response()
        }))
        .layer(map_response(normalize_errors))
        // Outside the error normaliser, so they see final statuses; the request id outermost,
        // so every answer has it and everything inside logs within its span.
        .layer(from_fn_with_state(
            Arc::clone(&state.metrics),
            metrics::track,
        ))
        .layer(from_fn(request_id::layer))
        .with_state(state)
}

/// `GET /metrics`. Here, not in `metrics`, so that module needs no `AppState`: the decode gate
/// and each zero-shot model's prompt cache keep their live numbers, copied into the gauges just
/// before rendering.
async fn scrape_metrics(State(state): State<AppState>) -> Response {
    let decoder = &state.decoder;
    state
        .metrics
        .set_decode_memory(decoder.memory_in_use(), decoder.memory_budget());
    for slot in state.models.for_task(glimpse_core::Task::ZeroShot) {
        let model = &slot.model;
        state
            .metrics
            .set_prompt_cache(model.id(), model.prompt_cache_stats());
    }
    let memory: Vec<(&str, u64)> = state
        .models
        .slots()
        .iter()
        .filter_map(|s| Some((s.model.id(), s.model.resident_bytes()?)))
        .collect();
    state
        .metrics
        .set_memory(&memory, crate::metrics::resident_bytes());
    state.metrics.scrape()
}

/// Error answers made outside our handlers (the router's 405, axum's extractor rejections,
/// body-limit 413s) come as plain text or empty bodies: give them the `{message, code}` shape.
/// Their text is replaced, not forwarded, so nothing internal can leak through it.
async fn normalize_errors(res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if is_json {
        return res;
    }
    let code = ErrorCode::for_status(status);
    let message = match code {
        ErrorCode::NotFound => "no such route",
        ErrorCode::MethodNotAllowed => "method not allowed on this route",
        ErrorCode::PayloadTooLarge => "request body too large",
        ErrorCode::Validation => "bad request",
        ErrorCode::Overloaded => "service unavailable; retry later",
        _ => "internal server error",
    };
    let (mut parts, _) = res.into_parts();
    let body = ApiError::new(code, message).body();
    let mut fresh = (status, axum::Json(body)).into_response();
    // Keep headers such as `Allow` and `Retry-After`, with the new body's type and length.
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (k, v) in parts.headers.iter() {
        fresh.headers_mut().insert(k, v.clone());
    }
    fresh
}

/// Middleware for the classification routes: hold one in-flight permit for the whole call, or
/// answer 503 OVERLOADED at once when none is free (also while shutting down).
pub async fn shed_load(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !state.is_ready() {
        return ApiError::overloaded("the server is shutting down; retry on another replica", 1)
            .into_response();
    }
    match state.in_flight.clone().try_acquire_owned() {
        Ok(permit) => {
            let res = next.run(req).await;
            drop(permit);
            res
        }
        Err(_) => {
            ApiError::overloaded("too many requests in flight; retry shortly", 1).into_response()
        }
    }
}
