//! Opening the stores the story runs against: SQLite in a temp file always, PostgreSQL in a
//! fresh schema when `GLIMPSE_TEST_POSTGRES_URL` is set.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use glimpse_store::{connect_with, Store, StoreOptions};
use sqlx::postgres::PgPoolOptions;

pub const PG_ENV: &str = "GLIMPSE_TEST_POSTGRES_URL";

/// Two handles ("replicas") on one fresh SQLite file; the file lives as long as the TempDir.
pub async fn sqlite_replicas(
    options: &StoreOptions,
) -> (tempfile::TempDir, Arc<dyn Store>, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("glimpse.db").display());
    let a = connect_with(&url, options.clone())
        .await
        .expect("open SQLite");
    let b = connect_with(&url, options.clone())
        .await
        .expect("open SQLite again");
    (dir, a, b)
}

/// Runs `body` with two replicas on a new PostgreSQL schema, then drops the schema (even when
/// `body` panics). Returns false, after saying so, when the variable is not set; panics when it
/// is set but the database cannot be used.
pub async fn with_postgres_replicas<F, Fut>(options: &StoreOptions, body: F) -> bool
where
    F: FnOnce(Arc<dyn Store>, Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Ok(base) = std::env::var(PG_ENV) else {
        eprintln!("{PG_ENV} not set: PostgreSQL half of this test not run");
        return false;
    };
    let admin = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(5))
        .connect(&base)
        .await
        .unwrap_or_else(|e| panic!("{PG_ENV} is set but connecting to it failed: {e}"));
    let schema = format!("glimpse_test_{:016x}", rand::random::<u64>());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot create schema {schema}: {e}"));
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let outcome = async {
        let a = connect_with(&url, options.clone())
            .await
            .expect("open PostgreSQL");
        let b = connect_with(&url, options.clone())
            .await
            .expect("open PostgreSQL again");
        // In its own task so a failed assertion still lets us drop the schema below.
        let (ca, cb) = (a.clone(), b.clone());
        let result = tokio::spawn(body(a, b)).await;
        ca.close().await;
        cb.close().await;
        result
    }
    .await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot drop schema {schema}: {e}"));
    admin.close().await;
    match outcome {
        Ok(()) => {}
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("test body did not finish: {e}"),
    }
    true
}
