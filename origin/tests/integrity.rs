//! Origin integrity (issue 15, log and ordering): damage to acknowledged log records is found
//! and contained, catalog changes and forgets are records applied in log order, so replays
//! and repeated runs give the same state, and a user who comes back after a forget gets a
//! profile in KV. The counts each test prints are the ones in `RELIABILITY.md`.

use std::path::Path;
use std::time::Duration;

mod support;

use attune_core::CatalogItem;
use attune_origin::config::TargetKind;
use attune_origin::{Config, Error, Node, Pipeline, Source};
use support::{derived, flip_bit, flush_all};

/// Fixed event times: runs compared with each other must see the same events.
const T0: u64 = 1_790_000_000_000;
/// When ingest accepted them: after the last event time (an event from the future is refused).
const ACCEPTED: u64 = T0 + 20_000_000;

fn config(dir: &Path) -> Config {
    let mut cfg = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    cfg.profile_key = "pk".into();
    cfg.publish.target = TargetKind::Dir;
    cfg.publish.dir = Some(dir.join("kv"));
    // No checkpoint but the ones a test asks for (and the drains').
    cfg.pipeline.checkpoint_interval_ms = 3_600_000;
    // Small segments, so every test here crosses several.
    cfg.log.segment_bytes = 256 << 10;
    cfg
}

fn ev(n: u64, user: &str, item: &str) -> Vec<u8> {
    let kind = ["view", "click", "add_to_cart", "view"][(n % 4) as usize];
    format!(
        r#"{{"v":1,"event_id":"e{n}","user":"{user}","ts":{},"kind":"{kind}","item":"{item}"}}"#,
        T0 + n * 1000
    )
    .into_bytes()
}

/// Events `range`, spread over `users` users and 40 items.
fn events(range: std::ops::Range<u64>, users: u64) -> Vec<Vec<u8>> {
    range
        .map(|n| {
            // Consecutive events of a user walk nearby items, so neighbours form.
            let user = (n * 7919) % users;
            ev(
                n,
                &format!("u{user}"),
                &format!("i{}", (user + n / users) % 40),
            )
        })
        .collect()
}

fn catalog(category_of: impl Fn(u64) -> &'static str) -> Vec<CatalogItem> {
    (0..40)
        .map(|i| CatalogItem {
            id: format!("i{i}"),
            title: format!("Item {i}"),
            url: format!("/p/{i}"),
            image: String::new(),
            price: "1.00".into(),
            category: category_of(i).into(),
        })
        .collect()
}

/// Applies what the log holds beyond the pipeline's offset, `per_read` records at a time,
/// without checkpointing (the config asks for none).
fn apply_all(node: &Node, p: &mut Pipeline, per_read: usize) {
    let mut reader = node.log.reader().unwrap();
    let mut buf = Vec::new();
    while p.offset().max(reader.start()) < reader.end() {
        buf.clear();
        let from = p.offset().max(reader.start());
        reader
            .read(from, per_read, Duration::ZERO, &mut buf)
            .unwrap();
        p.process(&buf).unwrap();
    }
}

/// The segment file of the log in `dir` holding `offset`, and the offset's position in it.
fn segment_of(dir: &Path, offset: u64) -> (std::path::PathBuf, u64) {
    let mut bases: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()?
                .strip_suffix(".seg")?
                .parse()
                .ok()
        })
        .collect();
    bases.sort_unstable();
    let base = *bases.iter().rfind(|b| **b <= offset).unwrap();
    (
        attune_origin::segment_path(dir, base),
        offset - base + attune_origin::FIRST_OFFSET,
    )
}

/// 10,000 acknowledged events past the checkpoint, no checkpoint (a kill), one byte flipped in
/// the first record after the checkpointed offset: the node refuses to open, naming the file
/// and the offset, and cuts nothing; `salvage` gets every other record back.
#[test]
fn damage_to_acknowledged_records_stops_the_node_and_salvage_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let checkpointed;
    {
        let node = Node::open(&cfg).unwrap();
        node.log
            .append_blocking(ACCEPTED, "t", events(0..1_000, 50))
            .unwrap();
        node.drain().unwrap();
        checkpointed = node.log.end();
        // Acknowledged (durable), never applied: the process is "killed" here.
        for chunk in events(1_000..11_000, 50).chunks(1_000) {
            node.log
                .append_blocking(ACCEPTED, "t", chunk.to_vec())
                .unwrap();
        }
    }
    let (log, at) = segment_of(&cfg.log_dir(), checkpointed);
    let len = std::fs::metadata(&log).unwrap().len();
    flip_bit(&log, at + 20, 2);
    let err = Node::open(&cfg).unwrap_err();
    assert!(
        matches!(&err, Error::LogDamaged { offset, .. } if *offset == checkpointed),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&log.display().to_string()) && msg.contains("salvage"),
        "{msg}"
    );
    assert_eq!(
        std::fs::metadata(&log).unwrap().len(),
        len,
        "nothing was cut"
    );

    let report = attune_origin::salvage(&cfg.log_dir()).unwrap();
    assert!(report.segments > 1, "{report:?}");
    assert_eq!(report.damaged_files.len(), 1);
    assert_eq!(report.records_kept, 10_999);
    assert_eq!(report.damaged.len(), 1);
    assert_eq!(report.damaged[0].0, checkpointed);
    let node = Node::open(&cfg).unwrap();
    let o = node.drain().unwrap();
    assert_eq!((o.received, o.applied, o.dlq), (9_999, 9_999, 0), "{o:?}");
    eprintln!(
        "log damage: sent 11000, acknowledged 11000, applied {}, dead-lettered {}, lost 1 \
         (the damaged record), bytes skipped {}, {} of {} segments rewritten",
        1_000 + o.applied,
        o.dlq,
        report.bytes_skipped,
        report.damaged_files.len(),
        report.segments
    );
}

/// A catalog change (new categories) between events, then a crash before any checkpoint: the
/// replay gives the same neighbour shards, trending and profiles as an uninterrupted run.
#[test]
fn a_catalog_change_then_a_crash_replays_to_the_uninterrupted_state() {
    let first = catalog(|i| if i % 2 == 0 { "even" } else { "odd" });
    let second = catalog(|i| if i < 20 { "low" } else { "high" });
    let reference = {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(&config(dir.path())).unwrap();
        node.put_catalog(first.clone()).unwrap();
        node.log
            .append_blocking(ACCEPTED, "t", events(0..2_000, 60))
            .unwrap();
        node.put_catalog(second.clone()).unwrap();
        node.log
            .append_blocking(ACCEPTED, "t", events(2_000..4_000, 60))
            .unwrap();
        node.drain().unwrap();
        derived(&node, T0 + 10_000_000)
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    {
        let node = Node::open(&cfg).unwrap();
        node.put_catalog(first).unwrap();
        node.log
            .append_blocking(ACCEPTED, "t", events(0..1_000, 60))
            .unwrap();
        node.drain().unwrap();
        let mut p = node.pipeline().unwrap();
        node.log
            .append_blocking(ACCEPTED, "t", events(1_000..2_000, 60))
            .unwrap();
        apply_all(&node, &mut p, 100);
        // Applied in memory, not checkpointed: the catalog change must not commit it.
        node.put_catalog(second).unwrap();
        node.log
            .append_blocking(ACCEPTED, "t", events(2_000..4_000, 60))
            .unwrap();
        apply_all(&node, &mut p, 100);
        // Crash: no checkpoint.
    }
    let node = Node::open(&cfg).unwrap();
    node.drain().unwrap();
    let after = derived(&node, T0 + 10_000_000);
    assert_eq!(after.profiles.len(), reference.profiles.len());
    assert_eq!(after, reference);
}

/// The same log with forgets in it, applied once in one go and once in small micro-batches
/// with checkpoints and a crash in between: identical neighbour lists, trending and profiles.
#[test]
fn runs_of_a_log_with_forgets_agree() {
    let write = |node: &Node| {
        for block in 0..10u64 {
            node.log
                .append_blocking(ACCEPTED, "t", events(block * 600..block * 600 + 600, 60))
                .unwrap();
            for u in 0..4 {
                node.forget(&format!("u{}", (block * 4 + u) % 60)).unwrap();
            }
        }
    };
    let reference = {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(&config(dir.path())).unwrap();
        write(&node);
        node.drain().unwrap();
        derived(&node, T0 + 10_000_000)
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    {
        let node = Node::open(&cfg).unwrap();
        write(&node);
        let mut p = node.pipeline().unwrap();
        let mut reader = node.log.reader().unwrap();
        let mut buf = Vec::new();
        let mut reads = 0;
        while p.offset().max(reader.start()) < reader.end() && reads < 200 {
            buf.clear();
            reader
                .read(p.offset().max(reader.start()), 7, Duration::ZERO, &mut buf)
                .unwrap();
            p.process(&buf).unwrap();
            reads += 1;
            if reads % 13 == 0 {
                p.checkpoint().unwrap();
            }
        }
        // Crash part-way.
    }
    let node = Node::open(&cfg).unwrap();
    node.drain().unwrap();
    let after = derived(&node, T0 + 10_000_000);
    let lists = |d: &support::Derived| -> Vec<Vec<attune_core::Neighbour>> {
        d.neighbours
            .iter()
            .flat_map(|s| s.lists.iter().map(|l| l.1.clone()))
            .collect()
    };
    let (a, b) = (lists(&reference), lists(&after));
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    eprintln!("forgets: {differ} of {} neighbour lists differ", a.len());
    assert!(!a.is_empty());
    assert_eq!(after, reference);
}

fn kv_profile(cfg: &Config, user: &str) -> Option<u64> {
    let key = attune_core::hash::profile_key(cfg.profile_key.as_bytes(), user).replace(':', "_");
    let meta =
        std::fs::read_to_string(cfg.data_dir.join("kv").join(format!("{key}.meta.json"))).ok()?;
    let v: serde_json::Value = serde_json::from_str(&meta).ok()?;
    v["v"].as_u64()
}

/// Users published at version 5, forgotten, and back at once with new events: each ends with
/// its new profile (version 2) in KV, whether the forget and the new events share a checkpoint
/// or not.
#[test]
fn a_user_back_after_a_forget_gets_a_profile_in_kv() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let node = Node::open(&cfg).unwrap();
    let users: Vec<String> = (0..40).map(|u| format!("w{u}")).collect();
    let mut n = 0;
    let mut some = |user: &str, k: u64| -> Vec<Vec<u8>> {
        (0..k)
            .map(|_| {
                n += 1;
                ev(n, user, &format!("i{}", n % 40))
            })
            .collect()
    };
    for u in &users {
        node.log.append_blocking(ACCEPTED, "t", some(u, 5)).unwrap();
    }
    node.drain().unwrap();
    flush_all(&node);
    assert!(users.iter().all(|u| kv_profile(&cfg, u) == Some(5)));
    for (i, u) in users.iter().enumerate() {
        node.forget(u).unwrap();
        node.log.append_blocking(ACCEPTED, "t", some(u, 2)).unwrap();
        if i % 2 == 0 {
            // Half of them: the forget checkpointed before the user is back.
            node.drain().unwrap();
        }
    }
    // Pipeline ahead of the checkpoint, publisher in between, then the checkpoint.
    let mut p = node.pipeline().unwrap();
    apply_all(&node, &mut p, 50);
    assert!(
        !support::flush(&node, 1),
        "the new profiles of users whose forget is not checkpointed yet wait"
    );
    p.checkpoint().unwrap();
    flush_all(&node);
    flush_all(&node);
    let in_kv: Vec<Option<u64>> = users.iter().map(|u| kv_profile(&cfg, u)).collect();
    eprintln!(
        "back after a forget: {} of {} users with their new profile in KV",
        in_kv.iter().filter(|v| **v == Some(2)).count(),
        users.len()
    );
    assert!(in_kv.iter().all(|v| *v == Some(2)), "{in_kv:?}");
    for u in &users {
        assert_eq!(node.user(u).unwrap().unwrap().profile.version, 2);
    }
}

/// A forget erases the user's earlier records from the log once checkpointed: a store rebuilt
/// from the log has none of them, and the log file no longer holds them.
#[test]
fn a_forgotten_users_events_do_not_come_back_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let all = events(0..3_000, 60);
    let marker = br#""user":"u7""#;
    let of_u7 = all
        .iter()
        .filter(|e| e.windows(marker.len()).any(|w| w == marker))
        .count();
    assert!(of_u7 > 0);
    {
        let node = Node::open(&cfg).unwrap();
        node.log.append_blocking(ACCEPTED, "t", all).unwrap();
        node.drain().unwrap();
        node.forget("u7").unwrap();
        node.log
            .append_blocking(ACCEPTED, "t", vec![ev(10_000, "u8", "i1")])
            .unwrap();
        node.drain().unwrap();
        assert!(node.user("u7").unwrap().is_none());
    }
    let mut segments = 0;
    let mut left = 0;
    for entry in std::fs::read_dir(cfg.log_dir()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        segments += usize::from(path.extension().is_some_and(|e| e == "seg"));
        left += bytes.windows(marker.len()).filter(|w| *w == marker).count();
    }
    assert!(segments > 2, "the user's events span several segments");
    // Rebuild: a store redb refuses is moved aside and replayed from the log.
    std::fs::write(cfg.store_path(), b"not a store").unwrap();
    let node = Node::open(&cfg).unwrap();
    let o = node.drain().unwrap();
    eprintln!(
        "forget then rebuild: {of_u7} events of the user before the forget, {left} left in the \
         log's {segments} segment files, {} records replayed, user back: {}",
        o.received,
        node.user("u7").unwrap().is_some()
    );
    assert_eq!(left, 0);
    assert!(node.user("u7").unwrap().is_none());
    assert_eq!(o.received as usize, 3_001 - of_u7);
    assert!(node.user("u8").unwrap().is_some());
}

/// Dead letters older than the retention are deleted by the checkpoints.
#[test]
fn dead_letters_past_the_retention_go() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.pipeline.dlq_retention_ms = 60_000;
    let node = Node::open(&cfg).unwrap();
    let now = attune_origin::now_ms();
    let bad = |n: usize| {
        (0..n)
            .map(|i| format!("not json {i}").into_bytes())
            .collect()
    };
    node.log
        .append_blocking(now - 120_000, "t", bad(5))
        .unwrap();
    node.log.append_blocking(now, "t", bad(3)).unwrap();
    let o = node.drain().unwrap();
    assert_eq!(o.dlq, 8, "every one counted");
    assert_eq!(node.store.dlq_len().unwrap(), 3, "the old ones deleted");
}
