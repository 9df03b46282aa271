//! SQLite store: one file in WAL mode, `busy_timeout` 5 s, foreign keys on.
//!
//! Every transaction that writes starts with `BEGIN IMMEDIATE`, taking the write lock up front: a
//! deferred transaction that reads and then writes gets SQLITE_BUSY at once when another writer
//! got in between (busy_timeout is not honoured for that upgrade), so writers would fail instead
//! of queueing. With the lock taken first, writers simply wait their turn.
//!
//! Their turn is also kept in this process, first come first served (`SqliteStore::write`): a
//! `BEGIN IMMEDIATE` that finds the lock taken is left to SQLite's busy handler, which sleeps
//! 1, 2, 5, 10, 15, 20, 25… ms between tries. Eight concurrent debit + settle pairs took 81 ms
//! that way (median round), 6 ms in turn, where one pair takes 0.9 ms
//! (`examples/write_contention.rs`). Only another process (the CLI) still meets the busy handler.
//!
//! The writes of every classification call (the debit before its pass, the settle after it) are
//! also committed in groups (`SqliteStore::grouped`): writes that queue while another write holds
//! the turn run together in one transaction, each under its own savepoint, and each caller gets
//! its own answer only once that transaction has committed. A forward pass answers up to a batch
//! of calls at once, and their settles then cost one `BEGIN IMMEDIATE` … `COMMIT` instead of one
//! each.
//!
//! A connection whose transaction could not be closed (a COMMIT that failed on a full disk or an
//! I/O error: SQLite may already have rolled it back, so sqlx's own ROLLBACK fails and sqlx still
//! counts the transaction as open) is closed when it goes back to the pool instead of being
//! reused, where every later `BEGIN` on it would fail ("attempted to call begin_with at non-zero
//! transaction depth"); see `SqliteStore::open`.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow,
};
use sqlx::{Connection, Row, Sqlite, Transaction};

use crate::keys::{generate_key, hashes_match, new_id, parse_key};
use crate::sqlutil::*;
use crate::*;

/// Current time as stored: UTC RFC 3339 with milliseconds, fixed width.
macro_rules! now {
    () => {
        "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
    };
}

/// `now` shifted by a bound modifier such as `-5.000 seconds`.
fn cutoff_modifier(age: Duration) -> String {
    format!("-{:.3} seconds", age.as_secs_f64())
}

pub struct SqliteStore {
    pool: SqlitePool,
    takeover_after: Duration,
    idempotency_ttl: Duration,
    idempotency_max_per_key: u32,
    /// The database file as opened (none in memory), for `check_writes`.
    file: Option<FileId>,
    write_check: WriteCheck,
    /// This process's writers, in arrival order (tokio's mutex is fair): held from before
    /// `BEGIN IMMEDIATE` to the commit or rollback.
    write_turn: Arc<tokio::sync::Mutex<()>>,
    /// Writes waiting for the next group commit (see [`SqliteStore::grouped`]).
    group: Arc<Mutex<Vec<GroupOp>>>,
}

/// Hands a grouped write its answer once its group's transaction has committed (or failed).
type Deliver = Box<dyn FnOnce(Result<()>) + Send>;

/// A write waiting for its group: runs on the group's connection (under its own savepoint when
/// it is not alone, the `bool`) and returns how to answer its caller and what its transaction
/// must do.
type GroupOp = Box<
    dyn for<'c> FnOnce(
            &'c mut SqliteConnection,
            bool,
        ) -> Pin<Box<dyn Future<Output = (Deliver, Fate)> + Send + 'c>>
        + Send,
>;

/// What one write of a group leaves its transaction to do.
enum Fate {
    /// Commit it (a failed body was already rolled back to its savepoint).
    Keep,
    /// A write alone in its group failed: roll the transaction back; its answer is its error.
    Undo,
    /// A savepoint could not be closed: roll the whole group back, every caller gets this.
    Broken(StoreError),
}

/// A write transaction holding this process's write turn; derefs to the connection.
struct Tx {
    tx: Transaction<'static, Sqlite>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl Deref for Tx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

impl Tx {
    async fn commit(self) -> std::result::Result<(), sqlx::Error> {
        self.tx.commit().await
    }
    /// Rolled back before the write turn goes to the next writer (a dropped one would be rolled
    /// back later, on the connection's next use, and the next writer would wait for it).
    async fn rollback(self) -> std::result::Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

/// Which file a store opened, so a file deleted or replaced under a running server is noticed.
struct FileId {
    path: std::path::PathBuf,
    #[cfg(unix)]
    id: (u64, u64),
}

impl FileId {
    fn of(path: &std::path::Path) -> Result<Self> {
        let meta = std::fs::metadata(path)
            .map_err(|e| StoreError::Database(format!("cannot stat {}: {e}", path.display())))?;
        #[cfg(not(unix))]
        let _ = meta;
        Ok(FileId {
            path: path.to_path_buf(),
            #[cfg(unix)]
            id: {
                use std::os::unix::fs::MetadataExt;
                (meta.dev(), meta.ino())
            },
        })
    }

    /// `Err` when the path no longer holds the file that was opened.
    fn check(&self) -> Result<()> {
        let now = FileId::of(&self.path).map_err(|_| {
            StoreError::Database(format!(
                "the database file {} is gone (deleted or moved under the running server)",
                self.path.display()
            ))
        })?;
        #[cfg(unix)]
        if now.id != self.id {
            return Err(StoreError::Database(format!(
                "the database file {} was replaced under the running server",
                self.path.display()
            )));
        }
        #[cfg(not(unix))]
        let _ = now;
        Ok(())
    }
}

fn key_info(row: &SqliteRow) -> Result<KeyInfo, sqlx::Error> {
    Ok(KeyInfo {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        credits: row.try_get("balance")?,
        revoked: row.try_get("revoked")?,
        created_at: row.try_get("created_at")?,
    })
}

const KEY_COLUMNS: &str = "id, name, balance, revoked_at IS NOT NULL AS revoked, created_at";

impl SqliteStore {
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self> {
        let mut connect = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Invalid(format!("bad SQLite URL {url:?}: {e}")))?
            .create_if_missing(true)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let memory = url.contains(":memory:") || url.contains("mode=memory");
        let mut pool = SqlitePoolOptions::new();
        if memory {
            // An in-memory database lives as long as its connection: keep exactly one, forever.
            pool = pool
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        } else {
            connect = connect.journal_mode(SqliteJournalMode::Wal);
            pool = pool
                .max_connections(options.max_connections)
                .after_release(|conn, _| {
                    Box::pin(async move {
                        if !conn.is_in_transaction() {
                            return Ok(true);
                        }
                        // Runs the ROLLBACK a dropped transaction queued; a connection still
                        // counted inside a transaction after that is closed, not reused (a full
                        // disk would otherwise leave it refusing every BEGIN until a restart).
                        conn.ping().await?;
                        let clean = !conn.is_in_transaction();
                        if !clean {
                            tracing::warn!(
                                "closing a database connection left inside a failed transaction"
                            );
                        }
                        Ok(clean)
                    })
                });
        }
        let filename = connect.get_filename().to_path_buf();
        let pool = pool.connect_with(connect).await.map_err(db_err)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(migrate_err)?;
        let file = if memory {
            None
        } else {
            Some(FileId::of(&filename)?)
        };
        Ok(Self {
            pool,
            takeover_after: options.idempotency_takeover_after,
            idempotency_ttl: options.idempotency_ttl,
            idempotency_max_per_key: options.idempotency_max_per_key,
            file,
            write_check: WriteCheck::default(),
            write_turn: Arc::new(tokio::sync::Mutex::new(())),
            group: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Waits for this process's write turn, then takes SQLite's write lock.
    async fn write(&self) -> Result<Tx> {
        let turn = Arc::clone(&self.write_turn).lock_owned().await;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
        Ok(Tx { tx, _turn: turn })
    }

    /// Runs `body` as part of the next group commit: queued with the writes that arrive while the
    /// write turn is taken, then run by whichever of their callers gets the turn first, all in
    /// one transaction (each under a savepoint, so a failing body undoes only its own writes).
    /// The answer comes once that transaction has committed; if it does not commit, every body
    /// in it fails with its error. The group runs in its own task: a caller that stops waiting
    /// does not take the others' writes with it. Its own queued write still runs with the next
    /// group (a debit whose caller is gone then stays open until the reaper refunds it; the
    /// request path never drops these calls: it runs them in a task of their own).
    async fn grouped<T, F>(&self, body: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(
                &'c mut SqliteConnection,
            ) -> Pin<Box<dyn Future<Output = Result<T>> + Send + 'c>>
            + Send
            + 'static,
    {
        let (answer, mut answered) = tokio::sync::oneshot::channel::<Result<T>>();
        let op: GroupOp = Box::new(move |conn, isolate| {
            Box::pin(async move {
                let (outcome, fate) = if isolate {
                    savepoint(conn, body).await
                } else {
                    let outcome = body(conn).await;
                    let fate = if outcome.is_ok() {
                        Fate::Keep
                    } else {
                        Fate::Undo
                    };
                    (outcome, fate)
                };
                let deliver: Deliver = Box::new(move |commit: Result<()>| {
                    let _ = answer.send(commit.and(outcome));
                });
                (deliver, fate)
            })
        });
        lock(&self.group).push(op);
        loop {
            tokio::select! {
                biased;
                r = &mut answered => {
                    return r.unwrap_or_else(|_| {
                        Err(StoreError::Database(
                            "the write was not run: its group's transaction could not start".into(),
                        ))
                    });
                }
                turn = Arc::clone(&self.write_turn).lock_owned() => {
                    let ops = std::mem::take(&mut *lock(&self.group));
                    // Empty: an earlier group took this write, and answered before it let go of
                    // the turn.
                    if !ops.is_empty() {
                        tokio::spawn(run_group(self.pool.clone(), turn, ops));
                    }
                }
            }
        }
    }

    async fn key_exists(conn: &mut SqliteConnection, key_id: &str) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM keys WHERE id = $1")
            .bind(key_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
        Ok(found.is_some())
    }

    /// Pays back a reservation this transaction has just closed as `refunded`.
    #[allow(clippy::too_many_arguments)]
    async fn pay_back(
        tx: &mut Tx,
        reservation_id: &str,
        key_id: &str,
        credits: i64,
        endpoint: &str,
        model: &str,
        status: Option<i32>,
        latency_ms: Option<f64>,
    ) -> Result<i64> {
        let balance: i64 = sqlx::query_scalar(
            "UPDATE keys SET balance = balance + $1 WHERE id = $2 RETURNING balance",
        )
        .bind(credits)
        .bind(key_id)
        .fetch_one(&mut **tx)
        .await
        .map_err(db_err)?;
        sqlx::query(
            "INSERT INTO ledger (key_id, kind, credits, endpoint, model, status, latency_ms, reservation_id)
             VALUES ($1, 'refund', $2, $3, $4, $5, $6, $7)",
        )
        .bind(key_id)
        .bind(credits)
        .bind(endpoint)
        .bind(model)
        .bind(status)
        .bind(latency_ms)
        .bind(reservation_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(balance)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `body` under a savepoint: released when it succeeds, rolled back to when it fails.
async fn savepoint<T, F>(conn: &mut SqliteConnection, body: F) -> (Result<T>, Fate)
where
    F: for<'c> FnOnce(
        &'c mut SqliteConnection,
    ) -> Pin<Box<dyn Future<Output = Result<T>> + Send + 'c>>,
{
    if let Err(e) = sqlx::query("SAVEPOINT grouped_write")
        .execute(&mut *conn)
        .await
    {
        let e = db_err(e);
        return (Err(StoreError::Database(e.to_string())), Fate::Broken(e));
    }
    let outcome = body(&mut *conn).await;
    let close = if outcome.is_ok() {
        &["RELEASE grouped_write"][..]
    } else {
        &["ROLLBACK TO grouped_write", "RELEASE grouped_write"][..]
    };
    for sql in close {
        if let Err(e) = sqlx::query(sql).execute(&mut *conn).await {
            return (outcome, Fate::Broken(db_err(e)));
        }
    }
    (outcome, Fate::Keep)
}

/// One group commit: `BEGIN IMMEDIATE`, every write (under its own savepoint when there are
/// several), `COMMIT`, then each caller's answer, then the write turn goes to the next writer.
/// If the transaction cannot start, the writes are dropped unrun and their callers told so; if a
/// savepoint cannot be closed, the group is rolled back and every caller gets that error.
async fn run_group(pool: SqlitePool, turn: tokio::sync::OwnedMutexGuard<()>, ops: Vec<GroupOp>) {
    let mut delivers = Vec::with_capacity(ops.len());
    let result = async {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_err)?;
        let isolate = ops.len() > 1;
        for op in ops {
            let (deliver, fate) = op(&mut tx, isolate).await;
            delivers.push(deliver);
            match fate {
                Fate::Keep => {}
                Fate::Undo => {
                    // Its own error is its answer; nothing of it may stay.
                    return tx.rollback().await.map_err(db_err);
                }
                Fate::Broken(e) => {
                    let _ = tx.rollback().await;
                    return Err(e);
                }
            }
        }
        tx.commit().await.map_err(db_err)
    }
    .await;
    if let Err(e) = &result {
        tracing::error!(error = %e, writes = delivers.len(), "a group of credit writes failed");
    }
    for deliver in delivers {
        deliver(match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(StoreError::Database(e.to_string())),
        });
    }
    drop(turn);
}

/// The debit's statements: take `req.cost` if the key has it, open reservation `id`, write the
/// ledger row. Returns the balance left.
async fn debit_in(conn: &mut SqliteConnection, id: &str, req: &DebitRequest) -> Result<i64> {
    let balance: Option<i64> = sqlx::query_scalar(
        "UPDATE keys SET balance = balance - $1
         WHERE id = $2 AND balance >= $1 AND revoked_at IS NULL RETURNING balance",
    )
    .bind(req.cost)
    .bind(&req.key_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?;
    let Some(balance) = balance else {
        let row: Option<(i64, bool)> =
            sqlx::query_as("SELECT balance, revoked_at IS NOT NULL FROM keys WHERE id = $1")
                .bind(&req.key_id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_err)?;
        return Err(match row {
            None => StoreError::NotFound(format!("key {}", req.key_id)),
            Some((_, true)) => StoreError::NotFound(format!("key {} (revoked)", req.key_id)),
            Some((balance, false)) => StoreError::InsufficientCredits {
                balance,
                cost: req.cost,
            },
        });
    };
    sqlx::query(
        "INSERT INTO reservations (id, key_id, credits, endpoint, model) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(&req.key_id)
    .bind(req.cost)
    .bind(&req.endpoint)
    .bind(&req.model)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    sqlx::query(
        "INSERT INTO ledger (key_id, kind, credits, endpoint, model, reservation_id)
         VALUES ($1, 'debit', $2, $3, $4, $5)",
    )
    .bind(&req.key_id)
    .bind(-req.cost)
    .bind(&req.endpoint)
    .bind(&req.model)
    .bind(id)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(balance)
}

/// The settle's statements: close reservation `debit_id` as settled and record the call's
/// status and latency on its ledger row (a reservation already closed is logged, not an error).
async fn settle_in(
    conn: &mut SqliteConnection,
    debit_id: &str,
    status: u16,
    latency_ms: f64,
) -> Result<()> {
    let closed = sqlx::query(concat!(
        "UPDATE reservations SET state = 'settled', closed_at = ",
        now!(),
        " WHERE id = $1 AND state = 'open'"
    ))
    .bind(debit_id)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    if closed.rows_affected() == 0 {
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
    sqlx::query(
        "UPDATE ledger SET status = $2, latency_ms = $3 WHERE reservation_id = $1 AND kind = 'debit'",
    )
    .bind(debit_id)
    .bind(i32::from(status))
    .bind(finite(latency_ms))
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_key(&self, name: &str, credits: i64) -> Result<NewKey> {
        check_credits(credits, true)?;
        let key = generate_key();
        let parsed = parse_key(&key)?;
        let id = new_id("key");
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO keys (id, name, key_hash, prefix, balance) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(name)
        .bind(&parsed.hash)
        .bind(&parsed.prefix)
        .bind(credits)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if credits > 0 {
            // Initial credits are a top-up row, so balance == sum(ledger.credits) from the start.
            sqlx::query("INSERT INTO ledger (key_id, kind, credits) VALUES ($1, 'topup', $2)")
                .bind(&id)
                .bind(credits)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(NewKey {
            id,
            key,
            name: name.to_string(),
            credits,
        })
    }

    async fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY created_at, id");
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(|r| key_info(r).map_err(db_err)).collect()
    }

    async fn topup(&self, key_id: &str, credits: i64) -> Result<i64> {
        check_credits(credits, false)?;
        let mut tx = self.write().await?;
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
        tx.commit().await.map_err(db_err)?;
        Ok(balance)
    }

    async fn revoke(&self, key_id: &str) -> Result<()> {
        let mut tx = self.write().await?;
        let done = sqlx::query(concat!(
            "UPDATE keys SET revoked_at = ",
            now!(),
            " WHERE id = $1 AND revoked_at IS NULL"
        ))
        .bind(key_id)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        // Revoking twice is fine; revoking nothing is not.
        if done.rows_affected() == 0 && !Self::key_exists(&mut tx, key_id).await? {
            return Err(StoreError::NotFound(format!("key {key_id}")));
        }
        tx.commit().await.map_err(db_err)
    }

    async fn authenticate(&self, raw_key: &str) -> Result<Option<KeyInfo>> {
        let parsed = parse_key(raw_key)?;
        let sql = format!(
            "SELECT {KEY_COLUMNS}, key_hash FROM keys WHERE key_hash = $1 AND revoked_at IS NULL"
        );
        let row = sqlx::query(&sql)
            .bind(&parsed.hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        let Some(row) = row else { return Ok(None) };
        let stored: String = row.try_get("key_hash").map_err(db_err)?;
        if !hashes_match(&stored, &parsed.hash) {
            return Ok(None);
        }
        key_info(&row).map(Some).map_err(db_err)
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
            .grouped(move |c| Box::pin(async move { debit_in(c, &rid, &req).await }))
            .await?;
        Ok(Debit { id, balance })
    }

    async fn settle(&self, debit_id: &str, status: u16, latency_ms: f64) -> Result<()> {
        let id = debit_id.to_string();
        self.grouped(move |c| Box::pin(async move { settle_in(c, &id, status, latency_ms).await }))
            .await
    }

    async fn refund(&self, debit_id: &str, status: u16, latency_ms: f64) -> Result<i64> {
        let mut tx = self.write().await?;
        // The one statement that decides whether this call pays anything back.
        let closed: Option<(String, i64, String, String)> = sqlx::query_as(concat!(
            "UPDATE reservations SET state = 'refunded', closed_at = ",
            now!(),
            " WHERE id = $1 AND state = 'open' RETURNING key_id, credits, endpoint, model"
        ))
        .bind(debit_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some((key_id, credits, endpoint, model)) = closed else {
            let balance: Option<i64> = sqlx::query_scalar(
                "SELECT k.balance FROM reservations r JOIN keys k ON k.id = r.key_id WHERE r.id = $1",
            )
            .bind(debit_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
            return balance.ok_or_else(|| StoreError::NotFound(format!("reservation {debit_id}")));
        };
        let status = Some(i32::from(status));
        let latency = finite(latency_ms);
        let balance = Self::pay_back(
            &mut tx, debit_id, &key_id, credits, &endpoint, &model, status, latency,
        )
        .await?;
        sqlx::query(
            "UPDATE ledger SET status = $2, latency_ms = $3 WHERE reservation_id = $1 AND kind = 'debit'",
        )
        .bind(debit_id)
        .bind(status)
        .bind(latency)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(balance)
    }

    async fn account(&self, key_id: &str, recent: usize) -> Result<Account> {
        // A plain (deferred) transaction that only reads: one snapshot for balance and rows.
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let key: Option<(String, i64)> =
            sqlx::query_as("SELECT name, balance FROM keys WHERE id = $1")
                .bind(key_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        let (name, credits) = key.ok_or_else(|| StoreError::NotFound(format!("key {key_id}")))?;
        let rows = sqlx::query(
            "SELECT endpoint, model, credits, kind, status, latency_ms, created_at FROM ledger
             WHERE key_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(key_id)
        .bind(recent_limit(recent))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        let usage = rows
            .iter()
            .map(|r| {
                Ok(UsageRow {
                    endpoint: r.try_get("endpoint")?,
                    model: r.try_get("model")?,
                    credits: r.try_get("credits")?,
                    kind: r.try_get("kind")?,
                    status: r.try_get("status")?,
                    latency_ms: r.try_get("latency_ms")?,
                    at: r.try_get("created_at")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(db_err)?;
        Ok(Account {
            key_id: key_id.to_string(),
            name,
            credits,
            usage,
        })
    }

    async fn reap_stale(&self, older_than: Duration) -> Result<u64> {
        let modifier = cutoff_modifier(older_than);
        let mut total = 0u64;
        loop {
            let mut tx = self.write().await?;
            let closed: Vec<(String, String, i64, String, String)> = sqlx::query_as(concat!(
                "UPDATE reservations SET state = 'refunded', closed_at = ",
                now!(),
                " WHERE state = 'open' AND id IN (SELECT id FROM reservations WHERE state = 'open'
                   AND created_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', $1)
                   ORDER BY created_at LIMIT $2)
                 RETURNING id, key_id, credits, endpoint, model"
            ))
            .bind(&modifier)
            .bind(REAP_BATCH)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
            for (id, key_id, credits, endpoint, model) in &closed {
                Self::pay_back(&mut tx, id, key_id, *credits, endpoint, model, None, None).await?;
            }
            tx.commit().await.map_err(db_err)?;
            total += closed.len() as u64;
            if (closed.len() as i64) < REAP_BATCH {
                return Ok(total);
            }
        }
    }

    async fn idempotency_known(&self, key_id: &str, idempotency_key: &str) -> Result<bool> {
        check_idempotency_key(idempotency_key)?;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM idempotency WHERE key_id = $1 AND idempotency_key = $2
             AND created_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', $3)",
        )
        .bind(key_id)
        .bind(idempotency_key)
        .bind(cutoff_modifier(self.idempotency_ttl))
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
        let expiry = cutoff_modifier(self.idempotency_ttl);
        let mut tx = self.write().await?;
        // An answer stored longer ago than the TTL is no answer any more.
        sqlx::query(
            "DELETE FROM idempotency WHERE key_id = $1 AND idempotency_key = $2
             AND created_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', $3)",
        )
        .bind(key_id)
        .bind(idempotency_key)
        .bind(&expiry)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let inserted = sqlx::query(
            "INSERT INTO idempotency (key_id, idempotency_key, request_hash, state)
             VALUES ($1, $2, $3, 'in_progress') ON CONFLICT DO NOTHING",
        )
        .bind(key_id)
        .bind(idempotency_key)
        .bind(request_hash)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if inserted.rows_affected() == 1 {
            // The write lock is held: no other claim can slip past this count.
            let live: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM idempotency WHERE key_id = $1
                 AND created_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', $2)",
            )
            .bind(key_id)
            .bind(&expiry)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
            if live > i64::from(self.idempotency_max_per_key) {
                tx.rollback().await.map_err(db_err)?;
                return Ok(IdempotencyClaim::LimitReached);
            }
            tx.commit().await.map_err(db_err)?;
            return Ok(IdempotencyClaim::New);
        }
        // The write lock is held, so the row that blocked the insert is still there.
        let (hash, state, status, body, stale): (
            String,
            String,
            Option<i32>,
            Option<String>,
            bool,
        ) = sqlx::query_as(
            "SELECT request_hash, state, status, body,
                        created_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', $3)
                 FROM idempotency WHERE key_id = $1 AND idempotency_key = $2",
        )
        .bind(key_id)
        .bind(idempotency_key)
        .bind(cutoff_modifier(self.takeover_after))
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        let claim = if !hashes_match(&hash, request_hash) {
            IdempotencyClaim::Mismatch
        } else if state == "completed" {
            IdempotencyClaim::Completed {
                status: status.and_then(|s| u16::try_from(s).ok()).unwrap_or(500),
                body: body.unwrap_or_default(),
            }
        } else if stale {
            // An in-progress claim this old belongs to a request that died: take it over.
            sqlx::query(concat!(
                "UPDATE idempotency SET created_at = ",
                now!(),
                " WHERE key_id = $1 AND idempotency_key = $2 AND state = 'in_progress'"
            ))
            .bind(key_id)
            .bind(idempotency_key)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            return Ok(IdempotencyClaim::New);
        } else {
            IdempotencyClaim::InProgress
        };
        tx.rollback().await.map_err(db_err)?;
        Ok(claim)
    }

    async fn idempotency_complete(
        &self,
        key_id: &str,
        idempotency_key: &str,
        status: u16,
        body: &str,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "UPDATE idempotency SET state = 'completed', status = $3, body = $4
             WHERE key_id = $1 AND idempotency_key = $2 AND state = 'in_progress'",
        )
        .bind(key_id)
        .bind(idempotency_key)
        .bind(i32::from(status))
        .bind(body)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if done.rows_affected() == 0 {
            // Already completed (the first answer stays) or never claimed.
            let exists: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM idempotency WHERE key_id = $1 AND idempotency_key = $2",
            )
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
        tx.commit().await.map_err(db_err)
    }

    async fn idempotency_abort(&self, key_id: &str, idempotency_key: &str) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "DELETE FROM idempotency WHERE key_id = $1 AND idempotency_key = $2 AND state = 'in_progress'",
        )
        .bind(key_id)
        .bind(idempotency_key)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn prune_idempotency(&self, older_than: Duration) -> Result<u64> {
        let modifier = cutoff_modifier(older_than);
        let mut total = 0u64;
        loop {
            let mut tx = self.write().await?;
            let gone = sqlx::query(
                "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency
                 WHERE created_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', $1) LIMIT $2)",
            )
            .bind(&modifier)
            .bind(PRUNE_BATCH)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            total += gone.rows_affected();
            if gone.rows_affected() < PRUNE_BATCH as u64 {
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
        if let Some(file) = &self.file {
            file.check()?;
        }
        self.write_check
            .run(|| async {
                let mut tx = self.write().await?;
                sqlx::query(concat!(
                    "UPDATE write_check SET at = ",
                    now!(),
                    " WHERE id = 1"
                ))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                tx.commit().await.map_err(db_err)
            })
            .await
    }

    async fn ledger_totals(&self, key_id: &str) -> Result<LedgerTotals> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        if !Self::key_exists(&mut tx, key_id).await? {
            return Err(StoreError::NotFound(format!("key {key_id}")));
        }
        let (debits, refunds, topups): (i64, i64, i64) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(CASE WHEN kind = 'debit' THEN -credits ELSE 0 END), 0) AS BIGINT),
                    CAST(COALESCE(SUM(CASE WHEN kind = 'refund' THEN credits ELSE 0 END), 0) AS BIGINT),
                    CAST(COALESCE(SUM(CASE WHEN kind = 'topup' THEN credits ELSE 0 END), 0) AS BIGINT)
             FROM ledger WHERE key_id = $1",
        )
        .bind(key_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(LedgerTotals {
            debits,
            refunds,
            topups,
        })
    }

    async fn reservation(&self, debit_id: &str) -> Result<Reservation> {
        let row: Option<(String, String, i64, String, String)> = sqlx::query_as(
            "SELECT id, key_id, credits, state, created_at FROM reservations WHERE id = $1",
        )
        .bind(debit_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        let (id, key_id, credits, state, created_at) =
            row.ok_or_else(|| StoreError::NotFound(format!("reservation {debit_id}")))?;
        Ok(Reservation {
            id,
            key_id,
            credits,
            state,
            created_at,
        })
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
