//! Per-user profiles: decayed item and category affinities, purchases, cart, sessions.
//!
//! [`Profile::apply`] is a pure function of the profile and one event. For events inside the
//! allowed lateness it is order-independent (see [`crate::decay`]): applying one set of events
//! in any order gives the same profile, bit for bit. The profile stays within a size budget by
//! dropping its weakest tail deterministically.

use alloc::vec::Vec;
use smol_str::SmolStr;

use serde::{Deserialize, Serialize};

use crate::decay::{Acc, Contribution, DecayAt, epoch_of};
use crate::event::{Event, EventKind};
use crate::{DAY_MS, MINUTE_MS, Millis};

/// How fast a kind's weight fades.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecayClass {
    /// Browsing intent: views, clicks, cart changes.
    Short,
    /// Lasting taste: purchases.
    Long,
}

/// What one event kind adds to the item and category it touches.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct KindWeight {
    pub weight: f32,
    pub class: DecayClass,
}

/// Tunables of profile building. Part of the published [`crate::rules::Config`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProfileConfig {
    pub short_half_life_ms: Millis,
    pub long_half_life_ms: Millis,
    pub view: KindWeight,
    pub click: KindWeight,
    pub add_to_cart: KindWeight,
    pub remove_from_cart: KindWeight,
    pub purchase: KindWeight,
    pub search: KindWeight,
    pub impression: KindWeight,
    pub max_items: usize,
    pub max_categories: usize,
    pub max_purchased: usize,
    pub max_cart: usize,
    pub max_sessions: usize,
    pub session_gap_ms: Millis,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        let short = |weight| KindWeight {
            weight,
            class: DecayClass::Short,
        };
        ProfileConfig {
            short_half_life_ms: 3 * DAY_MS,
            long_half_life_ms: 60 * DAY_MS,
            view: short(1.0),
            click: short(1.5),
            add_to_cart: short(3.0),
            remove_from_cart: short(-2.0),
            purchase: KindWeight {
                weight: 5.0,
                class: DecayClass::Long,
            },
            search: short(0.0),
            impression: short(0.0),
            max_items: 24,
            max_categories: 8,
            max_purchased: 32,
            max_cart: 16,
            max_sessions: 8,
            session_gap_ms: 30 * MINUTE_MS,
        }
    }
}

impl ProfileConfig {
    pub fn weight(&self, kind: EventKind) -> KindWeight {
        match kind {
            EventKind::View => self.view,
            EventKind::Click => self.click,
            EventKind::AddToCart => self.add_to_cart,
            EventKind::RemoveFromCart => self.remove_from_cart,
            EventKind::Purchase => self.purchase,
            EventKind::Search => self.search,
            EventKind::Impression => self.impression,
        }
    }

    fn half_life(&self, class: DecayClass) -> Millis {
        match class {
            DecayClass::Short => self.short_half_life_ms,
            DecayClass::Long => self.long_half_life_ms,
        }
    }
}

/// A decayed affinity to one key (an item id or a category name), in two decay classes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affinity {
    #[serde(rename = "k")]
    pub key: SmolStr,
    #[serde(rename = "s", default, skip_serializing_if = "Acc::is_zero")]
    pub short: Acc,
    #[serde(rename = "l", default, skip_serializing_if = "Acc::is_zero")]
    pub long: Acc,
}

impl Affinity {
    pub fn score(&self, epoch: u32, now: Millis, cfg: &ProfileConfig) -> f64 {
        self.score_with(&ScoreAt::new(epoch, now, cfg))
    }

    /// [`Affinity::score`] with the decay factors computed once for a whole list.
    #[inline]
    pub fn score_with(&self, at: &ScoreAt) -> f64 {
        self.short.value_with(&at.short) + self.long.value_with(&at.long)
    }
}

/// The decay factors of both classes at one `(epoch, now)`: scoring many affinities at the
/// same moment costs four `exp2` calls in all instead of four per affinity. Bit-identical
/// to [`Affinity::score`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoreAt {
    short: DecayAt,
    long: DecayAt,
}

impl ScoreAt {
    pub fn new(epoch: u32, now: Millis, cfg: &ProfileConfig) -> Self {
        ScoreAt {
            short: DecayAt::new(epoch, now, cfg.short_half_life_ms),
            long: DecayAt::new(epoch, now, cfg.long_half_life_ms),
        }
    }
}

/// Last time an item was put in and taken out of the cart. It is in the cart while the last
/// add is newer than the last removal; keeping maxima (not a set) keeps this order-independent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartEntry {
    #[serde(rename = "k")]
    pub item: SmolStr,
    #[serde(rename = "a")]
    pub added: Millis,
    #[serde(rename = "r")]
    pub removed: Millis,
}

/// An item bought, with the latest purchase time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purchased {
    #[serde(rename = "k")]
    pub item: SmolStr,
    #[serde(rename = "t")]
    pub last: Millis,
}

/// One visit: the first and last event time of a run of events with gaps under the session gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Visit(pub Millis, pub Millis);

/// A user's profile. Lists are kept sorted by key so lookups are binary searches and equal
/// profiles serialize to equal bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Profile {
    /// Number of events applied; increases by one with each, so it orders snapshots.
    pub version: u64,
    pub first_seen: Millis,
    pub last_seen: Millis,
    /// Decay epoch the accumulators are relative to.
    pub epoch: u32,
    pub items: Vec<Affinity>,
    pub categories: Vec<Affinity>,
    pub purchased: Vec<Purchased>,
    pub cart: Vec<CartEntry>,
    pub purchases: u32,
    /// Most recent visits, oldest first.
    pub visits: Vec<Visit>,
    /// Visits dropped from `visits` by the size budget.
    pub older_visits: u32,
}

fn upsert<'a, T>(
    list: &'a mut Vec<T>,
    key: &str,
    make: impl FnOnce() -> T,
    key_of: impl Fn(&T) -> &str,
) -> &'a mut T {
    let index = match list.binary_search_by(|e| key_of(e).cmp(key)) {
        Ok(i) => i,
        Err(i) => {
            list.insert(i, make());
            i
        }
    };
    &mut list[index]
}

impl Profile {
    pub fn is_empty(&self) -> bool {
        self.version == 0
    }

    /// Applies one validated event. `category` is the item's category from the catalog, if
    /// known. There is deliberately no `now`: the result depends on the events alone, which is
    /// what makes it order-independent and replayable.
    ///
    /// Impressions are records of what Attune showed, not of what the visitor did: they feed
    /// exposure counts and the model, and leave the profile (and its version) untouched, so a
    /// page view alone never causes a profile write to KV.
    pub fn apply(&mut self, event: &Event, category: Option<&str>, cfg: &ProfileConfig) {
        if event.kind == EventKind::Impression {
            return;
        }
        let ts = event.ts;
        let ts_epoch = epoch_of(ts);
        if self.is_empty() {
            self.epoch = ts_epoch;
            self.first_seen = ts;
            self.last_seen = ts;
        } else if ts_epoch > self.epoch {
            let (from, to) = (self.epoch, ts_epoch);
            for a in self.items.iter_mut().chain(self.categories.iter_mut()) {
                a.short.advance(from, to, cfg.short_half_life_ms);
                a.long.advance(from, to, cfg.long_half_life_ms);
            }
            self.epoch = ts_epoch;
        }
        self.version += 1;
        self.first_seen = self.first_seen.min(ts);
        self.last_seen = self.last_seen.max(ts);
        self.record_visit(ts, cfg);

        let kw = cfg.weight(event.kind);
        if let Some(item) = event.item.as_deref() {
            if kw.weight != 0.0 {
                // The same contribution for the item and its category: computed once.
                let contribution = Contribution::new(
                    self.epoch,
                    ts,
                    f64::from(kw.weight),
                    cfg.half_life(kw.class),
                );
                let add = |list: &mut Vec<Affinity>, key: &str| {
                    let a = upsert(
                        list,
                        key,
                        || Affinity {
                            key: key.into(),
                            ..Affinity::default()
                        },
                        |a| &a.key,
                    );
                    let acc = match kw.class {
                        DecayClass::Short => &mut a.short,
                        DecayClass::Long => &mut a.long,
                    };
                    acc.add_contribution(contribution);
                };
                add(&mut self.items, item);
                if let Some(category) = category.filter(|c| !c.is_empty()) {
                    add(&mut self.categories, category);
                }
            }
            match event.kind {
                EventKind::AddToCart => {
                    let e = self.cart_entry(item);
                    e.added = e.added.max(ts);
                }
                EventKind::RemoveFromCart => {
                    let e = self.cart_entry(item);
                    e.removed = e.removed.max(ts);
                }
                EventKind::Purchase => {
                    self.purchases += 1;
                    let p = upsert(
                        &mut self.purchased,
                        item,
                        || Purchased {
                            item: item.into(),
                            last: 0,
                        },
                        |p| &p.item,
                    );
                    p.last = p.last.max(ts);
                    // A purchase takes the item out of the cart.
                    let e = self.cart_entry(item);
                    e.removed = e.removed.max(ts);
                }
                _ => {}
            }
        }
        self.enforce_budget(cfg);
    }

    fn cart_entry(&mut self, item: &str) -> &mut CartEntry {
        upsert(
            &mut self.cart,
            item,
            || CartEntry {
                item: item.into(),
                added: 0,
                removed: 0,
            },
            |c| &c.item,
        )
    }

    fn record_visit(&mut self, ts: Millis, cfg: &ProfileConfig) {
        let gap = cfg.session_gap_ms;
        // Visits are the connected runs of event times with gaps <= `gap`: the union does not
        // depend on the order the times arrive in.
        let mut merged = Visit(ts, ts);
        self.visits.retain(|v| {
            let touches =
                v.0 <= merged.1.saturating_add(gap) && merged.0 <= v.1.saturating_add(gap);
            if touches {
                merged = Visit(merged.0.min(v.0), merged.1.max(v.1));
            }
            !touches
        });
        let at = self.visits.partition_point(|v| v.0 < merged.0);
        self.visits.insert(at, merged);
        while self.visits.len() > cfg.max_sessions.max(1) {
            self.visits.remove(0);
            self.older_visits += 1;
        }
    }

    /// Number of visits (sessions) seen.
    pub fn visit_count(&self) -> u32 {
        self.older_visits + self.visits.len() as u32
    }

    pub fn has_purchased(&self, item: &str) -> bool {
        self.purchased
            .binary_search_by(|p| p.item.as_str().cmp(item))
            .is_ok()
    }

    pub fn in_cart(&self, item: &str) -> bool {
        self.cart
            .binary_search_by(|c| c.item.as_str().cmp(item))
            .is_ok_and(|i| self.cart[i].added > self.cart[i].removed)
    }

    /// Items currently in the cart, sorted by id.
    pub fn cart_items(&self) -> impl Iterator<Item = &str> {
        self.cart
            .iter()
            .filter(|c| c.added > c.removed)
            .map(|c| c.item.as_str())
    }

    /// The strongest `n` positive affinities at `now`, strongest first, ties by key.
    pub fn top<'a>(
        list: &'a [Affinity],
        epoch: u32,
        now: Millis,
        cfg: &ProfileConfig,
        n: usize,
    ) -> Vec<(&'a str, f64)> {
        let at = ScoreAt::new(epoch, now, cfg);
        let mut scored: Vec<(&str, f64)> = list
            .iter()
            .map(|a| (a.key.as_str(), a.score_with(&at)))
            .filter(|(_, s)| *s > 0.0)
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        scored.truncate(n);
        scored
    }

    pub fn top_items(&self, now: Millis, cfg: &ProfileConfig, n: usize) -> Vec<(&str, f64)> {
        Self::top(&self.items, self.epoch, now, cfg, n)
    }

    pub fn top_categories(&self, now: Millis, cfg: &ProfileConfig, n: usize) -> Vec<(&str, f64)> {
        Self::top(&self.categories, self.epoch, now, cfg, n)
    }

    /// Affinity to one category at `now` (0 when unknown).
    pub fn category_affinity(&self, category: &str, now: Millis, cfg: &ProfileConfig) -> f64 {
        self.categories
            .binary_search_by(|a| a.key.as_str().cmp(category))
            .map_or(0.0, |i| self.categories[i].score(self.epoch, now, cfg))
    }

    /// Drops the weakest tail of every list over its budget. "Weakest" is judged at
    /// `last_seen`, never at a wall clock, so the result depends on the events alone.
    fn enforce_budget(&mut self, cfg: &ProfileConfig) {
        let (epoch, at) = (self.epoch, self.last_seen);
        for (list, max) in [
            (&mut self.items, cfg.max_items),
            (&mut self.categories, cfg.max_categories),
        ] {
            if list.len() == max + 1 {
                // The usual case (one key was just added): drop the single weakest, which is
                // what the general case below keeps out, without allocating.
                let at = ScoreAt::new(epoch, at, cfg);
                let mut weakest = (f64::INFINITY, 0);
                for (i, a) in list.iter().enumerate() {
                    let score = a.score_with(&at);
                    // Ties drop the larger key (the later position).
                    if i == 0 || score.total_cmp(&weakest.0).is_le() {
                        weakest = (score, i);
                    }
                }
                list.remove(weakest.1);
            } else if list.len() > max {
                let at = ScoreAt::new(epoch, at, cfg);
                let mut ranked: Vec<(f64, usize)> = list
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (a.score_with(&at), i))
                    .collect();
                // Strongest first; equal scores keep the smaller key.
                ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                retain_positions(list, ranked[..max].iter().map(|r| r.1).collect());
            }
        }
        if self.purchased.len() > cfg.max_purchased {
            drop_oldest(&mut self.purchased, cfg.max_purchased, |p| p.last);
        }
        if self.cart.len() > cfg.max_cart {
            // Entries no longer in the cart go first, then the oldest.
            drop_oldest(&mut self.cart, cfg.max_cart, |c| {
                if c.added > c.removed {
                    Millis::MAX / 2 + c.added
                } else {
                    c.added.max(c.removed)
                }
            });
        }
    }
}

/// Keeps the `max` entries with the largest `age_key` (ties keep the smaller position, i.e. the
/// smaller key in a sorted list).
fn drop_oldest<T>(list: &mut Vec<T>, max: usize, age_key: impl Fn(&T) -> Millis) {
    if list.len() == max + 1 {
        // One over (the usual case): drop the single oldest, ties the later position.
        let mut oldest = (Millis::MAX, 0);
        for (i, e) in list.iter().enumerate() {
            let k = age_key(e);
            if k <= oldest.0 {
                oldest = (k, i);
            }
        }
        list.remove(oldest.1);
        return;
    }
    let mut ranked: Vec<(Millis, usize)> = list
        .iter()
        .enumerate()
        .map(|(i, e)| (age_key(e), i))
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    retain_positions(list, ranked[..max].iter().map(|r| r.1).collect());
}

/// Keeps the entries at the positions in `keep` (in any order), in their list order.
fn retain_positions<T>(list: &mut Vec<T>, mut keep: Vec<usize>) {
    keep.sort_unstable();
    let mut index = 0;
    list.retain(|_| {
        let kept = keep.binary_search(&index).is_ok();
        index += 1;
        kept
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::SCHEMA_VERSION;
    use alloc::format;

    const T0: Millis = 1_733_040_000_000;

    fn ev(n: u32, ts: Millis, kind: EventKind, item: &str) -> Event {
        Event {
            v: SCHEMA_VERSION,
            event_id: format!("e{n}").into(),
            user: "u".into(),
            ts,
            kind,
            item: Some(item.into()),
            props: Default::default(),
        }
    }

    #[test]
    fn purchases_weigh_more_and_last_longer_than_views() {
        let cfg = ProfileConfig::default();
        let mut p = Profile::default();
        p.apply(&ev(1, T0, EventKind::View, "a"), Some("Mugs"), &cfg);
        p.apply(&ev(2, T0, EventKind::Purchase, "b"), Some("Bags"), &cfg);
        let top = p.top_items(T0, &cfg, 5);
        assert_eq!(top[0].0, "b");
        let later = p.top_items(T0 + 30 * DAY_MS, &cfg, 5);
        let ratio_now = top[0].1 / top[1].1;
        let ratio_later = later[0].1 / later[1].1;
        assert!(ratio_later > ratio_now * 10.0, "{ratio_now} {ratio_later}");
        assert!(p.has_purchased("b") && !p.has_purchased("a"));
        assert_eq!(p.purchases, 1);
        assert_eq!(p.version, 2);
        assert_eq!(p.top_categories(T0, &cfg, 1)[0].0, "Bags");
    }

    #[test]
    fn cart_follows_the_latest_action_whatever_the_order() {
        let cfg = ProfileConfig::default();
        let events = [
            ev(1, T0, EventKind::AddToCart, "a"),
            ev(2, T0 + 10, EventKind::RemoveFromCart, "a"),
            ev(3, T0 + 20, EventKind::AddToCart, "b"),
            ev(4, T0 + 30, EventKind::AddToCart, "c"),
            ev(5, T0 + 40, EventKind::Purchase, "c"),
        ];
        let mut forward = Profile::default();
        events.iter().for_each(|e| forward.apply(e, None, &cfg));
        let mut backward = Profile::default();
        events
            .iter()
            .rev()
            .for_each(|e| backward.apply(e, None, &cfg));
        assert_eq!(forward, backward);
        assert_eq!(forward.cart_items().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn visits_split_on_the_session_gap() {
        let cfg = ProfileConfig::default();
        let mut p = Profile::default();
        for (i, ts) in [
            T0,
            T0 + 10 * MINUTE_MS,
            T0 + 2 * 60 * MINUTE_MS,
            T0 + 25 * MINUTE_MS,
        ]
        .into_iter()
        .enumerate()
        {
            p.apply(&ev(i as u32, ts, EventKind::View, "a"), None, &cfg);
        }
        assert_eq!(p.visit_count(), 2);
    }

    #[test]
    fn budget_drops_the_weakest_items() {
        let cfg = ProfileConfig {
            max_items: 3,
            ..ProfileConfig::default()
        };
        let mut p = Profile::default();
        for i in 0..6u32 {
            let kind = if i % 2 == 0 {
                EventKind::Purchase
            } else {
                EventKind::View
            };
            p.apply(
                &ev(i, T0 + u64::from(i), kind, &format!("i{i}")),
                None,
                &cfg,
            );
        }
        let keys: Vec<&str> = p.items.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, ["i0", "i2", "i4"]);
    }
}
