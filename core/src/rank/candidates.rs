//! The candidate pool: what each strategy gathers, with every contribution to a candidate's
//! score, and which candidates the slot must not show.

use alloc::vec::Vec;

use super::{PARTS, RankInput, Reason};
use crate::model::IdKey;
use crate::table::Table;

#[derive(Clone, Copy)]
pub(super) struct Candidate {
    pub(super) score: f64,
    pub(super) reason: Reason,
    pub(super) reason_weight: f64,
    /// Trend prior, when the item trends (filled in once the pool is complete).
    pub(super) prior: Option<f64>,
    pub(super) excluded: bool,
    /// `score` by [`ScoreParts`] field.
    pub(super) parts: [f64; PARTS],
}

/// The candidates gathered so far, in first-seen order, with a hash index over their ids.
/// Every contribution to a candidate is added in the order it is gathered, so its score is
/// the same float sum whatever the index looks like; nothing is ever read out in hash order,
/// and the final order is a total order (score, then id).
pub(super) struct Pool<'a> {
    pub(super) ids: Vec<&'a str>,
    pub(super) keys: Vec<IdKey>,
    pub(super) candidates: Vec<Candidate>,
    pub(super) index: Table,
}

impl<'a> Pool<'a> {
    /// A pool sized for about `n` candidates (it grows past them).
    pub(super) fn with_capacity(n: usize) -> Self {
        Pool {
            ids: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            candidates: Vec::with_capacity(n),
            index: Table::with_capacity(n),
        }
    }

    #[inline]
    fn position(&self, item: &str, key: &IdKey) -> Option<usize> {
        self.index.find(key.hash().get(), |i| {
            self.keys[i].key().matches(key.key(), item, || self.ids[i])
        })
    }

    pub(super) fn get_mut(&mut self, item: &str) -> Option<&mut Candidate> {
        let i = self.position(item, &IdKey::of(item))?;
        Some(&mut self.candidates[i])
    }

    pub(super) fn add(&mut self, item: &'a str, amount: f64, reason: Reason) {
        if !(amount.is_finite()) || amount <= 0.0 {
            return;
        }
        self.add_keyed(item, IdKey::of(item), amount, reason);
    }

    /// [`Pool::add`] of an item whose key is known (`key == IdKey::of(item)`).
    #[inline]
    pub(super) fn add_keyed(&mut self, item: &'a str, key: IdKey, amount: f64, reason: Reason) {
        if !(amount.is_finite()) || amount <= 0.0 {
            return;
        }
        let i = match self.position(item, &key) {
            Some(i) => i,
            None => {
                let i = self.ids.len();
                self.ids.push(item);
                self.keys.push(key);
                self.candidates.push(Candidate {
                    score: 0.0,
                    reason,
                    reason_weight: 0.0,
                    prior: None,
                    excluded: false,
                    parts: [0.0; PARTS],
                });
                let keys = &self.keys;
                self.index
                    .insert(key.hash().get(), i, |j| keys[j].hash().get());
                i
            }
        };
        let c = &mut self.candidates[i];
        c.score += amount;
        c.parts[reason.part()] += amount;
        if amount > c.reason_weight {
            c.reason = reason;
            c.reason_weight = amount;
        }
    }
}

/// Marks the candidates the slot must not show: the same set [`excluded`] describes.
pub(super) fn mark_exclusions(input: &RankInput<'_>, pool: &mut Pool<'_>, hide_seen: bool) {
    let mut mark = |item: &str| {
        if let Some(c) = pool.get_mut(item) {
            c.excluded = true;
        }
    };
    input.page_item.into_iter().for_each(&mut mark);
    input.exclude.iter().for_each(|x| mark(x));
    if let Some(p) = input.profile {
        p.purchased.iter().for_each(|x| mark(&x.item));
        p.cart_items().for_each(&mut mark);
    }
    if hide_seen && let Some(s) = input.session {
        s.recent_items().for_each(&mut mark);
    }
}

/// Items the slot must not show (the reference [`mark_exclusions`] is checked against in
/// debug builds).
#[cfg(debug_assertions)]
pub(super) fn excluded(input: &RankInput<'_>, item: &str, hide_seen: bool) -> bool {
    if input.page_item == Some(item) || input.exclude.iter().any(|x| x == item) {
        return true;
    }
    if let Some(p) = input.profile
        && (p.has_purchased(item) || p.in_cart(item))
    {
        return true;
    }
    hide_seen
        && input
            .session
            .is_some_and(|s| s.recent_items().any(|r| r == item))
}

/// Candidates from the visitor's own history: neighbours of this session's items, neighbours
/// of the profile's top items, and the top items of the strongest categories.
///
/// Every session item up to `session_items` votes for its neighbours with its similarity,
/// weighted by recency in position and in time (as item-based session neighbourhoods do,
/// Ludewig & Jannach 2018; STAN, Garg et al. 2019), and the votes are divided by the sum of
/// the weights: a candidate similar to the whole session scores its similarity whatever the
/// session's length, so the session term stays on the scale the trend prior is weighed
/// against, and a weak session signal gives way to what sells.
pub(super) fn gather_personal<'a>(input: &RankInput<'a>, pool: &mut Pool<'a>) {
    let params = input.params;
    if let Some(session) = input.session {
        let items = &session.recent[..session.recent.len().min(params.session_items)];
        let mut position = 1.0;
        let weights: Vec<f64> = items
            .iter()
            .map(|r| {
                let age = input.now.saturating_sub(r.ts) as f64;
                let w = position * libm::exp2(-age / params.session_half_life_ms.max(1) as f64);
                position *= params.session_position_decay;
                w
            })
            .collect();
        let total: f64 = weights.iter().sum();
        if total > 0.0 && total.is_finite() {
            for (r, weight) in items.iter().zip(&weights) {
                let w = params.session_weight * weight / total;
                for (n, key) in input.neighbours.neighbour_list(&r.item).iter() {
                    pool.add_keyed(&n.item, key, w * f64::from(n.sim), Reason::SessionNeighbour);
                }
            }
        }
    }
    let Some(profile) = input.profile else {
        return;
    };
    let top = profile.top_items(input.now, input.profile_config, params.seed_items);
    if let Some(&(_, strongest)) = top.first() {
        for (item, affinity) in top {
            let weight = params.profile_weight * affinity / strongest;
            for (n, key) in input.neighbours.neighbour_list(item).iter() {
                pool.add_keyed(
                    &n.item,
                    key,
                    weight * f64::from(n.sim),
                    Reason::ProfileNeighbour,
                );
            }
        }
    }
    let categories =
        profile.top_categories(input.now, input.profile_config, params.seed_categories);
    if let Some(&(_, strongest)) = categories.first() {
        for (category, affinity) in categories {
            // Only the small seed share here: the affinity term itself is added to every
            // candidate of the category in `rank`.
            add_category_top(
                input,
                pool,
                category,
                0.5 * params.category_weight * affinity / strongest,
                Reason::CategoryAffinity,
            );
        }
    }
}

pub(super) fn add_category_top<'a>(
    input: &RankInput<'a>,
    pool: &mut Pool<'a>,
    category: &str,
    weight: f64,
    reason: Reason,
) {
    let top = input.trending.category(category);
    let n = top.len().min(input.params.per_category.max(input.count));
    for (i, item) in top.iter().take(n).enumerate() {
        // Linear rank decay keeps the category's own order.
        pool.add(item, weight * (1.0 - i as f64 / (2.0 * n as f64)), reason);
    }
}

pub(super) fn gather_trending<'a>(input: &RankInput<'a>, pool: &mut Pool<'a>, n: usize) {
    let top = input
        .trending
        .items
        .first()
        .map_or(0.0, |e| f64::from(e.score));
    if top <= 0.0 {
        return;
    }
    for e in input.trending.items.iter().take(n) {
        // A small seed weight: trending fills the slot, the trend prior (added in `rank` to
        // every candidate) does the ordering among equals.
        pool.add(&e.item, 1e-3 * f64::from(e.score) / top, Reason::Trending);
    }
}
