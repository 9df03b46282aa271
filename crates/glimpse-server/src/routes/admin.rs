//! The admin API under `/admin` (mounted only when `GLIMPSE_ADMIN_TOKEN` is set).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A label for the key (who or what uses it).
    #[serde(default)]
    #[schema(max_length = 200)]
    pub name: String,
    /// Starting credits.
    #[serde(deserialize_with = "whole_number")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    pub credits: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Topup {
    /// Credits to add.
    #[serde(deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub credits: i64,
}

/// JSON Schema's `integer` includes `5.0`; serde's i64 does not. Accept whole floats too.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        _ => Err(serde::de::Error::custom("credits must be a whole number")),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Balance {
    pub id: String,
    /// Balance after the change.
    pub credits: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Revoked {
    pub id: String,
    pub revoked: bool,
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large("request body too large"),
        _ => ApiError::validation(format!("invalid JSON body: {}", e.body_text())),
    })
}

fn check_credits(credits: i64, min: i64) -> Result<(), ApiError> {
    if credits < min || credits > glimpse_store::MAX_CREDITS {
        return Err(ApiError::validation(format!(
            "credits must be between {min} and {}",
            glimpse_store::MAX_CREDITS
        )));
    }
    Ok(())
}

pub async fn create_key(
    _: Admin,
    State(state): State<AppState>,
    req: Result<Json<CreateKey>, JsonRejection>,
) -> Result<(StatusCode, Json<glimpse_store::NewKey>), ApiError> {
    let req = body(req)?;
    check_credits(req.credits, 0)?;
    if req.name.chars().count() > 200 {
        return Err(ApiError::validation("name must be at most 200 characters"));
    }
    let key = state.store.create_key(&req.name, req.credits).await?;
    Ok((StatusCode::CREATED, Json(key)))
}

pub async fn list_keys(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<Vec<glimpse_store::KeyInfo>>, ApiError> {
    Ok(Json(state.store.list_keys().await?))
}

pub async fn topup(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Result<Json<Topup>, JsonRejection>,
) -> Result<Json<Balance>, ApiError> {
    let req = body(req)?;
    check_credits(req.credits, 1)?;
    let credits = state.store.topup(&id, req.credits).await?;
    Ok(Json(Balance { id, credits }))
}

pub async fn revoke(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    state.store.revoke(&id).await?;
    Ok(Json(Revoked { id, revoked: true }))
}
