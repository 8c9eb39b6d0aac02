//! Writing the model's changes into a checkpoint: the catalog, item names, counts and trends
//! that changed, and the pair log (a delta record, or a compaction into the whole state).

use super::{Model, PAIR_LOG_SLACK_BYTES};
use crate::error::Result;
use crate::store::{CheckpointWriter, ModelDelta};

/// Entries per pair log record (16 bytes each: 4 MiB records).
const PAIR_RECORD_ENTRIES: usize = 1 << 18;

/// Appends one pair-log entry: `[a: u32 LE][b: u32 LE][weight: u64 LE]`.
fn push_pair(buf: &mut Vec<u8>, a: u32, b: u32, c: u64) {
    buf.extend_from_slice(&a.to_le_bytes());
    buf.extend_from_slice(&b.to_le_bytes());
    buf.extend_from_slice(&c.to_le_bytes());
}

impl Model {
    /// Writes everything changed since the last call into the checkpoint: the model's part.
    pub fn persist(&mut self, tx: &CheckpointWriter) -> Result<()> {
        let delta = tx.model();
        delta.put_seq(self.seq)?;
        self.settle();
        if !self.dirty_catalog.is_empty() {
            let dirty = std::mem::take(&mut self.dirty_catalog);
            delta.put_catalog(
                dirty
                    .iter()
                    .filter_map(|id| self.catalog.get(id).map(|item| (id.as_str(), item))),
            )?;
        }
        if (self.persisted_names as usize) < self.names.len() {
            let first = self.persisted_names;
            delta.put_item_names(first, self.names[first as usize..].iter().map(|n| &**n))?;
            self.persisted_names = self.names.len() as u32;
        }
        if !self.dirty_counts.is_empty() {
            let mut ids = std::mem::take(&mut self.dirty_counts);
            ids.sort_unstable_by(|a, b| self.names[*a as usize].cmp(&self.names[*b as usize]));
            for id in &ids {
                self.dirty_flags[*id as usize] &= !1;
            }
            delta.put_item_counts(
                ids.iter()
                    .map(|id| (&*self.names[*id as usize], self.counts[*id as usize])),
            )?;
            // Keep the allocation for the next batch.
            ids.clear();
            self.dirty_counts = ids;
        }
        if !self.dirty_trend.is_empty() {
            let mut ids = std::mem::take(&mut self.dirty_trend);
            ids.sort_unstable_by(|a, b| self.names[*a as usize].cmp(&self.names[*b as usize]));
            for id in &ids {
                self.dirty_flags[*id as usize] &= !2;
            }
            delta.put_trends(ids.iter().filter_map(|id| {
                self.trend[*id as usize].map(|v| (&*self.names[*id as usize], v))
            }))?;
            ids.clear();
            self.dirty_trend = ids;
        }
        if self.dirty_pairs > 0 {
            let live_bytes = self.live_pairs * 16;
            let delta_bytes = self.dirty_pairs * 16;
            let compact = self.log_bytes + delta_bytes > 2 * live_bytes + PAIR_LOG_SLACK_BYTES;
            let rows: Vec<u32> = if compact {
                // The whole state replaces the log.
                delta.clear_pair_log()?;
                self.log_bytes = 0;
                (0..self.adj.len() as u32).collect()
            } else {
                let mut rows = self.dirty_rows.clone();
                rows.sort_unstable();
                rows
            };
            let epoch = self.epoch;
            let mut buf = Vec::with_capacity(PAIR_RECORD_ENTRIES * 16);
            let mut pairs: Vec<(u32, u32)> = Vec::new();
            for a in rows {
                pairs.clear();
                pairs.extend(
                    self.adj[a as usize]
                        .iter()
                        .filter(|(b, c)| a < **b && (compact || c.epoch == epoch))
                        .map(|(b, c)| (*b, c.weight)),
                );
                pairs.sort_unstable();
                for (b, c) in &pairs {
                    push_pair(&mut buf, a, *b, u64::from(*c));
                    if buf.len() >= PAIR_RECORD_ENTRIES * 16 {
                        self.append_pair_record(&delta, &mut buf)?;
                    }
                }
            }
            if !buf.is_empty() {
                self.append_pair_record(&delta, &mut buf)?;
            }
        }
        for id in self.dirty_rows.drain(..) {
            self.dirty_flags[id as usize] &= !4;
        }
        self.dirty_pairs = 0;
        // Cells marked with the old epoch are now persisted.
        self.epoch = self.epoch.wrapping_add(1);
        Ok(())
    }

    fn append_pair_record(&mut self, delta: &ModelDelta<'_>, buf: &mut Vec<u8>) -> Result<()> {
        self.log_bytes += buf.len() as u64;
        delta.put_pair_record(self.log_next, buf)?;
        self.log_next += 1;
        buf.clear();
        Ok(())
    }
}
