//! Credits through real HTTP against real `glimpse serve` processes (issue: keys, credits and a
//! usage ledger): conservation under concurrency on SQLite and on PostgreSQL with two replicas, and
//! the ledger invariants after a replica is SIGKILLed mid-stream. Traffic goes to loopback only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use glimpse_store::{connect, Store};

fn tiny_png() -> Vec<u8> {
    std::fs::read(fixtures().join("images/tiny.png")).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn store(url: &str) -> Arc<dyn Store> {
    connect(url).await.expect("open the store the servers use")
}

/// Fire `n` concurrent uploads, request i going to `servers[i % len]`; returns statuses.
fn burst(servers: &[SocketAddr], key: &str, n: usize) -> Vec<u16> {
    let img = Arc::new(tiny_png());
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let addr = servers[i % servers.len()];
            let (key, img) = (key.to_string(), img.clone());
            std::thread::spawn(move || {
                upload(addr, "/api/image-classification/vit", &key, &img)
                    .map(|r| r.status)
                    .unwrap_or(0)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn check_conservation(db: &str, servers: &[SocketAddr], balance: i64, extra: usize) {
    let (key_id, key) = create_key(db, balance);
    let statuses = burst(servers, &key, balance as usize + extra);
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let broke = statuses.iter().filter(|s| **s == 402).count();
    assert_eq!(
        (ok, broke),
        (balance as usize, extra),
        "statuses: {statuses:?}"
    );
    let rt = rt();
    rt.block_on(async {
        let s = store(db).await;
        assert_eq!(s.balance(&key_id).await.unwrap(), 0);
        let t = s.ledger_totals(&key_id).await.unwrap();
        assert_eq!(t.debits, balance, "ledger debits");
        assert_eq!(t.refunds, 0, "nothing failed, nothing refunded");
        assert_eq!(
            s.reap_stale(Duration::ZERO).await.unwrap(),
            0,
            "no open reservation left"
        );
        s.close().await;
    });
    // The account endpoint agrees.
    let r = request(
        servers[0],
        "GET",
        "/api/account",
        &[("X-API-Key", &key)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["credits"], 0);
}

#[test]
fn conservation_on_sqlite_through_http() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("g.db").display());
    let server = start_server(&db, &[]);
    check_conservation(&db, &[server.addr], 12, 8);
}

#[test]
fn conservation_on_postgres_with_two_server_processes() {
    let Some((db, schema)) = postgres_schema_url() else {
        eprintln!("{PG_ENV} not set: two-replica PostgreSQL test not run");
        return;
    };
    let a = start_server(&db, &[]);
    let b = start_server(&db, &[]);
    check_conservation(&db, &[a.addr, b.addr], 20, 10);
    drop((a, b));
    psql(
        &std::env::var(PG_ENV).unwrap(),
        &format!("DROP SCHEMA {schema} CASCADE"),
    );
}

/// Stream requests, SIGKILL the server mid-stream, restart it with a short reaper period: every
/// reservation the dead process left open is settled by the reaper and the books balance.
fn kill_and_restart(db: &str) {
    const INITIAL: i64 = 1000;
    let reap = [("GLIMPSE_REAP_AFTER_SECS", "2")];
    let (key_id, key) = create_key(db, INITIAL);
    let mut server = start_server(db, &reap);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, served, key) = (stop.clone(), served.clone(), key.clone());
            let img = tiny_png();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match upload(addr, "/api/image-classification/vit", &key, &img) {
                        Ok(r) if r.status == 200 => {
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        })
        .collect();
    // Let some requests complete, then kill while others are in flight.
    let t0 = std::time::Instant::now();
    while served.load(Ordering::SeqCst) < 5 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    assert!(
        served.load(Ordering::SeqCst) >= 5,
        "the stream never got going"
    );
    drop(server);

    let restarted = start_server(db, &reap);
    // Wait past the reaper's age and one of its ticks.
    std::thread::sleep(Duration::from_secs(5));
    let rt = rt();
    let refunds = rt.block_on(async {
        let s = store(db).await;
        let balance = s.balance(&key_id).await.unwrap();
        let t = s.ledger_totals(&key_id).await.unwrap();
        assert_eq!(
            INITIAL - balance,
            t.debits - t.refunds,
            "initial − balance = debits − refunds ({t:?}, balance {balance})"
        );
        assert_eq!(
            s.reap_stale(Duration::ZERO).await.unwrap(),
            0,
            "the reaper left a reservation open"
        );
        // Every answered request was charged exactly once.
        assert!(t.debits - t.refunds >= served.load(Ordering::SeqCst) as i64);
        s.close().await;
        t.refunds
    });
    // Nothing else failed, so every refund is the restarted reaper's (1 credit a call), and its
    // metrics count them.
    let metrics = request(restarted.addr, "GET", "/metrics", &[], b"").unwrap();
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    let reaped: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("glimpse_reservations_reaped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no reaped counter in /metrics:\n{text}"));
    eprintln!("the reaper refunded {reaped} reservations");
    assert_eq!(reaped, refunds, "reaped reservations vs ledger refunds");
    drop(restarted);
}

#[test]
fn sigkill_mid_stream_keeps_the_ledger_whole_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("g.db").display());
    kill_and_restart(&db);
}

#[test]
fn sigkill_mid_stream_keeps_the_ledger_whole_on_postgres() {
    let Some((db, schema)) = postgres_schema_url() else {
        eprintln!("{PG_ENV} not set: PostgreSQL kill test not run");
        return;
    };
    kill_and_restart(&db);
    psql(
        &std::env::var(PG_ENV).unwrap(),
        &format!("DROP SCHEMA {schema} CASCADE"),
    );
}
