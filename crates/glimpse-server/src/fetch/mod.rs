//! The SSRF-safe image URL fetcher behind `?url=`.
//!
//! Every hop (the URL and each redirect) is checked before any connection: http/https only, no
//! userinfo, and no connection to a private or reserved address — IP literals here
//! (`target::check_parsed`), names inside reqwest's resolver hook (`resolve::GuardedResolve`) so
//! the checked addresses are the ones connected to. Redirects are followed by hand (at most
//! `max_redirects`), the body is read chunk by chunk under a byte cap, nothing is decompressed,
//! proxies from the environment are ignored, and the whole fetch runs under one deadline.
//! Error messages are meant for the API client: they never carry library error text.

mod addr;
mod resolve;
mod target;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ACCEPT_ENCODING, LOCATION};
use reqwest::StatusCode;
use url::Url;

pub use addr::{forbidden_reason, AddressPolicy};
pub use resolve::{BoxFuture, NameResolver, StaticResolver, SystemResolver};
pub use target::check_url;

use resolve::{GuardedResolve, Refused, Unresolved};
use target::{check_parsed, Subject};

/// How a `Fetcher` behaves. `Default` is the production setting.
#[derive(Clone)]
pub struct FetchOptions {
    /// `GLIMPSE_ALLOW_PRIVATE_URLS`: lifts the address rule only.
    pub allow_private: bool,
    /// Body cap in bytes (the upload limit).
    pub max_bytes: u64,
    /// Limit for each TCP (and TLS) connect.
    pub connect_timeout: Duration,
    /// Limit for the whole fetch: resolution, every redirect hop and the body.
    pub total_timeout: Duration,
    /// Redirects followed before giving up.
    pub max_redirects: usize,
    /// System DNS by default; tests inject a `StaticResolver`.
    pub resolver: Arc<dyn NameResolver>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            allow_private: false,
            max_bytes: 20_000_000,
            connect_timeout: Duration::from_secs(3),
            total_timeout: Duration::from_secs(10),
            max_redirects: 3,
            resolver: Arc::new(SystemResolver),
        }
    }
}

impl fmt::Debug for FetchOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchOptions")
            .field("allow_private", &self.allow_private)
            .field("max_bytes", &self.max_bytes)
            .field("connect_timeout", &self.connect_timeout)
            .field("total_timeout", &self.total_timeout)
            .field("max_redirects", &self.max_redirects)
            .finish_non_exhaustive()
    }
}

/// Why a fetch failed. `Display` is a client-facing sentence; the HTTP layer maps `TooLarge` to
/// 413 and everything else to 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    InvalidUrl(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the image at url is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Upstream(String),
}

/// Fetches image bytes from client-supplied URLs. Build once and share: it owns the connection
/// pool.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
    opts: FetchOptions,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher")
            .field("policy", &self.policy)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// The address rule follows `opts.allow_private`.
    pub fn new(opts: FetchOptions) -> Self {
        let policy = if opts.allow_private {
            AddressPolicy::allow_private()
        } else {
            AddressPolicy::public_only()
        };
        Self::with_policy(opts, policy)
    }

    /// An explicit address rule (tests use `AddressPolicy::public_only().allowing(addr)`);
    /// `opts.allow_private` is ignored.
    pub fn with_policy(opts: FetchOptions, policy: AddressPolicy) -> Self {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config())
            .dns_resolver(GuardedResolve {
                resolver: Arc::clone(&opts.resolver),
                policy: Arc::clone(&policy),
            })
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(opts.connect_timeout)
            // Off whatever features another crate turns on: a decompressed body would escape the cap.
            .no_gzip()
            .no_brotli()
            .no_deflate()
            .no_zstd()
            .referer(false)
            .user_agent(concat!("glimpse/", env!("CARGO_PKG_VERSION")))
            .build()
            // Only a TLS backend mismatch can fail here, and ours is built right above.
            .expect("the fetch client's fixed configuration is valid");
        Fetcher {
            client,
            policy,
            opts,
        }
    }

    /// The body at `url`, following up to `max_redirects` redirects.
    pub async fn fetch(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let total = self.opts.total_timeout;
        match tokio::time::timeout(total, self.fetch_inner(url)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout(format!(
                "fetching url timed out after {}",
                human(total)
            ))),
        }
    }

    async fn fetch_inner(&self, raw: &str) -> Result<Vec<u8>, FetchError> {
        let mut url = check_url(raw, &self.policy)?;
        let mut subject = Subject::Url;
        let mut redirects = 0;
        loop {
            let resp = self
                .client
                .get(url.clone())
                .header(ACCEPT_ENCODING, "identity")
                .send()
                .await
                .map_err(|e| self.send_error(&e, subject))?;
            let status = resp.status();
            if is_followed_redirect(status) {
                if redirects >= self.opts.max_redirects {
                    return Err(FetchError::Upstream(format!(
                        "url redirected more than {} times",
                        self.opts.max_redirects
                    )));
                }
                redirects += 1;
                url = next_hop(&url, &resp, &self.policy)?;
                subject = Subject::Redirect;
                continue;
            }
            if !status.is_success() {
                return Err(FetchError::Upstream(format!(
                    "url answered HTTP {}",
                    status.as_u16()
                )));
            }
            return read_capped(resp, self.opts.max_bytes).await;
        }
    }

    /// Map a reqwest error to a client-facing one; the detail goes to the log only.
    fn send_error(&self, err: &reqwest::Error, subject: Subject) -> FetchError {
        let noun = subject.noun();
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = cause {
            if let Some(r) = e.downcast_ref::<Refused>() {
                tracing::info!(host = %r.host, ip = %r.ip, reason = r.reason, "url fetch refused");
                // The resolved address is not named: it would let a client map internal DNS.
                return FetchError::Forbidden(format!(
                    "{noun} resolves to a private or reserved address, which is not allowed"
                ));
            }
            if let Some(u) = e.downcast_ref::<Unresolved>() {
                tracing::debug!(error = %u, "url fetch: name did not resolve");
                return FetchError::Upstream(format!("the host of {noun} could not be resolved"));
            }
            cause = e.source();
        }
        tracing::debug!(error = %err, "url fetch failed");
        if err.is_timeout() {
            FetchError::Timeout(format!(
                "connecting to {noun} timed out after {}",
                human(self.opts.connect_timeout)
            ))
        } else if err.is_connect() {
            FetchError::Upstream(format!("could not connect to {noun}"))
        } else {
            FetchError::Upstream(format!("fetching {noun} failed"))
        }
    }
}

/// 300, 304 and 305 are not redirects a browser follows either; they end as `Upstream`.
fn is_followed_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// The checked URL a redirect response points to.
fn next_hop(
    current: &Url,
    resp: &reqwest::Response,
    policy: &AddressPolicy,
) -> Result<Url, FetchError> {
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get(LOCATION)
        .ok_or_else(|| {
            FetchError::Upstream(format!("url answered HTTP {status} without a Location"))
        })?
        .to_str()
        .map_err(|_| FetchError::InvalidUrl("url redirected to an invalid location".into()))?;
    let next = current
        .join(location)
        .map_err(|_| FetchError::InvalidUrl("url redirected to an invalid location".into()))?;
    check_parsed(next, policy, Subject::Redirect)
}

/// Read the body chunk by chunk, refusing a declared length over the cap before reading and
/// stopping as soon as the running count passes it (a missing or lying length is still capped).
async fn read_capped(mut resp: reqwest::Response, max: u64) -> Result<Vec<u8>, FetchError> {
    if resp.content_length().is_some_and(|len| len > max) {
        return Err(FetchError::TooLarge { limit: max });
    }
    // Start small whatever the header says, so a lying length cannot make us reserve the cap.
    let start = resp.content_length().unwrap_or(0).min(max).min(256 * 1024);
    let mut body = Vec::with_capacity(start as usize);
    loop {
        let chunk = resp.chunk().await.map_err(|e| {
            tracing::debug!(error = %e, "url fetch: body read failed");
            if e.is_timeout() {
                FetchError::Timeout("reading the body of url timed out".into())
            } else {
                FetchError::Upstream("the body of url could not be read".into())
            }
        })?;
        let Some(chunk) = chunk else {
            return Ok(body);
        };
        if body.len() as u64 + chunk.len() as u64 > max {
            return Err(FetchError::TooLarge { limit: max });
        }
        body.extend_from_slice(&chunk);
    }
}

/// rustls with the ring provider and the Mozilla roots compiled in: no OpenSSL, no C toolchain
/// for aws-lc, and no dependence on the container having a CA bundle.
fn tls_config() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The client is HTTP/1 only (reqwest's http2 feature is off).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// "10 s", or "1500 ms" when not a whole number of seconds.
fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human(Duration::from_secs(10)), "10 s");
        assert_eq!(human(Duration::from_millis(1500)), "1500 ms");
    }

    #[test]
    fn messages_are_client_facing() {
        assert_eq!(
            FetchError::TooLarge { limit: 20_000_000 }.to_string(),
            "the image at url is larger than 20000000 bytes"
        );
    }

    #[tokio::test]
    async fn literal_refusal_happens_before_any_await() {
        // The IP-literal check runs before the first await, so even a 1 ms deadline sees the
        // refusal (Forbidden), never a Timeout from waiting on the network.
        let f = Fetcher::new(FetchOptions {
            total_timeout: Duration::from_millis(1),
            ..FetchOptions::default()
        });
        let err = f.fetch("http://192.0.2.1/").await.unwrap_err();
        assert!(matches!(err, FetchError::Forbidden(_)), "{err:?}");
    }
}
