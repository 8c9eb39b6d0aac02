//! The shared recommendation model, kept incrementally by the pipeline: item-to-item
//! co-occurrence over each user's recent distinct items (cosine-normalized, top-K per item),
//! trending with exponential decay (overall and per category), and the catalog. Lives in
//! memory; every change a batch makes is written in that batch's transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use attune_core::model::{TrendEntry, shard_of};
use attune_core::{
    CatalogItem, CatalogShard, Event, EventKind, Neighbour, NeighbourShard, Trending,
};
use redb::{ReadableTable, WriteTransaction};

use crate::config::ModelConfig;
use crate::error::Result;
use crate::store::{CATALOG, ITEM_COUNTS, PAIRS, Store, TREND, UserState};

#[derive(Debug, Default)]
pub struct Model {
    pub cfg: ModelConfig,
    counts: HashMap<String, u64>,
    adj: HashMap<String, HashMap<String, u64>>,
    trend: HashMap<String, (f64, u64)>,
    catalog: BTreeMap<String, CatalogItem>,
    by_shard: Vec<BTreeSet<String>>,
    dirty_counts: HashSet<String>,
    dirty_pairs: HashSet<(String, String)>,
    dirty_trend: HashSet<String>,
}

fn ordered<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a < b { (a, b) } else { (b, a) }
}

impl Model {
    pub fn new(cfg: ModelConfig) -> Self {
        let shards = cfg.shards.max(1) as usize;
        Model {
            cfg,
            by_shard: vec![BTreeSet::new(); shards],
            ..Model::default()
        }
    }

    /// Loads the persisted state.
    pub fn load(cfg: ModelConfig, store: &Store) -> Result<Self> {
        let mut m = Model::new(cfg);
        let tx = store.db.begin_read()?;
        for row in tx.open_table(ITEM_COUNTS)?.iter()? {
            let (k, v) = row?;
            let item = k.value().to_string();
            m.index(&item);
            m.counts.insert(item, v.value());
        }
        for row in tx.open_table(PAIRS)?.iter()? {
            let (k, v) = row?;
            let (a, b) = k.value();
            let c = v.value();
            m.adj
                .entry(a.to_string())
                .or_default()
                .insert(b.to_string(), c);
            m.adj
                .entry(b.to_string())
                .or_default()
                .insert(a.to_string(), c);
        }
        for row in tx.open_table(TREND)?.iter()? {
            let (k, v) = row?;
            m.trend.insert(k.value().to_string(), v.value());
        }
        for row in tx.open_table(CATALOG)?.iter()? {
            let (k, v) = row?;
            let item: CatalogItem = rmp_serde::from_slice(v.value())?;
            m.index(k.value());
            m.catalog.insert(k.value().to_string(), item);
        }
        Ok(m)
    }

    fn index(&mut self, item: &str) {
        let s = shard_of(item, self.cfg.shards) as usize;
        if !self.by_shard[s].contains(item) {
            self.by_shard[s].insert(item.to_string());
        }
    }

    pub fn shards(&self) -> u32 {
        self.cfg.shards
    }

    pub fn category(&self, item: &str) -> Option<&str> {
        self.catalog.get(item).map(|c| c.category.as_str())
    }

    pub fn catalog_len(&self) -> usize {
        self.catalog.len()
    }

    /// Replaces or adds catalog entries; returns the shards that changed.
    pub fn put_catalog(
        &mut self,
        tx: &WriteTransaction,
        items: Vec<CatalogItem>,
    ) -> Result<BTreeSet<u32>> {
        let mut t = tx.open_table(CATALOG)?;
        let mut shards = BTreeSet::new();
        for item in items {
            t.insert(item.id.as_str(), rmp_serde::to_vec_named(&item)?.as_slice())?;
            shards.insert(shard_of(&item.id, self.cfg.shards));
            self.index(&item.id);
            self.catalog.insert(item.id.clone(), item);
        }
        Ok(shards)
    }

    /// Adds catalog entries in memory only (offline evaluation).
    pub fn set_catalog(&mut self, items: Vec<CatalogItem>) {
        for item in items {
            self.index(&item.id);
            self.catalog.insert(item.id.clone(), item);
        }
    }

    /// Feeds one applied event. Returns the items whose neighbour lists changed.
    pub fn observe(
        &mut self,
        event: &Event,
        weight: f32,
        user: &mut UserState,
        touched: &mut BTreeSet<String>,
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
        // Trending: s(t) = Σ w·2^(-(t - ts)/half-life), kept at the newest event time.
        if weight > 0.0 {
            let hl = self.cfg.trend_half_life_ms.max(1) as f64;
            let e = self
                .trend
                .entry(item.to_string())
                .or_insert((0.0, event.ts));
            let w = f64::from(weight);
            if event.ts >= e.1 {
                e.0 = e.0 * (-((event.ts - e.1) as f64) / hl).exp2() + w;
                e.1 = event.ts;
            } else {
                e.0 += w * (-((e.1 - event.ts) as f64) / hl).exp2();
            }
            self.dirty_trend.insert(item.to_string());
        }
        // Co-occurrence with the user's recent distinct items.
        if let Some(pos) = user.recent.iter().position(|r| r == item) {
            let r = user.recent.remove(pos);
            user.recent.insert(0, r);
            return;
        }
        self.index(item);
        *self.counts.entry(item.to_string()).or_insert(0) += 1;
        self.dirty_counts.insert(item.to_string());
        touched.insert(item.to_string());
        for other in user.recent.iter().take(self.cfg.history) {
            *self
                .adj
                .entry(item.to_string())
                .or_default()
                .entry(other.clone())
                .or_insert(0) += 1;
            *self
                .adj
                .entry(other.clone())
                .or_default()
                .entry(item.to_string())
                .or_insert(0) += 1;
            let (a, b) = ordered(item, other);
            self.dirty_pairs.insert((a.to_string(), b.to_string()));
            touched.insert(other.clone());
        }
        user.recent.insert(0, item.to_string());
        user.recent.truncate(self.cfg.history.max(1));
    }

    /// Writes everything changed since the last call into `tx`.
    pub fn persist(&mut self, tx: &WriteTransaction) -> Result<()> {
        if !self.dirty_counts.is_empty() {
            let mut t = tx.open_table(ITEM_COUNTS)?;
            for k in self.dirty_counts.drain() {
                t.insert(k.as_str(), self.counts.get(&k).copied().unwrap_or(0))?;
            }
        }
        if !self.dirty_pairs.is_empty() {
            let mut t = tx.open_table(PAIRS)?;
            for (a, b) in self.dirty_pairs.drain() {
                let c = self
                    .adj
                    .get(&a)
                    .and_then(|m| m.get(&b))
                    .copied()
                    .unwrap_or(0);
                t.insert((a.as_str(), b.as_str()), c)?;
            }
        }
        if !self.dirty_trend.is_empty() {
            let mut t = tx.open_table(TREND)?;
            for k in self.dirty_trend.drain() {
                if let Some(v) = self.trend.get(&k) {
                    t.insert(k.as_str(), *v)?;
                }
            }
        }
        Ok(())
    }

    /// Top-K neighbours of `item` by cosine similarity, most similar first, ties by id.
    pub fn neighbours(&self, item: &str) -> Vec<Neighbour> {
        let Some(row) = self.adj.get(item) else {
            return Vec::new();
        };
        let ni = self.counts.get(item).copied().unwrap_or(1).max(1) as f64;
        let mut out: Vec<(f64, &str)> = row
            .iter()
            .map(|(j, c)| {
                let nj = self.counts.get(j).copied().unwrap_or(1).max(1) as f64;
                ((*c as f64 / (ni * nj).sqrt()).min(1.0), j.as_str())
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
            .map(|(k, (s, at))| {
                let age = now as f64 - *at as f64;
                (s * (-age / hl).exp2(), k.as_str())
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
