//! Ranking: which catalog items fill a slot (DESIGN.md, "Ranking, first version").
//!
//! `score = Σ similarity × recency decay + category affinity + trend prior`, over candidates
//! gathered from the session's recent items, the profile's top items, the user's strongest
//! categories and trending; minus exclusions (purchased, in cart, the page's own item, items
//! already seen this session for discovery strategies); a diversity cap per category; ties
//! broken by item id. Candidates are pooled in first-seen order behind a hash index, every
//! score is summed in gathering order, and the output is sorted by a total order (score, then
//! id), so nothing depends on hash or table order and the output is identical natively and in
//! wasm.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::model::{CatalogView, IdKey, NeighbourView, Trending};
use crate::profile::{Profile, ProfileConfig, ScoreAt};
use crate::session::{MAX_RECENT, Session};
use crate::table::{Table, hash_str, same};
use crate::{HOUR_MS, Millis};

/// How a slot chooses its items (`data-attune-strategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    ForYou,
    Similar,
    Trending,
    RecentlyViewed,
    Category,
}

impl Strategy {
    pub const ALL: [Strategy; 5] = [
        Strategy::ForYou,
        Strategy::Similar,
        Strategy::Trending,
        Strategy::RecentlyViewed,
        Strategy::Category,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::ForYou => "for-you",
            Strategy::Similar => "similar",
            Strategy::Trending => "trending",
            Strategy::RecentlyViewed => "recently-viewed",
            Strategy::Category => "category",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Why an item was picked: the strongest contribution to its score. Shown in the debug view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Similar to an item viewed this session.
    SessionNeighbour,
    /// Similar to one of the profile's top items.
    ProfileNeighbour,
    /// From one of the user's strongest categories.
    CategoryAffinity,
    /// Popular right now.
    Trending,
    /// Similar to the page's item.
    SimilarToPage,
    /// Viewed recently.
    RecentlyViewed,
    /// Popular in the requested category.
    CategoryTop,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SessionNeighbour => "session-neighbour",
            Reason::ProfileNeighbour => "profile-neighbour",
            Reason::CategoryAffinity => "category-affinity",
            Reason::Trending => "trending",
            Reason::SimilarToPage => "similar-to-page",
            Reason::RecentlyViewed => "recently-viewed",
            Reason::CategoryTop => "category-top",
        }
    }
}

impl Reason {
    /// The [`ScoreParts`] field a contribution with this reason adds to.
    fn part(self) -> usize {
        match self {
            Reason::SessionNeighbour => PART_SESSION,
            Reason::ProfileNeighbour => PART_PROFILE,
            Reason::CategoryAffinity => PART_CATEGORY,
            Reason::Trending => PART_TREND,
            Reason::SimilarToPage | Reason::RecentlyViewed | Reason::CategoryTop => PART_SLOT,
        }
    }
}

const PART_SESSION: usize = 0;
const PART_PROFILE: usize = 1;
const PART_SLOT: usize = 2;
const PART_CATEGORY: usize = 3;
const PART_TREND: usize = 4;
const PARTS: usize = 5;

/// What a pick's score is made of (the debug view shows it). The parts add up to the score,
/// up to the rounding of the order they are summed in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreParts {
    /// Similarity to this session's items (recency-weighted, normalized over the session).
    pub session: f64,
    /// Similarity to the profile's top items.
    pub profile: f64,
    /// The slot's own signal: similar to the page's item, recently viewed, category top.
    pub slot: f64,
    /// The visitor's affinity to the item's category.
    pub category: f64,
    /// Popularity: the trending seed and the trend prior.
    pub trend: f64,
}

impl ScoreParts {
    fn from_array(a: [f64; PARTS]) -> Self {
        ScoreParts {
            session: a[PART_SESSION],
            profile: a[PART_PROFILE],
            slot: a[PART_SLOT],
            category: a[PART_CATEGORY],
            trend: a[PART_TREND],
        }
    }

    pub fn total(&self) -> f64 {
        self.session + self.profile + self.slot + self.category + self.trend
    }
}

/// One ranked item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pick {
    pub item: String,
    pub score: f64,
    pub reason: Reason,
    #[serde(default)]
    pub parts: ScoreParts,
}

/// Ranking weights and limits. Part of the published [`crate::rules::Config`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RankParams {
    pub session_weight: f64,
    pub profile_weight: f64,
    pub category_weight: f64,
    pub trend_weight: f64,
    /// Half-life of a session item's pull on its neighbours.
    pub session_half_life_ms: Millis,
    /// Session items whose neighbours become candidates, most recent first.
    pub session_items: usize,
    /// Weight of a session item relative to the next more recent one (position recency:
    /// the `p`-th most recent item weighs `session_position_decay^p`), so the last click leads
    /// even when every item was seen at the same time.
    pub session_position_decay: f64,
    /// Profile top items whose neighbours become candidates.
    pub seed_items: usize,
    /// Strongest categories whose top items become candidates.
    pub seed_categories: usize,
    /// Category top items taken per strong category.
    pub per_category: usize,
    /// Trending items added as candidates.
    pub trending_candidates: usize,
    /// Most items of one category in one slot; `0` means half the slot (at least 1).
    pub diversity_cap: usize,
    /// Candidate pool bound; the weakest are dropped past it.
    pub max_candidates: usize,
}

impl Default for RankParams {
    fn default() -> Self {
        RankParams {
            // The session term is a weighted mean similarity (at most 1); the profile and
            // category terms are kept on that scale. The category term stays small: it is what
            // loosens the score bound of the bounded walk (`Scoring::choose_bounded`), and the
            // validation split shows no gain from more.
            session_weight: 1.0,
            profile_weight: 0.1,
            category_weight: 0.01,
            // Small: the session signal leads and popularity orders what it leaves open
            // (chosen on the validation split of the sample, `attune-lab eval --validation`).
            trend_weight: 0.02,
            session_half_life_ms: HOUR_MS,
            session_items: MAX_RECENT,
            session_position_decay: 0.95,
            seed_items: 5,
            seed_categories: 3,
            per_category: 10,
            trending_candidates: 50,
            diversity_cap: 0,
            max_candidates: 500,
        }
    }
}

/// Everything one ranking decision needs. The caller looks the data up; `rank` only decides.
pub struct RankInput<'a> {
    pub strategy: Strategy,
    pub count: usize,
    pub profile: Option<&'a Profile>,
    pub profile_config: &'a ProfileConfig,
    pub session: Option<&'a Session>,
    /// The item the page is about (product pages).
    pub page_item: Option<&'a str>,
    /// The category the slot is about (`category` strategy).
    pub category: Option<&'a str>,
    pub catalog: &'a dyn CatalogView,
    pub neighbours: &'a dyn NeighbourView,
    pub trending: &'a Trending,
    pub params: &'a RankParams,
    pub now: Millis,
    /// Items the slot must not show: the picks of the page's earlier slots, so a page never
    /// shows an item twice.
    pub exclude: &'a [String],
}

impl core::fmt::Debug for RankInput<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RankInput")
            .field("strategy", &self.strategy)
            .field("count", &self.count)
            .field("page_item", &self.page_item)
            .field("category", &self.category)
            .field("now", &self.now)
            .field("exclude", &self.exclude)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy)]
struct Candidate {
    score: f64,
    reason: Reason,
    reason_weight: f64,
    /// Trend prior, when the item trends (filled in once the pool is complete).
    prior: Option<f64>,
    excluded: bool,
    /// `score` by [`ScoreParts`] field.
    parts: [f64; PARTS],
}

/// The candidates gathered so far, in first-seen order, with a hash index over their ids.
/// Every contribution to a candidate is added in the order it is gathered, so its score is
/// the same float sum whatever the index looks like; nothing is ever read out in hash order,
/// and the final order is a total order (score, then id).
struct Pool<'a> {
    ids: Vec<&'a str>,
    keys: Vec<IdKey>,
    candidates: Vec<Candidate>,
    index: Table,
}

impl<'a> Pool<'a> {
    /// A pool sized for about `n` candidates (it grows past them).
    fn with_capacity(n: usize) -> Self {
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

    fn get_mut(&mut self, item: &str) -> Option<&mut Candidate> {
        let i = self.position(item, &IdKey::of(item))?;
        Some(&mut self.candidates[i])
    }

    fn add(&mut self, item: &'a str, amount: f64, reason: Reason) {
        if !(amount.is_finite()) || amount <= 0.0 {
            return;
        }
        self.add_keyed(item, IdKey::of(item), amount, reason);
    }

    /// [`Pool::add`] of an item whose key is known (`key == IdKey::of(item)`).
    #[inline]
    fn add_keyed(&mut self, item: &'a str, key: IdKey, amount: f64, reason: Reason) {
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

/// The profile's category scores, sorted by category (like the profile), with a hash index
/// for the per-candidate lookups.
struct CategoryScores<'a> {
    scores: Vec<(&'a str, f64)>,
    /// `None` when the list is not strictly sorted (a hand-made profile): then lookups are the
    /// binary search `Profile::category_affinity` does, duplicates and all.
    index: Option<Table>,
}

impl<'a> CategoryScores<'a> {
    fn new(scores: Vec<(&'a str, f64)>) -> Self {
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
    fn get(&self, category: &str) -> f64 {
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
struct Categories<'a> {
    names: Vec<&'a str>,
    affinity: Vec<f64>,
    index: Table,
}

impl<'a> Categories<'a> {
    fn new() -> Self {
        Categories {
            names: Vec::new(),
            affinity: Vec::new(),
            index: Table::with_capacity(16),
        }
    }

    /// The number of `name`, `affinity(name)` computing its term the first time it is seen.
    #[inline]
    fn number(&mut self, name: &'a str, affinity: impl FnOnce(&str) -> f64) -> usize {
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

/// Marks the candidates the slot must not show: the same set [`excluded`] describes.
fn mark_exclusions(input: &RankInput<'_>, pool: &mut Pool<'_>, hide_seen: bool) {
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
fn excluded(input: &RankInput<'_>, item: &str, hide_seen: bool) -> bool {
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

/// Ranks items for one slot. Returns at most `count` picks, best first, every one of them in
/// the catalog, none excluded, at most the diversity cap per category.
pub fn rank(input: &RankInput<'_>) -> Vec<Pick> {
    if input.count == 0 {
        return Vec::new();
    }
    let params = input.params;
    // A capacity hint only: the pool is usually about `max_candidates` strong for the
    // personal strategies, and far smaller for the others.
    let mut pool = Pool::with_capacity(match input.strategy {
        Strategy::ForYou | Strategy::Similar => params
            .max_candidates
            .saturating_add(params.trending_candidates)
            .saturating_add(params.seed_categories.saturating_mul(params.per_category))
            .saturating_add(params.session_items.min(MAX_RECENT).saturating_mul(16))
            .min(4096),
        _ => 64,
    });
    let mut hide_seen = true;
    match input.strategy {
        Strategy::ForYou => {
            gather_personal(input, &mut pool);
            gather_trending(input, &mut pool, params.trending_candidates);
        }
        Strategy::Similar => {
            if let Some(page) = input.page_item {
                for (n, key) in input.neighbours.neighbour_list(page).iter() {
                    pool.add_keyed(&n.item, key, f64::from(n.sim), Reason::SimilarToPage);
                }
                // Same-category popular items keep the slot full for items without neighbours.
                if let Some(cat) = input.catalog.item(page).map(|c| c.category.as_str()) {
                    add_category_top(input, &mut pool, cat, 0.05, Reason::CategoryTop);
                }
            }
            gather_trending(input, &mut pool, params.trending_candidates);
        }
        Strategy::Trending => gather_trending(input, &mut pool, params.trending_candidates),
        Strategy::RecentlyViewed => {
            hide_seen = false;
            if let Some(session) = input.session {
                let n = session.recent.len() as f64;
                for (i, r) in session.recent.iter().enumerate() {
                    pool.add(&r.item, 2.0 + (n - i as f64) / n, Reason::RecentlyViewed);
                }
            }
            if let Some(p) = input.profile {
                for (item, affinity) in
                    p.top_items(input.now, input.profile_config, params.seed_items * 2)
                {
                    pool.add(item, affinity / (1.0 + affinity), Reason::RecentlyViewed);
                }
            }
        }
        Strategy::Category => {
            if let Some(cat) = input.category {
                add_category_top(input, &mut pool, cat, 1.0, Reason::CategoryTop);
            }
            hide_seen = false;
        }
    }

    // Category affinity and the trend prior apply to every candidate that is in the catalog.
    let strongest = input
        .profile
        .map(|p| {
            p.top_categories(input.now, input.profile_config, 1)
                .first()
                .map_or(0.0, |c| c.1)
        })
        .unwrap_or(0.0);
    // Both terms are looked up per candidate, so their inputs are computed once here: the
    // profile's category scores (sorted by category, like the profile) and the trend prior of
    // the candidates that trend. The values are exactly `Profile::category_affinity` and
    // `Trending::prior`.
    let category_scores = match input.profile {
        Some(p) if strongest > 0.0 => {
            let at = ScoreAt::new(p.epoch, input.now, input.profile_config);
            CategoryScores::new(
                p.categories
                    .iter()
                    .map(|a| (a.key.as_str(), a.score_with(&at)))
                    .collect(),
            )
        }
        _ => CategoryScores::new(Vec::new()),
    };
    let top_trend = input
        .trending
        .items
        .first()
        .map_or(0.0, |e| f64::from(e.score));
    if top_trend > 0.0 {
        for e in &input.trending.items {
            if let Some(c) = pool.get_mut(&e.item)
                && c.prior.is_none()
            {
                // The first entry of an item counts, as in `Trending::prior`.
                c.prior = Some(f64::from(e.score) / top_trend);
            }
        }
    }
    mark_exclusions(input, &mut pool, hide_seen);
    let with_affinity = input.profile.is_some() && strongest > 0.0;
    let cap = match input.strategy {
        // These slots are about one category or the visitor's own trail: no cap.
        Strategy::Category | Strategy::RecentlyViewed => usize::MAX,
        _ if params.diversity_cap == 0 => input.count.div_ceil(2).max(1),
        _ => params.diversity_cap,
    };
    let scoring = Scoring {
        input,
        category_scores: &category_scores,
        strongest: if with_affinity { strongest } else { 0.0 },
        cap,
    };
    let chosen = match scoring.choose_bounded(&pool) {
        Some(chosen) => {
            // Category numbers are first-seen order, which differs between the two passes:
            // the picks are compared without them.
            #[cfg(debug_assertions)]
            {
                let key = |v: &[Scored]| -> Vec<(u64, u32, Reason)> {
                    v.iter()
                        .map(|s| (s.score.to_bits(), s.candidate, s.reason))
                        .collect()
                };
                debug_assert_eq!(key(&chosen), key(&scoring.choose_all(&pool, hide_seen)));
            }
            chosen
        }
        None => scoring.choose_all(&pool, hide_seen),
    };
    chosen
        .into_iter()
        .map(|s| {
            let c = &pool.candidates[s.candidate as usize];
            let mut parts = c.parts;
            if s.affinity > 0.0 {
                parts[PART_CATEGORY] += params.category_weight * s.affinity;
            }
            parts[PART_TREND] += params.trend_weight * c.prior.unwrap_or(0.0);
            Pick {
                item: pool.ids[s.candidate as usize].into(),
                score: s.score,
                reason: s.reason,
                parts: ScoreParts::from_array(parts),
            }
        })
        .collect()
}

/// How the pooled candidates are scored and walked into the slot.
struct Scoring<'i, 'a> {
    input: &'i RankInput<'a>,
    category_scores: &'i CategoryScores<'i>,
    /// The strongest category's score, or 0 when category affinity does not apply.
    strongest: f64,
    /// Most picks of one category.
    cap: usize,
}

impl<'a> Scoring<'_, 'a> {
    /// The affinity term of `name`.
    #[inline]
    fn affinity(&self, name: &str) -> f64 {
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
    fn score(&self, c: &Candidate, affinity: f64) -> f64 {
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
    fn resolve(
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

    /// The picks, best first, from every candidate: each is looked up in the catalog and
    /// scored, and the best `max_candidates` are walked under the diversity cap.
    fn choose_all(&self, pool: &Pool<'a>, hide_seen: bool) -> Vec<Scored> {
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
    fn choose_bounded(&self, pool: &Pool<'a>) -> Option<Vec<Scored>> {
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

/// A scored candidate on its way to the slot: its score, its place in the pool (for the id)
/// and its category's number in [`Categories`].
#[derive(Clone, Copy, Debug, PartialEq)]
struct Scored {
    score: f64,
    candidate: u32,
    category: u32,
    reason: Reason,
    /// The category's affinity term (before its weight).
    affinity: f64,
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
fn gather_personal<'a>(input: &RankInput<'a>, pool: &mut Pool<'a>) {
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

fn add_category_top<'a>(
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

fn gather_trending<'a>(input: &RankInput<'a>, pool: &mut Pool<'a>, n: usize) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventKind, SCHEMA_VERSION};
    use crate::model::{CatalogItem, CatalogShard, Neighbour, NeighbourShard, TrendEntry};
    use alloc::format;
    use alloc::vec;

    const NOW: Millis = 1_733_040_000_000;

    pub(crate) fn fixture() -> (CatalogShard, NeighbourShard, Trending) {
        let cat = |i: u32| if i < 10 { "Mugs" } else { "Bags" };
        let catalog = CatalogShard::from_items(
            (0..20)
                .map(|i| CatalogItem {
                    id: format!("i{i:02}"),
                    title: format!("Item {i}"),
                    url: format!("/p/i{i:02}.html"),
                    image: "/img/x.svg".into(),
                    price: "£1.00".into(),
                    category: cat(i).into(),
                })
                .collect(),
        );
        // i00..i04 are similar to each other, i10..i14 too.
        let mut lists = Vec::new();
        for group in [0u32, 10] {
            for a in group..group + 5 {
                let ns = (group..group + 5)
                    .filter(|b| *b != a)
                    .map(|b| Neighbour {
                        item: format!("i{b:02}"),
                        sim: 1.0 / (1.0 + (a as f32 - b as f32).abs()),
                    })
                    .collect();
                lists.push((format!("i{a:02}"), ns));
            }
        }
        let trending = Trending {
            items: (0..20)
                .rev()
                .map(|i| TrendEntry {
                    item: format!("i{i:02}"),
                    score: i as f32 + 1.0,
                })
                .collect(),
            by_category: vec![
                (
                    "Bags".into(),
                    (10..20).rev().map(|i| format!("i{i:02}")).collect(),
                ),
                (
                    "Mugs".into(),
                    (0..10).rev().map(|i| format!("i{i:02}")).collect(),
                ),
            ],
        };
        (catalog, NeighbourShard::from_lists(lists), trending)
    }

    fn input<'a>(
        strategy: Strategy,
        data: &'a (CatalogShard, NeighbourShard, Trending),
        profile: Option<&'a Profile>,
        session: Option<&'a Session>,
        params: &'a RankParams,
        cfg: &'a ProfileConfig,
    ) -> RankInput<'a> {
        RankInput {
            strategy,
            count: 4,
            profile,
            profile_config: cfg,
            session,
            page_item: None,
            category: None,
            catalog: &data.0,
            neighbours: &data.1,
            trending: &data.2,
            params,
            now: NOW,
            exclude: &[],
        }
    }

    #[test]
    fn cold_visitors_get_trending_with_diversity() {
        let data = fixture();
        let (params, cfg) = (RankParams::default(), ProfileConfig::default());
        let picks = rank(&input(Strategy::ForYou, &data, None, None, &params, &cfg));
        let ids: Vec<&str> = picks.iter().map(|p| p.item.as_str()).collect();
        // Bags trend higher, but the cap (2 of 4) lets two mugs in.
        assert_eq!(ids, ["i19", "i18", "i09", "i08"]);
        assert!(picks.iter().all(|p| p.reason == Reason::Trending));
    }

    #[test]
    fn session_items_pull_their_neighbours_in() {
        let data = fixture();
        let (params, cfg) = (RankParams::default(), ProfileConfig::default());
        let mut session = Session::fresh(NOW);
        session.record_item("i01", NOW - 60_000);
        let picks = rank(&input(
            Strategy::ForYou,
            &data,
            None,
            Some(&session),
            &params,
            &cfg,
        ));
        // i00 and i02 are equally similar to i01; the trend prior puts i02 first.
        let ids: Vec<&str> = picks.iter().map(|p| p.item.as_str()).collect();
        assert_eq!(&ids[..2], ["i02", "i00"]);
        assert_eq!(picks[0].reason, Reason::SessionNeighbour);
        assert!(
            picks.iter().all(|p| p.item != "i01"),
            "seen items are not recommended again"
        );
    }

    #[test]
    fn every_session_item_votes_and_the_more_recent_weigh_more() {
        let data = fixture();
        let (params, cfg) = (RankParams::default(), ProfileConfig::default());
        let mut session = Session::fresh(NOW);
        // i10 is the sixth most recent item; the five after it have no neighbours.
        for id in ["i10", "i05", "i06", "i07", "i08", "i09"] {
            session.record_item(id, NOW);
        }
        let picks = rank(&input(
            Strategy::ForYou,
            &data,
            None,
            Some(&session),
            &params,
            &cfg,
        ));
        assert_eq!(picks[0].item, "i11");
        assert_eq!(picks[0].reason, Reason::SessionNeighbour);
        // Two items seen at the same time: the later one's neighbours lead.
        let mut session = Session::fresh(NOW);
        session.record_item("i10", NOW);
        session.record_item("i01", NOW);
        let picks = rank(&input(
            Strategy::ForYou,
            &data,
            None,
            Some(&session),
            &params,
            &cfg,
        ));
        let ids: Vec<&str> = picks.iter().map(|p| p.item.as_str()).collect();
        assert_eq!(&ids[..3], ["i02", "i00", "i11"]);
    }

    #[test]
    fn the_exclusion_keeps_earlier_picks_off_the_slot() {
        let data = fixture();
        let (params, cfg) = (RankParams::default(), ProfileConfig::default());
        let earlier: Vec<String> = vec!["i19".into(), "i09".into()];
        let mut i = input(Strategy::Trending, &data, None, None, &params, &cfg);
        i.exclude = &earlier;
        let ids: Vec<String> = rank(&i).into_iter().map(|p| p.item).collect();
        assert_eq!(ids, ["i18", "i17", "i08", "i07"]);
    }

    #[test]
    fn score_parts_add_up_to_the_score() {
        let data = fixture();
        let (params, cfg) = (RankParams::default(), ProfileConfig::default());
        let mut profile = Profile::default();
        let e = Event {
            v: SCHEMA_VERSION,
            event_id: "e".into(),
            user: "u".into(),
            ts: NOW - 1_000,
            kind: EventKind::Purchase,
            item: Some("i12".into()),
            props: Default::default(),
        };
        profile.apply(&e, Some("Bags"), &cfg);
        let mut session = Session::fresh(NOW);
        session.record_item("i01", NOW - 60_000);
        let picks = rank(&input(
            Strategy::ForYou,
            &data,
            Some(&profile),
            Some(&session),
            &params,
            &cfg,
        ));
        assert_eq!(picks.len(), 4);
        for p in &picks {
            assert!(
                (p.parts.total() - p.score).abs() <= 1e-12 * p.score.abs().max(1.0),
                "{p:?}"
            );
            assert!(p.parts.trend > 0.0, "{p:?}");
        }
        assert!(
            picks
                .iter()
                .any(|p| p.parts.session > 0.0 && p.parts.profile == 0.0)
        );
        assert!(
            picks
                .iter()
                .any(|p| p.parts.profile > 0.0 && p.parts.category > 0.0)
        );
    }

    #[test]
    fn purchases_are_excluded_and_shape_the_profile_picks() {
        let data = fixture();
        let (params, cfg) = (RankParams::default(), ProfileConfig::default());
        let mut profile = Profile::default();
        let e = Event {
            v: SCHEMA_VERSION,
            event_id: "e".into(),
            user: "u".into(),
            ts: NOW - 1_000,
            kind: EventKind::Purchase,
            item: Some("i12".into()),
            props: Default::default(),
        };
        profile.apply(&e, Some("Bags"), &cfg);
        let picks = rank(&input(
            Strategy::ForYou,
            &data,
            Some(&profile),
            None,
            &params,
            &cfg,
        ));
        assert!(picks.iter().all(|p| p.item != "i12"));
        let ids: Vec<&str> = picks.iter().map(|p| p.item.as_str()).collect();
        assert_eq!(&ids[..2], ["i13", "i11"]);
        assert_eq!(picks[0].reason, Reason::ProfileNeighbour);
    }

    #[test]
    fn similar_excludes_the_page_and_ranks_by_similarity() {
        let data = fixture();
        let (params, cfg) = (RankParams::default(), ProfileConfig::default());
        let mut i = input(Strategy::Similar, &data, None, None, &params, &cfg);
        i.page_item = Some("i02");
        let ids: Vec<String> = rank(&i).into_iter().map(|p| p.item).collect();
        assert_eq!(&ids[..2], ["i03", "i01"]);
        assert!(!ids.contains(&"i02".into()));
    }

    #[test]
    fn recently_viewed_and_category() {
        let data = fixture();
        let (params, cfg) = (RankParams::default(), ProfileConfig::default());
        let mut session = Session::fresh(NOW);
        for id in ["i05", "i15", "i07"] {
            session.record_item(id, NOW);
        }
        let ids: Vec<String> = rank(&input(
            Strategy::RecentlyViewed,
            &data,
            None,
            Some(&session),
            &params,
            &cfg,
        ))
        .into_iter()
        .map(|p| p.item)
        .collect();
        assert_eq!(ids, ["i07", "i15", "i05"]);
        let mut i = input(Strategy::Category, &data, None, None, &params, &cfg);
        i.category = Some("Mugs");
        let picks = rank(&i);
        let ids: Vec<&str> = picks.iter().map(|p| p.item.as_str()).collect();
        assert_eq!(ids, ["i09", "i08", "i07", "i06"]);
    }
}
