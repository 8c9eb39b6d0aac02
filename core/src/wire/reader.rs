//! The MessagePack reader under every decoder in the core: snapshot bodies ([`super::read`]) and
//! the session cookie's payload. Markers are classified by `rmp`; the reader adds what Attune's
//! decoders need on top: borrowed `str`s, integers of any width checked against the target type,
//! bounded nesting, raw sub-readers over a value to read later, and errors that say where
//! decoding stopped ([`DecodeError`]: the byte offset, the path of map keys and array indexes
//! to it, what was expected and what was found).
//!
//! The path is not tracked while reading: a decoder that fails reports the offset, and the
//! top-level decoder finds the path to that offset afterwards ([`DecodeError::locate`]) by
//! walking the input's structure. Tracking it on the way would cost a branch per field in
//! every generated reader, which measured 4.7 KiB larger (1.5 KiB gzipped) in the Worker.

use alloc::string::String;
use alloc::vec::Vec;

use rmp::Marker;

pub use super::error::{DecodeError, Expected, Found, Result, Step};

/// Deepest nesting of arrays and maps accepted (`rmp-serde`'s default limit).
pub const MAX_DEPTH: usize = 1024;

/// An integer as read: non-negative, or negative.
#[derive(Clone, Copy)]
enum Int {
    Pos(u64),
    Neg(i64),
}

/// MessagePack input being read. After an error the reader is not to be used further.
#[derive(Clone, Copy, Debug)]
pub struct Reader<'a> {
    /// What is left to read.
    rest: &'a [u8],
    /// Offset of the end of `rest` in the whole input, so that offsets in errors are offsets in
    /// it, also for raw sub-readers.
    end: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader {
            rest: bytes,
            end: bytes.len(),
        }
    }

    /// A reader over `bytes` from offset `pos` on.
    pub fn at(bytes: &'a [u8], pos: usize) -> Self {
        Reader {
            rest: bytes.get(pos..).unwrap_or_default(),
            end: bytes.len(),
        }
    }

    /// Offset of the next byte to read, in the whole input.
    pub fn offset(&self) -> usize {
        self.end - self.rest.len()
    }

    fn err<T>(&self, at: usize, expected: Expected, found: Found) -> Result<T> {
        Err(DecodeError::new(at, expected, found))
    }

    /// The next `n` bytes; reading past the end fails as `expected`.
    fn take(&mut self, n: usize, expected: Expected) -> Result<&'a [u8]> {
        match self.rest.split_at_checked(n) {
            Some((head, rest)) => {
                self.rest = rest;
                Ok(head)
            }
            None => self.err(self.end, expected, Found::End),
        }
    }

    /// The next marker and its offset.
    fn marker(&mut self, expected: Expected) -> Result<(usize, u8)> {
        let at = self.offset();
        Ok((at, self.take(1, expected)?[0]))
    }

    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// A big-endian unsigned integer of `n` bytes (at most 8).
    fn be(&mut self, n: usize, expected: Expected) -> Result<u64> {
        Ok(self
            .take(n, expected)?
            .iter()
            .fold(0, |v, &b| v << 8 | u64::from(b)))
    }

    fn len(&mut self, n: usize, expected: Expected) -> Result<usize> {
        let at = self.offset();
        let v = self.be(n, expected)?;
        usize::try_from(v).or_else(|_| self.err(at, expected, Found::Uint(v)))
    }

    /// The integer whose marker `m` (at `at`) was just read.
    fn int_after(&mut self, at: usize, m: u8, expected: Expected) -> Result<Int> {
        Ok(match Marker::from_u8(m) {
            Marker::FixPos(v) => Int::Pos(u64::from(v)),
            Marker::FixNeg(v) => Int::Neg(i64::from(v)),
            Marker::U8 => Int::Pos(self.be(1, expected)?),
            Marker::U16 => Int::Pos(self.be(2, expected)?),
            Marker::U32 => Int::Pos(self.be(4, expected)?),
            Marker::U64 => Int::Pos(self.be(8, expected)?),
            Marker::I8 | Marker::I16 | Marker::I32 | Marker::I64 => {
                let n = 1usize << (m - 0xd0);
                let shift = 64 - 8 * n as u32;
                let v = ((self.be(n, expected)? << shift) as i64) >> shift;
                if v < 0 {
                    Int::Neg(v)
                } else {
                    Int::Pos(v as u64)
                }
            }
            _ => return self.err(at, expected, Found::Marker(m)),
        })
    }

    /// An unsigned integer of at most `max` (named `ty` in errors). One function for every
    /// width, so that each reader calls it rather than a copy of its own.
    #[inline(never)]
    fn uint(&mut self, ty: &'static str, max: u64) -> Result<u64> {
        let expected = Expected::Int(ty);
        let (at, m) = self.marker(expected)?;
        match self.int_after(at, m, expected)? {
            Int::Pos(v) if v <= max => Ok(v),
            Int::Pos(v) => self.err(at, expected, Found::Uint(v)),
            Int::Neg(v) => self.err(at, expected, Found::NegInt(v)),
        }
    }

    pub fn u64(&mut self) -> Result<u64> {
        self.uint("u64", u64::MAX)
    }

    pub fn u32(&mut self) -> Result<u32> {
        self.uint("u32", u32::MAX.into()).map(|v| v as u32)
    }

    pub fn usize(&mut self) -> Result<usize> {
        // `usize` is at most 64 bits wide on every target Attune builds for.
        let max = u64::try_from(usize::MAX).unwrap_or(u64::MAX);
        self.uint("usize", max).map(|v| v as usize)
    }

    pub fn i64(&mut self) -> Result<i64> {
        let expected = Expected::Int("i64");
        let (at, m) = self.marker(expected)?;
        match self.int_after(at, m, expected)? {
            Int::Pos(v) => i64::try_from(v).or_else(|_| self.err(at, expected, Found::Uint(v))),
            Int::Neg(v) => Ok(v),
        }
    }

    /// A float as `f64` (`f32` values widen exactly); integers convert with `as`, through `f32`
    /// when `narrow` (serde converts integers straight to the field's type).
    fn float(&mut self, narrow: bool) -> Result<f64> {
        let expected = Expected::Float(if narrow { "f32" } else { "f64" });
        let (at, m) = self.marker(expected)?;
        let v = match Marker::from_u8(m) {
            Marker::F32 => f64::from(f32::from_bits(self.be(4, expected)? as u32)),
            Marker::F64 => f64::from_bits(self.be(8, expected)?),
            _ => match self.int_after(at, m, expected)? {
                Int::Pos(v) if narrow => f64::from(v as f32),
                Int::Neg(v) if narrow => f64::from(v as f32),
                Int::Pos(v) => v as f64,
                Int::Neg(v) => v as f64,
            },
        };
        if v.is_finite() {
            Ok(v)
        } else {
            self.err(at, expected, Found::NonFinite)
        }
    }

    pub fn f64(&mut self) -> Result<f64> {
        self.float(false)
    }

    pub fn f32(&mut self) -> Result<f32> {
        self.float(true).map(|v| v as f32)
    }

    pub fn bool(&mut self) -> Result<bool> {
        match self.marker(Expected::Bool)? {
            (_, 0xc2) => Ok(false),
            (_, 0xc3) => Ok(true),
            (at, m) => self.err(at, Expected::Bool, Found::Marker(m)),
        }
    }

    /// `nil`, consumed, or nothing consumed.
    pub fn nil(&mut self) -> bool {
        let nil = self.peek() == Some(0xc0);
        if nil {
            self.rest = self.rest.get(1..).unwrap_or_default();
        }
        nil
    }

    /// A string, borrowed from the input (`str` only, never `bin`).
    pub fn str(&mut self) -> Result<&'a str> {
        let expected = Expected::Str;
        let (at, m) = self.marker(expected)?;
        let len = match Marker::from_u8(m) {
            Marker::FixStr(n) => usize::from(n),
            Marker::Str8 => self.len(1, expected)?,
            Marker::Str16 => self.len(2, expected)?,
            Marker::Str32 => self.len(4, expected)?,
            _ => return self.err(at, expected, Found::Marker(m)),
        };
        let bytes = self.take(len, expected)?;
        core::str::from_utf8(bytes).or_else(|_| self.err(at, expected, Found::InvalidUtf8))
    }

    pub fn string(&mut self) -> Result<String> {
        self.str().map(String::from)
    }

    /// An array's length.
    pub fn array(&mut self) -> Result<usize> {
        let expected = Expected::Array;
        let (at, m) = self.marker(expected)?;
        match Marker::from_u8(m) {
            Marker::FixArray(n) => Ok(usize::from(n)),
            Marker::Array16 => self.len(2, expected),
            Marker::Array32 => self.len(4, expected),
            _ => self.err(at, expected, Found::Marker(m)),
        }
    }

    /// An array of exactly `n` elements (a tuple).
    pub fn tuple(&mut self, n: usize) -> Result<()> {
        let at = self.offset();
        let len = self.array().map_err(|e| e.retarget(Expected::Tuple(n)))?;
        if len == n {
            Ok(())
        } else {
            self.err(at, Expected::Tuple(n), Found::Len(len))
        }
    }

    /// A map's length (number of key-value pairs).
    pub fn map(&mut self) -> Result<usize> {
        let expected = Expected::Map;
        let (at, m) = self.marker(expected)?;
        match Marker::from_u8(m) {
            Marker::FixMap(n) => Ok(usize::from(n)),
            Marker::Map16 => self.len(2, expected),
            Marker::Map32 => self.len(4, expected),
            _ => self.err(at, expected, Found::Marker(m)),
        }
    }

    /// Reads a map with string keys, calling `field` with each key positioned at its value;
    /// `field` must consume the value (skip what it does not know).
    pub fn fields(
        &mut self,
        mut field: impl FnMut(&mut Self, &'a str) -> Result<()>,
    ) -> Result<()> {
        for _ in 0..self.map()? {
            let key = self.str()?;
            field(self, key)?;
        }
        Ok(())
    }

    /// An array of values read by `item`; an error names the element's index.
    pub fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Result<T>) -> Result<Vec<T>> {
        let n = self.array()?;
        // Every element takes at least one byte: a bogus length cannot reserve much.
        let mut out = Vec::with_capacity(n.min(self.rest.len()));
        for _ in 0..n {
            out.push(item(self)?);
        }
        Ok(out)
    }

    /// Skips one well-formed value.
    pub fn skip(&mut self) -> Result<()> {
        self.skip_at(0)
    }

    /// Skips one well-formed value and returns a reader over it, to read it later. Offsets in
    /// its errors are still offsets in the whole input.
    pub fn raw(&mut self) -> Result<Self> {
        let start = self.rest;
        self.skip()?;
        Ok(Reader {
            rest: start
                .get(..start.len() - self.rest.len())
                .unwrap_or_default(),
            end: self.offset(),
        })
    }

    fn skip_at(&mut self, depth: usize) -> Result<()> {
        let expected = Expected::Value;
        let at = self.offset();
        let Some(m) = self.peek() else {
            return self.err(at, expected, Found::End);
        };
        let (n, per) = match Marker::from_u8(m) {
            Marker::Null | Marker::True | Marker::False => {
                self.rest = self.rest.get(1..).unwrap_or_default();
                return Ok(());
            }
            Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
                return self.str().map(drop);
            }
            // Any float, even NaN (the tree holds it as `null`).
            Marker::F32 => return self.take(5, expected).map(drop),
            Marker::F64 => return self.take(9, expected).map(drop),
            Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => (self.map()?, 2),
            Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => (self.array()?, 1),
            _ => {
                self.rest = self.rest.get(1..).unwrap_or_default();
                return self.int_after(at, m, expected).map(drop);
            }
        };
        if depth >= MAX_DEPTH {
            return self.err(at, expected, Found::TooDeep);
        }
        for i in 0..n * per {
            if per == 2 && i % 2 == 0 {
                self.str()?;
            } else {
                self.skip_at(depth + 1)?;
            }
        }
        Ok(())
    }
}

/// Longest path [`DecodeError::locate`] finds. Each step skips over the value it descends into,
/// so the walk costs up to the input's length per step; no snapshot nests this deep.
pub const MAX_PATH: usize = 32;

/// The map keys and array indexes from the top of `input` down to the innermost value that
/// starts at or before `offset` and does not end before it (or does not end at all: input cut
/// short), at most [`MAX_PATH`] of them. A failure at a map key or at a container's first byte
/// stops at that container.
pub(super) fn path_to(input: &[u8], offset: usize) -> Vec<Step> {
    let mut path = Vec::new();
    let mut r = Reader::new(input);
    'descend: while path.len() < MAX_PATH {
        let is_map = match r.peek().map(Marker::from_u8) {
            Some(Marker::FixMap(_) | Marker::Map16 | Marker::Map32) => true,
            Some(Marker::FixArray(_) | Marker::Array16 | Marker::Array32) => false,
            _ => break,
        };
        let Ok(len) = (if is_map { r.map() } else { r.array() }) else {
            break;
        };
        for i in 0..len {
            let key = if is_map {
                match r.str() {
                    Ok(key) => Some(key),
                    Err(_) => break 'descend,
                }
            } else {
                None
            };
            if r.offset() > offset {
                break 'descend;
            }
            let mut rest = r;
            if rest.skip().map_or(true, |()| offset < rest.offset()) {
                path.push(key.map_or(Step::Index(i), |k| Step::Field(k.into())));
                continue 'descend;
            }
            r = rest;
        }
        break;
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn errors_say_where_and_what() {
        // A truncated `u32`: the offset is where the input ended.
        let e = Reader::new(&[0xce, 0, 1]).u32().unwrap_err();
        assert_eq!((e.offset(), e.found()), (3, &Found::End));
        assert_eq!(e.to_string(), "at byte 3: expected u32, found end of input");
        // Out of range for the type, at the value's offset.
        let mut r = Reader::new(&[0x01, 0xcf, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(r.u32(), Ok(1));
        let e = r.u32().unwrap_err();
        assert_eq!((e.offset(), e.found()), (1, &Found::Uint(1 << 32)));
        // Another type: the marker is named.
        let e = Reader::new(&[0x93, 1, 2, 3]).tuple(2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "at byte 0: expected array of 2, found array of 3"
        );
        let e = Reader::new(b"\xc4\x01x").str().unwrap_err();
        assert_eq!(e.to_string(), "at byte 0: expected str, found Bin8 (0xc4)");
        let e = Reader::new(b"\xa1\xff").str().unwrap_err();
        assert_eq!(e.found(), &Found::InvalidUtf8);
        let e = Reader::new(&[0xca, 0x7f, 0xc0, 0, 0]).f32().unwrap_err();
        assert_eq!(e.found(), &Found::NonFinite);
        let e = Reader::new(&[0xff]).u64().unwrap_err();
        assert_eq!(e.found(), &Found::NegInt(-1));
        // Paths are built as the error travels out, and printed outermost first.
        let input = b"\x81\xa8versions\x92\x01\xc0";
        let mut r = Reader::new(input);
        let e = r
            .fields(|r, _| r.list(|r| r.u64()).map(drop))
            .unwrap_err()
            .locate(input);
        assert_eq!(e.path(), [Step::Field("versions".into()), Step::Index(1)]);
        assert_eq!(
            e.to_string(),
            "at byte 12 in versions[1]: expected u64, found Null (0xc0)"
        );
    }

    #[test]
    fn paths_lead_to_the_offset() {
        // `{"a": [1, {"b": 2}], "c": 3}`
        let input = b"\x82\xa1a\x92\x01\x81\xa1b\x02\xa1c\x03";
        let at = |offset| path_to(input, offset);
        let (a, b, c) = (
            || Step::Field("a".into()),
            || Step::Field("b".into()),
            || Step::Field("c".into()),
        );
        assert_eq!(at(0), []);
        assert_eq!(at(3), [a()]);
        assert_eq!(at(4), [a(), Step::Index(0)]);
        assert_eq!(at(5), [a(), Step::Index(1)]);
        assert_eq!(at(8), [a(), Step::Index(1), b()]);
        assert_eq!(at(11), [c()]);
        // Cut short inside `b`'s value: the path leads into the unfinished values.
        assert_eq!(path_to(&input[..8], 8), [a(), Step::Index(1), b()]);
        // Deep nesting: the path stops at `MAX_PATH` steps.
        let mut deep = alloc::vec![0x91; MAX_DEPTH];
        deep.push(0xc1);
        assert_eq!(path_to(&deep, MAX_DEPTH).len(), MAX_PATH);
    }

    #[test]
    fn raw_readers_keep_offsets_and_bounds() {
        // `[[1, 2], 3]`: a raw reader over the inner array cannot read past it.
        let bytes = [0x92, 0x92, 0x01, 0x02, 0x03];
        let mut r = Reader::new(&bytes);
        assert_eq!(r.array(), Ok(2));
        let mut inner = r.raw().unwrap();
        assert_eq!(r.u64(), Ok(3));
        assert_eq!(inner.array(), Ok(2));
        assert_eq!(inner.offset(), 2);
        assert_eq!((inner.u64(), inner.u64()), (Ok(1), Ok(2)));
        let e = inner.u64().unwrap_err();
        assert_eq!((e.offset(), e.found()), (4, &Found::End));
    }

    #[test]
    fn skips_bounded_nesting_only() {
        let mut deep = alloc::vec![0x91; MAX_DEPTH + 1];
        deep.push(0xc0);
        let e = Reader::new(&deep).skip().unwrap_err();
        assert_eq!((e.offset(), e.found()), (MAX_DEPTH, &Found::TooDeep));
        deep.remove(0);
        assert_eq!(Reader::new(&deep).skip(), Ok(()));
    }
}
