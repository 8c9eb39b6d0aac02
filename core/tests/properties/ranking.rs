//! Ranking invariants over generated worlds, with the catalog and neighbours as one shard or
//! as several.

use std::collections::BTreeMap;

use attune_core::event::{Event, SCHEMA_VERSION};
use attune_core::model::{
    CatalogItem, CatalogShard, Neighbour, NeighbourShard, TrendEntry, Trending,
};
use attune_core::profile::{Profile, ProfileConfig};
use attune_core::rank::{RankInput, RankParams, rank};
use attune_core::session::Session;
use attune_core::{HOUR_MS, Millis, Strategy as Slot};
use proptest::prelude::*;

use crate::common::{T0, item_id};
use crate::generators::{kind, slot_strategy};

#[derive(Debug, Clone)]
struct World {
    catalog: CatalogShard,
    neighbours: NeighbourShard,
    trending: Trending,
    profile: Option<Profile>,
    session: Option<Session>,
    page_item: Option<String>,
    category: Option<String>,
    strategy: Slot,
    count: usize,
    params: RankParams,
    now: Millis,
}

const CATS: [&str; 4] = ["Bags", "Kitchen", "Mugs", "Toys"];

fn world() -> impl Strategy<Value = World> {
    use prop::collection::vec;
    // Items 0..n are in the catalog; ids up to n + 8 appear elsewhere but are unknown.
    (8u32..48).prop_flat_map(|n| {
        let id = 0..n + 8;
        (
            vec(0usize..CATS.len(), n as usize),
            vec(
                (id.clone(), vec((id.clone(), 0.0f32..1.0), 0..8)),
                0..n as usize,
            ),
            vec((id.clone(), -1.0f32..100.0), 0..20),
            vec((0usize..CATS.len(), vec(id.clone(), 0..12)), 0..4),
            prop::option::of(vec((id.clone(), kind(), 0..6 * HOUR_MS), 1..30)),
            prop::option::of(vec((id.clone(), 0..2 * HOUR_MS), 0..10)),
            (
                prop::option::of(id.clone()),
                prop::option::of(0usize..CATS.len()),
            ),
            (slot_strategy(), 0usize..12, 0usize..4, 1usize..600),
        )
            .prop_map(
                move |(
                    cats,
                    nlists,
                    trend,
                    bycat,
                    events,
                    recent,
                    (page, cat),
                    (strategy, count, cap, max_candidates),
                )| {
                    let now = T0 + 6 * HOUR_MS;
                    let catalog = CatalogShard::from_items(
                        cats.iter()
                            .enumerate()
                            .map(|(i, c)| CatalogItem {
                                id: item_id(i as u32),
                                title: String::new(),
                                url: String::new(),
                                image: String::new(),
                                price: String::new(),
                                category: CATS[*c].into(),
                            })
                            .collect(),
                    );
                    let neighbours = NeighbourShard::from_lists(
                        nlists
                            .into_iter()
                            .map(|(a, list)| {
                                let mut list: Vec<Neighbour> = list
                                    .into_iter()
                                    .map(|(b, sim)| Neighbour {
                                        item: item_id(b),
                                        sim,
                                    })
                                    .collect();
                                list.sort_by(|x, y| y.sim.total_cmp(&x.sim));
                                (item_id(a), list)
                            })
                            .collect(),
                    );
                    let mut items: Vec<TrendEntry> = trend
                        .into_iter()
                        .map(|(i, score)| TrendEntry {
                            item: item_id(i),
                            score,
                        })
                        .collect();
                    items.sort_by(|x, y| y.score.total_cmp(&x.score));
                    let mut by_category: Vec<(String, Vec<String>)> = bycat
                        .into_iter()
                        .map(|(c, l)| (CATS[c].to_string(), l.into_iter().map(item_id).collect()))
                        .collect();
                    by_category.sort_by(|a, b| a.0.cmp(&b.0));
                    by_category.dedup_by(|a, b| a.0 == b.0);
                    let trending = Trending { items, by_category };
                    let profile = events.map(|evs| {
                        let mut p = Profile::default();
                        for (k, (item, kind, back)) in evs.into_iter().enumerate() {
                            let e = Event {
                                v: SCHEMA_VERSION,
                                event_id: format!("e{k}").into(),
                                user: "u".into(),
                                ts: now - back,
                                kind,
                                item: Some(item_id(item).into()),
                                props: Default::default(),
                            };
                            let category = catalog_category(&catalog, &item_id(item));
                            p.apply(&e, category.as_deref(), &ProfileConfig::default());
                        }
                        p
                    });
                    let session = recent.map(|list| {
                        let mut s = Session::fresh(now - 2 * HOUR_MS);
                        let mut list = list;
                        list.sort_by_key(|(_, back)| std::cmp::Reverse(*back));
                        for (item, back) in list {
                            s.record_item(&item_id(item), now - back);
                        }
                        s
                    });
                    World {
                        catalog,
                        neighbours,
                        trending,
                        profile,
                        session,
                        page_item: page.map(item_id),
                        category: cat.map(|c| CATS[c].to_string()),
                        strategy,
                        count,
                        params: RankParams {
                            diversity_cap: cap,
                            max_candidates,
                            ..RankParams::default()
                        },
                        now,
                    }
                },
            )
    })
}

fn catalog_category(catalog: &CatalogShard, id: &str) -> Option<String> {
    use attune_core::model::CatalogView;
    catalog.item(id).map(|c| c.category.clone())
}

fn run(w: &World) -> Vec<attune_core::Pick> {
    let cfg = ProfileConfig::default();
    rank(&RankInput {
        strategy: w.strategy,
        count: w.count,
        profile: w.profile.as_ref(),
        profile_config: &cfg,
        session: w.session.as_ref(),
        page_item: w.page_item.as_deref(),
        category: w.category.as_deref(),
        catalog: &w.catalog,
        neighbours: &w.neighbours,
        trending: &w.trending,
        params: &w.params,
        now: w.now,
        exclude: &[],
    })
}

/// Several shards seen as one through the slice impls (a slice is unsized, so not a `dyn`).
struct Shards<T>(Vec<T>);

impl<T: attune_core::model::CatalogView> attune_core::model::CatalogView for Shards<T> {
    fn item(&self, id: &str) -> Option<&CatalogItem> {
        self.0[..].item(id)
    }
    fn item_hashed(&self, id: &str, hash: attune_core::IdHash) -> Option<&CatalogItem> {
        self.0[..].item_hashed(id, hash)
    }
    fn category_keyed(&self, id: &str, key: &attune_core::IdKey) -> Option<&str> {
        self.0[..].category_keyed(id, key)
    }
}

impl<T: attune_core::model::NeighbourView> attune_core::model::NeighbourView for Shards<T> {
    fn neighbours(&self, id: &str) -> &[Neighbour] {
        self.0[..].neighbours(id)
    }
    fn neighbour_list(&self, id: &str) -> attune_core::NeighbourList<'_> {
        self.0[..].neighbour_list(id)
    }
}

fn run_indexed(w: &World) -> Vec<attune_core::Pick> {
    use attune_core::{CatalogIndex, NeighbourIndex};
    let cfg = ProfileConfig::default();
    // Split in two shards by id parity, as the edge holds the few shards a request needs.
    let split = |odd: bool| {
        let catalog = CatalogShard::from_items(
            w.catalog
                .items
                .iter()
                .enumerate()
                .filter(|(i, _)| (i % 2 == 1) == odd)
                .map(|(_, c)| c.clone())
                .collect(),
        );
        let neighbours = NeighbourShard::from_lists(
            w.neighbours
                .lists
                .iter()
                .enumerate()
                .filter(|(i, _)| (i % 2 == 1) == odd)
                .map(|(_, l)| l.clone())
                .collect(),
        );
        (CatalogIndex::new(catalog), NeighbourIndex::new(neighbours))
    };
    let (a, b) = (split(false), split(true));
    let catalogs = Shards(vec![a.0, b.0]);
    let neighbours = Shards(vec![a.1, b.1]);
    rank(&RankInput {
        strategy: w.strategy,
        count: w.count,
        profile: w.profile.as_ref(),
        profile_config: &cfg,
        session: w.session.as_ref(),
        page_item: w.page_item.as_deref(),
        category: w.category.as_deref(),
        catalog: &catalogs,
        neighbours: &neighbours,
        trending: &w.trending,
        params: &w.params,
        now: w.now,
        exclude: &[],
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn ranking_invariants(w in world()) {
        let picks = run(&w);
        // Count.
        prop_assert!(picks.len() <= w.count);
        // Determinism: the same input, twice and from a copy, gives the same output.
        prop_assert_eq!(&picks, &run(&w));
        // The hash indexes (interned categories, precomputed neighbour keys) and several
        // shards seen as one rank exactly as the bare shard does.
        prop_assert_eq!(&picks, &run_indexed(&w));
        prop_assert_eq!(&picks, &run(&w.clone()));
        let mut per_category: BTreeMap<String, usize> = BTreeMap::new();
        for p in &picks {
            // Every pick is in the catalog, finite and positive.
            let category = catalog_category(&w.catalog, &p.item);
            prop_assert!(category.is_some(), "{} is not in the catalog", p.item);
            prop_assert!(p.score.is_finite() && p.score > 0.0, "{:?}", p);
            *per_category.entry(category.unwrap()).or_default() += 1;
            // Exclusions.
            prop_assert!(w.page_item.as_deref() != Some(p.item.as_str()), "page item {}", p.item);
            if let Some(profile) = &w.profile {
                prop_assert!(!profile.has_purchased(&p.item), "purchased {}", p.item);
                prop_assert!(!profile.in_cart(&p.item), "in cart {}", p.item);
            }
            if matches!(w.strategy, Slot::ForYou | Slot::Similar | Slot::Trending)
                && let Some(s) = &w.session
            {
                prop_assert!(s.recent_items().all(|r| r != p.item), "seen {}", p.item);
            }
        }
        // No duplicates, sorted by score descending with the id breaking ties.
        for pair in picks.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            prop_assert!(
                a.score > b.score || (a.score == b.score && a.item < b.item),
                "order: {:?} before {:?}", a, b
            );
        }
        // Diversity cap.
        if matches!(w.strategy, Slot::ForYou | Slot::Similar | Slot::Trending) {
            let cap = if w.params.diversity_cap == 0 { w.count.div_ceil(2).max(1) } else { w.params.diversity_cap };
            for (category, n) in &per_category {
                prop_assert!(*n <= cap, "{} picks of {} over the cap {}", n, category, cap);
            }
        }
    }
}
