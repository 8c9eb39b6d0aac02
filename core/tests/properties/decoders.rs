//! Decoders never panic: the wire readers, the session cookie and the event parsers on noise
//! and on mutations of valid input.

use attune_core::event::{BatchLimits, parse_batch, parse_event};
use attune_core::model::{CatalogShard, Manifest, NeighbourShard, Trending};
use attune_core::profile::Profile;
use attune_core::rules::Config;
use attune_core::session::{Session, encode_cookie, verify_cookie};
use attune_core::wire::{self, Envelope, WireError};
use proptest::prelude::*;

use crate::common::{self, T0};

fn decode_all(bytes: &[u8]) {
    fn check<T: wire::read::Read>(bytes: &[u8]) {
        // A refusal says where it stopped, somewhere in the input.
        if let Err(WireError::Malformed(e)) = wire::decode::<T>(bytes) {
            assert!(e.offset() <= bytes.len(), "{e} (input of {})", bytes.len());
        }
    }
    check::<Profile>(bytes);
    check::<CatalogShard>(bytes);
    check::<NeighbourShard>(bytes);
    check::<Trending>(bytes);
    check::<Config>(bytes);
    check::<Manifest>(bytes);
}

/// Valid envelopes to mutate: near-valid input reaches deeper into the decoders than noise.
fn seeds() -> Vec<Vec<u8>> {
    vec![
        wire::encode(&Envelope::new(1, T0, common::typical_profile())),
        wire::encode(&Envelope::new(1, T0, common::catalog(4))),
        wire::encode(&Envelope::new(1, T0, common::neighbours(6, 3))),
        wire::encode(&Envelope::new(1, T0, common::trending(20, 6, 3))),
        wire::encode(&Envelope::new(1, T0, common::config())),
        wire::encode(&Envelope::new(1, T0, common::manifest())),
    ]
}

const COOKIE_KEY: &[u8] = b"property-test-key";

/// A correctly signed cookie around arbitrary payload bytes: the signature passes, so the
/// payload decoder itself is exercised.
fn signed_cookie(payload_text: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(COOKIE_KEY).unwrap();
    mac.update(payload_text.as_bytes());
    let tag = mac.finalize().into_bytes();
    use base64::Engine;
    format!(
        "{payload_text}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag)
    )
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// JSON-ish text assembled from event fragments: mostly near-valid events.
fn jsonish() -> impl Strategy<Value = String> {
    let frag = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"v\"",
        "1",
        "2",
        "-1",
        "1e999",
        "null",
        "true",
        "\"event_id\"",
        "\"user\"",
        "\"ts\"",
        "\"kind\"",
        "\"view\"",
        "\"purchase\"",
        "\"item\"",
        "\"props\"",
        "\"a\"",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "1733040000000",
        "18446744073709551616",
        "{\"q\":[1]}",
        "\n",
        " ",
        "\"search\"",
        "0.5",
    ]);
    prop::collection::vec(frag, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn wire_decoders_never_panic_on_noise(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn wire_decoders_never_panic_on_mutations(
        seed in 0usize..6,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = seeds()[seed].clone();
        for (at, byte, op) in edits {
            if bytes.is_empty() { break; }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => { bytes.remove(i); }
                _ => bytes.insert(i, byte),
            }
        }
        decode_all(&bytes);
        let len = bytes.len();
        decode_all(&bytes[..cut.index(len + 1).min(len)]);
    }

    #[test]
    fn verify_cookie_never_panics(text in ".{0,200}", payload in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = verify_cookie(&text, COOKIE_KEY);
        let _ = verify_cookie(&format!("1.{text}"), COOKIE_KEY);
        let _ = verify_cookie(&format!("1.{}.{}", b64(&payload), b64(&payload)), COOKIE_KEY);
        // Signed, so only the payload decoder stands between the bytes and a session.
        if let Ok(s) = verify_cookie(&signed_cookie(&format!("1.{}", b64(&payload))), COOKIE_KEY) {
            prop_assert!(s.recent.len() <= attune_core::session::MAX_RECENT);
        }
    }

    #[test]
    fn cookies_round_trip(
        started in 0u64..4_000_000_000, pages in any::<u32>(),
        items in prop::collection::btree_set("[A-Z0-9]{1,12}", 0..25),
        ages in prop::collection::vec(0u64..100_000, 25),
    ) {
        let last = started + 3_600;
        let mut s = Session { started: started * 1000, last_seen: last * 1000, pages, recent: Vec::new() };
        for (item, age) in items.iter().zip(&ages).take(attune_core::session::MAX_RECENT) {
            s.recent.push(attune_core::session::RecentItem { item: item.clone(), ts: last.saturating_sub(*age) * 1000 });
        }
        let cookie = encode_cookie(&s, COOKIE_KEY);
        prop_assert!(cookie.len() <= 1024);
        prop_assert_eq!(verify_cookie(&cookie, COOKIE_KEY), Ok(s));
    }

    #[test]
    fn event_parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), text in jsonish()) {
        let limits = BatchLimits { max_bytes: 4096, max_events: 8 };
        for input in [&bytes[..], text.as_bytes()] {
            let _ = parse_event(input, T0);
            let _ = parse_batch(input, T0, limits);
            let _ = parse_batch(input, T0, BatchLimits::default());
        }
        let array = format!("[{text}]");
        let _ = parse_batch(array.as_bytes(), T0, limits);
    }
}

/// A signed cookie whose signed part is only `1` (shorter than the `1.` prefix once the tag
/// is split off): only a holder of the key can make one, but it must still not panic.
#[test]
fn a_signed_cookie_without_a_payload_is_malformed() {
    let cookie = signed_cookie("1");
    assert!(cookie.starts_with("1."));
    assert!(verify_cookie(&cookie, COOKIE_KEY).is_err());
    assert!(verify_cookie(&signed_cookie("1."), COOKIE_KEY).is_err());
}
