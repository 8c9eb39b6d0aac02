//! The MessagePack writer for what the core writes by hand (the session cookie's payload), on
//! `rmp`'s encoders: the smallest integer and length forms, which is what `rmp-serde` writes.
//! Snapshot envelopes are written by `rmp-serde` ([`super::encode`]): only the origin writes
//! them, and the Worker never links that code.

use alloc::vec::Vec;

/// MessagePack output. Writing into a `Vec` cannot fail, so no method returns an error.
#[derive(Debug, Default)]
pub struct Writer {
    out: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Writer::default()
    }

    pub fn uint(&mut self, v: u64) -> &mut Self {
        // The only error is the `Vec`'s, which has none.
        let _ = rmp::encode::write_uint(&mut self.out, v);
        self
    }

    /// An array header of `len` elements; the caller writes the elements.
    pub fn array(&mut self, len: u32) -> &mut Self {
        let _ = rmp::encode::write_array_len(&mut self.out, len);
        self
    }

    /// A `str`. The caller keeps it under 4 GiB, MessagePack's limit.
    pub fn str(&mut self, s: &str) -> &mut Self {
        let _ = rmp::encode::write_str(&mut self.out, s);
        self
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.out
    }
}
