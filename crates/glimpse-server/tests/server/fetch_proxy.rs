//! Proxy variables in the environment are ignored: with them pointing at a canary, the fetch
//! still goes straight to the (allowed) server and the canary sees nothing. A proxy would make
//! the resolver check the proxy's address instead of the target's.
//!
//! The variables are process-wide, and this binary's other tests run client programs (curl,
//! Python requests) that would honour them, so they are set only in a child process: this test
//! binary run again on this one test, which then fetches.

use std::process::Command;
use std::time::Duration;

use crate::support::upstream::{raw_server, response, Canary, Reply, PNG_1X1};
use glimpse_server::fetch::{FetchOptions, Fetcher};

/// Set in the child: it fetches with the proxy variables set instead of starting a child.
const CHILD: &str = "GLIMPSE_TEST_PROXY_CHILD";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_environment_variables_are_ignored() {
    if std::env::var_os(CHILD).is_some() {
        return fetch_straight_to_the_server().await;
    }
    let canary = Canary::start().await;
    let proxy = format!("http://{}", canary.addr);
    // This test's name as the harness lists it: the module path without the crate's name.
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let name = format!("{module}::proxy_environment_variables_are_ignored");
    let mut child = Command::new(std::env::current_exe().unwrap());
    child
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1");
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        child.env(var, &proxy);
    }
    for var in ["NO_PROXY", "no_proxy"] {
        child.env_remove(var);
    }
    let out = tokio::task::spawn_blocking(move || child.output())
        .await
        .unwrap()
        .expect("the test binary runs again");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    assert!(log.contains("1 passed"), "the child ran no test:\n{log}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(canary.accepted(), 0);
}

/// The child's part: the fetch reaches the server itself, once.
async fn fetch_straight_to_the_server() {
    let server = raw_server(|_| Reply::Bytes(response(200, &[], PNG_1X1, true))).await;
    let fetcher = Fetcher::new(FetchOptions {
        allow_private: true,
        ..FetchOptions::default()
    });
    let body = fetcher.fetch(&server.url("/img.png")).await.unwrap();
    assert_eq!(body, PNG_1X1);
    assert_eq!(server.hits(), 1);
}
