//! The accept loop. `axum::serve` installs no timer in hyper, so hyper's HTTP/1 header read
//! timeout never fires and a client that trickles its headers holds a connection forever
//! (slowloris). This loop serves each connection with hyper-util's auto (HTTP/1 + HTTP/2)
//! builder with a timer and a header timeout, and around each connection it enforces what
//! hyper does not:
//!
//! - a **first-byte timeout**: a connection that sends nothing is closed (hyper-util's version
//!   sniffing would wait for its first bytes forever);
//! - an **idle timeout** for HTTP/1 keep-alive and HTTP/2 alike: a connection with no request in
//!   flight for that long is shut down gracefully (HTTP/2 also sends keep-alive pings);
//! - a **cap on open connections**, below the open-file limit: at the cap, connections with no
//!   request in flight are closed to make room; if none frees a slot quickly the newcomer gets a
//!   503 and is closed, and the loop never spins on `accept` errors;
//! - **shutdown in two steps**: a drain period during which everything is still served (while
//!   `/readyz` answers 503), then no more accepting, idle connections closed at once, calls in
//!   flight finished within a grace period;
//! - **JSON bodies on hyper's own error answers** (400/414/431 for requests it cannot parse,
//!   written before any service runs), via [`JsonErrors`] around the socket.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{Request, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use crate::error::{ApiError, ErrorCode};

/// What the accept loop enforces, from `ServerConfig`.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub header_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub http2_keep_alive: Duration,
    pub max_connections: usize,
    pub drain: Duration,
    pub grace: Duration,
    /// Descriptors kept out of the connection cap (see [`FD_RESERVE`]).
    pub fd_reserve: usize,
}

impl ConnLimits {
    pub fn from_config(c: &crate::config::ServerConfig) -> Self {
        let secs = Duration::from_secs;
        ConnLimits {
            header_timeout: secs(c.listen.header_timeout_secs),
            first_byte_timeout: secs(c.listen.first_byte_timeout_secs),
            idle_timeout: secs(c.listen.idle_timeout_secs),
            http2_keep_alive: secs(c.listen.http2_keep_alive_secs),
            max_connections: c.listen.max_connections,
            drain: secs(c.listen.shutdown_drain_secs),
            grace: secs(c.listen.shutdown_grace_secs),
            fd_reserve: FD_RESERVE.saturating_add(c.limits.max_in_flight),
        }
    }
}

/// How long a connection that was told to close may take to do so once it has no request in
/// flight (an HTTP/2 peer answering GOAWAY's ping) before it is dropped.
const LINGER: Duration = Duration::from_millis(500);
/// The same when closed to make room at the connection cap.
const LINGER_AT_CAP: Duration = Duration::from_millis(50);
/// How long a connection over the cap waits for a slot before it is refused.
const OVER_CAP_WAIT: Duration = Duration::from_millis(100);
/// While closing with calls in flight, how often a connection looks whether they are done.
const CLOSING_POLL: Duration = Duration::from_millis(50);
/// Descriptors kept for everything but client connections (the store's pool, model files,
/// logs, the runtime), on top of one per in-flight `?url=` fetch.
pub const FD_RESERVE: usize = 64;

/// What an over-the-cap connection is told before it is closed.
const OVER_CAP_ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 70\r\n\r\n{\"message\":\"too many open connections; retry later\",\"code\":\"OVERLOADED\"}";

/// Where the server is in its life; every connection task watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Shut down gracefully: idle connections now, busy ones after their calls.
    Closing,
    /// The grace period is over: drop everything.
    Abort,
}

/// The connection cap that fits `soft_limit` open files, keeping `reserve` for the rest.
pub fn cap_for_fd_limit(requested: usize, soft_limit: Option<u64>, reserve: usize) -> usize {
    match soft_limit {
        Some(soft) => {
            let room = usize::try_from(soft)
                .unwrap_or(usize::MAX)
                .saturating_sub(reserve);
            requested.min(room.max(1))
        }
        None => requested,
    }
}

/// The open-file soft limit, raised towards the hard limit when `want` needs more (as Go's
/// runtime does at start). `None` where there is no such limit or it cannot be read.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // `rlim_t` is u64 on Linux, not on every Unix.
fn fd_soft_limit(want: u64) -> Option<u64> {
    // SAFETY: getrlimit/setrlimit only read/write the struct passed by pointer.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur == libc::RLIM_INFINITY {
            return None;
        }
        let cur = lim.rlim_cur as u64;
        if cur < want {
            let max = if lim.rlim_max == libc::RLIM_INFINITY {
                u64::MAX
            } else {
                lim.rlim_max as u64
            };
            let raised = libc::rlimit {
                rlim_cur: want.min(max) as libc::rlim_t,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return Some(want.min(max));
            }
        }
        Some(cur)
    }
}

#[cfg(not(unix))]
fn fd_soft_limit(_want: u64) -> Option<u64> {
    None
}

/// The connection cap to run with: `requested`, lowered (with a warning) to what the open-file
/// limit leaves after `reserve`, so `accept` never fails for lack of descriptors because of
/// client connections.
pub fn effective_cap(requested: usize, reserve: usize) -> usize {
    let want = requested.saturating_add(reserve) as u64;
    let cap = cap_for_fd_limit(requested, fd_soft_limit(want), reserve);
    if cap < requested {
        tracing::warn!(
            requested,
            cap,
            "GLIMPSE_MAX_CONNECTIONS lowered to fit the open-file limit (ulimit -n)"
        );
    }
    cap
}

/// Serve `app` on `listener` until `shutdown` resolves, then drain, close and return.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.http2_keep_alive))
        .keep_alive_timeout(limits.http2_keep_alive);
    let cap = effective_cap(limits.max_connections, limits.fd_reserve);
    let permits = Arc::new(Semaphore::new(cap));
    let (phase_tx, _) = watch::channel(Phase::Serving);
    let (pressure_tx, _) = watch::channel(0u64);
    let limits = Arc::new(limits);
    tokio::pin!(shutdown);
    let mut drain_end: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown, if drain_end.is_none() => {
                tracing::info!(drain_secs = limits.drain.as_secs(), "draining: still serving, /readyz answers 503");
                drain_end = Some(Box::pin(tokio::time::sleep(limits.drain)));
                continue;
            }
            _ = async { drain_end.as_mut().expect("guarded").await }, if drain_end.is_some() => break,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: make room, and back off instead of
                // spinning.
                tracing::warn!(error = %e, "accept failed");
                pressure_tx.send_modify(|n| *n = n.wrapping_add(1));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // At the cap: ask the idle connections to go, and wait a moment for one.
                pressure_tx.send_modify(|n| *n = n.wrapping_add(1));
                match tokio::time::timeout(OVER_CAP_WAIT, Arc::clone(&permits).acquire_owned())
                    .await
                {
                    Ok(Ok(p)) => p,
                    _ => {
                        tracing::debug!(%peer, cap, "connection refused: at the connection cap");
                        // Best effort, never waits: the loop must keep accepting.
                        let _ = stream.try_write(OVER_CAP_ANSWER);
                        continue;
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            app: app.clone(),
            builder: builder.clone(),
            limits: Arc::clone(&limits),
            phase: phase_tx.subscribe(),
            pressure: pressure_tx.subscribe(),
            _permit: permit,
        };
        tokio::spawn(conn.serve(stream, peer));
    }
    drop(listener);
    tracing::info!("shutting down: closing idle connections, finishing calls in flight");
    phase_tx.send_replace(Phase::Closing);
    let all_closed = permits.acquire_many(u32::try_from(cap).unwrap_or(u32::MAX));
    if tokio::time::timeout(limits.grace, all_closed)
        .await
        .is_err()
    {
        tracing::warn!("calls still running after the shutdown grace period; stopping anyway");
        phase_tx.send_replace(Phase::Abort);
    }
    Ok(())
}

/// One accepted connection and what it needs; holds its slot under the cap until dropped.
struct Conn {
    app: Router,
    builder: Builder<TokioExecutor>,
    limits: Arc<ConnLimits>,
    phase: watch::Receiver<Phase>,
    pressure: watch::Receiver<u64>,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    async fn serve(mut self, stream: TcpStream, peer: std::net::SocketAddr) {
        // Until its first byte a connection costs a descriptor and gives nothing: bounded by
        // the first-byte timeout, and the first to go at the cap or at shutdown.
        let mut probe = [0u8; 1];
        tokio::select! {
            r = tokio::time::timeout(self.limits.first_byte_timeout, stream.peek(&mut probe)) => {
                match r {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                }
            }
            _ = self.phase.wait_for(|p| *p != Phase::Serving) => return,
            _ = self.pressure.changed() => return,
        }
        let activity = Arc::new(Activity::new());
        let service = TowerToHyperService::new(Tracked {
            app: self.app.clone(),
            activity: Arc::clone(&activity),
        });
        let io = TokioIo::new(JsonErrors::new(stream));
        let conn = self.builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        // Set once the connection was told to close, with how long it may linger once idle.
        let mut closing: Option<(Instant, Duration)> = None;
        let mut pressure_open = true;
        loop {
            let (active, last) = activity.snapshot();
            let now = Instant::now();
            let wake = match closing {
                None if active > 0 => now + self.limits.idle_timeout,
                None => last + self.limits.idle_timeout,
                Some(_) if active > 0 => now + CLOSING_POLL,
                Some((since, linger)) => since.max(last) + linger,
            };
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    let (active, last) = activity.snapshot();
                    match closing {
                        None if active == 0 && last.elapsed() >= self.limits.idle_timeout => {
                            tracing::debug!(%peer, "closing an idle connection");
                            conn.as_mut().graceful_shutdown();
                            closing = Some((Instant::now(), LINGER));
                        }
                        Some((since, linger)) if active == 0 && since.max(last).elapsed() >= linger => {
                            return;
                        }
                        _ => {}
                    }
                }
                changed = self.phase.changed() => {
                    // The sender is gone only once the server has returned.
                    let phase = if changed.is_ok() { *self.phase.borrow_and_update() } else { Phase::Abort };
                    match phase {
                        Phase::Serving => {}
                        Phase::Closing => if closing.is_none() {
                            conn.as_mut().graceful_shutdown();
                            closing = Some((Instant::now(), LINGER));
                        },
                        Phase::Abort => return,
                    }
                }
                changed = self.pressure.changed(), if pressure_open && closing.is_none() => {
                    if changed.is_err() {
                        pressure_open = false;
                    } else if activity.snapshot().0 == 0 {
                        conn.as_mut().graceful_shutdown();
                        closing = Some((Instant::now(), LINGER_AT_CAP));
                    }
                }
            }
        }
    }
}

/// Requests in flight on one connection and when the last one ended (or the connection began).
struct Activity {
    active: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            active: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }
    }

    fn snapshot(&self) -> (usize, Instant) {
        let last = *self.last.lock().unwrap_or_else(|p| p.into_inner());
        (self.active.load(Ordering::SeqCst), last)
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.active.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(self))
    }
}

/// One request in flight, until its response body is done (or dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The app, counting each request on its connection until the response body is sent.
#[derive(Clone)]
struct Tracked {
    app: Router,
    activity: Arc<Activity>,
}

impl<B> tower::Service<Request<B>> for Tracked
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let guard = self.activity.begin();
        let call = self.app.clone().oneshot(req);
        Box::pin(async move {
            let res = call.await?;
            Ok(res.map(|body| {
                Body::new(Guarded {
                    inner: body,
                    _guard: guard,
                })
            }))
        })
    }
}

/// A response body that holds its request's [`InFlight`] until it is done.
struct Guarded {
    inner: Body,
    _guard: InFlight,
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, with hyper's own error answers rewritten. When hyper cannot parse a request it
/// writes `400`, `414` or `431` with an empty body (`content-length: 0`) and closes; no service
/// sees it, so no layer can give it the `{message, code}` body. Such an answer is recognised as
/// a whole write of a head with one of those statuses and `content-length: 0` (hyper writes it
/// in one buffer; our own error answers always have a JSON body) and replaced by the same
/// status with the JSON body.
struct JsonErrors<S> {
    inner: S,
    /// A rewritten answer still to be written, and how much of it is.
    pending: Vec<u8>,
    written: usize,
}

impl<S> JsonErrors<S> {
    fn new(inner: S) -> Self {
        JsonErrors {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> JsonErrors<S> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if let Some(answer) = json_error_answer(buf) {
            this.pending = answer;
            this.written = 0;
            // Written now or on the next write/flush/shutdown; hyper sees its bytes taken.
            if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// If `buf` is exactly one of hyper's empty error answers, the same answer with the JSON body.
fn json_error_answer(buf: &[u8]) -> Option<Vec<u8>> {
    let version = buf.get(..9)?;
    if version != b"HTTP/1.1 " && version != b"HTTP/1.0 " {
        return None;
    }
    // One head and nothing after it.
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != buf.len() {
        return None;
    }
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.get(9..12)?.parse().ok()?;
    let message = match status {
        400 => "malformed HTTP request",
        414 => "request URI too long",
        431 => "request header fields too large",
        _ => return None,
    };
    let mut empty = false;
    let mut kept = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let name = name.trim().to_ascii_lowercase();
        match name.as_str() {
            "content-length" => empty = value.trim() == "0",
            "content-type" | "transfer-encoding" => return None,
            "connection" => {}
            _ => kept.push(line),
        }
    }
    if !empty {
        return None;
    }
    let code = ErrorCode::for_status(axum::http::StatusCode::from_u16(status).ok()?);
    let body = serde_json::to_vec(&ApiError::new(code, message).body()).ok()?;
    let mut out = Vec::with_capacity(200 + body.len());
    out.extend_from_slice(status_line.as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\nconnection: close\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    for line in kept {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_empty_error_heads_get_json_bodies_and_nothing_else_does() {
        let out = json_error_answer(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n",
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("date: Thu"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["code"], "VALIDATION_ERROR");
        for untouched in [
            // Our own answers: a body follows, or a type is set.
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
            b"",
        ] {
            assert!(json_error_answer(untouched).is_none(), "{untouched:?}");
        }
    }

    #[test]
    fn the_cap_fits_the_open_file_limit() {
        assert_eq!(cap_for_fd_limit(1024, None, 64), 1024);
        assert_eq!(cap_for_fd_limit(1024, Some(1_048_576), 64), 1024);
        assert_eq!(cap_for_fd_limit(1024, Some(256), 64 + 64), 128);
        assert_eq!(cap_for_fd_limit(1024, Some(10), 64), 1);
    }
}
