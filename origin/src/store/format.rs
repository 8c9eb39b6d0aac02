//! How the store writes a user state: positional and compact ([postcard]: varints, no field
//! names).
//!
//! These are the store's own types, kept apart from the core's domain types, so a change in
//! the core's serde attributes cannot silently change (or break) rows already on disk. Every
//! field is written, always: the core skips zero accumulators when it serializes for the wire,
//! and in a positional format a skipped field would shift the next one into its place. A
//! change of these bytes is a change of the store's format: bump
//! [`crate::store::FORMAT_VERSION`] (stores of another format are rebuilt from the log).
//!
//! Not MessagePack: a checkpoint encodes up to 100k user states, and writing field names was
//! most of the encoding time.

use std::borrow::Cow;

use attune_core::decay::Acc;
use attune_core::profile::{Affinity, CartEntry, Purchased, Visit};
use attune_core::{Millis, Profile, SmolStr};
use serde::Deserialize;

use crate::error::{Error, Result};

/// What the store keeps per user: the core's profile and the recent distinct items that feed
/// item co-occurrence.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserState {
    pub profile: Profile,
    /// Recent distinct items, newest first, as the model's item ids (`ITEMS`, written in the
    /// same checkpoint as the state, so an id here always has its name there).
    pub recent_ids: Vec<u32>,
}

impl UserState {
    /// Reads a stored row .
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        decode(bytes)
    }
    /// Appends the store's encoding to `buf`.
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        encode_into(self, buf);
    }
}

// The format, as the types postcard decodes (and encoded their way by `encode_into`).
#[derive(Deserialize)]
struct StateRow<'a> {
    #[serde(borrow)]
    profile: ProfileRow<'a>,
    recent_ids: Cow<'a, [u32]>,
}

#[derive(Deserialize)]
struct ProfileRow<'a> {
    version: u64,
    first_seen: Millis,
    last_seen: Millis,
    epoch: u32,
    #[serde(borrow)]
    items: Vec<AffinityRow<'a>>,
    #[serde(borrow)]
    categories: Vec<AffinityRow<'a>>,
    #[serde(borrow)]
    purchased: Vec<PurchasedRow<'a>>,
    #[serde(borrow)]
    cart: Vec<CartRow<'a>>,
    purchases: u32,
    visits: Vec<(Millis, Millis)>,
    older_visits: u32,
}

#[derive(Deserialize)]
struct AffinityRow<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    short: (i64, i64, i64),
    long: (i64, i64, i64),
}

#[derive(Deserialize)]
struct PurchasedRow<'a> {
    #[serde(borrow)]
    item: Cow<'a, str>,
    last: Millis,
}

#[derive(Deserialize)]
struct CartRow<'a> {
    #[serde(borrow)]
    item: Cow<'a, str>,
    added: Millis,
    removed: Millis,
}

fn from_affinities(list: Vec<AffinityRow<'_>>) -> Vec<Affinity> {
    list.into_iter()
        .map(|a| Affinity {
            key: SmolStr::new(&a.key),
            short: Acc(a.short.0, a.short.1, a.short.2),
            long: Acc(a.long.0, a.long.1, a.long.2),
        })
        .collect()
}

/// Appends the store's encoding of `state` to `buf`.
///
/// Written by hand rather than through the serde types above (which decode): a checkpoint
/// encodes up to 100k states, and building the borrowed lists for serde cost an allocation per
/// list and most of the encoding time. The bytes are postcard's for [`StateRow`]: unsigned
/// integers as LEB128 varints, signed ones zigzagged first, strings and sequences as a varint
/// length then the elements, structs and tuples as their fields in order. `golden_bytes` and
/// the round-trip property test hold the two to the same format.
pub fn encode_into(state: &UserState, buf: &mut Vec<u8>) {
    let p = &state.profile;
    let mut w = Writer(buf);
    w.uint(p.version);
    w.uint(p.first_seen);
    w.uint(p.last_seen);
    w.uint(u64::from(p.epoch));
    for list in [&p.items, &p.categories] {
        w.len(list.len());
        for a in list {
            w.str(&a.key);
            w.acc(a.short);
            w.acc(a.long);
        }
    }
    w.len(p.purchased.len());
    for x in &p.purchased {
        w.str(&x.item);
        w.uint(x.last);
    }
    w.len(p.cart.len());
    for c in &p.cart {
        w.str(&c.item);
        w.uint(c.added);
        w.uint(c.removed);
    }
    w.uint(u64::from(p.purchases));
    w.len(p.visits.len());
    for v in &p.visits {
        w.uint(v.0);
        w.uint(v.1);
    }
    w.uint(u64::from(p.older_visits));
    w.len(state.recent_ids.len());
    for id in &state.recent_ids {
        w.uint(u64::from(*id));
    }
}

/// Appends `s` as postcard encodes a string (varint length, then the UTF-8 bytes).
pub fn encode_str(s: &str, buf: &mut Vec<u8>) {
    Writer(buf).str(s);
}

/// postcard's encoding of the primitives [`encode_into`] writes.
struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn uint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn int(&mut self, v: i64) {
        self.uint(((v << 1) ^ (v >> 63)) as u64);
    }
    fn len(&mut self, n: usize) {
        self.uint(n as u64);
    }
    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn acc(&mut self, a: Acc) {
        self.int(a.0);
        self.int(a.1);
        self.int(a.2);
    }
}

/// Decodes a row [`encode_into`] wrote. Anything else, or trailing bytes, is an error naming
/// what is wrong.
pub fn decode(bytes: &[u8]) -> Result<UserState> {
    let (row, rest): (StateRow<'_>, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|source| Error::Row {
            what: "user state: corrupt row",
            source,
        })?;
    if !rest.is_empty() {
        return Err(Error::Corrupt(format!(
            "user state: {} bytes after the end of the row",
            rest.len()
        )));
    }
    let p = row.profile;
    Ok(UserState {
        profile: Profile {
            version: p.version,
            first_seen: p.first_seen,
            last_seen: p.last_seen,
            epoch: p.epoch,
            items: from_affinities(p.items),
            categories: from_affinities(p.categories),
            purchased: p
                .purchased
                .into_iter()
                .map(|x| Purchased {
                    item: SmolStr::new(&x.item),
                    last: x.last,
                })
                .collect(),
            cart: p
                .cart
                .into_iter()
                .map(|c| CartEntry {
                    item: SmolStr::new(&c.item),
                    added: c.added,
                    removed: c.removed,
                })
                .collect(),
            purchases: p.purchases,
            visits: p.visits.into_iter().map(|(a, b)| Visit(a, b)).collect(),
            older_visits: p.older_visits,
        },
        recent_ids: row.recent_ids.into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> UserState {
        let mut s = UserState::default();
        let p = &mut s.profile;
        p.version = 3;
        p.first_seen = 1_700_000_000_000;
        p.last_seen = 1_700_000_360_000;
        p.epoch = 2811;
        p.items = vec![
            Affinity {
                key: "85123A".into(),
                short: Acc::default(),
                long: Acc(1, -2, 300),
            },
            Affinity {
                key: "é✓".into(),
                short: Acc(4, 5, 6),
                long: Acc::default(),
            },
        ];
        p.categories = vec![Affinity {
            key: "home".into(),
            short: Acc(0, 0, 7),
            long: Acc::default(),
        }];
        p.purchased = vec![Purchased {
            item: "85123A".into(),
            last: 1_700_000_360_000,
        }];
        p.cart = vec![CartEntry {
            item: "22423".into(),
            added: 10,
            removed: 0,
        }];
        p.purchases = 1;
        p.visits = vec![Visit(1_700_000_000_000, 1_700_000_360_000)];
        p.older_visits = 2;
        s.recent_ids = vec![7, 300];
        s
    }

    /// The exact bytes of a row: a change to them is a change of the store's format and needs
    /// a new `FORMAT_VERSION`. Per line: profile version, first seen, last seen, epoch; two
    /// items (key, then short and long as zigzag varints); one category; one purchase; one cart
    /// entry; purchases; one visit; older visits; recent ids.
    #[test]
    fn golden_bytes() {
        let mut buf = Vec::new();
        encode_into(&sample(), &mut buf);
        let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "03\
             80d095ffbc31\
             c0ccabffbc31\
             fb15\
             02\
             063835313233410000000203d804\
             05c3a9e29c93080a0c000000\
             01\
             04686f6d65\
             00000e000000\
             01\
             06383531323341\
             c0ccabffbc31\
             01\
             053232343233\
             0a00\
             01\
             01\
             80d095ffbc31c0ccabffbc31\
             02\
             02\
             07ac02"
        );
        assert_eq!(decode(&buf).unwrap(), sample());
    }

    #[test]
    fn refuses_damaged_rows_with_a_reason() {
        let mut buf = Vec::new();
        encode_into(&sample(), &mut buf);
        let truncated = decode(&buf[..buf.len() - 1]).unwrap_err().to_string();
        assert!(truncated.contains("corrupt row"), "{truncated}");
        let mut longer = buf.clone();
        longer.push(0);
        let trailing = decode(&longer).unwrap_err().to_string();
        assert!(trailing.contains("1 bytes after the end"), "{trailing}");
    }

    fn acc() -> impl Strategy<Value = Acc> {
        prop_oneof![
            Just(Acc::default()),
            (any::<i64>(), any::<i64>(), any::<i64>()).prop_map(|(a, b, c)| Acc(a, b, c)),
        ]
    }

    fn affinity() -> impl Strategy<Value = Affinity> {
        (".{0,12}", acc(), acc()).prop_map(|(key, short, long)| Affinity {
            key: key.into(),
            short,
            long,
        })
    }

    fn state() -> impl Strategy<Value = UserState> {
        (
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>()),
            prop::collection::vec(affinity(), 0..6),
            prop::collection::vec(affinity(), 0..4),
            prop::collection::vec((".{0,8}", any::<u64>()), 0..4),
            prop::collection::vec((".{0,8}", any::<u64>(), any::<u64>()), 0..4),
            (any::<u32>(), any::<u32>()),
            prop::collection::vec((any::<u64>(), any::<u64>()), 0..4),
            prop::collection::vec(any::<u32>(), 0..8),
        )
            .prop_map(
                |(
                    (version, first_seen, last_seen, epoch),
                    items,
                    categories,
                    purchased,
                    cart,
                    (purchases, older_visits),
                    visits,
                    recent_ids,
                )| UserState {
                    profile: Profile {
                        version,
                        first_seen,
                        last_seen,
                        epoch,
                        items,
                        categories,
                        purchased: purchased
                            .into_iter()
                            .map(|(item, last)| Purchased {
                                item: item.into(),
                                last,
                            })
                            .collect(),
                        cart: cart
                            .into_iter()
                            .map(|(item, added, removed)| CartEntry {
                                item: item.into(),
                                added,
                                removed,
                            })
                            .collect(),
                        purchases,
                        visits: visits.into_iter().map(|(a, b)| Visit(a, b)).collect(),
                        older_visits,
                    },
                    recent_ids,
                },
            )
    }

    proptest! {
        #[test]
        fn every_state_round_trips(s in state()) {
            let mut buf = vec![0xee];
            encode_into(&s, &mut buf);
            prop_assert_eq!(buf[0], 0xee, "appends, keeps what the buffer held");
            prop_assert_eq!(UserState::decode(&buf[1..]).unwrap(), s);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }
    }
}
