//! windows-1252, only because lol_html formats raw bytes with it for `Debug` output. No label
//! selects it. Single-byte: 0x00–0x7F and 0xA0–0xFF are the same code points, 0x80–0x9F map per
//! the WHATWG index (<https://encoding.spec.whatwg.org/index-windows-1252.txt>), which defines
//! all 256 bytes, so decoding never fails.

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;

use crate::{CoderResult, Encoding, NCR_EXTRA, write_ncr};

/// Code points of the bytes 0x80–0x9F.
const HIGH: [u16; 32] = [
    0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039,
    0x0152, 0x008D, 0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
    0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
];

fn decode_byte(byte: u8) -> char {
    match byte {
        0x80..=0x9F => {
            let code_point = HIGH[usize::from(byte - 0x80)];
            char::from_u32(u32::from(code_point)).unwrap_or(char::REPLACEMENT_CHARACTER)
        }
        _ => char::from(byte),
    }
}

fn encode_char(c: char) -> Option<u8> {
    if let Ok(byte) = u8::try_from(c)
        && !(0x80..=0x9F).contains(&byte)
    {
        return Some(byte);
    }
    let code_point = u32::from(c);
    let index = HIGH.iter().position(|&h| u32::from(h) == code_point)?;
    u8::try_from(0x80 + index).ok()
}

pub(crate) fn decode(bytes: &[u8]) -> Cow<'_, str> {
    match core::str::from_utf8(bytes) {
        Ok(text) if text.is_ascii() => Cow::Borrowed(text),
        _ => Cow::Owned(bytes.iter().map(|&b| decode_byte(b)).collect::<String>()),
    }
}

pub(crate) fn encode(string: &str) -> (Cow<'_, [u8]>, bool) {
    let ascii = Encoding::ascii_valid_up_to(string.as_bytes());
    if ascii == string.len() {
        return (Cow::Borrowed(string.as_bytes()), false);
    }
    let (head, tail) = string.split_at(ascii);
    let mut out = Vec::with_capacity(string.len());
    out.extend_from_slice(head.as_bytes());
    let mut had_unmappables = false;
    let mut ncr = [0u8; NCR_EXTRA];
    for c in tail.chars() {
        match encode_char(c) {
            Some(byte) => out.push(byte),
            None => {
                had_unmappables = true;
                let len = write_ncr(c, &mut ncr);
                out.extend_from_slice(&ncr[..len]);
            }
        }
    }
    (Cow::Owned(out), had_unmappables)
}

/// Stops before a character whose UTF-8 form does not fit.
pub(crate) fn decode_to_utf8(src: &[u8], dst: &mut [u8]) -> (CoderResult, usize, usize, bool) {
    let mut written = 0;
    for (read, &byte) in src.iter().enumerate() {
        let c = decode_byte(byte);
        if dst.len() - written < c.len_utf8() {
            return (CoderResult::OutputFull, read, written, false);
        }
        written += c.encode_utf8(&mut dst[written..]).len();
    }
    (CoderResult::InputEmpty, src.len(), written, false)
}

/// As in `encoding_rs`, the last [`NCR_EXTRA`] bytes of `dst` are kept for a numeric character
/// reference, so a call with less space than that reads nothing.
pub(crate) fn encode_from_utf8(src: &str, dst: &mut [u8]) -> (CoderResult, usize, usize, bool) {
    if dst.len() < NCR_EXTRA {
        let result = if src.is_empty() {
            CoderResult::InputEmpty
        } else {
            CoderResult::OutputFull
        };
        return (result, 0, 0, false);
    }
    let limit = dst.len() - NCR_EXTRA;
    let mut written = 0;
    let mut had_unmappables = false;
    for (read, c) in src.char_indices() {
        if written >= limit {
            return (CoderResult::OutputFull, read, written, had_unmappables);
        }
        match encode_char(c) {
            Some(byte) => {
                dst[written] = byte;
                written += 1;
            }
            None => {
                had_unmappables = true;
                written += write_ncr(c, &mut dst[written..]);
            }
        }
    }
    (CoderResult::InputEmpty, src.len(), written, had_unmappables)
}
