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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attune_core::Event;
use attune_core::event::{EventError, EventKind, parse_event};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::log::{Record, RecordKind, Source};
use crate::metrics::{Metrics, labels};
use crate::model::Model;
use crate::store::{DlqRecord, Store, UserState, keys};
mod admin;
mod checkpoint;
mod outcome;
mod partitioned;
mod scale;

pub use outcome::{BatchOutcome, Progress};
pub use scale::Restored;

use super::dedup::{self, Dedup};
use super::live::{self, Cached, Live, SharedLive, Unpublished, UserKey, user_key};
use super::rules::RulesInForce;
use super::source::{DeadLetterSink, Partitioned};
use super::users::UserStates;
use super::warm::{WARM_AHEAD, warm};
use super::watermark::Watermarks;
use foldhash::HashMap as FoldHashMap;

/// Changes since the last checkpoint that no operator owns.
#[derive(Debug, Default)]
struct SinceCheckpoint {
    counts: BatchOutcome,
    dead: Vec<DlqRecord>,
    /// Shared keys queued (written to the outbox by the checkpoint).
    shared: bool,
    /// Model deltas merged (scale-out): the model changed without an offset moving.
    model_merged: bool,
}

pub struct Pipeline {
    store: Store,
    model: Arc<Mutex<Model>>,
    live: SharedLive,
    metrics: Arc<Metrics>,
    rules: RulesInForce,
    source: String,
    /// The embedded log, when it is the source ([`Pipeline::maintain_log`]): forgotten users'
    /// records are erased from it and old segments retired after each checkpoint.
    log: Option<crate::log::Log>,
    log_cfg: crate::config::LogConfig,
    /// Log offset applied in memory, and the checkpoint's.
    offset: u64,
    checkpointed: u64,
    watermarks: Watermarks,
    dedup: Dedup,
    users: UserStates,
    dlq_seq: u64,
    since: SinceCheckpoint,
    last_checkpoint: Instant,
    checkpoint_every: Duration,
    dlq_retention_ms: u64,
    max_unsaved: usize,
    batch_no: u64,
    /// Reused per micro-batch: (event, accepted, the user's key).
    events: Vec<(Event, u64, UserKey)>,
    poisoned: bool,
    /// A partitioned source's per-partition offsets (Kafka); `offset` then counts the records
    /// applied.
    partitioned: Option<Partitioned>,
    dead_letter_sink: Option<Box<dyn DeadLetterSink>>,
    /// Kafka scale-out: the changelog and what it needs between checkpoints.
    scale: Option<scale::ScaleOut>,
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
        let (watermarks, dedup, dlq_seq, rules) = {
            let tx = store.read_checkpoint()?;
            let watermarks = Watermarks::load(&tx, cfg.pipeline.allowed_lateness_ms)?;
            let dedup = Dedup::load(&tx, cfg.pipeline.dedup_horizon_ms, watermarks.min())?;
            let dlq_seq = tx.counter(keys::DLQ_SEQ)?;
            let rules = RulesInForce::load(&tx)?;
            (watermarks, dedup, dlq_seq, rules)
        };
        // Whatever memory held beyond the checkpoint is replayed from the log. The map is sized
        // for its capacity once (growing it rehashes every user state it holds).
        {
            let mut l = live::lock(&live);
            l.users = FoldHashMap::with_capacity_and_hasher(
                cfg.pipeline.profile_cache.min(1 << 20),
                Default::default(),
            );
            l.rules = rules.rules().clone();
        }
        let users = UserStates::new(
            live.clone(),
            cfg.profile_key.clone(),
            source == crate::log::SOURCE,
            cfg.pipeline.profile_cache,
        );
        let pipeline = Pipeline {
            store,
            model,
            live,
            metrics,
            rules,
            source: source.to_string(),
            log: None,
            log_cfg: cfg.log.clone(),
            offset,
            checkpointed: offset,
            watermarks,
            dedup,
            users,
            dlq_seq,
            since: SinceCheckpoint::default(),
            last_checkpoint: Instant::now(),
            checkpoint_every: Duration::from_millis(cfg.pipeline.checkpoint_interval_ms),
            dlq_retention_ms: cfg.pipeline.dlq_retention_ms,
            max_unsaved: cfg.pipeline.checkpoint_max_unsaved.max(1),
            batch_no: 0,
            events: Vec::new(),
            poisoned: false,
            partitioned: None,
            dead_letter_sink: None,
            scale: None,
            limit: 0,
            progress: Arc::new(Progress {
                offset: AtomicU64::new(offset),
                checkpointed: AtomicU64::new(offset),
                batches: AtomicU64::new(0),
                checkpoints: AtomicU64::new(0),
            }),
        };
        Ok(pipeline)
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
            return Err(Error::PipelineStopped);
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
        let r = self.apply_records(records);
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
            || self.users.unsaved_len() >= self.max_unsaved
    }

    /// Whether anything was applied since the last checkpoint.
    pub fn has_unsaved(&self) -> bool {
        self.offset != self.checkpointed
            || self.users.has_unsaved()
            || !self.since.dead.is_empty()
            || self.since.model_merged
    }

    /// Applies records in log order: runs of events as micro-batches, and each admin record
    /// (forget, catalog, rules) at its position between them.
    fn apply_records(&mut self, records: &[Record]) -> Result<BatchOutcome> {
        let mut out = BatchOutcome::default();
        let mut rest = records;
        while !rest.is_empty() {
            let events = rest
                .iter()
                .position(|r| r.kind != RecordKind::Event)
                .unwrap_or(rest.len());
            if events > 0 {
                out.add(&self.apply_batch(&rest[..events])?);
                rest = &rest[events..];
                continue;
            }
            self.apply_admin(&rest[0])?;
            rest = &rest[1..];
        }
        Ok(out)
    }

    /// One micro-batch, in named steps, under the model and live locks (lock order everywhere:
    /// redb write transaction → model → live).
    fn apply_batch(&mut self, records: &[Record]) -> Result<BatchOutcome> {
        let started = Instant::now();
        let mut out = BatchOutcome {
            batches: 1,
            ..BatchOutcome::default()
        };
        self.batch_no += 1;
        let model_arc = self.model.clone();
        let mut model = model_arc.lock().unwrap_or_else(|e| e.into_inner());
        let live_arc = self.live.clone();
        let mut live = live::lock(&live_arc);
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        self.admit(records, &mut events, &mut out);
        self.load_users(&mut live, &events)?;
        let trend_changed = self.apply_events(&mut model, &mut live, &events, &mut out)?;
        if self.scale.is_none() {
            // Scaled out, the model changes when the deltas are merged.
            let first_accept = events.iter().map(|e| e.1).min().unwrap_or_else(now_ms);
            self.queue_shared_keys(&mut model, &mut live, trend_changed, first_accept);
        }
        drop(live);
        drop(model);
        events.clear();
        self.events = events;
        self.finish_batch(records, &out, started);
        Ok(out)
    }

    /// Validates, deduplicates and watermarks the records in log order; what passes goes into
    /// `events`, the rest is counted or dead-lettered.
    fn admit(
        &mut self,
        records: &[Record],
        events: &mut Vec<(Event, u64, UserKey)>,
        out: &mut BatchOutcome,
    ) {
        // A chunk at a time: parsed first, then its dedup keys looked up together (their
        // misses in the large dedup map overlap, see `warm`), then checked in log order.
        let mut parsed: Vec<Result<(Event, u128), EventError>> = Vec::with_capacity(WARM_AHEAD);
        for chunk in records.chunks(WARM_AHEAD) {
            parsed.extend(chunk.iter().map(|rec| {
                parse_event(&rec.payload, rec.accepted_ms).map(|e| {
                    let h = dedup::digest(&e.event_id);
                    (e, h)
                })
            }));
            self.dedup.warm(
                parsed
                    .iter()
                    .filter_map(|p| p.as_ref().ok())
                    .map(|(_, h)| h),
            );
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
                if self.dedup.seen(&h) {
                    out.duplicates += 1;
                    continue;
                }
                if let Err(late) = self.watermarks.admit(&rec.source, event.ts) {
                    self.metrics
                        .events_invalid
                        .get_or_create(&labels(&[("reason", "late")]))
                        .inc();
                    self.dlq_seq += 1;
                    let d = dead_letter(self.dlq_seq, rec, "late", &late.to_string());
                    self.since.dead.push(d);
                    out.dlq += 1;
                    out.late += 1;
                    continue;
                }
                self.dedup.record(h, event.ts);
                let key = user_key(&event.user);
                self.scale_admitted(rec.offset, key, h, event.ts);
                events.push((event, rec.accepted_ms, key));
            }
        }
    }

    /// Brings in the users memory lacks: new ones start empty, stored ones are read in key
    /// order (the B-tree's order, so the reads walk its leaves once).
    fn load_users(&mut self, live: &mut Live, events: &[(Event, u64, UserKey)]) -> Result<()> {
        let batch_no = self.batch_no;
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
                    self.store
                        .read_checkpoint()?
                        .users(to_read, |key, user, state| {
                            let state = state.unwrap_or_default();
                            live.users
                                .insert(key, Cached::new(Arc::from(user), state, batch_no));
                        })?;
                }
            }
        }
        Ok(())
    }

    /// Applies the events in log order to the users' profiles and the model, and hands each
    /// changed user to the publisher. Returns whether trending changed.
    fn apply_events(
        &mut self,
        model: &mut Model,
        live: &mut Live,
        events: &[(Event, u64, UserKey)],
        out: &mut BatchOutcome,
    ) -> Result<bool> {
        let batch_no = self.batch_no;
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
                        .count_exposure(self.rules.exposure_arms(), exp, arm);
                }
                out.applied += 1;
                continue;
            }
            let Some(entry) = users.get_mut(key) else {
                return Err(Error::Corrupt(format!("user {} not loaded", event.user)));
            };
            entry.used = batch_no;
            let category = event.item.as_deref().and_then(|i| model.category(i));
            // Read before the event moves it: the model counts co-occurrence within a session.
            let previous_seen = entry.state.profile.last_seen;
            let profile_cfg = self.rules.profile();
            entry.state.profile.apply(event, category, profile_cfg);
            let weight = profile_cfg.weight(event.kind).weight;
            model.observe(event, weight, previous_seen, &mut entry.state);
            trend_changed |= weight > 0.0 && event.item.is_some();
            // Hand the change to the publisher.
            let version = entry.state.profile.version;
            if entry.dirty_in != batch_no {
                entry.dirty_in = batch_no;
                if !entry.unsaved {
                    entry.unsaved = true;
                    self.users.changed(*key);
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
        Ok(trend_changed)
    }

    /// Moves the offset and the counters on, and records the micro-batch's metrics.
    fn finish_batch(&mut self, records: &[Record], out: &BatchOutcome, started: Instant) {
        if self.partitioned.is_some() {
            for rec in records {
                self.advance(rec);
            }
        } else if let Some(last) = records.last() {
            self.advance(last);
        }
        self.since.counts.add(out);
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
    }

    /// Consumes `source` until `stop` answers true and everything durable has been applied
    /// and checkpointed.
    pub fn run(
        &mut self,
        source: &mut dyn Source,
        batch_max: usize,
        stop: &dyn Fn() -> bool,
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
                if stop() && from >= end {
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
mod tests;
