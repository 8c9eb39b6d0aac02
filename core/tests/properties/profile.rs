//! Order independence: any order of one event set gives the same profile.

use std::collections::BTreeMap;

use attune_core::decay::EPOCH_MS;
use attune_core::event::{Event, EventKind, SCHEMA_VERSION};
use attune_core::profile::{Profile, ProfileConfig};
use attune_core::wire::{self, Envelope};
use attune_core::{HOUR_MS, Millis};
use proptest::prelude::*;

use crate::common::{T0, category_of, item_id};
use crate::generators::kind;

/// One generated event: (user, item, kind, offset from the window start).
pub(crate) type RawEv = (u8, u32, EventKind, Millis);

/// Events of a few users on a few items within `window` ms, starting either well inside an
/// epoch or just before an epoch boundary.
pub(crate) fn event_set(
    window: Millis,
    max_items: u32,
) -> impl Strategy<Value = (Millis, Vec<RawEv>)> {
    let start = prop_oneof![
        Just(T0),
        // The window straddles the next decay epoch boundary.
        (0..window).prop_map(|back| (T0 / EPOCH_MS + 1) * EPOCH_MS - back),
    ];
    let ev = (0u8..3, 0..max_items, kind(), 0..window);
    (start, prop::collection::vec(ev, 1..60))
}

pub(crate) fn to_events(start: Millis, raw: &[RawEv]) -> Vec<(u8, Event, Option<&'static str>)> {
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

pub(crate) fn profiles(
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
