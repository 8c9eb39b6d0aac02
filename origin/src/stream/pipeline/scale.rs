//! The pipeline's side of Kafka scale-out: several instances in one consumer group, each
//! owning some partitions. What it owns, it writes to the state changelog with each
//! checkpoint ([`changelog`]); what another instance owned, it restores from there when the
//! group hands it over; the model is merged from every instance's deltas.
//!
//! The model's increments are recorded, not applied, while events are applied
//! ([`Model::record_deltas`]): each checkpoint ships them, and every instance (this one too)
//! merges every instance's deltas in, read back from the model topic. So each instance holds
//! the whole model, the same one a single instance would hold.

use std::collections::BTreeMap;
use std::sync::Arc;

use attune_core::model::keys as kv;

use super::Pipeline;
use crate::error::Result;
use crate::log::Record;
use crate::model::{Model, ModelDelta};
use crate::stream::live::{self, Cached, Live, Unpublished, UserKey, user_key};
use crate::stream::source::PartitionOffset;
use crate::stream::source::changelog::{
    self, Broadcast, ChangelogBatch, ChangelogSink, Key, Marker, PartitionChanges,
};

/// What the pipeline keeps for the changelog between two checkpoints.
pub(crate) struct ScaleOut {
    sink: Box<dyn ChangelogSink>,
    /// Partition of each user changed, forgotten or restored since the last checkpoint.
    user_partition: foldhash::HashMap<UserKey, u32>,
    /// Dedup keys admitted since the last checkpoint, packed, per partition.
    dedup_added: BTreeMap<u32, Vec<u8>>,
    /// Catalog and rules changes applied since the last checkpoint (for the model topic).
    broadcasts: Vec<Broadcast>,
    /// Dedup rows in the changelog per partition: (row, newest event time), tombstoned once
    /// the newest is behind the horizon.
    dedup_rows: BTreeMap<u32, Vec<(u64, u64)>>,
}

impl std::fmt::Debug for ScaleOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScaleOut")
            .field("users", &self.user_partition.len())
            .finish_non_exhaustive()
    }
}

/// Entries per model-delta message and dedup keys per changelog row: each record stays well
/// under Kafka's default 1 MB message limit (a delta entry is a few bytes plus the names it
/// introduces; a dedup key is 24 bytes).
const DELTA_PART_ENTRIES: usize = 8_192;
const DEDUP_ROW_ENTRIES: usize = 16_384;

/// Room for this many catalog and rules changes between two deltas in a shared-key version.
const SEQ_PER_DELTA_BITS: u32 = 20;

fn part(batch: &mut ChangelogBatch, p: u32) -> &mut PartitionChanges {
    batch.partitions.entry(p).or_default()
}

fn partition_of(offset: u64) -> u32 {
    PartitionOffset::unpack(offset).partition
}

/// What a restore brought in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub users: u64,
    pub deleted: u64,
    pub dedup_keys: u64,
    /// The partition's next offset per its marker (0: the changelog had none).
    pub next: u64,
}

impl Pipeline {
    /// Runs as one of several instances of a partitioned source: checkpoints also go to
    /// `sink`, and the model takes deltas ([`Pipeline::merge_model_delta`]) instead of
    /// applying events itself.
    pub fn scale_out(mut self, sink: Box<dyn ChangelogSink>) -> Self {
        self.model
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record_deltas();
        self.scale = Some(ScaleOut {
            sink,
            user_partition: Default::default(),
            dedup_added: BTreeMap::new(),
            dedup_rows: BTreeMap::new(),
            broadcasts: Vec::new(),
        });
        self
    }

    pub fn is_scaled_out(&self) -> bool {
        self.scale.is_some()
    }

    /// What the pipeline shares with the publisher.
    pub fn live(&self) -> crate::stream::live::SharedLive {
        self.live.clone()
    }

    /// An event passed dedup and watermark: its user and dedup key belong to its partition.
    pub(super) fn scale_admitted(&mut self, offset: u64, key: UserKey, digest: u128, ts: u64) {
        if let Some(s) = &mut self.scale {
            let p = partition_of(offset);
            s.user_partition.insert(key, p);
            let packed = s.dedup_added.entry(p).or_default();
            packed.extend_from_slice(&digest.to_le_bytes());
            packed.extend_from_slice(&ts.to_le_bytes());
        }
    }

    /// A forget at `offset`: the tombstone goes to its partition.
    pub(super) fn scale_forgot(&mut self, offset: u64, user: &str) {
        if let Some(s) = &mut self.scale {
            s.user_partition
                .insert(user_key(user), partition_of(offset));
        }
    }

    /// Fails once the changelog can never commit again (see [`ChangelogSink::check`]).
    pub fn check_changelog(&self) -> Result<()> {
        self.scale.as_ref().map_or(Ok(()), |s| s.sink.check())
    }

    /// The changelog's part of the checkpoint being written: sent (one transaction) before
    /// the store commits, so the store is never ahead of the changelog.
    pub(super) fn commit_changelog(&mut self) -> Result<()> {
        let Some(mut scale) = self.scale.take() else {
            return Ok(());
        };
        let r = self
            .changelog_batch(&mut scale)
            .and_then(|batch| scale.sink.commit(&batch));
        self.scale = Some(scale);
        r
    }

    fn changelog_batch(&mut self, scale: &mut ScaleOut) -> Result<ChangelogBatch> {
        let mut batch = ChangelogBatch::default();
        let model_arc = self.model.clone();
        let mut model = model_arc.lock().unwrap_or_else(|e| e.into_inner());
        let delta = model.take_delta();
        if !delta.is_empty() {
            batch.model_deltas = delta
                .split(DELTA_PART_ENTRIES)
                .iter()
                .map(ModelDelta::encode)
                .collect();
        }
        {
            let live = live::lock(&self.live);
            for key in self.users.unsaved_keys() {
                let (Some(c), Some(p)) = (live.users.get(key), scale.user_partition.get(key))
                else {
                    continue;
                };
                let recent: Vec<&str> = c
                    .state
                    .recent_ids
                    .iter()
                    .filter_map(|id| model.name(*id))
                    .collect();
                part(&mut batch, *p).records.push((
                    changelog::user_key(&c.user),
                    Some(changelog::encode_user(&c.user, &c.state, &recent)),
                ));
            }
            for (key, user) in self.users.forgotten_users() {
                if live.users.contains_key(key) {
                    // Back since the forget: its new state is above.
                    continue;
                }
                if let Some(p) = scale.user_partition.get(key) {
                    part(&mut batch, *p)
                        .records
                        .push((changelog::user_key(user), None));
                }
            }
        }
        drop(model);
        let cutoff = self
            .watermarks
            .min()
            .map_or(0, |w| w.saturating_sub(self.dedup.horizon()));
        for (p, packed) in std::mem::take(&mut scale.dedup_added) {
            let rows = scale.dedup_rows.entry(p).or_default();
            for chunk in packed.chunks(DEDUP_ROW_ENTRIES * 24) {
                let row = rows.iter().map(|r| r.0 + 1).max().unwrap_or(0);
                let newest = chunk
                    .as_chunks::<24>()
                    .0
                    .iter()
                    .map(|e| u64::from_le_bytes(e[16..].try_into().unwrap_or_default()))
                    .max()
                    .unwrap_or(0);
                rows.push((row, newest));
                part(&mut batch, p).records.push((
                    changelog::dedup_key(row),
                    Some(changelog::encode_dedup(chunk)),
                ));
            }
        }
        for (p, rows) in &mut scale.dedup_rows {
            let newest_row = rows.iter().map(|r| r.0).max();
            rows.retain(|&(row, newest)| {
                // The newest row stays: it numbers the next one.
                let keep = newest >= cutoff || Some(row) == newest_row;
                if !keep {
                    part(&mut batch, *p)
                        .records
                        .push((changelog::dedup_key(row), None));
                }
                keep
            });
        }
        if let Some(parts) = &self.partitioned {
            for (p, next) in parts.applied() {
                batch.offsets.insert(*p, *next);
                if parts.checkpointed().get(p) == Some(next) && !batch.partitions.contains_key(p) {
                    continue;
                }
                let marker = Marker {
                    next: *next,
                    watermarks: self.watermarks.of_partition(*p),
                };
                part(&mut batch, *p).records.push((
                    changelog::MARKER_KEY.to_string(),
                    Some(changelog::encode_marker(&marker)),
                ));
            }
        }
        batch.broadcasts = std::mem::take(&mut scale.broadcasts);
        scale.user_partition.clear();
        Ok(batch)
    }

    /// Takes over `partition` from its changelog: `latest` is each key's newest value (a
    /// tombstone as `None`). Call right after a checkpoint; the next one writes what was
    /// restored to the store. Clean cached users are dropped first: this instance may hold
    /// older states of the partition's users from an earlier ownership.
    pub fn restore_partition(
        &mut self,
        partition: u32,
        latest: BTreeMap<String, Option<Vec<u8>>>,
    ) -> Result<Restored> {
        let mut restored = Restored::default();
        let Some(mut scale) = self.scale.take() else {
            return Ok(restored);
        };
        let r = self.restore_into(&mut scale, partition, latest, &mut restored);
        self.scale = Some(scale);
        r.map(|()| restored)
    }

    fn restore_into(
        &mut self,
        scale: &mut ScaleOut,
        partition: u32,
        latest: BTreeMap<String, Option<Vec<u8>>>,
        restored: &mut Restored,
    ) -> Result<()> {
        let model_arc = self.model.clone();
        let mut model = model_arc.lock().unwrap_or_else(|e| e.into_inner());
        let live_arc = self.live.clone();
        let mut live = live::lock(&live_arc);
        live.users.retain(|_, c| c.unsaved);
        let mut marker = None;
        let mut rows = Vec::new();
        let mut tombstones = Vec::new();
        for (key, value) in &latest {
            match changelog::parse_key(key)? {
                Key::Marker => {
                    if let Some(v) = value {
                        marker = Some(changelog::decode_marker(v)?);
                    }
                }
                Key::User(user) => {
                    let k = user_key(user);
                    match value {
                        None => {
                            // The previous owner may have died before KV's delete went out: it
                            // is queued again (a delete of a missing key changes nothing).
                            tombstones.push(user.to_string());
                            scale.user_partition.insert(k, partition);
                            restored.deleted += 1;
                        }
                        Some(v) => {
                            let (mut state, recent) = changelog::decode_user(user, v)?;
                            state.recent_ids =
                                recent.iter().map(|n| model.intern_item(n)).collect();
                            // The previous owner may have died before publishing it: published
                            // again at the same version (the same bytes).
                            let version = state.profile.version;
                            let user: Arc<str> = Arc::from(user);
                            live.unpublished.insert(
                                k,
                                (
                                    user.clone(),
                                    Unpublished {
                                        version,
                                        accepted_ms: crate::now_ms(),
                                    },
                                ),
                            );
                            let mut c = Cached::new(user, state, self.batch_no);
                            c.unsaved = true;
                            if live.users.insert(k, c).is_none_or(|old| !old.unsaved) {
                                self.users.changed(k);
                            }
                            scale.user_partition.insert(k, partition);
                            restored.users += 1;
                        }
                    }
                }
                Key::Dedup(row) => {
                    if let Some(v) = value {
                        let entries = changelog::decode_dedup(v)?;
                        let newest = entries.iter().map(|e| e.1).max().unwrap_or(0);
                        for (h, ts) in entries {
                            self.dedup.record(h, ts);
                            restored.dedup_keys += 1;
                        }
                        rows.push((row, newest));
                    }
                }
            }
        }
        drop(live);
        drop(model);
        for user in tombstones {
            self.users.forget(&user, 0);
        }
        scale.dedup_rows.insert(partition, rows);
        if let Some(m) = marker {
            for (source, wm) in m.watermarks {
                self.watermarks.raise(&source, wm);
            }
            restored.next = m.next;
            if let Some(p) = &mut self.partitioned {
                p.restore(partition, m.next);
            }
        }
        Ok(())
    }

    /// The group took `partitions` away (after a checkpoint): their offsets leave the
    /// checkpoint's commit, and their users leave memory (the new owner changes them now).
    pub fn revoke_partitions(&mut self, partitions: &[u32]) {
        if let Some(p) = &mut self.partitioned {
            p.forget_partitions(partitions);
        }
        if let Some(s) = &mut self.scale {
            for p in partitions {
                s.dedup_rows.remove(p);
            }
        }
        live::lock(&self.live).users.retain(|_, c| c.unsaved);
    }

    /// A catalog or rules change with id `id`, applied from its copy in an events partition:
    /// it also goes to the model topic with the next checkpoint.
    pub fn note_broadcast(&mut self, id: u64, rec: &Record) {
        if let Some(s) = &mut self.scale {
            s.broadcasts.push(Broadcast {
                id,
                kind: rec.kind,
                payload: rec.payload.clone(),
            });
        }
    }

    /// Applies a catalog or rules change read from the model topic (another instance applied
    /// it first). The caller skips the ones already applied, by id.
    pub fn merge_broadcast(&mut self, change: Broadcast, accepted_ms: u64) -> Result<()> {
        let rec = Record {
            offset: 0,
            next: 0,
            kind: change.kind,
            accepted_ms,
            source: "model".into(),
            payload: change.payload,
        };
        self.apply_change(&rec)?;
        self.since.model_merged = true;
        Ok(())
    }

    /// Merges one instance's model delta (read back from the model topic at `position`), and
    /// queues the shared keys it changed. `accepted_ms`: when the delta was written
    /// (freshness).
    ///
    /// The shared keys' versions start from the delta's position (`position << 20`, plus one
    /// per change since): every instance merges the same deltas in the same order, so whichever
    /// owns partition 0 numbers them as the previous owner did, and the edge, which keeps a
    /// copy until the manifest names a newer version, never holds on to the old owner's.
    pub fn merge_model_delta(
        &mut self,
        bytes: &[u8],
        position: u64,
        accepted_ms: u64,
    ) -> Result<()> {
        let delta = ModelDelta::decode(bytes)?;
        let model_arc = self.model.clone();
        let mut model = model_arc.lock().unwrap_or_else(|e| e.into_inner());
        model.raise_seq(position.saturating_add(1) << SEQ_PER_DELTA_BITS);
        model.merge_delta(&delta);
        let live_arc = self.live.clone();
        let mut live = live::lock(&live_arc);
        self.queue_shared_keys(&mut model, &mut live, delta.changes_trending(), accepted_ms);
        self.since.model_merged = true;
        Ok(())
    }

    /// Queues the shared keys the model's changes touched (neighbour shards, and trending when
    /// `trend_changed`) at a new model version.
    pub(super) fn queue_shared_keys(
        &mut self,
        model: &mut Model,
        live: &mut Live,
        trend_changed: bool,
        first_accept: u64,
    ) {
        model.settle();
        let shards = model.take_touched_shards();
        if shards.is_empty() && !trend_changed {
            return;
        }
        let seq = model.next_seq();
        let mut shared: Vec<String> = shards.into_iter().map(kv::neighbours).collect();
        if trend_changed {
            shared.push(kv::TRENDING.to_string());
        }
        for key in shared {
            live.shared
                .entry(key)
                .and_modify(|u| u.merge(seq, first_accept))
                .or_insert(Unpublished {
                    version: seq,
                    accepted_ms: first_accept,
                });
        }
        self.since.shared = true;
    }
}
