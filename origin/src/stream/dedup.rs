//! The dedup operator: `event_id`s seen within the horizon, with their event times. Its part
//! of a checkpoint is one dedup row with the keys added since the previous one; rows
//! behind the horizon are deleted as the slowest watermark moves.

use crate::error::Result;
use crate::store::{CheckpointReader, CheckpointWriter, keys};
use foldhash::HashMap as FoldHashMap;

/// Bytes per packed entry in a dedup row: `[xxh3-128 of event_id: u128 LE][event time:
/// u64 LE]`.
const ENTRY: usize = 24;

/// Pruning runs once the cutoff moved by this much (each prune walks the map).
const PRUNE_STEP_MS: u64 = 3_600_000;

#[derive(Debug, Default)]
pub(super) struct Dedup {
    seen: FoldHashMap<u128, u64>,
    /// Added since the last checkpoint.
    added: Vec<(u128, u64)>,
    horizon: u64,
    pruned_to: u64,
    next_row: u64,
    buf: Vec<u8>,
}

/// The key `event_id` is deduplicated by.
pub(super) fn digest(event_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(event_id.as_bytes())
}

impl Dedup {
    /// Loads the keys of the last checkpoint not behind `min_watermark - horizon`.
    pub(super) fn load(
        tx: &CheckpointReader,
        horizon: u64,
        min_watermark: Option<u64>,
    ) -> Result<Self> {
        let mut dedup = Dedup {
            horizon,
            ..Dedup::default()
        };
        dedup.next_row = tx.counter(keys::DEDUP_ROW)?;
        // Keys already behind the horizon can only belong to late events: skip them.
        let cutoff = min_watermark
            .map(|w| w.saturating_sub(horizon))
            .unwrap_or(0);
        tx.dedup_rows(cutoff, |row| {
            for e in row.chunks_exact(ENTRY) {
                let (h, ts) = unpack(e);
                if ts >= cutoff {
                    dedup.seen.insert(h, ts);
                }
            }
        })?;
        Ok(dedup)
    }

    /// How far behind the slowest watermark keys are kept, ms.
    pub(super) fn horizon(&self) -> u64 {
        self.horizon
    }

    pub(super) fn seen(&self, digest: &u128) -> bool {
        self.seen.contains_key(digest)
    }

    /// Looks these keys up together, so their cache misses in the large map overlap (the
    /// count only keeps the lookups from being optimized away).
    pub(super) fn warm<'a>(&self, digests: impl Iterator<Item = &'a u128>) {
        let known = digests.filter(|h| self.seen.contains_key(h)).count();
        std::hint::black_box(known);
    }

    pub(super) fn record(&mut self, digest: u128, ts: u64) {
        self.seen.insert(digest, ts);
        self.added.push((digest, ts));
    }

    /// Writes the keys added since the last checkpoint as one row.
    pub(super) fn checkpoint(&mut self, tx: &CheckpointWriter) -> Result<()> {
        if self.added.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        let mut newest = 0;
        for (h, ts) in self.added.drain(..) {
            self.buf.extend_from_slice(&h.to_le_bytes());
            self.buf.extend_from_slice(&ts.to_le_bytes());
            newest = newest.max(ts);
        }
        let row = self.next_row;
        self.next_row += 1;
        tx.put_dedup(newest, row, &self.buf)
    }

    /// Forgets `event_id`s older than the horizon behind the slowest watermark, when the
    /// cutoff has moved by an hour or more.
    pub(super) fn prune(
        &mut self,
        tx: &CheckpointWriter,
        min_watermark: Option<u64>,
    ) -> Result<()> {
        let Some(min_wm) = min_watermark else {
            return Ok(());
        };
        let cutoff = min_wm.saturating_sub(self.horizon);
        if cutoff < self.pruned_to + PRUNE_STEP_MS {
            return Ok(());
        }
        self.seen.retain(|_, ts| *ts >= cutoff);
        // A row goes once its newest key is behind the cutoff; a row straddling the cutoff
        // stays (its old keys are skipped when loading).
        tx.prune_dedup(cutoff)?;
        self.pruned_to = cutoff;
        Ok(())
    }
}

fn unpack(e: &[u8]) -> (u128, u64) {
    let mut h = [0u8; 16];
    h.copy_from_slice(&e[..16]);
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&e[16..24]);
    (u128::from_le_bytes(h), u64::from_le_bytes(ts))
}
