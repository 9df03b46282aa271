//! Liveness and readiness (the front page is the playground, `crate::playground`).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` (healthz) or `ready` (readyz).
    pub status: String,
}

/// The process is up.
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Models are loaded (they are before the listener serves), the store answers and its writes
/// work (`Store::check_writes`: a one-row commit at most once a second, and on SQLite the file
/// opened is still there); 503 while shutting down, so load balancers stop sending.
pub async fn readyz(State(state): State<AppState>) -> Response {
    if !state.is_ready() {
        return ApiError::new(ErrorCode::NotReady, "shutting down").into_response();
    }
    if let Err(e) = state.store.ping().await {
        tracing::warn!(error = %e, "readiness: store unreachable");
        return ApiError::new(ErrorCode::NotReady, "the key store is unreachable").into_response();
    }
    if let Err(e) = state.store.check_writes().await {
        tracing::warn!(error = %e, "readiness: store writes fail");
        return ApiError::new(ErrorCode::NotReady, "the key store cannot write").into_response();
    }
    Json(Health {
        status: "ready".into(),
    })
    .into_response()
}
