//! Request ids: every answer carries `X-Request-Id`, and every log line written while handling
//! the request is inside a `request` span holding it (so JSON logs show it under `span`/`spans`).
//!
//! A client's own id is kept when it is sane (1 to 128 characters of `A-Za-z0-9._:-`), so a
//! proxy's id follows the call through; anything else is replaced by a fresh UUID v4, never
//! echoed (it would be a header/log injection vector).

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

const MAX_LEN: usize = 128;

/// The id of the request being handled, in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// The incoming id if it is safe to keep.
pub fn accept(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= MAX_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then(|| s.to_string())
}

/// A random UUID v4 (`8-4-4-4-12` lowercase hex).
pub fn generate() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Middleware, outermost: picks the id, runs the request inside its span, logs the outcome
/// and stamps the header on the answer (errors included).
pub async fn layer(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(accept)
        .unwrap_or_else(generate);
    let header = HeaderValue::from_str(&id).expect("request ids are visible ASCII");
    req.headers_mut()
        .insert(REQUEST_ID_HEADER.clone(), header.clone());
    req.extensions_mut().insert(RequestId(id.clone()));
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| crate::metrics::UNMATCHED_ROUTE.to_string());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        route = %route,
    );
    let started = std::time::Instant::now();
    let mut res = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!(
            status = res.status().as_u16(),
            latency_ms = (started.elapsed().as_secs_f64() * 1e4).round() / 10.0,
            "request finished"
        )
    });
    res.headers_mut().insert(REQUEST_ID_HEADER.clone(), header);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_ids_only() {
        let ok = HeaderValue::from_static("abc-123_x.y:z");
        assert_eq!(accept(&ok).as_deref(), Some("abc-123_x.y:z"));
        for bad in ["", "a b", "a\"b", "<script>", "é"] {
            if let Ok(v) = HeaderValue::from_str(bad) {
                assert_eq!(accept(&v), None, "{bad:?}");
            }
        }
        let long = HeaderValue::from_str(&"a".repeat(MAX_LEN + 1)).unwrap();
        assert_eq!(accept(&long), None);
        let max = HeaderValue::from_str(&"a".repeat(MAX_LEN)).unwrap();
        assert!(accept(&max).is_some());
    }

    #[test]
    fn generated_ids_are_uuid_v4() {
        let a = generate();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!("89ab".contains(&a[19..20]), "{a}");
        assert!(accept(&HeaderValue::from_str(&a).unwrap()).is_some());
        assert_ne!(a, generate());
    }
}
