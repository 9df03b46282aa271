//! Shared by the binary's process-level tests: the `glimpse` command, a tiny blocking HTTP/1.1
//! client (loopback only), `glimpse serve` child processes on the fixture models, and PostgreSQL
//! schemas via `psql`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The built `glimpse` binary, kept off the Hub and away from the caller's config file and
/// sharding variables.
pub fn glimpse() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_glimpse"));
    // Never reach for the Hub from a test.
    c.env("HF_HUB_OFFLINE", "1")
        .env_remove("GLIMPSE_CONFIG")
        .env_remove("GLIMPSE_SHARDS")
        .env_remove("JOB_COMPLETION_INDEX");
    c
}

/// Fail the test, with the child's stderr, unless it exited 0.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `glimpse keys ARGS` against `database_url`.
pub fn keys(database_url: &str, args: &[&str]) -> Output {
    glimpse()
        .arg("keys")
        .args(args)
        .env("GLIMPSE_DATABASE_URL", database_url)
        .output()
        .unwrap()
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    assert!(addr.ip().is_loopback(), "tests talk to loopback only");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + size]);
        b = &b[end + 2 + size + 2..];
    }
}

/// A multipart upload of `image` as the seed's clients send it.
pub fn upload(addr: SocketAddr, path: &str, key: &str, image: &[u8]) -> std::io::Result<Response> {
    let boundary = "glimpsetestboundary7d3a";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"image.png\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(image);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    request(
        addr,
        "POST",
        path,
        &[("X-API-Key", key), ("Content-Type", &ct)],
        &body,
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Server {
    pub addr: SocketAddr,
    pub child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `glimpse serve` on the tiny fixture models, waiting until `/readyz` answers 200.
pub fn start_server(database_url: &str, extra_env: &[(&str, &str)]) -> Server {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_glimpse"));
    cmd.arg("serve")
        .env("GLIMPSE_BIND", addr.to_string())
        .env("GLIMPSE_DATABASE_URL", database_url)
        .env("GLIMPSE_CLIP_MODEL", fixtures().join("models/clip-tiny"))
        .env("GLIMPSE_VIT_MODEL", fixtures().join("models/vit-tiny"))
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("GLIMPSE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn glimpse serve");
    let mut server = Server { addr, child };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = request(addr, "GET", "/readyz", &[], b"") {
            if r.status == 200 {
                return server;
            }
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("glimpse serve exited early: {status}");
        }
        assert!(Instant::now() < deadline, "server not ready within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `glimpse keys create --credits N --json` → (id, key).
pub fn create_key(database_url: &str, credits: i64) -> (String, String) {
    let out = keys(
        database_url,
        &["create", "--json", "--credits", &credits.to_string()],
    );
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["id"].as_str().unwrap().to_string(),
        v["key"].as_str().unwrap().to_string(),
    )
}

pub const PG_ENV: &str = "GLIMPSE_TEST_POSTGRES_URL";

/// A fresh schema on the test PostgreSQL, as a database URL whose connections use it. `None` when
/// the variable is unset; panics (the test fails loudly) when it is set but unusable.
pub fn postgres_schema_url() -> Option<(String, String)> {
    let base = std::env::var(PG_ENV).ok()?;
    let schema = format!(
        "glimpse_bin_{:x}",
        std::process::id() as u64 * 1_000_003
            + Instant::now().elapsed().subsec_nanos() as u64
            + rand_suffix()
    );
    psql(&base, &format!("CREATE SCHEMA {schema}"));
    let sep = if base.contains('?') { '&' } else { '?' };
    Some((
        format!("{base}{sep}options=-c%20search_path%3D{schema}"),
        schema,
    ))
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Run one SQL statement with `psql`, returning its unaligned output.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-tA", "-c", sql])
        .output()
        .unwrap_or_else(|e| panic!("{PG_ENV} is set but psql cannot run: {e}"));
    assert!(
        out.status.success(),
        "{PG_ENV} is set but psql failed on `{sql}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
