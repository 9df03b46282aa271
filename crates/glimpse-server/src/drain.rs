//! Answer early, but let the client finish sending.
//!
//! The routes that take uploads decide 401, 402, 429, 503 and most 400s from the headers and
//! the query, before reading the upload (so a stranger cannot make the server read megabytes). If
//! the server then answered and closed, a client still writing its multipart body would get a
//! reset instead of the answer: Node's `fetch` fails with `write EPIPE` and never sees the 401
//! (curl and Python `requests` happen to read it). So the body the handler leaves unread is read
//! and discarded before the answer goes out — bounded by the route group's body limit (one
//! upload for the single routes, `GLIMPSE_MAX_BATCH_BYTES` for the batch and embeddings routes,
//! the examples' limit for saved classifiers) and by the header timeout, and skipped when
//! `Content-Length` already says it is over that limit (that 413 goes out at once, and the
//! connection closes).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::state::AppState;

/// The request body, shared between the handler (which may read some or all of it) and this
/// layer (which reads what is left once the handler has answered).
struct Shared(Arc<Mutex<Option<Body>>>);

impl HttpBody for Shared {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        let slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().map(HttpBody::size_hint).unwrap_or_default()
    }
}

/// How much of an unread body [`drain_unread_body`] reads, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    /// Bytes: the same bound as the route group's body limit.
    limit: u64,
    within: Duration,
}

impl Drain {
    /// For routes whose body limit is `max_body` bytes of images, plus their multipart framing
    /// (`MULTIPART_SLACK`).
    pub fn new(state: &AppState, max_body: usize) -> Drain {
        Drain {
            limit: max_body.saturating_add(crate::limits::MULTIPART_SLACK) as u64,
            within: state.settings.header_timeout,
        }
    }
}

/// Middleware for the routes that take uploads (see the module doc).
pub async fn drain_unread_body(
    State(Drain { limit, within }): State<Drain>,
    req: Request,
    next: Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (parts, body) = req.into_parts();
    let slot = Arc::new(Mutex::new(Some(body)));
    let res = next
        .run(Request::from_parts(
            parts,
            Body::new(Shared(Arc::clone(&slot))),
        ))
        .await;
    let rest = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(body) = rest {
        if !body.is_end_stream() && declared.is_none_or(|n| n <= limit) {
            discard(body, limit, within).await;
        }
    }
    res
}

/// Read and drop up to `limit` bytes of `body`, for at most `within`.
async fn discard(mut body: Body, limit: u64, within: Duration) {
    use http_body_util::BodyExt;
    let read = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen += data.len() as u64;
                if seen > limit {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(within, read).await;
}
