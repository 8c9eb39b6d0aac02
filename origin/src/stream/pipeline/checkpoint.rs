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
        self.rules.committed();
        if forgot {
            self.erase_forgotten()?;
        }
        self.retire_segments()?;
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
        self.commit_changelog()?;
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
        self.rules.checkpoint(&tx)?;
        tx.put_offset(&self.source, self.offset)?;
        if let Some(p) = &self.partitioned {
            p.write(&tx, &self.source)?;
        }
        self.dedup.checkpoint(&tx)?;
        self.dedup.prune(&tx, self.watermarks.min())?;
        tx.commit()
    }

    /// Gives the pipeline the embedded log it reads: after each checkpoint it erases forgotten
    /// users' records from it and retires the segments retention lets go. Does both at once,
    /// for what a crash left to do.
    pub fn maintain_log(&mut self, log: crate::log::Log) -> Result<()> {
        self.log = Some(log);
        self.erase_forgotten()?;
        self.retire_segments()
    }

    /// Erases from the log the records of users forgotten before the checkpoint (see
    /// [`crate::store::Store::erase_due`]), then drops their rows.
    fn erase_forgotten(&mut self) -> Result<()> {
        let Some(log) = &self.log else {
            return Ok(());
        };
        let users = self.store.erase_due(self.checkpointed)?;
        if users.is_empty() {
            return Ok(());
        }
        let erased = log.erase_users(&users, self.checkpointed)?;
        tracing::info!(
            users = users.len(),
            records = erased,
            "erased forgotten users' records from the log"
        );
        self.store.erase_done(users.keys())?;
        Ok(())
    }

    /// Deletes the log segments retention lets go (only ever before the checkpoint).
    fn retire_segments(&mut self) -> Result<()> {
        let Some(log) = &self.log else {
            return Ok(());
        };
        let retired = log.retire(
            self.checkpointed,
            &self.log_cfg,
            std::time::SystemTime::now(),
        )?;
        if retired.segments > 0 {
            self.metrics.log_segments_retired.inc_by(retired.segments);
        }
        Ok(())
    }
}
