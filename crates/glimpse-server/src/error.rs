//! The one HTTP error type: every failure leaves the server as `{ "message", "code" }` with the
//! contract's status code. Server-side details go to the log, never into a body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use glimpse_core::batcher::BatchError;
use glimpse_core::CoreError;
use glimpse_store::StoreError;

use crate::fetch::FetchError;
use serde::Serialize;
use utoipa::ToSchema;

/// The error body of every failed call.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
#[schema(example = json!({"message": "labels must hold at least 1 non-empty label", "code": "VALIDATION_ERROR"}))]
pub struct ErrorBody {
    /// Human-readable explanation.
    pub message: String,
    /// Machine-readable code: VALIDATION_ERROR, UNAUTHORIZED, INSUFFICIENT_CREDITS,
    /// PAYLOAD_TOO_LARGE, RATE_LIMITED, OVERLOADED, IDEMPOTENCY_IN_PROGRESS,
    /// IDEMPOTENCY_MISMATCH, NOT_FOUND, METHOD_NOT_ALLOWED, NOT_READY or INTERNAL_ERROR.
    pub code: String,
}

/// The error codes, each tied to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Validation,
    Unauthorized,
    InsufficientCredits,
    NotFound,
    MethodNotAllowed,
    IdempotencyInProgress,
    PayloadTooLarge,
    IdempotencyMismatch,
    RateLimited,
    Internal,
    Overloaded,
    NotReady,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Validation => "VALIDATION_ERROR",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::InsufficientCredits => "INSUFFICIENT_CREDITS",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ErrorCode::IdempotencyInProgress => "IDEMPOTENCY_IN_PROGRESS",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::IdempotencyMismatch => "IDEMPOTENCY_MISMATCH",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Internal => "INTERNAL_ERROR",
            ErrorCode::Overloaded => "OVERLOADED",
            ErrorCode::NotReady => "NOT_READY",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::Validation => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::InsufficientCredits => StatusCode::PAYMENT_REQUIRED,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::IdempotencyInProgress => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Overloaded | ErrorCode::NotReady => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The code a bare status stands for, for responses produced outside our handlers
    /// (axum rejections, the router's 404/405, body limits).
    pub fn for_status(status: StatusCode) -> ErrorCode {
        match status.as_u16() {
            401 => ErrorCode::Unauthorized,
            402 => ErrorCode::InsufficientCredits,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            409 => ErrorCode::IdempotencyInProgress,
            413 => ErrorCode::PayloadTooLarge,
            422 => ErrorCode::IdempotencyMismatch,
            429 => ErrorCode::RateLimited,
            503 => ErrorCode::Overloaded,
            400..=499 => ErrorCode::Validation,
            _ => ErrorCode::Internal,
        }
    }
}

/// An error answer. `retry_after` (seconds) becomes a `Retry-After` header.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after: Option<u64>,
    /// A failure the same request may not meet again (a `?url=` fetch that timed out, could not
    /// connect or got an upstream error; a decode over the time limit): never stored as an
    /// `Idempotency-Key` answer, whatever its code, so a retry runs again.
    pub transient: bool,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
            transient: false,
        }
    }
    /// Marks the error as `transient`.
    pub fn transient(self) -> Self {
        ApiError {
            transient: true,
            ..self
        }
    }
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Validation, message)
    }
    /// One body for a missing, malformed, unknown or revoked key, so the answer tells an
    /// attacker nothing about which it was.
    pub fn unauthorized() -> Self {
        Self::new(
            ErrorCode::Unauthorized,
            "missing or invalid X-API-Key header (or Authorization: Bearer credential)",
        )
    }
    pub fn insufficient_credits() -> Self {
        Self::new(
            ErrorCode::InsufficientCredits,
            "insufficient credits for this call; top up the key",
        )
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PayloadTooLarge, message)
    }
    /// A server-side failure: the detail is logged here and replaced by a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            ErrorCode::Internal,
            "internal server error; the call was not charged, retry later",
        )
    }
    pub fn overloaded(message: impl Into<String>, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(ErrorCode::Overloaded, message)
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            message: self.message.clone(),
            code: self.code.as_str().to_string(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status(), axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// Core errors: the caller's input → 400, anything else is ours → 500 (logged with its causes).
impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        if e.is_client_error() {
            ApiError::validation(e.to_string())
        } else {
            ApiError::internal(glimpse_core::error::chain(&e))
        }
    }
}

/// A job the batcher could not answer: a full queue is shed as 503 (after the debit, so the
/// caller refunds it); a model failure after a successful decode is ours, whatever its kind.
impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::Overloaded => {
                ApiError::overloaded("the inference queue is full; retry shortly", 1)
            }
            other => ApiError::internal(glimpse_core::error::chain(&other)),
        }
    }
}

/// What a failed `?url=` fetch tells the client: its own URL's faults, the size cap, and
/// otherwise only that the fetch failed. The upstream's status, content type, or whether a port
/// answered would make the server a scanner of other hosts; they go to the log.
impl From<FetchError> for ApiError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::TooLarge { .. } => ApiError::too_large(e.to_string()),
            // About the client's own URL ("url must not contain a username or password"); the same
            // faults of a redirect target ("the redirect target of url …") are the upstream's.
            FetchError::InvalidUrl(m) if m.starts_with("url ") => ApiError::validation(m),
            FetchError::InvalidUrl(detail) => {
                tracing::info!(%detail, "url fetch failed");
                ApiError::validation("could not fetch the image from url")
            }
            FetchError::Forbidden(detail) => {
                tracing::info!(%detail, "url refused");
                ApiError::validation(
                    "url is not allowed: it must point to a public http or https address",
                )
            }
            // The upstream may answer next time: never stored for an Idempotency-Key replay.
            FetchError::Timeout(detail) | FetchError::Upstream(detail) => {
                tracing::info!(%detail, "url fetch failed");
                ApiError::validation("could not fetch the image from url").transient()
            }
        }
    }
}

/// Store errors outside the money path (that path matches `InsufficientCredits` itself).
/// An unreachable database is a 503 with `Retry-After`, so clients back off instead of
/// treating it as a bug.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::MalformedKey => ApiError::unauthorized(),
            StoreError::InsufficientCredits { .. } => ApiError::insufficient_credits(),
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::Invalid(msg) => ApiError::validation(msg),
            StoreError::Database(detail) => {
                tracing::error!(error = %detail, "store unavailable");
                ApiError::overloaded("the key store is unavailable; retry later", 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_status() {
        for code in [
            ErrorCode::Validation,
            ErrorCode::Unauthorized,
            ErrorCode::InsufficientCredits,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::IdempotencyInProgress,
            ErrorCode::PayloadTooLarge,
            ErrorCode::IdempotencyMismatch,
            ErrorCode::RateLimited,
            ErrorCode::Internal,
            ErrorCode::Overloaded,
        ] {
            assert_eq!(ErrorCode::for_status(code.status()), code, "{code:?}");
        }
    }

    #[test]
    fn internal_errors_hide_their_detail() {
        let e = ApiError::from(CoreError::internal("/secret/path/model.safetensors"));
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(!e.message.contains("/secret"), "{}", e.message);
        let e = ApiError::from(CoreError::InvalidImage("not a png".into()));
        assert_eq!(e.code, ErrorCode::Validation);
    }
}
