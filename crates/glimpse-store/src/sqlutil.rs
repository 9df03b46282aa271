//! Pieces shared by the SQLite and PostgreSQL stores: argument checks and error mapping.

use sqlx::error::ErrorKind;

use crate::{DatabaseError, StoreError, MAX_CREDITS};

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
    StoreError::Database(DatabaseError::caused(e.to_string(), e))
}

pub fn migrate_err(e: sqlx::migrate::MigrateError) -> StoreError {
    StoreError::Database(DatabaseError::caused(format!("migration failed: {e}"), e))
}

/// The same failure for every caller that shares it (a group commit, a cached write check):
/// a database error as it is, anything else as a database error caused by it.
pub fn shared_err(e: &StoreError) -> DatabaseError {
    match e {
        StoreError::Database(d) => d.clone(),
        other => DatabaseError::new(other.to_string()),
    }
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

/// Idempotency rows deleted per prune transaction, so one prune never holds locks for long.
pub const PRUNE_BATCH: i64 = 1000;

/// Longest a `check_writes` probe may take before it counts as failed (a write lock held
/// elsewhere would otherwise keep `/readyz` waiting for the whole busy timeout).
const WRITE_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The last `check_writes` probe and when it ran: one probe at a time, its answer reused for
/// `WRITE_CHECK_EVERY`.
#[derive(Default)]
pub struct WriteCheck {
    last: tokio::sync::Mutex<Option<(std::time::Instant, Result<(), DatabaseError>)>>,
}

impl WriteCheck {
    pub async fn run<Fut>(&self, probe: impl FnOnce() -> Fut) -> Result<(), StoreError>
    where
        Fut: std::future::Future<Output = Result<(), StoreError>>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = &*last {
            if at.elapsed() < crate::WRITE_CHECK_EVERY {
                return answer.clone().map_err(StoreError::Database);
            }
        }
        let answer = match tokio::time::timeout(WRITE_CHECK_TIMEOUT, probe()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(DatabaseError::caused(
                format!("the write check failed: {e}"),
                e,
            )),
            Err(elapsed) => Err(DatabaseError::caused(
                format!("the write check did not commit within {WRITE_CHECK_TIMEOUT:?}"),
                elapsed,
            )),
        };
        *last = Some((std::time::Instant::now(), answer.clone()));
        answer.map_err(StoreError::Database)
    }
}
