//! The one SQL implementation of [`Store`], for SQLite and PostgreSQL alike.
//!
//! Every statement and every decision is written here once. What differs between the databases
//! is a [`Dialect`]: a few SQL fragments (the clock, an age bound, timestamps as RFC 3339 text,
//! row locks) and how a write transaction is opened (SQLite: this process's write turn and
//! `BEGIN IMMEDIATE`, debits and settles in group commits; PostgreSQL: a plain READ COMMITTED
//! `BEGIN`). Both accept `$1`-style placeholders, so the shared SQL text is the same string.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, FromRow, IntoArguments, Pool, Transaction,
    Type,
};

use crate::keys::{generate_key, hashes_match, new_id, parse_key};
use crate::sqlutil::*;
use crate::*;

/// A connection of dialect `D`'s database.
pub type Conn<D> = <<D as Dialect>::Db as Database>::Connection;

/// The statements of one write, run on the connection of the write transaction that
/// [`Dialect::write`] opens for them.
pub type WriteBody<DB, T> = Box<
    dyn for<'c> FnOnce(
            &'c mut <DB as Database>::Connection,
        ) -> Pin<Box<dyn Future<Output = Result<T>> + Send + 'c>>
        + Send,
>;

/// What one database does its own way.
pub trait Dialect: Send + Sync + 'static {
    type Db: Database;
    /// How an age bound is bound to a statement (see [`Dialect::before_now`]).
    type Age: for<'q> Encode<'q, Self::Db> + Type<Self::Db> + Send + Sync + 'static;

    /// The current time, as the timestamp columns store it.
    const NOW: &'static str;
    /// Opens a transaction that only reads, with one snapshot for all its statements.
    const BEGIN_READ: &'static str;
    /// Appended to a `SELECT` of the row a transaction will then update (nothing where the
    /// transaction already holds the write lock of the whole database).
    const FOR_UPDATE: &'static str;
    /// Appended to the reaper's `SELECT`: rows another transaction holds are left to it.
    const FOR_UPDATE_SKIP_LOCKED: &'static str;

    /// `age` as bound for [`Dialect::before_now`].
    fn age(age: Duration) -> Self::Age;
    /// The time an age bound at placeholder `$param` before now, comparable with a timestamp
    /// column.
    fn before_now(param: u8) -> String;
    /// Timestamp `column` as RFC 3339 text (UTC, milliseconds, fixed width).
    fn rfc3339(column: &str) -> String;
    /// Deletes at most `$2` idempotency rows made before the age bound at `$1`.
    const PRUNE_IDEMPOTENCY: &'static str;

    /// Rows a statement changed (each driver has its own result type and no shared trait).
    fn rows_affected(done: &<Self::Db as Database>::QueryResult) -> u64;

    /// Opens a transaction that will write.
    fn begin_write(
        &self,
        pool: &Pool<Self::Db>,
    ) -> impl Future<Output = Result<Tx<Self::Db>>> + Send;
    /// Runs `body` in a write transaction and commits it (rolls it back when `body` fails).
    /// The writes of every classification call (debit, settle) go this way, so SQLite can
    /// commit them in groups.
    fn write<T: Send + 'static>(
        &self,
        pool: &Pool<Self::Db>,
        body: WriteBody<Self::Db, T>,
    ) -> impl Future<Output = Result<T>> + Send;
    /// What `check_writes` checks besides a write (SQLite: the file is still the one opened).
    fn check_file(&self) -> Result<()>;
}

/// A write transaction; derefs to its connection.
pub struct Tx<DB: Database> {
    tx: Transaction<'static, DB>,
    /// SQLite: this process's write turn, let go only after the commit or rollback (fields drop
    /// in order).
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<DB: Database> Tx<DB> {
    pub(crate) fn new(
        tx: Transaction<'static, DB>,
        turn: Option<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Self {
        Self { tx, _turn: turn }
    }

    pub(crate) async fn commit(self) -> Result<()> {
        self.tx.commit().await.map_err(db_err)
    }

    /// Rolled back before the write turn goes to the next writer (a dropped one would be rolled
    /// back later, on the connection's next use, and the next writer would wait for it).
    pub(crate) async fn rollback(self) -> Result<()> {
        self.tx.rollback().await.map_err(db_err)
    }

    /// Commits when `outcome` is a success, rolls back when it is an error (and answers it).
    pub(crate) async fn finish<T>(self, outcome: Result<T>) -> Result<T> {
        match outcome {
            Ok(v) => self.commit().await.map(|()| v),
            Err(e) => {
                self.rollback().await?;
                Err(e)
            }
        }
    }
}

impl<DB: Database> Deref for Tx<DB> {
    type Target = DB::Connection;
    fn deref(&self) -> &DB::Connection {
        &self.tx
    }
}

impl<DB: Database> DerefMut for Tx<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.tx
    }
}

/// A value the store binds and reads back, in database `DB`.
pub trait Value<DB: Database>:
    for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB> + Send + Sync
{
}

impl<DB: Database, T> Value<DB> for T where
    T: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB> + Send + Sync
{
}

/// `KeyInfo` and the hash it was found by.
#[derive(FromRow)]
struct KeyRow {
    #[sqlx(flatten)]
    info: KeyInfo,
    key_hash: String,
}

/// Why a conditional debit changed nothing.
#[derive(FromRow)]
struct KeyState {
    balance: i64,
    revoked: bool,
}

/// A reservation just closed as `refunded`: what paying it back needs.
#[derive(FromRow)]
struct Closed {
    id: String,
    key_id: String,
    credits: i64,
    endpoint: String,
    model: String,
}

/// How the call behind a reservation ended, for its ledger rows (none when reaped).
#[derive(Clone, Copy, Default)]
struct Outcome {
    status: Option<i32>,
    latency_ms: Option<f64>,
}

impl Outcome {
    fn of(status: u16, latency_ms: f64) -> Self {
        Self {
            status: Some(i32::from(status)),
            latency_ms: finite(latency_ms),
        }
    }
}

/// The idempotency row that kept a claim from inserting its own.
#[derive(FromRow)]
struct Existing {
    request_hash: String,
    state: String,
    status: Option<i32>,
    body: Option<String>,
    /// In progress longer than the takeover age.
    stale: bool,
}

fn key_columns<D: Dialect>() -> String {
    format!(
        "id, name, balance AS credits, revoked_at IS NOT NULL AS revoked, {} AS created_at",
        D::rfc3339("created_at")
    )
}

/// A `classifiers` row; `labels` is JSON.
#[derive(FromRow)]
struct ClassifierRow {
    key_id: String,
    name: String,
    model: String,
    labels: String,
    min_confidence: Option<f64>,
    fallback: Option<String>,
    multi_label: bool,
    created_at: String,
    updated_at: String,
}

impl ClassifierRow {
    fn into_classifier(self) -> Result<Classifier> {
        let labels = serde_json::from_str(&self.labels).map_err(|e| {
            StoreError::Database(DatabaseError::caused(
                format!(
                    "classifier {}'s stored labels are not valid JSON",
                    self.name
                ),
                e,
            ))
        })?;
        Ok(Classifier {
            key_id: self.key_id,
            spec: ClassifierSpec {
                name: self.name,
                model: self.model,
                labels,
                min_confidence: self.min_confidence.map(|v| v as f32),
                fallback: self.fallback,
                multi_label: self.multi_label,
            },
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

fn classifier_columns<D: Dialect>() -> String {
    format!(
        "key_id, name, model, labels, min_confidence, fallback, multi_label, {} AS created_at, \
         {} AS updated_at",
        D::rfc3339("created_at"),
        D::rfc3339("updated_at")
    )
}

fn labels_json(spec: &ClassifierSpec) -> Result<String> {
    serde_json::to_string(&spec.labels)
        .map_err(|e| StoreError::Invalid(format!("classifier labels cannot be stored: {e}")))
}

/// The store, on dialect `D`'s database.
pub struct SqlStore<D: Dialect> {
    pool: Pool<D::Db>,
    dialect: D,
    takeover_after: Duration,
    idempotency_ttl: Duration,
    idempotency_max_per_key: u32,
    write_check: WriteCheck,
}

impl<D: Dialect> SqlStore<D> {
    pub(crate) fn new(pool: Pool<D::Db>, dialect: D, options: &StoreOptions) -> Self {
        Self {
            pool,
            dialect,
            takeover_after: options.idempotency_takeover_after,
            idempotency_ttl: options.idempotency_ttl,
            idempotency_max_per_key: options.idempotency_max_per_key,
            write_check: WriteCheck::default(),
        }
    }
}

// `SqlStore` is public (as `SqliteStore` and `PostgresStore`), so the traits in its bounds are
// `pub` too, though this module is private: nothing outside the crate can name them.
//
// The bounds below say that `D::Db` is a database sqlx can run these statements on, with the
// value types they bind and read; both sqlx drivers meet them. Rust does not carry such bounds
// from a trait to its users, so the two impl blocks spell them out.
impl<D: Dialect> SqlStore<D>
where
    for<'c> &'c mut Conn<D>: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: IntoArguments<'q, D::Db>,
    for<'a> &'a str: ColumnIndex<<D::Db as Database>::Row> + Encode<'a, D::Db> + Type<D::Db>,
    usize: ColumnIndex<<D::Db as Database>::Row>,
    i64: Value<D::Db>,
    bool: Value<D::Db>,
    String: Value<D::Db>,
    Option<i32>: Value<D::Db>,
    Option<f64>: Value<D::Db>,
    Option<String>: Value<D::Db>,
{
    async fn key_exists(conn: &mut Conn<D>, key_id: &str) -> Result<bool> {
        let found = sqlx::query("SELECT 1 FROM keys WHERE id = $1")
            .bind(key_id)
            .fetch_optional(conn)
            .await
            .map_err(db_err)?;
        Ok(found.is_some())
    }

    /// The debit's statements: take `req.cost` if the key has it, open reservation `id`, write
    /// the ledger row. Returns the balance left.
    async fn debit_in(conn: &mut Conn<D>, id: &str, req: &DebitRequest) -> Result<i64> {
        let balance: Option<i64> = sqlx::query_scalar(
            "UPDATE keys SET balance = balance - $1
             WHERE id = $2 AND balance >= $1 AND revoked_at IS NULL RETURNING balance",
        )
        .bind(req.cost)
        .bind(req.key_id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
        let Some(balance) = balance else {
            let key: Option<KeyState> = sqlx::query_as(
                "SELECT balance, revoked_at IS NOT NULL AS revoked FROM keys WHERE id = $1",
            )
            .bind(req.key_id.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
            return Err(match key {
                None => StoreError::NotFound(format!("key {}", req.key_id)),
                Some(KeyState { revoked: true, .. }) => {
                    StoreError::NotFound(format!("key {} (revoked)", req.key_id))
                }
                Some(KeyState { balance, .. }) => StoreError::InsufficientCredits {
                    balance,
                    cost: req.cost,
                },
            });
        };
        sqlx::query(
            "INSERT INTO reservations (id, key_id, credits, endpoint, model) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(req.key_id.as_str())
        .bind(req.cost)
        .bind(req.endpoint.as_str())
        .bind(req.model.as_str())
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
        sqlx::query(
            "INSERT INTO ledger (key_id, kind, credits, endpoint, model, reservation_id)
             VALUES ($1, 'debit', $2, $3, $4, $5)",
        )
        .bind(req.key_id.as_str())
        .bind(-req.cost)
        .bind(req.endpoint.as_str())
        .bind(req.model.as_str())
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
        Ok(balance)
    }

    /// The settle's statements: close reservation `debit_id` as settled and record the call's
    /// outcome on its ledger row (a reservation already closed is logged, not an error).
    async fn settle_in(conn: &mut Conn<D>, debit_id: &str, outcome: Outcome) -> Result<()> {
        let closed = sqlx::query(&format!(
            "UPDATE reservations SET state = 'settled', closed_at = {} WHERE id = $1 AND state = 'open'",
            D::NOW
        ))
        .bind(debit_id)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
        if D::rows_affected(&closed) == 0 {
            let known: Option<String> =
                sqlx::query_scalar("SELECT state FROM reservations WHERE id = $1")
                    .bind(debit_id)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(db_err)?;
            return match known {
                None => Err(StoreError::NotFound(format!("reservation {debit_id}"))),
                Some(state) => {
                    tracing::warn!(debit_id, state, "settle of a reservation already closed");
                    Ok(())
                }
            };
        }
        Self::record_outcome(conn, debit_id, outcome).await
    }

    /// Puts the call's status and latency on reservation `debit_id`'s debit row.
    async fn record_outcome(conn: &mut Conn<D>, debit_id: &str, outcome: Outcome) -> Result<()> {
        sqlx::query(
            "UPDATE ledger SET status = $2, latency_ms = $3 WHERE reservation_id = $1 AND kind = 'debit'",
        )
        .bind(debit_id)
        .bind(outcome.status)
        .bind(outcome.latency_ms)
        .execute(conn)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Pays back a reservation this transaction has just closed as `refunded`; returns the
    /// key's new balance.
    async fn pay_back(conn: &mut Conn<D>, closed: &Closed, outcome: Outcome) -> Result<i64> {
        let balance: i64 = sqlx::query_scalar(
            "UPDATE keys SET balance = balance + $1 WHERE id = $2 RETURNING balance",
        )
        .bind(closed.credits)
        .bind(closed.key_id.as_str())
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err)?;
        sqlx::query(
            "INSERT INTO ledger (key_id, kind, credits, endpoint, model, status, latency_ms, reservation_id)
             VALUES ($1, 'refund', $2, $3, $4, $5, $6, $7)",
        )
        .bind(closed.key_id.as_str())
        .bind(closed.credits)
        .bind(closed.endpoint.as_str())
        .bind(closed.model.as_str())
        .bind(outcome.status)
        .bind(outcome.latency_ms)
        .bind(closed.id.as_str())
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
        Ok(balance)
    }

    /// One idempotency claim attempt in `tx`; `None` when the row that kept the claim from
    /// inserting its own was gone by the time it was read (an abort in between: try again).
    async fn claim_in(
        &self,
        tx: &mut Tx<D::Db>,
        key_id: &str,
        idempotency_key: &str,
        request_hash: &str,
    ) -> Result<Option<IdempotencyClaim>> {
        // An answer stored longer ago than the TTL is no answer any more.
        sqlx::query(&format!(
            "DELETE FROM idempotency WHERE key_id = $1 AND idempotency_key = $2
             AND created_at < {}",
            D::before_now(3)
        ))
        .bind(key_id)
        .bind(idempotency_key)
        .bind(D::age(self.idempotency_ttl))
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        // On PostgreSQL this waits for a concurrent uncommitted claim of the same key, then does
        // nothing; on SQLite the write lock keeps every other claim out.
        let inserted = sqlx::query(
            "INSERT INTO idempotency (key_id, idempotency_key, request_hash, state)
             VALUES ($1, $2, $3, 'in_progress') ON CONFLICT DO NOTHING",
        )
        .bind(key_id)
        .bind(idempotency_key)
        .bind(request_hash)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        if D::rows_affected(&inserted) == 1 {
            // On PostgreSQL, claims of one key running at once do not see each other's rows
            // here: the cap can be overshot by that many (on SQLite the write lock is held).
            let live: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM idempotency WHERE key_id = $1 AND created_at >= {}",
                D::before_now(2)
            ))
            .bind(key_id)
            .bind(D::age(self.idempotency_ttl))
            .fetch_one(&mut **tx)
            .await
            .map_err(db_err)?;
            return Ok(Some(if live > i64::from(self.idempotency_max_per_key) {
                IdempotencyClaim::LimitReached
            } else {
                IdempotencyClaim::New
            }));
        }
        let existing: Option<Existing> = sqlx::query_as(&format!(
            "SELECT request_hash, state, status, body, created_at < {} AS stale
             FROM idempotency WHERE key_id = $1 AND idempotency_key = $2{}",
            D::before_now(3),
            D::FOR_UPDATE
        ))
        .bind(key_id)
        .bind(idempotency_key)
        .bind(D::age(self.takeover_after))
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_err)?;
        let Some(row) = existing else { return Ok(None) };
        Ok(Some(if !hashes_match(&row.request_hash, request_hash) {
            IdempotencyClaim::Mismatch
        } else if row.state == "completed" {
            IdempotencyClaim::Completed {
                status: row
                    .status
                    .and_then(|s| u16::try_from(s).ok())
                    .unwrap_or(500),
                body: row.body.unwrap_or_default(),
            }
        } else if row.stale {
            // An in-progress claim this old belongs to a request that died: take it over. The
            // row lock (PostgreSQL's FOR UPDATE, SQLite's write lock) lets only one claimant.
            sqlx::query(&format!(
                "UPDATE idempotency SET created_at = {}
                 WHERE key_id = $1 AND idempotency_key = $2 AND state = 'in_progress'",
                D::NOW
            ))
            .bind(key_id)
            .bind(idempotency_key)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
            IdempotencyClaim::New
        } else {
            IdempotencyClaim::InProgress
        }))
    }

    async fn classifier_in(
        conn: &mut Conn<D>,
        key_id: &str,
        name: &str,
    ) -> Result<Option<Classifier>> {
        let row: Option<ClassifierRow> = sqlx::query_as(&format!(
            "SELECT {} FROM classifiers WHERE key_id = $1 AND name = $2",
            classifier_columns::<D>()
        ))
        .bind(key_id)
        .bind(name)
        .fetch_optional(conn)
        .await
        .map_err(db_err)?;
        row.map(ClassifierRow::into_classifier).transpose()
    }

    /// The create's statements: lock the key's row (so the count holds), count, insert.
    async fn create_classifier_in(
        conn: &mut Conn<D>,
        key_id: &str,
        spec: &ClassifierSpec,
        max_per_key: u32,
    ) -> Result<Classifier> {
        let key = sqlx::query(&format!(
            "SELECT 1 FROM keys WHERE id = $1{}",
            D::FOR_UPDATE
        ))
        .bind(key_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
        if key.is_none() {
            return Err(StoreError::NotFound(format!("key {key_id}")));
        }
        let held: i64 = sqlx::query_scalar("SELECT count(*) FROM classifiers WHERE key_id = $1")
            .bind(key_id)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err)?;
        let exists = Self::classifier_in(conn, key_id, &spec.name)
            .await?
            .is_some();
        if exists {
            return Err(StoreError::Invalid(format!(
                "a classifier named '{}' already exists; PUT /api/classifiers/{} replaces it",
                spec.name, spec.name
            )));
        }
        if held >= i64::from(max_per_key) {
            return Err(StoreError::Invalid(format!(
                "this key already holds {held} classifiers, the most allowed ({max_per_key}); \
                 delete one first"
            )));
        }
        sqlx::query(
            "INSERT INTO classifiers (key_id, name, model, labels, min_confidence, fallback, multi_label)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(key_id)
        .bind(spec.name.as_str())
        .bind(spec.model.as_str())
        .bind(labels_json(spec)?)
        .bind(spec.min_confidence.map(f64::from))
        .bind(spec.fallback.clone())
        .bind(spec.multi_label)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
        Self::classifier_in(conn, key_id, &spec.name)
            .await?
            .ok_or_else(|| StoreError::Database("a classifier just saved is not there".into()))
    }

    async fn replace_classifier_in(
        conn: &mut Conn<D>,
        key_id: &str,
        spec: &ClassifierSpec,
    ) -> Result<Classifier> {
        let done = sqlx::query(&format!(
            "UPDATE classifiers SET model = $3, labels = $4, min_confidence = $5, fallback = $6,
             multi_label = $7, updated_at = {} WHERE key_id = $1 AND name = $2",
            D::NOW
        ))
        .bind(key_id)
        .bind(spec.name.as_str())
        .bind(spec.model.as_str())
        .bind(labels_json(spec)?)
        .bind(spec.min_confidence.map(f64::from))
        .bind(spec.fallback.clone())
        .bind(spec.multi_label)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
        if D::rows_affected(&done) == 0 {
            return Err(StoreError::NotFound(format!("classifier {}", spec.name)));
        }
        Self::classifier_in(conn, key_id, &spec.name)
            .await?
            .ok_or_else(|| StoreError::Database("a classifier just saved is not there".into()))
    }
}

#[async_trait]
impl<D: Dialect> Store for SqlStore<D>
where
    for<'c> &'c mut Conn<D>: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: IntoArguments<'q, D::Db>,
    for<'a> &'a str: ColumnIndex<<D::Db as Database>::Row> + Encode<'a, D::Db> + Type<D::Db>,
    usize: ColumnIndex<<D::Db as Database>::Row>,
    i64: Value<D::Db>,
    bool: Value<D::Db>,
    String: Value<D::Db>,
    Option<i32>: Value<D::Db>,
    Option<f64>: Value<D::Db>,
    Option<String>: Value<D::Db>,
{
    async fn create_key(&self, name: &str, credits: i64) -> Result<NewKey> {
        check_credits(credits, true)?;
        let key = generate_key();
        let parsed = parse_key(&key)?;
        let id = new_id("key");
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        sqlx::query(
            "INSERT INTO keys (id, name, key_hash, prefix, balance) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.as_str())
        .bind(name)
        .bind(parsed.hash.as_str())
        .bind(parsed.prefix.as_str())
        .bind(credits)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if credits > 0 {
            // Initial credits are a top-up row, so balance == sum(ledger.credits) from the start.
            sqlx::query("INSERT INTO ledger (key_id, kind, credits) VALUES ($1, 'topup', $2)")
                .bind(id.as_str())
                .bind(credits)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await?;
        Ok(NewKey {
            id,
            key,
            name: name.to_string(),
            credits,
        })
    }

    async fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let sql = format!(
            "SELECT {} FROM keys ORDER BY created_at, id",
            key_columns::<D>()
        );
        sqlx::query_as(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)
    }

    async fn topup(&self, key_id: &str, credits: i64) -> Result<i64> {
        check_credits(credits, false)?;
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        let balance: Option<i64> = sqlx::query_scalar(
            "UPDATE keys SET balance = balance + $1 WHERE id = $2 RETURNING balance",
        )
        .bind(credits)
        .bind(key_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let balance = balance.ok_or_else(|| StoreError::NotFound(format!("key {key_id}")))?;
        sqlx::query("INSERT INTO ledger (key_id, kind, credits) VALUES ($1, 'topup', $2)")
            .bind(key_id)
            .bind(credits)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await?;
        Ok(balance)
    }

    async fn revoke(&self, key_id: &str) -> Result<()> {
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        let done = sqlx::query(&format!(
            "UPDATE keys SET revoked_at = {} WHERE id = $1 AND revoked_at IS NULL",
            D::NOW
        ))
        .bind(key_id)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        // Revoking twice is fine; revoking nothing is not.
        if D::rows_affected(&done) == 0 && !Self::key_exists(&mut tx, key_id).await? {
            return Err(StoreError::NotFound(format!("key {key_id}")));
        }
        tx.commit().await
    }

    async fn authenticate(&self, raw_key: &str) -> Result<Option<KeyInfo>> {
        let parsed = parse_key(raw_key)?;
        let sql = format!(
            "SELECT {}, key_hash FROM keys WHERE key_hash = $1 AND revoked_at IS NULL",
            key_columns::<D>()
        );
        let row: Option<KeyRow> = sqlx::query_as(&sql)
            .bind(parsed.hash.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(row
            .filter(|r| hashes_match(&r.key_hash, &parsed.hash))
            .map(|r| r.info))
    }

    async fn balance(&self, key_id: &str) -> Result<i64> {
        let balance: Option<i64> = sqlx::query_scalar("SELECT balance FROM keys WHERE id = $1")
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        balance.ok_or_else(|| StoreError::NotFound(format!("key {key_id}")))
    }

    async fn debit(&self, req: &DebitRequest) -> Result<Debit> {
        check_cost(req.cost)?;
        let id = new_id("dbt");
        let (rid, req) = (id.clone(), req.clone());
        let balance = self
            .dialect
            .write(
                &self.pool,
                Box::new(move |c| Box::pin(async move { Self::debit_in(c, &rid, &req).await })),
            )
            .await?;
        Ok(Debit { id, balance })
    }

    async fn settle(&self, debit_id: &str, status: u16, latency_ms: f64) -> Result<()> {
        let id = debit_id.to_string();
        let outcome = Outcome::of(status, latency_ms);
        self.dialect
            .write(
                &self.pool,
                Box::new(move |c| Box::pin(async move { Self::settle_in(c, &id, outcome).await })),
            )
            .await
    }

    async fn refund(&self, debit_id: &str, status: u16, latency_ms: f64) -> Result<i64> {
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        // The one statement that decides whether this call pays anything back.
        let closed: Option<Closed> = sqlx::query_as(&format!(
            "UPDATE reservations SET state = 'refunded', closed_at = {} WHERE id = $1 AND state = 'open'
             RETURNING id, key_id, credits, endpoint, model",
            D::NOW
        ))
        .bind(debit_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some(closed) = closed else {
            let balance: Option<i64> = sqlx::query_scalar(
                "SELECT k.balance FROM reservations r JOIN keys k ON k.id = r.key_id WHERE r.id = $1",
            )
            .bind(debit_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
            return balance.ok_or_else(|| StoreError::NotFound(format!("reservation {debit_id}")));
        };
        let outcome = Outcome::of(status, latency_ms);
        let balance = Self::pay_back(&mut tx, &closed, outcome).await?;
        Self::record_outcome(&mut tx, debit_id, outcome).await?;
        tx.commit().await?;
        Ok(balance)
    }

    async fn account(&self, key_id: &str, recent: usize) -> Result<Account> {
        // One snapshot for the balance and the rows.
        let mut tx = self.pool.begin_with(D::BEGIN_READ).await.map_err(db_err)?;
        let key: Option<(String, i64)> =
            sqlx::query_as("SELECT name, balance FROM keys WHERE id = $1")
                .bind(key_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        let (name, credits) = key.ok_or_else(|| StoreError::NotFound(format!("key {key_id}")))?;
        let usage: Vec<UsageRow> = sqlx::query_as(&format!(
            "SELECT endpoint, model, credits, kind, status, latency_ms, {} AS at FROM ledger
             WHERE key_id = $1 ORDER BY id DESC LIMIT $2",
            D::rfc3339("created_at")
        ))
        .bind(key_id)
        .bind(recent_limit(recent))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Account {
            key_id: key_id.to_string(),
            name,
            credits,
            usage,
        })
    }

    async fn reap_stale(&self, older_than: Duration) -> Result<u64> {
        let mut total = 0u64;
        loop {
            let mut tx = self.dialect.begin_write(&self.pool).await?;
            let mut closed: Vec<Closed> = sqlx::query_as(&format!(
                "UPDATE reservations SET state = 'refunded', closed_at = {}
                 WHERE state = 'open' AND id IN (SELECT id FROM reservations WHERE state = 'open'
                   AND created_at < {} ORDER BY created_at LIMIT $2{})
                 RETURNING id, key_id, credits, endpoint, model",
                D::NOW,
                D::before_now(1),
                D::FOR_UPDATE_SKIP_LOCKED
            ))
            .bind(D::age(older_than))
            .bind(REAP_BATCH)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
            // Lock keys in one order so two reapers can never wait on each other.
            closed.sort_by(|a, b| a.key_id.cmp(&b.key_id));
            for c in &closed {
                Self::pay_back(&mut tx, c, Outcome::default()).await?;
            }
            tx.commit().await?;
            total += closed.len() as u64;
            if (closed.len() as i64) < REAP_BATCH {
                return Ok(total);
            }
        }
    }

    async fn idempotency_known(&self, key_id: &str, idempotency_key: &str) -> Result<bool> {
        check_idempotency_key(idempotency_key)?;
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM idempotency WHERE key_id = $1 AND idempotency_key = $2
             AND created_at >= {}",
            D::before_now(3)
        ))
        .bind(key_id)
        .bind(idempotency_key)
        .bind(D::age(self.idempotency_ttl))
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(n > 0)
    }

    async fn idempotency_claim(
        &self,
        key_id: &str,
        idempotency_key: &str,
        request_hash: &str,
    ) -> Result<IdempotencyClaim> {
        check_idempotency_key(idempotency_key)?;
        // On PostgreSQL the row that blocked the insert can vanish (an abort) before it is read:
        // try again. On SQLite the write lock keeps it, so the first try answers.
        for _ in 0..3 {
            let mut tx = self.dialect.begin_write(&self.pool).await?;
            let claim = self
                .claim_in(&mut tx, key_id, idempotency_key, request_hash)
                .await?;
            // Only a claim that now owns its row keeps what this transaction wrote.
            match claim {
                Some(IdempotencyClaim::New) => tx.commit().await?,
                _ => tx.rollback().await?,
            }
            if let Some(claim) = claim {
                return Ok(claim);
            }
        }
        Ok(IdempotencyClaim::InProgress)
    }

    async fn idempotency_complete(
        &self,
        key_id: &str,
        idempotency_key: &str,
        status: u16,
        body: &str,
    ) -> Result<()> {
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        let done = sqlx::query(
            "UPDATE idempotency SET state = 'completed', status = $3, body = $4
             WHERE key_id = $1 AND idempotency_key = $2 AND state = 'in_progress'",
        )
        .bind(key_id)
        .bind(idempotency_key)
        .bind(Some(i32::from(status)))
        .bind(body)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if D::rows_affected(&done) == 0 {
            // Already completed (the first answer stays) or never claimed.
            let exists =
                sqlx::query("SELECT 1 FROM idempotency WHERE key_id = $1 AND idempotency_key = $2")
                    .bind(key_id)
                    .bind(idempotency_key)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err)?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!(
                    "idempotency claim {idempotency_key}"
                )));
            }
        }
        tx.commit().await
    }

    async fn idempotency_abort(&self, key_id: &str, idempotency_key: &str) -> Result<()> {
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        sqlx::query(
            "DELETE FROM idempotency WHERE key_id = $1 AND idempotency_key = $2 AND state = 'in_progress'",
        )
        .bind(key_id)
        .bind(idempotency_key)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await
    }

    async fn prune_idempotency(&self, older_than: Duration) -> Result<u64> {
        let mut total = 0u64;
        loop {
            let mut tx = self.dialect.begin_write(&self.pool).await?;
            let gone = sqlx::query(D::PRUNE_IDEMPOTENCY)
                .bind(D::age(older_than))
                .bind(PRUNE_BATCH)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            tx.commit().await?;
            let gone = D::rows_affected(&gone);
            total += gone;
            if gone < PRUNE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(db_err)
    }

    async fn check_writes(&self) -> Result<()> {
        self.dialect.check_file()?;
        self.write_check
            .run(|| async {
                // Fails on a read-only PostgreSQL (a standby after a failover, a full disk that
                // turned the cluster read-only) and on a full SQLite disk, as a debit would.
                let mut tx = self.dialect.begin_write(&self.pool).await?;
                sqlx::query(&format!(
                    "UPDATE write_check SET at = {} WHERE id = 1",
                    D::NOW
                ))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                tx.commit().await
            })
            .await
    }

    async fn ledger_totals(&self, key_id: &str) -> Result<LedgerTotals> {
        let mut tx = self.pool.begin_with(D::BEGIN_READ).await.map_err(db_err)?;
        if !Self::key_exists(&mut tx, key_id).await? {
            return Err(StoreError::NotFound(format!("key {key_id}")));
        }
        let totals: LedgerTotals = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(CASE WHEN kind = 'debit' THEN -credits ELSE 0 END), 0) AS BIGINT) AS debits,
                    CAST(COALESCE(SUM(CASE WHEN kind = 'refund' THEN credits ELSE 0 END), 0) AS BIGINT) AS refunds,
                    CAST(COALESCE(SUM(CASE WHEN kind = 'topup' THEN credits ELSE 0 END), 0) AS BIGINT) AS topups
             FROM ledger WHERE key_id = $1",
        )
        .bind(key_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(totals)
    }

    async fn reservation(&self, debit_id: &str) -> Result<Reservation> {
        let row: Option<Reservation> = sqlx::query_as(&format!(
            "SELECT id, key_id, credits, state, {} AS created_at FROM reservations WHERE id = $1",
            D::rfc3339("created_at")
        ))
        .bind(debit_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.ok_or_else(|| StoreError::NotFound(format!("reservation {debit_id}")))
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn create_classifier(
        &self,
        key_id: &str,
        spec: &ClassifierSpec,
        max_per_key: u32,
    ) -> Result<Classifier> {
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        let outcome = Self::create_classifier_in(&mut tx, key_id, spec, max_per_key).await;
        tx.finish(outcome).await
    }

    async fn list_classifiers(&self, key_id: &str) -> Result<Vec<Classifier>> {
        let rows: Vec<ClassifierRow> = sqlx::query_as(&format!(
            "SELECT {} FROM classifiers WHERE key_id = $1 ORDER BY name",
            classifier_columns::<D>()
        ))
        .bind(key_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.into_iter()
            .map(ClassifierRow::into_classifier)
            .collect()
    }

    async fn get_classifier(&self, key_id: &str, name: &str) -> Result<Option<Classifier>> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        Self::classifier_in(&mut conn, key_id, name).await
    }

    async fn replace_classifier(&self, key_id: &str, spec: &ClassifierSpec) -> Result<Classifier> {
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        let outcome = Self::replace_classifier_in(&mut tx, key_id, spec).await;
        tx.finish(outcome).await
    }

    async fn delete_classifier(&self, key_id: &str, name: &str) -> Result<bool> {
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        let done = sqlx::query("DELETE FROM classifiers WHERE key_id = $1 AND name = $2")
            .bind(key_id)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err);
        let gone = tx.finish(done).await?;
        Ok(D::rows_affected(&gone) > 0)
    }

    async fn count_classifiers(&self, key_id: &str) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM classifiers WHERE key_id = $1")
            .bind(key_id)
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(n.max(0) as u64)
    }
}
