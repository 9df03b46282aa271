//! Hostile inputs through the real server. Every row asserts the status, the error `code`, and
//! that the key's balance and the ledger are untouched. Traffic goes to loopback only: refused
//! URLs point at a canary listener that must see no connection at all.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::hostile::*;
use crate::support::upstream::Canary;
use crate::support::{image_bytes, TestServer};
use glimpse_server::fetch::{Fetcher, StaticResolver};
use reqwest::header::HeaderValue;
use reqwest::multipart::{Form, Part};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIP: &str = "/api/image-classification/clip";
const VIT: &str = "/api/image-classification/vit";
const CREDITS: i64 = 7;

fn form(bytes: Vec<u8>) -> Form {
    Form::new().part("image", Part::bytes(bytes).file_name("image.bin"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_urls_never_leave_the_server() {
    let canary4 = Canary::start().await;
    let p4 = canary4.port();
    // IPv6 loopback may be missing in a container; the row still runs (the refusal is on the
    // literal), only the v6 canary count is then vacuous.
    let v6 = Canary::bind("[::1]:0").await;
    let p6 = v6.as_ref().map_or(p4, Canary::port);
    // A public-looking name that this test's DNS maps to loopback: the check must be on the
    // resolved address, not the name.
    let resolver = StaticResolver::new()
        .with("public.example", &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
        .with(
            "mixed.example",
            &[
                IpAddr::V4(Ipv4Addr::new(93, 184, 215, 14)),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
            ],
        );
    let opts = glimpse_server::fetch::FetchOptions {
        resolver: Arc::new(resolver),
        ..fetch_options(false, 512 * 1024)
    };
    let s = TestServer::builder()
        .credits(CREDITS)
        .allow_private_urls(false)
        // This table sends dozens of refused URLs from one key on purpose.
        .failed_fetches_per_minute(0)
        .image_source(Fetcher::new(opts))
        .start()
        .await;
    let long = format!("http://public.example:{p4}/{}", "a".repeat(5000));
    let urls: Vec<(&str, String)> = vec![
        ("decimal 127.0.0.1", format!("http://2130706433:{p4}/x.png")),
        ("hex 127.0.0.1", format!("http://0x7f000001:{p4}/x.png")),
        ("octal 127.0.0.1", format!("http://0177.0.0.1:{p4}/x.png")),
        ("short 127.1", format!("http://127.1:{p4}/x.png")),
        ("dotted hex 0x7f.1", format!("http://0x7f.1:{p4}/x.png")),
        ("plain 127.0.0.1", format!("http://127.0.0.1:{p4}/x.png")),
        ("[::1]", format!("http://[::1]:{p6}/x.png")),
        (
            "v4-mapped [::ffff:127.0.0.1]",
            format!("http://[::ffff:127.0.0.1]:{p4}/x.png"),
        ),
        (
            "NAT64 [64:ff9b::7f00:1]",
            format!("http://[64:ff9b::7f00:1]:{p4}/x.png"),
        ),
        ("0.0.0.0", format!("http://0.0.0.0:{p4}/x.png")),
        ("[::]", format!("http://[::]:{p6}/x.png")),
        (
            "metadata 169.254.169.254",
            "http://169.254.169.254/latest/meta-data/".into(),
        ),
        ("private 10.0.0.1", "http://10.0.0.1/x.png".into()),
        ("CGNAT 100.64.0.1", "http://100.64.0.1/x.png".into()),
        (
            "name → 127.0.0.1",
            format!("http://public.example:{p4}/x.png"),
        ),
        (
            "name → public + loopback",
            format!("http://mixed.example:{p4}/x.png"),
        ),
        ("localhost", format!("http://localhost:{p4}/x.png")),
        (
            "userinfo",
            format!("http://user:pw@public.example:{p4}/x.png"),
        ),
        (
            "userinfo hiding the host",
            format!("http://public.example@127.0.0.1:{p4}/"),
        ),
        ("file:", "file:///etc/passwd".into()),
        ("ftp:", format!("ftp://127.0.0.1:{p4}/x.png")),
        ("gopher:", format!("gopher://127.0.0.1:{p4}/_GET")),
        ("javascript:", "javascript:alert(1)".into()),
        ("data:", "data:image/png;base64,iVBORw0KGgo=".into()),
        ("empty url", String::new()),
        ("5000-char url", long),
    ];
    let n = urls.len();
    for (name, url) in urls {
        let t = Instant::now();
        let req = s.get_by_url(CLIP, url.as_str());
        let msg = s.row(name, req, 400, "VALIDATION_ERROR").await;
        // A resolved address is never named back (it would map internal DNS for the client).
        if url.contains(".example") {
            assert!(
                !msg.contains("127.0.0.1"),
                "{name} names the resolved address: {msg}"
            );
        }
        // Refused on the literal or the resolved address, never by waiting for a connect.
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{name} took {:?}",
            t.elapsed()
        );
    }
    // The same refusals through the form field of a POST.
    let req = s
        .http
        .post(s.url(VIT))
        .header("X-API-Key", &s.key)
        .multipart(Form::new().text("url", format!("http://0x7f.0.0.1:{p4}/")));
    s.row("url as form field", req, 400, "VALIDATION_ERROR")
        .await;

    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(canary4.accepted(), 0, "a refused URL reached the v4 canary");
    if let Some(canary6) = v6 {
        assert_eq!(canary6.accepted(), 0, "a refused URL reached the v6 canary");
    }
    assert!(n >= 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_upstreams_cost_nothing() {
    let good = png(8, 8);
    let up = raw_upstream(good).await;
    let max = 512 * 1024;
    let s = TestServer::builder()
        .credits(CREDITS)
        .failed_fetches_per_minute(0)
        .image_source(Fetcher::new(fetch_options(true, max)))
        .start()
        .await;
    let rows: Vec<(&str, &str, u16, &str)> = vec![
        ("redirect to file:", "/redir-file", 400, "VALIDATION_ERROR"),
        (
            "redirect to gopher:",
            "/redir-gopher",
            400,
            "VALIDATION_ERROR",
        ),
        ("redirect loop", "/loop", 400, "VALIDATION_ERROR"),
        ("4 redirects (limit 3)", "/hop/4", 400, "VALIDATION_ERROR"),
        (
            "chunked body past the cap",
            "/chunked-over",
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        (
            "declared length over the cap",
            "/declared-over",
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        (
            "declared length shorter than body",
            "/declared-short",
            400,
            "VALIDATION_ERROR",
        ),
        (
            "declared length longer, then EOF",
            "/declared-long-eof",
            400,
            "VALIDATION_ERROR",
        ),
        ("1 byte per second", "/slow", 400, "VALIDATION_ERROR"),
        ("404 upstream", "/404", 400, "VALIDATION_ERROR"),
        ("500 upstream", "/500", 400, "VALIDATION_ERROR"),
        ("HTML instead of an image", "/html", 400, "VALIDATION_ERROR"),
        ("gzip-encoded body", "/gzip", 400, "VALIDATION_ERROR"),
        ("empty body", "/empty", 400, "VALIDATION_ERROR"),
    ];
    for (name, path, status, code) in rows {
        let t = Instant::now();
        let req = s.get_by_url(VIT, &format!("{up}{path}"));
        let msg = s.row(name, req, status, code).await;
        // What the upstream did (its status, type, lengths) is not the client's to learn.
        for leak in ["404", "500", "html", "gzip", "length", "redirect", "status"] {
            assert!(!msg.to_lowercase().contains(leak), "{name}: {msg}");
        }
        // The fetcher's total deadline (2 s here) bounds every row, the drip included.
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "{name} took {:?}",
            t.elapsed()
        );
    }
    // Control: three redirects are within the limit and the image is classified and charged once.
    let res = s
        .get_by_url(VIT, &format!("{up}/hop/3"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(s.store.balance(&s.key_id).await.unwrap(), CREDITS - 1);
}

/// `GLIMPSE_FETCH_TIMEOUT_SECS` reaches the fetcher the server builds for itself: a drip-fed image
/// is cut off after the configured second (the default would say 10 s), and costs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fetch_timeout_setting_reaches_the_fetcher() {
    let up = raw_upstream(png(8, 8)).await;
    let s = TestServer::builder()
        .credits(CREDITS)
        .allow_private_urls(true)
        .fetch_timeout_secs(1)
        .fetch_connect_timeout_secs(1)
        .start()
        .await;
    let t = Instant::now();
    let res = s
        .get_by_url(VIT, &format!("{up}/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // The drip would last 10 s and the default limit is 10 s: cut at the configured second.
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "VALIDATION_ERROR", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert_eq!(message, "could not fetch the image from url", "{body}");
    s.assert_uncharged("drip-fed url").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_uploads_cost_nothing() {
    let s = TestServer::builder().credits(CREDITS).start().await;
    let jpg = image_bytes("motorcycle.jpg");
    let small = png(16, 16);
    let mut jpeg_garbage = vec![0xff, 0xd8];
    jpeg_garbage.extend((0..4000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    let zip = b"PK\x03\x04\x14\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0PK\x05\x06\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec();
    let key = s.key.clone();
    let post = |path: &str| s.http.post(s.url(path)).header("X-API-Key", &key);
    let labels65: Vec<String> = (0..65).map(|i| format!("l{i}")).collect();
    let rows: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("PNG declaring 100000×100000", post(VIT).multipart(form(png_header_only(100_000, 100_000))), 400, "VALIDATION_ERROR"),
        ("PNG declaring 0×0", post(VIT).multipart(form(png_header_only(0, 0))), 400, "VALIDATION_ERROR"),
        ("GIF with a 65535×65535 screen", post(VIT).multipart(form(gif_big_screen())), 400, "VALIDATION_ERROR"),
        ("truncated JPEG", post(VIT).multipart(form(jpg[..jpg.len() / 8].to_vec())), 400, "VALIDATION_ERROR"),
        ("truncated PNG", post(VIT).multipart(form(small[..small.len() / 2].to_vec())), 400, "VALIDATION_ERROR"),
        ("zero bytes", post(VIT).multipart(form(Vec::new())), 400, "VALIDATION_ERROR"),
        ("SVG", post(VIT).multipart(form(br#"<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(1)</script></svg>"#.to_vec())), 400, "VALIDATION_ERROR"),
        ("TIFF header bomb", post(VIT).multipart(form(tiff_bomb())), 400, "VALIDATION_ERROR"),
        ("HTML", post(VIT).multipart(form(b"<!doctype html><html></html>".to_vec())), 400, "VALIDATION_ERROR"),
        ("ZIP", post(VIT).multipart(form(zip)), 400, "VALIDATION_ERROR"),
        ("PDF", post(VIT).multipart(form(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF".to_vec())), 400, "VALIDATION_ERROR"),
        ("JPEG with garbage after SOI", post(VIT).multipart(form(jpeg_garbage)), 400, "VALIDATION_ERROR"),
        ("12001×1 PNG (side limit 12000)", post(VIT).multipart(form(png(12_001, 1))), 400, "VALIDATION_ERROR"),
        ("image under another field name", post(VIT).multipart(Form::new().part("file", Part::bytes(small.clone()).file_name("a.png"))), 400, "VALIDATION_ERROR"),
        ("two image fields", post(VIT).multipart(form(small.clone()).part("image", Part::bytes(small.clone()).file_name("b.png"))), 400, "VALIDATION_ERROR"),
        ("65 labels", post(CLIP).query(&[("labels", labels65.join(","))]).multipart(form(small.clone())), 400, "VALIDATION_ERROR"),
        ("label with control chars", post(CLIP).query(&[("labels", "cat,do\u{7}g\u{1b}[31m")]).multipart(form(small.clone())), 400, "VALIDATION_ERROR"),
        ("labels ,,,", post(CLIP).query(&[("labels", ",,,")]).multipart(form(small.clone())), 400, "VALIDATION_ERROR"),
        ("101-char label", post(CLIP).query(&[("labels", "b".repeat(101))]).multipart(form(small.clone())), 400, "VALIDATION_ERROR"),
        ("huge labels form field", post(CLIP).multipart(form(small.clone()).text("labels", "x,".repeat(20_000))), 400, "VALIDATION_ERROR"),
        ("clipModel=../../etc", post(CLIP).query(&[("clipModel", "../../etc")]).multipart(form(small.clone())), 400, "VALIDATION_ERROR"),
        ("unknown clipModel", post(CLIP).query(&[("clipModel", "openai/clip-vit-base-patch32")]).multipart(form(small.clone())), 400, "VALIDATION_ERROR"),
        ("vitModel with NUL", post(VIT).query(&[("vitModel", "vit\0tiny")]).multipart(form(small.clone())), 400, "VALIDATION_ERROR"),
        ("missing X-API-Key", s.http.post(s.url(VIT)).multipart(form(small.clone())), 401, "UNAUTHORIZED"),
        ("garbage X-API-Key", s.http.post(s.url(VIT)).header("X-API-Key", "'; DROP TABLE api_keys; --").multipart(form(small.clone())), 401, "UNAUTHORIZED"),
        ("10 KB X-API-Key", s.http.post(s.url(VIT)).header("X-API-Key", "g".repeat(10_000)).multipart(form(small.clone())), 401, "UNAUTHORIZED"),
        ("non-UTF-8 X-API-Key", s.http.post(s.url(VIT)).header("X-API-Key", HeaderValue::from_bytes(b"gl_\xff\xfe\xc3").unwrap()).multipart(form(small.clone())), 401, "UNAUTHORIZED"),
        ("non-UTF-8 Idempotency-Key", post(VIT).header("Idempotency-Key", HeaderValue::from_bytes(b"id-\xff\xfe").unwrap()).multipart(form(small.clone())), 400, "VALIDATION_ERROR"),
        ("invalid percent-encoding (UTF-8)", s.http.post(format!("{}?labels=%ff%fe,cat", s.url(CLIP))).header("X-API-Key", &key).multipart(form(small.clone())), 400, "VALIDATION_ERROR"),
        ("invalid percent-encoding (url)", s.http.get(format!("{}?url=%zz%", s.url(CLIP))).header("X-API-Key", &key), 400, "VALIDATION_ERROR"),
        ("upload over the limit", post(VIT).multipart(form(vec![7u8; s.max_upload_bytes() + 1])), 413, "PAYLOAD_TOO_LARGE"),
    ];
    for (name, req, status, code) in rows {
        s.row(name, req, status, code).await;
    }
    // Control row: a valid 1×1 PNG is classified and charged exactly once.
    let res = post(VIT).multipart(form(png(1, 1))).send().await.unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(s.store.balance(&s.key_id).await.unwrap(), CREDITS - 1);
    assert_eq!(s.store.ledger_totals(&s.key_id).await.unwrap().debits, 1);
}

/// A body whose Content-Length is far over the limit is refused after at most the limit is read,
/// not after the client has sent it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_huge_multipart_is_413_before_the_rest_arrives() {
    let s = TestServer::builder().credits(CREDITS).start().await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let boundary = "hostileboundary";
    let head = format!(
        "POST {VIT} HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 1000000000\r\n\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n",
        s.key
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    // Send the limit plus 256 KiB of the declared gigabyte, then stop and wait for the answer.
    let chunk = vec![0u8; 64 * 1024];
    let mut sent = 0usize;
    while sent < s.max_upload_bytes() + 256 * 1024 {
        if sock.write_all(&chunk).await.is_err() {
            break; // the server already answered and closed
        }
        sent += chunk.len();
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no answer while the body was still incomplete"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("PAYLOAD_TOO_LARGE"), "{text}");
    assert!(sent < 2_000_000, "read far past the limit");
    s.assert_uncharged("declared 1 GB multipart").await;
}

/// A batch, embeddings or saved-classifier call answered before its body is read (a wrong key:
/// 401 from the headers) still reads the rest of a body over one upload's limit but within its
/// route's limit (the batch limit; a classifier's examples, 64 MiB), so a client
/// still writing it gets the answer rather than a reset (Node's `fetch` reports `write EPIPE`).
/// The body is far bigger than loopback's socket buffers, so the writes block until the server
/// reads: a server that answers and closes cuts them off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answers_read_a_batch_body_over_the_single_upload_limit() {
    const BODY: usize = 24 << 20;
    let s = TestServer::builder()
        .max_batch_bytes(BODY + (1 << 20))
        .start()
        .await;
    assert!(BODY > 4 * s.max_upload_bytes());
    let addr = s.base.trim_start_matches("http://").to_string();
    let boundary = "earlyboundary";
    let noise: Vec<u8> = (0..BODY as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let length = head.len() + noise.len() + tail.len();
    for path in [
        "/api/image-classification/vit/batch",
        "/api/image-classification/clip/batch",
        "/api/embeddings",
        "/api/classifiers",
    ] {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: gk_wrong_key_0000000000000000000000\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n{head}"
        );
        let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let written = tokio::time::timeout(Duration::from_secs(20), async {
            sock.write_all(request.as_bytes()).await?;
            sock.write_all(&noise).await?;
            sock.write_all(tail.as_bytes()).await
        })
        .await
        .expect("the server stopped reading the body");
        written.unwrap_or_else(|e| panic!("{path}: cut off while sending the body: {e}"));
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut answer))
            .await
            .expect("no answer")
            .unwrap_or_else(|e| panic!("{path}: the answer was lost: {e}"));
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 401"), "{path}: {text}");
        assert!(text.contains("UNAUTHORIZED"), "{path}: {text}");
    }
}

/// The fuzz targets' seed corpora (`fuzz/corpus/`) through the same checks on stable, so CI keeps
/// every seed (and any crash a fuzz run adds there) as a regression test without nightly.
#[test]
fn fuzz_seed_corpora_hold_the_targets_invariants() {
    use glimpse_core::image::{decode, DecodeLimits};
    use glimpse_core::preprocess::PreprocessConfig;
    use glimpse_server::fetch::{check_url, forbidden_reason, AddressPolicy};

    let corpus = |t: &str| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus")
            .join(t);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            // Only the committed seeds: a local fuzz run adds its own finds beside them.
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("seed_"))
            })
            .collect();
        files.sort();
        assert!(files.len() >= 5, "{t}: seed corpus too small");
        files
            .into_iter()
            .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
    };
    let limits = DecodeLimits {
        max_pixels: 4_000_000,
        max_side: 4_096,
        ..DecodeLimits::default()
    };
    let cfg = PreprocessConfig::clip(224);
    let mut decoded = 0;
    for (name, bytes) in corpus("decode_preprocess") {
        if let Ok(img) = decode(&bytes, &limits) {
            let px = cfg.preprocess(&img);
            assert_eq!(px.len(), 3 * 224 * 224, "{name}");
            assert!(px.iter().all(|v| v.is_finite()), "{name}");
            decoded += 1;
        } else {
            assert!(!name.contains("8x6"), "{name}: a valid seed did not decode");
        }
    }
    assert!(decoded >= 5, "only {decoded} seeds decoded");
    let policy = AddressPolicy::public_only();
    for (name, bytes) in corpus("url_check") {
        let raw = String::from_utf8(bytes).unwrap();
        if let Ok(url) = check_url(&raw, &policy) {
            assert!(matches!(url.scheme(), "http" | "https"), "{name}: {url}");
            assert!(
                url.username().is_empty() && url.password().is_none(),
                "{name}"
            );
            if let Some(url::Host::Ipv4(a)) = url.host() {
                assert!(forbidden_reason(a.into()).is_none(), "{name}: {url}");
            }
            if let Some(url::Host::Ipv6(a)) = url.host() {
                assert!(forbidden_reason(a.into()).is_none(), "{name}: {url}");
            }
        }
    }
}

/// A client that sends its headers and part of the multipart body, then stops, must not hold an
/// in-flight slot forever (slowloris on the body; the header timeout does not cover it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upload_body_is_cut_off() {
    let s = TestServer::builder()
        .credits(CREDITS)
        .header_timeout_secs(1)
        .max_in_flight(1)
        .start()
        .await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST {VIT} HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {}\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\nPNGDATA",
        s.key
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    // While it stalls it holds the only slot: others are shed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let res = s
        .http
        .post(s.url(VIT))
        .header("X-API-Key", &s.key)
        .multipart(form(png(1, 1)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let t = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), sock.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "a stalled body was still held after 8 s");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("VALIDATION_ERROR"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    s.assert_uncharged("stalled body").await;
    // The slot is free again.
    let res = s
        .http
        .post(s.url(VIT))
        .header("X-API-Key", &s.key)
        .multipart(form(png(1, 1)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// Failed `?url=` fetches are free, so they are counted per key: past
/// `GLIMPSE_FAILED_FETCHES_PER_MINUTE` the key's url calls get 429 with `Retry-After` before any
/// connection is made, and every failure reads the same, whatever the upstream did. Uploads
/// from the same key still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_fetches_are_counted_and_tell_nothing() {
    let up = raw_upstream(png(8, 8)).await;
    let canary = Canary::start().await;
    let port = canary.port();
    let s = TestServer::builder()
        .credits(1)
        .failed_fetches_per_minute(3)
        .image_source(Fetcher::new(fetch_options(true, 512 * 1024)))
        .start()
        .await;
    for path in [
        format!("{up}/404"),
        format!("{up}/html"),
        format!("http://127.0.0.1:{port}/a.jpg"),
    ] {
        let msg = s
            .row(&path, s.get_by_url(VIT, &path), 400, "VALIDATION_ERROR")
            .await;
        assert!(
            msg == "could not fetch the image from url"
                || msg.starts_with("the file at url is not"),
            "{path}: {msg}"
        );
    }
    let seen = canary.accepted();
    assert_eq!(seen, 1);
    let res = s
        .get_by_url(VIT, &format!("http://127.0.0.1:{port}/b.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().get("retry-after").is_some());
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMITED", "{body}");
    assert_eq!(canary.accepted(), seen, "the 4th fetch connected");
    s.assert_uncharged("failed fetches").await;
    let res = s
        .http
        .post(s.url(VIT))
        .header("X-API-Key", &s.key)
        .multipart(form(png(8, 8)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
}

/// A key that cannot pay is answered 402 before its body is read, so connections that drip
/// their uploads from such a key hold no in-flight slot: another key's call is served while
/// they are still open. Before, two of them kept a server with two slots at 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_cannot_pay_hold_no_slot_while_their_uploads_drip() {
    let s = TestServer::builder().max_in_flight(2).start().await;
    let payer = s.store.create_key("payer", 1).await.unwrap();
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut drips = Vec::new();
    for i in 0..4 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        // Half of them with a fresh Idempotency-Key: one this key never used buys no body read.
        let idem = if i % 2 == 1 {
            format!("Idempotency-Key: fresh-{i}\r\n")
        } else {
            String::new()
        };
        let head = format!(
            "POST {VIT} HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\n{idem}\
             Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n\
             --b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n",
            s.key
        );
        c.write_all(head.as_bytes()).await.unwrap();
        c.write_all(b"\x89PNG").await.unwrap();
        drips.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let call = || {
        s.http
            .post(s.url(VIT))
            .header("X-API-Key", &payer.key)
            .header("Idempotency-Key", "payer-1")
            .multipart(form(png(8, 8)))
    };
    let res = call().send().await.unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let first = res.text().await.unwrap_or_default();
    // The payer is now at 0: a replay of its stored answer still comes back (its key is known),
    // not a 402.
    let res = call().send().await.unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(res.text().await.unwrap(), first);
    drop(drips);
}

// ---------------------------------------------------------------------------------------------
// Connections: silent, idle, over the cap, at shutdown; hyper's own error answers; metric labels.
// ---------------------------------------------------------------------------------------------

/// The HTTP/2 client preface and an empty SETTINGS frame: an h2c connection that then says
/// nothing (and never acknowledges the server's SETTINGS or PINGs).
const H2C_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

fn addr_of(base: &str) -> String {
    base.trim_start_matches("http://").to_string()
}

/// Read until the server closes the socket (EOF or reset); `Err(read so far)` if it is still
/// open after `within`.
async fn closed_within(
    sock: &mut tokio::net::TcpStream,
    within: Duration,
) -> Result<Vec<u8>, Vec<u8>> {
    let mut got = Vec::new();
    let res = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    match res {
        Ok(()) => Ok(got),
        Err(_) => Err(got),
    }
}

/// One HTTP/1.1 GET on `sock` (kept alive); returns the status and the body.
async fn h1_get(sock: &mut tokio::net::TcpStream, path: &str) -> (u16, String) {
    sock.write_all(format!("GET {path} HTTP/1.1\r\nHost: glimpse\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed mid-answer");
            got.extend_from_slice(&buf[..n]);
            if let Some((head, body)) = split_head(&got) {
                if body.len() >= content_length(&head) {
                    break;
                }
            }
        }
    })
    .await
    .expect("no answer in 3 s");
    let (head, body) = split_head(&got).unwrap();
    (status_of(&head), body)
}

fn split_head(raw: &[u8]) -> Option<(String, String)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((
        String::from_utf8_lossy(&raw[..end]).into_owned(),
        String::from_utf8_lossy(&raw[end + 4..]).into_owned(),
    ))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn content_length(head: &str) -> usize {
    header(head, "content-length").map_or(0, |v| v.parse().unwrap())
}

fn status_of(head: &str) -> u16 {
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Item 3: a connection that never sends a byte, an HTTP/1 keep-alive connection after its
/// answer, and an h2c connection with no stream are all closed by the server (read gives EOF)
/// after the first-byte / idle timeout (1 s here) — not kept forever, not until the 10 s header
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed() {
    let s = TestServer::builder()
        .credits(CREDITS)
        .first_byte_timeout_secs(1)
        .idle_timeout_secs(1)
        .http2_keep_alive_secs(60)
        .start()
        .await;
    let addr = addr_of(&s.base);
    let t = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut keep_alive = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert_eq!(h1_get(&mut keep_alive, "/healthz").await.0, 200);
    let mut h2c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    h2c.write_all(H2C_PREFACE).await.unwrap();
    let within = Duration::from_secs(4);
    let (a, b, c) = tokio::join!(
        closed_within(&mut silent, within),
        closed_within(&mut keep_alive, within),
        closed_within(&mut h2c, within),
    );
    assert!(a.is_ok(), "a silent connection is still open after 4 s");
    assert!(
        b.is_ok(),
        "an idle HTTP/1 keep-alive connection is still open after 4 s"
    );
    let frames = c.expect("an idle h2c connection is still open after 4 s");
    // The server spoke HTTP/2 (its SETTINGS frame) before it closed.
    assert!(frames.len() >= 9 && frames[3] == 4, "{frames:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The server still serves.
    let res = s.http.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

/// Item 3: HTTP/2 keep-alive pings. A peer that never answers them is dropped after the ping
/// interval plus as long again (1 s + 1 s here), even though the idle timeout is long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_http2_pings_close_the_connection() {
    let s = TestServer::builder()
        .credits(CREDITS)
        .idle_timeout_secs(60)
        .http2_keep_alive_secs(1)
        .start()
        .await;
    let mut h2c = tokio::net::TcpStream::connect(addr_of(&s.base))
        .await
        .unwrap();
    h2c.write_all(H2C_PREFACE).await.unwrap();
    let frames = closed_within(&mut h2c, Duration::from_secs(5))
        .await
        .expect("an h2c peer that ignores pings is still connected after 5 s");
    // Walk the frames: one of them is a PING (type 6) without the ACK flag.
    let mut i = 0;
    let mut pinged = false;
    while i + 9 <= frames.len() {
        let len = u32::from_be_bytes([0, frames[i], frames[i + 1], frames[i + 2]]) as usize;
        pinged |= frames[i + 3] == 6 && frames[i + 4] & 1 == 0;
        i += 9 + len;
    }
    assert!(pinged, "no PING frame before the close: {frames:?}");
}

/// Item 3: the connection cap. 20 connections that send nothing (first-byte timeout 30 s) against
/// a cap of 8: the server closes the idle ones to make room, so at most 8 stay open, and a new
/// `/healthz` is answered at once instead of waiting behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_sheds_idle_connections_and_healthz_answers() {
    let s = TestServer::builder()
        .credits(CREDITS)
        .max_connections(8)
        .first_byte_timeout_secs(30)
        .start()
        .await;
    let addr = addr_of(&s.base);
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    let mut probe = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (status, body) = h1_get(&mut probe, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let mut open = 0;
    for sock in &mut silent {
        if closed_within(sock, Duration::from_millis(100))
            .await
            .is_err()
        {
            open += 1;
        }
    }
    assert!(
        open <= 8,
        "{open} of 20 silent connections still open (cap 8)"
    );
}

/// Item 11: shutdown. After the signal the server keeps serving for the drain period with
/// `/readyz` at 503 `NOT_READY`; then it stops accepting, finishes the call in flight, and
/// exits at once although an idle HTTP/1 keep-alive connection, an idle h2c connection (that
/// never answers GOAWAY's ping) and a silent one are still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_then_exits_without_waiting_for_idle_connections() {
    let mut s = TestServer::builder()
        .credits(CREDITS)
        .shutdown_drain_secs(1)
        .shutdown_grace_secs(20)
        .idle_timeout_secs(60)
        .first_byte_timeout_secs(60)
        .header_timeout_secs(60)
        .start()
        .await;
    let addr = addr_of(&s.base);
    let mut keep_alive = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert_eq!(h1_get(&mut keep_alive, "/readyz").await.0, 200);
    let mut h2c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    h2c.write_all(H2C_PREFACE).await.unwrap();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // A call in flight: headers and most of an upload sent, the last bytes held back.
    let mut in_flight = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut body = b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n".to_vec();
    body.extend_from_slice(&png(4, 4));
    body.extend_from_slice(b"\r\n--b--\r\n");
    let head = format!(
        "POST {VIT} HTTP/1.1\r\nHost: glimpse\r\nX-API-Key: {}\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {}\r\n\r\n",
        s.key,
        body.len()
    );
    in_flight.write_all(head.as_bytes()).await.unwrap();
    let (first, rest) = body.split_at(body.len() - 8);
    in_flight.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let t = Instant::now();
    let server = s.begin_stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // During the drain: new connections are still served, and readiness says 503.
    let mut probe = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("the listener closed at once instead of draining");
    let (status, text) = h1_get(&mut probe, "/readyz").await;
    assert_eq!(status, 503, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["code"], "NOT_READY", "{v}");
    assert_eq!(h1_get(&mut probe, "/healthz").await.0, 200);
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    // After the drain (1 s) the upload completes: the call in flight is still answered.
    tokio::time::sleep(Duration::from_millis(1300).saturating_sub(t.elapsed())).await;
    in_flight.write_all(rest).await.unwrap();
    let answer = closed_within(&mut in_flight, Duration::from_secs(5))
        .await
        .expect("the call in flight held its connection open");
    let (head, text) = split_head(&answer).expect("no answer to the call in flight");
    assert_eq!(status_of(&head), 200, "{head}\n{text}");
    // The server returns right after that call, not after the grace period.
    let result = tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .expect("idle connections held the shutdown");
    result.unwrap().unwrap();
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    for (name, sock) in [
        ("keep-alive", &mut keep_alive),
        ("h2c", &mut h2c),
        ("silent", &mut silent),
    ] {
        assert!(
            closed_within(sock, Duration::from_millis(500))
                .await
                .is_ok(),
            "the idle {name} connection is still open after shutdown"
        );
    }
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
}

/// Item 12: the answers hyper writes itself, before any service runs (bad request line, bad
/// header, too many headers, URI too long), carry the `{message, code}` JSON body too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypers_own_error_answers_are_json() {
    let s = TestServer::builder().credits(CREDITS).start().await;
    let addr = addr_of(&s.base);
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let rows: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "bad version",
            b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "bad method byte",
            b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "header without colon",
            b"GET / HTTP/1.1\r\nHost x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "binary garbage",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            400,
        ),
        (
            "200 headers",
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
            431,
        ),
        (
            "70 000-byte URI",
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)).into_bytes(),
            414,
        ),
    ];
    for (name, raw, want) in rows {
        let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
        sock.write_all(&raw).await.unwrap();
        let got = closed_within(&mut sock, Duration::from_secs(3))
            .await
            .unwrap_or_else(|g| panic!("{name}: still open: {}", String::from_utf8_lossy(&g)));
        let (head, body) = split_head(&got).unwrap_or_else(|| panic!("{name}: no answer: {got:?}"));
        assert_eq!(status_of(&head), want, "{name}: {head}");
        assert!(
            header(&head, "content-type").is_some_and(|v| v.starts_with("application/json")),
            "{name}: {head}"
        );
        assert_eq!(content_length(&head), body.len(), "{name}: {head}");
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("{name}: body is not JSON: {head}\n{body:?}"));
        assert_eq!(v["code"], "VALIDATION_ERROR", "{name}: {v}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}: {v}"
        );
        assert_eq!(v.as_object().unwrap().len(), 2, "{name}: {v}");
    }
    // The server is fine afterwards.
    let res = s.http.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

/// Item 8: method names are not metric labels as sent. 40 made-up methods (one of 8 KB) on
/// known and unknown routes fold into `method="other"`; the series count stays small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_methods_fold_into_other_in_metrics() {
    let s = TestServer::builder().credits(CREDITS).start().await;
    let long = format!("X{}", "M".repeat(8 * 1024));
    let mut methods: Vec<String> = (0..39).map(|i| format!("WEIRD{i}")).collect();
    methods.push(long);
    for (i, m) in methods.iter().enumerate() {
        let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
        let path = match i % 3 {
            0 => "/healthz".to_string(),
            1 => VIT.to_string(),
            _ => format!("/no/such/route/{i}"),
        };
        let res = s.http.request(method, s.url(&path)).send().await.unwrap();
        assert!(res.status().is_client_error(), "{m}: {}", res.status());
    }
    let text = s.get_text("/metrics").await;
    assert!(!text.contains("WEIRD") && !text.contains("XMMM"), "{text}");
    assert!(text.contains("method=\"other\""), "{text}");
    let series = text
        .lines()
        .filter(|l| l.starts_with("glimpse_http_requests_total{"))
        .count();
    assert!(series <= 6, "{series} series:\n{text}");
}
