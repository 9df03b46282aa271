//! Any string as a `?url=`: `check_url` with the production policy must never panic, and what it
//! accepts must be http(s), without userinfo, and not an IP literal in a forbidden range.
#![no_main]

use glimpse_server::fetch::{check_url, forbidden_reason, AddressPolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let policy = AddressPolicy::public_only();
    let Ok(url) = check_url(raw, &policy) else {
        return;
    };
    assert!(matches!(url.scheme(), "http" | "https"), "{url}");
    assert!(url.username().is_empty() && url.password().is_none(), "{url}");
    let ip = match url.host() {
        Some(url::Host::Ipv4(a)) => Some(std::net::IpAddr::V4(a)),
        Some(url::Host::Ipv6(a)) => Some(std::net::IpAddr::V6(a)),
        _ => None,
    };
    if let Some(ip) = ip {
        assert!(forbidden_reason(ip).is_none(), "accepted a forbidden literal: {url}");
    }
});
