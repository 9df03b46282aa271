//! Loopback-only test servers for the fetcher tests: a raw HTTP/1.1 server whose every byte the
//! test chooses (lying lengths, trickled bodies, gzip headers), and a canary that only counts
//! accepted connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A 1×1 PNG: what a "good image" fetch returns byte for byte.
pub const PNG_1X1: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0,
    0x1f, 0x00, 0x05, 0x00, 0x01, 0xff, 0x89, 0x99, 0x3d, 0x1d, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// What the raw server does with one request.
pub enum Reply {
    /// Write these bytes, then close.
    Bytes(Vec<u8>),
    /// Write `head`, then one byte every `every`, forever.
    Trickle { head: Vec<u8>, every: Duration },
    /// Write `head` (maybe empty), then keep the connection open without writing.
    Hang { head: Vec<u8> },
}

/// A full HTTP/1.1 response; `Content-Length` is added unless `headers` name one or `length` is
/// false (then the body ends when the connection closes).
pub fn response(status: u16, headers: &[(&str, &str)], body: &[u8], length: bool) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    let named = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    if length && !named {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

pub fn redirect(status: u16, location: &str) -> Reply {
    Reply::Bytes(response(status, &[("Location", location)], b"", true))
}

pub struct RawServer {
    pub addr: SocketAddr,
    /// Request heads received, lower-cased, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl RawServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    pub fn hits(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
    pub fn last_request(&self) -> String {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

/// Serve on 127.0.0.1:0; `handler` gets the request path.
pub async fn raw_server<F>(handler: F) -> RawServer
where
    F: Fn(&str) -> Reply + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let handler = Arc::new(handler);
    let log = Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = Arc::clone(&handler);
            let log = Arc::clone(&log);
            tokio::spawn(async move { answer(stream, handler, log).await });
        }
    });
    RawServer { addr, requests }
}

async fn answer<F>(mut stream: TcpStream, handler: Arc<F>, log: Arc<Mutex<Vec<String>>>)
where
    F: Fn(&str) -> Reply + Send + Sync + 'static,
{
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    log.lock().unwrap().push(head);
    match handler(&path) {
        Reply::Bytes(bytes) => {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
        }
        Reply::Trickle { head, every } => {
            if stream.write_all(&head).await.is_err() {
                return;
            }
            loop {
                tokio::time::sleep(every).await;
                if stream.write_all(b"x").await.is_err() {
                    return;
                }
            }
        }
        Reply::Hang { head } => {
            let _ = stream.write_all(&head).await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }
}

/// A listener that records every connection it accepts and answers none.
pub struct Canary {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Canary {
    /// On 127.0.0.1.
    pub async fn start() -> Canary {
        Canary::bind("127.0.0.1:0").await.unwrap()
    }

    /// On `addr` (say `[::1]:0`); `None` when it cannot be bound (no IPv6 in a container).
    pub async fn bind(addr: &str) -> Option<Canary> {
        let listener = TcpListener::bind(addr).await.ok()?;
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Some(Canary { addr, accepted })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}
