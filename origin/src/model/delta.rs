//! Model deltas: the increments a stream of events makes to the model, recorded apart from it,
//! named by item so that another model (with its own ids) can merge them.
//!
//! Several origins that each consume part of the events (Kafka partitions) all need the model
//! of every event. Each records what its events add ([`Model::record_deltas`]), ships it
//! ([`ModelDelta::encode`]), and every origin merges every delta ([`Model::merge_delta`]).
//! Counts and co-occurrence weights are integers, so merged deltas give exactly the model of
//! the events applied directly, whatever the split and the merge order; trending scores are
//! sums of decayed weights in `f64`, equal up to rounding. What `observe` derives from a user's
//! session depends on that user's events only, so each user's events must go to one origin.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{MAX_PENDING_PAIRS, Model, fold_trend};
use crate::error::{Error, Result};
use foldhash::HashMap as FoldHashMap;

/// Encoding version, the first byte of [`ModelDelta::encode`].
const DELTA_VERSION: u8 = 1;

/// The increments [`Model::observe`] makes while recording, by item id of the recording model.
#[derive(Debug, Default)]
pub(super) struct Recorder {
    counts: FoldHashMap<u32, u64>,
    /// Unordered pair `a << 32 | b`, `a < b` → weight in units of `1 / PAIR_WEIGHT_SCALE`.
    pairs: FoldHashMap<u64, u64>,
    /// id → (decayed score, reference time), folded as the model folds its own.
    trend: FoldHashMap<u32, (f64, u64)>,
}

impl Recorder {
    pub(super) fn trend(&mut self, id: u32, ts: u64, w: f64, half_life: f64) {
        fold_trend(self.trend.entry(id).or_insert((0.0, ts)), ts, w, half_life);
    }

    pub(super) fn count(&mut self, id: u32) {
        *self.counts.entry(id).or_default() += 1;
    }

    pub(super) fn pair(&mut self, a: u32, b: u32, w: u32) {
        let key = u64::from(a.min(b)) << 32 | u64::from(a.max(b));
        *self.pairs.entry(key).or_default() += u64::from(w);
    }
}

/// Model increments named by item: what [`Model::take_delta`] hands out and
/// [`Model::merge_delta`] applies. Entries are sorted (items by name, entries by item), so equal
/// deltas encode to equal bytes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelDelta {
    /// Item names, sorted and distinct; the entries name items by their index here.
    items: Vec<String>,
    /// (item, user histories it entered), by item.
    counts: Vec<(u32, u64)>,
    /// (item, other item, co-occurrence weight in units of `1 / PAIR_WEIGHT_SCALE`), item <
    /// other item, sorted.
    pairs: Vec<(u32, u32, u64)>,
    /// (item, decayed score, reference time), by item.
    trends: Vec<(u32, f64, u64)>,
}

impl ModelDelta {
    /// Whether merging it would change nothing.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.pairs.is_empty() && self.trends.is_empty()
    }

    /// The delta's bytes: a version byte, then MessagePack.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![DELTA_VERSION];
        // Serializing plain integers, floats, strings and sequences into a Vec cannot fail.
        rmp_serde::encode::write(&mut out, self).expect("a ModelDelta always serializes");
        out
    }

    /// Reads [`ModelDelta::encode`]'s bytes, checking what merging relies on (indices in range,
    /// sorted distinct entries), so a damaged delta is an error rather than a wrong merge.
    pub fn decode(bytes: &[u8]) -> Result<ModelDelta> {
        let bad = |why: String| Error::Delta(why);
        let (&version, mut rest) = bytes
            .split_first()
            .ok_or_else(|| bad("empty input".into()))?;
        if version != DELTA_VERSION {
            return Err(bad(format!(
                "encoding version {version}, this build reads {DELTA_VERSION}"
            )));
        }
        let delta: ModelDelta = rmp_serde::decode::from_read(&mut rest)?;
        if !rest.is_empty() {
            return Err(bad(format!("{} bytes after the delta", rest.len())));
        }
        delta.check().map_err(|why| bad(why.into()))?;
        Ok(delta)
    }

    fn check(&self) -> std::result::Result<(), &'static str> {
        let n = self.items.len() as u64;
        if !self.items.windows(2).all(|w| w[0] < w[1]) {
            return Err("items not sorted and distinct");
        }
        let ascending = |ids: &[u32]| {
            ids.iter().all(|i| u64::from(*i) < n) && ids.windows(2).all(|w| w[0] < w[1])
        };
        if !ascending(&self.counts.iter().map(|c| c.0).collect::<Vec<_>>()) {
            return Err("counts: item index out of range or out of order");
        }
        if !ascending(&self.trends.iter().map(|t| t.0).collect::<Vec<_>>()) {
            return Err("trends: item index out of range or out of order");
        }
        if !self.trends.iter().all(|t| t.1.is_finite()) {
            return Err("trends: a score is not finite");
        }
        if !self.pairs.iter().all(|p| p.0 < p.1 && u64::from(p.1) < n)
            || !self
                .pairs
                .windows(2)
                .all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1))
        {
            return Err("pairs: item index out of range or out of order");
        }
        Ok(())
    }
}

impl Model {
    /// From now on [`Model::observe`] interns items and updates the user's session as always,
    /// but puts the increments to counts, co-occurrence and trending into a delta
    /// ([`Model::take_delta`]) instead of this model, which changes only by
    /// [`Model::merge_delta`] (its own deltas included, like every other origin's).
    pub fn record_deltas(&mut self) {
        self.recording.get_or_insert_default();
    }

    /// The increments recorded since the last call (or since [`Model::record_deltas`]), with
    /// item names; the recorder starts empty again. Empty when not recording.
    pub fn take_delta(&mut self) -> ModelDelta {
        let Some(r) = self.recording.as_deref_mut() else {
            return ModelDelta::default();
        };
        let r = std::mem::take(r);
        let mut ids: Vec<u32> = r.counts.keys().copied().collect();
        ids.extend(r.trend.keys());
        ids.extend(r.pairs.keys().flat_map(|k| [(k >> 32) as u32, *k as u32]));
        ids.sort_unstable_by(|a, b| self.names[*a as usize].cmp(&self.names[*b as usize]));
        ids.dedup();
        let index: FoldHashMap<u32, u32> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i as u32))
            .collect();
        let mut counts: Vec<(u32, u64)> = r.counts.iter().map(|(id, n)| (index[id], *n)).collect();
        counts.sort_unstable_by_key(|c| c.0);
        let mut trends: Vec<(u32, f64, u64)> = r
            .trend
            .iter()
            .map(|(id, (s, ts))| (index[id], *s, *ts))
            .collect();
        trends.sort_unstable_by_key(|t| t.0);
        let mut pairs: Vec<(u32, u32, u64)> = r
            .pairs
            .iter()
            .map(|(k, w)| {
                let (a, b) = (index[&((k >> 32) as u32)], index[&(*k as u32)]);
                (a.min(b), a.max(b), *w)
            })
            .collect();
        pairs.sort_unstable_by_key(|p| (p.0, p.1));
        ModelDelta {
            items: ids
                .iter()
                .map(|id| self.names[*id as usize].to_string())
                .collect(),
            counts,
            pairs,
            trends,
        }
    }

    /// Adds a delta's increments to this model as [`Model::observe`] would have applied its
    /// events: items interned, counts and co-occurrence through `settle` (so persistence and
    /// the touched shards see every change), trending folded in at the delta's reference time.
    pub fn merge_delta(&mut self, delta: &ModelDelta) {
        if delta.is_empty() {
            return;
        }
        let ids: Vec<u32> = delta.items.iter().map(|n| self.intern(n)).collect();
        let id = |i: u32| ids.get(i as usize).copied();
        for &(i, n) in &delta.counts {
            if let Some(a) = id(i) {
                self.add_count(a, n);
            }
        }
        for &(i, j, w) in &delta.pairs {
            if let (Some(a), Some(b)) = (id(i), id(j))
                && a != b
            {
                // A cell saturates at u32::MAX, so capping the increment changes nothing.
                self.add_pair(a, b, u32::try_from(w).unwrap_or(u32::MAX));
                if self.pending_pairs.len() >= MAX_PENDING_PAIRS {
                    self.settle();
                }
            }
        }
        for &(i, score, ts) in &delta.trends {
            if let Some(a) = id(i) {
                self.add_trend(a, ts, score);
            }
        }
        self.settle();
    }
}

/// Collects a part of a delta: the entries taken, with the items they name re-indexed in the
/// original (sorted) order, so the part is itself a well-formed delta.
#[derive(Default)]
struct Part {
    items: BTreeMap<u32, u32>,
    counts: Vec<(u32, u64)>,
    pairs: Vec<(u32, u32, u64)>,
    trends: Vec<(u32, f64, u64)>,
}

impl Part {
    fn len(&self) -> usize {
        self.counts.len() + self.pairs.len() + self.trends.len()
    }

    fn finish(self, names: &[String]) -> ModelDelta {
        // Old indices in ascending order keep the names sorted; the entries, taken in order
        // from a sorted delta, stay sorted under this monotone mapping.
        let index: BTreeMap<u32, u32> = self
            .items
            .keys()
            .enumerate()
            .map(|(new, old)| (*old, new as u32))
            .collect();
        let at = |old: u32| index[&old];
        ModelDelta {
            items: self
                .items
                .keys()
                .map(|i| names[*i as usize].clone())
                .collect(),
            counts: self.counts.into_iter().map(|(i, n)| (at(i), n)).collect(),
            pairs: self
                .pairs
                .into_iter()
                .map(|(a, b, w)| (at(a), at(b), w))
                .collect(),
            trends: self
                .trends
                .into_iter()
                .map(|(i, s, t)| (at(i), s, t))
                .collect(),
        }
    }
}

impl ModelDelta {
    /// The delta cut into parts of at most `max_entries` entries (counts, pairs and trends),
    /// each naming only its own items: merging the parts, in any order, is merging the whole
    /// (each entry is in exactly one part). Keeps each part's encoding well under a Kafka
    /// message's size limit.
    pub fn split(&self, max_entries: usize) -> Vec<ModelDelta> {
        let max = max_entries.max(1);
        let mut parts = Vec::new();
        let mut part = Part::default();
        let room = |part: &mut Part, parts: &mut Vec<ModelDelta>| {
            if part.len() >= max {
                parts.push(std::mem::take(part).finish(&self.items));
            }
        };
        for &(i, n) in &self.counts {
            part.items.insert(i, 0);
            part.counts.push((i, n));
            room(&mut part, &mut parts);
        }
        for &(a, b, w) in &self.pairs {
            part.items.insert(a, 0);
            part.items.insert(b, 0);
            part.pairs.push((a, b, w));
            room(&mut part, &mut parts);
        }
        for &(i, sc, t) in &self.trends {
            part.items.insert(i, 0);
            part.trends.push((i, sc, t));
            room(&mut part, &mut parts);
        }
        if part.len() > 0 || parts.is_empty() {
            parts.push(part.finish(&self.items));
        }
        parts
    }

    /// Whether merging it changes trending.
    pub fn changes_trending(&self) -> bool {
        !self.trends.is_empty()
    }
}

#[cfg(test)]
#[path = "delta_tests.rs"]
mod tests;
