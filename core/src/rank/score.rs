//! How a pooled candidate is scored: its category's affinity term and the trend prior on top
//! of what it gathered.

use alloc::vec::Vec;

use super::candidates::{Candidate, Pool};
use super::{RankInput, Reason};
use crate::table::{Table, hash_str, same};

/// The profile's category scores, sorted by category (like the profile), with a hash index
/// for the per-candidate lookups.
pub(super) struct CategoryScores<'a> {
    pub(super) scores: Vec<(&'a str, f64)>,
    /// `None` when the list is not strictly sorted (a hand-made profile): then lookups are the
    /// binary search `Profile::category_affinity` does, duplicates and all.
    pub(super) index: Option<Table>,
}

impl<'a> CategoryScores<'a> {
    pub(super) fn new(scores: Vec<(&'a str, f64)>) -> Self {
        let index = scores.windows(2).all(|w| w[0].0 < w[1].0).then(|| {
            let mut t = Table::with_capacity(scores.len());
            for (i, (k, _)) in scores.iter().enumerate() {
                t.insert(hash_str(k), i, |j| hash_str(scores[j].0));
            }
            t
        });
        CategoryScores { scores, index }
    }

    /// The score of `category`, 0 when the profile has none.
    #[inline]
    pub(super) fn get(&self, category: &str) -> f64 {
        let found = match &self.index {
            Some(t) => t.find(hash_str(category), |i| same(self.scores[i].0, category)),
            None => self
                .scores
                .binary_search_by(|(k, _)| (*k).cmp(category))
                .ok(),
        };
        found.map_or(0.0, |i| self.scores[i].1)
    }
}

/// The categories of the scored candidates, each with its affinity term, numbered in
/// first-seen order (the diversity cap counts by that number). A catalog that interns its
/// categories ([`crate::CatalogIndex`]) returns the same `&str` for every item of a
/// category, so most lookups end at a pointer comparison with the last few categories seen;
/// the rest go through a hash index by name. Either way a name maps to one number.
pub(super) struct Categories<'a> {
    pub(super) names: Vec<&'a str>,
    pub(super) affinity: Vec<f64>,
    pub(super) index: Table,
}

impl<'a> Categories<'a> {
    pub(super) fn new() -> Self {
        Categories {
            names: Vec::new(),
            affinity: Vec::new(),
            index: Table::with_capacity(16),
        }
    }

    /// The number of `name`, `affinity(name)` computing its term the first time it is seen.
    #[inline]
    pub(super) fn number(&mut self, name: &'a str, affinity: impl FnOnce(&str) -> f64) -> usize {
        if let Some(i) = self
            .names
            .iter()
            .take(8)
            .position(|n| core::ptr::eq(n.as_ptr(), name.as_ptr()) && n.len() == name.len())
        {
            return i;
        }
        let hash = hash_str(name);
        let names = &self.names;
        if let Some(i) = self.index.find(hash, |i| same(names[i], name)) {
            return i;
        }
        let i = self.names.len();
        self.names.push(name);
        self.affinity.push(affinity(name));
        let names = &self.names;
        self.index.insert(hash, i, |j| hash_str(names[j]));
        i
    }
}

/// How the pooled candidates are scored and walked into the slot.
pub(super) struct Scoring<'i, 'a> {
    pub(super) input: &'i RankInput<'a>,
    pub(super) category_scores: &'i CategoryScores<'i>,
    /// The strongest category's score, or 0 when category affinity does not apply.
    pub(super) strongest: f64,
    /// Most picks of one category.
    pub(super) cap: usize,
}

impl<'a> Scoring<'_, 'a> {
    /// The affinity term of `name`.
    #[inline]
    pub(super) fn affinity(&self, name: &str) -> f64 {
        if self.strongest > 0.0 {
            self.category_scores.get(name) / self.strongest
        } else {
            0.0
        }
    }

    /// The final score of `c` whose category's affinity term is `affinity`. Monotone in
    /// `affinity` when the weights are not negative (every step is a rounded addition or a
    /// product with a non-negative weight), which is what [`Scoring::choose_bounded`] needs.
    #[inline]
    pub(super) fn score(&self, c: &Candidate, affinity: f64) -> f64 {
        let params = self.input.params;
        let mut score = c.score;
        if affinity > 0.0 {
            score += params.category_weight * affinity;
        }
        score += params.trend_weight * c.prior.unwrap_or(0.0);
        score
    }

    /// Looks candidate `i` up in the catalog and scores it (`None` when it is not there).
    #[inline]
    pub(super) fn resolve(
        &self,
        pool: &Pool<'a>,
        categories: &mut Categories<'a>,
        i: usize,
    ) -> Option<Scored> {
        let (item, key, c) = (pool.ids[i], &pool.keys[i], &pool.candidates[i]);
        let category = self.input.catalog.category_keyed(item, key)?;
        let category = categories.number(category, |name| self.affinity(name));
        let affinity = categories.affinity[category];
        Some(Scored {
            score: self.score(c, affinity),
            candidate: i as u32,
            category: category as u32,
            reason: c.reason,
            affinity,
        })
    }
}

/// A scored candidate on its way to the slot: its score, its place in the pool (for the id)
/// and its category's number in [`Categories`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Scored {
    pub(super) score: f64,
    pub(super) candidate: u32,
    pub(super) category: u32,
    pub(super) reason: Reason,
    /// The category's affinity term (before its weight).
    pub(super) affinity: f64,
}
