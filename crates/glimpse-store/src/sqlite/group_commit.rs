//! SQLite's write turn and group commit.
//!
//! Writers take their turn in this process, first come first served ([`GroupCommit::begin`]): a
//! `BEGIN IMMEDIATE` that finds the lock taken is left to SQLite's busy handler, which sleeps
//! 1, 2, 5, 10, 15, 20, 25… ms between tries. Eight concurrent debit + settle pairs took 81 ms
//! that way (median round), 6 ms in turn, where one pair takes 0.9 ms
//! (`examples/write_contention.rs`). Only another process (the CLI) still meets the busy handler.
//!
//! The writes of every classification call (the debit before its pass, the settle after it) are
//! also committed in groups ([`GroupCommit::run`]): writes that queue while another write holds
//! the turn run together in one transaction, each under its own savepoint, and each caller gets
//! its own answer only once that transaction has committed. A forward pass answers up to a batch
//! of calls at once, and their settles then cost one `BEGIN IMMEDIATE` … `COMMIT` instead of one
//! each.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use sqlx::sqlite::{SqliteConnection, SqlitePool};
use sqlx::Sqlite;

use crate::sql::{Tx, WriteBody};
use crate::sqlutil::{db_err, shared_err};
use crate::{DatabaseError, Result, StoreError};

/// Hands a grouped write its answer once its group's transaction has committed (or failed).
type Deliver = Box<dyn FnOnce(Result<(), DatabaseError>) + Send>;

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

/// This process's writers of one database.
#[derive(Default)]
pub(super) struct GroupCommit {
    /// Writers in arrival order (tokio's mutex is fair): held from before `BEGIN IMMEDIATE` to
    /// the commit or rollback.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// Writes waiting for the next group commit (see [`GroupCommit::run`]).
    queue: Arc<Mutex<Vec<GroupOp>>>,
}

impl GroupCommit {
    /// Waits for this process's write turn, then takes SQLite's write lock.
    pub(super) async fn begin(&self, pool: &SqlitePool) -> Result<Tx<Sqlite>> {
        let turn = Arc::clone(&self.turn).lock_owned().await;
        let tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_err)?;
        Ok(Tx::new(tx, Some(turn)))
    }

    /// Runs `body` as part of the next group commit: queued with the writes that arrive while
    /// the write turn is taken, then run by whichever of their callers gets the turn first, all
    /// in one transaction (each under a savepoint, so a failing body undoes only its own writes).
    /// The answer comes once that transaction has committed; if it does not commit, every body
    /// in it fails with its error. The group runs in its own task: a caller that stops waiting
    /// does not take the others' writes with it. Its own queued write still runs with the next
    /// group (a debit whose caller is gone then stays open until the reaper refunds it; the
    /// request path never drops these calls: it runs them in a task of their own).
    pub(super) async fn run<T: Send + 'static>(
        &self,
        pool: &SqlitePool,
        body: WriteBody<Sqlite, T>,
    ) -> Result<T> {
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
                let deliver: Deliver = Box::new(move |commit| {
                    let _ = answer.send(commit.map_err(StoreError::Database).and(outcome));
                });
                (deliver, fate)
            })
        });
        lock(&self.queue).push(op);
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
                turn = Arc::clone(&self.turn).lock_owned() => {
                    let ops = std::mem::take(&mut *lock(&self.queue));
                    // Empty: an earlier group took this write, and answered before it let go of
                    // the turn.
                    if !ops.is_empty() {
                        tokio::spawn(run_group(pool.clone(), turn, ops));
                    }
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `body` under a savepoint: released when it succeeds, rolled back to when it fails.
async fn savepoint<T>(
    conn: &mut SqliteConnection,
    body: WriteBody<Sqlite, T>,
) -> (Result<T>, Fate) {
    if let Err(e) = sqlx::query("SAVEPOINT grouped_write")
        .execute(&mut *conn)
        .await
    {
        let e = db_err(e);
        return (Err(StoreError::Database(shared_err(&e))), Fate::Broken(e));
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
    let result = result.map_err(|e| shared_err(&e));
    for deliver in delivers {
        deliver(result.clone());
    }
    drop(turn);
}
