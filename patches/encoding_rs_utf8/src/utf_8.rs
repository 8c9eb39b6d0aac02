//! The streaming UTF-8 decoder: the Encoding Standard's UTF-8 decoder
//! (<https://encoding.spec.whatwg.org/#utf-8-decoder>), which replaces each maximal subpart of
//! an ill-formed sequence with one U+FFFD, with a fast path that copies valid runs.
//!
//! Where a call stops follows `encoding_rs` 0.8: valid input is copied while it fits; before
//! each byte handled one at a time (a sequence that is malformed or cut by the end of the input
//! or of the output space) there must be more than 3 bytes of output space left, otherwise the
//! call returns `OutputFull`. So with at least 4 bytes of space every call makes progress, and a
//! U+FFFD always fits.

use crate::CoderResult;

/// The U+FFFD REPLACEMENT CHARACTER in UTF-8.
const REPLACEMENT: &[u8; 3] = b"\xEF\xBF\xBD";

/// The state carried between calls: the sequence begun so far.
#[derive(Debug)]
pub(crate) struct Utf8Decoder {
    code_point: u32,
    /// Continuation bytes seen of the current sequence (0 to 2 between calls).
    bytes_seen: u8,
    /// Continuation bytes the current sequence needs (0 between sequences, else 1 to 3).
    bytes_needed: u8,
    /// The range the next continuation byte must be in (narrower after E0, ED, F0, F4).
    lower_boundary: u8,
    upper_boundary: u8,
}

impl Utf8Decoder {
    pub(crate) fn new() -> Self {
        Utf8Decoder {
            code_point: 0,
            bytes_seen: 0,
            bytes_needed: 0,
            lower_boundary: 0x80,
            upper_boundary: 0xBF,
        }
    }

    fn reset(&mut self) {
        *self = Utf8Decoder::new();
    }

    /// Bytes of a pending sequence that count towards the worst-case output.
    fn pending(&self) -> usize {
        if self.bytes_needed == 0 {
            0
        } else {
            usize::from(self.bytes_seen) + 1
        }
    }

    /// Worst case: every byte (pending ones included) becomes a U+FFFD, plus one more.
    pub(crate) fn max_utf8_buffer_length(&self, byte_length: usize) -> Option<usize> {
        byte_length
            .checked_add(self.pending())?
            .checked_mul(3)?
            .checked_add(3)
    }

    pub(crate) fn decode(
        &mut self,
        src: &[u8],
        dst: &mut [u8],
        last: bool,
    ) -> (CoderResult, usize, usize, bool) {
        let mut read = 0;
        let mut written = 0;
        let mut had_errors = false;
        loop {
            if self.bytes_needed == 0 {
                // Fast path: copy the valid prefix of what fits. A sequence cut by the end of
                // the input or of the space is left to the byte loop below.
                let n = (src.len() - read).min(dst.len() - written);
                let chunk = &src[read..read + n];
                let valid = match core::str::from_utf8(chunk) {
                    Ok(text) => text.len(),
                    Err(error) => error.valid_up_to(),
                };
                dst[written..written + valid].copy_from_slice(&chunk[..valid]);
                read += valid;
                written += valid;
            }
            let Some(&byte) = src.get(read) else {
                if last && self.bytes_needed != 0 {
                    // The stream ends inside a sequence: one U+FFFD for all of it.
                    if dst.len() - written < REPLACEMENT.len() {
                        return (CoderResult::OutputFull, read, written, had_errors);
                    }
                    self.reset();
                    dst[written..written + 3].copy_from_slice(REPLACEMENT);
                    written += 3;
                    had_errors = true;
                }
                return (CoderResult::InputEmpty, read, written, had_errors);
            };
            // Room for the longest output one more byte can cause (a 4-byte character), which
            // also covers a U+FFFD.
            if written + 3 >= dst.len() {
                return (CoderResult::OutputFull, read, written, had_errors);
            }
            read += 1;
            if self.bytes_needed == 0 {
                match byte {
                    0x00..=0x7F => {
                        dst[written] = byte;
                        written += 1;
                    }
                    0xC2..=0xDF => {
                        self.bytes_needed = 1;
                        self.code_point = u32::from(byte & 0x1F);
                    }
                    0xE0..=0xEF => {
                        match byte {
                            0xE0 => self.lower_boundary = 0xA0, // no overlong forms
                            0xED => self.upper_boundary = 0x9F, // no surrogates
                            _ => {}
                        }
                        self.bytes_needed = 2;
                        self.code_point = u32::from(byte & 0x0F);
                    }
                    0xF0..=0xF4 => {
                        match byte {
                            0xF0 => self.lower_boundary = 0x90, // no overlong forms
                            0xF4 => self.upper_boundary = 0x8F, // nothing above U+10FFFF
                            _ => {}
                        }
                        self.bytes_needed = 3;
                        self.code_point = u32::from(byte & 0x07);
                    }
                    // 80–C1 and F5–FF never start a sequence: one U+FFFD each.
                    _ => {
                        dst[written..written + 3].copy_from_slice(REPLACEMENT);
                        written += 3;
                        had_errors = true;
                    }
                }
                continue;
            }
            if !(self.lower_boundary..=self.upper_boundary).contains(&byte) {
                // The sequence so far is a maximal subpart: one U+FFFD for it, and this byte
                // is read again as the possible start of the next one.
                read -= 1;
                self.reset();
                dst[written..written + 3].copy_from_slice(REPLACEMENT);
                written += 3;
                had_errors = true;
                continue;
            }
            self.lower_boundary = 0x80;
            self.upper_boundary = 0xBF;
            self.code_point = (self.code_point << 6) | u32::from(byte & 0x3F);
            self.bytes_seen += 1;
            if self.bytes_seen == self.bytes_needed {
                // The boundaries above admit only scalar values.
                let c = char::from_u32(self.code_point).unwrap_or(char::REPLACEMENT_CHARACTER);
                written += c.encode_utf8(&mut dst[written..]).len();
                self.reset();
            }
        }
    }
}
