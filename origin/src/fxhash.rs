//! Fast hashers for the pipeline's in-memory maps.
//!
//! [`FxHasher`] (the rustc multiply-rotate) for keys the service makes itself: interned item
//! ids, pair keys and xxh3 digests of `event_id`s. [`NameBuild`] for names a client chooses
//! (users, items): xxh3 with a per-process random seed, so colliding names cannot be
//! precomputed. Nothing observable depends on the iteration order of these maps.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

#[derive(Clone, Copy, Debug, Default)]
pub struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes([
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
            ]));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // Spread the entropy into the top bits too (hashbrown takes control bits from there).
        self.hash ^ (self.hash >> 29)
    }
}

pub type FxBuild = BuildHasherDefault<FxHasher>;
pub type FxHashMap<K, V> = HashMap<K, V, FxBuild>;
pub type FxHashSet<K> = HashSet<K, FxBuild>;

/// xxh3 keyed by a random per-process seed, for client-chosen strings.
#[derive(Clone, Copy, Debug)]
pub struct NameBuild {
    seed: u64,
}

impl Default for NameBuild {
    fn default() -> Self {
        use std::sync::OnceLock;
        static SEED: OnceLock<u64> = OnceLock::new();
        NameBuild {
            seed: *SEED.get_or_init(rand::random),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct NameHasher {
    hash: u64,
}

impl Hasher for NameHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.hash = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.hash);
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        // `str`'s terminator: cheap, and still separates "ab","c" from "a","bc".
        self.hash = (self.hash ^ u64::from(i)).wrapping_mul(SEED);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

impl std::hash::BuildHasher for NameBuild {
    type Hasher = NameHasher;
    fn build_hasher(&self) -> NameHasher {
        NameHasher { hash: self.seed }
    }
}

pub type NameMap<V> = HashMap<Box<str>, V, NameBuild>;
