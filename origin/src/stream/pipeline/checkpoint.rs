//! The pipeline's checkpoint: everything applied since the previous one, committed in one
//! redb write transaction (user states, pending publishes, shared keys, forgets, model
//! changes, dead letters, counters, watermarks, the log offset and dedup keys), then the
//! memory bound enforced.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::warm::{WARM_AHEAD, warm};
use super::{Pipeline, SinceCheckpoint};
use crate::error::Result;
use crate::store::{CheckpointWriter, Forget, encode_user_row, keys, pack_pending};
use crate::stream::live::{self, Live, UserKey};

/// Most dead letters one checkpoint deletes (the rest go at the next ones).
const EXPIRE_PER_CHECKPOINT: usize = 10_000;

/// What a checkpoint writes from [`Live`], encoded while holding its lock.
#[derive(Debug, Default)]
struct EncodedUsers {
    /// Users and the span of their encoded row in `bytes`, in key order.
    users: Vec<(UserKey, std::ops::Range<usize>)>,
    bytes: Vec<u8>,
    /// The packed pending-publishes row.
    pending: Vec<u8>,
    /// Shared keys waiting: (key, version, accepted).
    shared: Vec<(String, u64, u64)>,
    /// Users forgotten since the last checkpoint.
    forgotten: Vec<Forgotten>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Forgotten {
    key: UserKey,
    user: std::sync::Arc<str>,
    /// Offset of the forget record.
    at: u64,
    /// The `p:` KV key.
    kv_key: String,
    /// Back since the forget (a new state replaces the old row).
    back: bool,
}

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
        let forgot = !self.since.forgotten.is_empty();
        self.since = SinceCheckpoint::default();
        if forgot {
            self.erase_forgotten()?;
        }
        self.last_checkpoint = Instant::now();
        self.evict();
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
    fn write_checkpoint(&mut self) -> Result<()> {
        let tx = self.store.begin_checkpoint()?;
        // Encode under the live lock, write after releasing it: the publisher reads live
        // while the B-tree inserts and the fsync run. Nothing can change the state in
        // between: the pipeline is this thread, and forget, catalog and full-publish
        // writes wait for this write transaction.
        let encoded = self.encode_users()?;
        self.write_users(&tx, &encoded)?;
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
        self.dedup.checkpoint(&tx)?;
        self.dedup.prune(&tx, self.watermarks.min())?;
        tx.commit()
    }

    /// Encodes what the checkpoint writes from [`Live`]: every user changed since the last
    /// checkpoint (in user order, so the transaction's writes are deterministic), the waiting
    /// user publishes, the waiting shared keys, and the forgets a replay can no longer reach.
    fn encode_users(&mut self) -> Result<EncodedUsers> {
        let mut out = EncodedUsers::default();
        let live_arc = self.live.clone();
        let mut live = live::lock(&live_arc);
        let Live {
            users,
            unpublished,
            shared,
            stored,
            ..
        } = &mut *live;
        let mut rows: Vec<(UserKey, std::ops::Range<usize>)> =
            Vec::with_capacity(self.since.unsaved.len());
        let keys = &self.since.unsaved;
        // Room for typical rows up front (pages are only touched as they are written): growing
        // from empty copied the buffer again at every doubling, at every checkpoint.
        out.bytes.reserve(keys.len() * 256);
        for chunk in keys.chunks(WARM_AHEAD) {
            warm(users, None, chunk.iter());
            for key in chunk {
                // Absent: forgotten since it changed.
                let Some(c) = users.get_mut(key) else {
                    continue;
                };
                // Counted as stored before the write: a key too many (a failed commit) only
                // costs a lookup that finds nothing; a key missing would start a stored user
                // afresh.
                stored.insert(*key);
                c.unsaved = false;
                let start = out.bytes.len();
                encode_user_row(&c.user, &c.state, &mut out.bytes);
                rows.push((*key, start..out.bytes.len()));
            }
        }
        // B-tree order: the inserts then walk its leaves once.
        rows.sort_unstable_by_key(|r| r.0);
        out.users = rows;
        pack_pending(
            unpublished.values().map(|(u, p)| (&**u, p.version)),
            &mut out.pending,
        );
        if self.since.shared {
            out.shared = shared
                .iter()
                .map(|(k, u)| (k.clone(), u.version, u.accepted_ms))
                .collect();
        }
        // A user back since the forget has a new state, written above over the old row.
        out.forgotten = self
            .since
            .forgotten
            .iter()
            .map(|(key, (user, at))| Forgotten {
                key: *key,
                user: user.clone(),
                at: *at,
                kv_key: attune_core::hash::profile_key(self.profile_secret.as_bytes(), user),
                back: users.contains_key(key),
            })
            .collect();
        out.forgotten.sort_unstable();
        Ok(out)
    }

    fn write_users(&mut self, tx: &CheckpointWriter, e: &EncodedUsers) -> Result<()> {
        tx.put_users(
            e.users
                .iter()
                .map(|(key, span)| (*key, &e.bytes[span.clone()])),
        )?;
        tx.put_pending(&e.pending)?;
        if !e.shared.is_empty() {
            tx.enqueue_shared_versions(e.shared.iter().map(|(k, v, a)| (k.as_str(), *v, *a)))?;
        }
        for f in &e.forgotten {
            let forget = Forget {
                key: f.key,
                user: &f.user,
                at: f.at,
                kv_key: &f.kv_key,
                back: f.back,
                erase: self.log_path.is_some(),
            };
            tx.put_forget(forget, crate::now_ms())?;
        }
        Ok(())
    }

    /// Erases from the log the records of users forgotten before the checkpoint (see
    /// [`crate::store::Store::erase_due`]), then drops their rows. Also runs when the pipeline opens, for what a crash
    /// left to do.
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

    /// Keeps memory within its capacity: drops the least recently used quarter of the clean
    /// user states (states changed since the checkpoint stay).
    fn evict(&mut self) {
        let mut live = live::lock(&self.live);
        if live.users.len() <= self.cache_cap {
            return;
        }
        let keep = self.cache_cap - self.cache_cap / 4;
        let mut used: Vec<u64> = live.users.values().map(|c| c.used).collect();
        let drop_n = used.len() - keep;
        let (_, nth, _) = used.select_nth_unstable(drop_n);
        let threshold = *nth;
        live.users.retain(|_, c| c.unsaved || c.used >= threshold);
    }
}
