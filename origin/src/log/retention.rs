//! Retention: closed segments wholly before the checkpoint go, oldest first, once they are
//! older than the configured age or the log is over the configured size.

use std::time::{Duration, SystemTime};

use super::segment::sync_dir;
use super::writer::Log;
use crate::config::LogConfig;
use crate::error::{Error, Result};

/// What one pass of retention removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retired {
    pub segments: u64,
    pub bytes: u64,
}

impl Log {
    /// Deletes the oldest closed segments that end at or before `checkpointed` and are either
    /// older than `cfg.retention_ms` (by their last write, which an erase keeps) or needed to
    /// bring the log under `cfg.retention_bytes`. The segment being appended to always stays,
    /// and only a prefix goes, so the offsets that remain have no hole. A crash part-way
    /// leaves a shorter prefix removed.
    pub fn retire(&self, checkpointed: u64, cfg: &LogConfig, now: SystemTime) -> Result<Retired> {
        let mut done = Retired::default();
        if cfg.retention_ms == 0 && cfg.retention_bytes == 0 {
            return Ok(done);
        }
        let max_age = Duration::from_millis(cfg.retention_ms);
        let mut total = if cfg.retention_bytes > 0 {
            self.usage().bytes
        } else {
            0
        };
        loop {
            let (base, next) = {
                let list = self.shared.list();
                match list.bases.as_slice() {
                    [base, next, ..] => (*base, *next),
                    _ => break,
                }
            };
            if next > checkpointed {
                break;
            }
            let path = self.shared.path(base);
            let meta = std::fs::metadata(&path).map_err(|source| Error::File {
                path: path.clone(),
                source,
            })?;
            let old = cfg.retention_ms > 0
                && now
                    .duration_since(meta.modified()?)
                    .is_ok_and(|age| age >= max_age);
            let over = cfg.retention_bytes > 0 && total > cfg.retention_bytes;
            if !(old || over) {
                break;
            }
            {
                // Out of the list first: a reader never opens a file about to go.
                let mut list = self.shared.list();
                list.bases.remove(0);
                list.generation += 1;
            }
            std::fs::remove_file(&path).map_err(|source| Error::File {
                path: path.clone(),
                source,
            })?;
            tracing::info!(
                segment = %path.display(),
                bytes = meta.len(),
                reason = if old { "age" } else { "size" },
                "retired a log segment"
            );
            total = total.saturating_sub(meta.len());
            done.segments += 1;
            done.bytes += meta.len();
        }
        if done.segments > 0 {
            sync_dir(self.dir())?;
        }
        Ok(done)
    }
}
