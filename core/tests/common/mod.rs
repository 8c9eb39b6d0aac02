//! Deterministic fixtures shared by the integration tests and the benchmarks.
//!
//! Everything here is a pure function of its arguments: no clock, no randomness, so golden
//! bytes and vectors built from it are stable.
#![allow(dead_code)]

use attune_core::event::{Event, EventKind, SCHEMA_VERSION};
use attune_core::model::{
    CatalogIndex, CatalogItem, CatalogShard, Manifest, Neighbour, NeighbourIndex, NeighbourShard,
    TrendEntry,
};
use attune_core::profile::{Profile, ProfileConfig};
use attune_core::rules::{Arm, Config, Experiment, Predicate, Segment, SlotRule, VariantRule};
use attune_core::session::Session;
use attune_core::{DAY_MS, Millis, Strategy};

/// A fixed "now": 2024-12-01T08:00:00Z.
pub const T0: Millis = 1_733_040_000_000;

pub const CATEGORIES: [&str; 5] = ["Bags", "Candles & Lights", "Kitchen", "Mugs", "Toys"];

pub fn event(n: u64, ts: Millis, kind: EventKind, item: &str) -> Event {
    Event {
        v: SCHEMA_VERSION,
        event_id: format!("e{n}").into(),
        user: "u1".into(),
        ts,
        kind,
        item: (kind != EventKind::Search || !item.is_empty()).then(|| item.into()),
        props: Default::default(),
    }
}

/// Item id `n` in the fixture catalogs: `I00000`, `I00001`, …
pub fn item_id(n: u32) -> String {
    format!("I{n:05}")
}

pub fn category_of(n: u32) -> &'static str {
    CATEGORIES[(n % CATEGORIES.len() as u32) as usize]
}

/// A catalog of `n` items, categories round-robin.
pub fn catalog(n: u32) -> CatalogShard {
    CatalogShard::from_items(
        (0..n)
            .map(|i| CatalogItem {
                id: item_id(i),
                title: format!("Product {i}"),
                url: format!("/p/{}.html", item_id(i)),
                image: format!(
                    "/img/{}.svg",
                    category_of(i).to_lowercase().replace(' ', "-")
                ),
                price: format!("£{}.{:02}", 1 + i % 20, (i * 7) % 100),
                category: category_of(i).into(),
            })
            .collect(),
    )
}

/// `k` neighbours per item, similarity falling with distance; a pure function of `(n, k)`.
pub fn neighbours(n: u32, k: u32) -> NeighbourShard {
    NeighbourShard::from_lists(
        (0..n)
            .map(|a| {
                let list = (1..=k)
                    .map(|d| {
                        // A stride co-prime with typical sizes spreads neighbours around.
                        let b = (a + d * 37 + d * d) % n;
                        Neighbour {
                            item: item_id(b),
                            sim: 1.0 / (1.0 + d as f32 * 0.25),
                        }
                    })
                    .filter(|nb| nb.item != item_id(a))
                    .collect();
                (item_id(a), list)
            })
            .collect(),
    )
}

/// The `top` most popular of `n` items, plus per-category lists.
pub fn trending(n: u32, top: u32, per_category: u32) -> Trending {
    let items: Vec<TrendEntry> = (0..top.min(n))
        .map(|r| TrendEntry {
            item: item_id((r * 53) % n),
            score: 1000.0 / (1.0 + r as f32),
        })
        .collect();
    let mut by_category: Vec<(String, Vec<String>)> = CATEGORIES
        .iter()
        .enumerate()
        .map(|(c, name)| {
            let list = (0..per_category)
                .map(|j| {
                    c as u32
                        + CATEGORIES.len() as u32 * (j * 11 % (n / CATEGORIES.len() as u32).max(1))
                })
                .filter(|i| *i < n)
                .map(item_id)
                .collect();
            ((*name).into(), list)
        })
        .collect();
    by_category.sort_by(|a, b| a.0.cmp(&b.0));
    Trending { items, by_category }
}

pub use attune_core::model::Trending;

/// The events of a typical engaged user over two weeks, straddling decay epochs.
pub fn typical_events(n_items: u32) -> Vec<(Event, Option<&'static str>)> {
    let kinds = [
        EventKind::View,
        EventKind::View,
        EventKind::Click,
        EventKind::View,
        EventKind::AddToCart,
        EventKind::View,
        EventKind::Purchase,
        EventKind::RemoveFromCart,
        EventKind::Impression,
        EventKind::Search,
    ];
    (0..60u64)
        .map(|i| {
            let it = ((i * 7) % 40) as u32 % n_items;
            let kind = kinds[(i % kinds.len() as u64) as usize];
            let ts = T0 - 14 * DAY_MS + i * (5 * 3_600_000 + 17_000);
            let item = if kind == EventKind::Search {
                String::new()
            } else {
                item_id(it)
            };
            (event(i, ts, kind, &item), Some(category_of(it)))
        })
        .collect()
}

pub fn profile_from(events: &[(Event, Option<&str>)], cfg: &ProfileConfig) -> Profile {
    let mut p = Profile::default();
    for (e, c) in events {
        p.apply(e, *c, cfg);
    }
    p
}

/// A typical profile (default budget), about 1–2 KiB encoded.
pub fn typical_profile() -> Profile {
    profile_from(&typical_events(1000), &ProfileConfig::default())
}

pub fn session(now: Millis, items: &[u32]) -> Session {
    let mut s = Session::fresh(now - 20 * 60_000);
    for (i, it) in items.iter().enumerate() {
        s.touch(
            now - (items.len() - i) as u64 * 60_000,
            attune_core::session::DEFAULT_GAP_MS,
        );
        s.record_item(&item_id(*it), now - (items.len() - i) as u64 * 60_000);
    }
    s
}

pub fn config() -> Config {
    let mut cfg = Config::default();
    cfg.segments.push(Segment {
        name: "mug-lovers".into(),
        all: vec![
            Predicate::CategoryAffinityAtLeast {
                category: "Mugs".into(),
                score: 2.5,
            },
            Predicate::Device {
                any_of: vec![attune_core::rules::DeviceClass::Mobile],
            },
            Predicate::Country {
                any_of: vec!["GB".into(), "IE".into()],
            },
        ],
    });
    cfg.slots.push(SlotRule {
        slot: "banner".into(),
        variants: vec![VariantRule {
            variant: "mugs".into(),
            segment: "mug-lovers".into(),
        }],
    });
    cfg.experiments.push(Experiment {
        id: "recs-2024-12".into(),
        slot: "recs".into(),
        traffic_bp: 5_000,
        control: "control".into(),
        arms: vec![
            Arm {
                name: "control".into(),
                weight: 1,
                variant: None,
                strategy: None,
            },
            Arm {
                name: "trending".into(),
                weight: 1,
                variant: None,
                strategy: Some(Strategy::Trending),
            },
        ],
        active: true,
    });
    cfg.rank.diversity_cap = 3;
    cfg.profile.max_items = 30;
    cfg
}

pub fn manifest() -> Manifest {
    let mut versions: Vec<(String, u64)> = (0..4u32)
        .flat_map(|s| {
            [
                (attune_core::model::keys::catalog(s), 10 + u64::from(s)),
                (attune_core::model::keys::neighbours(s), 20 + u64::from(s)),
            ]
        })
        .collect();
    versions.push(("cfg".into(), 3));
    versions.push(("t".into(), 42));
    versions.sort();
    Manifest {
        shards: 4,
        versions,
    }
}

/// Neighbours per item in the ranking benchmark: as many as the origin publishes (its
/// `ModelConfig::top_k`).
pub const NEIGHBOURS: u32 = 30;

/// The ranking benchmark's world: a 10,000-item catalog, [`NEIGHBOURS`] neighbours per item,
/// 200 trending items, a profile with a couple of weeks of history and a full session
/// ([`attune_core::session::MAX_RECENT`] items): about 800 distinct candidates for `for-you`.
#[derive(Debug)]
pub struct RankScenario {
    pub catalog: CatalogShard,
    /// The catalog as a real caller ranks against it: indexed once, kept next to the shard.
    pub catalog_index: CatalogIndex,
    pub neighbours: NeighbourShard,
    /// The neighbour shard, indexed the same way.
    pub neighbour_index: NeighbourIndex,
    pub trending: Trending,
    pub profile: Profile,
    pub session: Session,
    pub config: ProfileConfig,
    pub params: attune_core::RankParams,
    pub now: Millis,
}

impl RankScenario {
    pub fn new() -> Self {
        const N: u32 = 10_000;
        let config = ProfileConfig::default();
        let events: Vec<(Event, Option<&'static str>)> = typical_events(N)
            .into_iter()
            .map(|(mut e, c)| {
                // Spread the profile's items over the catalog.
                if let Some(item) = &e.item {
                    let n: u32 = item[1..].parse().unwrap_or(0);
                    e.item = Some(item_id(n * 241 % N).into());
                    return (e, Some(category_of(n * 241 % N)));
                }
                (e, c)
            })
            .collect();
        let catalog = catalog(N);
        RankScenario {
            catalog_index: CatalogIndex::new(catalog.clone()),
            catalog,
            neighbour_index: NeighbourIndex::new(neighbours(N, NEIGHBOURS)),
            neighbours: neighbours(N, NEIGHBOURS),
            trending: trending(N, 200, 50),
            profile: profile_from(&events, &config),
            // A full session: as many items as the cookie keeps, every one of them a seed.
            session: session(
                T0,
                &[
                    4_321, 777, 9_001, 1_234, 5_678, 31, 2_718, 3_141, 8_080, 6_502, 1_618, 4_040,
                    7_007, 2_222, 9_999, 5_050, 6_060, 101, 3_333, 8_765,
                ],
            ),
            config,
            params: attune_core::RankParams::default(),
            now: T0,
        }
    }

    pub fn input(&self, count: usize) -> attune_core::RankInput<'_> {
        attune_core::RankInput {
            strategy: Strategy::ForYou,
            count,
            profile: Some(&self.profile),
            profile_config: &self.config,
            session: Some(&self.session),
            page_item: None,
            category: None,
            catalog: &self.catalog_index,
            neighbours: &self.neighbour_index,
            trending: &self.trending,
            params: &self.params,
            now: self.now,
            exclude: &[],
        }
    }

    /// Distinct candidate ids the ranker gathers (an upper bound: before exclusions).
    pub fn candidate_count(&self) -> usize {
        use attune_core::model::NeighbourView;
        let mut ids: std::collections::BTreeSet<&str> = Default::default();
        for r in self.session.recent.iter().take(self.params.session_items) {
            ids.extend(
                self.neighbours
                    .neighbours(&r.item)
                    .iter()
                    .map(|n| n.item.as_str()),
            );
        }
        for (item, _) in self
            .profile
            .top_items(self.now, &self.config, self.params.seed_items)
        {
            ids.extend(
                self.neighbours
                    .neighbours(item)
                    .iter()
                    .map(|n| n.item.as_str()),
            );
        }
        for (c, _) in
            self.profile
                .top_categories(self.now, &self.config, self.params.seed_categories)
        {
            ids.extend(
                self.trending
                    .category(c)
                    .iter()
                    .take(self.params.per_category)
                    .map(String::as_str),
            );
        }
        ids.extend(
            self.trending
                .items
                .iter()
                .take(self.params.trending_candidates)
                .map(|e| e.item.as_str()),
        );
        ids.len()
    }
}
