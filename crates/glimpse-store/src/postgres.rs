//! PostgreSQL, for several replicas sharing one set of keys; the PostgreSQL [`Dialect`].
//!
//! Statements run at READ COMMITTED: a conditional `UPDATE … WHERE balance >= $1` (or `WHERE state
//! = 'open'`) that waits on another transaction's row lock re-checks its WHERE clause against the
//! committed row, so concurrent debits cannot overdraw and a reservation is closed exactly once.
//! Timestamps come from the database clock, so replicas with skewed clocks agree on ages.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgQueryResult};
use sqlx::Postgres;

use crate::sql::{Dialect, SqlStore, Tx, WriteBody};
use crate::sqlutil::*;
use crate::*;

/// The store on PostgreSQL.
pub type PostgresStore = SqlStore<PostgresDialect>;

/// What PostgreSQL does its own way: `timestamptz` columns, ages in seconds, row locks.
pub struct PostgresDialect;

impl Dialect for PostgresDialect {
    type Db = Postgres;
    /// Seconds, for `make_interval`.
    type Age = f64;

    const NOW: &'static str = "now()";
    const BEGIN_READ: &'static str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    /// Rows a live settle/refund (or another reaper) holds are theirs to close.
    const FOR_UPDATE_SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";

    fn age(age: Duration) -> f64 {
        age.as_secs_f64()
    }

    fn before_now(param: u8) -> String {
        format!("now() - make_interval(secs => ${param})")
    }

    /// As the text the SQLite store keeps (UTC, milliseconds).
    fn rfc3339(column: &str) -> String {
        format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
    }

    const PRUNE_IDEMPOTENCY: &'static str =
        "DELETE FROM idempotency WHERE ctid = ANY(ARRAY(SELECT ctid FROM idempotency
         WHERE created_at < now() - make_interval(secs => $1) LIMIT $2))";

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }

    /// READ COMMITTED is enough: every money decision is one conditional UPDATE.
    async fn begin_write(&self, pool: &PgPool) -> Result<Tx<Postgres>> {
        let tx = pool.begin().await.map_err(db_err)?;
        Ok(Tx::new(tx, None))
    }

    async fn write<T: Send + 'static>(
        &self,
        pool: &PgPool,
        body: WriteBody<Postgres, T>,
    ) -> Result<T> {
        let mut tx = self.begin_write(pool).await?;
        let outcome = body(&mut tx).await;
        tx.finish(outcome).await
    }

    fn check_file(&self) -> Result<()> {
        Ok(())
    }
}

/// How long the first connection at start-up may take before the store gives up with a reason.
const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl SqlStore<PostgresDialect> {
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
                return Err(StoreError::Database(DatabaseError::caused(
                    format!("cannot connect to PostgreSQL at {target}: {e}"),
                    e,
                )))
            }
            Err(elapsed) => {
                return Err(StoreError::Database(DatabaseError::caused(
                    format!(
                        "PostgreSQL at {target} did not answer within {} s",
                        FIRST_CONNECT_TIMEOUT.as_secs()
                    ),
                    elapsed,
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
        Ok(SqlStore::new(pool, PostgresDialect, options))
    }
}
