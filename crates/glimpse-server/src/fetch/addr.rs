//! Which IP addresses a `?url=` fetch may connect to.
//!
//! The table is written by hand because `Ipv4Addr::is_global`/`is_shared` are unstable. It follows
//! Mastodon's `PrivateAddressCheck` (the most complete of the deny lists we compared) plus the
//! IPv6 forms that carry an IPv4 address. Forms that embed IPv4 (NAT64, 6to4, Teredo,
//! IPv4-compatible) are refused wholesale, as smokescreen and Mastodon do: a public server has no
//! business behind them, and checking only the embedded part would trust translators we do not
//! control. IPv4-mapped addresses are the exception: they are the IPv4 address, so they are
//! unwrapped and judged as IPv4.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why `ip` must not be fetched from, or `None` for an allowed public address.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    (u128::from(ip) & mask) == (u128::from(net) & mask)
}

/// IPv4 deny list, most specific first so the reason names the narrowest range.
const V4_RANGES: &[([u8; 4], u32, &str)] = &[
    ([0, 0, 0, 0], 32, "unspecified address"),
    ([0, 0, 0, 0], 8, "\"this network\" address (0.0.0.0/8)"),
    ([10, 0, 0, 0], 8, "private address (10.0.0.0/8)"),
    (
        [100, 64, 0, 0],
        10,
        "carrier-grade NAT address (100.64.0.0/10)",
    ),
    ([127, 0, 0, 0], 8, "loopback address"),
    ([169, 254, 169, 254], 32, "cloud metadata address"),
    ([169, 254, 0, 0], 16, "link-local address"),
    ([172, 16, 0, 0], 12, "private address (172.16.0.0/12)"),
    (
        [192, 0, 0, 0],
        24,
        "IETF protocol assignment (192.0.0.0/24)",
    ),
    ([192, 0, 2, 0], 24, "documentation address (192.0.2.0/24)"),
    (
        [192, 88, 99, 0],
        24,
        "6to4 relay anycast address (192.88.99.0/24)",
    ),
    ([192, 168, 0, 0], 16, "private address (192.168.0.0/16)"),
    ([198, 18, 0, 0], 15, "benchmarking address (198.18.0.0/15)"),
    (
        [198, 51, 100, 0],
        24,
        "documentation address (198.51.100.0/24)",
    ),
    (
        [203, 0, 113, 0],
        24,
        "documentation address (203.0.113.0/24)",
    ),
    ([224, 0, 0, 0], 4, "multicast address"),
    ([255, 255, 255, 255], 32, "broadcast address"),
    ([240, 0, 0, 0], 4, "reserved address (240.0.0.0/4)"),
];

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    V4_RANGES
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, why)| *why)
}

const fn v6(segments: [u16; 8]) -> Ipv6Addr {
    Ipv6Addr::new(
        segments[0],
        segments[1],
        segments[2],
        segments[3],
        segments[4],
        segments[5],
        segments[6],
        segments[7],
    )
}

/// IPv6 deny list inside or beside 2000::/3, most specific first. Everything outside 2000::/3
/// (the only block IANA has allocated for global unicast) is refused after this table.
const V6_RANGES: &[(Ipv6Addr, u32, &str)] = &[
    (Ipv6Addr::UNSPECIFIED, 128, "unspecified address"),
    (Ipv6Addr::LOCALHOST, 128, "loopback address"),
    (
        v6([0, 0, 0, 0, 0, 0, 0, 0]),
        96,
        "IPv4-compatible IPv6 address",
    ),
    (
        v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0]),
        96,
        "NAT64 address (64:ff9b::/96)",
    ),
    (
        v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0]),
        48,
        "NAT64 address (64:ff9b:1::/48)",
    ),
    (
        v6([0x100, 0, 0, 0, 0, 0, 0, 0]),
        64,
        "discard-only address (100::/64)",
    ),
    (
        v6([0x2001, 0, 0, 0, 0, 0, 0, 0]),
        32,
        "Teredo address (2001::/32)",
    ),
    (
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0]),
        32,
        "documentation address (2001:db8::/32)",
    ),
    (
        v6([0x2001, 0, 0, 0, 0, 0, 0, 0]),
        23,
        "IETF protocol assignment (2001::/23)",
    ),
    (
        v6([0x2002, 0, 0, 0, 0, 0, 0, 0]),
        16,
        "6to4 address (2002::/16)",
    ),
    (
        v6([0x3fff, 0, 0, 0, 0, 0, 0, 0]),
        20,
        "documentation address (3fff::/20)",
    ),
    (
        v6([0xfc00, 0, 0, 0, 0, 0, 0, 0]),
        7,
        "unique local address (fc00::/7)",
    ),
    (
        v6([0xfe80, 0, 0, 0, 0, 0, 0, 0]),
        10,
        "link-local address (fe80::/10)",
    ),
    (
        v6([0xfec0, 0, 0, 0, 0, 0, 0, 0]),
        10,
        "site-local address (fec0::/10)",
    ),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0]), 8, "multicast address"),
];

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    // `::ffff:a.b.c.d` *is* a.b.c.d on the wire (Rust's docs: ::ffff:127.0.0.1 "is not itself an
    // IPv6 loopback"), so judge it as IPv4; a public mapped address stays allowed.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4);
    }
    if let Some((_, _, why)) = V6_RANGES
        .iter()
        .find(|(net, prefix, _)| in_v6(ip, *net, *prefix))
    {
        return Some(why);
    }
    if !in_v6(ip, v6([0x2000, 0, 0, 0, 0, 0, 0, 0]), 3) {
        return Some("reserved IPv6 address (outside 2000::/3)");
    }
    None
}

/// The address rule as a value, so the fetcher (and tests) can choose it.
///
/// `public_only()` is the production rule; `allow_private()` is `GLIMPSE_ALLOW_PRIVATE_URLS`.
/// `allowing(addr)` adds one exact socket address to a public-only policy: tests use it to let
/// the fetcher reach one loopback test server while everything else stays refused.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow_private: bool,
    exceptions: Vec<SocketAddr>,
}

impl AddressPolicy {
    /// Refuse every address `forbidden_reason` names.
    pub fn public_only() -> Self {
        Self::default()
    }

    /// Allow every address (the address rule is lifted; nothing else is).
    pub fn allow_private() -> Self {
        AddressPolicy {
            allow_private: true,
            exceptions: Vec::new(),
        }
    }

    /// Also allow exactly `addr` (IP and port).
    pub fn allowing(mut self, addr: SocketAddr) -> Self {
        self.exceptions.push(addr);
        self
    }

    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    /// `Err(reason)` when a connection to `ip` (on `port`, when known) is not allowed.
    ///
    /// The port is unknown for names resolved inside the HTTP client (reqwest's resolver hook is
    /// given the host only), so an exception never applies there: a name that resolves to a
    /// forbidden address is refused even if that address has an exception.
    pub fn check(&self, ip: IpAddr, port: Option<u16>) -> Result<(), &'static str> {
        if self.allow_private {
            return Ok(());
        }
        let Some(reason) = forbidden_reason(ip) else {
            return Ok(());
        };
        let excepted = port.is_some_and(|p| {
            self.exceptions
                .iter()
                .any(|e| e.port() == p && canonical(e.ip()) == canonical(ip))
        });
        if excepted {
            Ok(())
        } else {
            Err(reason)
        }
    }
}

/// `::ffff:a.b.c.d` → `a.b.c.d`, so an exception matches however the address was written.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_arithmetic_handles_edges() {
        assert!(in_v4(Ipv4Addr::new(1, 2, 3, 4), [0, 0, 0, 0], 0));
        assert!(in_v4(Ipv4Addr::new(172, 31, 255, 255), [172, 16, 0, 0], 12));
        assert!(!in_v4(Ipv4Addr::new(172, 32, 0, 0), [172, 16, 0, 0], 12));
        assert!(in_v6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, 128));
        assert!(!in_v6("::2".parse().unwrap(), Ipv6Addr::LOCALHOST, 128));
    }

    #[test]
    fn exception_is_exact_ip_and_port() {
        let server: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let p = AddressPolicy::public_only().allowing(server);
        assert!(p.check(server.ip(), Some(4000)).is_ok());
        assert!(p
            .check("::ffff:127.0.0.1".parse().unwrap(), Some(4000))
            .is_ok());
        assert!(p.check(server.ip(), Some(4001)).is_err());
        assert!(p.check(server.ip(), None).is_err());
        assert!(p.check("127.0.0.2".parse().unwrap(), Some(4000)).is_err());
        assert!(p.check("8.8.8.8".parse().unwrap(), None).is_ok());
    }
}
