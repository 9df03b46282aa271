//! The fetcher against local raw HTTP servers on 127.0.0.1, with `allow_private = true` (which
//! lifts the address rule only): redirects, size cap, timeouts, status codes, no decompression.

use std::time::{Duration, Instant};

use crate::support::upstream::{raw_server, redirect, response, Reply, PNG_1X1};
use glimpse_server::fetch::{FetchError, FetchOptions, Fetcher};

const CAP: u64 = 1000;

fn fetcher() -> Fetcher {
    Fetcher::new(FetchOptions {
        allow_private: true,
        max_bytes: CAP,
        total_timeout: Duration::from_secs(5),
        ..FetchOptions::default()
    })
}

#[tokio::test]
async fn a_good_image_is_fetched_byte_for_byte() {
    let server = raw_server(|_| Reply::Bytes(response(200, &[], PNG_1X1, true))).await;
    let body = fetcher().fetch(&server.url("/cat.png")).await.unwrap();
    assert_eq!(body, PNG_1X1);
    let req = server.last_request();
    assert!(req.starts_with("get /cat.png http/1.1\r\n"), "{req}");
    assert!(req.contains("\r\naccept-encoding: identity\r\n"), "{req}");
}

#[tokio::test]
async fn content_type_is_not_checked() {
    let server = raw_server(|_| {
        Reply::Bytes(response(
            200,
            &[("Content-Type", "text/html")],
            PNG_1X1,
            true,
        ))
    })
    .await;
    assert_eq!(fetcher().fetch(&server.url("/")).await.unwrap(), PNG_1X1);
}

#[tokio::test]
async fn allow_private_lifts_only_the_address_rule() {
    let server = raw_server(|_| Reply::Bytes(response(200, &[], PNG_1X1, true))).await;
    let with_userinfo = format!("http://user:pw@{}/", server.addr);
    let err = fetcher().fetch(&with_userinfo).await.unwrap_err();
    assert_eq!(
        err,
        FetchError::InvalidUrl("url must not contain a username or password".into())
    );
    let err = fetcher().fetch("file:///etc/passwd").await.unwrap_err();
    assert_eq!(
        err,
        FetchError::InvalidUrl("url must use http or https".into())
    );
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn redirect_to_a_file_url_is_refused() {
    let server = raw_server(|_| redirect(302, "file:///etc/passwd")).await;
    let err = fetcher().fetch(&server.url("/")).await.unwrap_err();
    assert_eq!(
        err,
        FetchError::InvalidUrl("the redirect target of url must use http or https".into())
    );
}

/// `/chain/N` redirects to `/chain/N-1` (cycling through every followed status, relative and
/// absolute Locations); `/chain/0` is the image.
async fn chain_server() -> crate::support::upstream::RawServer {
    raw_server(|path| {
        let n: usize = path.trim_start_matches("/chain/").parse().unwrap();
        if n == 0 {
            return Reply::Bytes(response(200, &[], PNG_1X1, true));
        }
        let status = [301, 302, 303, 307, 308][n % 5];
        redirect(status, &format!("/chain/{}", n - 1))
    })
    .await
}

#[tokio::test]
async fn three_redirects_are_followed_and_a_fourth_is_not() {
    let server = chain_server().await;
    let f = fetcher();
    assert_eq!(f.fetch(&server.url("/chain/3")).await.unwrap(), PNG_1X1);
    assert_eq!(server.hits(), 4);
    let err = f.fetch(&server.url("/chain/4")).await.unwrap_err();
    assert_eq!(
        err,
        FetchError::Upstream("url redirected more than 3 times".into())
    );
    // The fourth redirect was not followed: /chain/4, 3, 2, 1 only.
    assert_eq!(server.hits(), 8);
}

#[tokio::test]
async fn a_redirect_loop_ends_after_three_hops() {
    let server = raw_server(|_| redirect(302, "/loop")).await;
    let err = fetcher().fetch(&server.url("/loop")).await.unwrap_err();
    assert!(matches!(err, FetchError::Upstream(_)), "{err:?}");
    assert_eq!(server.hits(), 4);
}

#[tokio::test]
async fn a_declared_length_over_the_cap_is_refused_before_reading() {
    // The server declares CAP+1 bytes and then sends nothing: only a refusal based on the header
    // can answer before the 5 s total limit.
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", CAP + 1);
    let server = raw_server(move |_| Reply::Hang {
        head: head.clone().into_bytes(),
    })
    .await;
    let start = Instant::now();
    let err = fetcher().fetch(&server.url("/")).await.unwrap_err();
    assert_eq!(err, FetchError::TooLarge { limit: CAP });
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(
        err.to_string(),
        "the image at url is larger than 1000 bytes"
    );
}

#[tokio::test]
async fn a_body_without_a_length_is_capped_while_streaming() {
    let server = raw_server(|path| {
        let n = if path == "/exact" { CAP } else { CAP + 1 } as usize;
        Reply::Bytes(response(200, &[], &vec![7u8; n], false))
    })
    .await;
    let f = fetcher();
    assert_eq!(
        f.fetch(&server.url("/exact")).await.unwrap().len() as u64,
        CAP
    );
    assert_eq!(
        f.fetch(&server.url("/over")).await.unwrap_err(),
        FetchError::TooLarge { limit: CAP }
    );
}

#[tokio::test]
async fn a_lying_content_length_does_not_lift_the_cap() {
    // Chunked body of 4 × 400 bytes with a Content-Length claiming 5: the length is not trusted.
    let mut body = Vec::new();
    for _ in 0..4 {
        body.extend_from_slice(b"190\r\n");
        body.extend_from_slice(&[1u8; 400]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let chunked = response(
        200,
        &[("Transfer-Encoding", "chunked"), ("Content-Length", "5")],
        &body,
        false,
    );
    // A short Content-Length with a longer body: the extra bytes are never read.
    let short = response(200, &[("Content-Length", "10")], &[2u8; 5000], false);
    let server = raw_server(move |path| match path {
        "/chunked" => Reply::Bytes(chunked.clone()),
        _ => Reply::Bytes(short.clone()),
    })
    .await;
    let f = fetcher();
    let err = f.fetch(&server.url("/chunked")).await.unwrap_err();
    assert_eq!(err, FetchError::TooLarge { limit: CAP });
    assert_eq!(f.fetch(&server.url("/short")).await.unwrap(), vec![2u8; 10]);
}

#[tokio::test]
async fn a_trickling_upstream_times_out_within_the_total_limit() {
    let server = raw_server(|_| Reply::Trickle {
        head: b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n".to_vec(),
        every: Duration::from_secs(1),
    })
    .await;
    let f = Fetcher::new(FetchOptions {
        allow_private: true,
        total_timeout: Duration::from_secs(1),
        ..FetchOptions::default()
    });
    let start = Instant::now();
    let err = f.fetch(&server.url("/")).await.unwrap_err();
    let took = start.elapsed();
    assert_eq!(
        err,
        FetchError::Timeout("fetching url timed out after 1 s".into())
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let server = raw_server(|_| Reply::Hang { head: Vec::new() }).await;
    let f = Fetcher::new(FetchOptions {
        allow_private: true,
        total_timeout: Duration::from_millis(500),
        ..FetchOptions::default()
    });
    let err = f.fetch(&server.url("/")).await.unwrap_err();
    assert_eq!(
        err,
        FetchError::Timeout("fetching url timed out after 500 ms".into())
    );
}

#[tokio::test]
async fn non_success_statuses_are_upstream_errors() {
    let server = raw_server(|path| match path {
        "/404" => Reply::Bytes(response(404, &[], b"not found", true)),
        "/500" => Reply::Bytes(response(500, &[], b"", true)),
        "/304" => Reply::Bytes(response(304, &[("Location", "/404")], b"", true)),
        _ => Reply::Bytes(response(302, &[], b"", true)),
    })
    .await;
    let f = fetcher();
    for (path, message) in [
        ("/404", "url answered HTTP 404"),
        ("/500", "url answered HTTP 500"),
        ("/304", "url answered HTTP 304"),
        ("/302", "url answered HTTP 302 without a Location"),
    ] {
        let err = f.fetch(&server.url(path)).await.unwrap_err();
        assert_eq!(err, FetchError::Upstream(message.into()), "{path}");
    }
}

#[tokio::test]
async fn a_refused_connection_is_an_upstream_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = fetcher()
        .fetch(&format!("http://{addr}/"))
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::Upstream("could not connect to url".into()));
}

/// `gzip -n` of "not an image, gzip-encoded".
const GZIP_BODY: &[u8] = &[
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0xcb, 0xcb, 0x2f, 0x51, 0x48, 0xcc,
    0x53, 0xc8, 0xcc, 0x4d, 0x4c, 0x4f, 0xd5, 0x51, 0x48, 0xaf, 0xca, 0x2c, 0xd0, 0x4d, 0xcd, 0x4b,
    0xce, 0x4f, 0x49, 0x4d, 0x01, 0x00, 0x9e, 0x31, 0x66, 0x54, 0x1a, 0x00, 0x00, 0x00,
];

#[tokio::test]
async fn a_gzip_encoded_body_is_not_decompressed() {
    let server = raw_server(|_| {
        Reply::Bytes(response(
            200,
            &[("Content-Encoding", "gzip")],
            GZIP_BODY,
            true,
        ))
    })
    .await;
    assert_eq!(fetcher().fetch(&server.url("/")).await.unwrap(), GZIP_BODY);
}
