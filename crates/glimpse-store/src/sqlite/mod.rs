//! SQLite: one file in WAL mode, `busy_timeout` 5 s, foreign keys on; the SQLite [`Dialect`].
//!
//! Every transaction that writes starts with `BEGIN IMMEDIATE`, taking the write lock up front: a
//! deferred transaction that reads and then writes gets SQLITE_BUSY at once when another writer
//! got in between (busy_timeout is not honoured for that upgrade), so writers would fail instead
//! of queueing. With the lock taken first, writers simply wait their turn, which this process
//! also keeps, and debits and settles are committed in groups (`group_commit`).
//!
//! A connection whose transaction could not be closed (a COMMIT that failed on a full disk or an
//! I/O error: SQLite may already have rolled it back, so sqlx's own ROLLBACK fails and sqlx still
//! counts the transaction as open) is closed when it goes back to the pool instead of being
//! reused, where every later `BEGIN` on it would fail ("attempted to call begin_with at non-zero
//! transaction depth"); see `SqliteStore::open`.

mod group_commit;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteQueryResult,
};
use sqlx::{Connection, Sqlite};

use self::group_commit::GroupCommit;
use crate::sql::{Dialect, SqlStore, Tx, WriteBody};
use crate::sqlutil::*;
use crate::*;

/// The store on SQLite.
pub type SqliteStore = SqlStore<SqliteDialect>;

/// What SQLite does its own way: timestamps are RFC 3339 text, ages are `strftime` modifiers,
/// and writers take turns (see `group_commit`).
pub struct SqliteDialect {
    /// The database file as opened (none in memory), for `check_writes`.
    file: Option<FileId>,
    writers: GroupCommit,
}

impl Dialect for SqliteDialect {
    type Db = Sqlite;
    /// A `strftime` modifier such as `-5.000 seconds`.
    type Age = String;

    const NOW: &'static str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";
    /// Deferred: a transaction that only reads takes no write lock, and WAL gives it a snapshot.
    const BEGIN_READ: &'static str = "BEGIN";
    /// The writing transaction already holds the database's write lock.
    const FOR_UPDATE: &'static str = "";
    const FOR_UPDATE_SKIP_LOCKED: &'static str = "";

    fn age(age: Duration) -> String {
        format!("-{:.3} seconds", age.as_secs_f64())
    }

    fn before_now(param: u8) -> String {
        format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ${param})")
    }

    /// Stored as that text already.
    fn rfc3339(column: &str) -> String {
        column.to_string()
    }

    const PRUNE_IDEMPOTENCY: &'static str =
        "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency
         WHERE created_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', $1) LIMIT $2)";

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    async fn begin_write(&self, pool: &SqlitePool) -> Result<Tx<Sqlite>> {
        self.writers.begin(pool).await
    }

    async fn write<T: Send + 'static>(
        &self,
        pool: &SqlitePool,
        body: WriteBody<Sqlite, T>,
    ) -> Result<T> {
        self.writers.run(pool, body).await
    }

    fn check_file(&self) -> Result<()> {
        self.file.as_ref().map_or(Ok(()), FileId::check)
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
        let meta = std::fs::metadata(path).map_err(|e| {
            StoreError::Database(DatabaseError::caused(
                format!("cannot stat {}: {e}", path.display()),
                e,
            ))
        })?;
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
            StoreError::Database(
                format!(
                    "the database file {} is gone (deleted or moved under the running server)",
                    self.path.display()
                )
                .into(),
            )
        })?;
        #[cfg(unix)]
        if now.id != self.id {
            return Err(StoreError::Database(
                format!(
                    "the database file {} was replaced under the running server",
                    self.path.display()
                )
                .into(),
            ));
        }
        #[cfg(not(unix))]
        let _ = now;
        Ok(())
    }
}

impl SqlStore<SqliteDialect> {
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
        let dialect = SqliteDialect {
            file,
            writers: GroupCommit::default(),
        };
        Ok(SqlStore::new(pool, dialect, options))
    }
}
