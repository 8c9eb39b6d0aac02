//! How the scored candidates are walked into the slot under the diversity cap and the
//! `max_candidates` cut-off: the full pass and the bounded walk that looks up only as many
//! candidates as the picks need.

use alloc::vec::Vec;

use super::candidates::Pool;
#[cfg(debug_assertions)]
use super::candidates::excluded;
use super::score::{Categories, Scored, Scoring};

impl<'a> Scoring<'_, 'a> {
    /// The picks, best first, from every candidate: each is looked up in the catalog and
    /// scored, and the best `max_candidates` are walked under the diversity cap.
    pub(super) fn choose_all(&self, pool: &Pool<'a>, hide_seen: bool) -> Vec<Scored> {
        let input = self.input;
        let _ = hide_seen;
        let mut categories = Categories::new();
        let mut scored: Vec<Scored> = Vec::with_capacity(pool.candidates.len());
        for (i, c) in pool.candidates.iter().enumerate() {
            #[cfg(debug_assertions)]
            debug_assert_eq!(
                c.excluded,
                excluded(input, pool.ids[i], hide_seen),
                "{}",
                pool.ids[i]
            );
            if c.excluded {
                continue;
            }
            scored.extend(self.resolve(pool, &mut categories, i));
        }
        // Only the best `max_candidates` take part (the weakest are dropped past it).
        let limit = scored
            .len()
            .min(input.params.max_candidates.max(input.count));
        let mut per_category = alloc::vec![0usize; categories.names.len()];
        let mut picks = Vec::with_capacity(input.count);
        let ids = &pool.ids;
        let order = |a: &Scored, b: &Scored| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| ids[a.candidate as usize].cmp(ids[b.candidate as usize]))
        };
        // Walk the candidates best first. The order is total (ids are unique), so sorting only
        // a best prefix first, and the rest when the diversity cap skips too many, visits
        // exactly the order a full sort gives.
        let mut sorted = 0;
        while sorted < limit && picks.len() < input.count {
            let remaining = &mut scored[sorted..];
            let take = remaining.len().min((4 * input.count).max(32));
            if take < remaining.len() {
                remaining.select_nth_unstable_by(take - 1, order);
            }
            remaining[..take].sort_unstable_by(order);
            let end = (sorted + take).min(limit);
            for s in &scored[sorted..end] {
                let used = &mut per_category[s.category as usize];
                if *used >= self.cap {
                    continue;
                }
                *used += 1;
                picks.push(*s);
                if picks.len() == input.count {
                    break;
                }
            }
            sorted = end;
        }
        picks
    }

    /// [`Scoring::choose_all`] without looking up every candidate: each candidate's score has
    /// an upper bound known before its catalog lookup (its category term at the strongest
    /// affinity any category has), so candidates are looked up in the order of their bounds,
    /// and a looked-up candidate whose score beats every bound still unresolved has its
    /// final place in the order. The walk under the diversity cap only ever reads such a
    /// settled prefix, and the `max_candidates` cut-off is a position in that same order, so
    /// the picks are exactly those of the full pass. `None` when the bound does not hold
    /// (negative or non-finite weights or scores): then the caller takes the full pass.
    pub(super) fn choose_bounded(&self, pool: &Pool<'a>) -> Option<Vec<Scored>> {
        let input = self.input;
        let params = input.params;
        if !(params.category_weight >= 0.0
            && params.trend_weight >= 0.0
            && params.category_weight.is_finite()
            && params.trend_weight.is_finite())
        {
            return None;
        }
        let mut top_affinity = 0.0f64;
        if self.strongest > 0.0 {
            for &(_, s) in &self.category_scores.scores {
                let a = s / self.strongest;
                if !a.is_finite() {
                    return None;
                }
                top_affinity = top_affinity.max(a);
            }
        }
        let mut bounds: Vec<(f64, u32)> = Vec::with_capacity(pool.candidates.len());
        for (i, c) in pool.candidates.iter().enumerate() {
            if c.excluded {
                continue;
            }
            let bound = self.score(c, top_affinity);
            if !bound.is_finite() {
                return None;
            }
            bounds.push((bound, i as u32));
        }
        let limit = params.max_candidates.max(input.count);
        let ids = &pool.ids;
        let order = |a: &Scored, b: &Scored| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| ids[a.candidate as usize].cmp(ids[b.candidate as usize]))
        };
        let by_bound = |a: &(f64, u32), b: &(f64, u32)| b.0.total_cmp(&a.0);
        let mut categories = Categories::new();
        let mut resolved: Vec<Scored> = Vec::with_capacity((4 * input.count).max(32));
        let mut per_category: Vec<usize> = Vec::new();
        let mut picks: Vec<Scored> = Vec::with_capacity(input.count);
        let mut done = 0;
        let mut batch = (4 * input.count).max(32);
        loop {
            let remaining = &mut bounds[done..];
            let take = remaining.len().min(batch);
            if take < remaining.len() {
                remaining.select_nth_unstable_by(take - 1, by_bound);
            }
            for &(_, i) in &remaining[..take] {
                resolved.extend(self.resolve(pool, &mut categories, i as usize));
            }
            done += take;
            // Every unresolved candidate scores at most this.
            let open = bounds[done..]
                .iter()
                .map(|b| b.0)
                .reduce(f64::max)
                .unwrap_or(f64::NEG_INFINITY);
            resolved.sort_unstable_by(order);
            per_category.clear();
            per_category.resize(categories.names.len(), 0);
            picks.clear();
            // Positions of the order walked so far, every one of them settled.
            let mut walked = 0;
            for s in &resolved {
                if walked == limit || picks.len() == input.count || s.score <= open {
                    // Past the cut-off, the slot full, or an unresolved candidate may
                    // come first.
                    break;
                }
                walked += 1;
                let used = &mut per_category[s.category as usize];
                if *used >= self.cap {
                    continue;
                }
                *used += 1;
                picks.push(*s);
            }
            if picks.len() == input.count || walked == limit || done == bounds.len() {
                return Some(picks);
            }
            batch = batch.saturating_mul(2);
        }
    }
}
