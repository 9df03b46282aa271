//! Back-pressure: a global in-flight limit that sheds with 503 instead of queueing without bound,
//! and a per-key token bucket (429). Both answer with `Retry-After`.
//!
//! The rate limit lives in this process: with N replicas a key gets up to N× the rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::error::{ApiError, ErrorCode};

/// Multipart framing around the image: boundaries, part headers, the small text fields (what a
/// body may hold beyond `GLIMPSE_MAX_UPLOAD_BYTES`).
pub(crate) const MULTIPART_SLACK: usize = 64 * 1024;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token bucket per key id: `rate` tokens a second, at most `burst` saved up.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Buckets kept before idle, full ones are dropped (a full bucket is the same as no bucket).
const PRUNE_ABOVE: usize = 10_000;

impl RateLimiter {
    pub fn new(rate_per_second: f64, burst: u32) -> Self {
        RateLimiter {
            rate: rate_per_second,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one token for `key`, or say how many whole seconds until one is there.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        self.check_at(key, Instant::now())
    }

    /// Whether `key` has a token now, without taking it.
    pub fn peek(&self, key: &str) -> Result<(), u64> {
        self.take_at(key, Instant::now(), false)
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), u64> {
        self.take_at(key, now, true)
    }

    fn take_at(&self, key: &str, now: Instant, take: bool) -> Result<(), u64> {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > PRUNE_ABOVE {
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = map.entry(key.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            if take {
                b.tokens -= 1.0;
            }
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / self.rate;
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

/// A key whose `?url=` fetches keep failing (`GLIMPSE_FAILED_FETCHES_PER_MINUTE`).
pub fn fetches_limited(retry_after: u64) -> ApiError {
    limited(
        "too many failed url fetches for this API key; retry after the Retry-After seconds",
        retry_after,
    )
}

pub fn rate_limited(retry_after: u64) -> ApiError {
    limited(
        "rate limit for this API key reached; retry after the Retry-After seconds",
        retry_after,
    )
}

fn limited(message: &str, retry_after: u64) -> ApiError {
    ApiError {
        retry_after: Some(retry_after),
        ..ApiError::new(ErrorCode::RateLimited, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_steady_rate() {
        let rl = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rl.check_at("k", t0).is_ok());
        }
        assert_eq!(rl.check_at("k", t0), Err(1));
        // Another key has its own bucket.
        assert!(rl.check_at("other", t0).is_ok());
        // Half a second at 2/s gives one token back.
        assert!(rl.check_at("k", t0 + Duration::from_millis(500)).is_ok());
        assert!(rl.check_at("k", t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn peek_takes_nothing() {
        let rl = RateLimiter::new(1.0, 1);
        for _ in 0..3 {
            assert!(rl.peek("k").is_ok());
        }
        assert!(rl.check("k").is_ok());
        assert!(rl.peek("k").is_err());
    }

    #[test]
    fn retry_after_rounds_up_slow_rates() {
        let rl = RateLimiter::new(0.1, 1);
        let t0 = Instant::now();
        assert!(rl.check_at("k", t0).is_ok());
        assert_eq!(rl.check_at("k", t0), Err(10));
    }
}
