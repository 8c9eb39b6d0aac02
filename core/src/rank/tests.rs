use super::*;
use crate::event::{Event, EventKind, SCHEMA_VERSION};
use crate::model::{CatalogItem, CatalogShard, Neighbour, NeighbourShard, TrendEntry};
use alloc::format;
use alloc::vec;

const NOW: Millis = 1_733_040_000_000;

pub(crate) fn fixture() -> (CatalogShard, NeighbourShard, Trending) {
    let cat = |i: u32| if i < 10 { "Mugs" } else { "Bags" };
    let catalog = CatalogShard::from_items(
        (0..20)
            .map(|i| CatalogItem {
                id: format!("i{i:02}"),
                title: format!("Item {i}"),
                url: format!("/p/i{i:02}.html"),
                image: "/img/x.svg".into(),
                price: "£1.00".into(),
                category: cat(i).into(),
            })
            .collect(),
    );
    // i00..i04 are similar to each other, i10..i14 too.
    let mut lists = Vec::new();
    for group in [0u32, 10] {
        for a in group..group + 5 {
            let ns = (group..group + 5)
                .filter(|b| *b != a)
                .map(|b| Neighbour {
                    item: format!("i{b:02}"),
                    sim: 1.0 / (1.0 + (a as f32 - b as f32).abs()),
                })
                .collect();
            lists.push((format!("i{a:02}"), ns));
        }
    }
    let trending = Trending {
        items: (0..20)
            .rev()
            .map(|i| TrendEntry {
                item: format!("i{i:02}"),
                score: i as f32 + 1.0,
            })
            .collect(),
        by_category: vec![
            (
                "Bags".into(),
                (10..20).rev().map(|i| format!("i{i:02}")).collect(),
            ),
            (
                "Mugs".into(),
                (0..10).rev().map(|i| format!("i{i:02}")).collect(),
            ),
        ],
    };
    (catalog, NeighbourShard::from_lists(lists), trending)
}

fn input<'a>(
    strategy: Strategy,
    data: &'a (CatalogShard, NeighbourShard, Trending),
    profile: Option<&'a Profile>,
    session: Option<&'a Session>,
    params: &'a RankParams,
    cfg: &'a ProfileConfig,
) -> RankInput<'a> {
    RankInput {
        strategy,
        count: 4,
        profile,
        profile_config: cfg,
        session,
        page_item: None,
        category: None,
        catalog: &data.0,
        neighbours: &data.1,
        trending: &data.2,
        params,
        now: NOW,
        exclude: &[],
    }
}

#[test]
fn cold_visitors_get_trending_with_diversity() {
    let data = fixture();
    let (params, cfg) = (RankParams::default(), ProfileConfig::default());
    let picks = rank(&input(Strategy::ForYou, &data, None, None, &params, &cfg));
    let ids: Vec<&str> = picks.iter().map(|p| p.item.as_str()).collect();
    // Bags trend higher, but the cap (2 of 4) lets two mugs in.
    assert_eq!(ids, ["i19", "i18", "i09", "i08"]);
    assert!(picks.iter().all(|p| p.reason == Reason::Trending));
}

#[test]
fn session_items_pull_their_neighbours_in() {
    let data = fixture();
    let (params, cfg) = (RankParams::default(), ProfileConfig::default());
    let mut session = Session::fresh(NOW);
    session.record_item("i01", NOW - 60_000);
    let picks = rank(&input(
        Strategy::ForYou,
        &data,
        None,
        Some(&session),
        &params,
        &cfg,
    ));
    // i00 and i02 are equally similar to i01; the trend prior puts i02 first.
    let ids: Vec<&str> = picks.iter().map(|p| p.item.as_str()).collect();
    assert_eq!(&ids[..2], ["i02", "i00"]);
    assert_eq!(picks[0].reason, Reason::SessionNeighbour);
    assert!(
        picks.iter().all(|p| p.item != "i01"),
        "seen items are not recommended again"
    );
}

#[test]
fn every_session_item_votes_and_the_more_recent_weigh_more() {
    let data = fixture();
    let (params, cfg) = (RankParams::default(), ProfileConfig::default());
    let mut session = Session::fresh(NOW);
    // i10 is the sixth most recent item; the five after it have no neighbours.
    for id in ["i10", "i05", "i06", "i07", "i08", "i09"] {
        session.record_item(id, NOW);
    }
    let picks = rank(&input(
        Strategy::ForYou,
        &data,
        None,
        Some(&session),
        &params,
        &cfg,
    ));
    assert_eq!(picks[0].item, "i11");
    assert_eq!(picks[0].reason, Reason::SessionNeighbour);
    // Two items seen at the same time: the later one's neighbours lead.
    let mut session = Session::fresh(NOW);
    session.record_item("i10", NOW);
    session.record_item("i01", NOW);
    let picks = rank(&input(
        Strategy::ForYou,
        &data,
        None,
        Some(&session),
        &params,
        &cfg,
    ));
    let ids: Vec<&str> = picks.iter().map(|p| p.item.as_str()).collect();
    assert_eq!(&ids[..3], ["i02", "i00", "i11"]);
}

#[test]
fn the_exclusion_keeps_earlier_picks_off_the_slot() {
    let data = fixture();
    let (params, cfg) = (RankParams::default(), ProfileConfig::default());
    let earlier: Vec<String> = vec!["i19".into(), "i09".into()];
    let mut i = input(Strategy::Trending, &data, None, None, &params, &cfg);
    i.exclude = &earlier;
    let ids: Vec<String> = rank(&i).into_iter().map(|p| p.item).collect();
    assert_eq!(ids, ["i18", "i17", "i08", "i07"]);
}

#[test]
fn score_parts_add_up_to_the_score() {
    let data = fixture();
    let (params, cfg) = (RankParams::default(), ProfileConfig::default());
    let mut profile = Profile::default();
    let e = Event {
        v: SCHEMA_VERSION,
        event_id: "e".into(),
        user: "u".into(),
        ts: NOW - 1_000,
        kind: EventKind::Purchase,
        item: Some("i12".into()),
        props: Default::default(),
    };
    profile.apply(&e, Some("Bags"), &cfg);
    let mut session = Session::fresh(NOW);
    session.record_item("i01", NOW - 60_000);
    let picks = rank(&input(
        Strategy::ForYou,
        &data,
        Some(&profile),
        Some(&session),
        &params,
        &cfg,
    ));
    assert_eq!(picks.len(), 4);
    for p in &picks {
        assert!(
            (p.parts.total() - p.score).abs() <= 1e-12 * p.score.abs().max(1.0),
            "{p:?}"
        );
        assert!(p.parts.trend > 0.0, "{p:?}");
    }
    assert!(
        picks
            .iter()
            .any(|p| p.parts.session > 0.0 && p.parts.profile == 0.0)
    );
    assert!(
        picks
            .iter()
            .any(|p| p.parts.profile > 0.0 && p.parts.category > 0.0)
    );
}

#[test]
fn purchases_are_excluded_and_shape_the_profile_picks() {
    let data = fixture();
    let (params, cfg) = (RankParams::default(), ProfileConfig::default());
    let mut profile = Profile::default();
    let e = Event {
        v: SCHEMA_VERSION,
        event_id: "e".into(),
        user: "u".into(),
        ts: NOW - 1_000,
        kind: EventKind::Purchase,
        item: Some("i12".into()),
        props: Default::default(),
    };
    profile.apply(&e, Some("Bags"), &cfg);
    let picks = rank(&input(
        Strategy::ForYou,
        &data,
        Some(&profile),
        None,
        &params,
        &cfg,
    ));
    assert!(picks.iter().all(|p| p.item != "i12"));
    let ids: Vec<&str> = picks.iter().map(|p| p.item.as_str()).collect();
    assert_eq!(&ids[..2], ["i13", "i11"]);
    assert_eq!(picks[0].reason, Reason::ProfileNeighbour);
}

#[test]
fn similar_excludes_the_page_and_ranks_by_similarity() {
    let data = fixture();
    let (params, cfg) = (RankParams::default(), ProfileConfig::default());
    let mut i = input(Strategy::Similar, &data, None, None, &params, &cfg);
    i.page_item = Some("i02");
    let ids: Vec<String> = rank(&i).into_iter().map(|p| p.item).collect();
    assert_eq!(&ids[..2], ["i03", "i01"]);
    assert!(!ids.contains(&"i02".into()));
}

#[test]
fn recently_viewed_and_category() {
    let data = fixture();
    let (params, cfg) = (RankParams::default(), ProfileConfig::default());
    let mut session = Session::fresh(NOW);
    for id in ["i05", "i15", "i07"] {
        session.record_item(id, NOW);
    }
    let ids: Vec<String> = rank(&input(
        Strategy::RecentlyViewed,
        &data,
        None,
        Some(&session),
        &params,
        &cfg,
    ))
    .into_iter()
    .map(|p| p.item)
    .collect();
    assert_eq!(ids, ["i07", "i15", "i05"]);
    let mut i = input(Strategy::Category, &data, None, None, &params, &cfg);
    i.category = Some("Mugs");
    let picks = rank(&i);
    let ids: Vec<&str> = picks.iter().map(|p| p.item.as_str()).collect();
    assert_eq!(ids, ["i09", "i08", "i07", "i06"]);
}
