//! Refused URLs fail before any connection. A loopback canary listener is the target of every
//! refused URL, and must have accepted nothing afterwards; a positive control shows the canary
//! does count connections when one is allowed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::support::upstream::{raw_server, redirect, response, Canary, Reply, PNG_1X1};
use glimpse_server::fetch::{AddressPolicy, FetchError, FetchOptions, Fetcher, StaticResolver};

fn loopback() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

/// Production options, except names come from a map: `public.example` "is public" but its DNS
/// points at loopback (the lvh.me trick), `mixed.example` answers one public and one loopback
/// address, `canary.test` is loopback.
fn opts() -> FetchOptions {
    let resolver = StaticResolver::new()
        .with("public.example", &[loopback()])
        .with("mixed.example", &["1.1.1.1".parse().unwrap(), loopback()])
        .with("canary.test", &[loopback()]);
    FetchOptions {
        resolver: Arc::new(resolver),
        total_timeout: Duration::from_secs(5),
        ..FetchOptions::default()
    }
}

#[tokio::test]
async fn refused_urls_never_reach_the_canary() {
    let canary = Canary::start().await;
    let p = canary.port();
    let fetcher = Fetcher::new(opts());
    let forbidden = [
        format!("http://127.0.0.1:{p}/"),
        format!("http://2130706433:{p}/"),
        format!("http://0x7f000001:{p}/"),
        format!("http://0x7f.1:{p}/"),
        format!("http://0177.0.0.1:{p}/"),
        format!("http://127.1:{p}/"),
        format!("http://0:{p}/"),
        format!("http://0.0.0.0:{p}/"),
        format!("http://[::ffff:127.0.0.1]:{p}/"),
        format!("http://[::ffff:7f00:1]:{p}/"),
        format!("http://[::127.0.0.1]:{p}/"),
        format!("http://[::1]:{p}/"),
        format!("http://[::]:{p}/"),
        format!("http://[64:ff9b::7f00:1]:{p}/"),
        format!("http://[2002:7f00:1::]:{p}/"),
        format!("https://127.0.0.1:{p}/"),
        format!("http://public.example:{p}/image.png"),
        format!("http://PUBLIC.example.:{p}/image.png"),
        format!("http://mixed.example:{p}/image.png"),
    ];
    for url in &forbidden {
        let err = fetcher.fetch(url).await.unwrap_err();
        assert!(matches!(err, FetchError::Forbidden(_)), "{url}: {err:?}");
    }
    // The system resolver (here: /etc/hosts) is guarded the same way.
    let system = Fetcher::new(FetchOptions::default());
    let url = format!("http://localhost:{p}/");
    let err = system.fetch(&url).await.unwrap_err();
    assert!(matches!(err, FetchError::Forbidden(_)), "{url}: {err:?}");
    let invalid = [
        format!("http://user:pass@127.0.0.1:{p}/"),
        format!("http://user@public.example:{p}/"),
        format!("ftp://127.0.0.1:{p}/"),
        format!("gopher://127.0.0.1:{p}/"),
        "file:///etc/passwd".to_string(),
    ];
    for url in &invalid {
        let err = fetcher.fetch(url).await.unwrap_err();
        assert!(matches!(err, FetchError::InvalidUrl(_)), "{url}: {err:?}");
    }
    // Let any stray connect land before counting.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(canary.accepted(), 0, "a refused URL reached the canary");

    // Positive control: the same canary, allowed, is reached (so zero above means something).
    let open = Fetcher::new(FetchOptions {
        allow_private: true,
        ..opts()
    });
    let _ = open.fetch(&format!("http://public.example:{p}/")).await;
    let _ = open.fetch(&format!("http://2130706433:{p}/")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(canary.accepted(), 2);
}

#[tokio::test]
async fn messages_name_literal_addresses_but_not_resolved_ones() {
    let fetcher = Fetcher::new(opts());
    let err = fetcher.fetch("http://10.0.0.1/cat.png").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "url resolves to a private or reserved address (10.0.0.1), which is not allowed"
    );
    // What an internal name resolves to is not echoed back (no internal DNS oracle).
    let err = fetcher
        .fetch("http://public.example/cat.png")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "url resolves to a private or reserved address, which is not allowed"
    );
    let err = fetcher.fetch("http://nowhere.test/").await.unwrap_err();
    assert_eq!(
        err,
        FetchError::Upstream("the host of url could not be resolved".into())
    );
}

/// The server is allowed through an exact (IP, port) exception; every redirect away from it is
/// re-checked, so each redirect to the canary is refused and the canary sees nothing.
#[tokio::test]
async fn every_redirect_hop_is_rechecked() {
    let canary = Canary::start().await;
    let p = canary.port();
    let targets = [
        format!("http://127.0.0.1:{p}/"),
        format!("http://2130706433:{p}/"),
        format!("http://[::ffff:127.0.0.1]:{p}/"),
        format!("http://canary.test:{p}/"),
        format!("http://user:pw@127.0.0.1:{p}/"),
        "file:///etc/passwd".to_string(),
    ];
    let hops = targets.clone();
    let server = raw_server(move |path| match path {
        "/ok" => Reply::Bytes(response(200, &[], PNG_1X1, true)),
        "/hop" => redirect(302, "/ok"),
        _ => {
            let i: usize = path.trim_start_matches("/to/").parse().unwrap();
            redirect(302, &hops[i])
        }
    })
    .await;
    let policy = AddressPolicy::public_only().allowing(server.addr);
    let fetcher = Fetcher::with_policy(opts(), policy);

    // The exception works, including a redirect that stays on the allowed server.
    assert_eq!(fetcher.fetch(&server.url("/hop")).await.unwrap(), PNG_1X1);
    // Another port on the same loopback address is not excepted.
    let other = SocketAddr::new(loopback(), p);
    assert!(matches!(
        fetcher.fetch(&format!("http://{other}/")).await,
        Err(FetchError::Forbidden(_))
    ));

    for (i, target) in targets.iter().enumerate() {
        let before = server.hits();
        let err = fetcher
            .fetch(&server.url(&format!("/to/{i}")))
            .await
            .unwrap_err();
        assert_eq!(server.hits(), before + 1, "first hop must reach the server");
        match &err {
            FetchError::Forbidden(m) | FetchError::InvalidUrl(m) => {
                assert!(m.starts_with("the redirect target of url"), "{target}: {m}")
            }
            other => panic!("{target}: {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(canary.accepted(), 0, "a redirect reached the canary");
}
