//! Delta tests: merging the deltas of several recording models gives the model of all events.

use super::super::{Model, PairCell};
use super::ModelDelta;
use crate::config::ModelConfig;
use crate::store::{Store, UserState};
use attune_core::{CatalogItem, Event, EventKind};
use std::collections::BTreeMap;

const T0: u64 = 1_700_000_000_000;
const ITEMS: u64 = 40;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn event(n: u64, user: u64, item: u64, ts: u64, kind: EventKind) -> Event {
    let json = format!(
        r#"{{"v":1,"event_id":"e{n}","user":"u{user}","ts":{ts},"kind":"view","item":"i{item}"}}"#
    );
    let mut e = attune_core::event::parse_event(json.as_bytes(), ts).unwrap();
    e.kind = kind;
    e
}

/// Events of `users` users in time order (with jitter, so an item's trend sometimes gets an
/// event older than its reference time), sessions cut by gaps longer than `session_gap_ms`,
/// popular items repeated within sessions, every kind (some of which `observe` skips), and
/// weights that vary (zero included).
fn events(cfg: &ModelConfig, users: u64, n: u64) -> Vec<(Event, f32)> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut clock = T0 + 3_600_000;
    (0..n)
        .map(|i| {
            clock += 1_000 + rng.below(120_000);
            if rng.below(25) == 0 {
                clock += cfg.session_gap_ms + rng.below(cfg.session_gap_ms);
            }
            let ts = clock - rng.below(600_000);
            // Skewed: low ids are popular.
            let top = rng.below(ITEMS) + 1;
            let item = rng.below(top);
            let kind = EventKind::ALL[rng.below(EventKind::ALL.len() as u64) as usize];
            let weight = if rng.below(10) == 0 {
                0.0
            } else {
                (1 + rng.below(1000)) as f32 / 250.0
            };
            (event(i, rng.below(users), item, ts, kind), weight)
        })
        .collect()
}

fn catalog() -> Vec<CatalogItem> {
    (0..ITEMS)
        .filter(|i| i % 5 != 4)
        .map(|i| CatalogItem {
            id: format!("i{i}"),
            title: String::new(),
            url: String::new(),
            image: String::new(),
            price: String::new(),
            category: format!("c{}", i % 3),
        })
        .collect()
}

/// Feeds events as the pipeline does: each user's previous event time (the latest) goes with
/// the event.
struct Feed {
    users: BTreeMap<String, (UserState, u64)>,
}

impl Feed {
    fn new() -> Self {
        Feed {
            users: BTreeMap::new(),
        }
    }
    fn feed(&mut self, m: &mut Model, e: &Event, weight: f32) {
        let (state, seen) = self.users.entry(e.user.to_string()).or_default();
        m.observe(e, weight, *seen, state);
        *seen = (*seen).max(e.ts);
    }
}

fn counts(m: &Model) -> BTreeMap<String, u64> {
    (0..m.names.len())
        .filter(|i| m.counts[*i] > 0)
        .map(|i| (m.names[i].to_string(), m.counts[i]))
        .collect()
}

fn pairs(m: &Model) -> BTreeMap<(String, String), PairCell> {
    let mut out = BTreeMap::new();
    for (a, row) in m.adj.iter().enumerate() {
        for (b, c) in row {
            let cell = PairCell { epoch: 0, ..*c };
            out.insert(
                (m.names[a].to_string(), m.names[*b as usize].to_string()),
                cell,
            );
        }
    }
    out
}

/// Decayed trending scores at `now`, by name.
fn scores(m: &Model, now: u64) -> BTreeMap<String, f64> {
    let hl = m.cfg.trend_half_life_ms as f64;
    m.trend
        .iter()
        .zip(&m.names)
        .filter_map(|(t, k)| {
            t.map(|(s, at)| (k.to_string(), s * (-(now as f64 - at as f64) / hl).exp2()))
        })
        .collect()
}

fn assert_same_model(direct: &mut Model, merged: &mut Model, now: u64, what: &str) {
    for s in 0..direct.shards() {
        assert_eq!(
            direct.neighbour_shard(s),
            merged.neighbour_shard(s),
            "{what}: shard {s}"
        );
    }
    assert_eq!(counts(direct), counts(merged), "{what}: counts");
    assert_eq!(pairs(direct), pairs(merged), "{what}: pairs");
    assert_eq!(direct.live_pairs, merged.live_pairs, "{what}: live pairs");
    assert_eq!(
        direct.take_touched_shards(),
        merged.take_touched_shards(),
        "{what}: touched"
    );
    let (d, m) = (scores(direct, now), scores(merged, now));
    assert_eq!(
        d.keys().collect::<Vec<_>>(),
        m.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (item, s) in &d {
        let t = m[item];
        assert!(
            (s - t).abs() <= 1e-9 * s.abs().max(t.abs()),
            "{what}: {item} {s} vs {t}"
        );
    }
    let (d, m) = (direct.trending(now), merged.trending(now));
    let names =
        |t: &attune_core::Trending| t.items.iter().map(|e| e.item.clone()).collect::<Vec<_>>();
    assert_eq!(names(&d), names(&m), "{what}: trending order");
    for (a, b) in d.items.iter().zip(&m.items) {
        assert!(
            (a.score - b.score).abs() <= 1e-6 * a.score.abs(),
            "{what}: {a:?} vs {b:?}"
        );
    }
    assert_eq!(d.by_category, m.by_category, "{what}: trending by category");
}

/// Users split over 2, 3 and 4 recording models, deltas cut at random points and merged in a
/// shuffled order (through their encoding) give the model of all events applied directly:
/// neighbour shards, counts and pair weights bit for bit, trending up to rounding. The merged
/// model then persists and reloads like any other.
#[test]
fn merged_deltas_equal_the_directly_applied_events() {
    let cfg = ModelConfig {
        shards: 8,
        ..ModelConfig::default()
    };
    let users = 13;
    let events = events(&cfg, users, 3000);
    let now = events.iter().map(|e| e.0.ts).max().unwrap() + 60_000;
    let direct = clone_by_replay(&cfg, &events);
    assert!(direct.live_pairs > 100, "too few pairs to mean anything");
    assert!(
        events.iter().any(|(e, _)| e.kind == EventKind::Impression),
        "no skipped kind"
    );
    let mut rng = Rng(42);
    for parts in 2..=4u64 {
        let mut instances: Vec<(Model, Feed)> = (0..parts)
            .map(|_| {
                let mut m = Model::new(cfg.clone());
                m.record_deltas();
                (m, Feed::new())
            })
            .collect();
        let owner: Vec<usize> = (0..users).map(|_| rng.below(parts) as usize).collect();
        let mut deltas: Vec<Vec<u8>> = Vec::new();
        for (e, w) in &events {
            let user: usize = e.user[1..].parse().unwrap();
            let (m, feed) = &mut instances[owner[user]];
            feed.feed(m, e, *w);
            if rng.below(40) == 0 {
                deltas.push(m.take_delta().encode());
            }
        }
        for (m, _) in &mut instances {
            deltas.push(m.take_delta().encode());
            // Recording leaves the recording model itself unchanged.
            assert!(counts(m).is_empty() && m.live_pairs == 0 && scores(m, now).is_empty());
        }
        for i in (1..deltas.len()).rev() {
            deltas.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut merged = Model::new(cfg.clone());
        merged.set_catalog(catalog());
        for bytes in &deltas {
            merged.merge_delta(&ModelDelta::decode(bytes).unwrap());
        }
        let what = format!("{parts} instances, {} deltas", deltas.len());
        let mut direct = clone_by_replay(&cfg, &events);
        assert_same_model(&mut direct, &mut merged, now, &what);
        // What merging changed is tracked for persistence as observe's changes are.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.redb")).unwrap();
        let tx = store.begin_checkpoint().unwrap();
        merged.persist(&tx).unwrap();
        tx.commit().unwrap();
        let mut loaded = Model::load(cfg.clone(), &store).unwrap();
        loaded.set_catalog(catalog());
        let mut direct = clone_by_replay(&cfg, &events);
        direct.take_touched_shards();
        assert_same_model(&mut direct, &mut loaded, now, &format!("{what}, reloaded"));
    }
}

/// The model of `events` applied directly (a fresh one each time: comparing consumes the
/// touched shards).
fn clone_by_replay(cfg: &ModelConfig, events: &[(Event, f32)]) -> Model {
    let mut m = Model::new(cfg.clone());
    m.set_catalog(catalog());
    let mut feed = Feed::new();
    for (e, w) in events {
        feed.feed(&mut m, e, *w);
    }
    m.settle();
    m
}

fn some_delta() -> ModelDelta {
    let cfg = ModelConfig::default();
    let mut m = Model::new(cfg.clone());
    m.record_deltas();
    let mut feed = Feed::new();
    for (e, w) in events(&cfg, 5, 300) {
        feed.feed(&mut m, &e, w);
    }
    m.take_delta()
}

/// A delta decodes to itself, encodes deterministically, and damaged bytes are an error.
#[test]
fn deltas_round_trip_and_damage_is_an_error() {
    let delta = some_delta();
    assert!(!delta.is_empty() && !delta.pairs.is_empty() && !delta.trends.is_empty());
    let bytes = delta.encode();
    assert_eq!(bytes[0], 1);
    assert_eq!(ModelDelta::decode(&bytes).unwrap(), delta);
    assert_eq!(ModelDelta::decode(&bytes).unwrap().encode(), bytes);
    assert_eq!(
        ModelDelta::decode(&ModelDelta::default().encode()).unwrap(),
        ModelDelta::default()
    );
    for len in 0..bytes.len() {
        assert!(
            ModelDelta::decode(&bytes[..len]).is_err(),
            "truncated to {len}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(ModelDelta::decode(&longer).is_err(), "trailing byte");
    let mut other_version = bytes.clone();
    other_version[0] = 2;
    assert!(ModelDelta::decode(&other_version).is_err(), "version 2");
    for garbage in [
        &[1u8, 0xff, 0xff, 0xff][..],
        &[1, 0x94, 0xc1],
        &[0x94, 0x90, 0x90, 0x90, 0x90],
    ] {
        assert!(ModelDelta::decode(garbage).is_err(), "{garbage:?}");
    }
    // Well-formed MessagePack that breaks what merging relies on.
    let mut out_of_range = delta.clone();
    out_of_range
        .pairs
        .push((0, out_of_range.items.len() as u32, 1));
    let mut unsorted = delta.clone();
    unsorted.items.reverse();
    let mut self_pair = delta.clone();
    self_pair.pairs.insert(0, (0, 0, 1));
    for (what, bad) in [
        ("range", out_of_range),
        ("unsorted", unsorted),
        ("self", self_pair),
    ] {
        assert!(ModelDelta::decode(&bad.encode()).is_err(), "{what}");
    }
    // Any single damaged byte decodes or fails, never panics.
    for i in 1..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        let _ = ModelDelta::decode(&b);
    }
}

/// An empty delta (none recorded, or a recording model whose events change nothing) changes
/// nothing and touches no shard.
#[test]
fn merging_an_empty_delta_changes_nothing() {
    let cfg = ModelConfig::default();
    let events = events(&cfg, 5, 400);
    let mut m = clone_by_replay(&cfg, &events);
    m.take_touched_shards();
    let mut recording = Model::new(cfg.clone());
    recording.record_deltas();
    let mut feed = Feed::new();
    let skipped = events.iter().filter(|(e, _)| e.kind == EventKind::Search);
    for (e, w) in skipped.take(20) {
        feed.feed(&mut recording, e, *w);
    }
    let empty = recording.take_delta();
    assert!(empty.is_empty());
    let before = (
        counts(&m),
        pairs(&m),
        scores(&m, T0),
        m.names.len(),
        m.dirty_pairs,
    );
    let dirty = (
        m.dirty_counts.clone(),
        m.dirty_trend.clone(),
        m.dirty_rows.clone(),
    );
    for delta in [empty, ModelDelta::default()] {
        m.merge_delta(&delta);
        assert!(m.take_touched_shards().is_empty());
        assert_eq!(
            before,
            (
                counts(&m),
                pairs(&m),
                scores(&m, T0),
                m.names.len(),
                m.dirty_pairs
            )
        );
        assert_eq!(
            dirty,
            (
                m.dirty_counts.clone(),
                m.dirty_trend.clone(),
                m.dirty_rows.clone()
            )
        );
    }
}

/// A delta cut into parts (each a well-formed delta of its own) merges, part by part and in
/// reverse order, into the model the whole delta gives.
#[test]
fn split_parts_merge_into_the_whole() {
    let delta = some_delta();
    let total = delta.counts.len() + delta.pairs.len() + delta.trends.len();
    assert!(total > 100, "a delta worth splitting ({total} entries)");
    let parts = delta.split(37);
    assert_eq!(parts.len(), total.div_ceil(37));
    assert!(parts.iter().all(|p| !p.is_empty()));
    let now = T0 + 10_000_000;
    let mut whole = Model::new(ModelConfig::default());
    whole.merge_delta(&delta);
    let mut by_parts = Model::new(ModelConfig::default());
    for part in parts.iter().rev() {
        // Each part passes decoding's checks on its own.
        let part = ModelDelta::decode(&part.encode()).unwrap();
        by_parts.merge_delta(&part);
    }
    assert_same_model(&mut whole, &mut by_parts, now, "split");
    assert_eq!(
        delta.split(total),
        vec![delta.clone()],
        "small enough: one part"
    );
    assert_eq!(
        ModelDelta::default().split(10).len(),
        1,
        "an empty delta: one empty part"
    );
}
