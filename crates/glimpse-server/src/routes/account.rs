//! `GET /api/account`: the calling key's balance and recent ledger rows.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::auth::{set_credits_header, ApiKey};
use crate::error::ApiError;
use crate::state::AppState;

/// Ledger rows returned.
pub const RECENT_USAGE: usize = 20;

pub async fn account(State(state): State<AppState>, key: ApiKey) -> Result<Response, ApiError> {
    let account = state.store.account(&key.id, RECENT_USAGE).await?;
    let balance = account.credits;
    let mut res = Json(account).into_response();
    set_credits_header(res.headers_mut(), balance);
    Ok(res)
}
