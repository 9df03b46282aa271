//! Conservation under concurrency (the Jepsen "bank" check, at the store level): B + K debits
//! race for a balance of B across two replicas; then refunds, settles and reapers race to close
//! the reservations. Nothing may be lost or paid twice.

use crate::common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use glimpse_store::*;

const BALANCE: i64 = 40;
const EXTRA: i64 = 25;

fn options() -> StoreOptions {
    StoreOptions {
        auth_cache_ttl: Duration::from_secs(1),
        max_connections: 6,
        ..StoreOptions::default()
    }
}

async fn conservation(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    let key = a.create_key("bank", BALANCE).await.unwrap();
    let replicas = [a.clone(), b.clone()];

    // Phase 1: B + K concurrent debits of 1 credit.
    let mut tasks = Vec::new();
    for i in 0..(BALANCE + EXTRA) {
        let store = replicas[i as usize % 2].clone();
        let req = DebitRequest {
            key_id: key.id.clone(),
            cost: 1,
            endpoint: "vit".into(),
            model: "google/vit-base-patch16-224".into(),
        };
        tasks.push(tokio::spawn(async move { store.debit(&req).await }));
    }
    let (mut ok, mut short) = (Vec::new(), 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(d) => {
                assert!(d.balance >= 0);
                ok.push(d.id);
            }
            Err(StoreError::InsufficientCredits {
                balance: 0,
                cost: 1,
            }) => short += 1,
            Err(e) => panic!("debit failed for a reason other than credits: {e}"),
        }
    }
    assert_eq!(ok.len() as i64, BALANCE, "exactly B debits succeed");
    assert_eq!(short, EXTRA, "exactly K are refused");
    assert_eq!(
        ok.iter().collect::<HashSet<_>>().len(),
        ok.len(),
        "ids are unique"
    );
    assert_eq!(a.balance(&key.id).await.unwrap(), 0);
    let totals = a.ledger_totals(&key.id).await.unwrap();
    assert_eq!(
        (totals.debits, totals.refunds, totals.topups),
        (BALANCE, 0, BALANCE)
    );

    // Phase 2: every reservation is fought over. i % 3 == 0: settle vs refund; == 1: two
    // refunds on two replicas; == 2: left to the reapers. Three reapers join the race and may
    // grab any of them (reservation age cutoff zero).
    tokio::time::sleep(Duration::from_millis(20)).await; // strictly older than "now"
    let mut tasks: Vec<tokio::task::JoinHandle<Result<()>>> = Vec::new();
    for (i, id) in ok.iter().enumerate() {
        let (s1, s2) = (replicas[i % 2].clone(), replicas[(i + 1) % 2].clone());
        let (id1, id2) = (id.clone(), id.clone());
        match i % 3 {
            0 => {
                tasks.push(tokio::spawn(async move { s1.settle(&id1, 200, 5.0).await }));
                tasks.push(tokio::spawn(async move {
                    s2.refund(&id2, 500, 5.0).await.map(|_| ())
                }));
            }
            1 => {
                tasks.push(tokio::spawn(async move {
                    s1.refund(&id1, 503, 5.0).await.map(|_| ())
                }));
                tasks.push(tokio::spawn(async move {
                    s2.refund(&id2, 503, 5.0).await.map(|_| ())
                }));
            }
            _ => {}
        }
    }
    // Reapers start last so they meet settles and refunds already in flight.
    for r in 0..3 {
        let store = replicas[r % 2].clone();
        tasks.push(tokio::spawn(async move {
            store.reap_stale(Duration::ZERO).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("no store error while racing");
    }

    let mut refunded = 0i64;
    for (i, id) in ok.iter().enumerate() {
        let state = a.reservation(id).await.unwrap().state;
        match (i % 3, state.as_str()) {
            (0, "settled" | "refunded") | (1 | 2, "refunded") => {}
            (group, state) => panic!("reservation {i} (group {group}) ended {state}"),
        }
        refunded += i64::from(state == "refunded");
    }
    let balance = a.balance(&key.id).await.unwrap();
    let totals = b.ledger_totals(&key.id).await.unwrap();
    assert_eq!(
        balance, refunded,
        "each refunded reservation paid back exactly once"
    );
    assert_eq!(totals.refunds, refunded);
    assert_eq!(totals.debits, BALANCE);
    assert_eq!(
        BALANCE - balance,
        totals.debits - totals.refunds,
        "initial - balance"
    );
    let rows = a.account(&key.id, 1000).await.unwrap().usage;
    assert_eq!(
        rows.iter().filter(|r| r.kind == "refund").count() as i64,
        refunded
    );
    assert_eq!(rows.iter().map(|r| r.credits).sum::<i64>(), balance);
    assert_eq!(
        a.reap_stale(Duration::ZERO).await.unwrap(),
        0,
        "nothing left open"
    );
    eprintln!(
        "conservation: {BALANCE} ok, {EXTRA} refused, {refunded} refunded, {} settled",
        BALANCE - refunded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conservation_sqlite() {
    let (_dir, a, b) = common::sqlite_replicas(&options()).await;
    conservation(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conservation_postgres() {
    common::with_postgres_replicas(&options(), conservation).await;
}
