//! Proxy variables in the environment are ignored: with them pointing at a canary, the fetch
//! still goes straight to the (allowed) server and the canary sees nothing. A proxy would make
//! the resolver check the proxy's address instead of the target's.

use std::time::Duration;

use crate::support::upstream::{raw_server, response, Canary, Reply, PNG_1X1};
use glimpse_server::fetch::{FetchOptions, Fetcher};

#[tokio::test]
async fn proxy_environment_variables_are_ignored() {
    let canary = Canary::start().await;
    let proxy = format!("http://{}", canary.addr);
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        std::env::set_var(var, &proxy);
    }
    for var in ["NO_PROXY", "no_proxy"] {
        std::env::remove_var(var);
    }
    let server = raw_server(|_| Reply::Bytes(response(200, &[], PNG_1X1, true))).await;
    let fetcher = Fetcher::new(FetchOptions {
        allow_private: true,
        ..FetchOptions::default()
    });
    let body = fetcher.fetch(&server.url("/img.png")).await.unwrap();
    assert_eq!(body, PNG_1X1);
    assert_eq!(server.hits(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(canary.accepted(), 0);
}
