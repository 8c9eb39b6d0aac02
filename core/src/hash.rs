//! Stable hashes: keyed profile keys (no raw identifiers in KV) and experiment bucketing.

use alloc::string::String;

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Number of buckets an experiment's traffic is cut into (basis points).
pub const BUCKETS: u32 = 10_000;

/// The KV key of a user's profile: `p:` + 32 hex digits of HMAC-SHA256(key, user).
/// Keyed, so KV never shows a user id and nobody without the key can compute one.
pub fn profile_key(key: &[u8], user: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| {
        // HMAC accepts keys of any length; this branch cannot be taken.
        HmacSha256::new_from_slice(&[0]).unwrap_or_else(|_| unreachable!())
    });
    mac.update(user.as_bytes());
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(2 + 32);
    out.push_str("p:");
    for byte in &tag[..16] {
        out.push(hex_digit(byte >> 4));
        out.push(hex_digit(byte & 0xf));
    }
    out
}

fn hex_digit(n: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(n & 0xf)])
}

/// The bucket (0..10,000) a visitor falls in for one experiment. xxh3 seeded with the
/// experiment id: stable across platforms, independent between experiments.
pub fn bucket(experiment: &str, visitor: &str) -> u32 {
    let seed = xxhash_rust::xxh3::xxh3_64(experiment.as_bytes());
    (xxhash_rust::xxh3::xxh3_64_with_seed(visitor.as_bytes(), seed) % u64::from(BUCKETS)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_keys_are_keyed_and_fixed_length() {
        let a = profile_key(b"secret", "17850");
        assert_eq!(a.len(), 34);
        assert!(a.starts_with("p:"));
        assert_ne!(a, profile_key(b"other", "17850"));
        assert_eq!(a, profile_key(b"secret", "17850"));
        assert!(!a.contains("17850"));
    }

    #[test]
    fn buckets_spread_evenly() {
        let mut low = 0;
        for i in 0..10_000 {
            if bucket("exp", &alloc::format!("visitor-{i}")) < 5_000 {
                low += 1;
            }
        }
        assert!((4_700..5_300).contains(&low), "{low}");
    }
}
