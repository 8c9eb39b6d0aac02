//! Property tests: order independence of `Profile::apply`, wire round trips, decoders that
//! never panic, and ranking invariants.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::collections::BTreeMap;

use attune_core::decay::EPOCH_MS;
use attune_core::event::{BatchLimits, Event, EventKind, SCHEMA_VERSION, parse_batch, parse_event};
use attune_core::model::{
    CatalogItem, CatalogShard, Manifest, Neighbour, NeighbourShard, TrendEntry, Trending,
};
use attune_core::profile::{
    Affinity, CartEntry, DecayClass, KindWeight, Profile, ProfileConfig, Purchased, Visit,
};
use attune_core::rank::{RankInput, RankParams, rank};
use attune_core::rules::{
    Arm, Config, DeviceClass, Experiment, Predicate, Segment, SlotRule, VariantRule,
};
use attune_core::session::{Session, encode_cookie, verify_cookie};
use attune_core::wire::{self, Envelope, SCHEMA, WireError};
use attune_core::{HOUR_MS, Millis, Strategy as Slot, decay::Acc};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

use common::{T0, category_of, item_id};

// ---------------------------------------------------------------------------------------
// Order independence

/// One generated event: (user, item, kind, offset from the window start).
type RawEv = (u8, u32, EventKind, Millis);

fn kind() -> impl Strategy<Value = EventKind> {
    prop::sample::select(EventKind::ALL.to_vec())
}

/// Events of a few users on a few items within `window` ms, starting either well inside an
/// epoch or just before an epoch boundary.
fn event_set(window: Millis, max_items: u32) -> impl Strategy<Value = (Millis, Vec<RawEv>)> {
    let start = prop_oneof![
        Just(T0),
        // The window straddles the next decay epoch boundary.
        (0..window).prop_map(|back| (T0 / EPOCH_MS + 1) * EPOCH_MS - back),
    ];
    let ev = (0u8..3, 0..max_items, kind(), 0..window);
    (start, prop::collection::vec(ev, 1..60))
}

fn to_events(start: Millis, raw: &[RawEv]) -> Vec<(u8, Event, Option<&'static str>)> {
    raw.iter()
        .enumerate()
        .map(|(n, &(user, item, kind, offset))| {
            let e = Event {
                v: SCHEMA_VERSION,
                event_id: format!("e{n}").into(),
                user: format!("u{user}").into(),
                ts: start + offset,
                kind,
                item: (kind != EventKind::Search).then(|| item_id(item).into()),
                props: Default::default(),
            };
            // Some items are unknown to the catalog.
            let category = (item % 7 != 6).then(|| category_of(item));
            (user, e, category)
        })
        .collect()
}

fn profiles(
    events: &[(u8, Event, Option<&'static str>)],
    order: &[usize],
    cfg: &ProfileConfig,
) -> BTreeMap<u8, Profile> {
    let mut out: BTreeMap<u8, Profile> = BTreeMap::new();
    for &i in order {
        let (user, e, category) = &events[i];
        out.entry(*user).or_default().apply(e, *category, cfg);
    }
    out
}

fn big_budget() -> ProfileConfig {
    ProfileConfig {
        max_items: 10_000,
        max_categories: 10_000,
        max_purchased: 10_000,
        max_cart: 10_000,
        max_sessions: 10_000,
        ..ProfileConfig::default()
    }
}

fn two_orders(
    window: Millis,
    max_items: u32,
) -> impl Strategy<Value = (Millis, Vec<RawEv>, Vec<usize>, Vec<usize>)> {
    event_set(window, max_items).prop_flat_map(|(start, raw)| {
        let idx: Vec<usize> = (0..raw.len()).collect();
        (
            Just(start),
            Just(raw),
            Just(idx.clone()).prop_shuffle(),
            Just(idx).prop_shuffle(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any two orders of one event set give equal profiles (and equal snapshot bytes), with a
    /// budget large enough that nothing is truncated.
    #[test]
    fn apply_is_order_independent(
        (start, raw, a, b) in two_orders(4 * HOUR_MS, 12)
    ) {
        let cfg = big_budget();
        let events = to_events(start, &raw);
        let pa = profiles(&events, &a, &cfg);
        let pb = profiles(&events, &b, &cfg);
        prop_assert_eq!(&pa, &pb);
        for (user, p) in &pa {
            let bytes = |p: &Profile| wire::encode(&Envelope::new(p.version, p.last_seen, p.clone()));
            prop_assert_eq!(bytes(p), bytes(&pb[user]));
        }
    }

    /// The same with the default budget, staying within it (few items and categories, a
    /// window too short for more visits than the budget keeps).
    #[test]
    fn apply_is_order_independent_within_the_default_budget(
        (start, raw, a, b) in two_orders(3 * HOUR_MS, 10)
    ) {
        let cfg = ProfileConfig::default();
        let events = to_events(start, &raw);
        let pa = profiles(&events, &a, &cfg);
        prop_assert_eq!(pa, profiles(&events, &b, &cfg));
    }
}

// ---------------------------------------------------------------------------------------
// Wire round trips

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 _£&ü🦀:-]{0,12}"
}

fn float32() -> impl Strategy<Value = f32> {
    any::<f32>().prop_filter("NaN is not equal to itself", |x| !x.is_nan())
}

fn float64() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("NaN is not equal to itself", |x| !x.is_nan())
}

fn acc() -> impl Strategy<Value = Acc> {
    prop_oneof![
        Just(Acc::default()),
        any::<(i64, i64, i64)>().prop_map(|(a, b, c)| Acc(a, b, c))
    ]
}

fn affinity() -> impl Strategy<Value = Affinity> {
    (text(), acc(), acc()).prop_map(|(key, short, long)| Affinity {
        key: key.into(),
        short,
        long,
    })
}

fn profile() -> impl Strategy<Value = Profile> {
    use prop::collection::vec;
    (
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>()),
        vec(affinity(), 0..6),
        vec(affinity(), 0..4),
        vec(
            (text(), any::<u64>()).prop_map(|(item, last)| Purchased {
                item: item.into(),
                last,
            }),
            0..4,
        ),
        vec(
            (text(), any::<u64>(), any::<u64>()).prop_map(|(item, added, removed)| CartEntry {
                item: item.into(),
                added,
                removed,
            }),
            0..4,
        ),
        (
            any::<u32>(),
            vec(any::<(u64, u64)>().prop_map(|(a, b)| Visit(a, b)), 0..4),
            any::<u32>(),
        ),
    )
        .prop_map(
            |(
                (version, first_seen, last_seen, epoch),
                items,
                categories,
                purchased,
                cart,
                (purchases, visits, older_visits),
            )| {
                Profile {
                    version,
                    first_seen,
                    last_seen,
                    epoch,
                    items,
                    categories,
                    purchased,
                    cart,
                    purchases,
                    visits,
                    older_visits,
                }
            },
        )
}

fn catalog_shard() -> impl Strategy<Value = CatalogShard> {
    prop::collection::vec(
        (text(), text(), text(), text(), text(), text()).prop_map(
            |(id, title, url, image, price, category)| CatalogItem {
                id,
                title,
                url,
                image,
                price,
                category,
            },
        ),
        0..6,
    )
    .prop_map(|items| CatalogShard { items })
}

fn neighbour_shard() -> impl Strategy<Value = NeighbourShard> {
    let n = (text(), float32()).prop_map(|(item, sim)| Neighbour { item, sim });
    prop::collection::vec((text(), prop::collection::vec(n, 0..5)), 0..5)
        .prop_map(|lists| NeighbourShard { lists })
}

fn trending() -> impl Strategy<Value = Trending> {
    let e = (text(), float32()).prop_map(|(item, score)| TrendEntry { item, score });
    (
        prop::collection::vec(e, 0..8),
        prop::collection::vec((text(), prop::collection::vec(text(), 0..4)), 0..4),
    )
        .prop_map(|(items, by_category)| Trending { items, by_category })
}

fn manifest() -> impl Strategy<Value = Manifest> {
    (
        any::<u32>(),
        prop::collection::vec((text(), any::<u64>()), 0..8),
    )
        .prop_map(|(shards, versions)| Manifest { shards, versions })
}

fn slot_strategy() -> impl Strategy<Value = Slot> {
    prop::sample::select(Slot::ALL.to_vec())
}

fn predicate() -> impl Strategy<Value = Predicate> {
    let device = prop::sample::select(vec![
        DeviceClass::Desktop,
        DeviceClass::Mobile,
        DeviceClass::Tablet,
    ]);
    prop_oneof![
        any::<u32>().prop_map(|n| Predicate::PurchasesAtLeast { n }),
        (text(), float64())
            .prop_map(|(category, score)| Predicate::CategoryAffinityAtLeast { category, score }),
        any::<u32>().prop_map(|n| Predicate::VisitsAtLeast { n }),
        Just(Predicate::NewVisitor),
        Just(Predicate::ReturningVisitor),
        prop::collection::vec(text(), 0..3).prop_map(|any_of| Predicate::Country { any_of }),
        prop::collection::vec(device, 0..3).prop_map(|any_of| Predicate::Device { any_of }),
    ]
}

fn kind_weight() -> impl Strategy<Value = KindWeight> {
    (float32(), any::<bool>()).prop_map(|(weight, long)| KindWeight {
        weight,
        class: if long {
            DecayClass::Long
        } else {
            DecayClass::Short
        },
    })
}

fn profile_config() -> impl Strategy<Value = ProfileConfig> {
    (
        (any::<u64>(), any::<u64>()),
        prop::array::uniform7(kind_weight()),
        (
            any::<usize>(),
            any::<usize>(),
            any::<usize>(),
            any::<usize>(),
            any::<usize>(),
            any::<u64>(),
        ),
    )
        .prop_map(
            |((short, long), w, (mi, mc, mp, mcart, ms, gap))| ProfileConfig {
                short_half_life_ms: short,
                long_half_life_ms: long,
                view: w[0],
                click: w[1],
                add_to_cart: w[2],
                remove_from_cart: w[3],
                purchase: w[4],
                search: w[5],
                impression: w[6],
                max_items: mi,
                max_categories: mc,
                max_purchased: mp,
                max_cart: mcart,
                max_sessions: ms,
                session_gap_ms: gap,
            },
        )
}

fn rank_params() -> impl Strategy<Value = RankParams> {
    (
        prop::array::uniform5(float64()),
        any::<u64>(),
        prop::array::uniform7(any::<usize>()),
    )
        .prop_map(|(w, half_life, n)| RankParams {
            session_weight: w[0],
            profile_weight: w[1],
            category_weight: w[2],
            trend_weight: w[3],
            session_half_life_ms: half_life,
            session_items: n[6],
            session_position_decay: w[4],
            seed_items: n[0],
            seed_categories: n[1],
            per_category: n[2],
            trending_candidates: n[3],
            diversity_cap: n[4],
            max_candidates: n[5],
        })
}

fn config() -> impl Strategy<Value = Config> {
    use prop::collection::vec;
    let segment = (text(), vec(predicate(), 0..3)).prop_map(|(name, all)| Segment { name, all });
    let slot = (
        text(),
        vec(
            (text(), text()).prop_map(|(variant, segment)| VariantRule { variant, segment }),
            0..3,
        ),
    )
        .prop_map(|(slot, variants)| SlotRule { slot, variants });
    let arm = (
        text(),
        any::<u32>(),
        prop::option::of(text()),
        prop::option::of(slot_strategy()),
    )
        .prop_map(|(name, weight, variant, strategy)| Arm {
            name,
            weight,
            variant,
            strategy,
        });
    let experiment = (
        text(),
        text(),
        any::<u32>(),
        text(),
        vec(arm, 0..3),
        any::<bool>(),
    )
        .prop_map(|(id, slot, traffic_bp, control, arms, active)| Experiment {
            id,
            slot,
            traffic_bp,
            control,
            arms,
            active,
        });
    (
        vec(segment, 0..3),
        vec(slot, 0..3),
        vec(experiment, 0..3),
        profile_config(),
        rank_params(),
    )
        .prop_map(|(segments, slots, experiments, profile, rank)| Config {
            segments,
            slots,
            experiments,
            profile,
            rank,
        })
}

fn envelope<T: std::fmt::Debug>(
    body: impl Strategy<Value = T>,
) -> impl Strategy<Value = Envelope<T>> {
    (any::<u8>(), any::<u64>(), any::<u64>(), body).prop_map(
        |(minor, version, updated_at, body)| {
            let mut e = Envelope::new(version, updated_at, body);
            e.schema = (SCHEMA & 0xff00) | u16::from(minor);
            e
        },
    )
}

fn round_trip<T>(e: &Envelope<T>) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + wire::read::Read + PartialEq + std::fmt::Debug,
{
    let bytes = wire::encode(e);
    let decoded: Envelope<T> =
        wire::decode(&bytes).map_err(|err| TestCaseError::fail(err.to_string()))?;
    prop_assert_eq!(&decoded, e);
    // `rmp-serde` and the serde derives, which wrote them, read the same.
    let serde: Envelope<T> =
        rmp_serde::from_slice(&bytes).map_err(|err| TestCaseError::fail(err.to_string()))?;
    prop_assert_eq!(&serde, e);
    // Re-encoding what was decoded gives the same bytes: decoding is idempotent.
    prop_assert_eq!(wire::encode(&decoded), bytes);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn profile_round_trips(e in envelope(profile())) { round_trip(&e)?; }

    #[test]
    fn catalog_shard_round_trips(e in envelope(catalog_shard())) { round_trip(&e)?; }

    #[test]
    fn neighbour_shard_round_trips(e in envelope(neighbour_shard())) { round_trip(&e)?; }

    #[test]
    fn trending_round_trips(e in envelope(trending())) { round_trip(&e)?; }

    #[test]
    fn config_round_trips(e in envelope(config())) { round_trip(&e)?; }

    #[test]
    fn manifest_round_trips(e in envelope(manifest())) { round_trip(&e)?; }

    /// Profiles built by `apply` survive the capped encoder too: the capped bytes decode.
    #[test]
    fn capped_profiles_decode((start, raw) in event_set(48 * HOUR_MS, 40), cap in 64usize..4096) {
        let events = to_events(start, &raw);
        let order: Vec<usize> = (0..events.len()).collect();
        for (_, p) in profiles(&events, &order, &ProfileConfig::default()) {
            let env = Envelope::new(p.version, p.last_seen, p);
            let bytes = wire::encode_profile(&env, cap);
            let decoded: Envelope<Profile> = wire::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decoded.version, env.version);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Decoders never panic

fn decode_all(bytes: &[u8]) {
    fn check<T: wire::read::Read>(bytes: &[u8]) {
        // A refusal says where it stopped, somewhere in the input.
        if let Err(WireError::Malformed(e)) = wire::decode::<T>(bytes) {
            assert!(e.offset() <= bytes.len(), "{e} (input of {})", bytes.len());
        }
    }
    check::<Profile>(bytes);
    check::<CatalogShard>(bytes);
    check::<NeighbourShard>(bytes);
    check::<Trending>(bytes);
    check::<Config>(bytes);
    check::<Manifest>(bytes);
}

/// Valid envelopes to mutate: near-valid input reaches deeper into the decoders than noise.
fn seeds() -> Vec<Vec<u8>> {
    vec![
        wire::encode(&Envelope::new(1, T0, common::typical_profile())),
        wire::encode(&Envelope::new(1, T0, common::catalog(4))),
        wire::encode(&Envelope::new(1, T0, common::neighbours(6, 3))),
        wire::encode(&Envelope::new(1, T0, common::trending(20, 6, 3))),
        wire::encode(&Envelope::new(1, T0, common::config())),
        wire::encode(&Envelope::new(1, T0, common::manifest())),
    ]
}

const COOKIE_KEY: &[u8] = b"property-test-key";

/// A correctly signed cookie around arbitrary payload bytes: the signature passes, so the
/// payload decoder itself is exercised.
fn signed_cookie(payload_text: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(COOKIE_KEY).unwrap();
    mac.update(payload_text.as_bytes());
    let tag = mac.finalize().into_bytes();
    use base64::Engine;
    format!(
        "{payload_text}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag)
    )
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// JSON-ish text assembled from event fragments: mostly near-valid events.
fn jsonish() -> impl Strategy<Value = String> {
    let frag = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"v\"",
        "1",
        "2",
        "-1",
        "1e999",
        "null",
        "true",
        "\"event_id\"",
        "\"user\"",
        "\"ts\"",
        "\"kind\"",
        "\"view\"",
        "\"purchase\"",
        "\"item\"",
        "\"props\"",
        "\"a\"",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "1733040000000",
        "18446744073709551616",
        "{\"q\":[1]}",
        "\n",
        " ",
        "\"search\"",
        "0.5",
    ]);
    prop::collection::vec(frag, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn wire_decoders_never_panic_on_noise(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn wire_decoders_never_panic_on_mutations(
        seed in 0usize..6,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = seeds()[seed].clone();
        for (at, byte, op) in edits {
            if bytes.is_empty() { break; }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => { bytes.remove(i); }
                _ => bytes.insert(i, byte),
            }
        }
        decode_all(&bytes);
        let len = bytes.len();
        decode_all(&bytes[..cut.index(len + 1).min(len)]);
    }

    #[test]
    fn verify_cookie_never_panics(text in ".{0,200}", payload in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = verify_cookie(&text, COOKIE_KEY);
        let _ = verify_cookie(&format!("1.{text}"), COOKIE_KEY);
        let _ = verify_cookie(&format!("1.{}.{}", b64(&payload), b64(&payload)), COOKIE_KEY);
        // Signed, so only the payload decoder stands between the bytes and a session.
        if let Ok(s) = verify_cookie(&signed_cookie(&format!("1.{}", b64(&payload))), COOKIE_KEY) {
            prop_assert!(s.recent.len() <= attune_core::session::MAX_RECENT);
        }
    }

    #[test]
    fn cookies_round_trip(
        started in 0u64..4_000_000_000, pages in any::<u32>(),
        items in prop::collection::btree_set("[A-Z0-9]{1,12}", 0..25),
        ages in prop::collection::vec(0u64..100_000, 25),
    ) {
        let last = started + 3_600;
        let mut s = Session { started: started * 1000, last_seen: last * 1000, pages, recent: Vec::new() };
        for (item, age) in items.iter().zip(&ages).take(attune_core::session::MAX_RECENT) {
            s.recent.push(attune_core::session::RecentItem { item: item.clone(), ts: last.saturating_sub(*age) * 1000 });
        }
        let cookie = encode_cookie(&s, COOKIE_KEY);
        prop_assert!(cookie.len() <= 1024);
        prop_assert_eq!(verify_cookie(&cookie, COOKIE_KEY), Ok(s));
    }

    #[test]
    fn event_parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), text in jsonish()) {
        let limits = BatchLimits { max_bytes: 4096, max_events: 8 };
        for input in [&bytes[..], text.as_bytes()] {
            let _ = parse_event(input, T0);
            let _ = parse_batch(input, T0, limits);
            let _ = parse_batch(input, T0, BatchLimits::default());
        }
        let array = format!("[{text}]");
        let _ = parse_batch(array.as_bytes(), T0, limits);
    }
}

/// A signed cookie whose signed part is only `1` (shorter than the `1.` prefix once the tag
/// is split off): only a holder of the key can make one, but it must still not panic.
#[test]
fn a_signed_cookie_without_a_payload_is_malformed() {
    let cookie = signed_cookie("1");
    assert!(cookie.starts_with("1."));
    assert!(verify_cookie(&cookie, COOKIE_KEY).is_err());
    assert!(verify_cookie(&signed_cookie("1."), COOKIE_KEY).is_err());
}

// ---------------------------------------------------------------------------------------
// Ranking invariants

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
