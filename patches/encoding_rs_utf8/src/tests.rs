extern crate std;

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::*;

#[test]
fn utf_8_labels_resolve_others_do_not() {
    for label in [
        "utf-8",
        "utf8",
        "unicode-1-1-utf-8",
        "unicode11utf8",
        "unicode20utf8",
        "x-unicode20utf8",
        "UTF-8",
        "Utf8",
        " \t\n\x0C\rutf-8 \t\n\x0C\r",
        "X-Unicode20UTF8",
    ] {
        assert_eq!(
            Encoding::for_label(label.as_bytes()),
            Some(UTF_8),
            "{label:?}"
        );
        assert_eq!(
            Encoding::for_label_no_replacement(label.as_bytes()),
            Some(UTF_8),
            "{label:?}"
        );
    }
    for label in [
        "",
        " ",
        "windows-1252",
        "latin1",
        "iso-8859-1",
        "us-ascii",
        "ascii",
        "shift_jis",
        "euc-jp",
        "gbk",
        "big5",
        "utf-16",
        "utf-16le",
        "utf-16be",
        "iso-2022-kr",
        "replacement",
        "x-user-defined",
        "utf-7",
        "utf-8 x",
        "utf 8",
        "utf-8\x0B",
        "\x0Butf-8",
        "utf-8\0",
        "\u{17F}tf-8", // non-ASCII case folding does not apply
        "utf-88",
    ] {
        assert_eq!(Encoding::for_label(label.as_bytes()), None, "{label:?}");
        assert_eq!(
            Encoding::for_label_no_replacement(label.as_bytes()),
            None,
            "{label:?}"
        );
    }
}

#[test]
fn encodings_compare_by_identity() {
    assert_eq!(UTF_8, UTF_8);
    assert_ne!(UTF_8, WINDOWS_1252);
    assert_eq!(UTF_8.name(), "UTF-8");
    assert_eq!(WINDOWS_1252.name(), "windows-1252");
    assert!(UTF_8.is_ascii_compatible() && WINDOWS_1252.is_ascii_compatible());
    assert_eq!(UTF_8.output_encoding(), UTF_8);
    assert_eq!(UTF_8.new_decoder_without_bom_handling().encoding(), UTF_8);
    assert_eq!(UTF_8.new_encoder().encoding(), UTF_8);
    assert_eq!(
        std::format!("{UTF_8:?}"),
        r#"Encoding { name: "UTF-8", .. }"#
    );
}

#[test]
fn ascii_valid_up_to() {
    assert_eq!(Encoding::ascii_valid_up_to(b""), 0);
    assert_eq!(Encoding::ascii_valid_up_to(b"abc"), 3);
    assert_eq!(Encoding::ascii_valid_up_to("ab\u{e9}c".as_bytes()), 2);
    assert_eq!(Encoding::ascii_valid_up_to(b"\x80"), 0);
}

#[test]
fn decode_whole_inputs() {
    let (text, enc, errors) = UTF_8.decode("caf\u{e9} \u{2713} \u{1F600}".as_bytes());
    assert!(matches!(
        text,
        Cow::Borrowed("caf\u{e9} \u{2713} \u{1F600}")
    ));
    assert_eq!((enc, errors), (UTF_8, false));

    let (text, enc, errors) = UTF_8.decode(b"\xEF\xBB\xBFa");
    assert_eq!((&*text, enc, errors), ("a", UTF_8, false));

    // Maximal subparts: F0 9F 98 is one, the lone 80 another, C0 is never a lead byte.
    let (text, _, errors) = UTF_8.decode(b"a\xF0\x9F\x98b\x80\xC0\xAFc\xE2\x9C");
    assert_eq!(
        &*text, "a\u{FFFD}b\u{FFFD}\u{FFFD}\u{FFFD}c\u{FFFD}",
        "{text:?}"
    );
    assert!(errors);

    // A UTF-8 BOM selects UTF-8 even from windows-1252, as in encoding_rs.
    let (text, enc, _) = WINDOWS_1252.decode(b"\xEF\xBB\xBF\xC3\xA9");
    assert_eq!((&*text, enc), ("\u{e9}", UTF_8));
}

#[test]
fn windows_1252_decodes_every_byte() {
    let all: Vec<u8> = (0..=255).collect();
    let (text, enc, errors) = WINDOWS_1252.decode(&all);
    assert_eq!((enc, errors), (WINDOWS_1252, false));
    let chars: Vec<char> = text.chars().collect();
    assert_eq!(chars.len(), 256);
    assert_eq!(chars[0x41], 'A');
    assert_eq!(chars[0x80], '\u{20AC}');
    assert_eq!(chars[0x81], '\u{81}');
    assert_eq!(chars[0x8D], '\u{8D}');
    assert_eq!(chars[0x9F], '\u{178}');
    assert_eq!(chars[0xA0], '\u{A0}');
    assert_eq!(chars[0xE9], '\u{E9}');
    assert!(matches!(
        WINDOWS_1252.decode(b"ascii").0,
        Cow::Borrowed("ascii")
    ));

    // Every byte round-trips through the encoder.
    let (bytes, enc, unmappable) = WINDOWS_1252.encode(&text);
    assert_eq!((&*bytes, enc, unmappable), (&all[..], WINDOWS_1252, false));
}

#[test]
fn windows_1252_encodes_unmappables_as_ncrs() {
    let (bytes, _, unmappable) = WINDOWS_1252.encode("\u{20AC}5 \u{2713} \u{1F600} \u{80}");
    assert_eq!(&*bytes, b"\x805 &#10003; &#128512; &#128;");
    assert!(unmappable);
    assert!(matches!(
        WINDOWS_1252.encode("plain").0,
        Cow::Borrowed(b"plain")
    ));

    let mut encoder = WINDOWS_1252.new_encoder();
    let mut dst = [0u8; 12];
    let (result, read, written, unmappable) =
        encoder.encode_from_utf8("\u{10FFFF}\u{e9}x", &mut dst, false);
    assert_eq!(
        (result, read, written, unmappable),
        (CoderResult::OutputFull, 4, 10, true)
    );
    assert_eq!(&dst[..written], b"&#1114111;");
    let (result, read, written, _) = encoder.encode_from_utf8("\u{e9}x", &mut dst[..11], false);
    assert_eq!((result, read, written), (CoderResult::OutputFull, 2, 1));
    assert_eq!(&dst[..written], b"\xE9");
    let (result, read, written, _) = encoder.encode_from_utf8("\u{e9}x", &mut dst, false);
    assert_eq!((result, read, written), (CoderResult::InputEmpty, 3, 2));
    assert_eq!(&dst[..written], b"\xE9x");
    let (result, read, written, _) = encoder.encode_from_utf8("x", &mut dst[..9], false);
    assert_eq!((result, read, written), (CoderResult::OutputFull, 0, 0));
    let (result, _, _, _) = encoder.encode_from_utf8("", &mut dst[..9], true);
    assert_eq!(result, CoderResult::InputEmpty);
}

#[test]
fn windows_1252_streams() {
    let mut decoder = WINDOWS_1252.new_decoder_without_bom_handling();
    let mut dst = [0u8; 4];
    let (result, read, written, _) = decoder.decode_to_utf8(b"a\x80b", &mut dst, false);
    assert_eq!((result, read, written), (CoderResult::OutputFull, 2, 4));
    assert_eq!(&dst, "a\u{20AC}".as_bytes());
    assert_eq!(decoder.max_utf8_buffer_length(5), Some(15));
}

#[test]
fn utf_8_encoder_copies_whole_characters() {
    let mut encoder = UTF_8.new_encoder();
    assert!(!encoder.has_pending_state());
    assert_eq!(
        encoder.max_buffer_length_from_utf8_if_no_unmappables(7),
        Some(7)
    );
    let src = "a\u{e9}\u{2713}\u{1F600}";
    let mut out = Vec::new();
    let mut rest = src;
    let mut dst = [0u8; 4];
    while !rest.is_empty() {
        let (result, read, written, unmappable) = encoder.encode_from_utf8(rest, &mut dst, false);
        assert!(!unmappable);
        assert_eq!(read, written);
        assert!(read > 0);
        assert!(core::str::from_utf8(&dst[..written]).is_ok());
        assert_eq!(result == CoderResult::InputEmpty, read == rest.len());
        out.extend_from_slice(&dst[..written]);
        rest = &rest[read..];
    }
    assert_eq!(out, src.as_bytes());
    let (result, read, written, _) = encoder.encode_from_utf8("", &mut dst, true);
    assert_eq!((result, read, written), (CoderResult::InputEmpty, 0, 0));
    let (result, read, written, _) = encoder.encode_from_utf8("\u{e9}", &mut dst[..1], false);
    assert_eq!((result, read, written), (CoderResult::OutputFull, 0, 0));
    let (bytes, enc, unmappable) = UTF_8.encode(src);
    assert!(matches!(bytes, Cow::Borrowed(_)));
    assert_eq!((&*bytes, enc, unmappable), (src.as_bytes(), UTF_8, false));
}

/// Decodes `chunks` one call per chunk (the last with `last`), with an output buffer of `space`.
fn stream(chunks: &[&[u8]], space: usize) -> (Vec<(CoderResult, usize, usize, bool)>, String) {
    let mut decoder = UTF_8.new_decoder_without_bom_handling();
    let mut calls = Vec::new();
    let mut out = Vec::new();
    let mut dst = vec![0u8; space];
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let mut rest = *chunk;
        loop {
            let call = decoder.decode_to_utf8(rest, &mut dst, last);
            out.extend_from_slice(&dst[..call.2]);
            rest = &rest[call.1..];
            let done = call.0 == CoderResult::InputEmpty;
            calls.push(call);
            if done {
                break;
            }
        }
    }
    (calls, String::from_utf8(out).unwrap())
}

#[test]
fn utf_8_sequences_continue_across_calls() {
    // "é" split after its lead byte, "😀" split into single bytes.
    let (calls, text) = stream(&[b"a\xC3", b"\xA9\xF0", b"\x9F", b"\x98", b"\x80", b""], 16);
    assert_eq!(text, "a\u{e9}\u{1F600}");
    assert_eq!(
        calls,
        [
            (CoderResult::InputEmpty, 2, 1, false),
            (CoderResult::InputEmpty, 2, 2, false),
            (CoderResult::InputEmpty, 1, 0, false),
            (CoderResult::InputEmpty, 1, 0, false),
            (CoderResult::InputEmpty, 1, 4, false),
            (CoderResult::InputEmpty, 0, 0, false),
        ]
    );
}

#[test]
fn utf_8_last_flushes_an_incomplete_sequence_as_one_replacement() {
    let (calls, text) = stream(&[b"a\xF0\x9F", b"\x98"], 16);
    assert_eq!(text, "a\u{FFFD}");
    assert_eq!(calls[1], (CoderResult::InputEmpty, 1, 3, true));
    // Without `last` nothing is flushed.
    let mut decoder = UTF_8.new_decoder_without_bom_handling();
    let mut dst = [0u8; 8];
    let call = decoder.decode_to_utf8(b"\xE2\x9C", &mut dst, false);
    assert_eq!(call, (CoderResult::InputEmpty, 2, 0, false));
    assert_eq!(decoder.max_utf8_buffer_length(0), Some(9));
    let call = decoder.decode_to_utf8(b"", &mut dst, true);
    assert_eq!(call, (CoderResult::InputEmpty, 0, 3, true));
    assert_eq!(&dst[..3], "\u{FFFD}".as_bytes());
    // A finished decoder starts over.
    let call = decoder.decode_to_utf8(b"\xC3\xA9", &mut dst, true);
    assert_eq!(call, (CoderResult::InputEmpty, 2, 2, false));
}

#[test]
fn utf_8_bad_continuation_is_read_again() {
    // E2 9C then "x": one U+FFFD for E2 9C, then "x" itself.
    let (_, text) = stream(&[b"\xE2\x9C", b"x"], 8);
    assert_eq!(text, "\u{FFFD}x");
    // ED A0 80 is a surrogate: ED alone is the maximal subpart, A0 and 80 are one each.
    let (_, text) = stream(&[b"\xED", b"\xA0\x80"], 8);
    assert_eq!(text, "\u{FFFD}\u{FFFD}\u{FFFD}");
    // F4 90 is above U+10FFFF.
    let (_, text) = stream(&[b"\xF4\x90\x80\x80"], 8);
    assert_eq!(text, "\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}");
}

#[test]
fn utf_8_output_full_keeps_four_bytes_of_room() {
    let mut decoder = UTF_8.new_decoder_without_bom_handling();
    let mut dst = [0u8; 5];
    // Valid text is copied while it fits...
    let call = decoder.decode_to_utf8(b"abcdefg", &mut dst, false);
    assert_eq!(call, (CoderResult::OutputFull, 5, 5, false));
    // ...a sequence cut by the space is not started without room for a 4-byte character.
    let call = decoder.decode_to_utf8("abcd\u{e9}".as_bytes(), &mut dst, false);
    assert_eq!(call, (CoderResult::OutputFull, 4, 4, false));
    // A length from max_utf8_buffer_length always takes everything in one call.
    let src = b"\xF0\x9F\x98\x80\xFF\xC3";
    let mut big = vec![0u8; decoder.max_utf8_buffer_length(src.len()).unwrap()];
    let call = decoder.decode_to_utf8(src, &mut big, true);
    assert_eq!(call.0, CoderResult::InputEmpty);
    assert_eq!(&big[..call.2], "\u{1F600}\u{FFFD}\u{FFFD}".as_bytes());
}

#[test]
fn decode_to_str_keeps_the_buffer_valid() {
    let mut decoder = UTF_8.new_decoder_without_bom_handling();
    // The buffer holds multi-byte text from earlier calls; writing "ab" cuts the "é".
    let mut buffer = String::from("\u{e9}\u{2713}\u{1F600}");
    let call = decoder.decode_to_str(b"xyz", &mut buffer, false);
    assert_eq!(call, (CoderResult::InputEmpty, 3, 3, false));
    assert_eq!(buffer.len(), 9);
    assert_eq!(&buffer[..3], "xyz");
    // The rest of the overwritten "✓" is NULs; the "😀" is untouched.
    assert_eq!(&buffer[3..], "\0\0\u{1F600}");
}

#[test]
fn make_valid_utf8_only_clears_invalid_bytes() {
    let mut bytes = *b"ok\x80\x80\xE2\x9C\x93\xF0\x9F\x98\xFFz\xC3";
    make_valid_utf8(&mut bytes);
    assert_eq!(&bytes, b"ok\0\0\xE2\x9C\x93\0\0\0\0z\0");
}

#[test]
fn write_ncr_lengths() {
    let mut dst = [0u8; NCR_EXTRA];
    for (c, ncr) in [
        ('\0', "&#0;"),
        ('\u{80}', "&#128;"),
        ('\u{2713}', "&#10003;"),
        ('\u{10FFFF}', "&#1114111;"),
    ] {
        let len = write_ncr(c, &mut dst);
        assert_eq!(&dst[..len], ncr.as_bytes());
    }
}
