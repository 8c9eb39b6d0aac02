//! The stream pipeline: validate (core) → dedup (`event_id`, persistent, horizon-bounded) →
//! per-source event-time watermark with allowed lateness → `Profile::apply` (core) and the
//! model, in batches. Each batch's profiles, dedup keys, offsets, watermarks, counters, model
//! changes, dead letters and outbox entries commit in one redb write transaction.
//!
//! State the batch needs is kept in memory and only its changes are written:
//! - dedup keys live in a hash map (pruned behind the horizon) and each batch appends one
//!   packed `DEDUP_LOG` row with the keys it added, so restart reloads exactly the committed set;
//! - profiles live in a bounded cache of committed states (least recently used evicted after a
//!   commit); each batch writes every profile it changed once, in user order;
//! - the model writes each changed count/pair once per batch (see `model.rs`).
//!
//! If a batch fails after it changed memory, the pipeline refuses further batches: the caller
//! must reopen it, which reloads the committed state and replays the log from the committed
//! offset.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attune_core::Event;
use attune_core::event::{EventKind, parse_event};
use attune_core::hash::profile_key;
use attune_core::model::keys as kv;
use attune_core::profile::ProfileConfig;
use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::fxhash::{FxHashMap, NameBuild};
use crate::log::{Record, Source};
use crate::metrics::{Metrics, labels};
use crate::model::Model;
use crate::store::{
    DEDUP, DEDUP_LOG, DLQ, DlqRecord, META, OUTBOX, Op, OutboxEntry, PROFILES, Store, UserState,
    enqueue_shared, keys, outbox_put,
};

/// What one batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub received: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub dlq: u64,
    pub late: u64,
    /// Transactions committed (1 per batch; summed by [`crate::node::Node::drain`]).
    pub batches: u64,
}

/// Shared progress, read by ingest (backpressure) and the status endpoint.
#[derive(Debug, Default)]
pub struct Progress {
    pub offset: AtomicU64,
    pub batches: AtomicU64,
}

/// A committed user state in the cache.
#[derive(Debug)]
struct Cached {
    /// The user (the map's key, shared).
    user: Arc<str>,
    state: UserState,
    /// The user's KV key (an HMAC; computed once while cached).
    kv_key: Option<String>,
    /// Batch number of the last use (eviction order).
    used: u64,
    /// Batch number that last changed it, and the earliest ingest time among that batch's
    /// events for this user (freshness).
    dirty_in: u64,
    accepted_ms: u64,
}

/// `event_id` digests seen within the horizon, with their event times.
#[derive(Debug, Default)]
struct Dedup {
    seen: FxHashMap<u128, u64>,
    /// Added by the batch in progress.
    added: Vec<(u128, u64)>,
    pruned_to: u64,
    next_row: u64,
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
    dedup: Dedup,
    cache: HashMap<Arc<str>, Cached, NameBuild>,
    cache_cap: usize,
    batch_no: u64,
    /// Reused per batch.
    events: Vec<(Event, u64)>,
    dirty: Vec<Arc<str>>,
    buf: Vec<u8>,
    poisoned: bool,
    /// Adaptive batch size (0 until the first batch).
    limit: usize,
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

/// Time one batch should take (see [`Pipeline::batch_limit`]).
const BATCH_TARGET: Duration = Duration::from_millis(300);
/// The adaptive batch limit never goes below this: a batch's fixed cost (commit, fsync) can
/// approach the target on a busy disk, and a smaller limit would then cap the throughput
/// below the arrival rate (backlog, not batching, would then dominate freshness).
const MIN_BATCH: usize = 8192;

/// Bytes per packed dedup entry in `DEDUP_LOG`.
const DEDUP_ENTRY: usize = 24;

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
        let mut dedup = Dedup::default();
        let horizon = cfg.pipeline.dedup_horizon_ms;
        {
            let tx = store.db.begin_read()?;
            let t = tx.open_table(META)?;
            for row in t.range("wm:".."wm;")? {
                let (k, v) = row?;
                watermarks.insert(k.value()["wm:".len()..].to_string(), v.value());
            }
            dedup.next_row = t.get(keys::DEDUP_ROW)?.map(|v| v.value()).unwrap_or(0);
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
        Ok(Pipeline {
            store,
            model,
            metrics,
            profile_cfg: attune_core::rules::Config::default().profile,
            profile_secret: cfg.profile_key.as_bytes().to_vec(),
            source: source.to_string(),
            offset,
            watermarks,
            lateness: cfg.pipeline.allowed_lateness_ms,
            horizon,
            dedup,
            cache: HashMap::default(),
            cache_cap: cfg.pipeline.profile_cache.max(1),
            batch_no: 0,
            events: Vec::new(),
            dirty: Vec::new(),
            buf: Vec::new(),
            poisoned: false,
            limit: 0,
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

    /// How many records the next batch should take, at most `batch_max`: sized from the
    /// measured rate so one batch takes about [`BATCH_TARGET`] (a batch's events are published
    /// only after its commit, so this bounds what batching adds to freshness).
    pub fn batch_limit(&self, batch_max: usize) -> usize {
        if self.limit == 0 {
            batch_max.max(1)
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

    /// Applies one batch of records in one transaction.
    pub fn process(&mut self, records: &[Record]) -> Result<BatchOutcome> {
        if self.poisoned {
            return Err(Error::Store(
                "the pipeline stopped after a failed batch; reopen it to resume from the \
                 committed offset"
                    .into(),
            ));
        }
        if records.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let started = Instant::now();
        let r = self.process_batch(records);
        if r.is_err() {
            self.poisoned = true;
        }
        self.adapt(records.len(), started.elapsed());
        r
    }

    fn process_batch(&mut self, records: &[Record]) -> Result<BatchOutcome> {
        let started = Instant::now();
        let mut out = BatchOutcome {
            batches: 1,
            ..BatchOutcome::default()
        };
        let tx = self.store.db.begin_write()?;
        self.batch_no += 1;
        let batch_no = self.batch_no;
        // Profiles deleted since the last batch (their writers committed before `tx` began).
        match self.store.take_forgotten() {
            None => self.cache.clear(),
            Some(users) => {
                for u in users {
                    self.cache.remove(u.as_str());
                }
            }
        }
        let model_arc = self.model.clone();
        let mut model = model_arc.lock().unwrap_or_else(|e| e.into_inner());
        let mut dead: Vec<DlqRecord> = Vec::new();
        let mut dlq_seq = {
            let meta = tx.open_table(META)?;
            meta.get(keys::DLQ_SEQ)?.map(|v| v.value()).unwrap_or(0)
        };
        // 1. Validate, dedup, watermark (in log order).
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        for rec in records {
            out.received += 1;
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
            let h = xxhash_rust::xxh3::xxh3_128(event.event_id.as_bytes());
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
            self.dedup.seen.insert(h, event.ts);
            self.dedup.added.push((h, event.ts));
            events.push((event, rec.accepted_ms));
        }
        // 2. Load the users the cache lacks, in key order.
        {
            let mut missing: Vec<&str> = events
                .iter()
                .filter(|(e, _)| e.kind != EventKind::Impression)
                .map(|(e, _)| e.user.as_str())
                .filter(|u| !self.cache.contains_key(*u))
                .collect();
            missing.sort_unstable();
            missing.dedup();
            let profiles = tx.open_table(PROFILES)?;
            for user in missing {
                let state = match profiles.get(user)? {
                    Some(v) => UserState::decode(v.value())?,
                    None => UserState::default(),
                };
                let user: Arc<str> = Arc::from(user);
                self.cache.insert(
                    user.clone(),
                    Cached {
                        user,
                        state,
                        kv_key: None,
                        used: batch_no,
                        dirty_in: 0,
                        accepted_ms: 0,
                    },
                );
            }
        }
        // 3. Apply (in log order).
        let mut trend_changed = false;
        self.dirty.clear();
        for (event, accepted_ms) in &events {
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
            let Some(entry) = self.cache.get_mut(event.user.as_str()) else {
                return Err(Error::Store(format!("user {} not loaded", event.user)));
            };
            entry.used = batch_no;
            if entry.dirty_in != batch_no {
                entry.dirty_in = batch_no;
                entry.accepted_ms = *accepted_ms;
                self.dirty.push(entry.user.clone());
            } else {
                entry.accepted_ms = entry.accepted_ms.min(*accepted_ms);
            }
            let category = event.item.as_deref().and_then(|i| model.category(i));
            entry
                .state
                .profile
                .apply(event, category, &self.profile_cfg);
            let weight = self.profile_cfg.weight(event.kind).weight;
            model.observe(event, weight, &mut entry.state);
            trend_changed |= weight > 0.0 && event.item.is_some();
            out.applied += 1;
        }
        events.clear();
        self.events = events;
        let last = records.last().map(|r| r.next).unwrap_or(self.offset);
        self.write_batch(&tx, &mut model, trend_changed, dead, dlq_seq, &out, last)?;
        drop(model);
        tx.commit()?;
        self.evict();
        self.offset = last;
        self.progress.offset.store(last, Ordering::Release);
        self.progress.batches.fetch_add(1, Ordering::Relaxed);
        let m = &self.metrics;
        m.events_received.inc_by(out.received);
        m.events_valid.inc_by(out.received - (out.dlq - out.late));
        m.events_duplicate.inc_by(out.duplicates);
        m.events_late.inc_by(out.late);
        m.events_applied.inc_by(out.applied);
        m.applied_offset_bytes.set(last as i64);
        m.batch_apply_seconds
            .observe(started.elapsed().as_secs_f64());
        m.batch_size.observe(records.len() as f64);
        Ok(out)
    }

    /// Keeps the cache within its capacity: drops the least recently used quarter.
    fn evict(&mut self) {
        if self.cache.len() <= self.cache_cap {
            return;
        }
        let keep = self.cache_cap - self.cache_cap / 4;
        let mut used: Vec<u64> = self.cache.values().map(|c| c.used).collect();
        let drop_n = used.len() - keep;
        let (_, nth, _) = used.select_nth_unstable(drop_n);
        let threshold = *nth;
        self.cache.retain(|_, c| c.used >= threshold);
    }

    #[allow(clippy::too_many_arguments)]
    fn write_batch(
        &mut self,
        tx: &WriteTransaction,
        model: &mut Model,
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
        self.dirty.sort_unstable();
        let mut first_accept = u64::MAX;
        for user in &self.dirty {
            let Some(c) = self.cache.get_mut(&**user) else {
                continue;
            };
            self.buf.clear();
            rmp_serde::encode::write_named(&mut self.buf, &c.state)?;
            profiles.insert(&**user, self.buf.as_slice())?;
            let key = c
                .kv_key
                .get_or_insert_with(|| profile_key(&self.profile_secret, user));
            first_accept = first_accept.min(c.accepted_ms);
            outbox_put(
                &mut outbox,
                key,
                OutboxEntry {
                    op: Op::Put,
                    version: c.state.profile.version,
                    accepted_ms: c.accepted_ms,
                    user: Some(user.to_string()),
                },
            )?;
        }
        if first_accept == u64::MAX {
            first_accept = now_ms();
        }
        let shards = model.take_touched_shards();
        if !shards.is_empty() || trend_changed {
            let seq = meta.get(keys::MODEL_SEQ)?.map(|v| v.value()).unwrap_or(0) + 1;
            meta.insert(keys::MODEL_SEQ, seq)?;
            let mut shared: Vec<String> = shards.into_iter().map(kv::neighbours).collect();
            if trend_changed {
                shared.push(kv::TRENDING.to_string());
            }
            enqueue_shared(&mut outbox, shared, seq, first_accept)?;
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
        drop((profiles, outbox, meta));
        self.prune_dedup(tx)?;
        Ok(())
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

    /// Consumes `source` until `stop` is set and everything durable has been applied.
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
        let state = node.store.user("a").unwrap().unwrap();
        assert_eq!(state.profile.version, 1);
        assert_eq!(state.recent, vec!["w".to_string()]);
    }
}
