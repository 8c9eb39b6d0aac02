//! A small open-addressing hash table of indices, keyed by strings the caller stores.
//!
//! The table holds `(tag, index)` slots only; the keys live in the caller's own array (a
//! catalog's items, the ranker's candidate list), so a lookup touches one key at most on a hit
//! and usually none on a miss. The hash is xxh3 (the same on every target) and the probe
//! sequence is plain `u64` arithmetic, so the table behaves the same natively and on 32-bit
//! wasm. Nothing is ever read out in table order: callers iterate their own arrays.

use alloc::vec;
use alloc::vec::Vec;

/// The hash every table uses for a key.
#[inline]
pub(crate) fn hash_str(key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key.as_bytes())
}

/// `a == b`, inline for short keys (ids and category names): two overlapping word loads per
/// side instead of a `memcmp` call.
#[inline]
pub(crate) fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word4 = |s: &[u8], at: usize| u32::from_le_bytes([s[at], s[at + 1], s[at + 2], s[at + 3]]);
    let word8 = |s: &[u8], at: usize| {
        u64::from_le_bytes([
            s[at],
            s[at + 1],
            s[at + 2],
            s[at + 3],
            s[at + 4],
            s[at + 5],
            s[at + 6],
            s[at + 7],
        ])
    };
    match n {
        0..4 => a == b,
        4..=8 => word4(a, 0) == word4(b, 0) && word4(a, n - 4) == word4(b, n - 4),
        9..=16 => word8(a, 0) == word8(b, 0) && word8(a, n - 8) == word8(b, n - 8),
        _ => a == b,
    }
}

/// An id in the compact form the hash indexes compare: its hash and, for ids of at most
/// [`Key::INLINE`] bytes, the bytes themselves (zero-padded, the length in the last byte), so
/// two short keys are equal exactly when their ids are, without reading either id. A longer
/// id keeps its hash and its length here and its comparison falls back to the strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) hash: u64,
    words: [u64; 2],
}

impl Key {
    pub(crate) const INLINE: usize = 15;
    /// The last byte of a long id's key.
    const LONG: u8 = 0xff;

    #[inline]
    pub(crate) fn of(id: &str) -> Self {
        Self::with_hash(id, hash_str(id))
    }

    /// The key of `id` whose hash is already known (`hash == hash_str(id)`).
    #[inline]
    pub(crate) fn with_hash(id: &str, hash: u64) -> Self {
        let b = id.as_bytes();
        let mut buf = [0u8; 16];
        if b.len() <= Self::INLINE {
            buf[..b.len()].copy_from_slice(b);
            buf[15] = b.len() as u8;
        } else {
            buf[..8].copy_from_slice(&(b.len() as u64).to_le_bytes());
            buf[15] = Self::LONG;
        }
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&buf[..8]);
        hi.copy_from_slice(&buf[8..]);
        Key {
            hash,
            words: [u64::from_le_bytes(lo), u64::from_le_bytes(hi)],
        }
    }

    /// Whether this key's id is `id`, given `id`'s key; `full` gives this key's own id and is
    /// only called for ids too long to be inline.
    #[inline]
    pub(crate) fn matches<'s>(
        &self,
        other: &Key,
        id: &str,
        full: impl FnOnce() -> &'s str,
    ) -> bool {
        if self.hash != other.hash || self.words != other.words {
            return false;
        }
        (self.words[1] >> 56) as u8 != Self::LONG || full() == id
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Slot {
    /// Low 32 bits of the key's hash (a filter before the key comparison).
    tag: u32,
    /// Index into the caller's array plus one; 0 marks an empty slot.
    index: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Table {
    slots: Vec<Slot>,
    /// `64 - log2(slots.len())`: the home slot is the hash's top bits.
    shift: u32,
    len: usize,
}

impl Table {
    /// A table that takes `n` keys without growing.
    pub(crate) fn with_capacity(n: usize) -> Self {
        // At most ~70% full.
        let slots = (n + n / 2 + 1).next_power_of_two().max(8);
        Table {
            slots: vec![Slot::default(); slots],
            shift: 64 - slots.trailing_zeros(),
            len: 0,
        }
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        (hash >> self.shift) as usize
    }

    /// The index of the key with `hash` for which `is_key(index)` holds.
    #[inline]
    pub(crate) fn find(&self, hash: u64, mut is_key: impl FnMut(usize) -> bool) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let tag = hash as u32;
        let mut at = self.home(hash);
        loop {
            let slot = self.slots[at];
            if slot.index == 0 {
                return None;
            }
            let index = slot.index as usize - 1;
            if slot.tag == tag && is_key(index) {
                return Some(index);
            }
            at = (at + 1) & mask;
        }
    }

    /// Records `index` for a key with `hash` that [`Table::find`] does not know.
    /// `hash_of(i)` gives the hash of the key at any earlier index (used when growing).
    pub(crate) fn insert(&mut self, hash: u64, index: usize, hash_of: impl Fn(usize) -> u64) {
        if (self.len + 1) * 10 > self.slots.len() * 7 {
            let mut grown = Table::with_capacity((self.len + 1) * 2);
            for slot in self.slots.iter().filter(|s| s.index != 0) {
                let i = slot.index as usize - 1;
                grown.place(hash_of(i), i);
            }
            *self = grown;
        }
        self.place(hash, index);
    }

    fn place(&mut self, hash: u64, index: usize) {
        let mask = self.slots.len() - 1;
        let mut at = self.home(hash);
        while self.slots[at].index != 0 {
            at = (at + 1) & mask;
        }
        self.slots[at] = Slot {
            tag: hash as u32,
            index: u32::try_from(index + 1).unwrap_or(u32::MAX),
        };
        self.len += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::String;

    #[test]
    fn finds_what_it_holds_and_grows() {
        let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
        let mut t = Table::with_capacity(0);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(t.find(hash_str(k), |j| keys[j] == *k), None);
            t.insert(hash_str(k), i, |j| hash_str(&keys[j]));
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(t.find(hash_str(k), |j| keys[j] == *k), Some(i));
        }
        assert_eq!(t.find(hash_str("nope"), |j| keys[j] == "nope"), None);
        assert_eq!(Table::default().find(1, |_| true), None);
        for a in [
            "",
            "a",
            "abc",
            "abcd",
            "abcdefg",
            "abcdefgh",
            "abcdefghi",
            "abcdefghijklmnop",
        ] {
            for b in [
                "",
                "a",
                "abd",
                "abce",
                "abcdefh",
                "bbcdefgh",
                "abcdefghj",
                "abcdefghijklmnoq",
            ] {
                assert_eq!(same(a, b), a == b, "{a} {b}");
                assert!(same(a, a) && same(b, b));
            }
        }
        let ids = [
            "",
            "\0",
            "a",
            "a\0",
            "85123A",
            "abcdefghijklmno",
            "abcdefghijklmnop",
            "abcdefghijklmnopq",
            "abcdefghijklmnoq",
        ];
        for a in ids {
            for b in ids {
                let (ka, kb) = (Key::of(a), Key::of(b));
                assert_eq!(ka.matches(&kb, b, || a), a == b, "{a:?} {b:?}");
            }
        }
        let long = "abcdefghijklmnopqrstuvwxyz";
        assert!(same(long, long) && !same(long, "abcdefghijklmnopqrstuvwxyZ"));
    }
}
