//! Helpers for the hostile-input table: a server whose URL fetcher the test builds (so it can
//! inject a DNS map and short deadlines), a canary listener that counts connections, a raw TCP
//! upstream that misbehaves on purpose, and hand-made hostile files.
#![allow(dead_code)]

use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glimpse_server::fetch::{FetchOptions, Fetcher};
use glimpse_server::{load_models, serve_state, AppState, ServerConfig};
use glimpse_store::{Store, StoreOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::api_support::{assert_error, http_client, test_config};

pub struct Server {
    pub base: String,
    pub store: Arc<dyn Store>,
    pub key: String,
    pub key_id: String,
    pub credits: i64,
    pub config: ServerConfig,
    pub http: reqwest::Client,
    _stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

/// The real server (fixture models, temp SQLite) with `fetcher` behind `?url=` and one key
/// holding `credits`.
pub async fn start(
    credits: i64,
    tweak: impl FnOnce(&mut ServerConfig),
    fetcher: Option<Fetcher>,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    tweak(&mut config);
    let store = glimpse_store::connect_with(
        &config.store.database_url,
        StoreOptions {
            auth_cache_ttl: Duration::ZERO,
            ..config.store_options()
        },
    )
    .await
    .unwrap();
    let models = load_models(&config).await.unwrap();
    let state = match fetcher {
        Some(f) => AppState::with_image_source(&config, Arc::clone(&store), models, Arc::new(f)),
        None => AppState::new(&config, Arc::clone(&store), models),
    }
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(serve_state(state, listener, async move {
        let _ = rx.await;
    }));
    let key = store.create_key("hostile", credits).await.unwrap();
    Server {
        base,
        store,
        key: key.key,
        key_id: key.id,
        credits,
        config,
        http: http_client(),
        _stop: tx,
        _dir: dir,
    }
}

/// Short deadlines so the slow-upstream rows finish quickly.
pub fn fetch_options(allow_private: bool, max_bytes: usize) -> FetchOptions {
    FetchOptions {
        allow_private,
        max_bytes: max_bytes as u64,
        connect_timeout: Duration::from_secs(1),
        total_timeout: Duration::from_secs(2),
        max_redirects: 3,
        ..FetchOptions::default()
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `GET path?url=url` with this server's key.
    pub fn get_by_url(&self, path: &str, url: &str) -> reqwest::RequestBuilder {
        crate::api_support::get_by_url(&self.http, self.url(path), &self.key, url)
    }

    /// Send `req` and assert the row: status, `{message, code}` body, no credit gone, no debit
    /// in the ledger. Returns the message.
    pub async fn row(
        &self,
        name: &str,
        req: reqwest::RequestBuilder,
        status: u16,
        code: &str,
    ) -> String {
        let res = req.send().await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = res.status();
        let text = res.text().await.unwrap();
        let body: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{name}: not JSON ({got}): {text}"));
        assert_eq!(got.as_u16(), status, "{name}: {body}");
        assert_error(got, &body, status, code);
        let msg = body["message"].as_str().unwrap();
        assert!(
            !msg.contains("/work/") && !msg.contains(".rs"),
            "{name} leaks: {msg}"
        );
        self.assert_uncharged(name).await;
        msg.to_string()
    }

    pub async fn assert_uncharged(&self, name: &str) {
        let balance = self.store.balance(&self.key_id).await.unwrap();
        assert_eq!(balance, self.credits, "{name} cost a credit");
        let totals = self.store.ledger_totals(&self.key_id).await.unwrap();
        assert_eq!(totals.debits, 0, "{name} wrote a debit");
    }
}

/// A listener that accepts and counts connections and never answers: the target of every URL
/// that must be refused before connecting.
pub async fn canary(bind: &str) -> Option<(u16, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind(bind).await.ok()?;
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            drop(sock);
        }
    });
    Some((port, hits))
}

/// A raw HTTP/1.1 upstream whose answer depends on the request path, so it can lie about
/// lengths, drip bytes and redirect anywhere. `png` is served as the "good" image.
pub async fn raw_upstream(png: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let png = Arc::new(png);
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let png = Arc::clone(&png);
            tokio::spawn(async move {
                let _ = answer(sock, &png).await;
            });
        }
    });
    base
}

async fn answer(mut sock: TcpStream, png: &[u8]) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let redirect =
        |to: &str| format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n");
    match path.as_str() {
        "/png" => {
            let h = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
                png.len()
            );
            sock.write_all(h.as_bytes()).await?;
            sock.write_all(png).await?;
        }
        "/redir-file" => {
            sock.write_all(redirect("file:///etc/passwd").as_bytes())
                .await?
        }
        "/redir-gopher" => {
            sock.write_all(redirect("gopher://127.0.0.1:70/_x").as_bytes())
                .await?
        }
        "/loop" => sock.write_all(redirect("/loop").as_bytes()).await?,
        p if p.starts_with("/hop/") => {
            let n: u32 = p[5..].parse().unwrap_or(0);
            let to = if n <= 1 {
                "/png".to_string()
            } else {
                format!("/hop/{}", n - 1)
            };
            sock.write_all(redirect(&to).as_bytes()).await?;
        }
        "/chunked-over" => {
            // Chunked, no length, 64 KiB chunks without end: only the running count can stop it.
            sock.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            .await?;
            let data = vec![0x89u8; 64 * 1024];
            for _ in 0..64 {
                sock.write_all(format!("{:x}\r\n", data.len()).as_bytes())
                    .await?;
                sock.write_all(&data).await?;
                sock.write_all(b"\r\n").await?;
            }
        }
        "/declared-over" => {
            sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000000\r\n\r\n\x89PNG")
                .await?;
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        "/declared-short" => {
            // Says 16 bytes, sends the whole image: the client must read only 16.
            sock.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 16\r\n\r\n",
            )
            .await?;
            sock.write_all(png).await?;
        }
        "/declared-long-eof" => {
            sock.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n",
            )
            .await?;
            sock.write_all(&png[..png.len().min(40)]).await?;
        }
        "/slow" => {
            sock.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
                    png.len()
                )
                .as_bytes(),
            )
            .await?;
            for b in png {
                sock.write_all(&[*b]).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        "/404" => {
            sock.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno\n")
                .await?
        }
        "/500" => {
            sock.write_all(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
                .await?
        }
        "/html" => {
            let body = b"<!doctype html><html><body>not an image</body></html>";
            let h = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            sock.write_all(h.as_bytes()).await?;
            sock.write_all(body).await?;
        }
        "/gzip" => {
            // A gzip stream claiming to be the image: never decompressed, so not an image.
            let body = [
                0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ];
            let h = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            sock.write_all(h.as_bytes()).await?;
            sock.write_all(&body).await?;
        }
        "/empty" => {
            sock.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 0\r\n\r\n",
            )
            .await?
        }
        _ => {
            sock.write_all(b"HTTP/1.1 400 Bad\r\nContent-Length: 0\r\n\r\n")
                .await?
        }
    }
    sock.flush().await
}

/// A real PNG of `w`×`h` grey pixels.
pub fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb([120, 130, 140]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A PNG that is only a signature and an IHDR declaring `w`×`h` (no pixel data).
pub fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    push_chunk(&mut out, b"IHDR", &ihdr);
    push_chunk(&mut out, b"IEND", &[]);
    out
}

fn push_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc_input = kind.to_vec();
    crc_input.extend_from_slice(data);
    out.extend_from_slice(&crc_input);
    out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A GIF whose logical screen is 65535×65535 with one 1×1 frame.
pub fn gif_big_screen() -> Vec<u8> {
    let mut g = b"GIF89a".to_vec();
    g.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x80, 0, 0]); // screen, global table of 2
    g.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    g.extend_from_slice(&[0x2c, 0, 0, 0, 0, 1, 0, 1, 0, 0]); // image descriptor 1×1
    g.extend_from_slice(&[2, 2, 0x44, 0x01, 0, 0x3b]); // LZW data, trailer
    g
}

/// A little-endian TIFF whose only IFD declares 4294967295×4294967295 pixels.
pub fn tiff_bomb() -> Vec<u8> {
    let mut t = b"II*\0\x08\0\0\0".to_vec();
    t.extend_from_slice(&2u16.to_le_bytes());
    for tag in [256u16, 257] {
        t.extend_from_slice(&tag.to_le_bytes());
        t.extend_from_slice(&4u16.to_le_bytes()); // LONG
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    t.extend_from_slice(&0u32.to_le_bytes());
    t
}
