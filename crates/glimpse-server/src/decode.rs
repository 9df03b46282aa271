//! Decoding strangers' images under three bounds: a memory budget, a pool of decode threads, and
//! a time limit.
//!
//! - **Memory**: before any pixel is allocated, `glimpse_core::image::decode_cost` reads the
//!   header and says how many bytes the decode can hold at its peak (pixel buffers, the copy
//!   rotation or flattening makes, libjpeg's coefficients for a progressive JPEG); with
//!   `GLIMPSE_DECODE=fast` a JPEG's pixel buffers are those of its scaled decode. The decode is
//!   admitted against `GLIMPSE_DECODE_MEMORY_MB` (a semaphore of MiB): an image that alone needs
//!   more is refused (400), one that must wait longer than its time limit is shed (503
//!   `OVERLOADED`, `Retry-After`). So any mix of uploads holds at most the budget in decoders.
//! - **Threads**: at most `GLIMPSE_DECODE_THREADS` decodes run at once. Both permits move into
//!   the blocking task and are released when the work really ends, so a decode that outlives
//!   its caller's time limit still occupies its slot: abandoned decodes cannot pile up.
//! - **Time**: `GLIMPSE_DECODE_TIMEOUT_SECS` from arrival, waits included. The decoders cannot be
//!   interrupted mid-call, so what could run long is refused from the header instead: the pixel
//!   caps, and a cap on JPEG scans (`DecodeLimits::max_jpeg_scans`), whose count sets a
//!   progressive JPEG's cost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glimpse_core::backend::PixelBatch;
use glimpse_core::image::{DecodeLimits, DecodeMode};
use glimpse_core::preprocess::PreprocessConfig;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

const MIB: u64 = 1 << 20;

pub struct DecodeGate {
    threads: Arc<Semaphore>,
    budget: Arc<Semaphore>,
    budget_mib: u32,
    limits: DecodeLimits,
    /// `GLIMPSE_DECODE`: a fast decode is admitted for its scaled size.
    mode: DecodeMode,
    timeout: Duration,
    /// Bytes admitted and not yet released (`glimpse_decode_memory_bytes`).
    in_use: Arc<AtomicU64>,
}

/// Returns the admitted bytes to the gauge when the decode's task ends, however it ends.
struct Admitted {
    bytes: u64,
    in_use: Arc<AtomicU64>,
    _memory: OwnedSemaphorePermit,
    _thread: OwnedSemaphorePermit,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.in_use.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl DecodeGate {
    pub fn new(threads: usize, budget_mib: u32, limits: DecodeLimits, timeout: Duration) -> Self {
        DecodeGate {
            threads: Arc::new(Semaphore::new(threads.max(1))),
            budget: Arc::new(Semaphore::new(budget_mib.max(1) as usize)),
            budget_mib: budget_mib.max(1),
            limits,
            mode: DecodeMode::Exact,
            timeout,
            in_use: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Decode JPEGs in `mode` (the default is [`DecodeMode::Exact`]).
    pub fn with_mode(mut self, mode: DecodeMode) -> Self {
        self.mode = mode;
        self
    }

    /// Bytes of decode memory admitted now.
    pub fn memory_in_use(&self) -> u64 {
        self.in_use.load(Ordering::Relaxed)
    }

    pub fn memory_budget(&self) -> u64 {
        u64::from(self.budget_mib) * MIB
    }

    /// Decode and preprocess `bytes` for a model with preprocessing `cfg`. A bad image is a 400
    /// (including a decoder panic and a decode over the time limit); a full budget or pool past
    /// the time limit is a 503 with `Retry-After`.
    pub async fn decode(
        &self,
        bytes: Vec<u8>,
        cfg: PreprocessConfig,
    ) -> Result<PixelBatch, ApiError> {
        let deadline = Instant::now() + self.timeout;
        let limits = self.limits;
        let size = cfg.decode_size(self.mode);
        // The header read is cheap but walks the whole file for a JPEG: off the async threads.
        let (bytes, cost) = match tokio::task::spawn_blocking(move || {
            let cost = glimpse_core::image::decode_cost_sized(&bytes, &limits, size);
            (bytes, cost)
        })
        .await
        {
            Ok((bytes, Ok(cost))) => (bytes, cost),
            Ok((_, Err(e))) => return Err(ApiError::from(e)),
            Err(join) => {
                tracing::warn!(error = %join, "image header reader panicked");
                return Err(ApiError::validation("the image could not be decoded"));
            }
        };
        let mib = cost.div_ceil(MIB).max(1);
        if mib > u64::from(self.budget_mib) {
            return Err(ApiError::validation(format!(
                "this image needs about {mib} MB to decode; the server decodes at most {} MB at \
                 once (GLIMPSE_DECODE_MEMORY_MB): send it smaller",
                self.budget_mib
            )));
        }
        let busy = || ApiError::overloaded("the image decoders are busy; retry shortly", 1);
        let memory = tokio::time::timeout_at(
            deadline.into(),
            Arc::clone(&self.budget).acquire_many_owned(mib as u32),
        )
        .await
        .map_err(|_| busy())?
        .map_err(|_| busy())?;
        let thread =
            tokio::time::timeout_at(deadline.into(), Arc::clone(&self.threads).acquire_owned())
                .await
                .map_err(|_| busy())?
                .map_err(|_| busy())?;
        self.in_use.fetch_add(cost, Ordering::Relaxed);
        let admitted = Admitted {
            bytes: cost,
            in_use: Arc::clone(&self.in_use),
            _memory: memory,
            _thread: thread,
        };
        let job = tokio::task::spawn_blocking(move || {
            let _admitted = admitted;
            let img = glimpse_core::image::decode_sized(&bytes, &limits, size)?;
            drop(bytes);
            let (h, w) = cfg.output_size();
            let data = cfg.preprocess(&img);
            if data.len() != 3 * h * w {
                return Err(glimpse_core::CoreError::internal(format!(
                    "preprocess gave {} values for {h}x{w}",
                    data.len()
                )));
            }
            Ok(PixelBatch::single(data, h, w))
        });
        match tokio::time::timeout_at(deadline.into(), job).await {
            Ok(Ok(Ok(px))) => Ok(px),
            Ok(Ok(Err(e))) => Err(ApiError::from(e)),
            Ok(Err(join)) => {
                tracing::warn!(error = %join, "image decoder panicked");
                Err(ApiError::validation("the image could not be decoded"))
            }
            // The machine may be less busy next time: never stored for an Idempotency-Key replay.
            Err(_) => Err(ApiError::validation("the image took too long to decode").transient()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([9, 99, 199]));
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    fn gate(budget_mib: u32) -> DecodeGate {
        DecodeGate::new(
            2,
            budget_mib,
            DecodeLimits::default(),
            Duration::from_millis(300),
        )
    }

    #[tokio::test]
    async fn an_image_over_the_whole_budget_is_refused_before_decoding() {
        // 2000 x 2000 RGB: 12 MB decoded + 12 MB RGB8 + slack, over a 16 MiB budget.
        let e = gate(16)
            .decode(png(2000, 2000), PreprocessConfig::clip(32))
            .await
            .unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::Validation);
        assert!(
            e.message.contains("GLIMPSE_DECODE_MEMORY_MB"),
            "{}",
            e.message
        );
    }

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 99]));
        let mut out = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut out),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
        out
    }

    #[tokio::test]
    async fn fast_mode_admits_a_jpeg_for_its_scaled_size() {
        // 2000 x 2000: ~40 MB in full, over a 16 MiB budget; for a 32-pixel model fast mode
        // decodes it at 1/8 (250 x 250, still ≥ 2 × 32), well under.
        let e = gate(16)
            .decode(jpeg(2000, 2000), PreprocessConfig::clip(32))
            .await
            .unwrap_err();
        assert!(
            e.message.contains("GLIMPSE_DECODE_MEMORY_MB"),
            "{}",
            e.message
        );
        let px = gate(16)
            .with_mode(DecodeMode::Fast)
            .decode(jpeg(2000, 2000), PreprocessConfig::clip(32))
            .await
            .unwrap();
        assert_eq!(px.data.len(), 3 * 32 * 32);
    }

    #[tokio::test]
    async fn a_full_budget_sheds_with_retry_after_and_frees_after_use() {
        let g = gate(64);
        // Hold most of the budget as a running decode would.
        let held = Arc::clone(&g.budget).acquire_many_owned(60).await.unwrap();
        let e = g
            .decode(png(1000, 1000), PreprocessConfig::clip(32))
            .await
            .unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::Overloaded);
        assert_eq!(e.retry_after, Some(1));
        drop(held);
        g.decode(png(1000, 1000), PreprocessConfig::clip(32))
            .await
            .unwrap();
        assert_eq!(g.memory_in_use(), 0);
        assert_eq!(g.budget.available_permits(), 64);
    }
}
