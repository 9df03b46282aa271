//! API keys, credits and the usage ledger (contract, section Keys and credits).
//!
//! `Store` is the one interface the server uses; `sqlite` and `postgres` implement it, each with
//! its own migrations. `connect(url)` picks the implementation from the URL scheme.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    /// The key does not have the shape of a Glimpse key (refused before any query).
    #[error("malformed API key")]
    MalformedKey,
    #[error("insufficient credits: balance {balance}, cost {cost}")]
    InsufficientCredits { balance: i64, cost: i64 },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Database(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A key as made: `key` is the secret, shown this once and never stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewKey {
    pub id: String,
    pub key: String,
    pub name: String,
    pub credits: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub credits: i64,
    pub revoked: bool,
    /// RFC 3339.
    pub created_at: String,
}

/// What a debit is for; becomes the ledger row.
#[derive(Debug, Clone)]
pub struct DebitRequest {
    pub key_id: String,
    pub cost: i64,
    /// e.g. `clip`, `vit`.
    pub endpoint: String,
    pub model: String,
}

/// A successful debit: an open reservation that must be settled or refunded.
#[derive(Debug, Clone)]
pub struct Debit {
    pub id: String,
    /// Balance right after the debit.
    pub balance: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageRow {
    pub endpoint: String,
    pub model: String,
    /// Negative for a debit, positive for a refund or top-up.
    pub credits: i64,
    /// `debit`, `refund` or `topup`.
    pub kind: String,
    pub status: Option<i32>,
    pub latency_ms: Option<f64>,
    /// RFC 3339.
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    pub key_id: String,
    pub name: String,
    pub credits: i64,
    pub usage: Vec<UsageRow>,
}

/// Result of claiming an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq)]
pub enum IdempotencyClaim {
    /// First time: the caller runs the request and then calls `idempotency_complete` (or `_abort`).
    New,
    /// Done before with the same request: replay this.
    Completed { status: u16, body: String },
    /// Same key, still running.
    InProgress,
    /// Same key, different request.
    Mismatch,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn create_key(&self, name: &str, credits: i64) -> Result<NewKey>;
    async fn list_keys(&self) -> Result<Vec<KeyInfo>>;
    /// Add credits (with a `topup` ledger row); returns the new balance.
    async fn topup(&self, key_id: &str, credits: i64) -> Result<i64>;
    async fn revoke(&self, key_id: &str) -> Result<()>;
    /// `Err(MalformedKey)` before any query for a key of the wrong shape; `Ok(None)` for an unknown
    /// or revoked key.
    async fn authenticate(&self, raw_key: &str) -> Result<Option<KeyInfo>>;
    async fn balance(&self, key_id: &str) -> Result<i64>;
    /// One conditional debit plus its ledger row and an open reservation, in one transaction.
    async fn debit(&self, req: &DebitRequest) -> Result<Debit>;
    /// Close a reservation as served.
    async fn settle(&self, debit_id: &str, status: u16, latency_ms: f64) -> Result<()>;
    /// Give a reservation's credits back as a new ledger row; returns the new balance. Refunding a
    /// reservation that is already closed changes nothing.
    async fn refund(&self, debit_id: &str, status: u16, latency_ms: f64) -> Result<i64>;
    async fn account(&self, key_id: &str, recent: usize) -> Result<Account>;
    /// Refund reservations left open longer than `older_than` (a crashed replica's); returns how many.
    async fn reap_stale(&self, older_than: Duration) -> Result<u64>;
    async fn idempotency_claim(
        &self,
        key_id: &str,
        idempotency_key: &str,
        request_hash: &str,
    ) -> Result<IdempotencyClaim>;
    async fn idempotency_complete(
        &self,
        key_id: &str,
        idempotency_key: &str,
        status: u16,
        body: &str,
    ) -> Result<()>;
    /// Forget a claim whose request failed before producing a stored answer.
    async fn idempotency_abort(&self, key_id: &str, idempotency_key: &str) -> Result<()>;
    /// Reachability check for `/readyz`.
    async fn ping(&self) -> Result<()>;
}
