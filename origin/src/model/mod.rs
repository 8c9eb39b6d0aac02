//! The shared recommendation model, kept incrementally by the pipeline: item-to-item
//! co-occurrence over each user's recent distinct items, weighted by their distance in the
//! session (asymmetric-cosine-normalized, top-K per item),
//! trending with exponential decay (overall and per category), and the catalog. Lives in
//! memory; every change a batch makes is written in that batch's transaction.
//!
//! Items are interned to dense `u32` ids (the store persists the id → name table), so the hot
//! path hashes integers, not strings. Co-occurrence weights (integers, in units of
//! `1 / PAIR_WEIGHT_SCALE`) are persisted as a log of absolute values (the pair log): each
//! batch appends one record with the new weight of every pair it changed, and when the log
//! grows past twice the live state it is compacted into a full snapshot inside the same
//! transaction (`persist.rs`). Loading replays the log in order (later values overwrite
//! earlier ones), which reproduces exactly the committed weights.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::ModelConfig;
use crate::error::Result;
use crate::store::{Store, UserState};
use attune_core::model::{TrendEntry, shard_of};
use attune_core::{
    CatalogItem, CatalogShard, Event, EventKind, Neighbour, NeighbourShard, Trending,
};
use foldhash::HashMap as FoldHashMap;

/// Queued co-occurrence increments that make [`Model::observe`] settle by itself (32 MiB); the
/// pipeline settles every micro-batch long before.
const MAX_PENDING_PAIRS: usize = 1 << 21;
/// The pair log is compacted once it holds this much more than twice the live state.
const PAIR_LOG_SLACK_BYTES: u64 = if cfg!(test) { 0 } else { 32 << 20 };

/// Co-occurrence weight of two items next to each other in a session; items `d` apart add
/// `PAIR_WEIGHT_SCALE / d` (sequential rules' `1/d`, Ludewig & Jannach 2018), so what was
/// seen together weighs more the closer together it was seen. Divisible by 1 to 6, so the
/// usual windows round nothing; the similarity divides it out again.
pub const PAIR_WEIGHT_SCALE: u32 = 60;

/// Trending: `s(t) = Σ w·2^(-(t - ts)/half-life)`, kept at the newest event time `e.1`. Adds
/// `w` seen at `ts` to `e` (a score can be folded in as a weight, with its reference time).
fn fold_trend(e: &mut (f64, u64), ts: u64, w: f64, half_life: f64) {
    if ts >= e.1 {
        e.0 = e.0 * (-((ts - e.1) as f64) / half_life).exp2() + w;
        e.1 = ts;
    } else {
        e.0 += w * (-((e.1 - ts) as f64) / half_life).exp2();
    }
}

/// The co-occurrence weight of two items `distance` (≥ 1) apart in a session.
fn pair_weight(distance: usize) -> u32 {
    PAIR_WEIGHT_SCALE / u32::try_from(distance.max(1)).unwrap_or(u32::MAX)
}

#[derive(Debug, Default)]
pub struct Model {
    pub cfg: ModelConfig,
    /// id → item.
    names: Vec<Box<str>>,
    ids: FoldHashMap<Box<str>, u32>,
    /// id → shard.
    shard: Vec<u32>,
    /// id → number of user histories it entered.
    counts: Vec<u64>,
    /// id → (other id → co-occurrence weight, in units of `1 / PAIR_WEIGHT_SCALE`); symmetric.
    adj: Vec<FoldHashMap<u32, PairCell>>,
    /// id → (decayed score, reference time).
    trend: Vec<Option<(f64, u64)>>,
    catalog: BTreeMap<String, CatalogItem>,
    by_shard: Vec<BTreeSet<String>>,
    /// Ids below this are in the store.
    persisted_names: u32,
    dirty_counts: Vec<u32>,
    dirty_trend: Vec<u32>,
    /// Per id: bit 0 count dirty, bit 1 trend dirty, bit 2 a pair in its row changed.
    dirty_flags: Vec<u8>,
    /// Ids whose row has pairs changed since the last persist (bit 2 set).
    dirty_rows: Vec<u32>,
    /// Distinct pairs changed since the last persist.
    dirty_pairs: u64,
    /// Persist generation: a cell with this epoch changed since the last persist.
    epoch: u32,
    /// Shards whose neighbour lists changed since the last [`Model::take_touched_shards`].
    touched: Vec<bool>,
    touched_any: bool,
    /// Distinct unordered pairs with a count.
    live_pairs: u64,
    /// Co-occurrence increments not yet in `adj`: the pair as `a << 32 | b` with `a < b`, and
    /// the weight it adds ([`Model::settle`]).
    pending_pairs: Vec<(u64, u32)>,
    /// `settle`'s buffer for the second half of each cell (kept for its capacity).
    mirrored_cells: Vec<(u64, PairCell)>,
    /// Bytes in the stored pair log and the sequence its next record gets.
    log_bytes: u64,
    log_next: u64,
    /// Version of the last change to the shared keys (`MODEL_SEQ` once checkpointed).
    seq: u64,
    /// Catalog entries changed since the last persist.
    dirty_catalog: BTreeSet<String>,
    /// Set by [`Model::record_deltas`]: where [`Model::observe`] puts its increments instead
    /// of the model.
    recording: Option<Box<delta::Recorder>>,
}

/// One co-occurrence weight, in both items' rows. The epoch marks it changed since the last
/// persist, in the cache line the update touches anyway (a separate dirty set cost a random
/// memory access per update).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PairCell {
    /// Saturating (u32: half the memory of u64 rows).
    weight: u32,
    epoch: u32,
}

/// The entries of one pair-log record (a trailing partial entry is ignored).
fn pair_entries(record: &[u8]) -> impl Iterator<Item = (u32, u32, u64)> + '_ {
    record.as_chunks::<16>().0.iter().map(|e| {
        let [a0, a1, a2, a3, b0, b1, b2, b3, c @ ..] = *e;
        (
            u32::from_le_bytes([a0, a1, a2, a3]),
            u32::from_le_bytes([b0, b1, b2, b3]),
            u64::from_le_bytes(c),
        )
    })
}

impl Model {
    pub fn new(cfg: ModelConfig) -> Self {
        let shards = cfg.shards.max(1) as usize;
        Model {
            cfg,
            by_shard: vec![BTreeSet::new(); shards],
            touched: vec![false; shards],
            ..Model::default()
        }
    }

    /// Loads the persisted state.
    pub fn load(cfg: ModelConfig, store: &Store) -> Result<Self> {
        let mut m = Model::new(cfg);
        let tx = store.read_checkpoint()?;
        tx.item_names(|id, name| {
            if m.intern(name) != id {
                return Err(crate::Error::Corrupt(format!(
                    "item table out of order at id {id} ({name})"
                )));
            }
            Ok(())
        })?;
        m.persisted_names = m.names.len() as u32;
        tx.item_counts(|item, n| {
            let id = m.intern(item) as usize;
            m.counts[id] = n;
        })?;
        tx.pair_records(|seq, bytes| {
            m.log_bytes += bytes.len() as u64;
            m.log_next = seq + 1;
            for (a, b, c) in pair_entries(bytes) {
                if a as usize >= m.names.len() || b as usize >= m.names.len() {
                    return Err(crate::Error::Corrupt(format!(
                        "pair log record {seq} names an unknown item id"
                    )));
                }
                m.set_pair(a, b, c);
            }
            Ok(())
        })?;
        tx.trends(|item, trend| {
            let id = m.intern(item) as usize;
            m.trend[id] = Some(trend);
        })?;
        tx.catalog(|id, item| {
            m.intern(id);
            m.catalog.insert(id.to_string(), item);
        })?;
        // Start above every shared version KV may hold: changes after the last checkpoint may
        // have been published before a crash, and the replay numbers its changes anew.
        let seq = tx.counter(crate::store::keys::MODEL_SEQ)?;
        let mut published = 0;
        tx.published(|k, v| {
            if k.starts_with("n:") || k.starts_with("c:") || k == attune_core::model::keys::TRENDING
            {
                published = published.max(v);
            }
        })?;
        m.seq = seq.max(published);
        m.live_pairs = m.adj.iter().map(|r| r.len() as u64).sum::<u64>() / 2;
        m.touched.iter_mut().for_each(|t| *t = false);
        m.touched_any = false;
        Ok(m)
    }

    fn set_pair(&mut self, a: u32, b: u32, c: u64) {
        let cell = PairCell {
            weight: u32::try_from(c).unwrap_or(u32::MAX),
            // Loaded state is persisted state: not dirty.
            epoch: self.epoch.wrapping_sub(1),
        };
        self.adj[a as usize].insert(b, cell);
        self.adj[b as usize].insert(a, cell);
    }

    fn mark_row(&mut self, id: u32) {
        let f = &mut self.dirty_flags[id as usize];
        if *f & 4 == 0 {
            *f |= 4;
            self.dirty_rows.push(id);
        }
    }

    /// The id of `item`, adding it (and indexing it in its shard) the first time.
    fn intern(&mut self, item: &str) -> u32 {
        if let Some(id) = self.ids.get(item) {
            return *id;
        }
        let id = self.names.len() as u32;
        let s = shard_of(item, self.cfg.shards);
        self.names.push(item.into());
        self.ids.insert(item.into(), id);
        self.shard.push(s);
        self.counts.push(0);
        self.adj.push(FoldHashMap::default());
        self.trend.push(None);
        self.dirty_flags.push(0);
        if let Some(set) = self.by_shard.get_mut(s as usize) {
            set.insert(item.to_string());
        }
        id
    }

    /// A new version for shared keys changed now.
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Moves the shared-key versions up to at least `floor` (never down).
    pub fn raise_seq(&mut self, floor: u64) {
        self.seq = self.seq.max(floor);
    }

    /// The newest shared-key version handed out.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn shards(&self) -> u32 {
        self.cfg.shards
    }

    pub fn category(&self, item: &str) -> Option<&str> {
        if self.catalog.is_empty() {
            return None;
        }
        self.catalog.get(item).map(|c| c.category.as_str())
    }

    pub fn catalog_len(&self) -> usize {
        self.catalog.len()
    }

    /// Replaces or adds catalog entries in memory (the pipeline, at the catalog record's
    /// position in the log; the next checkpoint writes them); returns the shards that changed.
    pub fn put_catalog(&mut self, items: Vec<CatalogItem>) -> BTreeSet<u32> {
        let mut shards = BTreeSet::new();
        for item in items {
            shards.insert(shard_of(&item.id, self.cfg.shards));
            self.intern(&item.id);
            self.dirty_catalog.insert(item.id.clone());
            self.catalog.insert(item.id.clone(), item);
        }
        shards
    }

    /// Adds catalog entries in memory only (offline evaluation).
    pub fn set_catalog(&mut self, items: Vec<CatalogItem>) {
        for item in items {
            self.intern(&item.id);
            self.catalog.insert(item.id.clone(), item);
        }
    }

    #[inline]
    fn touch(&mut self, id: u32) {
        if let Some(t) = self.touched.get_mut(self.shard[id as usize] as usize) {
            *t = true;
            self.touched_any = true;
        }
    }

    /// Shards whose neighbour lists changed since the last call, ascending.
    pub fn take_touched_shards(&mut self) -> Vec<u32> {
        if !self.touched_any {
            return Vec::new();
        }
        self.touched_any = false;
        let mut out = Vec::new();
        for (s, t) in self.touched.iter_mut().enumerate() {
            if std::mem::take(t) {
                out.push(s as u32);
            }
        }
        out
    }

    /// Feeds one applied event; the shards it changes are collected for
    /// [`Model::take_touched_shards`]. `previous_seen` is the user's latest event time before
    /// this one (`Profile::last_seen` before the event was applied; 0 for a new user): an event
    /// more than `session_gap_ms` after it starts a new session, and co-occurrence is counted
    /// within a session only.
    pub fn observe(
        &mut self,
        event: &Event,
        weight: f32,
        previous_seen: u64,
        user: &mut UserState,
    ) {
        let Some(item) = event.item.as_deref() else {
            return;
        };
        if matches!(
            event.kind,
            EventKind::Impression | EventKind::Search | EventKind::RemoveFromCart
        ) {
            return;
        }
        let id = self.intern(item);
        if weight > 0.0 {
            let hl = self.cfg.trend_half_life_ms.max(1) as f64;
            match self.recording.as_deref_mut() {
                Some(r) => r.trend(id, event.ts, f64::from(weight), hl),
                None => self.add_trend(id, event.ts, f64::from(weight)),
            }
        }
        // Co-occurrence with the recent distinct items of the user's current session.
        if event.ts.saturating_sub(previous_seen) > self.cfg.session_gap_ms {
            user.recent_ids.clear();
        }
        if let Some(pos) = user.recent_ids.iter().position(|r| *r == id) {
            user.recent_ids[..=pos].rotate_right(1);
            return;
        }
        let recent = user.recent_ids.iter().take(self.cfg.history).enumerate();
        if let Some(r) = self.recording.as_deref_mut() {
            r.count(id);
            for (before, &o) in recent {
                r.pair(id, o, pair_weight(before + 1));
            }
        } else {
            self.add_count(id, 1);
            for (before, &o) in recent {
                self.add_pair(id, o, pair_weight(before + 1));
            }
        }
        let keep = self.cfg.history.max(1);
        user.recent_ids.truncate(keep - 1);
        user.recent_ids.insert(0, id);
        if self.pending_pairs.len() >= MAX_PENDING_PAIRS {
            self.settle();
        }
    }

    /// Adds `w` at time `ts` to the item's trending score.
    fn add_trend(&mut self, id: u32, ts: u64, w: f64) {
        let hl = self.cfg.trend_half_life_ms.max(1) as f64;
        fold_trend(self.trend[id as usize].get_or_insert((0.0, ts)), ts, w, hl);
        let f = &mut self.dirty_flags[id as usize];
        if *f & 2 == 0 {
            *f |= 2;
            self.dirty_trend.push(id);
        }
    }

    /// Adds `n` user histories to the item's count.
    fn add_count(&mut self, id: u32, n: u64) {
        let c = &mut self.counts[id as usize];
        *c = c.saturating_add(n);
        let f = &mut self.dirty_flags[id as usize];
        if *f & 1 == 0 {
            *f |= 1;
            self.dirty_counts.push(id);
        }
        self.touch(id);
    }

    /// Queues `w` on the pair `a`, `b` (`a != b`) for [`Model::settle`], by unordered pair; the
    /// rows and shards are marked now.
    fn add_pair(&mut self, a: u32, b: u32, w: u32) {
        let (lo, hi) = (a.min(b), a.max(b));
        self.pending_pairs
            .push((u64::from(lo) << 32 | u64::from(hi), w));
        self.mark_row(b);
        self.touch(b);
        self.mark_row(a);
        self.touch(a);
    }

    /// Applies the co-occurrence increments [`Model::observe`] queued. They are applied sorted
    /// by row, so each row's table is updated while it is in cache, instead of two cache misses
    /// per increment at random; the weights of equal pairs are added up first. The result is the state that
    /// applying them one by one would give (counts, change epochs, `live_pairs`,
    /// `dirty_pairs`): a cell is the same in both rows, and its first increment in an epoch is
    /// what counts a change. The pipeline settles at the end of every micro-batch, before the
    /// model is read; [`Model::persist`] settles too.
    pub fn settle(&mut self) {
        if self.pending_pairs.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending_pairs);
        let mut mirrored = std::mem::take(&mut self.mirrored_cells);
        pending.sort_unstable();
        let epoch = self.epoch;
        for run in pending.chunk_by(|x, y| x.0 == y.0) {
            let (a, b) = ((run[0].0 >> 32) as u32, run[0].0 as u32);
            let weight: u64 = run.iter().map(|p| u64::from(p.1)).sum();
            let c = self.adj[a as usize].entry(b).or_default();
            if c.weight == 0 {
                self.live_pairs += 1;
            }
            if c.epoch != epoch || c.weight == 0 {
                self.dirty_pairs += 1;
            }
            c.weight = c
                .weight
                .saturating_add(u32::try_from(weight).unwrap_or(u32::MAX));
            c.epoch = epoch;
            mirrored.push((u64::from(b) << 32 | u64::from(a), *c));
        }
        // The other half of each cell, in the other row: sorted by that row in turn.
        mirrored.sort_unstable_by_key(|m| m.0);
        for &(key, cell) in &mirrored {
            self.adj[(key >> 32) as usize].insert(key as u32, cell);
        }
        pending.clear();
        mirrored.clear();
        self.pending_pairs = pending;
        self.mirrored_cells = mirrored;
    }

    /// The id of `item` (interned the first time): a restored user's recent items.
    pub fn intern_item(&mut self, item: &str) -> u32 {
        self.intern(item)
    }

    /// The name of an interned item.
    pub fn name(&self, id: u32) -> Option<&str> {
        self.names.get(id as usize).map(|n| &**n)
    }

    /// A user's recent items by name, newest first.
    pub fn recent_names(&self, user: &UserState) -> Vec<String> {
        user.recent_ids
            .iter()
            .filter_map(|id| self.name(*id).map(str::to_string))
            .collect()
    }

    /// Top-K neighbours of `item` by similarity (`w(i, j) / (count(i)^a · count(j)^(1-a))`, `w`
    /// the distance-weighted co-occurrence, `a` = `similarity_alpha`), most similar first, ties
    /// by id.
    pub fn neighbours(&self, item: &str) -> Vec<Neighbour> {
        debug_assert!(self.pending_pairs.is_empty(), "Model::settle first");
        let Some(&id) = self.ids.get(item) else {
            return Vec::new();
        };
        let row = &self.adj[id as usize];
        if row.is_empty() {
            return Vec::new();
        }
        let alpha = self.cfg.similarity_alpha;
        let shrinkage = self.cfg.similarity_shrinkage.max(0.0);
        let ni =
            f64::from(PAIR_WEIGHT_SCALE) * (self.counts[id as usize].max(1) as f64).powf(alpha);
        let mut out: Vec<(f64, &str)> = row
            .iter()
            .map(|(j, c)| {
                let nj = (self.counts[*j as usize].max(1) as f64).powf(1.0 - alpha);
                let support = f64::from(c.weight) / f64::from(PAIR_WEIGHT_SCALE);
                (
                    (f64::from(c.weight) / (ni * nj)).min(1.0) * support / (support + shrinkage),
                    &*self.names[*j as usize],
                )
            })
            .collect();
        out.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        out.truncate(self.cfg.top_k);
        out.into_iter()
            .map(|(s, j)| Neighbour {
                item: j.to_string(),
                sim: s as f32,
            })
            .collect()
    }

    pub fn neighbour_shard(&self, shard: u32) -> NeighbourShard {
        let lists = self
            .by_shard
            .get(shard as usize)
            .into_iter()
            .flatten()
            .map(|i| (i.clone(), self.neighbours(i)))
            .filter(|(_, n)| !n.is_empty())
            .collect();
        NeighbourShard::from_lists(lists)
    }

    pub fn catalog_shard(&self, shard: u32) -> CatalogShard {
        CatalogShard::from_items(
            self.by_shard
                .get(shard as usize)
                .into_iter()
                .flatten()
                .filter_map(|i| self.catalog.get(i).cloned())
                .collect(),
        )
    }

    /// Trending at `now`: decayed scores, highest first, ties by id; plus per-category tops.
    pub fn trending(&self, now: u64) -> Trending {
        let hl = self.cfg.trend_half_life_ms.max(1) as f64;
        let mut all: Vec<(f64, &str)> = self
            .trend
            .iter()
            .zip(&self.names)
            .filter_map(|(t, k)| t.map(|t| (t, k)))
            .map(|((s, at), k)| {
                let age = now as f64 - at as f64;
                (s * (-age / hl).exp2(), &**k)
            })
            .filter(|(s, _)| *s > 0.0 && s.is_finite())
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        let mut by_category: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (_, item) in &all {
            if let Some(c) = self.category(item) {
                let list = by_category.entry(c).or_default();
                if list.len() < self.cfg.per_category {
                    list.push((*item).to_string());
                }
            }
        }
        Trending {
            items: all
                .iter()
                .take(self.cfg.trending_len)
                .map(|(s, i)| TrendEntry {
                    item: (*i).to_string(),
                    score: *s as f32,
                })
                .collect(),
            by_category: by_category
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }
}

mod delta;
mod persist;
#[cfg(test)]
mod tests;

pub use delta::ModelDelta;
