//! The address rule and URL-level checks, with no network at all: `forbidden_reason` over the
//! whole table, and property tests that random addresses inside each forbidden range, and random
//! spellings of them, are always refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use glimpse_server::fetch::{check_url, forbidden_reason, AddressPolicy, FetchError};
use proptest::prelude::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn every_listed_range_is_forbidden() {
    let forbidden = [
        // IPv4
        "0.0.0.0",
        "0.1.2.3",
        "10.0.0.1",
        "10.255.255.255",
        "100.64.0.1",
        "100.127.255.254",
        "127.0.0.1",
        "127.255.0.9",
        "169.254.169.254",
        "169.254.0.1",
        "172.16.0.1",
        "172.31.255.255",
        "192.0.0.1",
        "192.0.0.170",
        "192.0.2.5",
        "192.88.99.1",
        "192.168.1.1",
        "198.18.0.1",
        "198.19.255.255",
        "198.51.100.7",
        "203.0.113.9",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.254",
        "255.255.255.255",
        // IPv6 and IPv4-in-IPv6 forms
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",
        "::8.8.8.8",
        "64:ff9b::7f00:1",
        "64:ff9b::808:808",
        "64:ff9b:1::a00:1",
        "100::1",
        "2001::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "2001:2::1",
        "2001:10::1",
        "2001:20::1",
        "2001:db8::1",
        "2001:db8:ffff::1",
        "2002:7f00:1::",
        "2002:a00:1::1",
        "2002:808:808::1",
        "3fff::1",
        "fc00::1",
        "fd12::1",
        "fe80::1",
        "febf::1",
        "fec0::1",
        "ff02::1",
        "ff05::1:3",
        // outside 2000::/3, not allocated for unicast
        "4000::1",
        "::ffff:0:7f00:1",
    ];
    for s in forbidden {
        assert!(forbidden_reason(ip(s)).is_some(), "{s} must be forbidden");
    }
}

#[test]
fn public_addresses_and_range_neighbours_are_allowed() {
    let allowed = [
        "1.1.1.1",
        "8.8.8.8",
        "9.255.255.255",
        "11.0.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "126.255.255.255",
        "128.0.0.0",
        "169.253.255.255",
        "169.255.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "192.0.1.0",
        "192.0.3.0",
        "192.167.255.255",
        "192.169.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "203.0.112.255",
        "223.255.255.255",
        "2606:4700::1111",
        "2a00:1450:4001::200e",
        "2001:4860:4860::8888",
        "2001:200::1",
        "::ffff:8.8.8.8",
    ];
    for s in allowed {
        assert_eq!(forbidden_reason(ip(s)), None, "{s} must be allowed");
    }
}

#[test]
fn reasons_name_the_narrowest_range() {
    assert_eq!(
        forbidden_reason(ip("169.254.169.254")),
        Some("cloud metadata address")
    );
    assert_eq!(
        forbidden_reason(ip("255.255.255.255")),
        Some("broadcast address")
    );
    assert_eq!(forbidden_reason(ip("0.0.0.0")), Some("unspecified address"));
    assert_eq!(
        forbidden_reason(ip("::ffff:127.0.0.1")),
        forbidden_reason(ip("127.0.0.1"))
    );
    assert_eq!(
        forbidden_reason(ip("2001::5")),
        Some("Teredo address (2001::/32)")
    );
}

#[test]
fn url_rules_that_need_no_network() {
    let p = AddressPolicy::public_only();
    let invalid = [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "gopher://127.0.0.1:70/",
        "data:image/png;base64,AAAA",
        "javascript:alert(1)",
        "http://user:pass@example.com/",
        "http://user@example.com/",
        "https://:secret@example.com/",
        "not a url",
        "/relative/path.png",
        "http://",
        "http://[fe80::1%25eth0]/",
    ];
    for raw in invalid {
        let err = check_url(raw, &p).unwrap_err();
        assert!(matches!(err, FetchError::InvalidUrl(_)), "{raw}: {err:?}");
    }
    // Any port, either scheme, and a name (checked later, as it resolves) pass this stage.
    for raw in [
        "http://example.com/a.png",
        "https://example.com:8443/a.png",
        "HTTP://EXAMPLE.COM/",
        "http://8.8.8.8:1/",
    ] {
        assert!(check_url(raw, &p).is_ok(), "{raw}");
    }
    let err = check_url("http://10.0.0.1/x.png", &p).unwrap_err();
    assert_eq!(
        err.to_string(),
        "url resolves to a private or reserved address (10.0.0.1), which is not allowed"
    );
    // allow_private lifts the address rule and nothing else.
    let open = AddressPolicy::allow_private();
    assert!(check_url("http://10.0.0.1/x.png", &open).is_ok());
    assert!(check_url("http://u:p@10.0.0.1/", &open).is_err());
    assert!(check_url("file:///etc/passwd", &open).is_err());
}

/// Forbidden IPv4 ranges (network, prefix length).
const V4_NETS: &[([u8; 4], u32)] = &[
    ([0, 0, 0, 0], 8),
    ([10, 0, 0, 0], 8),
    ([100, 64, 0, 0], 10),
    ([127, 0, 0, 0], 8),
    ([169, 254, 0, 0], 16),
    ([172, 16, 0, 0], 12),
    ([192, 0, 0, 0], 24),
    ([192, 0, 2, 0], 24),
    ([192, 168, 0, 0], 16),
    ([198, 18, 0, 0], 15),
    ([198, 51, 100, 0], 24),
    ([203, 0, 113, 0], 24),
    ([224, 0, 0, 0], 4),
    ([240, 0, 0, 0], 4),
];

/// Forbidden IPv6 ranges (network, prefix length).
const V6_NETS: &[(&str, u32)] = &[
    ("::", 96),
    ("64:ff9b::", 96),
    ("64:ff9b:1::", 48),
    ("100::", 64),
    ("2001::", 32),
    ("2001:db8::", 32),
    ("2002::", 16),
    ("fc00::", 7),
    ("fe80::", 10),
    ("fec0::", 10),
    ("ff00::", 8),
];

fn v4_in_range() -> impl Strategy<Value = Ipv4Addr> {
    (0..V4_NETS.len(), any::<u32>()).prop_map(|(i, bits)| {
        let (net, prefix) = V4_NETS[i];
        let host_mask = u32::MAX.checked_shr(prefix).unwrap_or(0);
        Ipv4Addr::from((u32::from(Ipv4Addr::from(net)) & !host_mask) | (bits & host_mask))
    })
}

fn v6_in_range() -> impl Strategy<Value = Ipv6Addr> {
    (0..V6_NETS.len(), any::<u128>()).prop_map(|(i, bits)| {
        let (net, prefix) = V6_NETS[i];
        let net: Ipv6Addr = net.parse().unwrap();
        let host_mask = u128::MAX.checked_shr(prefix).unwrap_or(0);
        Ipv6Addr::from((u128::from(net) & !host_mask) | (bits & host_mask))
    })
}

/// One part of an IPv4 spelling in decimal, hex (either case of `0x`, any digit case) or octal.
fn spell_part(value: u32, radix: u8, upper: bool) -> String {
    match radix {
        0 => value.to_string(),
        1 if upper => format!("0X{value:X}"),
        1 => format!("0x{value:x}"),
        _ => format!("0{value:o}"),
    }
}

/// An IPv4 address written with 1 to 4 parts (`a`, `a.b`, `a.b.c`, `a.b.c.d`: the last part
/// fills the remaining bytes, as inet_aton and the WHATWG parser read it), each part in its own
/// base, maybe with a trailing dot.
fn spell_v4(addr: Ipv4Addr, parts: usize, radices: [u8; 4], upper: bool, dot: bool) -> String {
    let o = addr.octets();
    let n = u32::from(addr);
    let values: Vec<u32> = match parts {
        1 => vec![n],
        2 => vec![o[0] as u32, n & 0x00ff_ffff],
        3 => vec![o[0] as u32, o[1] as u32, n & 0xffff],
        _ => o.iter().map(|b| *b as u32).collect(),
    };
    let mut s = values
        .iter()
        .zip(radices)
        .map(|(v, r)| spell_part(*v, r, upper))
        .collect::<Vec<_>>()
        .join(".");
    if dot {
        s.push('.');
    }
    s
}

fn assert_refused(url: &str) -> Result<(), TestCaseError> {
    match check_url(url, &AddressPolicy::public_only()) {
        Err(FetchError::Forbidden(_)) => Ok(()),
        other => Err(TestCaseError::fail(format!("{url}: {other:?}"))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_hosts_in_forbidden_v4_ranges_are_refused(a in v4_in_range(), port in 1u16..) {
        prop_assert!(forbidden_reason(IpAddr::V4(a)).is_some(), "{a}");
        assert_refused(&format!("http://{a}:{port}/"))?;
        // ... and wrapped in every IPv6 form that carries an IPv4 address.
        let [b0, b1, b2, b3] = a.octets();
        let hi = u16::from_be_bytes([b0, b1]);
        let lo = u16::from_be_bytes([b2, b3]);
        for wrapped in [
            format!("::ffff:{a}"),
            format!("::{a}"),
            format!("64:ff9b::{a}"),
            format!("64:ff9b:1::{a}"),
            format!("2002:{hi:x}:{lo:x}::1"),
        ] {
            let v6: Ipv6Addr = wrapped.parse().unwrap();
            prop_assert!(forbidden_reason(IpAddr::V6(v6)).is_some(), "{wrapped}");
            assert_refused(&format!("https://[{wrapped}]:{port}/x.png"))?;
        }
    }

    #[test]
    fn random_hosts_in_forbidden_v6_ranges_are_refused(a in v6_in_range()) {
        prop_assert!(forbidden_reason(IpAddr::V6(a)).is_some(), "{a}");
        assert_refused(&format!("http://[{a}]/"))?;
    }

    #[test]
    fn any_spelling_of_loopback_is_refused(
        last in 0u8..=255, parts in 1usize..=4, radices in any::<[u8; 4]>(),
        upper: bool, dot: bool, port in proptest::option::of(1u16..),
    ) {
        let radices = radices.map(|r| r % 3);
        let host = spell_v4(Ipv4Addr::new(127, 0, 0, last), parts, radices, upper, dot);
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        assert_refused(&format!("http://{host}{port}/"))?;
    }

    /// The spelling never changes the verdict: a spelled address is refused exactly when its
    /// canonical form is, so the check cannot be dodged by notation (nor does it refuse
    /// public addresses because of notation).
    #[test]
    fn spelling_never_changes_the_verdict(
        n: u32, parts in 1usize..=4, radices in any::<[u8; 4]>(), upper: bool, dot: bool,
    ) {
        let addr = Ipv4Addr::from(n);
        let host = spell_v4(addr, parts, radices.map(|r| r % 3), upper, dot);
        let verdict = check_url(&format!("http://{host}/"), &AddressPolicy::public_only());
        match forbidden_reason(IpAddr::V4(addr)) {
            Some(_) => {
                let refused = matches!(
                    &verdict,
                    Err(FetchError::Forbidden(m)) if m.contains(&format!("({addr})"))
                );
                prop_assert!(refused, "{host}: {verdict:?}");
            }
            None => prop_assert!(verdict.is_ok(), "{host}: {verdict:?}"),
        }
    }
}
