//! What the tests seed into local KV (through the Worker's dev bulk route): a model, a
//! buyer's profile, encoded by `attune-core` as the publisher writes them.

use attune_core::event::{Event, EventKind, SCHEMA_VERSION};
use attune_core::model::{
    CatalogItem, CatalogShard, Manifest, Neighbour, NeighbourShard, TrendEntry, Trending, keys,
    shard_of,
};
use attune_core::wire::{Envelope, encode};
use attune_core::{Config, Profile};
use base64::Engine;

use crate::support::{DEV_TOKEN, PROFILE_KEY, SHARDS, send};

pub(crate) fn item(id: &str, title: &str, category: &str) -> CatalogItem {
    CatalogItem {
        id: id.into(),
        title: title.into(),
        url: format!("/p/{id}.html"),
        image: "/img/hearts-love.svg".into(),
        price: "£1.25".into(),
        category: category.into(),
    }
}

pub(crate) fn profile_of_buyer(now: u64) -> Profile {
    let mut p = Profile::default();
    let cfg = attune_core::ProfileConfig::default();
    for (i, (kind, it)) in [
        (EventKind::View, "22086"),
        (EventKind::Purchase, "22086"),
        (EventKind::View, "21034"),
    ]
    .into_iter()
    .enumerate()
    {
        p.apply(
            &Event {
                v: SCHEMA_VERSION,
                event_id: format!("seed{i}").into(),
                user: "17850".into(),
                ts: now - 60_000 + i as u64 * 1000,
                kind,
                item: Some(it.into()),
                props: Default::default(),
            },
            Some("Christmas"),
            &cfg,
        );
    }
    p.version = 5;
    p
}

pub(crate) fn pair(key: &str, value: &[u8], version: u64) -> serde_json::Value {
    serde_json::json!({
        "key": key,
        "value": base64::engine::general_purpose::STANDARD.encode(value),
        "base64": true,
        "metadata": {"v": version},
    })
}

pub(crate) fn seed(base: &str, pairs: Vec<serde_json::Value>) {
    let body = serde_json::to_vec(&pairs).unwrap();
    let r = send(
        base,
        "PUT",
        "/__attune/kv/bulk",
        &[
            ("authorization", &format!("Bearer {DEV_TOKEN}")),
            ("content-type", "application/json"),
        ],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["success"], true);
    assert_eq!(v["result"]["successful_key_count"], pairs.len());
}

pub(crate) fn model_pairs() -> Vec<serde_json::Value> {
    let items = [
        item(
            "85123A",
            "WHITE HANGING HEART T-LIGHT HOLDER",
            "Hearts & Love",
        ),
        item("22086", "PAPER CHAIN KIT 50'S CHRISTMAS", "Christmas"),
        item("22910", "PAPER CHAIN KIT VINTAGE CHRISTMAS", "Christmas"),
        item("21034", "REX CASH+CARRY JUMBO SHOPPER", "Bags & Storage"),
        item("47566", "PARTY BUNTING", "Signs & Decor"),
        item(
            "ZZ1",
            "Tom & Jerry's <script>alert(1)</script>",
            "Signs & Decor",
        ),
        CatalogItem {
            url: "javascript:alert(1)".into(),
            ..item("ZZ2", "EVIL LINK", "Signs & Decor")
        },
    ];
    let mut pairs = Vec::new();
    let mut versions = Vec::new();
    for s in 0..SHARDS {
        let shard = CatalogShard::from_items(
            items
                .iter()
                .filter(|c| shard_of(&c.id, SHARDS) == s)
                .cloned()
                .collect(),
        );
        pairs.push(pair(
            &keys::catalog(s),
            &encode(&Envelope::new(1, 0, shard)),
            1,
        ));
        versions.push((keys::catalog(s), 1));
        let lists: Vec<(String, Vec<Neighbour>)> = [("22086", "22910"), ("22910", "22086")]
            .into_iter()
            .filter(|(a, _)| shard_of(a, SHARDS) == s)
            .map(|(a, b)| {
                (
                    a.to_owned(),
                    vec![Neighbour {
                        item: b.into(),
                        sim: 0.9,
                    }],
                )
            })
            .collect();
        let n = NeighbourShard::from_lists(lists);
        pairs.push(pair(
            &keys::neighbours(s),
            &encode(&Envelope::new(1, 0, n)),
            1,
        ));
        versions.push((keys::neighbours(s), 1));
    }
    let trending = Trending {
        items: ["ZZ1", "ZZ2", "47566", "85123A", "21034"]
            .iter()
            .enumerate()
            .map(|(i, id)| TrendEntry {
                item: (*id).into(),
                score: 50.0 - i as f32,
            })
            .collect(),
        by_category: Vec::new(),
    };
    pairs.push(pair(
        keys::TRENDING,
        &encode(&Envelope::new(1, 0, trending)),
        1,
    ));
    versions.push((keys::TRENDING.into(), 1));
    pairs.push(pair(
        keys::CONFIG,
        &encode(&Envelope::new(1, 0, Config::default())),
        1,
    ));
    versions.push((keys::CONFIG.into(), 1));
    versions.sort();
    let m = Manifest {
        shards: SHARDS,
        versions,
    };
    // The manifest goes last, as the publisher does.
    pairs.push(pair(keys::MANIFEST, &encode(&Envelope::new(1, 0, m)), 1));
    pairs
}

pub(crate) fn pkey(user: &str) -> String {
    attune_core::hash::profile_key(PROFILE_KEY.as_bytes(), user)
}
