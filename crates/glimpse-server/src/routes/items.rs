//! The steps of a call that handles several items (the batch routes and the embeddings routes):
//! an image's bytes from an upload, a URL (through the SSRF-safe fetcher) or a `data:` URI,
//! decoded and preprocessed for a model; one credit reservation per item; and the per-item
//! settle or refund. `classify.rs` walks one image through the same steps.
//!
//! Credits: a request that lists `n` items needs `n × GLIMPSE_CREDITS_PER_CALL` before any work
//! (402 otherwise). A batch item is reserved only once its image decoded (bad items are free) and
//! settled once answered, refunded if its forward pass failed; an embeddings request (all or
//! nothing) reserves its items together, in one ledger row.

use base64::Engine as _;
use glimpse_core::backend::PixelBatch;
use glimpse_core::preprocess::PreprocessConfig;
use glimpse_store::{Debit, DebitRequest};

use super::classify::{own_key_error, settle};
use crate::auth::ApiKey;
use crate::error::{ApiError, ErrorCode};
use crate::limits::fetches_limited;
use crate::metrics::{timed, Stage};
use crate::state::AppState;

/// Where one item's image comes from.
#[derive(Debug, Clone)]
pub enum ImageRef {
    /// Uploaded bytes, or the bytes of a `data:` URI.
    Bytes(Vec<u8>),
    /// An `http(s)://` URL for the fetcher.
    Url(String),
}

impl ImageRef {
    /// A JSON string input: a `data:image/…;base64,` URI or an `http(s)` URL. `max_bytes` bounds
    /// a data URI's decoded size (the upload limit).
    pub fn parse(raw: &str, max_bytes: usize) -> Result<ImageRef, ApiError> {
        let raw = raw.trim();
        if let Some(rest) = strip_prefix_ignore_case(raw, "data:") {
            let (meta, data) = rest
                .split_once(',')
                .ok_or_else(|| ApiError::validation("a data: URI needs a ',' before its data"))?;
            let meta = meta.to_ascii_lowercase();
            if !meta.starts_with("image/") || !meta.ends_with(";base64") {
                return Err(ApiError::validation(
                    "a data: URI must be 'data:image/<type>;base64,<data>'",
                ));
            }
            // base64 grows data by 4/3: refuse before decoding what cannot fit.
            if data.len() / 4 * 3 > max_bytes + 3 {
                return Err(ApiError::too_large(format!(
                    "a data: URI image is larger than {max_bytes} bytes"
                )));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|_| ApiError::validation("a data: URI is not valid base64"))?;
            if bytes.is_empty() {
                return Err(ApiError::validation("a data: URI holds no bytes"));
            }
            if bytes.len() > max_bytes {
                return Err(ApiError::too_large(format!(
                    "a data: URI image is larger than {max_bytes} bytes"
                )));
            }
            return Ok(ImageRef::Bytes(bytes));
        }
        Ok(ImageRef::Url(super::classify::check_url_shape(raw)?))
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The image's bytes: the upload, or a fetch (failed fetches are free, so they are what a key's
/// fetch budget counts).
pub async fn bytes_of(
    state: &AppState,
    key: &ApiKey,
    image: ImageRef,
) -> Result<Vec<u8>, ApiError> {
    match image {
        ImageRef::Bytes(b) => Ok(b),
        ImageRef::Url(u) => {
            if let Some(limit) = &state.failed_fetches {
                limit.peek(&key.id).map_err(fetches_limited)?;
            }
            match timed(&state.metrics, Stage::Fetch, state.images.fetch(&u)).await {
                Ok(bytes) => Ok(bytes),
                Err(e) => {
                    if let Some(limit) = &state.failed_fetches {
                        let _ = limit.check(&key.id);
                    }
                    Err(ApiError::from(e))
                }
            }
        }
    }
}

/// Decode and preprocess one item's image for a model (a bad image is this item's 400; a
/// fetched file that is not an image counts as a failed fetch, as on the single routes).
pub async fn decode(
    state: &AppState,
    key: &ApiKey,
    from_url: bool,
    bytes: Vec<u8>,
    preprocess: PreprocessConfig,
) -> Result<PixelBatch, ApiError> {
    match timed(
        &state.metrics,
        Stage::Decode,
        state.decoder.decode(bytes, preprocess),
    )
    .await
    {
        // What a fetched file turned out to be (HTML, a truncated PNG…) is the upstream's
        // business: a failed fetch like any other, counted and told in the same words.
        Err(e) if from_url && e.code == ErrorCode::Validation => {
            tracing::info!(error = %e, "image fetched from url did not decode");
            if let Some(limit) = &state.failed_fetches {
                let _ = limit.check(&key.id);
            }
            let generic = ApiError::validation(
                "the file at url is not an image Glimpse can decode (JPEG, PNG, WebP, GIF or BMP \
                 within the size limits)",
            );
            // A decode that ran out of time may succeed next time: keep it unstored.
            Err(if e.transient {
                generic.transient()
            } else {
                generic
            })
        }
        other => other,
    }
}

/// 402 unless the key holds `items × credits_per_call` now (checked before any work).
pub async fn can_pay(state: &AppState, key: &ApiKey, items: usize) -> Result<(), ApiError> {
    let need = state.settings.credits_per_call.saturating_mul(items as i64);
    let balance = state.store.balance(&key.id).await.map_err(own_key_error)?;
    if balance < need {
        return Err(ApiError::new(
            ErrorCode::InsufficientCredits,
            format!(
                "insufficient credits: this request has {items} items and needs {need} credits; \
                 the key holds {balance}"
            ),
        ));
    }
    Ok(())
}

/// Credits held for some items until they are answered (settled) or not (refunded).
pub struct Reservation {
    debit: Debit,
    cost: i64,
}

/// Reserve `items` items' credits in one ledger row (402 when the key ran dry since
/// `can_pay`): a batch item reserves its own, an embeddings request (all or nothing) its whole.
pub async fn reserve(
    state: &AppState,
    key: &ApiKey,
    endpoint: &str,
    model: &str,
    items: usize,
) -> Result<Reservation, ApiError> {
    let cost = state.settings.credits_per_call.saturating_mul(items as i64);
    let debit = timed(
        &state.metrics,
        Stage::Ledger,
        state.store.debit(&DebitRequest {
            key_id: key.id.clone(),
            cost,
            endpoint: endpoint.to_string(),
            model: model.to_string(),
        }),
    )
    .await
    .map_err(own_key_error)?;
    state.metrics.credits_debited(cost);
    Ok(Reservation { debit, cost })
}

/// Settle an answered reservation (retried while the store fails). `Err` when it never
/// committed: the answer must then become an error, uncharged (it is refunded here).
pub async fn charge(state: &AppState, r: &Reservation, ms: f64) -> Result<(), ApiError> {
    let debit = &r.debit;
    let settled = match settle(state, &debit.id, ms).await {
        Ok(()) => Ok(()),
        Err(e) => match state.store.reservation(&debit.id).await {
            Ok(r) if r.state == "settled" => Ok(()),
            _ => Err(e),
        },
    };
    if let Err(e) = settled {
        tracing::error!(error = %e, debit = %debit.id, "settle failed for good");
        release(state, r, 503, ms).await;
        return Err(ApiError::overloaded(
            "the key store is unavailable; this was not charged, retry later",
            1,
        ));
    }
    Ok(())
}

/// Refund a reservation whose items were not answered.
pub async fn release(state: &AppState, r: &Reservation, status: u16, ms: f64) {
    let debit = &r.debit;
    let refund = state.store.refund(&debit.id, status, ms);
    match timed(&state.metrics, Stage::Ledger, refund).await {
        Ok(_) => state.metrics.credits_refunded(r.cost),
        Err(e) => {
            tracing::error!(error = %e, debit = %debit.id, "refund failed; the reaper will retry")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_uris_and_urls() {
        let png = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG....");
        match ImageRef::parse(&format!("data:image/png;base64,{png}"), 100).unwrap() {
            ImageRef::Bytes(b) => assert_eq!(b, b"\x89PNG...."),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ImageRef::parse(&format!("DATA:Image/PNG;BASE64,{png}"), 100),
            Ok(ImageRef::Bytes(_))
        ));
        for bad in [
            "data:text/plain;base64,aGVsbG8=",
            "data:image/png,rawdata",
            "data:image/png;base64,***",
            "data:image/png;base64,",
            "data:image/png;base64",
            "ftp://example.com/a.png",
            "not a url",
        ] {
            assert_eq!(
                ImageRef::parse(bad, 100).unwrap_err().code,
                ErrorCode::Validation,
                "{bad}"
            );
        }
        let big = base64::engine::general_purpose::STANDARD.encode(vec![0u8; 200]);
        assert_eq!(
            ImageRef::parse(&format!("data:image/png;base64,{big}"), 100)
                .unwrap_err()
                .code,
            ErrorCode::PayloadTooLarge
        );
        assert!(matches!(
            ImageRef::parse(" https://example.com/a.jpg ", 100),
            Ok(ImageRef::Url(u)) if u == "https://example.com/a.jpg"
        ));
    }
}
