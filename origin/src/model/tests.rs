//! Model tests: co-occurrence settling, persistence and compaction.

use super::*;

fn event(n: u64, user: &str, item: &str) -> Event {
    let json = format!(
        r#"{{"v":1,"event_id":"e{n}","user":"{user}","ts":{},"kind":"view","item":"{item}"}}"#,
        1_700_000_000_000u64 + n
    );
    attune_core::event::parse_event(json.as_bytes(), 1_700_000_000_000 + n).unwrap()
}

fn rows(m: &Model) -> Vec<Vec<(u32, PairCell)>> {
    m.adj
        .iter()
        .map(|row| {
            let mut r: Vec<(u32, PairCell)> = row.iter().map(|(k, c)| (*k, *c)).collect();
            r.sort_unstable_by_key(|e| e.0);
            r
        })
        .collect()
}

/// Settling a whole micro-batch of queued pairs at once gives the state that applying each
/// event's pairs right away gives: cells, change epochs, counters, and what persist writes.
#[test]
fn settling_a_batch_at_once_equals_settling_each_event() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ModelConfig::default();
    let (each_store, batch_store) = (
        Store::open(&dir.path().join("each.redb")).unwrap(),
        Store::open(&dir.path().join("batch.redb")).unwrap(),
    );
    let (mut each, mut batch) = (Model::new(cfg.clone()), Model::new(cfg.clone()));
    let (mut each_users, mut batch_users) = (
        vec![UserState::default(); 11],
        vec![UserState::default(); 11],
    );
    let mut n = 0u64;
    for round in 0..12u64 {
        for _ in 0..97 {
            n += 1;
            let u = (n * 7919 % 11) as usize;
            // Few items, so pairs repeat within a batch and in both orders.
            let item = format!("i{}", (n * n + round) % 17);
            let e = event(n, &format!("u{u}"), &item);
            each.observe(&e, 1.0, e.ts, &mut each_users[u]);
            each.settle();
            batch.observe(&e, 1.0, e.ts, &mut batch_users[u]);
        }
        batch.settle();
        // What the counters mean, checked against the cells themselves: every cell is in
        // both rows, `live_pairs` counts pairs, `dirty_pairs` those changed this epoch.
        let cells: Vec<(u32, u32, PairCell)> = rows(&batch)
            .into_iter()
            .enumerate()
            .flat_map(|(a, row)| row.into_iter().map(move |(b, c)| (a as u32, b, c)))
            .collect();
        for &(a, b, c) in &cells {
            assert_eq!(batch.adj[b as usize].get(&a), Some(&c));
        }
        assert_eq!(batch.live_pairs, cells.len() as u64 / 2);
        let changed = cells.iter().filter(|c| c.2.epoch == batch.epoch).count();
        assert_eq!(batch.dirty_pairs, changed as u64 / 2, "round {round}");
        assert_eq!(rows(&each), rows(&batch), "round {round}");
        assert_eq!(each.live_pairs, batch.live_pairs);
        assert_eq!(each.dirty_pairs, batch.dirty_pairs);
        assert_eq!(each.dirty_rows, batch.dirty_rows);
        // Persist every few rounds, so cells carry changes from earlier epochs too.
        if round % 3 == 2 {
            for (m, store) in [(&mut each, &each_store), (&mut batch, &batch_store)] {
                let tx = store.begin_checkpoint().unwrap();
                m.persist(&tx).unwrap();
                tx.commit().unwrap();
            }
            assert_eq!(each.log_bytes, batch.log_bytes);
        }
    }
    assert!(each.live_pairs > 50, "too few pairs to mean anything");
    for i in 0..17 {
        let item = format!("i{i}");
        assert_eq!(each.neighbours(&item), batch.neighbours(&item));
    }
}

/// Persisting per batch (deltas, then compactions) and loading reproduces the model.
#[test]
fn persisted_pairs_reload_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb")).unwrap();
    let cfg = ModelConfig::default();
    let mut m = Model::new(cfg.clone());
    let mut users: Vec<UserState> = vec![UserState::default(); 7];
    let mut n = 0u64;
    let mut compacted = false;
    for batch in 0..40u64 {
        for _ in 0..25 {
            n += 1;
            let u = (n * 7919 % 7) as usize;
            let item = format!("i{}", (n * n + batch) % 23);
            let e = event(n, &format!("u{u}"), &item);
            m.observe(&e, 1.0, e.ts, &mut users[u]);
        }
        let before = m.log_bytes;
        let tx = store.begin_checkpoint().unwrap();
        m.persist(&tx).unwrap();
        tx.commit().unwrap();
        compacted |= m.log_bytes < before;
        let loaded = Model::load(cfg.clone(), &store).unwrap();
        for i in 0..23 {
            let item = format!("i{i}");
            assert_eq!(
                m.neighbours(&item),
                loaded.neighbours(&item),
                "batch {batch}"
            );
        }
        assert_eq!(m.trending(n), loaded.trending(n));
        assert_eq!(m.live_pairs, loaded.live_pairs);
    }
    assert!(compacted, "the pair log was never compacted");
}

/// Items co-occur within a session only: an item seen after a gap longer than
/// `session_gap_ms` is not counted with the items before the gap.
#[test]
fn co_occurrence_stays_within_a_session() {
    let cfg = ModelConfig::default();
    let gap = cfg.session_gap_ms;
    let mut m = Model::new(cfg);
    let mut user = UserState::default();
    let mut previous = 0;
    for (n, item, ts) in [(1, "a", 0), (2, "b", 60_000), (3, "c", 60_000 + gap + 1)] {
        let mut e = event(n, "u", item);
        e.ts = 1_700_000_000_000 + ts;
        m.observe(&e, 1.0, previous, &mut user);
        previous = e.ts;
    }
    m.settle();
    let names =
        |item: &str| -> Vec<String> { m.neighbours(item).into_iter().map(|n| n.item).collect() };
    assert_eq!(names("a"), ["b"]);
    assert_eq!(names("b"), ["a"]);
    assert!(names("c").is_empty());
}

/// Feeds `items` as one user's session, a minute apart, and settles.
fn session(m: &mut Model, user: &str, first: u64, items: &[&str]) {
    let mut state = UserState::default();
    let mut previous = 0;
    for (n, item) in items.iter().enumerate() {
        let mut e = event(first + n as u64, user, item);
        e.ts = 1_700_000_000_000 + (first + n as u64) * 60_000;
        m.observe(&e, 1.0, previous, &mut state);
        previous = e.ts;
    }
    m.settle();
}

/// Within the window, items seen closer together in a session are the stronger neighbours:
/// co-occurrence weighs `1 / distance`.
#[test]
fn closer_items_in_a_session_are_stronger_neighbours() {
    let cfg = ModelConfig {
        history: 3,
        ..ModelConfig::default()
    };
    let mut m = Model::new(cfg);
    session(&mut m, "u", 0, &["a", "b", "c", "d"]);
    let d = m.neighbours("d");
    let names: Vec<&str> = d.iter().map(|n| n.item.as_str()).collect();
    assert_eq!(names, ["c", "b", "a"]);
    assert!(d[0].sim > d[1].sim && d[1].sim > d[2].sim, "{d:?}");
    // Out of the window of 3: `a` and `e` never co-occur.
    session(&mut m, "v", 10, &["a", "b", "c", "d", "e"]);
    assert!(m.neighbours("e").iter().all(|n| n.item != "a"));
}

/// The shrinkage makes a pair seen together once weaker than one seen together twice, even
/// when both items of each pair were never seen apart (the raw similarity is 1 for both).
#[test]
fn a_pair_seen_once_is_a_weaker_neighbour_than_one_seen_twice() {
    let sims = |shrinkage: f64| {
        let mut m = Model::new(ModelConfig {
            similarity_shrinkage: shrinkage,
            ..ModelConfig::default()
        });
        session(&mut m, "u1", 0, &["once", "with-once"]);
        session(&mut m, "u2", 10, &["twice", "with-twice"]);
        session(&mut m, "u3", 20, &["twice", "with-twice"]);
        (m.neighbours("once")[0].sim, m.neighbours("twice")[0].sim)
    };
    let (once, twice) = sims(ModelConfig::default().similarity_shrinkage);
    assert!(once < twice, "{once} vs {twice}");
    assert_eq!(sims(0.0), (1.0, 1.0));
}
