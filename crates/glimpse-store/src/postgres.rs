//! PostgreSQL store, for several replicas sharing one set of keys.
//!
//! Statements run at READ COMMITTED: a conditional `UPDATE … WHERE balance >= $1` (or `WHERE state
//! = 'open'`) that waits on another transaction's row lock re-checks its WHERE clause against the
//! committed row, so concurrent debits cannot overdraw and a reservation is closed exactly once.
//! Timestamps come from the database clock, so replicas with skewed clocks agree on ages.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};

use crate::keys::{generate_key, hashes_match, new_id, parse_key};
use crate::sqlutil::*;
use crate::*;

macro_rules! now {
    () => {
        "now()"
    };
}

/// A timestamp column as the RFC 3339 text the SQLite store keeps (UTC, milliseconds).
macro_rules! rfc3339 {
    ($col:literal) => {
        concat!(
            "to_char(",
            $col,
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
        )
    };
}

fn age_secs(age: Duration) -> f64 {
    age.as_secs_f64()
}

pub struct PostgresStore {
    pool: PgPool,
    takeover_after: Duration,
    idempotency_ttl: Duration,
    idempotency_max_per_key: u32,
    write_check: WriteCheck,
}

type Tx = Transaction<'static, Postgres>;

fn key_info(row: &PgRow) -> Result<KeyInfo, sqlx::Error> {
    Ok(KeyInfo {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        credits: row.try_get("balance")?,
        revoked: row.try_get("revoked")?,
        created_at: row.try_get("created_at")?,
    })
}

const KEY_COLUMNS: &str = concat!(
    "id, name, balance, revoked_at IS NOT NULL AS revoked, ",
    rfc3339!("created_at"),
    " AS created_at"
);

/// How long the first connection at start-up may take before the store gives up with a reason.
const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl PostgresStore {
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self> {
        // The URL may hold a password: never echo it in errors.
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Invalid(format!("bad PostgreSQL URL: {e}")))?;
        // One direct connection first: the pool retries a failing connect until its acquire
        // timeout and then says only "pool timed out"; this says where and why, quickly.
        let target = format!("{}:{}", connect.get_host(), connect.get_port());
        match tokio::time::timeout(
            FIRST_CONNECT_TIMEOUT,
            sqlx::Connection::connect_with(&connect),
        )
        .await
        {
            Ok(Ok(conn)) => {
                let conn: sqlx::PgConnection = conn;
                let _ = sqlx::Connection::close(conn).await;
            }
            Ok(Err(e)) => {
                return Err(StoreError::Database(format!(
                    "cannot connect to PostgreSQL at {target}: {e}"
                )))
            }
            Err(_) => {
                return Err(StoreError::Database(format!(
                    "PostgreSQL at {target} did not answer within {} s",
                    FIRST_CONNECT_TIMEOUT.as_secs()
                )))
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(connect)
            .await
            .map_err(db_err)?;
        // sqlx takes an advisory lock here, so replicas starting together migrate once.
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(migrate_err)?;
        Ok(Self {
            pool,
            takeover_after: options.idempotency_takeover_after,
            idempotency_ttl: options.idempotency_ttl,
            idempotency_max_per_key: options.idempotency_max_per_key,
            write_check: WriteCheck::default(),
        })
    }

    /// READ COMMITTED is enough: every money decision is one conditional UPDATE.
    async fn write(&self) -> Result<Tx> {
        self.pool.begin().await.map_err(db_err)
    }

    /// One snapshot for several reads.
    async fn read(&self) -> Result<Tx> {
        self.pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(db_err)
    }

    async fn key_exists(tx: &mut Tx, key_id: &str) -> Result<bool> {
        let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM keys WHERE id = $1")
            .bind(key_id)
            .fetch_optional(&mut **tx)
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

#[async_trait]
impl Store for PostgresStore {
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
        let mut tx = self.write().await?;
        let balance: Option<i64> = sqlx::query_scalar(
            "UPDATE keys SET balance = balance - $1
             WHERE id = $2 AND balance >= $1 AND revoked_at IS NULL RETURNING balance",
        )
        .bind(req.cost)
        .bind(&req.key_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some(balance) = balance else {
            let row: Option<(i64, bool)> =
                sqlx::query_as("SELECT balance, revoked_at IS NOT NULL FROM keys WHERE id = $1")
                    .bind(&req.key_id)
                    .fetch_optional(&mut *tx)
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
        .bind(&id)
        .bind(&req.key_id)
        .bind(req.cost)
        .bind(&req.endpoint)
        .bind(&req.model)
        .execute(&mut *tx)
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
        .bind(&id)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Debit { id, balance })
    }

    async fn settle(&self, debit_id: &str, status: u16, latency_ms: f64) -> Result<()> {
        let mut tx = self.write().await?;
        let closed = sqlx::query(concat!(
            "UPDATE reservations SET state = 'settled', closed_at = ",
            now!(),
            " WHERE id = $1 AND state = 'open'"
        ))
        .bind(debit_id)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if closed.rows_affected() == 0 {
            let known: Option<String> =
                sqlx::query_scalar("SELECT state FROM reservations WHERE id = $1")
                    .bind(debit_id)
                    .fetch_optional(&mut *tx)
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
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
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
        let mut tx = self.read().await?;
        let key: Option<(String, i64)> =
            sqlx::query_as("SELECT name, balance FROM keys WHERE id = $1")
                .bind(key_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        let (name, credits) = key.ok_or_else(|| StoreError::NotFound(format!("key {key_id}")))?;
        let rows = sqlx::query(concat!(
            "SELECT endpoint, model, credits, kind, status, latency_ms, ",
            rfc3339!("created_at"),
            " AS created_at FROM ledger WHERE key_id = $1 ORDER BY id DESC LIMIT $2"
        ))
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
        let mut total = 0u64;
        loop {
            let mut tx = self.write().await?;
            // SKIP LOCKED: rows a live settle/refund (or another reaper) holds are theirs to close.
            let mut closed: Vec<(String, String, i64, String, String)> = sqlx::query_as(concat!(
                "UPDATE reservations SET state = 'refunded', closed_at = ",
                now!(),
                " WHERE state = 'open' AND id IN (SELECT id FROM reservations WHERE state = 'open'
                   AND created_at < now() - make_interval(secs => $1)
                   ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING id, key_id, credits, endpoint, model"
            ))
            .bind(age_secs(older_than))
            .bind(REAP_BATCH)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
            // Lock keys in one order so two reapers can never wait on each other.
            closed.sort_by(|a, b| a.1.cmp(&b.1));
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
             AND created_at >= now() - make_interval(secs => $3)",
        )
        .bind(key_id)
        .bind(idempotency_key)
        .bind(age_secs(self.idempotency_ttl))
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
        // The blocking row can vanish (an abort) between our insert and our read: try again.
        let expiry = age_secs(self.idempotency_ttl);
        for _ in 0..3 {
            let mut tx = self.write().await?;
            // An answer stored longer ago than the TTL is no answer any more.
            sqlx::query(
                "DELETE FROM idempotency WHERE key_id = $1 AND idempotency_key = $2
                 AND created_at < now() - make_interval(secs => $3)",
            )
            .bind(key_id)
            .bind(idempotency_key)
            .bind(expiry)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            // Waits for a concurrent uncommitted claim of the same key, then does nothing.
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
                // Claims of one key running at once do not see each other's rows here: the cap
                // can be overshot by that many.
                let live: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM idempotency WHERE key_id = $1
                     AND created_at >= now() - make_interval(secs => $2)",
                )
                .bind(key_id)
                .bind(expiry)
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
            type Existing = (String, String, Option<i32>, Option<String>, bool);
            let row: Option<Existing> = sqlx::query_as(
                "SELECT request_hash, state, status, body,
                        created_at < now() - make_interval(secs => $3)
                 FROM idempotency WHERE key_id = $1 AND idempotency_key = $2 FOR UPDATE",
            )
            .bind(key_id)
            .bind(idempotency_key)
            .bind(age_secs(self.takeover_after))
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
            let Some((hash, state, status, body, stale)) = row else {
                continue;
            };
            return if !hashes_match(&hash, request_hash) {
                Ok(IdempotencyClaim::Mismatch)
            } else if state == "completed" {
                Ok(IdempotencyClaim::Completed {
                    status: status.and_then(|s| u16::try_from(s).ok()).unwrap_or(500),
                    body: body.unwrap_or_default(),
                })
            } else if stale {
                // An in-progress claim this old belongs to a request that died: take it over.
                // The row lock (FOR UPDATE) makes sure only one claimant does.
                sqlx::query(
                    "UPDATE idempotency SET created_at = now()
                     WHERE key_id = $1 AND idempotency_key = $2 AND state = 'in_progress'",
                )
                .bind(key_id)
                .bind(idempotency_key)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                tx.commit().await.map_err(db_err)?;
                Ok(IdempotencyClaim::New)
            } else {
                Ok(IdempotencyClaim::InProgress)
            };
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
            let exists: Option<i32> = sqlx::query_scalar(
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
        let mut total = 0u64;
        loop {
            let gone = sqlx::query(
                "DELETE FROM idempotency WHERE ctid = ANY(ARRAY(SELECT ctid FROM idempotency
                 WHERE created_at < now() - make_interval(secs => $1) LIMIT $2))",
            )
            .bind(age_secs(older_than))
            .bind(PRUNE_BATCH)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
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
        self.write_check
            .run(|| async {
                // Fails on a read-only server (a standby after a failover, a full disk that
                // turned the cluster read-only) as any debit would.
                sqlx::query("UPDATE write_check SET at = now() WHERE id = 1")
                    .execute(&self.pool)
                    .await
                    .map(|_| ())
                    .map_err(db_err)
            })
            .await
    }

    async fn ledger_totals(&self, key_id: &str) -> Result<LedgerTotals> {
        let mut tx = self.read().await?;
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
        let row: Option<(String, String, i64, String, String)> = sqlx::query_as(concat!(
            "SELECT id, key_id, credits, state, ",
            rfc3339!("created_at"),
            " FROM reservations WHERE id = $1"
        ))
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
