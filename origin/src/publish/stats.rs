//! KV writes per key class: what a Cloudflare bill counts. Kept per minute in the store for the
//! last hour, so `inspect status` can project writes per day without a running server.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::Result;
use crate::store::Store;

/// The publisher's part of a status report: projected KV writes per day by key class.
pub fn status_json(store: &Store) -> serde_json::Value {
    let per_day = writes_per_day(store, crate::now_ms()).unwrap_or_default();
    let total: u64 = per_day.iter().map(|(_, n)| n).sum();
    let mut by_class = serde_json::Map::new();
    for (class, n) in per_day {
        by_class.insert(class.into(), n.into());
    }
    serde_json::json!({ "kv_writes_per_day": total, "kv_writes_per_day_by_class": by_class })
}

/// Minute (wall ms / 60,000) → writes per [`KeyClass`] in that minute (u64 LE each).
const WRITE_COUNTS: TableDefinition<u64, &[u8]> = TableDefinition::new("publish_write_counts");

/// Minutes of history kept (and projected from).
const WINDOW_MIN: u64 = 60;

/// What a KV key is, for counting writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyClass {
    Profile = 0,
    Delete,
    Manifest,
    Trending,
    Neighbours,
    Catalog,
    Config,
}

impl KeyClass {
    pub const ALL: [KeyClass; 7] = [
        KeyClass::Profile,
        KeyClass::Delete,
        KeyClass::Manifest,
        KeyClass::Trending,
        KeyClass::Neighbours,
        KeyClass::Catalog,
        KeyClass::Config,
    ];

    /// The class of a written key (deletes are counted by the caller).
    pub fn of(key: &str) -> KeyClass {
        use attune_core::model::keys as kv;
        if key.starts_with("p:") {
            KeyClass::Profile
        } else if key == kv::MANIFEST {
            KeyClass::Manifest
        } else if key == kv::TRENDING {
            KeyClass::Trending
        } else if key.starts_with("n:") {
            KeyClass::Neighbours
        } else if key.starts_with("c:") {
            KeyClass::Catalog
        } else {
            KeyClass::Config
        }
    }

    /// The metric label (`attune_published_keys_total{kind}`).
    pub fn label(self) -> &'static str {
        match self {
            KeyClass::Profile => "profile",
            KeyClass::Delete => "delete",
            KeyClass::Manifest => "manifest",
            KeyClass::Trending => "trending",
            KeyClass::Neighbours => "neighbours",
            KeyClass::Catalog => "catalog",
            KeyClass::Config => "config",
        }
    }
}

fn decode(bytes: &[u8]) -> [u64; KeyClass::ALL.len()] {
    let mut out = [0u64; KeyClass::ALL.len()];
    for (slot, chunk) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        *slot = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
    }
    out
}

/// Adds `counts` to the current minute (inside the ack's transaction) and drops minutes that
/// left the window.
pub(super) fn record(
    tx: &redb::WriteTransaction,
    wall_ms: u64,
    counts: &[u64; KeyClass::ALL.len()],
) -> Result<()> {
    if counts.iter().all(|c| *c == 0) {
        return Ok(());
    }
    let minute = wall_ms / 60_000;
    let mut t = tx.open_table(WRITE_COUNTS)?;
    let old: Vec<u64> = t
        .range(..minute.saturating_sub(WINDOW_MIN))?
        .map(|r| r.map(|(k, _)| k.value()))
        .collect::<std::result::Result<_, _>>()?;
    for k in old {
        t.remove(k)?;
    }
    let mut now = t
        .get(minute)?
        .map(|v| decode(v.value()))
        .unwrap_or_default();
    for (n, c) in now.iter_mut().zip(counts) {
        *n += c;
    }
    let bytes: Vec<u8> = now.iter().flat_map(|n| n.to_le_bytes()).collect();
    t.insert(minute, bytes.as_slice())?;
    Ok(())
}

/// Projected KV writes per day by class: the writes of the last hour (or of the minutes since
/// the first write in it, if fewer), scaled to 24 hours.
pub fn writes_per_day(store: &Store, wall_ms: u64) -> Result<Vec<(&'static str, u64)>> {
    let tx = store.db.begin_read()?;
    let Ok(t) = tx.open_table(WRITE_COUNTS) else {
        // Nothing was ever written.
        return Ok(KeyClass::ALL.iter().map(|c| (c.label(), 0)).collect());
    };
    let minute = wall_ms / 60_000;
    let from = minute.saturating_sub(WINDOW_MIN - 1);
    let mut sums = [0u64; KeyClass::ALL.len()];
    let mut first = None;
    for row in t.range(from..=minute)? {
        let (k, v) = row?;
        first.get_or_insert(k.value());
        for (s, c) in sums.iter_mut().zip(decode(v.value())) {
            *s += c;
        }
    }
    // Minutes covered, counting the current one as a whole minute (a young run projects high
    // rather than low).
    let minutes = first.map_or(1, |f| minute - f + 1);
    Ok(KeyClass::ALL
        .iter()
        .zip(sums)
        .map(|(c, s)| (c.label(), s * 1440 / minutes))
        .collect())
}
