//! Generators for events and for every published wire type.

use attune_core::event::EventKind;
use attune_core::model::{
    CatalogItem, CatalogShard, Manifest, Neighbour, NeighbourShard, TrendEntry, Trending,
};
use attune_core::profile::{
    Affinity, CartEntry, DecayClass, KindWeight, Profile, ProfileConfig, Purchased, Visit,
};
use attune_core::rank::RankParams;
use attune_core::rules::{
    Arm, Config, DeviceClass, Experiment, Predicate, Segment, SlotRule, VariantRule,
};
use attune_core::{Strategy as Slot, decay::Acc};
use proptest::prelude::*;

pub(crate) fn kind() -> impl Strategy<Value = EventKind> {
    prop::sample::select(EventKind::ALL.to_vec())
}

pub(crate) fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 _£&ü🦀:-]{0,12}"
}

pub(crate) fn float32() -> impl Strategy<Value = f32> {
    any::<f32>().prop_filter("NaN is not equal to itself", |x| !x.is_nan())
}

pub(crate) fn float64() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("NaN is not equal to itself", |x| !x.is_nan())
}

pub(crate) fn acc() -> impl Strategy<Value = Acc> {
    prop_oneof![
        Just(Acc::default()),
        any::<(i64, i64, i64)>().prop_map(|(a, b, c)| Acc(a, b, c))
    ]
}

pub(crate) fn affinity() -> impl Strategy<Value = Affinity> {
    (text(), acc(), acc()).prop_map(|(key, short, long)| Affinity {
        key: key.into(),
        short,
        long,
    })
}

pub(crate) fn profile() -> impl Strategy<Value = Profile> {
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

pub(crate) fn catalog_shard() -> impl Strategy<Value = CatalogShard> {
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

pub(crate) fn neighbour_shard() -> impl Strategy<Value = NeighbourShard> {
    let n = (text(), float32()).prop_map(|(item, sim)| Neighbour { item, sim });
    prop::collection::vec((text(), prop::collection::vec(n, 0..5)), 0..5)
        .prop_map(|lists| NeighbourShard { lists })
}

pub(crate) fn trending() -> impl Strategy<Value = Trending> {
    let e = (text(), float32()).prop_map(|(item, score)| TrendEntry { item, score });
    (
        prop::collection::vec(e, 0..8),
        prop::collection::vec((text(), prop::collection::vec(text(), 0..4)), 0..4),
    )
        .prop_map(|(items, by_category)| Trending { items, by_category })
}

pub(crate) fn manifest() -> impl Strategy<Value = Manifest> {
    (
        any::<u32>(),
        prop::collection::vec((text(), any::<u64>()), 0..8),
    )
        .prop_map(|(shards, versions)| Manifest { shards, versions })
}

pub(crate) fn slot_strategy() -> impl Strategy<Value = Slot> {
    prop::sample::select(Slot::ALL.to_vec())
}

pub(crate) fn predicate() -> impl Strategy<Value = Predicate> {
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

pub(crate) fn kind_weight() -> impl Strategy<Value = KindWeight> {
    (float32(), any::<bool>()).prop_map(|(weight, long)| KindWeight {
        weight,
        class: if long {
            DecayClass::Long
        } else {
            DecayClass::Short
        },
    })
}

pub(crate) fn profile_config() -> impl Strategy<Value = ProfileConfig> {
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

pub(crate) fn rank_params() -> impl Strategy<Value = RankParams> {
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

pub(crate) fn config() -> impl Strategy<Value = Config> {
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
