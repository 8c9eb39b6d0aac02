//! The snapshot envelope: what the origin writes to KV and the edge reads.
//!
//! `{schema: u16, version: u64, updated_at: ms, body}` as a MessagePack map with named fields,
//! so a reader ignores fields it does not know and a minor, additive change needs no
//! coordinated deploy. `schema` is `major << 8 | minor`; a reader refuses another major, and
//! the edge turns that refusal into default content.
//!
//! One MessagePack layer: [`reader`] (on `rmp`'s markers) under every decoder, the snapshot
//! readers in [`read`] generated from each struct's field list, and [`write`] for the session
//! cookie. Envelopes are written with `rmp-serde` and the serde derives ([`encode`]), which only
//! the origin links. Golden byte fixtures under `core/tests/fixtures/` pin the format.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::Millis;
use crate::profile::Profile;

mod error;
pub mod read;
pub mod reader;
pub mod write;

pub use read::{Read, decode};
pub use reader::DecodeError;

/// Major version of every snapshot body this build writes and reads.
pub const SCHEMA_MAJOR: u8 = 1;
/// Minor version this build writes.
pub const SCHEMA_MINOR: u8 = 0;
/// `schema` as written: `major << 8 | minor`.
pub const SCHEMA: u16 = (SCHEMA_MAJOR as u16) << 8 | SCHEMA_MINOR as u16;
/// Hard cap on an encoded profile snapshot (DESIGN.md: target ≤ 2 KiB for a typical user).
pub const PROFILE_CAP_BYTES: usize = 2048;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub schema: u16,
    pub version: u64,
    pub updated_at: Millis,
    pub body: T,
}

impl<T> Envelope<T> {
    pub fn new(version: u64, updated_at: Millis, body: T) -> Self {
        Envelope {
            schema: SCHEMA,
            version,
            updated_at,
            body,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("malformed snapshot: {0}")]
    Malformed(#[from] DecodeError),
    #[error("unknown snapshot schema major {found} (this build reads {SCHEMA_MAJOR})")]
    UnknownMajor { found: u8 },
}

impl WireError {
    pub fn code(&self) -> &'static str {
        match self {
            WireError::Malformed(_) => "malformed",
            WireError::UnknownMajor { .. } => "unknown_schema",
        }
    }
}

/// Encodes an envelope. Encoding plain data into a `Vec` cannot fail.
pub fn encode<T: Serialize>(envelope: &Envelope<T>) -> Vec<u8> {
    rmp_serde::to_vec_named(envelope).unwrap_or_default()
}

/// Encodes a profile snapshot within `cap` bytes, dropping the weakest tail (items, then
/// categories, then the oldest purchases and visits) until it fits. Deterministic.
pub fn encode_profile(envelope: &Envelope<Profile>, cap: usize) -> Vec<u8> {
    let bytes = encode(envelope);
    if bytes.len() <= cap {
        return bytes;
    }
    let mut trimmed = envelope.clone();
    let at = trimmed.body.last_seen;
    let cfg = crate::profile::ProfileConfig::default();
    loop {
        let p = &mut trimmed.body;
        let epoch = p.epoch;
        let weakest = |list: &[crate::profile::Affinity]| {
            list.iter()
                .enumerate()
                .min_by(|a, b| {
                    a.1.score(epoch, at, &cfg)
                        .total_cmp(&b.1.score(epoch, at, &cfg))
                        .then(b.0.cmp(&a.0))
                })
                .map(|(i, _)| i)
        };
        if p.items.len() > 4 {
            if let Some(i) = weakest(&p.items) {
                p.items.remove(i);
            }
        } else if p.categories.len() > 2 {
            if let Some(i) = weakest(&p.categories) {
                p.categories.remove(i);
            }
        } else if let Some(i) = p
            .purchased
            .iter()
            .enumerate()
            .min_by_key(|(i, x)| (x.last, usize::MAX - i))
            .map(|(i, _)| i)
        {
            p.purchased.remove(i);
        } else if p.visits.len() > 1 {
            p.visits.remove(0);
            p.older_visits += 1;
        } else {
            return encode(&trimmed);
        }
        let bytes = encode(&trimmed);
        if bytes.len() <= cap {
            return bytes;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Bytes no decoder may accept as an envelope: empty, a bare integer, MessagePack's unused
    /// byte, a truncated map, and a run of 0xff.
    pub(crate) const JUNK: [&[u8]; 5] = [
        b"",
        b"\x00",
        b"\xc1",
        b"\x81\xa6schema\xcd\x01\x00",
        &[0xff; 64],
    ];
    use crate::model::{CatalogItem, CatalogShard};

    #[test]
    fn round_trips_and_refuses_other_majors() {
        let shard = CatalogShard::from_items(alloc::vec![CatalogItem {
            id: "85123A".into(),
            title: "WHITE HANGING HEART T-LIGHT HOLDER".into(),
            url: "/p/85123A.html".into(),
            image: "/img/candles.svg".into(),
            price: "£2.55".into(),
            category: "Candles & Lights".into(),
        }]);
        let env = Envelope::new(7, 1_733_040_000_000, shard);
        let bytes = encode(&env);
        assert_eq!(decode::<CatalogShard>(&bytes), Ok(env.clone()));
        assert_eq!(
            rmp_serde::from_slice::<Envelope<CatalogShard>>(&bytes).ok(),
            Some(env.clone())
        );

        let mut future = env.clone();
        future.schema = 2 << 8;
        assert_eq!(
            decode::<CatalogShard>(&encode(&future)),
            Err(WireError::UnknownMajor { found: 2 })
        );
        let mut minor = env;
        minor.schema = SCHEMA + 3;
        assert!(
            decode::<CatalogShard>(&encode(&minor)).is_ok(),
            "minor bumps are additive"
        );
        for junk in JUNK {
            assert!(decode::<CatalogShard>(junk).is_err());
        }
    }
}
