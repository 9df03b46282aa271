//! Name resolution for the fetcher, and the hook that makes reqwest connect only to checked
//! addresses.
//!
//! reqwest resolves a name exactly once per new connection, through the `dns::Resolve` we give
//! it, and connects to what that returns. So the check lives *inside* the resolver: there is no
//! second lookup an attacker's DNS could answer differently (DNS rebinding). IP-literal hosts never
//! reach a resolver (hyper-util parses them and skips it); `Fetcher` checks those itself.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use super::addr::AddressPolicy;

/// A boxed, sendable future (the shape `NameResolver` returns).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Turns a host name into socket addresses. System DNS in production; tests inject a map.
pub trait NameResolver: Send + Sync {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>>;
}

/// The operating system's resolver (`getaddrinfo`, via tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl NameResolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let host = host.to_string();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

/// A fixed name → addresses map; unknown names fail like NXDOMAIN. For tests and pinned setups.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    names: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Map `host` (case-insensitive, trailing dot ignored) to `ips`, adding to any earlier entry.
    pub fn with(mut self, host: &str, ips: &[IpAddr]) -> Self {
        self.names
            .entry(normalise(host))
            .or_default()
            .extend_from_slice(ips);
        self
    }
}

impl NameResolver for StaticResolver {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let found = self
            .names
            .get(&normalise(host))
            .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
        Box::pin(async move {
            found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "unknown host"))
        })
    }
}

/// `Example.COM.` and `example.com` are the same DNS name.
fn normalise(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The resolver refused a name because one of its addresses is forbidden. Travels inside
/// reqwest's error chain; `Fetcher` looks for it to answer `Forbidden` rather than `Upstream`.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to {ip}: {reason}")]
pub(crate) struct Refused {
    pub host: String,
    pub ip: IpAddr,
    pub reason: &'static str,
}

/// The name did not resolve (or resolved to nothing).
#[derive(Debug, thiserror::Error)]
#[error("could not resolve {host}: {detail}")]
pub(crate) struct Unresolved {
    pub host: String,
    pub detail: String,
}

/// reqwest's resolver hook: resolve with the configured `NameResolver`, refuse the whole name if
/// ANY address is forbidden (a filtered subset would still let a rebinding attacker mix answers
/// in), and return exactly the checked addresses for reqwest to connect to.
pub(crate) struct GuardedResolve {
    pub resolver: Arc<dyn NameResolver>,
    pub policy: Arc<AddressPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolve {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        // Port 0: reqwest replaces it with the URL's port. The policy therefore judges resolved
        // addresses without a port (see `AddressPolicy::check`).
        let lookup = self.resolver.resolve(&host, 0);
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let addrs = lookup.await.map_err(|e| Unresolved {
                host: host.clone(),
                detail: e.to_string(),
            })?;
            if addrs.is_empty() {
                return Err(Unresolved {
                    host,
                    detail: "no addresses".into(),
                }
                .into());
            }
            for addr in &addrs {
                if let Err(reason) = policy.check(addr.ip(), None) {
                    return Err(Refused {
                        host,
                        ip: addr.ip(),
                        reason,
                    }
                    .into());
                }
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}
