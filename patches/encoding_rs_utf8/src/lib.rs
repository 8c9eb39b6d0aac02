//! A UTF-8-only stand-in for [`encoding_rs`](https://crates.io/crates/encoding_rs), linked into
//! the Worker instead of the real crate through `[patch.crates-io]` in the workspace root.
//!
//! **Why.** lol_html 3.0.3 picks the document encoding at run time and dispatches on it, so
//! with the real `encoding_rs` every legacy and CJK decoder and encoder and their tables are
//! linked into the Worker: about 137 KiB of its 388.7 KiB gzipped wasm (twiggy), against a
//! 300 KB budget. The Worker only ever rewrites UTF-8 pages (`attune_edge::policy::response_bypass`
//! passes every response that declares another charset through untouched, and the rewriter
//! runs with lol_html's default UTF-8 encoding), so none of that code can ever run.
//!
//! **What it supports.** UTF-8, with the semantics of `encoding_rs` 0.8 for it: the streaming
//! decoder replaces malformed input with U+FFFD following the WHATWG ("maximal subpart") rules
//! across arbitrary chunk boundaries, returns the same `(result, read, written)` as
//! `encoding_rs` for every input and output buffer of at least 4 bytes (the minimum
//! `encoding_rs` documents), and flushes an incomplete trailing sequence as one U+FFFD when
//! `last` is set. The encoder copies. The label lookups know only the six UTF-8 labels of the
//! Encoding Standard; **every other label resolves to `None`**, so no other encoding can ever be
//! selected (a page's `<meta charset="windows-1252">` leaves lol_html on UTF-8).
//!
//! `WINDOWS_1252` also exists, as a complete windows-1252 (single-byte, 0x80–0x9F per the
//! WHATWG index), only because lol_html's non-test code names it: it formats raw bytes for
//! its `Debug` output with it. No label resolves to it.
//!
//! **What it is not.** A general encoding library. It implements the API surface that
//! lol_html 3.0.3 uses outside its tests, plus the few methods those rest on or that state
//! their buffer bounds (`Encoding::for_label`, `Encoding::output_encoding`,
//! `Decoder::decode_to_utf8`, `Decoder::max_utf8_buffer_length`, `Encoder::encoding`,
//! `Encoder::max_buffer_length_from_utf8_if_no_unmappables`); bumping lol_html means checking
//! that surface again (`cargo build` fails on anything missing). Known differences from
//! `encoding_rs`, none reachable from lol_html's use:
//!
//! - [`Encoding::decode`] removes a UTF-8 BOM like `encoding_rs`, but does not recognize the
//!   UTF-16 BOMs (there is no UTF-16 here): such input decodes as malformed UTF-8.
//! - A [`Decoder`] that has finished (`last` with `InputEmpty`) starts a new stream if used
//!   again instead of panicking; an end-of-stream U+FFFD that does not fit (fewer than 3 bytes
//!   of output space, below the documented minimum) returns `OutputFull` instead of panicking.
//! - For windows-1252 the output is exact, but where a call stops on `OutputFull` may differ.

#![no_std]

extern crate alloc;

mod utf_8;
mod windows_1252;

use alloc::borrow::Cow;
use alloc::string::String;

use crate::utf_8::Utf8Decoder;

/// Which of the two implementations an [`Encoding`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Utf8,
    Windows1252,
}

/// An encoding. The only instances are the statics [`UTF_8`] and [`WINDOWS_1252`]; they compare
/// by address, as in `encoding_rs`.
pub struct Encoding {
    name: &'static str,
    variant: Variant,
}

static UTF_8_INIT: Encoding = Encoding {
    name: "UTF-8",
    variant: Variant::Utf8,
};

static WINDOWS_1252_INIT: Encoding = Encoding {
    name: "windows-1252",
    variant: Variant::Windows1252,
};

/// The UTF-8 encoding.
pub static UTF_8: &Encoding = &UTF_8_INIT;

/// The windows-1252 encoding. Never returned by a label lookup; it exists because lol_html
/// decodes bytes with it for `Debug` output.
pub static WINDOWS_1252: &Encoding = &WINDOWS_1252_INIT;

/// The labels of UTF-8 in the Encoding Standard (<https://encoding.spec.whatwg.org/#names-and-labels>).
const UTF_8_LABELS: [&[u8]; 6] = [
    b"unicode-1-1-utf-8",
    b"unicode11utf8",
    b"unicode20utf8",
    b"utf-8",
    b"utf8",
    b"x-unicode20utf8",
];

/// The UTF-8 byte order mark.
const UTF_8_BOM: &[u8] = b"\xEF\xBB\xBF";

impl Encoding {
    /// The _get an encoding_ algorithm, restricted to UTF-8: after removing leading and trailing
    /// ASCII whitespace and ASCII-lowercasing, a UTF-8 label gives `Some(UTF_8)`; any other
    /// label, including every label of every other encoding, gives `None`.
    pub fn for_label(label: &[u8]) -> Option<&'static Encoding> {
        // `trim_ascii` trims exactly the bytes the Encoding Standard calls ASCII whitespace
        // (TAB, LF, FF, CR, SPACE), as `encoding_rs` does.
        let label = label.trim_ascii();
        UTF_8_LABELS
            .iter()
            .any(|known| label.eq_ignore_ascii_case(known))
            .then_some(UTF_8)
    }

    /// Like [`for_label`](Self::for_label) (there is no replacement encoding here to refuse).
    pub fn for_label_no_replacement(label: &[u8]) -> Option<&'static Encoding> {
        Encoding::for_label(label)
    }

    /// The encoding's name (`"UTF-8"`, `"windows-1252"`).
    pub fn name(&'static self) -> &'static str {
        self.name
    }

    /// Whether bytes 0x00–0x7F map to U+0000–U+007F and back: true for both encodings here.
    pub fn is_ascii_compatible(&'static self) -> bool {
        true
    }

    /// The encoding used when encoding text: the encoding itself for both encodings here.
    pub fn output_encoding(&'static self) -> &'static Encoding {
        self
    }

    fn can_encode_everything(&'static self) -> bool {
        self.variant == Variant::Utf8
    }

    /// Decodes a complete input, removing a UTF-8 BOM (which also selects UTF-8, as in
    /// `encoding_rs`); malformed UTF-8 becomes U+FFFD. Returns the text, the encoding used and
    /// whether there were malformed sequences. Borrows when the input is already valid text.
    pub fn decode<'a>(&'static self, bytes: &'a [u8]) -> (Cow<'a, str>, &'static Encoding, bool) {
        let (encoding, rest) = match bytes.strip_prefix(UTF_8_BOM) {
            Some(rest) => (UTF_8, rest),
            None => (self, bytes),
        };
        let (text, had_errors) = match encoding.variant {
            Variant::Utf8 => match core::str::from_utf8(rest) {
                Ok(text) => (Cow::Borrowed(text), false),
                // std's lossy conversion replaces per maximal subpart, like the WHATWG decoder.
                Err(_) => (Cow::Owned(String::from_utf8_lossy(rest).into_owned()), true),
            },
            Variant::Windows1252 => (windows_1252::decode(rest), false),
        };
        (text, encoding, had_errors)
    }

    /// Encodes a complete string. UTF-8 borrows; windows-1252 writes characters it cannot
    /// represent as decimal HTML numeric character references (`&#10003;`) and reports that in
    /// the third item. The second item is the encoding used.
    pub fn encode<'a>(&'static self, string: &'a str) -> (Cow<'a, [u8]>, &'static Encoding, bool) {
        match self.variant {
            Variant::Utf8 => (Cow::Borrowed(string.as_bytes()), self, false),
            Variant::Windows1252 => {
                let (bytes, had_unmappables) = windows_1252::encode(string);
                (bytes, self, had_unmappables)
            }
        }
    }

    /// A streaming decoder for this encoding that does not look for a BOM.
    pub fn new_decoder_without_bom_handling(&'static self) -> Decoder {
        Decoder {
            encoding: self,
            utf8: Utf8Decoder::new(),
        }
    }

    /// A streaming encoder for this encoding's output encoding.
    pub fn new_encoder(&'static self) -> Encoder {
        Encoder {
            encoding: self.output_encoding(),
        }
    }

    /// The length of the longest prefix of `bytes` that is ASCII.
    pub fn ascii_valid_up_to(bytes: &[u8]) -> usize {
        bytes
            .iter()
            .position(|b| !b.is_ascii())
            .unwrap_or(bytes.len())
    }
}

impl PartialEq for Encoding {
    fn eq(&self, other: &Encoding) -> bool {
        core::ptr::eq(self, other)
    }
}

impl Eq for Encoding {}

impl core::fmt::Debug for Encoding {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Encoding")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The result of a (possibly partial) streaming decode or encode call.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub enum CoderResult {
    /// All the input was consumed. With `last`, the stream is complete; otherwise call again
    /// with more input.
    InputEmpty,
    /// The output buffer has no room for the next character: call again with more output
    /// space and the input that was not read.
    OutputFull,
}

/// A streaming decoder into UTF-8. Malformed input becomes U+FFFD; an incomplete sequence at
/// the end of one input continues in the next, and `last` flushes it as one U+FFFD.
///
/// Decoding UTF-8 needs at least 4 bytes of output space per call to make progress (as in
/// `encoding_rs`); [`max_utf8_buffer_length`](Self::max_utf8_buffer_length) gives a size with
/// which one call consumes all of the given input.
pub struct Decoder {
    encoding: &'static Encoding,
    /// The UTF-8 state (windows-1252 has none).
    utf8: Utf8Decoder,
}

impl Decoder {
    /// The encoding this decoder decodes.
    pub fn encoding(&self) -> &'static Encoding {
        self.encoding
    }

    /// The worst-case UTF-8 output size for `byte_length` more input bytes, given the state
    /// carried over from earlier calls, or `None` if it overflows `usize`.
    pub fn max_utf8_buffer_length(&self, byte_length: usize) -> Option<usize> {
        match self.encoding.variant {
            Variant::Utf8 => self.utf8.max_utf8_buffer_length(byte_length),
            Variant::Windows1252 => byte_length.checked_mul(3),
        }
    }

    /// Decodes `src` into `dst`, replacing malformed sequences with U+FFFD. Returns the result,
    /// the bytes read, the bytes written and whether anything was replaced. `dst[..written]`
    /// is complete characters; nothing beyond it is written.
    pub fn decode_to_utf8(
        &mut self,
        src: &[u8],
        dst: &mut [u8],
        last: bool,
    ) -> (CoderResult, usize, usize, bool) {
        match self.encoding.variant {
            Variant::Utf8 => self.utf8.decode(src, dst, last),
            Variant::Windows1252 => windows_1252::decode_to_utf8(src, dst),
        }
    }

    /// [`decode_to_utf8`](Self::decode_to_utf8) into a `&mut str` (lol_html's text buffer).
    /// Bytes after `written` may be replaced with NULs to keep `dst` valid UTF-8.
    #[expect(
        unsafe_code,
        reason = "writing into a `&mut str` has no safe API; validity is restored by `StrGuard`"
    )]
    pub fn decode_to_str(
        &mut self,
        src: &[u8],
        dst: &mut str,
        last: bool,
    ) -> (CoderResult, usize, usize, bool) {
        // SAFETY: `str::as_bytes_mut` requires the bytes to be valid UTF-8 again when the
        // borrow ends. They are only written through the guard, and the guard's `Drop`
        // (which runs on return and on unwinding, before the borrow of `dst` ends) replaces
        // every byte that is not part of valid UTF-8 with NUL, whatever was written.
        let guard = StrGuard(unsafe { dst.as_bytes_mut() });
        self.decode_to_utf8(src, guard.0, last)
    }
}

impl core::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Decoder")
            .field("encoding", self.encoding)
            .finish_non_exhaustive()
    }
}

/// The bytes of a `&mut str` under modification; dropping it makes them valid UTF-8.
struct StrGuard<'a>(&'a mut [u8]);

impl Drop for StrGuard<'_> {
    fn drop(&mut self) {
        make_valid_utf8(self.0);
    }
}

/// Replaces every byte of `bytes` that is not part of a valid UTF-8 sequence with NUL. After a
/// decode this only touches the continuation bytes right after the written part (the tail of a
/// character from earlier contents whose start was overwritten).
fn make_valid_utf8(bytes: &mut [u8]) {
    let mut rest = bytes;
    while let Err(error) = core::str::from_utf8(rest) {
        let tail = core::mem::take(&mut rest);
        let (_, invalid) = tail.split_at_mut(error.valid_up_to());
        let bad = error
            .error_len()
            .unwrap_or(invalid.len())
            .min(invalid.len());
        let (bad, after) = invalid.split_at_mut(bad);
        bad.fill(0);
        rest = after;
    }
}

/// Encodes UTF-8 text into the encoding's bytes in a streaming manner.
pub struct Encoder {
    encoding: &'static Encoding,
}

/// The most bytes a numeric character reference takes (`&#1114111;`).
const NCR_EXTRA: usize = 10;

impl Encoder {
    /// The encoding this encoder encodes into.
    pub fn encoding(&self) -> &'static Encoding {
        self.encoding
    }

    /// Whether the encoder holds state that `last` would flush: never, for these encodings.
    pub fn has_pending_state(&self) -> bool {
        false
    }

    /// The worst-case output size for `byte_length` more bytes of UTF-8 input if it has no
    /// unmappable characters (plus room for one numeric character reference where characters
    /// can be unmappable), or `None` if it overflows `usize`.
    pub fn max_buffer_length_from_utf8_if_no_unmappables(
        &self,
        byte_length: usize,
    ) -> Option<usize> {
        if self.encoding.can_encode_everything() {
            Some(byte_length)
        } else {
            byte_length.checked_add(NCR_EXTRA)
        }
    }

    /// Encodes `src` into `dst`; unmappable characters become decimal numeric character
    /// references. Returns the result, the bytes read, the bytes written and whether anything
    /// was unmappable. UTF-8 is a copy that stops before a character that does not fit.
    pub fn encode_from_utf8(
        &mut self,
        src: &str,
        dst: &mut [u8],
        _last: bool,
    ) -> (CoderResult, usize, usize, bool) {
        match self.encoding.variant {
            Variant::Utf8 => {
                let mut n = src.len().min(dst.len());
                while !src.is_char_boundary(n) {
                    n -= 1;
                }
                let (head, _) = src.as_bytes().split_at(n);
                let (out, _) = dst.split_at_mut(n);
                out.copy_from_slice(head);
                let result = if n == src.len() {
                    CoderResult::InputEmpty
                } else {
                    CoderResult::OutputFull
                };
                (result, n, n, false)
            }
            Variant::Windows1252 => windows_1252::encode_from_utf8(src, dst),
        }
    }
}

impl core::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Encoder")
            .field("encoding", self.encoding)
            .finish_non_exhaustive()
    }
}

/// Writes `c` as a decimal numeric character reference (`&#NNN;`) at the start of `dst`, which
/// must have room for [`NCR_EXTRA`] bytes; returns the length.
fn write_ncr(c: char, dst: &mut [u8]) -> usize {
    let mut digits = [0u8; 7];
    let mut start = digits.len();
    let mut n = u32::from(c);
    loop {
        start -= 1;
        // `n % 10` is a single digit.
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let digits = &digits[start..];
    let len = digits.len() + 3;
    dst[0] = b'&';
    dst[1] = b'#';
    dst[2..len - 1].copy_from_slice(digits);
    dst[len - 1] = b';';
    len
}

#[cfg(test)]
mod tests;
