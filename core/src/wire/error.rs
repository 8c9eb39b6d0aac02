//! Why and where decoding stopped: [`DecodeError`], the error of every decoder on
//! [`super::reader::Reader`].

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use rmp::Marker;

use super::reader::{MAX_DEPTH, path_to};

/// One step of the path to a value: a map key (as written) or an array index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Field(String),
    Index(usize),
}

/// What a decoder was reading when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// An integer that fits the named type (`"u32"`, `"i64"`, …).
    Int(&'static str),
    /// A finite float (`"f32"` or `"f64"`); integers are accepted too.
    Float(&'static str),
    Bool,
    Str,
    Array,
    /// An array of exactly this many elements (a tuple).
    Tuple(usize),
    Map,
    /// A required map field.
    Field(&'static str),
    /// The name of one of the variants of the named enum.
    Variant(&'static str),
    /// Any well-formed value (an unknown field being skipped).
    Value,
}

/// What the decoder found instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// The input ended.
    End,
    /// A value of another type: its MessagePack marker byte.
    Marker(u8),
    /// An integer out of the expected type's range.
    Uint(u64),
    NegInt(i64),
    /// A NaN or infinite float.
    NonFinite,
    /// A string that is not valid UTF-8.
    InvalidUtf8,
    /// An array of this many elements.
    Len(usize),
    /// An unknown enum variant name.
    Name(String),
    /// Nothing: a required field is absent.
    Missing,
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Int(ty) | Expected::Float(ty) => write!(f, "{ty}"),
            Expected::Bool => f.write_str("bool"),
            Expected::Str => f.write_str("str"),
            Expected::Array => f.write_str("array"),
            Expected::Tuple(n) => write!(f, "array of {n}"),
            Expected::Map => f.write_str("map"),
            Expected::Field(name) => write!(f, "field `{name}`"),
            Expected::Variant(ty) => write!(f, "{ty} variant"),
            Expected::Value => f.write_str("a well-formed value"),
        }
    }
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::End => f.write_str("end of input"),
            Found::Marker(m) => write!(f, "{:?} (0x{m:02x})", Marker::from_u8(*m)),
            Found::Uint(v) => write!(f, "integer {v}"),
            Found::NegInt(v) => write!(f, "integer {v}"),
            Found::NonFinite => f.write_str("a non-finite float"),
            Found::InvalidUtf8 => f.write_str("invalid UTF-8"),
            Found::Len(n) => write!(f, "array of {n}"),
            Found::Name(name) => write!(f, "`{name}`"),
            Found::Missing => f.write_str("nothing"),
            Found::TooDeep => write!(f, "nesting deeper than {MAX_DEPTH}"),
        }
    }
}

/// Why and where decoding stopped. Boxed: the reader's results stay one word wide on the
/// success path, which is the only one that matters for speed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(Box<Detail>);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Detail {
    offset: usize,
    /// Outermost step first.
    path: Vec<Step>,
    expected: Expected,
    found: Found,
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}", self.offset)?;
        if !self.path.is_empty() {
            f.write_str(" in ")?;
            for (i, step) in self.path.iter().enumerate() {
                match step {
                    Step::Field(name) if i == 0 => f.write_str(name)?,
                    Step::Field(name) => write!(f, ".{name}")?,
                    Step::Index(n) => write!(f, "[{n}]")?,
                }
            }
        }
        write!(f, ": expected {}, found {}", self.expected, self.found)
    }
}

impl DecodeError {
    // Errors are the rare path: kept out of line, so the readers stay small.
    #[cold]
    #[inline(never)]
    pub fn new(offset: usize, expected: Expected, found: Found) -> Self {
        DecodeError(Box::new(Detail {
            offset,
            path: Vec::new(),
            expected,
            found,
        }))
    }

    /// Byte offset in the input of the value that failed to decode (the input's length when it
    /// ended early).
    pub fn offset(&self) -> usize {
        self.0.offset
    }

    /// The path to the value that failed, outermost first (`body`, `items`, `3`, `k`); empty
    /// until [`DecodeError::locate`] has run.
    pub fn path(&self) -> &[Step] {
        &self.0.path
    }

    pub fn expected(&self) -> Expected {
        self.0.expected
    }

    pub fn found(&self) -> &Found {
        &self.0.found
    }

    /// Fills in the path to the failure in `input`, the whole input the failing decoder read.
    #[cold]
    #[inline(never)]
    pub fn locate(mut self, input: &[u8]) -> Self {
        self.0.path = path_to(input, self.0.offset);
        self
    }
}

pub type Result<T, E = DecodeError> = core::result::Result<T, E>;

impl DecodeError {
    /// The same failure, described as a failure to read `expected` (a tuple read as an array).
    pub(super) fn retarget(mut self, expected: Expected) -> Self {
        self.0.expected = expected;
        self
    }
}
