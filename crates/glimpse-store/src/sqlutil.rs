//! Pieces shared by the SQLite and PostgreSQL stores: argument checks and error mapping.

use sqlx::error::ErrorKind;

use crate::{StoreError, MAX_CREDITS};

/// Longest `Idempotency-Key` kept (Stripe's limit).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// Most ledger rows `account` returns, whatever `recent` asks for.
pub const MAX_RECENT: usize = 1000;
/// Stale reservations closed per reaper transaction, so one reap never holds locks for long.
pub const REAP_BATCH: i64 = 200;

pub fn db_err(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        if db.kind() == ErrorKind::CheckViolation {
            return StoreError::Invalid(format!("a balance must stay between 0 and {MAX_CREDITS}"));
        }
    }
    StoreError::Database(e.to_string())
}

pub fn migrate_err(e: sqlx::migrate::MigrateError) -> StoreError {
    StoreError::Database(format!("migration failed: {e}"))
}

/// `credits` for `create_key` (zero allowed) and `topup` (must be positive).
pub fn check_credits(credits: i64, allow_zero: bool) -> Result<(), StoreError> {
    let low = if allow_zero { 0 } else { 1 };
    if credits < low || credits > MAX_CREDITS {
        return Err(StoreError::Invalid(format!(
            "credits must be between {low} and {MAX_CREDITS}, got {credits}"
        )));
    }
    Ok(())
}

pub fn check_cost(cost: i64) -> Result<(), StoreError> {
    if !(0..=MAX_CREDITS).contains(&cost) {
        return Err(StoreError::Invalid(format!(
            "cost must be between 0 and {MAX_CREDITS}, got {cost}"
        )));
    }
    Ok(())
}

pub fn check_idempotency_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(StoreError::Invalid(format!(
            "idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes"
        )));
    }
    Ok(())
}

pub fn recent_limit(recent: usize) -> i64 {
    recent.min(MAX_RECENT) as i64
}

/// Latencies are stored as given, but NaN/inf would poison sums and JSON: store none instead.
pub fn finite(latency_ms: f64) -> Option<f64> {
    latency_ms.is_finite().then_some(latency_ms)
}
