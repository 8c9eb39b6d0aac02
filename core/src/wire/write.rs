//! The MessagePack writer for what the core writes by hand (the session cookie's payload): the
//! smallest integer and length forms, which is what `rmp-serde` writes. Snapshot envelopes are
//! written by `rmp-serde` ([`super::encode`]): only the origin writes them, and the Worker never
//! links that code.
//!
//! Written out rather than on `rmp::encode`: `rmp`'s writers go through its generic `RmpWrite`
//! (`std::io::Write` for a `Vec` once any crate enables `rmp/std`, as `rmp-serde` does) and
//! measured 2.3 KB larger in the Worker's wasm for these three forms.

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
        let out = &mut self.out;
        if v < 0x80 {
            out.push(v as u8);
        } else if v <= 0xff {
            out.extend_from_slice(&[0xcc, v as u8]);
        } else if v <= 0xffff {
            out.push(0xcd);
            out.extend_from_slice(&(v as u16).to_be_bytes());
        } else if v <= 0xffff_ffff {
            out.push(0xce);
            out.extend_from_slice(&(v as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&v.to_be_bytes());
        }
        self
    }

    /// A length `n`: its fix form (`fix | n` below `fix_max`), else the narrowest of the 8-, 16-
    /// and 32-bit forms the type has (`wide` markers; `None` where it has no such form).
    fn len(&mut self, n: u32, fix: u8, fix_max: u32, wide: [Option<u8>; 3]) {
        let out = &mut self.out;
        match (n, wide) {
            (n, _) if n < fix_max => out.push(fix | n as u8),
            (n, [Some(m), _, _]) if n <= 0xff => out.extend_from_slice(&[m, n as u8]),
            (n, [_, Some(m), _]) if n <= 0xffff => {
                out.push(m);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            (n, [_, _, m]) => {
                out.push(m.unwrap_or(0xdd));
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
    }

    /// An array header of `len` elements; the caller writes the elements.
    pub fn array(&mut self, len: u32) -> &mut Self {
        self.len(len, 0x90, 16, [None, Some(0xdc), Some(0xdd)]);
        self
    }

    /// A `str`. The caller keeps it under 4 GiB, MessagePack's limit.
    pub fn str(&mut self, s: &str) -> &mut Self {
        let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
        self.len(len, 0xa0, 32, [Some(0xd9), Some(0xda), Some(0xdb)]);
        self.out.extend_from_slice(s.as_bytes());
        self
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.out
    }
}
