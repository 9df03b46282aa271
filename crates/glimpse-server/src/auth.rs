//! The API-key extractor (`X-API-Key`, or `Authorization: Bearer <key>` as the OpenAI clients send
//! it), the admin bearer-token check, and the `X-Credits-Remaining` header.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::limits::rate_limited;
use crate::state::AppState;

pub const API_KEY_HEADER: &str = "x-api-key";
pub const CREDITS_HEADER: &str = "x-credits-remaining";

/// An authenticated caller. Extracting it answers 401 (one body for every kind of bad key) and,
/// when a rate limit is configured, 429 for a key over its rate. The key is `X-API-Key`; without
/// that header, an `Authorization: Bearer` credential (the scheme name in any case).
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
}

impl FromRequestParts<AppState> for ApiKey {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let raw = presented_key(&parts.headers)
            .ok_or_else(|| ApiError::unauthorized().into_response())?;
        let info = match state.store.authenticate(raw).await {
            Ok(Some(info)) if !info.revoked => info,
            Ok(_) | Err(glimpse_store::StoreError::MalformedKey) => {
                return Err(ApiError::unauthorized().into_response())
            }
            Err(e) => return Err(ApiError::from(e).into_response()),
        };
        let key = ApiKey {
            id: info.id,
            name: info.name,
        };
        if let Some(rl) = &state.rate {
            if let Err(secs) = rl.check(&key.id) {
                let mut res = rate_limited(secs).into_response();
                add_credits_header(state, &key, res.headers_mut()).await;
                return Err(res);
            }
        }
        Ok(key)
    }
}

/// The API key a request presents: `X-API-Key`, else an `Authorization: Bearer` credential.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(API_KEY_HEADER) {
        return v.to_str().ok().map(str::trim).filter(|v| !v.is_empty());
    }
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, credential) = auth.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
        .filter(|c| !c.is_empty())
}

/// Set `X-Credits-Remaining` from the store (best effort: a store hiccup drops the header, not
/// the answer).
pub async fn add_credits_header(state: &AppState, key: &ApiKey, headers: &mut HeaderMap) {
    if let Ok(balance) = state.store.balance(&key.id).await {
        set_credits_header(headers, balance);
    }
}

pub fn set_credits_header(headers: &mut HeaderMap, balance: i64) {
    headers.insert(CREDITS_HEADER, HeaderValue::from(balance));
}

/// The admin guard: `Authorization: Bearer <GLIMPSE_ADMIN_TOKEN>`, compared in constant time.
/// The `/admin` routes are not mounted at all when no token is configured (404).
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(expected) = state.settings.admin_token.as_deref() else {
            return Err(ApiError::not_found("no such route"));
        };
        let given = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        if token_matches(given, expected) {
            Ok(Admin)
        } else {
            Err(ApiError::new(
                crate::error::ErrorCode::Unauthorized,
                "missing or invalid admin bearer token",
            ))
        }
    }
}

/// Constant time in the token's content; `ct_eq` on slices of different lengths is false
/// without looking at the bytes, which leaks only the length.
fn token_matches(given: &str, expected: &str) -> bool {
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn key_from_either_header() {
        let key = |p: &[(&'static str, &'static str)]| {
            super::presented_key(&headers(p)).map(str::to_string)
        };
        assert_eq!(key(&[("x-api-key", " gk_a ")]).as_deref(), Some("gk_a"));
        assert_eq!(
            key(&[("authorization", "Bearer gk_b")]).as_deref(),
            Some("gk_b")
        );
        assert_eq!(
            key(&[("authorization", "bearer  gk_b ")]).as_deref(),
            Some("gk_b")
        );
        // X-API-Key wins; other schemes and empty credentials are no key.
        assert_eq!(
            key(&[("x-api-key", "gk_a"), ("authorization", "Bearer gk_b")]).as_deref(),
            Some("gk_a")
        );
        assert_eq!(key(&[("authorization", "Basic Z2s6eA==")]), None);
        assert_eq!(key(&[("authorization", "Bearer ")]), None);
        assert_eq!(key(&[("authorization", "Bearergk_b")]), None);
        assert_eq!(key(&[]), None);
    }

    #[test]
    fn token_comparison() {
        assert!(super::token_matches("abc", "abc"));
        assert!(!super::token_matches("abd", "abc"));
        assert!(!super::token_matches("ab", "abc"));
        assert!(!super::token_matches("", "abc"));
    }
}
