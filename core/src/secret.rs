//! Comparing secrets: one constant-time check for every shared token (the edge's dev KV and
//! debug tokens, the origin's admin token).

use subtle::ConstantTimeEq;

/// Whether `given` is the configured token `expected`, compared in constant time (`subtle`):
/// the time taken depends on the lengths only, never on where the bytes first differ. A token's
/// length is not secret.
///
/// An empty `expected` never matches anything, not even an empty `given`: an unset token turns
/// the route it guards off rather than opening it to everyone.
pub fn tokens_match(expected: &[u8], given: &[u8]) -> bool {
    !expected.is_empty() && bool::from(expected.ct_eq(given))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_nonempty_token_matches() {
        assert!(tokens_match(b"s3cret", b"s3cret"));
        assert!(!tokens_match(b"s3cret", b"s3cres"));
        assert!(!tokens_match(b"s3cret", b"S3cret"));
        // Prefixes and extensions are different lengths: no match.
        assert!(!tokens_match(b"s3cret", b"s3cre"));
        assert!(!tokens_match(b"s3cret", b"s3crett"));
        assert!(!tokens_match(b"s3cret", b""));
        // An unset token authenticates no one.
        assert!(!tokens_match(b"", b""));
        assert!(!tokens_match(b"", b"anything"));
    }
}
