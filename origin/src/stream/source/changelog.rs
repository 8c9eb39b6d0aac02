//! The state changelog of a partitioned source run by several instances (Kafka scale-out).
//!
//! Each partition of the events topic has the same-numbered partition of the changelog, which
//! holds that partition's state, keyed so that compaction keeps only what a restore needs:
//!
//! - `u/<user>`: the user's state ([`encode_user`]: the store's row, with the recent items by
//!   name since item ids are local to an instance), or a tombstone once the user is forgotten;
//! - `d/<row>`: a row of dedup keys (the store's packing: 16-byte digest, 8-byte event time),
//!   a tombstone once all of them are behind the dedup horizon;
//! - `o`: the [`Marker`]: the partition's next offset and its watermarks.
//!
//! A checkpoint writes all of these, the model's delta and the consumed offsets in one Kafka
//! transaction, so a reader that sees committed records only sees whole checkpoints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::{UserState, decode_user_row, encode_user_row};

/// The first byte of every changelog value this build writes.
const VERSION: u8 = 1;

/// Key of a partition's [`Marker`].
pub const MARKER_KEY: &str = "o";

pub fn user_key(user: &str) -> String {
    format!("u/{user}")
}

pub fn dedup_key(row: u64) -> String {
    format!("d/{row}")
}

/// What a changelog key names.
#[derive(Debug, PartialEq, Eq)]
pub enum Key<'a> {
    User(&'a str),
    Dedup(u64),
    Marker,
}

pub fn parse_key(key: &str) -> Result<Key<'_>> {
    if key == MARKER_KEY {
        return Ok(Key::Marker);
    }
    if let Some(user) = key.strip_prefix("u/") {
        return Ok(Key::User(user));
    }
    if let Some(row) = key.strip_prefix("d/").and_then(|r| r.parse().ok()) {
        return Ok(Key::Dedup(row));
    }
    Err(Error::Corrupt(format!(
        "changelog key {key:?} is not one this build writes"
    )))
}

/// A partition's position and event-time state at a checkpoint.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The partition's next offset: what the state below includes.
    pub next: u64,
    /// Watermark per source of this partition.
    pub watermarks: BTreeMap<String, u64>,
}

#[derive(Serialize, Deserialize)]
struct UserValue<'a> {
    #[serde(borrow)]
    row: &'a [u8],
    #[serde(borrow)]
    recent: Vec<&'a str>,
}

fn versioned(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(VERSION);
    out.extend_from_slice(&body);
    out
}

fn body<'a>(what: &'static str, value: &'a [u8]) -> Result<&'a [u8]> {
    match value.split_first() {
        Some((&VERSION, rest)) => Ok(rest),
        Some((v, _)) => Err(Error::Corrupt(format!(
            "changelog {what} of version {v}; this build reads version {VERSION}"
        ))),
        None => Err(Error::Corrupt(format!("changelog {what}: empty value"))),
    }
}

/// A user's state for the changelog; `recent` are the names of `state.recent_ids`.
pub fn encode_user(user: &str, state: &UserState, recent: &[&str]) -> Vec<u8> {
    let bare = UserState {
        profile: state.profile.clone(),
        recent_ids: Vec::new(),
    };
    let mut row = Vec::new();
    encode_user_row(user, &bare, &mut row);
    let value = UserValue {
        row: &row,
        recent: recent.to_vec(),
    };
    versioned(postcard::to_allocvec(&value).unwrap_or_default())
}

/// A user's state and recent item names, from [`encode_user`].
pub fn decode_user(user: &str, value: &[u8]) -> Result<(UserState, Vec<String>)> {
    let v: UserValue<'_> =
        postcard::from_bytes(body("user", value)?).map_err(|source| Error::Row {
            what: "changelog user: corrupt value",
            source,
        })?;
    let state = decode_user_row(user, v.row)?;
    Ok((state, v.recent.into_iter().map(str::to_string).collect()))
}

pub fn encode_marker(marker: &Marker) -> Vec<u8> {
    versioned(postcard::to_allocvec(marker).unwrap_or_default())
}

pub fn decode_marker(value: &[u8]) -> Result<Marker> {
    postcard::from_bytes(body("marker", value)?).map_err(|source| Error::Row {
        what: "changelog marker: corrupt value",
        source,
    })
}

/// A dedup row: packed entries as the store keeps them.
pub fn encode_dedup(packed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(packed.len() + 1);
    out.push(VERSION);
    out.extend_from_slice(packed);
    out
}

/// The entries of a dedup row: (digest, event time).
pub fn decode_dedup(value: &[u8]) -> Result<Vec<(u128, u64)>> {
    let packed = body("dedup row", value)?;
    if packed.len() % 24 != 0 {
        return Err(Error::Corrupt(format!(
            "changelog dedup row of {} bytes is not whole entries",
            packed.len()
        )));
    }
    Ok(packed
        .as_chunks::<24>()
        .0
        .iter()
        .map(|e| {
            let (h, ts) = e.split_at(16);
            (
                u128::from_le_bytes(h.try_into().unwrap_or_default()),
                u64::from_le_bytes(ts.try_into().unwrap_or_default()),
            )
        })
        .collect())
}

/// A catalog or rules change this instance applied first (from its copy in one of its
/// partitions), passed on through the model topic: an instance that only ever restored
/// partitions never reads a copy in the events topic.
#[derive(Debug, Clone)]
pub struct Broadcast {
    pub id: u64,
    pub kind: crate::log::RecordKind,
    pub payload: Vec<u8>,
}

/// One partition's records of a checkpoint.
#[derive(Debug, Default)]
pub struct PartitionChanges {
    /// `(key, value)`; `None` is a tombstone.
    pub records: Vec<(String, Option<Vec<u8>>)>,
}

/// What a checkpoint hands the changelog: every partition's records (the marker last), the
/// model's delta, and each partition's next offset (the consumer's position to commit).
#[derive(Debug, Default)]
pub struct ChangelogBatch {
    pub partitions: BTreeMap<u32, PartitionChanges>,
    /// The model's delta, encoded in parts (none: nothing changed).
    pub model_deltas: Vec<Vec<u8>>,
    /// Catalog and rules changes applied since the last checkpoint, for the model topic.
    pub broadcasts: Vec<Broadcast>,
    pub offsets: BTreeMap<u32, u64>,
}

/// Where a checkpoint's changelog goes, before the store's transaction commits (Kafka: one
/// transaction with the consumed offsets). An error fails the checkpoint.
pub trait ChangelogSink: Send {
    fn commit(&mut self, batch: &ChangelogBatch) -> Result<()>;

    /// Fails once the sink can never commit again (checked between checkpoints too, so the
    /// pipeline stops at once rather than at its next checkpoint).
    fn check(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_refuse_what_they_do_not_know() {
        let mut state = UserState::default();
        state.profile.version = 7;
        state.profile.last_seen = 42;
        state.recent_ids = vec![3, 1];
        let v = encode_user("alice", &state, &["i3", "i1"]);
        let (back, recent) = decode_user("alice", &v).unwrap();
        assert_eq!(back.profile, state.profile);
        assert!(back.recent_ids.is_empty());
        assert_eq!(recent, vec!["i3".to_string(), "i1".to_string()]);
        assert!(decode_user("bob", &v).is_err(), "another user's row");
        let mut newer = v.clone();
        newer[0] = 2;
        assert!(decode_user("alice", &newer).is_err());
        assert!(decode_user("alice", &v[..v.len() / 2]).is_err());

        let m = Marker {
            next: 99,
            watermarks: [("kafka.p3".to_string(), 1_000)].into(),
        };
        assert_eq!(decode_marker(&encode_marker(&m)).unwrap(), m);
        assert!(decode_marker(&[]).is_err());

        let mut packed = Vec::new();
        packed.extend_from_slice(&5u128.to_le_bytes());
        packed.extend_from_slice(&77u64.to_le_bytes());
        assert_eq!(decode_dedup(&encode_dedup(&packed)).unwrap(), vec![(5, 77)]);
        assert!(decode_dedup(&encode_dedup(&packed[..20])).is_err());

        assert_eq!(parse_key("u/a/b").unwrap(), Key::User("a/b"));
        assert_eq!(parse_key("d/12").unwrap(), Key::Dedup(12));
        assert_eq!(parse_key("o").unwrap(), Key::Marker);
        assert!(parse_key("x").is_err());
    }
}
