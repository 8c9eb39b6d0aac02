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

mod candidates;
mod score;
mod select;
#[cfg(test)]
mod tests;

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::model::{CatalogView, NeighbourView, Trending};
use crate::profile::{Profile, ProfileConfig, ScoreAt};
use crate::session::{MAX_RECENT, Session};
use crate::{HOUR_MS, Millis};

use candidates::{Pool, add_category_top, gather_personal, gather_trending, mark_exclusions};
#[cfg(debug_assertions)]
use score::Scored;
use score::{CategoryScores, Scoring};

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
