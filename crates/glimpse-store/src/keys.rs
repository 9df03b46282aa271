//! Key format: `gk_` + 33 base62 chars (24 random bytes, 192 bits) + 6 base62 chars of CRC32.
//!
//! The checksum lets a typo or a random string be refused before any query; the store keeps
//! only `sha256(key)` (hex), the non-secret id `key_…` and a short display prefix.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{Result, StoreError};

pub const KEY_PREFIX: &str = "gk_";
const RANDOM_BYTES: usize = 24;
/// ceil(192 / log2(62)) = 33 chars hold any 24-byte number.
const BODY_CHARS: usize = 33;
/// 62^6 > 2^32, so six chars hold any CRC32.
const CHECKSUM_CHARS: usize = 6;
pub const KEY_LEN: usize = KEY_PREFIX.len() + BODY_CHARS + CHECKSUM_CHARS;
/// How much of a key is kept as a non-secret display prefix (`gk_` + 5 random chars).
pub const DISPLAY_PREFIX_LEN: usize = 8;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Fixed-width base62 of a big-endian number; leading zeros are kept so every key has one length.
fn base62_fixed(bytes: &[u8], width: usize) -> String {
    let mut num = bytes.to_vec();
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        // Long division of `num` by 62; the remainder is the next digit.
        let mut rem: u32 = 0;
        for byte in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*byte);
            *byte = (acc / 62) as u8;
            rem = acc % 62;
        }
        *slot = ALPHABET[rem as usize];
    }
    debug_assert!(num.iter().all(|b| *b == 0), "width too small");
    String::from_utf8(out).expect("alphabet is ASCII")
}

fn checksum(head: &str) -> String {
    base62_fixed(
        &crc32fast::hash(head.as_bytes()).to_be_bytes(),
        CHECKSUM_CHARS,
    )
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // ThreadRng: ChaCha seeded (and periodically reseeded) from the OS.
    rand::rng().fill_bytes(&mut buf);
    buf
}

/// A new secret key.
pub fn generate_key() -> String {
    let head = format!(
        "{KEY_PREFIX}{}",
        base62_fixed(&random_bytes::<RANDOM_BYTES>(), BODY_CHARS)
    );
    let sum = checksum(&head);
    head + &sum
}

/// A random non-secret id such as `key_…` or `dbt_…` (96 random bits).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", base62_fixed(&random_bytes::<12>(), 17))
}

/// A key that passed the shape and checksum test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey {
    /// Lower-case hex SHA-256 of the whole key: what the store keeps and looks up by.
    pub hash: String,
    /// Non-secret prefix for display and logs.
    pub prefix: String,
}

/// Checks shape and checksum without touching any store.
pub fn parse_key(raw: &str) -> Result<ParsedKey> {
    let well_formed = raw.len() == KEY_LEN
        && raw.starts_with(KEY_PREFIX)
        && raw
            .bytes()
            .skip(KEY_PREFIX.len())
            .all(|b| b.is_ascii_alphanumeric());
    if !well_formed {
        return Err(StoreError::MalformedKey);
    }
    let (head, sum) = raw.split_at(KEY_LEN - CHECKSUM_CHARS);
    if !bool::from(checksum(head).as_bytes().ct_eq(sum.as_bytes())) {
        return Err(StoreError::MalformedKey);
    }
    Ok(ParsedKey {
        hash: hash_key(raw),
        prefix: raw[..DISPLAY_PREFIX_LEN].to_string(),
    })
}

pub fn hash_key(raw: &str) -> String {
    let digest = Sha256::digest(raw.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time equality of two stored hashes (the lookup is by index equality, so this is a
/// belt-and-braces check on the row we got back).
pub fn hashes_match(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_differ() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert_eq!(a.len(), KEY_LEN);
        let parsed = parse_key(&a).unwrap();
        assert_eq!(parsed.hash, hash_key(&a));
        assert_eq!(parsed.hash.len(), 64);
        assert_eq!(parsed.prefix, &a[..DISPLAY_PREFIX_LEN]);
    }

    #[test]
    fn base62_is_fixed_width_and_exact() {
        assert_eq!(base62_fixed(&[0, 0], 3), "000");
        assert_eq!(base62_fixed(&[0, 62], 3), "010");
        assert_eq!(base62_fixed(&[0xff; 24], BODY_CHARS).len(), BODY_CHARS);
        assert_eq!(
            base62_fixed(&u32::MAX.to_be_bytes(), CHECKSUM_CHARS),
            "4gfFC3"
        );
    }

    #[test]
    fn every_single_char_typo_is_refused() {
        let key = generate_key();
        for i in KEY_PREFIX.len()..KEY_LEN {
            let mut bytes = key.clone().into_bytes();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(bytes).unwrap();
            assert!(
                matches!(parse_key(&typo), Err(StoreError::MalformedKey)),
                "typo at {i} accepted"
            );
        }
    }

    #[test]
    fn wrong_shapes_are_refused() {
        let key = generate_key();
        for bad in [
            String::new(),
            "gk_".into(),
            key[..KEY_LEN - 1].to_string(),
            format!("{key}x"),
            key.replacen("gk_", "sk_", 1),
            format!("gk_{}", "é".repeat(19)),
            format!("{}-{}", &key[..10], &key[11..]),
        ] {
            assert!(
                matches!(parse_key(&bad), Err(StoreError::MalformedKey)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ids_have_prefix_and_fixed_length() {
        let id = new_id("key");
        assert!(id.starts_with("key_"));
        assert_eq!(id.len(), 4 + 17);
        assert_ne!(id, new_id("key"));
    }
}
