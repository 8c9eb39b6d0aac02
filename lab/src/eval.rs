//! `eval`: offline leave-last-out evaluation on the Online Retail sample. For every user with
//! at least two purchased items, the last purchased item (one not bought before) is held out;
//! the model (neighbours, trending) and the profiles are built from everything else with the
//! same code the pipeline runs, then `attune_core::rank` (`for-you`) and a popularity baseline
//! (`trending`, same exclusions) each pick 10 items. HR@10 and NDCG@10 are averaged over users.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use attune_core::rank::{RankInput, RankParams, Strategy, rank};
use attune_core::{Event, ProfileConfig};

use crate::error::Result;
use attune_origin::Model;
use attune_origin::UserState;
use attune_origin::config::ModelConfig;

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub users: usize,
    pub events: usize,
    pub rank_hr: f64,
    pub rank_ndcg: f64,
    pub pop_hr: f64,
    pub pop_ndcg: f64,
}

impl Report {
    pub fn table(&self) -> String {
        format!(
            "leave-last-out on the Online Retail sample: {} users, {} training events\n\
             | method                      | HR@10  | NDCG@10 |\n\
             |-----------------------------|--------|---------|\n\
             | attune rank (for-you)       | {:.4} | {:.4}  |\n\
             | popularity (trending)       | {:.4} | {:.4}  |\n\
             lift: HR x{:.2}, NDCG x{:.2}",
            self.users,
            self.events,
            self.rank_hr,
            self.rank_ndcg,
            self.pop_hr,
            self.pop_ndcg,
            self.rank_hr / self.pop_hr.max(1e-9),
            self.rank_ndcg / self.pop_ndcg.max(1e-9),
        )
    }
}

pub fn run(csv: &Path) -> Result<Report> {
    let ds = crate::import::load_retail(csv)?;
    let imp = crate::import::from_retail(&ds, 0, false, false, true);
    evaluate(imp.events, imp.catalog)
}

pub fn evaluate(events: Vec<Event>, catalog: Vec<attune_core::CatalogItem>) -> Result<Report> {
    let mut by_user: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        by_user.entry(e.user.as_str()).or_default().push(i);
    }
    let mut held: HashSet<usize> = HashSet::new();
    let mut tests: Vec<(String, usize)> = Vec::new();
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
        tests.push(((*user).to_string(), last));
    }
    let cfg = ModelConfig {
        shards: 1,
        ..ModelConfig::default()
    };
    let mut model = Model::new(cfg);
    model.set_catalog(catalog);
    let pcfg = ProfileConfig::default();
    let mut users: BTreeMap<String, UserState> = BTreeMap::new();
    let mut training = 0;
    for (i, e) in events.iter().enumerate() {
        if held.contains(&i) {
            continue;
        }
        training += 1;
        let state = users.entry(e.user.to_string()).or_default();
        let cat = e
            .item
            .as_deref()
            .and_then(|it| model.category(it))
            .map(str::to_string);
        state.profile.apply(e, cat.as_deref(), &pcfg);
        model.observe(e, pcfg.weight(e.kind).weight, state);
    }
    model.settle();
    // Indexed once for the whole run, as the edge keeps them: every `rank` below looks each
    // candidate up in both.
    let catalog = attune_core::CatalogIndex::new(model.catalog_shard(0));
    let neighbours = attune_core::NeighbourIndex::new(model.neighbour_shard(0));
    let params = RankParams::default();
    let mut r = Report {
        users: tests.len(),
        events: training,
        ..Report::default()
    };
    for (user, idx) in &tests {
        let target = events[*idx].item.as_deref().unwrap_or("");
        let now = events[*idx].ts;
        let trending = model.trending(now);
        let profile = users.get(user).map(|s| &s.profile);
        for (strategy, hr, ndcg) in [
            (Strategy::ForYou, &mut r.rank_hr, &mut r.rank_ndcg),
            (Strategy::Trending, &mut r.pop_hr, &mut r.pop_ndcg),
        ] {
            let picks = rank(&RankInput {
                strategy,
                count: 10,
                profile,
                profile_config: &pcfg,
                session: None,
                page_item: None,
                category: None,
                catalog: &catalog,
                neighbours: &neighbours,
                trending: &trending,
                params: &params,
                now,
            });
            if let Some(pos) = picks.iter().position(|p| p.item == target) {
                *hr += 1.0;
                *ndcg += 1.0 / ((pos + 2) as f64).log2();
            }
        }
    }
    let n = tests.len().max(1) as f64;
    r.rank_hr /= n;
    r.rank_ndcg /= n;
    r.pop_hr /= n;
    r.pop_ndcg /= n;
    Ok(r)
}
