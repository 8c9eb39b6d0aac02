//! The pipeline's checkpoint: everything applied since the previous one, committed in one
//! redb write transaction (user states, pending publishes, shared keys, forgets, model
//! changes, dead letters, counters, watermarks, the log offset and dedup keys), then the
//! memory bound enforced.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Pipeline, SinceCheckpoint};
use crate::error::Result;
use crate::store::keys;

/// Most dead letters one checkpoint deletes (the rest go at the next ones).
const EXPIRE_PER_CHECKPOINT: usize = 10_000;

impl Pipeline {
    /// Commits everything applied since the last checkpoint in one write transaction; returns
    /// 1 if it committed one, 0 if there was nothing to write.
    pub fn checkpoint(&mut self) -> Result<u64> {
        self.check_poisoned()?;
        if !self.has_unsaved() {
            self.last_checkpoint = Instant::now();
            return Ok(0);
        }
        let started = Instant::now();
        let r = self.write_checkpoint();
        if r.is_err() {
            self.poisoned = true;
        }
        r?;
        self.checkpointed = self.offset;
        if let Some(p) = &mut self.partitioned {
            p.committed();
        }
        let forgot = self.users.committed();
        self.since = SinceCheckpoint::default();
        if forgot {
            self.erase_forgotten()?;
        }
        self.last_checkpoint = Instant::now();
        self.users.evict();
        self.progress
            .checkpointed
            .store(self.checkpointed, Ordering::Release);
        self.progress.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .checkpoint_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(1)
    }

    /// Each operator writes its part of the checkpoint; this only orders them and commits.
    /// Nothing changes the state while it is written: the pipeline is this thread, and
    /// forget, catalog and full-publish writes wait for this write transaction.
    fn write_checkpoint(&mut self) -> Result<()> {
        if let Some(sink) = &mut self.dead_letter_sink
            && !self.since.dead.is_empty()
        {
            sink.send(&self.since.dead)?;
        }
        let tx = self.store.begin_checkpoint()?;
        self.users.checkpoint(&tx, self.since.shared)?;
        self.model
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .persist(&tx)?;
        tx.put_dead_letters(&self.since.dead, self.dlq_seq)?;
        let cutoff = crate::now_ms().saturating_sub(self.dlq_retention_ms);
        tx.expire_dead_letters(cutoff, EXPIRE_PER_CHECKPOINT)?;
        let c = self.since.counts;
        tx.add_counters(&[
            (keys::RECEIVED, c.received),
            (keys::APPLIED, c.applied),
            (keys::DUPLICATES, c.duplicates),
            (keys::DLQ, c.dlq),
            (keys::LATE, c.late),
        ])?;
        self.watermarks.checkpoint(&tx)?;
        tx.put_offset(&self.source, self.offset)?;
        if let Some(p) = &self.partitioned {
            p.write(&tx, &self.source)?;
        }
        self.dedup.checkpoint(&tx)?;
        self.dedup.prune(&tx, self.watermarks.min())?;
        tx.commit()
    }

    /// Erases from the log the records of users forgotten before the checkpoint (see
    /// [`crate::store::Store::erase_due`]), then drops their rows. Also runs when the pipeline
    /// opens, for what a crash left to do.
    pub(super) fn erase_forgotten(&mut self) -> Result<()> {
        let Some(path) = &self.log_path else {
            return Ok(());
        };
        let users = self.store.erase_due(self.checkpointed)?;
        if users.is_empty() {
            return Ok(());
        }
        let erased = crate::log::erase_users(path, &users, self.checkpointed)?;
        tracing::info!(
            users = users.len(),
            records = erased,
            "erased forgotten users' records from the log"
        );
        self.store.erase_done(users.keys())?;
        Ok(())
    }
}
