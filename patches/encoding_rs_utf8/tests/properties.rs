//! Differential properties: the streaming UTF-8 decoder, fed arbitrary bytes split at arbitrary
//! chunk boundaries into arbitrarily small output buffers (4 bytes is the documented minimum),
//! gives exactly `String::from_utf8_lossy` of the whole input (std replaces per maximal
//! subpart, as the Encoding Standard does).

use encoding_rs::{CoderResult, Encoding, UTF_8};
use proptest::prelude::*;

/// Bytes that are mostly well-formed text with some damage: valid multi-byte characters,
/// their pieces, and arbitrary bytes.
fn text_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        any::<char>().prop_map(|c| c.to_string().into_bytes()),
        prop::sample::select(vec![
            "é",
            "✓",
            "😀",
            "<a>",
            "\u{FFFD}",
            "\u{10FFFF}",
            "\u{7FF}"
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        // A prefix of a character: a truncated sequence.
        (any::<char>(), 0usize..4).prop_map(|(c, n)| {
            let bytes = c.to_string().into_bytes();
            bytes[..n.min(bytes.len())].to_vec()
        }),
        any::<u8>().prop_map(|b| vec![b]),
        prop::sample::select(vec![
            0x80u8, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF
        ])
        .prop_map(|b| vec![b]),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

fn inputs() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![text_bytes(), prop::collection::vec(any::<u8>(), 0..200)]
}

/// Splits `bytes` at the given fractions of its length.
fn split(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

/// Streams `chunks` through a decoder with `space` bytes of output per call, checking each
/// call's contract; returns the text and whether any call reported a replacement.
fn decode_stream(chunks: &[Vec<u8>], space: usize, to_str: bool) -> (String, bool) {
    let mut decoder = UTF_8.new_decoder_without_bom_handling();
    let mut out = Vec::new();
    let mut had_errors = false;
    // A str buffer holding multi-byte text, so that writes cut earlier characters.
    let mut text_buffer = String::new();
    for c in "é✓😀".chars().cycle() {
        if text_buffer.len() + c.len_utf8() > space {
            break;
        }
        text_buffer.push(c);
    }
    while text_buffer.len() < space {
        text_buffer.push('a');
    }
    let mut byte_buffer = vec![0u8; space];
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let mut rest = &chunk[..];
        loop {
            let (result, read, written, replaced) = if to_str {
                let call = decoder.decode_to_str(rest, &mut text_buffer, last);
                // The buffer is still valid UTF-8 (its type says so; check the bytes anyway).
                assert!(std::str::from_utf8(text_buffer.as_bytes()).is_ok());
                out.extend_from_slice(&text_buffer.as_bytes()[..call.2]);
                call
            } else {
                let call = decoder.decode_to_utf8(rest, &mut byte_buffer, last);
                out.extend_from_slice(&byte_buffer[..call.2]);
                call
            };
            assert!(read <= rest.len());
            let buffer_len = if to_str {
                text_buffer.len()
            } else {
                byte_buffer.len()
            };
            assert!(written <= buffer_len);
            // Each call's output is whole characters.
            assert!(std::str::from_utf8(&out).is_ok(), "partial character");
            had_errors |= replaced;
            rest = &rest[read..];
            match result {
                CoderResult::InputEmpty => {
                    assert!(rest.is_empty());
                    break;
                }
                CoderResult::OutputFull => {
                    // With at least 4 bytes of space every call makes progress.
                    assert!(read > 0 || written > 0, "no progress");
                }
            }
        }
    }
    (String::from_utf8(out).unwrap(), had_errors)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn chunked_decoding_matches_lossy(
        bytes in inputs(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        space in 4usize..24,
        to_str in any::<bool>(),
    ) {
        let chunks = split(&bytes, &cuts);
        let (text, had_errors) = decode_stream(&chunks, space, to_str);
        let expected = String::from_utf8_lossy(&bytes);
        prop_assert_eq!(&text, &*expected);
        prop_assert_eq!(had_errors, std::str::from_utf8(&bytes).is_err());
    }

    #[test]
    fn one_byte_chunks_match_lossy(bytes in inputs(), space in 4usize..8) {
        let chunks: Vec<Vec<u8>> = bytes.iter().map(|&b| vec![b]).chain([vec![]]).collect();
        let (text, _) = decode_stream(&chunks, space, false);
        prop_assert_eq!(&text, &*String::from_utf8_lossy(&bytes));
    }

    /// An output buffer of `max_utf8_buffer_length` takes any input in one call, whatever
    /// state the earlier chunk left behind.
    #[test]
    fn max_utf8_buffer_length_is_enough(
        first in inputs(),
        second in inputs(),
        last in any::<bool>(),
    ) {
        let mut decoder = UTF_8.new_decoder_without_bom_handling();
        let mut out = Vec::new();
        for (chunk, last) in [(&first, false), (&second, last)] {
            let mut dst = vec![0u8; decoder.max_utf8_buffer_length(chunk.len()).unwrap()];
            let (result, read, written, _) = decoder.decode_to_utf8(chunk, &mut dst, last);
            prop_assert_eq!(result, CoderResult::InputEmpty);
            prop_assert_eq!(read, chunk.len());
            out.extend_from_slice(&dst[..written]);
        }
        if last {
            let whole = [first.as_slice(), second.as_slice()].concat();
            prop_assert_eq!(String::from_utf8(out).unwrap(), String::from_utf8_lossy(&whole));
        }
    }

    #[test]
    fn whole_decode_matches_lossy(bytes in inputs()) {
        let (text, encoding, had_errors) = UTF_8.decode(&bytes);
        let without_bom = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        prop_assert_eq!(&*text, &*String::from_utf8_lossy(without_bom));
        prop_assert_eq!(encoding, UTF_8);
        prop_assert_eq!(had_errors, std::str::from_utf8(without_bom).is_err());
    }

    #[test]
    fn encoder_copies_in_whole_characters(text in any::<String>(), space in 4usize..16) {
        let mut encoder = UTF_8.new_encoder();
        let mut dst = vec![0u8; space];
        let mut out = Vec::new();
        let mut rest = text.as_str();
        loop {
            let (result, read, written, unmappable) = encoder.encode_from_utf8(rest, &mut dst, true);
            prop_assert!(!unmappable);
            prop_assert_eq!(read, written);
            prop_assert!(std::str::from_utf8(&dst[..written]).is_ok());
            out.extend_from_slice(&dst[..written]);
            rest = &rest[read..];
            if result == CoderResult::InputEmpty {
                break;
            }
            prop_assert!(read > 0);
        }
        prop_assert_eq!(out, text.as_bytes());
        prop_assert_eq!(Encoding::ascii_valid_up_to(text.as_bytes()),
            text.bytes().position(|b| b >= 0x80).unwrap_or(text.len()));
    }
}
