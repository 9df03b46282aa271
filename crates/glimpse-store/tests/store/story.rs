//! One story of keys, credits, reservations and idempotency, told to SQLite and to PostgreSQL.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use glimpse_store::*;

const TTL: Duration = Duration::from_millis(700);
const TAKEOVER: Duration = Duration::from_millis(800);

fn options() -> StoreOptions {
    StoreOptions {
        auth_cache_ttl: TTL,
        max_connections: 4,
        idempotency_takeover_after: TAKEOVER,
        ..StoreOptions::default()
    }
}

fn debit_req(key_id: &str, cost: i64) -> DebitRequest {
    DebitRequest {
        key_id: key_id.to_string(),
        cost,
        endpoint: "clip".into(),
        model: "openai/clip-vit-base-patch32".into(),
    }
}

fn assert_rfc3339_utc(at: &str) {
    let b = at.as_bytes();
    assert!(
        at.len() == 24 && b[4] == b'-' && b[10] == b'T' && b[19] == b'.' && at.ends_with('Z'),
        "not RFC 3339 UTC with milliseconds: {at:?}"
    );
}

/// The shared story. `a` and `b` are two replicas (own pools, own caches) on one database.
async fn story(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    // Malformed keys are refused by shape/checksum (that no query runs is shown at the end).
    for bad in ["", "nope", "gk_short", "Bearer gk_x"] {
        assert!(
            matches!(a.authenticate(bad).await, Err(StoreError::MalformedKey)),
            "{bad:?}"
        );
    }

    // create / authenticate / list
    let alice = a.create_key("alice", 10).await.unwrap();
    assert!(alice.key.starts_with("gk_") && alice.key.len() == KEY_LEN);
    assert!(alice.id.starts_with("key_") && !alice.key.contains(&alice.id));
    assert_eq!((alice.name.as_str(), alice.credits), ("alice", 10));
    let mut typo = alice.key.clone().into_bytes();
    typo[10] = if typo[10] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).unwrap();
    assert!(matches!(
        a.authenticate(&typo).await,
        Err(StoreError::MalformedKey)
    ));
    assert!(matches!(
        a.create_key("neg", -1).await,
        Err(StoreError::Invalid(_))
    ));
    let zero = a.create_key("zero", 0).await.unwrap();
    assert_eq!(a.balance(&zero.id).await.unwrap(), 0);

    for replica in [&a, &b] {
        let info = replica
            .authenticate(&alice.key)
            .await
            .unwrap()
            .expect("known key");
        assert_eq!(
            (info.id.as_str(), info.name.as_str()),
            (alice.id.as_str(), "alice")
        );
        assert_eq!((info.credits, info.revoked), (10, false));
        assert_rfc3339_utc(&info.created_at);
    }
    assert_eq!(a.authenticate(&generate_key()).await.unwrap(), None);
    let listed = a.list_keys().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed
        .iter()
        .any(|k| k.id == alice.id && k.credits == 10 && !k.revoked));

    // topup
    assert_eq!(a.topup(&alice.id, 5).await.unwrap(), 15);
    assert_eq!(b.balance(&alice.id).await.unwrap(), 15);
    for bad in [0, -3] {
        assert!(matches!(
            a.topup(&alice.id, bad).await,
            Err(StoreError::Invalid(_))
        ));
    }
    assert!(matches!(
        a.topup("key_nope", 1).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        a.topup(&alice.id, MAX_CREDITS).await,
        Err(StoreError::Invalid(_))
    ));

    // revoke: at once on the replica that revoked, within the cache TTL on the other one.
    let mallory = a.create_key("mallory", 5).await.unwrap();
    assert!(b.authenticate(&mallory.key).await.unwrap().is_some());
    let revoked_at = Instant::now();
    a.revoke(&mallory.id).await.unwrap();
    assert_eq!(a.authenticate(&mallory.key).await.unwrap(), None);
    let on_b = b.authenticate(&mallory.key).await.unwrap();
    if revoked_at.elapsed() < TTL {
        assert!(
            on_b.is_some(),
            "replica b should still answer from its cache"
        );
    }
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    assert_eq!(b.authenticate(&mallory.key).await.unwrap(), None);
    a.revoke(&mallory.id).await.unwrap(); // twice is fine
    assert!(matches!(
        a.revoke("key_nope").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(a
        .list_keys()
        .await
        .unwrap()
        .iter()
        .any(|k| k.id == mallory.id && k.revoked));
    assert!(matches!(
        a.debit(&debit_req(&mallory.id, 1)).await,
        Err(StoreError::NotFound(_))
    ));

    // debit until zero
    let bob = a.create_key("bob", 3).await.unwrap();
    let mut debits = Vec::new();
    for expected in [2, 1, 0] {
        let d = a.debit(&debit_req(&bob.id, 1)).await.unwrap();
        assert_eq!(d.balance, expected);
        debits.push(d.id);
    }
    match b.debit(&debit_req(&bob.id, 1)).await {
        Err(StoreError::InsufficientCredits {
            balance: 0,
            cost: 1,
        }) => {}
        other => panic!("expected InsufficientCredits, got {other:?}"),
    }
    assert!(matches!(
        a.debit(&debit_req(&bob.id, -1)).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        a.debit(&debit_req("key_nope", 1)).await,
        Err(StoreError::NotFound(_))
    ));
    let (d1, d2, d3) = (&debits[0], &debits[1], &debits[2]);

    // refund restores; a second refund, a refund after settle, a settle after refund: no-ops.
    assert_eq!(a.refund(d1, 500, 12.5).await.unwrap(), 1);
    assert_eq!(b.refund(d1, 500, 12.5).await.unwrap(), 1);
    match a.debit(&debit_req(&bob.id, 2)).await {
        Err(StoreError::InsufficientCredits {
            balance: 1,
            cost: 2,
        }) => {}
        other => panic!("expected InsufficientCredits, got {other:?}"),
    }
    a.settle(d2, 200, 30.0).await.unwrap();
    assert_eq!(a.refund(d2, 500, 1.0).await.unwrap(), 1);
    a.settle(d1, 200, 1.0).await.unwrap();
    assert!(matches!(
        a.settle("dbt_nope", 200, 1.0).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        a.refund("dbt_nope", 500, 1.0).await,
        Err(StoreError::NotFound(_))
    ));
    let state = |r: Reservation| r.state;
    assert_eq!(state(a.reservation(d1).await.unwrap()), "refunded");
    assert_eq!(state(a.reservation(d2).await.unwrap()), "settled");
    assert_eq!(state(a.reservation(d3).await.unwrap()), "open");
    assert_rfc3339_utc(&a.reservation(d3).await.unwrap().created_at);

    // reap_stale only touches open reservations older than the cutoff.
    assert_eq!(a.reap_stale(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(state(a.reservation(d3).await.unwrap()), "open");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.reap_stale(Duration::from_millis(100)).await.unwrap(), 1);
    assert_eq!(state(a.reservation(d3).await.unwrap()), "refunded");
    assert_eq!(a.reap_stale(Duration::ZERO).await.unwrap(), 0);
    assert_eq!(a.balance(&bob.id).await.unwrap(), 2);
    let totals = a.ledger_totals(&bob.id).await.unwrap();
    assert_eq!(
        totals,
        LedgerTotals {
            debits: 3,
            refunds: 2,
            topups: 3
        }
    );

    // account: balance and recent rows, newest first.
    let acct = b.account(&bob.id, 3).await.unwrap();
    assert_eq!(
        (acct.key_id.as_str(), acct.name.as_str(), acct.credits),
        (bob.id.as_str(), "bob", 2)
    );
    let kinds: Vec<(&str, i64, Option<i32>)> = acct
        .usage
        .iter()
        .map(|u| (u.kind.as_str(), u.credits, u.status))
        .collect();
    assert_eq!(
        kinds,
        [
            ("refund", 1, None),
            ("refund", 1, Some(500)),
            ("debit", -1, None)
        ]
    );
    assert_eq!(acct.usage[1].latency_ms, Some(12.5));
    assert_eq!(acct.usage[1].endpoint, "clip");
    let full = a.account(&bob.id, 100).await.unwrap().usage;
    assert_eq!(full.len(), 6);
    assert_eq!((full[5].kind.as_str(), full[5].credits), ("topup", 3));
    assert_eq!(
        full[3].status,
        Some(200),
        "settled debit row carries its status"
    );
    assert_eq!(
        full.iter().map(|u| u.credits).sum::<i64>(),
        2,
        "balance == sum(ledger)"
    );
    assert!(full.windows(2).all(|w| w[0].at >= w[1].at), "newest first");
    full.iter().for_each(|u| assert_rfc3339_utc(&u.at));
    assert!(matches!(
        a.account("key_nope", 5).await,
        Err(StoreError::NotFound(_))
    ));

    // idempotency
    use IdempotencyClaim::*;
    let id = &alice.id;
    assert_eq!(a.idempotency_claim(id, "req-1", "h1").await.unwrap(), New);
    assert_eq!(
        b.idempotency_claim(id, "req-1", "h1").await.unwrap(),
        InProgress
    );
    assert_eq!(
        b.idempotency_claim(id, "req-1", "h2").await.unwrap(),
        Mismatch
    );
    a.idempotency_complete(id, "req-1", 200, r#"{"ok":1}"#)
        .await
        .unwrap();
    let done = Completed {
        status: 200,
        body: r#"{"ok":1}"#.into(),
    };
    assert_eq!(b.idempotency_claim(id, "req-1", "h1").await.unwrap(), done);
    assert_eq!(
        b.idempotency_claim(id, "req-1", "h2").await.unwrap(),
        Mismatch
    );
    a.idempotency_complete(id, "req-1", 500, "other")
        .await
        .unwrap(); // first answer stays
    a.idempotency_abort(id, "req-1").await.unwrap(); // completed claims are kept
    assert_eq!(a.idempotency_claim(id, "req-1", "h1").await.unwrap(), done);
    assert_eq!(
        a.idempotency_claim(&bob.id, "req-1", "h1").await.unwrap(),
        New,
        "per key"
    );
    assert_eq!(a.idempotency_claim(id, "req-2", "h").await.unwrap(), New);
    a.idempotency_abort(id, "req-2").await.unwrap();
    assert_eq!(a.idempotency_claim(id, "req-2", "h").await.unwrap(), New);
    assert!(matches!(
        a.idempotency_complete(id, "req-never", 200, "").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        a.idempotency_claim(id, "", "h").await,
        Err(StoreError::Invalid(_))
    ));
    let long = "k".repeat(256);
    assert!(matches!(
        a.idempotency_claim(id, &long, "h").await,
        Err(StoreError::Invalid(_))
    ));
    // A claim left in progress past the takeover age is taken over, once.
    tokio::time::sleep(TAKEOVER + Duration::from_millis(100)).await;
    assert_eq!(b.idempotency_claim(id, "req-2", "h").await.unwrap(), New);
    assert_eq!(
        a.idempotency_claim(id, "req-2", "h").await.unwrap(),
        InProgress
    );
    assert_eq!(
        a.idempotency_claim(id, "req-2", "other").await.unwrap(),
        Mismatch
    );

    // Pruning: nothing is that old; everything is older than zero.
    assert_eq!(
        a.prune_idempotency(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(a.prune_idempotency(Duration::ZERO).await.unwrap(), 3);
    assert_eq!(a.idempotency_claim(id, "req-1", "h2").await.unwrap(), New);

    a.ping().await.unwrap();

    // With the pool closed, a well-formed key needs the database and fails; a malformed one is
    // still refused with MalformedKey, so it never reached a query.
    a.close().await;
    assert!(matches!(
        a.authenticate(&generate_key()).await,
        Err(StoreError::Database(_))
    ));
    assert!(matches!(
        a.authenticate(&typo).await,
        Err(StoreError::MalformedKey)
    ));
    assert!(a.ping().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn story_sqlite() {
    let (dir, a, b) = common::sqlite_replicas(&options()).await;
    story(a, b).await;
    // The file is in WAL mode (a persistent setting), so readers never block the writer.
    let url = format!("sqlite://{}", dir.path().join("glimpse.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn story_postgres() {
    common::with_postgres_replicas(&options(), story).await;
}

const IDEM_TTL: Duration = Duration::from_millis(2000);

/// Issue 20 item 7: stored idempotency answers expire after the TTL (a reused key then runs as
/// new, even with another request), expired rows are pruned, and a key holds at most
/// `idempotency_max_per_key` live rows (a new claim over that is refused, nothing is evicted).
async fn idempotency_expiry_and_cap(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    use IdempotencyClaim::*;
    let k = a.create_key("idem", 1).await.unwrap();
    let id = k.id.as_str();
    for ik in ["c0", "c1", "c2"] {
        assert_eq!(a.idempotency_claim(id, ik, "h").await.unwrap(), New, "{ik}");
    }
    a.idempotency_complete(id, "c0", 200, "body0")
        .await
        .unwrap();
    // Known without the fingerprint: stored (c0) and running (c1); never used (zz): not.
    for (ik, known) in [("c0", true), ("c1", true), ("zz", false)] {
        assert_eq!(b.idempotency_known(id, ik).await.unwrap(), known, "{ik}");
    }
    let other_key = a.create_key("stranger", 1).await.unwrap();
    assert!(!b.idempotency_known(&other_key.id, "c0").await.unwrap());
    assert_eq!(
        b.idempotency_claim(id, "c3", "h").await.unwrap(),
        LimitReached
    );
    assert_eq!(
        a.idempotency_claim(id, "c3", "h").await.unwrap(),
        LimitReached,
        "a refused claim stores nothing"
    );
    // At the cap, a stored answer still replays and a running one still answers 409/422.
    let done = Completed {
        status: 200,
        body: "body0".into(),
    };
    assert_eq!(b.idempotency_claim(id, "c0", "h").await.unwrap(), done);
    assert_eq!(
        b.idempotency_claim(id, "c1", "h").await.unwrap(),
        InProgress
    );
    assert_eq!(b.idempotency_claim(id, "c1", "x").await.unwrap(), Mismatch);
    // An aborted claim frees its slot; other keys have their own cap.
    a.idempotency_abort(id, "c1").await.unwrap();
    assert_eq!(b.idempotency_claim(id, "c3", "h").await.unwrap(), New);
    let other = a.create_key("other", 1).await.unwrap();
    assert_eq!(
        a.idempotency_claim(&other.id, "c9", "h").await.unwrap(),
        New
    );

    // Past the TTL the stored answer is gone: the same key with another request runs as new,
    // and the cap counts only live rows.
    tokio::time::sleep(IDEM_TTL + Duration::from_millis(200)).await;
    assert!(!a.idempotency_known(id, "c2").await.unwrap(), "expired");
    assert_eq!(b.idempotency_claim(id, "c0", "other").await.unwrap(), New);
    assert_eq!(a.idempotency_claim(id, "c4", "h").await.unwrap(), New);
    assert_eq!(a.idempotency_claim(id, "c5", "h").await.unwrap(), New);
    assert_eq!(
        a.idempotency_claim(id, "c6", "h").await.unwrap(),
        LimitReached
    );
    // Pruning deletes the expired rows (c2, c3 and the other key's c9), not the live ones.
    assert_eq!(a.prune_idempotency(IDEM_TTL).await.unwrap(), 3);
    assert_eq!(b.prune_idempotency(IDEM_TTL).await.unwrap(), 0);
    assert_eq!(
        a.idempotency_claim(id, "c0", "h").await.unwrap(),
        Mismatch,
        "the new c0 claim is live"
    );
}

fn idem_options() -> StoreOptions {
    StoreOptions {
        idempotency_ttl: IDEM_TTL,
        idempotency_max_per_key: 3,
        ..options()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_expiry_and_cap_sqlite() {
    let (_dir, a, b) = common::sqlite_replicas(&idem_options()).await;
    idempotency_expiry_and_cap(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_expiry_and_cap_postgres() {
    common::with_postgres_replicas(&idem_options(), idempotency_expiry_and_cap).await;
}

/// `check_writes` holds on a healthy store (both backends), and on SQLite fails once the file
/// the store opened is deleted under it (issue 20 item 11: it would keep "charging" into a
/// deleted file).
async fn writes_check(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    a.check_writes().await.unwrap();
    b.check_writes().await.unwrap();
    a.check_writes().await.unwrap(); // from its cache
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_writes_sqlite_and_a_deleted_file() {
    let (dir, a, b) = common::sqlite_replicas(&options()).await;
    writes_check(a.clone(), b).await;
    let db = dir.path().join("glimpse.db");
    std::fs::remove_file(&db).unwrap();
    let e = a.check_writes().await.unwrap_err().to_string();
    assert!(e.contains("gone"), "{e}");
    // A new file at the same path is not the one the store has open.
    std::fs::write(&db, b"").unwrap();
    let e = a.check_writes().await.unwrap_err().to_string();
    assert!(e.contains("replaced"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_writes_postgres() {
    common::with_postgres_replicas(&options(), writes_check).await;
}

#[tokio::test]
async fn connect_refuses_unknown_schemes_and_long_ttls() {
    match connect("mysql://localhost/x").await {
        Err(StoreError::Invalid(msg)) => {
            assert!(msg.contains("sqlite://") && msg.contains("postgres://"))
        }
        other => panic!("expected Invalid, got {:?}", other.map(|_| ())),
    }
    let long = StoreOptions {
        auth_cache_ttl: Duration::from_secs(6),
        ..StoreOptions::default()
    };
    assert!(matches!(
        connect_with("sqlite::memory:", long).await,
        Err(StoreError::Invalid(_))
    ));
    // In-memory SQLite works (one connection that stays open), and migrations ran.
    let mem = connect("sqlite::memory:").await.unwrap();
    let k = mem.create_key("m", 2).await.unwrap();
    assert_eq!(mem.debit(&debit_req(&k.id, 2)).await.unwrap().balance, 0);
}

/// Another process holding the SQLite write lock makes a debit wait (busy_timeout), not fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_debit_waits_for_a_held_write_lock() {
    use sqlx::Connection;
    let (dir, a, _b) = common::sqlite_replicas(&options()).await;
    let key = a.create_key("w", 1).await.unwrap();
    let url = format!("sqlite://{}", dir.path().join("glimpse.db").display());
    let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let store = a.clone();
    let id = key.id.clone();
    let debit = tokio::spawn(async move { store.debit(&debit_req(&id, 1)).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !debit.is_finished(),
        "debit should be waiting for the write lock"
    );
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    assert_eq!(debit.await.unwrap().unwrap().balance, 0);
}

/// A tmpfs of `size` mounted on a fresh temp folder, unmounted on drop; `None` (after a loud
/// message) where this process may not mount.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("temp dir");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "!!!!! SKIPPED: cannot mount a tmpfs here (not root?); the disk-full test did not run"
            );
            return None;
        }
        Some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// Fills the file system holding `path` until a write fails.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    for chunk in [64 * 1024, 4096, 512] {
        let buf = vec![0xa5u8; chunk];
        while f.write_all(&buf).and_then(|_| f.sync_all()).is_ok() {}
    }
}

/// Issue 20 item 4: after a disk-full episode the store writes again without being reopened
/// (every connection that met the failure is rolled back or dropped), and `check_writes`
/// reports the episode while it lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writes_recover_after_disk_full() {
    let Some(fs) = Tmpfs::mount("3m") else { return };
    let url = format!("sqlite://{}", fs.0.path().join("glimpse.db").display());
    let store = connect_with(&url, options()).await.expect("open on tmpfs");
    let key = store.create_key("full", 1_000_000).await.unwrap();
    let filler = fs.0.path().join("filler");
    fill(&filler);
    // Writes now fail, as a database error (503 over HTTP), never a panic.
    let mut failed = 0;
    for _ in 0..50 {
        match store.debit(&debit_req(&key.id, 1)).await {
            Ok(d) => {
                let _ = store.settle(&d.id, 200, 1.0).await;
            }
            Err(StoreError::Database(_)) => failed += 1,
            Err(e) => panic!("unexpected error on a full disk: {e}"),
        }
        if failed >= 8 {
            break;
        }
    }
    assert!(failed > 0, "no write failed on a full disk");
    assert!(
        store.check_writes().await.is_err(),
        "check_writes must report a full disk"
    );
    std::fs::remove_file(&filler).unwrap();
    // Free again: every write works at once, on every pooled connection, with no reopen.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    store
        .check_writes()
        .await
        .expect("check_writes after freeing");
    let before = store.balance(&key.id).await.unwrap();
    for round in 0..3 {
        for i in 0..12 {
            let d = store
                .debit(&debit_req(&key.id, 1))
                .await
                .unwrap_or_else(|e| panic!("debit {round}/{i} after freeing the disk: {e}"));
            store
                .settle(&d.id, 200, 1.0)
                .await
                .unwrap_or_else(|e| panic!("settle {round}/{i} after freeing the disk: {e}"));
        }
        let many: Vec<_> = (0..8)
            .map(|_| {
                let s = Arc::clone(&store);
                let id = key.id.clone();
                tokio::spawn(async move { s.debit(&debit_req(&id, 1)).await })
            })
            .collect();
        for t in many {
            let d = t.await.unwrap().expect("concurrent debit after freeing");
            store.settle(&d.id, 200, 1.0).await.unwrap();
        }
        store.topup(&key.id, 1).await.expect("topup after freeing");
    }
    assert_eq!(store.balance(&key.id).await.unwrap(), before - 3 * 20 + 3);
    let t = store.ledger_totals(&key.id).await.unwrap();
    assert_eq!(
        t.topups - t.debits + t.refunds,
        store.balance(&key.id).await.unwrap()
    );
    store.close().await;
}
