//! The two protocols: which cases each builds and how every method is scored on them.

use std::collections::{BTreeMap, HashSet};

use attune_core::rank::{RankInput, Strategy, rank};
use attune_core::{Event, Profile, ProfileConfig, Session};

use crate::error::Result;

use super::{
    MethodReport, Options, Protocol, Report, TOP, TRAIN_SHARE, baskets, split_by_time, train,
};
use crate::eval_baselines::{Baskets, ItemKnn, Popularity, SessionKnn};

/// Bytes of `shard` as the publisher writes it (the versioned envelope).
fn encoded_len(shard: &attune_core::NeighbourShard) -> usize {
    attune_core::wire::encode(&attune_core::wire::Envelope::new(0, 0, shard)).len()
}

/// One hidden item and what the visitor brings.
struct Case<'a> {
    target: &'a str,
    session: Session,
    profile: Option<&'a Profile>,
    now: u64,
}

impl Case<'_> {
    fn context(&self) -> Vec<&str> {
        self.session.recent_items().collect()
    }
}

pub(super) fn time_split(
    events: Vec<Event>,
    catalog: Vec<attune_core::CatalogItem>,
    opts: &Options,
) -> Result<Report> {
    let (mut train_events, mut test_events, mut split_ts) = split_by_time(&events, TRAIN_SHARE);
    if opts.validation {
        (train_events, test_events, split_ts) = split_by_time(&train_events, TRAIN_SHARE);
    }
    let catalog_len = catalog.len();
    let pcfg = ProfileConfig::default();
    let trained = train(&train_events, catalog, opts.model.clone(), &pcfg);
    let train_baskets = Baskets::new(&baskets(&train_events));
    let popularity = Popularity::new(&train_baskets);
    let item_knn = ItemKnn::new(&train_baskets);
    let sknn = SessionKnn::new(&train_baskets);
    let test = baskets(&test_events);

    let mut cases: Vec<Case<'_>> = Vec::new();
    let mut test_baskets = 0;
    for b in &test {
        if b.items.len() < 2 {
            continue;
        }
        test_baskets += 1;
        for (j, target) in b.items.iter().enumerate() {
            let mut session = Session::fresh(b.ts);
            for (k, item) in b.items.iter().enumerate() {
                if k != j {
                    session.record_item(item, b.ts);
                }
            }
            cases.push(Case {
                target,
                session,
                profile: trained.users.get(&b.user).map(|s| &s.profile),
                now: b.ts,
            });
        }
    }

    let model = &trained.model;
    let catalog = attune_core::CatalogIndex::new(model.catalog_shard(0));
    let neighbour_shard = model.neighbour_shard(0);
    let neighbour_bytes = encoded_len(&neighbour_shard);
    let neighbours = attune_core::NeighbourIndex::new(neighbour_shard);
    // The KV snapshot as of the split: the model learns nothing after it.
    let trending = model.trending(split_ts);
    let mut methods: Vec<MethodReport> = [
        "attune for-you",
        "attune trending",
        "popularity",
        "item-kNN",
        "session-kNN",
    ]
    .into_iter()
    .map(MethodReport::new)
    .collect();
    for case in &cases {
        let context = case.context();
        let exclude: HashSet<&str> = context.iter().copied().collect();
        let n = context.len();
        for (m, strategy) in [(0, Strategy::ForYou), (1, Strategy::Trending)] {
            let picks: Vec<String> = rank(&RankInput {
                strategy,
                count: TOP,
                profile: case.profile,
                profile_config: &pcfg,
                session: Some(&case.session),
                page_item: None,
                category: None,
                catalog: &catalog,
                neighbours: &neighbours,
                trending: &trending,
                params: &opts.rank,
                now: case.now,
                exclude: &[],
            })
            .into_iter()
            .map(|p| p.item)
            .collect();
            methods[m].record(&picks, case.target, n);
        }
        let pop = popularity.top(TOP, &exclude);
        methods[2].record(&pop, case.target, n);
        let knn = item_knn.top(&context, TOP, &exclude, &popularity);
        methods[3].record(&knn, case.target, n);
        let s = sknn.top(&context, TOP, &exclude, &popularity);
        methods[4].record(&s, case.target, n);
    }
    methods.iter_mut().for_each(|m| m.finish(catalog_len));
    Ok(Report {
        protocol: Protocol::TimeSplit,
        validation: opts.validation,
        training_events: trained.events,
        split_ts: Some(split_ts),
        test_baskets,
        cases: cases.len(),
        catalog: catalog_len,
        neighbour_bytes,
        methods,
    })
}

/// Leave-last-out: per user with at least two purchased items, the last purchased item (one
/// not bought before) is hidden; the model and profiles learn from every other event.
pub(super) fn leave_last_out(
    events: Vec<Event>,
    catalog: Vec<attune_core::CatalogItem>,
    opts: &Options,
) -> Result<Report> {
    let mut by_user: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        by_user.entry(e.user.as_str()).or_default().push(i);
    }
    let mut held: HashSet<usize> = HashSet::new();
    let mut tests: Vec<(String, usize, usize)> = Vec::new();
    for (user, idx) in &by_user {
        let Some(&last) = idx.last() else { continue };
        let item = events[last].item.as_deref();
        let earlier: HashSet<Option<&str>> = idx[..idx.len() - 1]
            .iter()
            .map(|i| events[*i].item.as_deref())
            .collect();
        if earlier.is_empty() || earlier.contains(&item) {
            continue;
        }
        held.insert(last);
        tests.push(((*user).to_string(), last, earlier.len()));
    }
    let catalog_len = catalog.len();
    let training: Vec<Event> = events
        .iter()
        .enumerate()
        .filter(|(i, _)| !held.contains(i))
        .map(|(_, e)| e.clone())
        .collect();
    let pcfg = ProfileConfig::default();
    let trained = train(&training, catalog, opts.model.clone(), &pcfg);
    let model = &trained.model;
    let catalog = attune_core::CatalogIndex::new(model.catalog_shard(0));
    let neighbour_shard = model.neighbour_shard(0);
    let neighbour_bytes = encoded_len(&neighbour_shard);
    let neighbours = attune_core::NeighbourIndex::new(neighbour_shard);
    let mut methods: Vec<MethodReport> = ["attune for-you", "attune trending"]
        .into_iter()
        .map(MethodReport::new)
        .collect();
    for (user, idx, earlier) in &tests {
        let target = events[*idx].item.as_deref().unwrap_or("");
        let now = events[*idx].ts;
        let trending = model.trending(now);
        let profile = trained.users.get(user).map(|s| &s.profile);
        for (m, strategy) in [(0, Strategy::ForYou), (1, Strategy::Trending)] {
            let picks: Vec<String> = rank(&RankInput {
                strategy,
                count: TOP,
                profile,
                profile_config: &pcfg,
                session: None,
                page_item: None,
                category: None,
                catalog: &catalog,
                neighbours: &neighbours,
                trending: &trending,
                params: &opts.rank,
                now,
                exclude: &[],
            })
            .into_iter()
            .map(|p| p.item)
            .collect();
            methods[m].record(&picks, target, *earlier);
        }
    }
    methods.iter_mut().for_each(|m| m.finish(catalog_len));
    Ok(Report {
        protocol: Protocol::LeaveLastOut,
        validation: false,
        training_events: trained.events,
        split_ts: None,
        test_baskets: tests.len(),
        cases: tests.len(),
        catalog: catalog_len,
        neighbour_bytes,
        methods,
    })
}
