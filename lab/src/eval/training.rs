//! The training side shared by both protocols: baskets, the time split, and training the
//! model and profiles as the pipeline does.

use std::collections::BTreeMap;

use attune_core::{Event, ProfileConfig};

use attune_origin::Model;
use attune_origin::UserState;
use attune_origin::config::ModelConfig;

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

#[cfg(test)]
mod tests {
    use super::*;
    use attune_core::event::{PropValue, Props, SCHEMA_VERSION};
    use attune_core::{CatalogItem, EventKind, SmolStr};

    use crate::eval::{TRAIN_SHARE, eval_model_config};

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
}
