//! The watermark operator: per source, the newest event time applied. An event older than its
//! source's watermark minus the allowed lateness is late (a dead letter). Its part of a
//! checkpoint is one `wm:<source>` counter per source.

use std::collections::HashMap;

use crate::error::Result;
use crate::store::{CheckpointReader, CheckpointWriter};

#[derive(Debug, Default)]
pub(super) struct Watermarks {
    by_source: HashMap<String, u64>,
    lateness: u64,
}

/// Why an event was refused: its event time, the watermark and the allowed lateness.
#[derive(Debug)]
pub(super) struct Late {
    pub(super) ts: u64,
    pub(super) watermark: u64,
    pub(super) lateness: u64,
}

impl std::fmt::Display for Late {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "event time {} is older than watermark {} minus allowed lateness {} ms",
            self.ts, self.watermark, self.lateness
        )
    }
}

impl Watermarks {
    pub(super) fn load(tx: &CheckpointReader, lateness: u64) -> Result<Self> {
        Ok(Watermarks {
            by_source: tx.watermarks()?.into_iter().collect(),
            lateness,
        })
    }

    /// Admits an event of `source` at event time `ts` (moving the watermark), or says why it
    /// is late.
    pub(super) fn admit(&mut self, source: &str, ts: u64) -> std::result::Result<(), Late> {
        let wm = match self.by_source.get_mut(source) {
            Some(wm) => wm,
            None => self.by_source.entry(source.to_string()).or_insert(0),
        };
        if ts.saturating_add(self.lateness) < *wm {
            return Err(Late {
                ts,
                watermark: *wm,
                lateness: self.lateness,
            });
        }
        *wm = (*wm).max(ts);
        Ok(())
    }

    /// The slowest source's watermark (sources that applied nothing yet do not count).
    pub(super) fn min(&self) -> Option<u64> {
        self.by_source.values().copied().filter(|w| *w > 0).min()
    }

    /// The watermarks of a partition's sources (named `<producer>.p<partition>`).
    pub(super) fn of_partition(&self, partition: u32) -> std::collections::BTreeMap<String, u64> {
        let suffix = format!(".p{partition}");
        self.by_source
            .iter()
            .filter(|(s, _)| s.ends_with(&suffix))
            .map(|(s, wm)| (s.clone(), *wm))
            .collect()
    }

    /// Moves a source's watermark up to `wm` (a restored partition's).
    pub(super) fn raise(&mut self, source: &str, wm: u64) {
        let e = self.by_source.entry(source.to_string()).or_insert(0);
        *e = (*e).max(wm);
    }

    pub(super) fn checkpoint(&self, tx: &CheckpointWriter) -> Result<()> {
        tx.put_watermarks(self.by_source.iter().map(|(s, wm)| (s.as_str(), *wm)))
    }
}
