//! The stream pipeline: validate (core) → dedup (`event_id`, persistent, horizon-bounded) →
//! per-source event-time watermark with allowed lateness → `Profile::apply` (core) and the
//! model.
//!
//! It works like a checkpointing stream processor (Flink's q17 reference included):
//! - **micro-batches** are applied in memory: user states in [`Live`], the model, dedup keys,
//!   watermarks, counters and dead letters. What they change is handed to the publisher at
//!   once (through [`Live`]), so freshness does not wait for the store;
//! - a **checkpoint** commits everything changed since the previous one in **one redb write
//!   transaction**: user states, dedup keys, the log offset, watermarks, counters, model
//!   changes, dead letters and pending publishes. It runs when the pipeline catches up with the
//!   log, every `checkpoint_interval_ms` under load, when `checkpoint_max_unsaved` users have
//!   changed, and on shutdown;
//! - after a crash the pipeline restarts from the checkpoint and replays the durable log from
//!   its offset. Applying is deterministic (no wall clock: the core's decay works on event
//!   time), so the replay recomputes the same states and versions: nothing is lost, nothing
//!   is applied twice, and the publisher never rewrites a version KV already holds.
//!
//! Writing each changed user once per checkpoint rather than once per micro-batch is what
//! makes the throughput: a busy user changes many times between two checkpoints.
//!
//! If a micro-batch or checkpoint fails after it changed memory, the pipeline refuses further
//! work: the caller must reopen the node, which reloads the checkpoint and replays the log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attune_core::Event;
use attune_core::event::{EventError, EventKind, parse_event};
use attune_core::model::keys as kv;
use attune_core::profile::ProfileConfig;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::fxhash::FxHashMap;
use crate::live::{self, Cached, Live, SharedLive, Unpublished, UserKey, user_key};
use crate::log::{Record, Source};
use crate::metrics::{Metrics, labels};
use crate::model::Model;
use crate::store::{
    DEDUP, DEDUP_LOG, DLQ, DlqRecord, FORGOTTEN, META, OUTBOX, PENDING, PENDING_KEY, Store, USERS,
    UserState, decode_user_row, encode_user_row, enqueue_shared, keys, pack_pending,
};

/// What one micro-batch (or a run of them) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub received: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub dlq: u64,
    pub late: u64,
    /// Micro-batches applied.
    pub batches: u64,
    /// Checkpoints committed, and the time they took.
    pub checkpoints: u64,
    pub checkpoint_us: u64,
}

impl BatchOutcome {
    /// Sums another outcome into this one.
    pub fn add(&mut self, o: &BatchOutcome) {
        self.received += o.received;
        self.applied += o.applied;
        self.duplicates += o.duplicates;
        self.dlq += o.dlq;
        self.late += o.late;
        self.batches += o.batches;
        self.checkpoints += o.checkpoints;
        self.checkpoint_us += o.checkpoint_us;
    }
}

/// Shared progress, read by ingest (backpressure) and the status endpoint.
#[derive(Debug, Default)]
pub struct Progress {
    /// Log offset applied in memory.
    pub offset: AtomicU64,
    /// Log offset of the last checkpoint.
    pub checkpointed: AtomicU64,
    pub batches: AtomicU64,
    pub checkpoints: AtomicU64,
}

/// `event_id` digests seen within the horizon, with their event times.
#[derive(Debug, Default)]
struct Dedup {
    seen: FxHashMap<u128, u64>,
    /// Added since the last checkpoint.
    added: Vec<(u128, u64)>,
    pruned_to: u64,
    next_row: u64,
}

/// What a checkpoint writes from [`Live`], encoded while holding its lock.
#[derive(Debug, Default)]
struct EncodedUsers {
    /// Users and the span of their encoded row in `bytes`, in key order.
    users: Vec<(UserKey, std::ops::Range<usize>)>,
    bytes: Vec<u8>,
    /// The packed `PENDING` row.
    pending: Vec<u8>,
    /// Shared keys waiting: (key, version, accepted).
    shared: Vec<(String, u64, u64)>,
    /// Forgotten users whose erased events can no longer be replayed.
    forgotten_done: Vec<Box<str>>,
}

/// How many users' states [`warm`] brings into cache ahead of applying events to them or
/// encoding them (a chunk's heads stay well within L2).
const WARM_AHEAD: usize = 64;

/// Reads the parts of these users' states that applying an event or encoding the state
/// touches first (the map entry, the state, the heads of its lists and the first bytes behind
/// them), in a loop whose iterations do not depend on each other, so the processor overlaps
/// their cache misses instead of meeting them one after another inside `Profile::apply` or the
/// encoder (random users in a large map: a miss per level, several per user). With
/// `unpublished`, also the users' entries there (the apply loop's other lookup). The sum is
/// meaningless and only kept from being optimized away.
fn warm<'a>(
    users: &FxHashMap<UserKey, Cached>,
    unpublished: Option<&FxHashMap<UserKey, (Arc<str>, live::Unpublished)>>,
    keys: impl Iterator<Item = &'a UserKey>,
) {
    fn head<T>(list: &[T], f: impl Fn(&T) -> u64) -> u64 {
        list.first().map_or(0, f)
    }
    let mut sum = 0u64;
    for key in keys {
        if let Some(c) = users.get(key) {
            let p = &c.state.profile;
            let first_byte = |k: &str| u64::from(k.as_bytes().first().copied().unwrap_or(0));
            sum = sum
                .wrapping_add(p.version)
                .wrapping_add(head(&p.visits, |v| v.0))
                .wrapping_add(head(&p.items, |a| first_byte(&a.key)))
                .wrapping_add(head(&p.categories, |a| first_byte(&a.key)))
                .wrapping_add(head(&c.state.recent_ids, |r| u64::from(*r)))
                .wrapping_add(c.user.len() as u64);
        }
        if let Some(unpublished) = unpublished {
            sum = sum.wrapping_add(unpublished.get(key).map_or(0, |u| u.1.version));
        }
    }
    std::hint::black_box(sum);
}

/// Changes since the last checkpoint that are not user states.
#[derive(Debug, Default)]
struct SinceCheckpoint {
    counts: BatchOutcome,
    dead: Vec<DlqRecord>,
    /// Users changed (each once).
    unsaved: Vec<UserKey>,
    /// Shared keys queued (written to `OUTBOX` by the checkpoint).
    shared: bool,
}

pub struct Pipeline {
    store: Store,
    model: Arc<Mutex<Model>>,
    live: SharedLive,
    metrics: Arc<Metrics>,
    profile_cfg: ProfileConfig,
    source: String,
    /// Log offset applied in memory, and the checkpoint's.
    offset: u64,
    checkpointed: u64,
    watermarks: HashMap<String, u64>,
    lateness: u64,
    horizon: u64,
    dedup: Dedup,
    dlq_seq: u64,
    since: SinceCheckpoint,
    last_checkpoint: Instant,
    checkpoint_every: Duration,
    max_unsaved: usize,
    cache_cap: usize,
    batch_no: u64,
    /// Reused per micro-batch: (event, accepted, the user's key).
    events: Vec<(Event, u64, UserKey)>,
    buf: Vec<u8>,
    poisoned: bool,
    /// Adaptive micro-batch size (0 until the first one).
    limit: usize,
    progress: Arc<Progress>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("source", &self.source)
            .field("offset", &self.offset)
            .field("checkpointed", &self.checkpointed)
            .finish_non_exhaustive()
    }
}

/// Time one micro-batch should take (see [`Pipeline::batch_limit`]): it holds the [`Live`]
/// lock the publisher also takes, and its changes reach the publisher when it ends.
const BATCH_TARGET: Duration = Duration::from_millis(50);
/// The adaptive limit never goes below this (a micro-batch has a small fixed cost).
const MIN_BATCH: usize = 1024;

/// Bytes per packed dedup entry in `DEDUP_LOG`.
const DEDUP_ENTRY: usize = 24;

impl Pipeline {
    pub fn new(
        cfg: &Config,
        store: Store,
        model: Arc<Mutex<Model>>,
        live: SharedLive,
        metrics: Arc<Metrics>,
        source: &str,
    ) -> Result<Self> {
        let offset = store.meta(&keys::offset(source))?;
        let mut watermarks = HashMap::new();
        let mut dedup = Dedup::default();
        let horizon = cfg.pipeline.dedup_horizon_ms;
        let dlq_seq;
        {
            let tx = store.db.begin_read()?;
            let t = tx.open_table(META)?;
            for row in t.range("wm:".."wm;")? {
                let (k, v) = row?;
                watermarks.insert(k.value()["wm:".len()..].to_string(), v.value());
            }
            dedup.next_row = t.get(keys::DEDUP_ROW)?.map(|v| v.value()).unwrap_or(0);
            dlq_seq = t.get(keys::DLQ_SEQ)?.map(|v| v.value()).unwrap_or(0);
            // Keys already behind the horizon can only belong to late events: skip them.
            let cutoff = min_watermark(&watermarks)
                .map(|w| w.saturating_sub(horizon))
                .unwrap_or(0);
            for row in tx.open_table(DEDUP)?.iter()? {
                let (k, v) = row?;
                if v.value() >= cutoff {
                    dedup.seen.insert(k.value(), v.value());
                }
            }
            for row in tx.open_table(DEDUP_LOG)?.range((cutoff, 0)..)? {
                let (_, v) = row?;
                for e in v.value().chunks_exact(DEDUP_ENTRY) {
                    let (h, ts) = unpack_dedup(e);
                    if ts >= cutoff {
                        dedup.seen.insert(h, ts);
                    }
                }
            }
        }
        // Whatever memory held beyond the checkpoint is replayed from the log. The map is sized
        // for its capacity once (growing it rehashes every user state it holds).
        {
            let mut l = live::lock(&live);
            l.users = FxHashMap::with_capacity_and_hasher(
                cfg.pipeline.profile_cache.min(1 << 20),
                Default::default(),
            );
        }
        Ok(Pipeline {
            store,
            model,
            live,
            metrics,
            profile_cfg: attune_core::rules::Config::default().profile,
            source: source.to_string(),
            offset,
            checkpointed: offset,
            watermarks,
            lateness: cfg.pipeline.allowed_lateness_ms,
            horizon,
            dedup,
            dlq_seq,
            since: SinceCheckpoint::default(),
            last_checkpoint: Instant::now(),
            checkpoint_every: Duration::from_millis(cfg.pipeline.checkpoint_interval_ms),
            max_unsaved: cfg.pipeline.checkpoint_max_unsaved.max(1),
            cache_cap: cfg.pipeline.profile_cache.max(1),
            batch_no: 0,
            events: Vec::new(),
            buf: Vec::new(),
            poisoned: false,
            limit: 0,
            progress: Arc::new(Progress {
                offset: AtomicU64::new(offset),
                checkpointed: AtomicU64::new(offset),
                batches: AtomicU64::new(0),
                checkpoints: AtomicU64::new(0),
            }),
        })
    }

    /// Offset applied in memory (0 = nothing applied yet; the source's start applies then).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Offset of the last checkpoint.
    pub fn checkpointed(&self) -> u64 {
        self.checkpointed
    }

    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// How many records the next micro-batch should take, at most `batch_max`: sized from the
    /// measured rate so one takes about [`BATCH_TARGET`].
    pub fn batch_limit(&self, batch_max: usize) -> usize {
        if self.limit == 0 {
            MIN_BATCH.min(batch_max.max(1))
        } else {
            self.limit.clamp(1, batch_max.max(1))
        }
    }

    fn adapt(&mut self, n: usize, took: Duration) {
        let rate = n as f64 / took.as_secs_f64().max(1e-6);
        let want = (rate * BATCH_TARGET.as_secs_f64()) as usize;
        let grow = self.limit.max(n).saturating_mul(4);
        self.limit = want.clamp(MIN_BATCH, grow.max(MIN_BATCH));
    }

    fn check_poisoned(&self) -> Result<()> {
        if self.poisoned {
            return Err(Error::Store(
                "the pipeline stopped after a failed batch; reopen it to resume from the \
                 checkpoint"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Applies one micro-batch, then checkpoints if one is due.
    pub fn process(&mut self, records: &[Record]) -> Result<BatchOutcome> {
        self.check_poisoned()?;
        if records.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let started = Instant::now();
        let r = self.apply_batch(records);
        if r.is_err() {
            self.poisoned = true;
        }
        self.adapt(records.len(), started.elapsed());
        let mut out = r?;
        if self.checkpoint_due() {
            let t = Instant::now();
            out.checkpoints += self.checkpoint()?;
            out.checkpoint_us += t.elapsed().as_micros() as u64;
        }
        Ok(out)
    }

    fn checkpoint_due(&self) -> bool {
        self.last_checkpoint.elapsed() >= self.checkpoint_every
            || self.since.unsaved.len() >= self.max_unsaved
    }

    /// Whether anything was applied since the last checkpoint.
    pub fn has_unsaved(&self) -> bool {
        self.offset != self.checkpointed
            || !self.since.unsaved.is_empty()
            || !self.since.dead.is_empty()
    }

    fn apply_batch(&mut self, records: &[Record]) -> Result<BatchOutcome> {
        let started = Instant::now();
        let mut out = BatchOutcome {
            batches: 1,
            ..BatchOutcome::default()
        };
        self.batch_no += 1;
        let batch_no = self.batch_no;
        // Lock order everywhere: redb write transaction → model → live.
        let model_arc = self.model.clone();
        let mut model = model_arc.lock().unwrap_or_else(|e| e.into_inner());
        let live_arc = self.live.clone();
        let mut live = live::lock(&live_arc);
        // 1. Validate, dedup, watermark (in log order).
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        // A chunk at a time: parsed first, then its dedup keys looked up together (their
        // misses in the large dedup map overlap, see `warm`), then checked in log order.
        let mut parsed: Vec<Result<(Event, u128), EventError>> = Vec::with_capacity(WARM_AHEAD);
        for chunk in records.chunks(WARM_AHEAD) {
            parsed.extend(chunk.iter().map(|rec| {
                parse_event(&rec.payload, rec.accepted_ms).map(|e| {
                    let h = xxhash_rust::xxh3::xxh3_128(e.event_id.as_bytes());
                    (e, h)
                })
            }));
            let seen = &self.dedup.seen;
            let known = parsed
                .iter()
                .filter_map(|p| p.as_ref().ok())
                .filter(|(_, h)| seen.contains_key(h))
                .count();
            std::hint::black_box(known);
            for (rec, parsed) in chunk.iter().zip(parsed.drain(..)) {
                out.received += 1;
                let (event, h) = match parsed {
                    Ok(e) => e,
                    Err(e) => {
                        self.metrics
                            .events_invalid
                            .get_or_create(&labels(&[("reason", e.code())]))
                            .inc();
                        self.dlq_seq += 1;
                        let d = dead_letter(self.dlq_seq, rec, e.code(), &e.to_string());
                        self.since.dead.push(d);
                        out.dlq += 1;
                        continue;
                    }
                };
                if self.dedup.seen.contains_key(&h) {
                    out.duplicates += 1;
                    continue;
                }
                let wm = match self.watermarks.get_mut(rec.source.as_str()) {
                    Some(wm) => wm,
                    None => self.watermarks.entry(rec.source.clone()).or_insert(0),
                };
                if event.ts.saturating_add(self.lateness) < *wm {
                    self.metrics
                        .events_invalid
                        .get_or_create(&labels(&[("reason", "late")]))
                        .inc();
                    self.dlq_seq += 1;
                    let detail = format!(
                        "event time {} is older than watermark {} minus allowed lateness {} ms",
                        event.ts, *wm, self.lateness
                    );
                    let d = dead_letter(self.dlq_seq, rec, "late", &detail);
                    self.since.dead.push(d);
                    out.dlq += 1;
                    out.late += 1;
                    continue;
                }
                *wm = (*wm).max(event.ts);
                self.dedup.seen.insert(h, event.ts);
                self.dedup.added.push((h, event.ts));
                // A forgotten user's events from before the forget are erased, not applied (also
                // when a restart replays them).
                if !live.forgotten.is_empty()
                    && live
                        .forgotten
                        .get(event.user.as_str())
                        .is_some_and(|until| rec.offset < *until)
                {
                    out.applied += 1;
                    continue;
                }
                let key = user_key(&event.user);
                events.push((event, rec.accepted_ms, key));
            }
        }
        // 2. Bring in the users memory lacks: new ones start empty, stored ones are read in
        //    key order (the B-tree's order, so the reads walk its leaves once).
        {
            let mut missing: Vec<(UserKey, &str)> = events
                .iter()
                .filter(|(e, _, _)| e.kind != EventKind::Impression)
                .filter(|(_, _, k)| !live.users.contains_key(k))
                .map(|(e, _, k)| (*k, e.user.as_str()))
                .collect();
            if !missing.is_empty() {
                missing.sort_unstable_by_key(|m| m.0);
                missing.dedup_by_key(|m| m.0);
                let mut to_read: Vec<(UserKey, &str)> = Vec::new();
                for (key, user) in missing {
                    if live.stored.contains(&key) {
                        to_read.push((key, user));
                    } else {
                        live.users.insert(
                            key,
                            Cached::new(Arc::from(user), UserState::default(), batch_no),
                        );
                    }
                }
                if !to_read.is_empty() {
                    // Already in key order: the B-tree's.
                    let tx = self.store.db.begin_read()?;
                    let rows = tx.open_table(USERS)?;
                    for (key, user) in to_read {
                        let state = match rows.get(key)? {
                            Some(v) => decode_user_row(user, v.value())?,
                            None => UserState::default(),
                        };
                        live.users
                            .insert(key, Cached::new(Arc::from(user), state, batch_no));
                    }
                }
            }
        }
        // 3. Apply (in log order).
        let mut trend_changed = false;
        let Live {
            users, unpublished, ..
        } = &mut *live;
        for (i, (event, accepted_ms, key)) in events.iter().enumerate() {
            if i % WARM_AHEAD == 0 {
                let next = &events[i..events.len().min(i + WARM_AHEAD)];
                warm(users, Some(unpublished), next.iter().map(|e| &e.2));
            }
            // Impressions record what the edge showed: they count exposures and leave the
            // visitor's state alone (no profile version, no KV write for a mere page view).
            if event.kind == EventKind::Impression {
                if let (Some(exp), Some(arm)) =
                    (event.prop_str("experiment"), event.prop_str("arm"))
                {
                    self.metrics
                        .exposures
                        .get_or_create(&labels(&[("experiment", exp), ("arm", arm)]))
                        .inc();
                }
                out.applied += 1;
                continue;
            }
            let Some(entry) = users.get_mut(key) else {
                return Err(Error::Store(format!("user {} not loaded", event.user)));
            };
            entry.used = batch_no;
            let category = event.item.as_deref().and_then(|i| model.category(i));
            let previous_seen = entry.state.profile.last_seen;
            entry
                .state
                .profile
                .apply(event, category, &self.profile_cfg);
            let weight = self.profile_cfg.weight(event.kind).weight;
            model.observe(event, weight, previous_seen, &mut entry.state);
            trend_changed |= weight > 0.0 && event.item.is_some();
            // Hand the change to the publisher.
            let version = entry.state.profile.version;
            if entry.dirty_in != batch_no {
                entry.dirty_in = batch_no;
                if !entry.unsaved {
                    entry.unsaved = true;
                    self.since.unsaved.push(*key);
                }
                unpublished
                    .entry(*key)
                    .and_modify(|(_, u)| u.merge(version, *accepted_ms))
                    .or_insert_with(|| {
                        (
                            entry.user.clone(),
                            Unpublished {
                                version,
                                accepted_ms: *accepted_ms,
                            },
                        )
                    });
            } else if let Some((_, u)) = unpublished.get_mut(key) {
                u.merge(version, *accepted_ms);
            }
            out.applied += 1;
        }
        // 4. Shared keys the micro-batch changed, at a new model version.
        model.settle();
        let shards = model.take_touched_shards();
        if !shards.is_empty() || trend_changed {
            let seq = model.next_seq();
            let first_accept = events.iter().map(|e| e.1).min().unwrap_or_else(now_ms);
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
        drop(live);
        drop(model);
        events.clear();
        self.events = events;
        self.offset = records.last().map(|r| r.next).unwrap_or(self.offset);
        self.since.counts.add(&out);
        self.progress.offset.store(self.offset, Ordering::Release);
        self.progress.batches.fetch_add(1, Ordering::Relaxed);
        let m = &self.metrics;
        m.events_received.inc_by(out.received);
        m.events_valid.inc_by(out.received - (out.dlq - out.late));
        m.events_duplicate.inc_by(out.duplicates);
        m.events_late.inc_by(out.late);
        m.events_applied.inc_by(out.applied);
        m.applied_offset_bytes.set(self.offset as i64);
        m.batch_apply_seconds
            .observe(started.elapsed().as_secs_f64());
        m.batch_size.observe(records.len() as f64);
        Ok(out)
    }

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
        self.since = SinceCheckpoint::default();
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

    fn write_checkpoint(&mut self) -> Result<()> {
        let tx = self.store.db.begin_write()?;
        {
            // Encode under the live lock, write after releasing it: the publisher reads live
            // while the B-tree inserts and the fsync run. Nothing can change the state in
            // between: the pipeline is this thread, and forget, catalog and full-publish
            // writes wait for this write transaction.
            let encoded = self.encode_users()?;
            self.write_users(&tx, &encoded)?;
            let model_arc = self.model.clone();
            let mut model = model_arc.lock().unwrap_or_else(|e| e.into_inner());
            let mut meta = tx.open_table(META)?;
            meta.insert(keys::MODEL_SEQ, model.seq())?;
            model.persist(&tx)?;
            drop(model);
            if !self.since.dead.is_empty() {
                let mut dlq = tx.open_table(DLQ)?;
                for d in &self.since.dead {
                    dlq.insert(d.seq, serde_json::to_vec(d)?.as_slice())?;
                }
                meta.insert(keys::DLQ_SEQ, self.dlq_seq)?;
            }
            let c = self.since.counts;
            for (k, add) in [
                (keys::RECEIVED, c.received),
                (keys::APPLIED, c.applied),
                (keys::DUPLICATES, c.duplicates),
                (keys::DLQ, c.dlq),
                (keys::LATE, c.late),
            ] {
                if add > 0 {
                    let v = meta.get(k)?.map(|v| v.value()).unwrap_or(0);
                    meta.insert(k, v + add)?;
                }
            }
            for (source, wm) in &self.watermarks {
                meta.insert(keys::watermark(source).as_str(), *wm)?;
            }
            meta.insert(keys::offset(&self.source).as_str(), self.offset)?;
            if !self.dedup.added.is_empty() {
                self.buf.clear();
                let mut newest = 0;
                for (h, ts) in self.dedup.added.drain(..) {
                    self.buf.extend_from_slice(&h.to_le_bytes());
                    self.buf.extend_from_slice(&ts.to_le_bytes());
                    newest = newest.max(ts);
                }
                let row = self.dedup.next_row;
                self.dedup.next_row += 1;
                tx.open_table(DEDUP_LOG)?
                    .insert((newest, row), self.buf.as_slice())?;
                meta.insert(keys::DEDUP_ROW, self.dedup.next_row)?;
            }
        }
        self.prune_dedup(&tx)?;
        tx.commit()?;
        Ok(())
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
            forgotten,
            stored,
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
        out.forgotten_done = forgotten
            .iter()
            .filter(|(_, until)| **until <= self.offset)
            .map(|(u, _)| u.clone())
            .collect();
        for u in &out.forgotten_done {
            forgotten.remove(u);
        }
        Ok(out)
    }

    fn write_users(&mut self, tx: &WriteTransaction, e: &EncodedUsers) -> Result<()> {
        let mut users = tx.open_table(USERS)?;
        for (key, span) in &e.users {
            users.insert(*key, &e.bytes[span.clone()])?;
        }
        tx.open_table(PENDING)?
            .insert(PENDING_KEY, e.pending.as_slice())?;
        if !e.shared.is_empty() {
            let mut outbox = tx.open_table(OUTBOX)?;
            for (key, version, accepted) in &e.shared {
                enqueue_shared(&mut outbox, [key.clone()], *version, *accepted)?;
            }
        }
        if !e.forgotten_done.is_empty() {
            let mut t = tx.open_table(FORGOTTEN)?;
            for u in &e.forgotten_done {
                t.remove(&**u)?;
            }
        }
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

    /// Forgets `event_id`s older than the horizon behind the slowest watermark; runs when the
    /// cutoff has moved by an hour or more.
    fn prune_dedup(&mut self, tx: &WriteTransaction) -> Result<()> {
        let Some(min_wm) = min_watermark(&self.watermarks) else {
            return Ok(());
        };
        let cutoff = min_wm.saturating_sub(self.horizon);
        if cutoff < self.dedup.pruned_to + 3_600_000 {
            return Ok(());
        }
        self.dedup.seen.retain(|_, ts| *ts >= cutoff);
        // A row goes once its newest key is behind the cutoff; a row straddling the cutoff
        // stays (its old keys are skipped when loading).
        tx.open_table(DEDUP_LOG)?
            .retain_in(..(cutoff, 0), |_, _| false)?;
        let mut legacy = tx.open_table(DEDUP)?;
        if !legacy.is_empty()? {
            legacy.retain(|_, ts| ts >= cutoff)?;
        }
        self.dedup.pruned_to = cutoff;
        Ok(())
    }

    /// Consumes `source` until `stop` is set and everything durable has been applied and
    /// checkpointed.
    pub fn run(
        &mut self,
        source: &mut dyn Source,
        batch_max: usize,
        stop: &AtomicBool,
        on_batch: &dyn Fn(&BatchOutcome),
    ) -> Result<()> {
        let mut buf = Vec::new();
        loop {
            let from = self.offset.max(source.start());
            buf.clear();
            let limit = self.batch_limit(batch_max);
            source.read(from, limit, Duration::from_millis(50), &mut buf)?;
            let end = source.end();
            self.metrics.log_end_bytes.set(end as i64);
            self.metrics
                .log_lag_bytes
                .set(end.saturating_sub(from) as i64);
            if buf.is_empty() {
                // Caught up: make it durable now (cheap when idle, and it keeps the replay
                // after a crash short).
                self.checkpoint()?;
                if stop.load(Ordering::Acquire) && from >= end {
                    return Ok(());
                }
                continue;
            }
            let outcome = self.process(&buf)?;
            on_batch(&outcome);
        }
    }
}

fn now_ms() -> u64 {
    crate::now_ms()
}

fn min_watermark(watermarks: &HashMap<String, u64>) -> Option<u64> {
    watermarks.values().copied().filter(|w| *w > 0).min()
}

fn unpack_dedup(e: &[u8]) -> (u128, u64) {
    let mut h = [0u8; 16];
    h.copy_from_slice(&e[..16]);
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&e[16..24]);
    (u128::from_le_bytes(h), u64::from_le_bytes(ts))
}

fn dead_letter(seq: u64, rec: &Record, reason: &str, detail: &str) -> DlqRecord {
    let cut = rec.payload.len().min(2048);
    DlqRecord {
        seq,
        source: rec.source.clone(),
        offset: rec.offset,
        accepted_ms: rec.accepted_ms,
        reason: reason.to_string(),
        detail: detail.chars().take(300).collect(),
        len: rec.payload.len(),
        raw: String::from_utf8_lossy(&rec.payload[..cut]).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, TargetKind};
    use crate::node::Node;

    fn ev(n: u64, user: &str, item: &str) -> Vec<u8> {
        format!(
            r#"{{"v":1,"event_id":"e{n}","user":"{user}","ts":{},"kind":"view","item":"{item}"}}"#,
            crate::now_ms() - 1000 + n
        )
        .into_bytes()
    }

    /// Dedup keys survive a reopen; a forgotten user's cached profile is not written back.
    #[test]
    fn dedup_persists_and_forget_drops_the_cached_profile() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        cfg.publish.target = TargetKind::None;
        {
            let node = Node::open(&cfg).unwrap();
            node.log
                .append_blocking(crate::now_ms(), "t", vec![ev(1, "a", "x"), ev(2, "a", "y")])
                .unwrap();
            let o = node.drain().unwrap();
            assert_eq!((o.applied, o.duplicates), (2, 0));
        }
        let node = Node::open(&cfg).unwrap();
        let mut p = node.pipeline().unwrap();
        let mut reader = node.log.reader().unwrap();
        let mut buf = Vec::new();
        node.log
            .append_blocking(crate::now_ms(), "t", vec![ev(1, "a", "x"), ev(3, "a", "z")])
            .unwrap();
        use crate::log::Source;
        reader
            .read(p.offset(), 100, std::time::Duration::ZERO, &mut buf)
            .unwrap();
        let o = p.process(&buf).unwrap();
        assert_eq!((o.applied, o.duplicates), (1, 1));
        p.checkpoint().unwrap();
        assert_eq!(node.store.user("a").unwrap().unwrap().profile.version, 3);
        // Forget while the pipeline has "a" cached, then apply one more event.
        assert!(node.forget("a").unwrap());
        node.log
            .append_blocking(crate::now_ms(), "t", vec![ev(4, "a", "w")])
            .unwrap();
        buf.clear();
        reader
            .read(p.offset(), 100, std::time::Duration::ZERO, &mut buf)
            .unwrap();
        p.process(&buf).unwrap();
        p.checkpoint().unwrap();
        let state = node.store.user("a").unwrap().unwrap();
        assert_eq!(state.profile.version, 1);
        let recent = node.model.lock().unwrap().recent_names(&state);
        assert_eq!(recent, vec!["w".to_string()]);
    }
}

#[cfg(test)]
mod checkpoint_tests {
    use crate::config::{Config, TargetKind};
    use crate::node::Node;

    fn ev(n: u64, user: &str, item: &str) -> Vec<u8> {
        format!(
            r#"{{"v":1,"event_id":"k{n}","user":"{user}","ts":{},"kind":"view","item":"{item}"}}"#,
            // Fixed event times: runs compared with each other must see the same events.
            1_790_000_000_000 + n * 1000
        )
        .into_bytes()
    }

    fn config(dir: &std::path::Path) -> Config {
        let mut cfg = Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        cfg.publish.target = TargetKind::None;
        // No checkpoint but the ones the test asks for.
        cfg.pipeline.checkpoint_interval_ms = 3_600_000;
        cfg
    }

    fn events(range: std::ops::Range<u64>) -> Vec<Vec<u8>> {
        range
            .map(|n| ev(n, &format!("u{}", n % 7), &format!("i{}", n % 11)))
            .collect()
    }

    /// Applies what the log holds beyond the pipeline's offset, without checkpointing.
    fn apply_all(node: &Node, p: &mut super::Pipeline) {
        use crate::log::Source;
        let mut reader = node.log.reader().unwrap();
        let mut buf = Vec::new();
        while p.offset().max(reader.start()) < reader.end() {
            buf.clear();
            let from = p.offset().max(reader.start());
            reader
                .read(from, 16, std::time::Duration::ZERO, &mut buf)
                .unwrap();
            p.process(&buf).unwrap();
        }
    }

    /// The stored profiles after one uninterrupted drain of `payloads` on a fresh node.
    fn uninterrupted(payloads: Vec<Vec<u8>>) -> Vec<(String, attune_core::Profile)> {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(&config(dir.path())).unwrap();
        node.log
            .append_blocking(crate::now_ms(), "t", payloads)
            .unwrap();
        node.drain().unwrap();
        node.store.profiles().unwrap()
    }

    /// A "crash" (the node dropped without a checkpoint) loses nothing and applies nothing
    /// twice: the reopened pipeline replays the log from the checkpoint to the same states.
    #[test]
    fn replay_from_the_checkpoint_reproduces_the_uninterrupted_states() {
        let reference = uninterrupted(events(0..300));
        assert_eq!(reference.iter().map(|p| p.1.version).sum::<u64>(), 300);

        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        {
            let node = Node::open(&cfg).unwrap();
            node.log
                .append_blocking(crate::now_ms(), "t", events(0..100))
                .unwrap();
            let mut p = node.pipeline().unwrap();
            apply_all(&node, &mut p);
            assert_eq!(p.checkpoint().unwrap(), 1);
            node.log
                .append_blocking(crate::now_ms(), "t", events(100..200))
                .unwrap();
            apply_all(&node, &mut p);
            assert!(p.has_unsaved());
            assert!(p.checkpointed() < p.offset());
            // Crash: no checkpoint for events 100..200.
        }
        let node = Node::open(&cfg).unwrap();
        let applied: u64 = node
            .store
            .profiles()
            .unwrap()
            .iter()
            .map(|p| p.1.version)
            .sum();
        assert_eq!(applied, 100, "the store holds the checkpoint only");
        // Redelivered events (a client retrying after the crash) are duplicates.
        node.log
            .append_blocking(crate::now_ms(), "t", events(150..300))
            .unwrap();
        let o = node.drain().unwrap();
        assert_eq!((o.applied, o.duplicates), (200, 50));
        assert_eq!(node.store.profiles().unwrap(), reference);
    }

    /// A checkpoint writes exactly the changed states, whether all of memory changed or a few
    /// users among many clean ones.
    #[test]
    fn checkpoints_of_many_and_of_few_changed_users_write_the_same_states() {
        let many: Vec<Vec<u8>> = (0..60)
            .map(|n| ev(n, &format!("m{n}"), &format!("i{}", n % 5)))
            .collect();
        let few: Vec<Vec<u8>> = (60..63)
            .map(|n| ev(n, &format!("m{}", n % 4), "i9"))
            .collect();
        let reference = uninterrupted(many.iter().chain(&few).cloned().collect());
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        {
            let node = Node::open(&cfg).unwrap();
            let mut p = node.pipeline().unwrap();
            node.log
                .append_blocking(crate::now_ms(), "t", many)
                .unwrap();
            apply_all(&node, &mut p);
            // 60 changed of 60 in memory.
            assert_eq!(p.checkpoint().unwrap(), 1);
            node.log.append_blocking(crate::now_ms(), "t", few).unwrap();
            apply_all(&node, &mut p);
            // 3 changed among 60 in memory.
            assert!(p.since.unsaved.len() * 4 < node.live.lock().unwrap().users.len());
            assert_eq!(p.checkpoint().unwrap(), 1);
        }
        let node = Node::open(&cfg).unwrap();
        let stored = node.store.profiles().unwrap();
        assert_eq!(stored.len(), 60);
        assert_eq!(stored, reference);
        assert_eq!(node.store.user("m0").unwrap().unwrap().profile.version, 2);
    }

    /// A forget is not undone by a replay: the user's earlier events stay erased.
    #[test]
    fn forget_survives_a_replay() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        {
            let node = Node::open(&cfg).unwrap();
            node.log
                .append_blocking(crate::now_ms(), "t", events(0..70))
                .unwrap();
            let mut p = node.pipeline().unwrap();
            apply_all(&node, &mut p);
            assert!(node.forget("u3").unwrap());
            node.log
                .append_blocking(crate::now_ms(), "t", vec![ev(1000, "u3", "fresh")])
                .unwrap();
            apply_all(&node, &mut p);
            // Crash before any checkpoint.
        }
        let node = Node::open(&cfg).unwrap();
        node.drain().unwrap();
        let state = node.store.user("u3").unwrap().unwrap();
        assert_eq!(state.profile.version, 1, "only the event after the forget");
        let recent = node.model.lock().unwrap().recent_names(&state);
        assert_eq!(recent, vec!["fresh".to_string()]);
        assert_eq!(node.store.user("u4").unwrap().unwrap().profile.version, 10);
    }
}
