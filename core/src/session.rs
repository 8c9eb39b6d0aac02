//! The visitor's current session, carried in the signed `attune_s` cookie so the next page
//! reflects the last click before the origin has published anything.
//!
//! Cookie format (version 1): `1.<base64url(payload)>.<base64url(tag)>` where the payload is
//! MessagePack `[started_s, last_seen_s, pages, [[item, age_s], …]]` and the tag is
//! HMAC-SHA256(key, "1." + payload-text). Anything that does not verify decodes to a fresh
//! session: a tampered or stale cookie costs personalization, never the page.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::{MINUTE_MS, Millis};

/// Most recent items kept per session.
pub const MAX_RECENT: usize = 20;
/// Longest item id kept in the cookie (longer ids are not catalog ids).
pub const MAX_ITEM_ID: usize = 32;
/// Default inactivity gap that ends a session.
pub const DEFAULT_GAP_MS: Millis = 30 * MINUTE_MS;

/// An item seen in this session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentItem {
    pub item: String,
    pub ts: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub started: Millis,
    pub last_seen: Millis,
    pub pages: u32,
    /// Most recent first, no duplicates, at most [`MAX_RECENT`].
    pub recent: Vec<RecentItem>,
}

impl Session {
    pub fn fresh(now: Millis) -> Self {
        Session {
            started: now,
            last_seen: now,
            pages: 0,
            recent: Vec::new(),
        }
    }

    /// Continues the session at `now`, or starts a new one when the visitor was away longer
    /// than `gap`. Returns whether a new session started.
    pub fn touch(&mut self, now: Millis, gap: Millis) -> bool {
        let expired = now.saturating_sub(self.last_seen) > gap;
        if expired {
            *self = Session::fresh(now);
        }
        self.last_seen = self.last_seen.max(now);
        self.pages = self.pages.saturating_add(1);
        expired
    }

    /// Records that the visitor looked at `item` now.
    pub fn record_item(&mut self, item: &str, now: Millis) {
        if item.is_empty() || item.len() > MAX_ITEM_ID {
            return;
        }
        self.recent.retain(|r| r.item != item);
        self.recent.insert(
            0,
            RecentItem {
                item: item.into(),
                ts: now,
            },
        );
        self.recent.truncate(MAX_RECENT);
    }

    pub fn recent_items(&self) -> impl Iterator<Item = &str> {
        self.recent.iter().map(|r| r.item.as_str())
    }
}

#[cfg(feature = "wire")]
pub use cookie::{CookieError, decode_cookie, encode_cookie, verify_cookie};

#[cfg(feature = "wire")]
mod cookie {
    use super::*;
    use crate::SECOND_MS;
    use crate::hash::HmacSha256;
    use crate::wire::DecodeError;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use hmac::Mac;

    const VERSION_PREFIX: &str = "1.";
    /// Cookies over this size are refused outright (DESIGN.md: `attune_s` ≤ 1 KiB).
    pub const MAX_COOKIE_BYTES: usize = 1024;

    type Payload = (u64, u64, u32, Vec<(String, u64)>);

    /// Why a cookie did not verify. Callers normally use [`decode_cookie`], which turns every
    /// one of these into a fresh session; the debug view shows the reason.
    #[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
    pub enum CookieError {
        #[error("cookie is too large")]
        TooLarge,
        #[error("unknown cookie version")]
        UnknownVersion,
        #[error("cookie is malformed")]
        Malformed,
        #[error("cookie signature does not verify")]
        BadSignature,
        #[error("cookie payload does not decode: {0}")]
        Payload(#[from] DecodeError),
    }

    fn mac(key: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length, so this never falls back in practice.
        <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
    }

    /// Signs and encodes a session.
    pub fn encode_cookie(session: &Session, key: &[u8]) -> String {
        let to_s = |ms: Millis| ms / SECOND_MS;
        let last = to_s(session.last_seen);
        let payload: Payload = (
            to_s(session.started),
            last,
            session.pages,
            session
                .recent
                .iter()
                .map(|r| (r.item.clone(), last.saturating_sub(to_s(r.ts))))
                .collect(),
        );
        let bytes = payload::encode(&payload);
        let mut out = String::from(VERSION_PREFIX);
        B64.encode_string(bytes, &mut out);
        let mut m = mac(key);
        m.update(out.as_bytes());
        let tag = m.finalize().into_bytes();
        out.push('.');
        B64.encode_string(tag, &mut out);
        out
    }

    /// Verifies a cookie (constant-time tag comparison) and decodes it.
    pub fn verify_cookie(cookie: &str, key: &[u8]) -> Result<Session, CookieError> {
        if cookie.len() > MAX_COOKIE_BYTES {
            return Err(CookieError::TooLarge);
        }
        if !cookie.starts_with(VERSION_PREFIX) {
            return Err(CookieError::UnknownVersion);
        }
        let (signed, tag) = cookie.rsplit_once('.').ok_or(CookieError::Malformed)?;
        let tag = B64.decode(tag).map_err(|_| CookieError::Malformed)?;
        let mut m = mac(key);
        m.update(signed.as_bytes());
        m.verify_slice(&tag)
            .map_err(|_| CookieError::BadSignature)?;
        // `signed` is shorter than the prefix when the cookie was `1.<tag>`: malformed, and
        // never a slice out of bounds.
        let payload = signed
            .get(VERSION_PREFIX.len()..)
            .ok_or(CookieError::Malformed)?;
        let body = B64.decode(payload).map_err(|_| CookieError::Malformed)?;
        let (started, last, pages, recent) = payload::decode(&body)?;
        let ms = |s: u64| s.saturating_mul(SECOND_MS);
        let mut session = Session {
            started: ms(started),
            last_seen: ms(last),
            pages,
            recent: Vec::new(),
        };
        for (item, age) in recent.into_iter().take(MAX_RECENT) {
            if item.is_empty()
                || item.len() > MAX_ITEM_ID
                || session.recent.iter().any(|r| r.item == item)
            {
                return Err(CookieError::Malformed);
            }
            session.recent.push(RecentItem {
                item,
                ts: ms(last.saturating_sub(age)),
            });
        }
        Ok(session)
    }

    /// The payload's MessagePack, through the core's one MessagePack layer ([`crate::wire`]):
    /// byte for byte what `rmp_serde` makes of [`Payload`] (smallest integer and length forms),
    /// read with the snapshot reader's rules (any integer form that fits, `str` items, exact
    /// array lengths, trailing bytes ignored). A generic serde codec for this one small tuple
    /// cost the Worker some 30 KB of wasm.
    mod payload {
        use super::Payload;
        use crate::wire::read::Read;
        use crate::wire::reader::{DecodeError, Reader};
        use crate::wire::write::Writer;
        use alloc::vec::Vec;

        pub(super) fn encode((started, last, pages, recent): &Payload) -> Vec<u8> {
            let mut w = Writer::new();
            w.array(4)
                .uint(*started)
                .uint(*last)
                .uint(u64::from(*pages));
            // At most `MAX_RECENT` items are written (the session keeps no more).
            w.array(u32::try_from(recent.len()).unwrap_or(u32::MAX));
            for (item, age) in recent {
                w.array(2).str(item).uint(*age);
            }
            w.into_bytes()
        }

        pub(super) fn decode(bytes: &[u8]) -> Result<Payload, DecodeError> {
            let mut r = Reader::new(bytes);
            let mut read = || {
                r.tuple(4)?;
                Ok((r.u64()?, r.u64()?, r.u32()?, Read::read(&mut r)?))
            };
            read().map_err(|e: DecodeError| e.locate(bytes))
        }

        #[cfg(test)]
        mod tests {
            use super::*;
            use crate::wire::reader::Found;
            use alloc::format;
            use alloc::string::{String, ToString};
            use alloc::vec;

            #[test]
            fn matches_rmp_serde() {
                let edges = [0, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x1_0000, 0xffff_ffff];
                let mut payloads: Vec<Payload> = Vec::new();
                for &v in edges.iter().chain(&[0x1_0000_0000, u64::MAX]) {
                    payloads.push((v, v, v as u32, vec![(String::from("a"), v)]));
                }
                for len in [0, 1, 15, 16, 17, 31, 32, 33, 255, 256, 300, 0x1_0000] {
                    let item: String = "é".repeat(len / 2) + &"x".repeat(len % 2);
                    payloads.push((1, 2, 3, vec![(item, 4); len.min(20)]));
                }
                payloads.push((7, 8, 9, (0..300).map(|i| (format!("i{i}"), i)).collect()));
                for p in &payloads {
                    let ours = encode(p);
                    assert_eq!(ours, rmp_serde::to_vec(p).unwrap());
                    assert_eq!(decode(&ours).as_ref(), Ok(p));
                }
            }

            #[test]
            fn reads_what_rmp_serde_reads() {
                // Other integer widths, signed forms, trailing bytes.
                let body: Vec<u8> = [
                    &[0x94, 0xcf][..],
                    &5u64.to_be_bytes(),
                    &[
                        0xd2, 0, 0, 0, 6, 0xd0, 7, 0x91, 0x92, 0xa1, b'x', 0xcd, 0, 9, 0xc0,
                    ],
                ]
                .concat();
                let want: Payload = rmp_serde::from_slice(&body).unwrap();
                assert_eq!(decode(&body), Ok(want));
                let bad: [&[u8]; 9] = [
                    &[],
                    &[0x93, 1, 2, 3],
                    &[0x95, 1, 2, 3, 0x90, 0],
                    &[0x94, 0xff, 2, 3, 0x90],
                    &[0x94, 1, 2, 0xcf, 0, 0, 0, 1, 0, 0, 0, 0, 0x90],
                    &[0x94, 1, 2, 3, 0x91, 0x93, 0xa1, b'x', 1, 2],
                    &[0x94, 1, 2, 3, 0x91, 0x92, 0xa1, 0xff, 1],
                    &[0x94, 1, 2, 3, 0x92, 0x92, 0xa1, b'x', 1],
                    &[0x94, 1, 2, 0xca, 0, 0, 0, 0, 0x90],
                ];
                for b in bad {
                    assert!(rmp_serde::from_slice::<Payload>(b).is_err(), "{b:?}");
                    assert!(decode(b).is_err(), "{b:?}");
                }
            }

            #[test]
            fn errors_say_where() {
                // The second item's age is cut short.
                let bytes = encode(&(1, 2, 3, vec![("a".into(), 1), ("b".into(), 300)]));
                let e = decode(&bytes[..bytes.len() - 1]).unwrap_err();
                assert_eq!((e.offset(), e.found()), (bytes.len() - 1, &Found::End));
                assert_eq!(
                    e.to_string(),
                    format!(
                        "at byte {} in [3][1][1]: expected u64, found end of input",
                        bytes.len() - 1
                    )
                );
            }
        }
    }

    /// The session in `cookie`, continued at `now`; a fresh session when the cookie is absent,
    /// does not verify or has expired. Never fails.
    pub fn decode_cookie(cookie: Option<&str>, key: &[u8], now: Millis, gap: Millis) -> Session {
        let mut session = cookie
            .and_then(|c| verify_cookie(c, key).ok())
            .unwrap_or_else(|| Session::fresh(now));
        session.touch(now, gap);
        session
    }
}

#[cfg(all(test, feature = "wire"))]
mod tests {
    use super::*;
    use alloc::format;

    const NOW: Millis = 1_733_040_000_000;
    const KEY: &[u8] = b"test-session-key";

    fn sample() -> Session {
        let mut s = Session::fresh(NOW);
        for i in 0..25u64 {
            s.record_item(&format!("item{i}"), NOW + i * 1_000);
        }
        s.last_seen = NOW + 30_000;
        s
    }

    #[test]
    fn round_trips_and_stays_small() {
        let s = sample();
        assert_eq!(s.recent.len(), MAX_RECENT);
        assert_eq!(s.recent[0].item, "item24");
        let cookie = encode_cookie(&s, KEY);
        assert!(cookie.len() <= 1024, "{}", cookie.len());
        assert_eq!(verify_cookie(&cookie, KEY), Ok(s));
    }

    #[test]
    fn tampering_gives_a_fresh_session() {
        let cookie = encode_cookie(&sample(), KEY);
        assert_eq!(
            verify_cookie(&cookie, b"other-key"),
            Err(CookieError::BadSignature)
        );
        let mut flipped = cookie.clone().into_bytes();
        flipped[5] ^= 1;
        let flipped = String::from_utf8(flipped).unwrap();
        assert!(verify_cookie(&flipped, KEY).is_err());
        assert_eq!(
            verify_cookie(&format!("2{}", &cookie[1..]), KEY),
            Err(CookieError::UnknownVersion)
        );
        for garbage in ["", "1.", "1..", "1.%%%.abc", "\u{0}"] {
            assert!(verify_cookie(garbage, KEY).is_err());
        }
        let fresh = decode_cookie(Some(&flipped), KEY, NOW + 60_000, DEFAULT_GAP_MS);
        assert!(fresh.recent.is_empty());
        assert_eq!(fresh.pages, 1);
    }

    #[test]
    fn sessions_expire_after_the_gap() {
        let cookie = encode_cookie(&sample(), KEY);
        let cont = decode_cookie(Some(&cookie), KEY, NOW + 60_000, DEFAULT_GAP_MS);
        assert_eq!(cont.recent.len(), MAX_RECENT);
        let expired = decode_cookie(Some(&cookie), KEY, NOW + 2 * DEFAULT_GAP_MS, DEFAULT_GAP_MS);
        assert!(expired.recent.is_empty());
    }
}
