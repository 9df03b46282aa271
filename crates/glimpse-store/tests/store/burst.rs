//! A burst of debits and settles with mixed outcomes, all at once on one store (what a forward
//! pass answering a batch of calls does, and what SQLite's group commit batches into shared
//! transactions): each caller gets its own answer, and one caller's refusal costs no other caller
//! its write.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use glimpse_store::*;

const EACH: usize = 10;

fn options() -> StoreOptions {
    StoreOptions {
        auth_cache_ttl: Duration::ZERO,
        max_connections: 4,
        ..StoreOptions::default()
    }
}

fn request(key_id: &str) -> DebitRequest {
    DebitRequest {
        key_id: key_id.to_string(),
        cost: 1,
        endpoint: "clip".into(),
        model: "m".into(),
    }
}

async fn burst(store: Arc<dyn Store>) {
    let rich = store.create_key("rich", 20).await.unwrap().id;
    let poor = store.create_key("poor", 3).await.unwrap().id;
    let revoked = store.create_key("revoked", 5).await.unwrap().id;
    store.revoke(&revoked).await.unwrap();
    let keys = [
        rich.clone(),
        poor.clone(),
        revoked.clone(),
        "key_unknown".into(),
    ];

    // Interleaved so that refusals and successes share the same moments (and groups).
    let mut tasks = Vec::new();
    for i in 0..EACH * keys.len() {
        let (store, key) = (Arc::clone(&store), keys[i % keys.len()].clone());
        tasks.push(tokio::spawn(async move {
            (key.clone(), store.debit(&request(&key)).await)
        }));
    }
    let mut balances: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut debits = Vec::new();
    for t in tasks {
        let (key, outcome) = t.await.unwrap();
        match outcome {
            Ok(d) => {
                balances.entry(key).or_default().push(d.balance);
                debits.push(d.id);
            }
            Err(StoreError::InsufficientCredits { balance, cost }) => {
                assert_eq!((key.as_str(), balance, cost), (poor.as_str(), 0, 1));
            }
            Err(StoreError::NotFound(what)) => {
                assert!(key == revoked || key == "key_unknown", "{key}: {what}");
            }
            Err(e) => panic!("{key}: unexpected {e}"),
        }
    }
    // Every success saw its own balance: each value once, nothing shared or lost.
    for v in balances.values_mut() {
        v.sort_unstable();
    }
    assert_eq!(balances.get(&rich), Some(&(10..20).collect::<Vec<i64>>()));
    assert_eq!(balances.get(&poor), Some(&vec![0, 1, 2]));
    assert_eq!(balances.len(), 2, "{balances:?}");
    assert_eq!(store.balance(&rich).await.unwrap(), 10);
    assert_eq!(store.balance(&poor).await.unwrap(), 0);
    assert_eq!(store.balance(&revoked).await.unwrap(), 5);
    assert_eq!(
        store.ledger_totals(&rich).await.unwrap().debits,
        EACH as i64
    );
    assert_eq!(store.ledger_totals(&poor).await.unwrap().debits, 3);
    assert_eq!(store.ledger_totals(&revoked).await.unwrap().debits, 0);

    // Settle them all at once, with settles of reservations that do not exist in between.
    let mut tasks = Vec::new();
    for (i, id) in debits.iter().enumerate() {
        let (s, id) = (Arc::clone(&store), id.clone());
        tasks.push(tokio::spawn(async move { s.settle(&id, 200, 12.5).await }));
        if i % 4 == 0 {
            let s = Arc::clone(&store);
            let bogus = format!("dbt_missing_{i}");
            tasks.push(tokio::spawn(async move {
                match s.settle(&bogus, 200, 1.0).await {
                    Err(StoreError::NotFound(_)) => Ok(()),
                    other => panic!("settle of {bogus}: {other:?}"),
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for id in &debits {
        assert_eq!(
            store.reservation(id).await.unwrap().state,
            "settled",
            "{id}"
        );
    }
    assert_eq!(store.balance(&rich).await.unwrap(), 10);
    assert_eq!(store.balance(&poor).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_sqlite() {
    let (_dir, a, _b) = common::sqlite_replicas(&options()).await;
    burst(a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_postgres() {
    common::with_postgres_replicas(&options(), |a, _b| burst(a)).await;
}
