//! The stream pipeline: validate (core) → dedup (`event_id`, persistent, horizon-bounded) →
//! per-source event-time watermark with allowed lateness → `Profile::apply` (core) and the
//! model, in batches. Each batch's profiles, dedup keys, offsets, watermarks, counters, model
//! changes, dead letters and outbox entries commit in one redb write transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attune_core::event::{EventKind, parse_event};
use attune_core::hash::profile_key;
use attune_core::model::{keys as kv, shard_of};
use attune_core::profile::ProfileConfig;
use redb::{ReadableTable, WriteTransaction};

use crate::config::Config;
use crate::error::Result;
use crate::log::{Record, Source};
use crate::metrics::{Metrics, labels};
use crate::model::Model;
use crate::store::{
    DEDUP, DLQ, DlqRecord, META, OUTBOX, Op, OutboxEntry, PROFILES, Store, UserState, keys,
    outbox_put,
};

/// What one batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub received: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub dlq: u64,
    pub late: u64,
}

/// Shared progress, read by ingest (backpressure) and the status endpoint.
#[derive(Debug, Default)]
pub struct Progress {
    pub offset: AtomicU64,
    pub batches: AtomicU64,
}

pub struct Pipeline {
    store: Store,
    model: Arc<Mutex<Model>>,
    metrics: Arc<Metrics>,
    profile_cfg: ProfileConfig,
    profile_secret: Vec<u8>,
    source: String,
    offset: u64,
    watermarks: HashMap<String, u64>,
    lateness: u64,
    horizon: u64,
    pruned_to: u64,
    progress: Arc<Progress>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("source", &self.source)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    crate::now_ms()
}

impl Pipeline {
    pub fn new(
        cfg: &Config,
        store: Store,
        model: Arc<Mutex<Model>>,
        metrics: Arc<Metrics>,
        source: &str,
    ) -> Result<Self> {
        let offset = store.meta(&keys::offset(source))?;
        let mut watermarks = HashMap::new();
        {
            let tx = store.db.begin_read()?;
            let t = tx.open_table(META)?;
            for row in t.range("wm:".."wm;")? {
                let (k, v) = row?;
                watermarks.insert(k.value()["wm:".len()..].to_string(), v.value());
            }
        }
        Ok(Pipeline {
            store,
            model,
            metrics,
            profile_cfg: cfg.rules.profile.clone(),
            profile_secret: cfg.profile_key.as_bytes().to_vec(),
            source: source.to_string(),
            offset,
            watermarks,
            lateness: cfg.pipeline.allowed_lateness_ms,
            horizon: cfg.pipeline.dedup_horizon_ms,
            pruned_to: 0,
            progress: Arc::new(Progress {
                offset: AtomicU64::new(offset),
                batches: AtomicU64::new(0),
            }),
        })
    }

    /// Committed offset (0 = nothing applied yet; the source's start applies then).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Applies one batch of records in one transaction.
    pub fn process(&mut self, records: &[Record]) -> Result<BatchOutcome> {
        let started = Instant::now();
        let mut out = BatchOutcome::default();
        if records.is_empty() {
            return Ok(out);
        }
        let tx = self.store.db.begin_write()?;
        let model_arc = self.model.clone();
        let mut model = model_arc.lock().unwrap_or_else(|e| e.into_inner());
        let mut users: HashMap<String, (UserState, u64)> = HashMap::new();
        let mut seen: HashSet<u128> = HashSet::new();
        let mut touched: BTreeSet<String> = BTreeSet::new();
        let mut dead: Vec<DlqRecord> = Vec::new();
        let mut trend_changed = false;
        let mut dlq_seq = 0u64;
        {
            let mut dedup = tx.open_table(DEDUP)?;
            let profiles = tx.open_table(PROFILES)?;
            let meta = tx.open_table(META)?;
            dlq_seq = dlq_seq.max(meta.get(keys::DLQ_SEQ)?.map(|v| v.value()).unwrap_or(0));
            for rec in records {
                out.received += 1;
                self.metrics.events_received.inc();
                let event = match parse_event(&rec.payload, rec.accepted_ms) {
                    Ok(e) => e,
                    Err(e) => {
                        self.metrics
                            .events_invalid
                            .get_or_create(&labels(&[("reason", e.code())]))
                            .inc();
                        dlq_seq += 1;
                        dead.push(dead_letter(dlq_seq, rec, e.code(), &e.to_string()));
                        out.dlq += 1;
                        continue;
                    }
                };
                self.metrics.events_valid.inc();
                let h = xxhash_rust::xxh3::xxh3_128(event.event_id.as_bytes());
                if seen.contains(&h) || dedup.get(h)?.is_some() {
                    self.metrics.events_duplicate.inc();
                    out.duplicates += 1;
                    continue;
                }
                let wm = self.watermarks.entry(rec.source.clone()).or_insert(0);
                if event.ts.saturating_add(self.lateness) < *wm {
                    self.metrics.events_late.inc();
                    self.metrics
                        .events_invalid
                        .get_or_create(&labels(&[("reason", "late")]))
                        .inc();
                    dlq_seq += 1;
                    let detail = format!(
                        "event time {} is older than watermark {} minus allowed lateness {} ms",
                        event.ts, *wm, self.lateness
                    );
                    dead.push(dead_letter(dlq_seq, rec, "late", &detail));
                    out.dlq += 1;
                    out.late += 1;
                    continue;
                }
                *wm = (*wm).max(event.ts);
                seen.insert(h);
                dedup.insert(h, event.ts)?;

                let entry = match users.get_mut(&event.user) {
                    Some(e) => e,
                    None => {
                        let state = match profiles.get(event.user.as_str())? {
                            Some(v) => UserState::decode(v.value())?,
                            None => UserState::default(),
                        };
                        users
                            .entry(event.user.clone())
                            .or_insert((state, rec.accepted_ms))
                    }
                };
                entry.1 = entry.1.min(rec.accepted_ms);
                let category = event.item.as_deref().and_then(|i| model.category(i));
                let category = category.map(str::to_string);
                entry
                    .0
                    .profile
                    .apply(&event, category.as_deref(), &self.profile_cfg);
                let weight = self.profile_cfg.weight(event.kind).weight;
                let before = touched.len();
                model.observe(&event, weight, &mut entry.0, &mut touched);
                trend_changed |= weight > 0.0 && event.item.is_some();
                let _ = before;
                if event.kind == EventKind::Impression
                    && let (Some(exp), Some(arm)) =
                        (event.prop_str("experiment"), event.prop_str("arm"))
                {
                    self.metrics
                        .exposures
                        .get_or_create(&labels(&[("experiment", exp), ("arm", arm)]))
                        .inc();
                }
                self.metrics.events_applied.inc();
                out.applied += 1;
            }
        }
        let last = records.last().map(|r| r.next).unwrap_or(self.offset);
        self.write_batch(
            &tx,
            &mut model,
            users,
            touched,
            trend_changed,
            dead,
            dlq_seq,
            &out,
            last,
        )?;
        drop(model);
        tx.commit()?;
        self.offset = last;
        self.progress.offset.store(last, Ordering::Release);
        self.progress.batches.fetch_add(1, Ordering::Relaxed);
        self.metrics.applied_offset_bytes.set(last as i64);
        self.metrics
            .batch_apply_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.batch_size.observe(records.len() as f64);
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn write_batch(
        &mut self,
        tx: &WriteTransaction,
        model: &mut Model,
        users: HashMap<String, (UserState, u64)>,
        touched: BTreeSet<String>,
        trend_changed: bool,
        dead: Vec<DlqRecord>,
        dlq_seq: u64,
        out: &BatchOutcome,
        last: u64,
    ) -> Result<()> {
        let mut profiles = tx.open_table(PROFILES)?;
        let mut outbox = tx.open_table(OUTBOX)?;
        let mut meta = tx.open_table(META)?;
        // Users sorted so the transaction's write order is deterministic.
        let users: BTreeMap<String, (UserState, u64)> = users.into_iter().collect();
        for (user, (state, accepted)) in &users {
            profiles.insert(user.as_str(), state.encode()?.as_slice())?;
            outbox_put(
                &mut outbox,
                &profile_key(&self.profile_secret, user),
                OutboxEntry {
                    op: Op::Put,
                    version: state.profile.version,
                    accepted_ms: *accepted,
                    user: Some(user.clone()),
                },
            )?;
        }
        let first_accept = users.values().map(|u| u.1).min().unwrap_or_else(now_ms);
        if !touched.is_empty() || trend_changed {
            let seq = meta.get(keys::MODEL_SEQ)?.map(|v| v.value()).unwrap_or(0) + 1;
            meta.insert(keys::MODEL_SEQ, seq)?;
            let shards: BTreeSet<u32> = touched
                .iter()
                .map(|i| shard_of(i, model.shards()))
                .collect();
            for s in shards {
                outbox_put(
                    &mut outbox,
                    &kv::neighbours(s),
                    OutboxEntry {
                        op: Op::Put,
                        version: seq,
                        accepted_ms: first_accept,
                        user: None,
                    },
                )?;
            }
            if trend_changed {
                outbox_put(
                    &mut outbox,
                    kv::TRENDING,
                    OutboxEntry {
                        op: Op::Put,
                        version: seq,
                        accepted_ms: first_accept,
                        user: None,
                    },
                )?;
            }
        }
        model.persist(tx)?;
        if !dead.is_empty() {
            let mut dlq = tx.open_table(DLQ)?;
            for d in &dead {
                dlq.insert(d.seq, serde_json::to_vec(d)?.as_slice())?;
            }
            meta.insert(keys::DLQ_SEQ, dlq_seq)?;
        }
        for (k, add) in [
            (keys::RECEIVED, out.received),
            (keys::APPLIED, out.applied),
            (keys::DUPLICATES, out.duplicates),
            (keys::DLQ, out.dlq),
            (keys::LATE, out.late),
        ] {
            if add > 0 {
                let v = meta.get(k)?.map(|v| v.value()).unwrap_or(0);
                meta.insert(k, v + add)?;
            }
        }
        for (source, wm) in &self.watermarks {
            meta.insert(keys::watermark(source).as_str(), *wm)?;
        }
        meta.insert(keys::offset(&self.source).as_str(), last)?;
        drop((profiles, outbox, meta));
        self.prune_dedup(tx)?;
        Ok(())
    }

    /// Forgets `event_id`s older than the horizon behind the slowest watermark; runs when the
    /// cutoff has moved by an hour or more (a full scan, so not every batch).
    fn prune_dedup(&mut self, tx: &WriteTransaction) -> Result<()> {
        let Some(min_wm) = self.watermarks.values().copied().filter(|w| *w > 0).min() else {
            return Ok(());
        };
        let cutoff = min_wm.saturating_sub(self.horizon);
        if cutoff < self.pruned_to + 3_600_000 {
            return Ok(());
        }
        let mut t = tx.open_table(DEDUP)?;
        t.retain(|_, ts| ts >= cutoff)?;
        self.pruned_to = cutoff;
        Ok(())
    }

    /// Consumes `source` until `stop` is set and everything durable has been applied.
    pub fn run(
        &mut self,
        source: &mut dyn Source,
        batch_max: usize,
        stop: &AtomicBool,
        on_batch: &dyn Fn(&BatchOutcome),
    ) -> Result<()> {
        let mut buf = Vec::with_capacity(batch_max);
        loop {
            let from = self.offset.max(source.start());
            buf.clear();
            source.read(from, batch_max, Duration::from_millis(50), &mut buf)?;
            let end = source.end();
            self.metrics.log_end_bytes.set(end as i64);
            self.metrics
                .log_lag_bytes
                .set(end.saturating_sub(from) as i64);
            if buf.is_empty() {
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
