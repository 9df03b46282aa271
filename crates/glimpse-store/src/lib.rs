//! API keys, credits and the usage ledger (contract, section Keys and credits).
//!
//! `Store` is the one interface the server uses. `sql::SqlStore` implements it once for both
//! databases; what differs between them (SQL fragments for the clock and timestamps, how a write
//! transaction starts, SQLite's group commit) is a `sql::Dialect`, one in `sqlite` and one in
//! `postgres`, each with its own migrations. `connect(url)` picks the dialect from the URL scheme
//! and wraps the store in a short-lived `authenticate` cache (`CachedStore`).
//!
//! Money rules, on both backends:
//! - a debit is one conditional `UPDATE … SET balance = balance - cost WHERE … AND balance >= cost
//!   RETURNING balance` plus its ledger row and an `open` reservation, in one transaction, so no
//!   interleaving can take a balance below zero (a `CHECK (balance >= 0)` is the backstop);
//! - a reservation is closed exactly once (`settle`, `refund` or `reap_stale`) by one conditional
//!   `UPDATE reservations SET state = … WHERE id = … AND state = 'open'`: whoever closes it first
//!   wins, the others change nothing, so a refund is never paid twice (a unique index on
//!   `ledger(reservation_id) WHERE kind = 'refund'` is the backstop);
//! - every change of a balance has a ledger row (initial credits are a `topup` row), so for every
//!   key `balance == sum(ledger.credits)`.
//!
//! Idempotency claims: a claim still `in_progress` after `StoreOptions::idempotency_takeover_after`
//! (default 5 minutes) is assumed to belong to a crashed request and may be taken over by a new
//! claim with the same request hash (the claim answers `New` again).
//!
//! Stored idempotency answers expire after `StoreOptions::idempotency_ttl` (default 24 h, as
//! Stripe's): a claim that finds an expired row treats it as absent, and `prune_idempotency`
//! deletes them (the server calls it from its reaper). A key holds at most
//! `StoreOptions::idempotency_max_per_key` live rows: a claim over that answers `LimitReached`
//! (nothing is evicted, so no stored answer is dropped before its TTL and a retry is never charged
//! twice). On PostgreSQL the cap may be overshot by the claims of one key running concurrently.

// Every `unsafe` block says why it is sound (see docs/DESIGN.md).
#![deny(clippy::undocumented_unsafe_blocks)]

use std::sync::Arc;
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
    /// The database failed or could not be reached (a 503 over HTTP).
    #[error("database error: {0}")]
    Database(#[source] DatabaseError),
}

/// A database failure: its message, and the driver's error behind it as its `source()`.
///
/// The message already says what the driver said (the server logs it as it is), so an error
/// chain printer that skips a cause its message already ends with prints it once. Neither holds
/// the database URL, so no password reaches a log. `Clone` (the cause is shared) because one
/// failed group commit or write check answers several callers.
#[derive(Debug, Clone)]
pub struct DatabaseError {
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl DatabaseError {
    /// A failure with no lower-level error behind it.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// A failure caused by `source`.
    pub fn caused(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }
}

impl std::fmt::Display for DatabaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DatabaseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// So `StoreError::Database("…".into())` still makes one (test doubles do).
impl From<String> for DatabaseError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for DatabaseError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
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
    /// A new claim, but the key already holds `StoreOptions::idempotency_max_per_key` live
    /// rows: nothing was stored.
    LimitReached,
}

/// Sums of a key's ledger, as positive numbers: `balance == topups - debits + refunds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct LedgerTotals {
    pub debits: i64,
    pub refunds: i64,
    pub topups: i64,
}

/// A reservation made by `debit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub id: String,
    pub key_id: String,
    pub credits: i64,
    /// `open`, `settled` or `refunded`.
    pub state: String,
    /// RFC 3339.
    pub created_at: String,
}

/// One label of a saved classifier (issue 24).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClassifierLabel {
    pub name: String,
    /// The prompts as given (templates with `{label}`, or whole sentences); empty when the
    /// server's templates were used.
    pub prompts: Vec<String>,
    /// How many example images went into `embedding`.
    pub examples: u32,
    /// The label's prototype, L2-normalised (see `glimpse_core::prototypes`).
    pub embedding: Vec<f32>,
}

/// What a saved classifier is made of: the part a create or replace writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClassifierSpec {
    /// Unique per key.
    pub name: String,
    /// The served model id whose embedding space `labels` live in.
    pub model: String,
    pub labels: Vec<ClassifierLabel>,
    /// Defaults for the decision controls when a call does not give them.
    pub min_confidence: Option<f32>,
    pub fallback: Option<String>,
    pub multi_label: bool,
}

/// A saved classifier as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Classifier {
    /// The key that owns it; no other key sees it.
    pub key_id: String,
    #[serde(flatten)]
    pub spec: ClassifierSpec,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; the time of the last replace (the creation time until then).
    pub updated_at: String,
}

/// What a store without classifier tables (a test double) answers to the classifier methods.
fn no_classifiers() -> StoreError {
    StoreError::Invalid("this store keeps no classifiers".into())
}

/// Tuning for `connect_with`.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long an `authenticate` answer is reused; at most 5 s so a revocation reaches every
    /// replica within that. `Duration::ZERO` turns the cache off.
    pub auth_cache_ttl: Duration,
    pub max_connections: u32,
    /// An idempotency claim left `in_progress` this long may be taken over (see crate docs).
    pub idempotency_takeover_after: Duration,
    /// Stored idempotency rows older than this are expired (see crate docs).
    pub idempotency_ttl: Duration,
    /// Most live idempotency rows one key may hold (see crate docs).
    pub idempotency_max_per_key: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            auth_cache_ttl: Duration::from_secs(5),
            max_connections: 8,
            idempotency_takeover_after: Duration::from_secs(300),
            idempotency_ttl: DEFAULT_IDEMPOTENCY_TTL,
            idempotency_max_per_key: DEFAULT_IDEMPOTENCY_MAX_PER_KEY,
        }
    }
}

/// Stripe keeps idempotency keys 24 h.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
/// 5000 rows of at most a few KiB each: a few MiB per key at worst.
pub const DEFAULT_IDEMPOTENCY_MAX_PER_KEY: u32 = 5000;
/// How long a `check_writes` answer is reused, so a busy `/readyz` costs at most one probe write
/// per interval.
pub const WRITE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Longest cache TTL accepted: the contract wants a revocation to bite quickly everywhere.
pub const MAX_AUTH_CACHE_TTL: Duration = Duration::from_secs(5);
/// Largest amount one `create_key`/`topup`/`debit` may move, and the largest balance (SQLite
/// would silently turn an overflowing integer into a float).
pub const MAX_CREDITS: i64 = 1_000_000_000_000_000;

mod cache;
mod keys;
mod postgres;
mod sql;
mod sqlite;
mod sqlutil;

pub use cache::CachedStore;
pub use keys::{generate_key, hash_key, parse_key, ParsedKey, KEY_LEN, KEY_PREFIX};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// `connect_with(url, StoreOptions::default())`.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    connect_with(url, StoreOptions::default()).await
}

/// Opens `sqlite://PATH` (created if missing; `sqlite::memory:` works for one-connection tests)
/// or `postgres://…` / `postgresql://…`, runs that backend's migrations, and wraps the store in
/// the `authenticate` cache unless the TTL is zero.
pub async fn connect_with(url: &str, options: StoreOptions) -> Result<Arc<dyn Store>> {
    if options.auth_cache_ttl > MAX_AUTH_CACHE_TTL {
        return Err(StoreError::Invalid(format!(
            "auth cache TTL {:?} is over the {:?} limit",
            options.auth_cache_ttl, MAX_AUTH_CACHE_TTL
        )));
    }
    if options.idempotency_max_per_key == 0 || options.idempotency_ttl.is_zero() {
        return Err(StoreError::Invalid(
            "idempotency TTL and rows per key must be at least 1".into(),
        ));
    }
    if options.max_connections == 0 {
        return Err(StoreError::Invalid(
            "max_connections must be at least 1".into(),
        ));
    }
    let inner: Arc<dyn Store> = if url.starts_with("sqlite:") {
        Arc::new(SqliteStore::open(url, &options).await?)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Arc::new(PostgresStore::open(url, &options).await?)
    } else {
        return Err(StoreError::Invalid(
            "database URL must start with sqlite://, sqlite::memory:, postgres:// or postgresql://"
                .into(),
        ));
    };
    if options.auth_cache_ttl.is_zero() {
        Ok(inner)
    } else {
        Ok(Arc::new(CachedStore::new(inner, options.auth_cache_ttl)))
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn create_key(&self, name: &str, credits: i64) -> Result<NewKey>;
    async fn list_keys(&self) -> Result<Vec<KeyInfo>>;
    /// Add credits (with a `topup` ledger row); returns the new balance.
    async fn topup(&self, key_id: &str, credits: i64) -> Result<i64>;
    async fn revoke(&self, key_id: &str) -> Result<()>;
    /// `Err(MalformedKey)` before any query for a key of the wrong shape; `Ok(None)` for an unknown
    /// or revoked key. Behind `CachedStore` the answer (its `credits` included) may be up to the
    /// cache TTL old: use `balance`/`debit` for money, never `KeyInfo::credits`.
    async fn authenticate(&self, raw_key: &str) -> Result<Option<KeyInfo>>;
    async fn balance(&self, key_id: &str) -> Result<i64>;
    /// One conditional debit plus its ledger row and an open reservation, in one transaction.
    /// `InsufficientCredits` when the balance is short; `NotFound` for an unknown or revoked key;
    /// `Invalid` for a negative cost.
    async fn debit(&self, req: &DebitRequest) -> Result<Debit>;
    /// Close a reservation as served. Settling a reservation that is already closed (e.g. reaped)
    /// changes nothing and is not an error; an unknown id is `NotFound`.
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
    /// Whether this key holds an unexpired claim or stored answer under `idempotency_key` (what
    /// a replay would need), without the request's fingerprint. The default says yes, which
    /// only costs the caller an early answer.
    async fn idempotency_known(&self, _key_id: &str, _idempotency_key: &str) -> Result<bool> {
        Ok(true)
    }
    /// Delete idempotency claims (any state) made more than `older_than` ago; returns how many.
    /// Stripe keeps keys at least 24 h: call it with at least that.
    async fn prune_idempotency(&self, older_than: Duration) -> Result<u64>;
    /// Reachability check for `/readyz`.
    async fn ping(&self) -> Result<()>;
    /// Whether writes work, for `/readyz`: a one-row write committed in its own transaction (at
    /// most once per `WRITE_CHECK_EVERY`, the answer is reused in between) and, on SQLite, that
    /// the file opened is still the one at its path (not deleted or replaced under the server).
    async fn check_writes(&self) -> Result<()>;
    /// Ledger sums for one key (for invariant checks: `balance == topups - debits + refunds`).
    async fn ledger_totals(&self, key_id: &str) -> Result<LedgerTotals>;
    /// One reservation, whatever its state.
    async fn reservation(&self, debit_id: &str) -> Result<Reservation>;
    /// Closes the connection pool (graceful shutdown); later calls that need the database fail.
    async fn close(&self);
    /// Saves a new classifier owned by `key_id`. `Invalid` when the key already has one named
    /// `spec.name` or already holds `max_per_key`; `NotFound` for an unknown key. (On
    /// PostgreSQL the key's row is locked for the count, so concurrent creates cannot overshoot.)
    async fn create_classifier(
        &self,
        _key_id: &str,
        _spec: &ClassifierSpec,
        _max_per_key: u32,
    ) -> Result<Classifier> {
        Err(no_classifiers())
    }
    /// The key's classifiers, by name.
    async fn list_classifiers(&self, _key_id: &str) -> Result<Vec<Classifier>> {
        Err(no_classifiers())
    }
    /// The key's classifier named `name`; `None` when the key has none of that name (whoever
    /// else does).
    async fn get_classifier(&self, _key_id: &str, _name: &str) -> Result<Option<Classifier>> {
        Err(no_classifiers())
    }
    /// Replaces the key's classifier named `spec.name` (keeping its creation time); `NotFound`
    /// when the key has none of that name.
    async fn replace_classifier(
        &self,
        _key_id: &str,
        _spec: &ClassifierSpec,
    ) -> Result<Classifier> {
        Err(no_classifiers())
    }
    /// Deletes the key's classifier named `name`; whether there was one.
    async fn delete_classifier(&self, _key_id: &str, _name: &str) -> Result<bool> {
        Err(no_classifiers())
    }
    /// How many classifiers the key holds.
    async fn count_classifiers(&self, _key_id: &str) -> Result<u64> {
        Err(no_classifiers())
    }
}
