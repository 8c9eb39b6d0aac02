//! Shared test vectors (`tests/vectors.json`): inputs and expected outputs for profile
//! updates, ranking, experiment bucketing, profile keys, shard assignment and session
//! cookies. The same test runs natively and on `wasm32-unknown-unknown` under node
//! (`wasm-bindgen-test`); floats are compared as `f64::to_bits`, so both must agree bit for
//! bit with the file and therefore with each other.
//!
//! Regenerate (natively) after a deliberate behaviour change:
//! `ATTUNE_BLESS=1 cargo test -p attune-core --test vectors`.

mod common;

use std::collections::BTreeMap;

use attune_core::Millis;
use attune_core::event::Event;
use attune_core::hash;
use attune_core::model::{self, CatalogShard, NeighbourShard, Trending};
use attune_core::profile::{Profile, ProfileConfig};
use attune_core::rank::{RankInput, RankParams, Strategy, rank};
use attune_core::session::{Session, encode_cookie, verify_cookie};
use attune_core::wire::{self, Envelope};
use serde::{Deserialize, Serialize};

const VECTORS: &str = include_str!("vectors.json");

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Vectors {
    about: String,
    apply: Vec<ApplyCase>,
    rank: RankVectors,
    bucket: Vec<BucketCase>,
    profile_key: Vec<ProfileKeyCase>,
    shard_of: Vec<ShardCase>,
    session_cookie: Vec<CookieCase>,
}

/// Events applied in the listed order to an empty profile.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct ApplyCase {
    name: String,
    /// `null`: `ProfileConfig::default()`.
    config: Option<ProfileConfig>,
    /// Catalog category of each item the events name.
    categories: BTreeMap<String, String>,
    events: Vec<Event>,
    /// When the scores below are read.
    now: Millis,
    // Expected:
    /// `wire::encode(Envelope::new(version, last_seen, profile))`, hex.
    profile_hex: String,
    /// `top_items(now, cfg, 10)`: `[key, f64 bits hex]`.
    top_items: Vec<(String, String)>,
    top_categories: Vec<(String, String)>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct RankVectors {
    catalog: CatalogShard,
    neighbours: NeighbourShard,
    trending: Trending,
    cases: Vec<RankCase>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct RankCase {
    name: String,
    strategy: Strategy,
    count: usize,
    /// Name of an `apply` case whose resulting profile (and config) is used.
    profile_from: Option<String>,
    session: Option<Session>,
    page_item: Option<String>,
    category: Option<String>,
    /// `null`: `RankParams::default()`.
    params: Option<RankParams>,
    now: Millis,
    // Expected:
    picks: Vec<PickVector>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct PickVector {
    item: String,
    /// `f64::to_bits` in hex: the contract.
    score_bits: String,
    /// The same score in decimal, for people; not compared.
    score: f64,
    reason: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct BucketCase {
    experiment: String,
    visitor: String,
    bucket: u32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct ProfileKeyCase {
    key_hex: String,
    user: String,
    profile_key: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct ShardCase {
    item: String,
    shards: u32,
    shard: u32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct CookieCase {
    key_hex: String,
    session: Session,
    cookie: String,
}

fn bits(x: f64) -> String {
    format!("{:016x}", x.to_bits())
}

// ---------------------------------------------------------------------------------------
// Computing outputs from inputs: the code under test, shared by checking and blessing.

fn applied(case: &ApplyCase) -> (Profile, ProfileConfig) {
    let cfg = case.config.clone().unwrap_or_default();
    let mut p = Profile::default();
    for e in &case.events {
        let category = e.item.as_deref().and_then(|i| case.categories.get(i));
        p.apply(e, category.map(String::as_str), &cfg);
    }
    (p, cfg)
}

/// `[key, f64 bits hex]` pairs.
type Scores = Vec<(String, String)>;

fn apply_outputs(case: &ApplyCase) -> (String, Scores, Scores) {
    let (p, cfg) = applied(case);
    let top = |list: Vec<(&str, f64)>| {
        list.into_iter()
            .map(|(k, s)| (k.to_string(), bits(s)))
            .collect::<Vec<_>>()
    };
    let items = top(p.top_items(case.now, &cfg, 10));
    let categories = top(p.top_categories(case.now, &cfg, 10));
    let hex = hex::encode(wire::encode(&Envelope::new(p.version, p.last_seen, p)));
    (hex, items, categories)
}

fn rank_outputs(v: &RankVectors, apply: &[ApplyCase], case: &RankCase) -> Vec<PickVector> {
    let profile = case.profile_from.as_ref().map(|name| {
        let source = apply
            .iter()
            .find(|a| &a.name == name)
            .unwrap_or_else(|| panic!("rank case {}: no apply case {name}", case.name));
        applied(source)
    });
    let default_cfg = ProfileConfig::default();
    let params = case.params.clone().unwrap_or_default();
    let input = RankInput {
        strategy: case.strategy,
        count: case.count,
        profile: profile.as_ref().map(|p| &p.0),
        profile_config: profile.as_ref().map_or(&default_cfg, |p| &p.1),
        session: case.session.as_ref(),
        page_item: case.page_item.as_deref(),
        category: case.category.as_deref(),
        catalog: &v.catalog,
        neighbours: &v.neighbours,
        trending: &v.trending,
        params: &params,
        now: case.now,
        exclude: &[],
    };
    rank(&input)
        .into_iter()
        .map(|p| PickVector {
            item: p.item,
            score_bits: bits(p.score),
            score: p.score,
            reason: p.reason.as_str().into(),
        })
        .collect()
}

fn cookie_output(case: &CookieCase) -> String {
    encode_cookie(&case.session, &hex::decode(&case.key_hex).unwrap())
}

// ---------------------------------------------------------------------------------------
// The check.

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn shared_vectors() {
    #[cfg(not(target_arch = "wasm32"))]
    let text = if std::env::var_os("ATTUNE_BLESS").is_some_and(|v| v == "1") {
        bless::write()
    } else {
        VECTORS.to_string()
    };
    #[cfg(target_arch = "wasm32")]
    let text = VECTORS.to_string();
    let v: Vectors = serde_json::from_str(&text).expect("vectors.json parses");
    let mut failures = Vec::new();
    let mut check = |what: String, ok: bool| {
        if !ok {
            failures.push(what);
        }
    };

    for case in &v.apply {
        let (hex, items, categories) = apply_outputs(case);
        check(
            format!("apply {}: profile bytes", case.name),
            hex == case.profile_hex,
        );
        check(
            format!("apply {}: top items", case.name),
            items == case.top_items,
        );
        check(
            format!("apply {}: top categories", case.name),
            categories == case.top_categories,
        );
        // The committed bytes also decode back to the profile.
        let env: Envelope<Profile> =
            wire::decode(&hex::decode(&case.profile_hex).unwrap()).expect("profile decodes");
        check(
            format!("apply {}: decode", case.name),
            env.body == applied(case).0,
        );
    }
    for case in &v.rank.cases {
        let picks = rank_outputs(&v.rank, &v.apply, case);
        let same = picks.len() == case.picks.len()
            && picks.iter().zip(&case.picks).all(|(a, b)| {
                a.item == b.item && a.score_bits == b.score_bits && a.reason == b.reason
            });
        check(format!("rank {}: {picks:?}", case.name), same);
    }
    for c in &v.bucket {
        check(
            format!("bucket {c:?}"),
            hash::bucket(&c.experiment, &c.visitor) == c.bucket,
        );
    }
    for c in &v.profile_key {
        let key = hex::decode(&c.key_hex).unwrap();
        check(
            format!("profile_key {c:?}"),
            hash::profile_key(&key, &c.user) == c.profile_key,
        );
    }
    for c in &v.shard_of {
        check(
            format!("shard_of {c:?}"),
            model::shard_of(&c.item, c.shards) == c.shard,
        );
    }
    for c in &v.session_cookie {
        check(format!("cookie encode {c:?}"), cookie_output(c) == c.cookie);
        let key = hex::decode(&c.key_hex).unwrap();
        check(
            format!("cookie verify {c:?}"),
            verify_cookie(&c.cookie, &key).as_ref() == Ok(&c.session),
        );
    }
    assert!(
        failures.is_empty(),
        "{} vector(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Guard against an accidentally emptied file.
    assert!(v.apply.len() >= 5 && v.rank.cases.len() >= 8 && v.bucket.len() >= 20);
}

// ---------------------------------------------------------------------------------------
// Generating the inputs (native, `ATTUNE_BLESS=1` only).

#[cfg(not(target_arch = "wasm32"))]
mod bless {
    use super::common::{self, T0, category_of, event, item_id};
    use super::*;
    use attune_core::event::EventKind;
    use attune_core::{DAY_MS, HOUR_MS, MINUTE_MS};

    fn case(
        name: &str,
        config: Option<ProfileConfig>,
        events: Vec<Event>,
        now: Millis,
    ) -> ApplyCase {
        let categories = events
            .iter()
            .filter_map(|e| e.item.clone())
            .filter_map(|i| {
                let n: u32 = i.strip_prefix('I')?.parse().ok()?;
                Some((i.to_string(), category_of(n).to_string()))
            })
            .collect();
        let mut c = ApplyCase {
            name: name.into(),
            config,
            categories,
            events,
            now,
            profile_hex: String::new(),
            top_items: Vec::new(),
            top_categories: Vec::new(),
        };
        (c.profile_hex, c.top_items, c.top_categories) = apply_outputs(&c);
        c
    }

    fn apply_cases() -> Vec<ApplyCase> {
        use EventKind::*;
        let boundary = (T0 / attune_core::decay::EPOCH_MS + 1) * attune_core::decay::EPOCH_MS;
        let mut out = Vec::new();
        out.push(case(
            "one-view",
            None,
            vec![event(1, T0, View, &item_id(1))],
            T0,
        ));
        let mixed: Vec<Event> = [
            (View, 1),
            (Click, 1),
            (View, 2),
            (AddToCart, 2),
            (View, 3),
            (Purchase, 2),
            (RemoveFromCart, 3),
            (AddToCart, 4),
            (Impression, 5),
            (View, 6),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (k, it))| event(i as u64, T0 + i as u64 * 7 * MINUTE_MS, k, &item_id(it)))
        .collect();
        out.push(case("mixed-kinds", None, mixed.clone(), T0 + 2 * HOUR_MS));
        let mut reversed = mixed.clone();
        reversed.reverse();
        out.push(case(
            "mixed-kinds-reversed",
            None,
            reversed,
            T0 + 2 * HOUR_MS,
        ));
        let straddle: Vec<Event> = (0..12u64)
            .map(|i| {
                let ts = boundary - 3 * HOUR_MS + i * 29 * MINUTE_MS;
                let kind = [View, Click, AddToCart, Purchase][(i % 4) as usize];
                event(100 + i, ts, kind, &item_id((i % 5) as u32))
            })
            .collect();
        out.push(case(
            "epoch-boundary",
            None,
            straddle.clone(),
            boundary + 4 * HOUR_MS,
        ));
        let mut shuffled = straddle;
        shuffled.sort_by_key(|e| (e.ts * 7919) % 1_000_003);
        out.push(case(
            "epoch-boundary-shuffled",
            None,
            shuffled,
            boundary + 4 * HOUR_MS,
        ));
        out.push(case(
            "two-weeks",
            None,
            common::typical_events(1000)
                .into_iter()
                .map(|(e, _)| e)
                .collect(),
            T0,
        ));
        out.push(case(
            "over-budget",
            Some(ProfileConfig {
                max_items: 4,
                max_categories: 2,
                max_purchased: 2,
                max_cart: 2,
                max_sessions: 2,
                ..ProfileConfig::default()
            }),
            (0..30u64)
                .map(|i| {
                    let kind = [View, Purchase, AddToCart, Click, RemoveFromCart][(i % 5) as usize];
                    event(
                        200 + i,
                        T0 + i * 40 * MINUTE_MS,
                        kind,
                        &item_id((i * 3 % 17) as u32),
                    )
                })
                .collect(),
            T0 + DAY_MS,
        ));
        out.push(case(
            "long-gap-decay",
            None,
            vec![
                event(300, T0 - 90 * DAY_MS, Purchase, &item_id(7)),
                event(301, T0 - 30 * DAY_MS, View, &item_id(8)),
                event(302, T0, View, &item_id(9)),
            ],
            T0 + DAY_MS,
        ));
        out
    }

    fn rank_cases(v: &RankVectors, apply: &[ApplyCase]) -> Vec<RankCase> {
        let session = |items: &[u32]| Some(common::session(T0 + 2 * HOUR_MS, items));
        let base = |name: &str, strategy: Strategy| RankCase {
            name: name.into(),
            strategy,
            count: 6,
            profile_from: None,
            session: None,
            page_item: None,
            category: None,
            params: None,
            now: T0 + 2 * HOUR_MS,
            picks: Vec::new(),
        };
        let mut cases = vec![
            base("cold-for-you", Strategy::ForYou),
            RankCase {
                session: session(&[3, 8, 13]),
                ..base("session-for-you", Strategy::ForYou)
            },
            RankCase {
                profile_from: Some("mixed-kinds".into()),
                ..base("profile-for-you", Strategy::ForYou)
            },
            RankCase {
                profile_from: Some("epoch-boundary".into()),
                session: session(&[1, 2]),
                count: 10,
                now: (T0 / attune_core::decay::EPOCH_MS + 1) * attune_core::decay::EPOCH_MS
                    + 4 * HOUR_MS,
                ..base("profile-and-session-for-you", Strategy::ForYou)
            },
            RankCase {
                profile_from: Some("mixed-kinds".into()),
                session: session(&[3, 8, 13]),
                params: Some(RankParams {
                    diversity_cap: 1,
                    ..RankParams::default()
                }),
                count: 5,
                ..base("diversity-cap-1", Strategy::ForYou)
            },
            RankCase {
                page_item: Some(item_id(10)),
                profile_from: Some("mixed-kinds".into()),
                ..base("similar", Strategy::Similar)
            },
            RankCase {
                page_item: Some("NOT-IN-CATALOG".into()),
                ..base("similar-unknown-page", Strategy::Similar)
            },
            RankCase {
                count: 10,
                session: session(&[0, 5]),
                ..base("trending", Strategy::Trending)
            },
            RankCase {
                session: session(&[4, 9, 14, 19, 24]),
                profile_from: Some("two-weeks".into()),
                now: T0,
                ..base("recently-viewed", Strategy::RecentlyViewed)
            },
            RankCase {
                category: Some("Mugs".into()),
                profile_from: Some("mixed-kinds".into()),
                ..base("category", Strategy::Category)
            },
            RankCase {
                count: 0,
                session: session(&[3]),
                ..base("count-zero", Strategy::ForYou)
            },
            RankCase {
                profile_from: Some("over-budget".into()),
                count: 8,
                now: T0 + DAY_MS,
                ..base("over-budget-for-you", Strategy::ForYou)
            },
        ];
        for c in &mut cases {
            c.picks = rank_outputs(v, apply, c);
        }
        cases
    }

    pub fn write() -> String {
        let apply = apply_cases();
        let mut rank = RankVectors {
            catalog: common::catalog(60),
            neighbours: common::neighbours(60, 6),
            trending: common::trending(60, 20, 8),
            cases: Vec::new(),
        };
        rank.cases = rank_cases(&rank, &apply);

        let mut bucket = Vec::new();
        for experiment in ["hero-test", "recs-2024-12", "", "ünïcode-exp"] {
            for visitor in [
                "",
                "v",
                "0f8fad5b-d9cb-469f-a165-70867728950e",
                "17850",
                "visitor-1",
                "visitor-2",
                "visitor-1#arm",
                "🦀",
            ] {
                bucket.push(BucketCase {
                    experiment: experiment.into(),
                    visitor: visitor.into(),
                    bucket: hash::bucket(experiment, visitor),
                });
            }
        }
        let mut profile_key = Vec::new();
        for key in [&b""[..], b"secret", &[0xab; 64], &[7; 100]] {
            for user in ["", "17850", "user@example.com", "ünïcode 🦀"] {
                profile_key.push(ProfileKeyCase {
                    key_hex: hex::encode(key),
                    user: user.into(),
                    profile_key: hash::profile_key(key, user),
                });
            }
        }
        let mut shard_of = Vec::new();
        for item in [
            "",
            "85123A",
            "71053",
            "22632",
            "POST",
            item_id(9999).as_str(),
        ] {
            for shards in [0, 1, 2, 16, 64, 1000] {
                shard_of.push(ShardCase {
                    item: item.into(),
                    shards,
                    shard: model::shard_of(item, shards),
                });
            }
        }
        let mut session_cookie = Vec::new();
        let mut full = common::session(T0, &[]);
        for i in 0..25u32 {
            full.record_item(&item_id(i), T0 - u64::from(25 - i) * 1_000);
        }
        full.touch(T0, attune_core::session::DEFAULT_GAP_MS);
        for (key, session) in [
            (&b"k"[..], Session::fresh(T0)),
            (
                b"attune-golden-cookie-key-0123456",
                common::session(T0, &[3, 1, 4]),
            ),
            (&[0x5a; 48], full),
        ] {
            let mut c = CookieCase {
                key_hex: hex::encode(key),
                session,
                cookie: String::new(),
            };
            c.cookie = cookie_output(&c);
            session_cookie.push(c);
        }

        let v = Vectors {
            about: "attune-core shared test vectors; see core/tests/vectors.rs. Floats are \
                    f64::to_bits in hex. Regenerate with ATTUNE_BLESS=1."
                .into(),
            apply,
            rank,
            bucket,
            profile_key,
            shard_of,
            session_cookie,
        };
        let mut json = serde_json::to_string_pretty(&v).unwrap();
        json.push('\n');
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors.json");
        std::fs::write(path, &json).unwrap();
        eprintln!("wrote {path}");
        json
    }
}
