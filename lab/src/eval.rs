//! `eval`: offline ranking quality on the Online Retail sample.
//!
//! Two protocols:
//!
//! - **time-split** (the default): invoices are ordered by time; the model (neighbours,
//!   trending) and the profiles learn from the invoices before the split only (the first 80%),
//!   with the same code the pipeline runs. Every later invoice with at least two distinct items
//!   is a test basket: each of its items is hidden in turn, and the others are the visitor's
//!   session, recorded in line order into a [`Session`] exactly as the edge keeps it (so at most
//!   [`attune_core::session::MAX_RECENT`] items, the most recent first). A known customer also
//!   brings the stored profile as of the split. Every method picks 10 items with the session's
//!   items excluded, and is scored on the same cases.
//! - **leave-last-out**: per user, the last purchased item (one not bought before) is hidden and
//!   everything else (including later events of other users) is training; no session.
//!
//! `--validation` runs the time-split protocol inside the training period (the first 80% of
//! it trains, the rest tests), which is where parameters are chosen: the test period is never
//! looked at for that.
//!
//! Methods: Attune's `for-you` and `trending` slots through `attune_core::rank`, and three
//! baselines implemented here ([`crate::eval_baselines`]): popularity, item-kNN and
//! session-kNN. Metrics: HR@10, NDCG@10, MRR@10, catalog coverage, and the same by context
//! length (1, 2–4, 5+ session items). Everything iterates in a fixed order: the output is
//! deterministic.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use attune_core::rank::{RankInput, RankParams, Strategy, rank};
use attune_core::{Event, Profile, ProfileConfig, Session};
use serde::Serialize;

use crate::error::Result;
use attune_origin::Model;
use attune_origin::UserState;
use attune_origin::config::ModelConfig;

use crate::eval_baselines::{Baskets, ItemKnn, Popularity, SessionKnn};

/// Items each method picks.
pub const TOP: usize = 10;
/// Share of the invoices (by time) that trains.
pub const TRAIN_SHARE: f64 = 0.8;

/// Which protocol [`run`] follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    TimeSplit,
    LeaveLastOut,
}

/// What [`run`] is asked for.
#[derive(Clone, Debug)]
pub struct Options {
    pub protocol: Protocol,
    /// Time-split inside the training period (parameter choice).
    pub validation: bool,
    pub model: ModelConfig,
    pub rank: RankParams,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            protocol: Protocol::TimeSplit,
            validation: false,
            model: eval_model_config(ModelConfig::default()),
            rank: RankParams::default(),
        }
    }
}

/// The model as the origin configures it, in one shard (the eval reads one index).
pub fn eval_model_config(cfg: ModelConfig) -> ModelConfig {
    ModelConfig { shards: 1, ..cfg }
}

/// Accumulated scores of one method (overall or in one bucket).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Scores {
    pub cases: usize,
    pub hr: f64,
    pub ndcg: f64,
    pub mrr: f64,
}

impl Scores {
    fn add(&mut self, position: Option<usize>) {
        self.cases += 1;
        if let Some(p) = position {
            self.hr += 1.0;
            self.ndcg += 1.0 / ((p + 2) as f64).log2();
            self.mrr += 1.0 / (p + 1) as f64;
        }
    }

    fn finish(&mut self) {
        let n = self.cases.max(1) as f64;
        self.hr /= n;
        self.ndcg /= n;
        self.mrr /= n;
    }
}

/// Context-length buckets.
pub const BUCKETS: [&str; 3] = ["1", "2-4", "5+"];

fn bucket(len: usize) -> usize {
    match len {
        0 | 1 => 0,
        2..=4 => 1,
        _ => 2,
    }
}

/// One method's results.
#[derive(Clone, Debug, Serialize)]
pub struct MethodReport {
    pub method: String,
    #[serde(flatten)]
    pub overall: Scores,
    /// Distinct recommended items over the catalog's size.
    pub coverage: f64,
    /// By context length, in [`BUCKETS`] order.
    pub by_context: Vec<Scores>,
    #[serde(skip)]
    recommended: BTreeSet<String>,
}

impl MethodReport {
    fn new(method: &str) -> Self {
        MethodReport {
            method: method.into(),
            overall: Scores::default(),
            coverage: 0.0,
            by_context: vec![Scores::default(); BUCKETS.len()],
            recommended: BTreeSet::new(),
        }
    }

    fn record(&mut self, picks: &[String], target: &str, context_len: usize) {
        let position = picks.iter().position(|p| p == target);
        self.overall.add(position);
        self.by_context[bucket(context_len)].add(position);
        self.recommended.extend(picks.iter().cloned());
    }

    fn finish(&mut self, catalog: usize) {
        self.overall.finish();
        self.by_context.iter_mut().for_each(Scores::finish);
        self.coverage = self.recommended.len() as f64 / catalog.max(1) as f64;
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub protocol: Protocol,
    pub validation: bool,
    /// Events the model and profiles learnt from.
    pub training_events: usize,
    /// Time of the first event not trained on (time-split).
    pub split_ts: Option<u64>,
    pub test_baskets: usize,
    pub cases: usize,
    pub catalog: usize,
    /// The whole trained neighbour model as one KV value (the origin splits it into
    /// `ModelConfig::shards` values): what the edge reads, well under KV's 25 MiB per value.
    pub neighbour_bytes: usize,
    pub methods: Vec<MethodReport>,
}

impl Report {
    /// The results as markdown: the overall table and the context-length breakdown.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let what = match (self.protocol, self.validation) {
            (Protocol::TimeSplit, false) => {
                "time-split session protocol (test: the last 20% of invoices by time)"
            }
            (Protocol::TimeSplit, true) => {
                "time-split session protocol, validation split (inside the training period)"
            }
            (Protocol::LeaveLastOut, _) => "leave-last-out (profile only, no time split)",
        };
        s.push_str(&format!(
            "{what} on the Online Retail sample: {} cases from {} test baskets, {} training events, catalog {} items\n\n",
            self.cases, self.test_baskets, self.training_events, self.catalog
        ));
        s.push_str(&format!(
            "neighbour lists of the trained model, encoded as one KV value: {} bytes\n\n",
            self.neighbour_bytes
        ));
        s.push_str("| method | HR@10 | NDCG@10 | MRR@10 | coverage |\n|---|---|---|---|---|\n");
        for m in &self.methods {
            s.push_str(&format!(
                "| {} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
                m.method, m.overall.hr, m.overall.ndcg, m.overall.mrr, m.coverage
            ));
        }
        s.push_str("\nby context length (HR@10 / NDCG@10; cases):\n\n| method |");
        let cases: Vec<usize> = self
            .methods
            .first()
            .map(|m| m.by_context.iter().map(|b| b.cases).collect())
            .unwrap_or_default();
        for (b, n) in BUCKETS
            .iter()
            .zip(cases.iter().chain(std::iter::repeat(&0)))
        {
            s.push_str(&format!(" {b} ({n}) |"));
        }
        s.push_str("\n|---|");
        s.push_str(&"---|".repeat(BUCKETS.len()));
        s.push('\n');
        for m in &self.methods {
            s.push_str(&format!("| {} |", m.method));
            for b in &m.by_context {
                s.push_str(&format!(" {:.3} / {:.3} |", b.hr, b.ndcg));
            }
            s.push('\n');
        }
        s
    }
}

pub fn run(csv: &Path, opts: &Options) -> Result<Report> {
    let ds = crate::import::load_retail(csv)?;
    let imp = crate::import::from_retail(&ds, 0, false, false, true);
    match opts.protocol {
        Protocol::TimeSplit => time_split(imp.events, imp.catalog, opts),
        Protocol::LeaveLastOut => leave_last_out(imp.events, imp.catalog, opts),
    }
}

/// One purchase basket: an invoice's distinct items in line order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Basket {
    pub invoice: String,
    pub user: String,
    pub ts: u64,
    pub items: Vec<String>,
}

/// The baskets of `events` (purchases grouped by their `invoice` prop), ordered by time, then
/// invoice.
pub fn baskets(events: &[Event]) -> Vec<Basket> {
    let mut by_invoice: BTreeMap<&str, Basket> = BTreeMap::new();
    for e in events {
        let (Some(invoice), Some(item)) = (e.prop_str("invoice"), e.item.as_deref()) else {
            continue;
        };
        let b = by_invoice.entry(invoice).or_insert_with(|| Basket {
            invoice: invoice.into(),
            user: e.user.to_string(),
            ts: e.ts,
            items: Vec::new(),
        });
        if !b.items.iter().any(|i| i == item) {
            b.items.push(item.into());
        }
    }
    let mut out: Vec<Basket> = by_invoice.into_values().collect();
    out.sort_by(|a, b| a.ts.cmp(&b.ts).then_with(|| a.invoice.cmp(&b.invoice)));
    out
}

/// Splits `events` by time: the first `share` of the invoices (by time) train. The cut is a
/// timestamp, so invoices at the same time as the first test invoice are tested, never
/// trained on: every training event is strictly older than every test event.
pub fn split_by_time(events: &[Event], share: f64) -> (Vec<Event>, Vec<Event>, u64) {
    let all = baskets(events);
    let cut = ((all.len() as f64) * share).floor() as usize;
    let split_ts = all.get(cut).map_or(u64::MAX, |b| b.ts);
    let (train, test): (Vec<Event>, Vec<Event>) =
        events.iter().cloned().partition(|e| e.ts < split_ts);
    (train, test, split_ts)
}

/// What the origin has learnt from the training events: the model and every user's state.
#[derive(Debug)]
pub struct Trained {
    pub model: Model,
    pub users: BTreeMap<String, UserState>,
    pub events: usize,
}

/// Feeds `events` through `Profile::apply` and the model, as the pipeline does.
pub fn train(
    events: &[Event],
    catalog: Vec<attune_core::CatalogItem>,
    cfg: ModelConfig,
    pcfg: &ProfileConfig,
) -> Trained {
    let mut model = Model::new(cfg);
    model.set_catalog(catalog);
    let mut users: BTreeMap<String, UserState> = BTreeMap::new();
    for e in events {
        let state = users.entry(e.user.to_string()).or_default();
        let cat = e
            .item
            .as_deref()
            .and_then(|it| model.category(it))
            .map(str::to_string);
        let previous_seen = state.profile.last_seen;
        state.profile.apply(e, cat.as_deref(), pcfg);
        model.observe(e, pcfg.weight(e.kind).weight, previous_seen, state);
    }
    model.settle();
    Trained {
        model,
        users,
        events: events.len(),
    }
}

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

fn time_split(
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
fn leave_last_out(
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

#[cfg(test)]
mod tests {
    use super::*;
    use attune_core::event::{PropValue, Props, SCHEMA_VERSION};
    use attune_core::{CatalogItem, EventKind, SmolStr};

    fn purchase(invoice: &str, user: &str, ts: u64, item: &str) -> Event {
        let mut props = Props::new();
        props.insert("invoice".into(), PropValue::Str(invoice.into()));
        Event {
            v: SCHEMA_VERSION,
            event_id: format!("{invoice}:{item}").into(),
            user: SmolStr::new(user),
            ts,
            kind: EventKind::Purchase,
            item: Some(SmolStr::new(item)),
            props,
        }
    }

    fn catalog(items: &[&str]) -> Vec<CatalogItem> {
        items
            .iter()
            .map(|i| CatalogItem {
                id: (*i).into(),
                title: (*i).into(),
                url: format!("/p/{i}"),
                image: String::new(),
                price: String::new(),
                category: "c".into(),
            })
            .collect()
    }

    /// The model and the profiles trained by the time-split protocol know nothing of any event
    /// at or after the split: an item bought only after it has no neighbours, no trend and no
    /// place in any profile, and no training event is as late as the split.
    #[test]
    fn no_event_after_the_split_reaches_training() {
        let t0 = 1_000_000u64;
        let mut events = Vec::new();
        // Ten invoices, one every hour; the last two (the test 20%) hold `late`, and the
        // customer `u1` buys again after the split.
        for n in 0..10u64 {
            let ts = t0 + n * 3_600_000;
            let user = if n % 2 == 0 { "u1" } else { "u2" };
            let invoice = format!("{n}");
            events.push(purchase(&invoice, user, ts, "a"));
            events.push(purchase(&invoice, user, ts, "b"));
            if n >= 8 {
                events.push(purchase(&invoice, user, ts, "late"));
            }
        }
        let (train_events, test_events, split_ts) = split_by_time(&events, TRAIN_SHARE);
        assert_eq!(split_ts, t0 + 8 * 3_600_000);
        assert!(train_events.iter().all(|e| e.ts < split_ts));
        assert!(test_events.iter().all(|e| e.ts >= split_ts));
        assert_eq!(train_events.len() + test_events.len(), events.len());
        let pcfg = ProfileConfig::default();
        let trained = train(
            &train_events,
            catalog(&["a", "b", "late"]),
            eval_model_config(ModelConfig::default()),
            &pcfg,
        );
        assert!(trained.model.neighbours("late").is_empty());
        assert!(!trained.model.neighbours("a").is_empty());
        let trending = trained.model.trending(split_ts);
        assert!(trending.items.iter().all(|e| e.item != "late"));
        assert!(trending.items.iter().any(|e| e.item == "a"));
        for state in trained.users.values() {
            assert!(state.profile.last_seen < split_ts);
            assert!(!state.profile.has_purchased("late"));
        }
        // The validation split is inside the training period.
        let (vtrain, vtest, vsplit) = split_by_time(&train_events, TRAIN_SHARE);
        assert!(vsplit < split_ts);
        assert!(vtrain.iter().chain(&vtest).all(|e| e.ts < split_ts));
    }

    /// Invoices at the cut's timestamp are all tested: none straddles the split.
    #[test]
    fn invoices_at_the_split_time_are_tested_whole() {
        let mut events = Vec::new();
        for n in 0..5u64 {
            events.push(purchase(&format!("{n}"), "u", 10 + n.min(3), "a"));
        }
        // Invoices 3 and 4 share a time; the cut (index 4) lands on it.
        let (train_events, test_events, split_ts) = split_by_time(&events, TRAIN_SHARE);
        assert_eq!(split_ts, 13);
        assert_eq!(train_events.len(), 3);
        assert_eq!(test_events.len(), 2);
    }

    #[test]
    fn scores_count_hits_by_position() {
        let mut m = MethodReport::new("m");
        let picks: Vec<String> = ["x", "y", "z"].map(String::from).to_vec();
        m.record(&picks, "x", 1);
        m.record(&picks, "z", 3);
        m.record(&picks, "w", 7);
        m.finish(10);
        assert_eq!(m.overall.cases, 3);
        assert!((m.overall.hr - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.overall.mrr - (1.0 + 1.0 / 3.0) / 3.0).abs() < 1e-12);
        assert!((m.overall.ndcg - (1.0 + 0.5) / 3.0).abs() < 1e-12);
        assert_eq!(m.by_context[0].cases, 1);
        assert_eq!(m.by_context[1].cases, 1);
        assert_eq!(m.by_context[2].hr, 0.0);
        assert!((m.coverage - 0.3).abs() < 1e-12);
    }
}
