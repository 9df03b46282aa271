//! Checking a URL (the one the client sent, or a redirect's target) before any connection.
//!
//! Hosts are judged from `url::Url::host()` — never a string match on the host text — because the
//! WHATWG parser has already turned every IPv4 spelling (`2130706433`, `0x7f.1`, `0177.0.0.1`,
//! `127.1`, `0`) into `Host::Ipv4` and bracketed IPv6 into `Host::Ipv6`. IP literals are checked
//! here because reqwest never calls the resolver for them; names are checked by the resolver hook.

use std::net::IpAddr;

use url::{Host, Url};

use super::addr::AddressPolicy;
use super::FetchError;

/// Who the error message talks about: the URL the client sent, or where it redirected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subject {
    Url,
    Redirect,
}

impl Subject {
    pub(crate) fn noun(self) -> &'static str {
        match self {
            Subject::Url => "url",
            Subject::Redirect => "the redirect target of url",
        }
    }
}

/// Parse `raw` and apply every rule that needs no network: scheme, userinfo, host, and the
/// address rule for IP-literal hosts. `Ok` means the fetcher may go on (names are then checked by
/// the resolver hook as they are resolved).
pub fn check_url(raw: &str, policy: &AddressPolicy) -> Result<Url, FetchError> {
    let url = Url::parse(raw.trim())
        .map_err(|_| FetchError::InvalidUrl("url is not a valid absolute URL".into()))?;
    check_parsed(url, policy, Subject::Url)
}

pub(crate) fn check_parsed(
    url: Url,
    policy: &AddressPolicy,
    subject: Subject,
) -> Result<Url, FetchError> {
    let noun = subject.noun();
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::InvalidUrl(format!(
            "{noun} must use http or https"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FetchError::InvalidUrl(format!(
            "{noun} must not contain a username or password"
        )));
    }
    let ip = match url.host() {
        None => return Err(FetchError::InvalidUrl(format!("{noun} must have a host"))),
        Some(Host::Domain(_)) => return Ok(url),
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
    };
    // http/https always have a known default port.
    let port = url.port_or_known_default();
    match policy.check(ip, port) {
        Ok(()) => Ok(url),
        // The address was written by the client (or its redirect), so naming it leaks nothing.
        Err(_) => Err(FetchError::Forbidden(format!(
            "{noun} resolves to a private or reserved address ({ip}), which is not allowed"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_spellings_become_ip_hosts() {
        for raw in [
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
        ] {
            let err = check_url(raw, &AddressPolicy::public_only()).unwrap_err();
            assert!(
                matches!(&err, FetchError::Forbidden(m) if m.contains("(127.0.0.1)")),
                "{raw}: {err:?}"
            );
        }
    }

    #[test]
    fn redirect_messages_name_the_redirect() {
        let url = Url::parse("ftp://example.com/").unwrap();
        let err = check_parsed(url, &AddressPolicy::public_only(), Subject::Redirect).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the redirect target of url must use http or https"
        );
    }
}
