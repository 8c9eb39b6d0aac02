//! Rules changes in log order (issue 15): the rules are records in the log, applied at their
//! position, kept in the checkpoint, and what `cfg` in KV holds. A replay of the log gives the
//! same state and the same rules; a start with other rules appends exactly one record;
//! `cfg`'s version never goes back.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

mod support;

use attune_core::CatalogItem;
use attune_core::rules::{Arm, Config as Rules, Experiment};
use attune_origin::config::TargetKind;
use attune_origin::{Config, Node, RecordKind, Source};
use support::{derived, flush_all, run_origin};

/// Fixed event times: runs compared with each other must see the same events.
const T0: u64 = 1_790_000_000_000;
const ACCEPTED: u64 = T0 + 20_000_000;

fn config(dir: &Path, rules: Rules) -> Config {
    let mut cfg = Config {
        data_dir: dir.to_path_buf(),
        rules,
        ..Config::default()
    };
    cfg.profile_key = "pk".into();
    cfg.publish.target = TargetKind::Dir;
    cfg.publish.dir = Some(dir.join("kv"));
    cfg.pipeline.checkpoint_interval_ms = 3_600_000;
    cfg
}

fn experiment(id: &str, arms: [&str; 2]) -> Experiment {
    let arm = |name: &str| Arm {
        name: name.into(),
        weight: 1,
        variant: None,
        strategy: None,
    };
    Experiment {
        id: id.into(),
        slot: "hero".into(),
        traffic_bp: 10_000,
        control: arms[0].into(),
        arms: vec![arm(arms[0]), arm(arms[1])],
        active: true,
    }
}

/// The rules before the change: experiment `hero`, the default profile weights.
fn rules_a() -> Rules {
    Rules {
        experiments: vec![experiment("hero", ["a", "b"])],
        ..Rules::default()
    }
}

/// The rules after it: experiment `promo` instead, and views weigh five times as much (so
/// profiles show which rules applied each event).
fn rules_b() -> Rules {
    let mut rules = Rules {
        experiments: vec![experiment("promo", ["x", "y"])],
        ..Rules::default()
    };
    rules.profile.view.weight *= 5.0;
    rules
}

/// Events `range` of 30 users over 20 items, with an impression of `hero/a` and one of
/// `promo/x` every 50 events.
fn events(range: std::ops::Range<u64>) -> Vec<Vec<u8>> {
    range
        .map(|n| {
            let user = (n * 7919) % 30;
            let ts = T0 + n * 1000;
            let body = match n % 50 {
                0 => r#""kind":"impression","item":"i1","props":{"experiment":"hero","arm":"a"}"#
                    .to_string(),
                1 => r#""kind":"impression","item":"i2","props":{"experiment":"promo","arm":"x"}"#
                    .to_string(),
                _ => {
                    let kind = ["view", "click", "view", "add_to_cart"][(n % 4) as usize];
                    format!(r#""kind":"{kind}","item":"i{}""#, (user + n / 30) % 20)
                }
            };
            format!(r#"{{"v":1,"event_id":"e{n}","user":"u{user}","ts":{ts},{body}}}"#).into_bytes()
        })
        .collect()
}

fn catalog() -> Vec<CatalogItem> {
    (0..20)
        .map(|i| CatalogItem {
            id: format!("i{i}"),
            title: format!("Item {i}"),
            url: format!("/p/{i}"),
            image: String::new(),
            price: "1.00".into(),
            category: ["shoes", "hats", "bags"][i % 3].into(),
        })
        .collect()
}

/// The payloads of every rules record in the log, in order.
fn rules_records(node: &Node) -> Vec<Vec<u8>> {
    let mut reader = node.log.reader().unwrap();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut from = reader.start();
    while from < reader.end() {
        buf.clear();
        reader.read(from, 1024, Duration::ZERO, &mut buf).unwrap();
        from = buf.last().unwrap().next;
        out.extend(
            buf.iter()
                .filter(|r| r.kind == RecordKind::Rules)
                .map(|r| r.payload.clone()),
        );
    }
    out
}

/// `cfg` as KV holds it: its version and rules.
fn kv_cfg(cfg: &Config) -> Option<(u64, Rules)> {
    let bytes = std::fs::read(cfg.data_dir.join("kv").join("cfg")).ok()?;
    let env = attune_core::wire::decode::<Rules>(&bytes).unwrap();
    Some((env.version, env.body))
}

fn cfg_queued(node: &Node) -> Option<u64> {
    node.store
        .queued(attune_core::model::keys::CONFIG)
        .unwrap()
        .map(|e| e.version)
}

fn exposures(node: &Node, experiment: &str, arm: &str) -> u64 {
    let series = format!(r#"attune_exposures_total{{experiment="{experiment}",arm="{arm}"}} "#);
    node.metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0, |n| n.parse().unwrap())
}

/// The events of one run: the catalog, 1,000 events under rules A, a start with rules B
/// (before the pipeline applied the first events), 1,000 more. Returns the node (drained).
fn run_with_a_rules_change(dir: &Path) -> Node {
    let node = Node::open(&config(dir, rules_a())).unwrap();
    assert!(node.append_rules_if_changed().unwrap());
    node.put_catalog(catalog()).unwrap();
    node.log
        .append_blocking(ACCEPTED, "t", events(0..1000))
        .unwrap();
    drop(node);
    let node = Node::open(&config(dir, rules_b())).unwrap();
    assert!(node.append_rules_if_changed().unwrap());
    node.log
        .append_blocking(ACCEPTED, "t", events(1000..2000))
        .unwrap();
    node.drain().unwrap();
    node
}

/// A rules change in the middle of the log: each event applies under the rules before it
/// (profiles differ from a run under rules B throughout; exposure labels follow the rules in
/// force), and a rebuild from the log gives the same state, the same rules and the same `cfg`
/// body in KV at a version no lower than before.
#[test]
fn a_rebuild_replays_a_rules_change_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let node = run_with_a_rules_change(dir.path());
    let cfg = node.cfg.clone();
    let original = derived(&node, T0 + 10_000_000);
    // Impressions every 50 events: 20 of each before the change, 20 after.
    assert_eq!(exposures(&node, "hero", "a"), 20, "hero is known under A");
    assert_eq!(exposures(&node, "promo", "x"), 20, "promo is known under B");
    assert_eq!(exposures(&node, "unknown", "unknown"), 40);
    assert_eq!(cfg_queued(&node), Some(2));
    flush_all(&node);
    assert_eq!(kv_cfg(&cfg), Some((2, rules_b())));
    drop(node);

    // The same events all under rules B give other profiles: the first 1,000 were applied
    // under A although the process that drained them was started with B.
    let other = tempfile::tempdir().unwrap();
    let node = Node::open(&config(other.path(), rules_b())).unwrap();
    assert!(node.append_rules_if_changed().unwrap());
    node.put_catalog(catalog()).unwrap();
    node.log
        .append_blocking(ACCEPTED, "t", events(0..2000))
        .unwrap();
    node.drain().unwrap();
    assert_ne!(derived(&node, T0 + 10_000_000).profiles, original.profiles);
    drop(node);

    // `attune-origin rebuild`, run without the rules file: it replays the log's rules.
    support::rebuild(dir.path());
    let node = Node::open(&cfg).unwrap();
    assert_eq!(derived(&node, T0 + 10_000_000), original);
    assert!(!node.append_rules_if_changed().unwrap(), "B is in force");
    assert_eq!(
        rules_records(&node).len(),
        2,
        "the rebuild appended nothing"
    );
    // The version line was carried over (2) and the replay applied both changes after it.
    assert_eq!(cfg_queued(&node), Some(4));
    flush_all(&node);
    assert_eq!(kv_cfg(&cfg), Some((4, rules_b())));
}

/// A start appends a rules record only when the configured rules differ from the last ones
/// the log holds, applied or not yet applied; a layout change of the same rules is none.
#[test]
fn a_start_appends_one_record_per_change() {
    let dir = tempfile::tempdir().unwrap();
    let open = |rules: Rules| Node::open(&config(dir.path(), rules)).unwrap();
    let node = open(rules_a());
    assert!(node.append_rules_if_changed().unwrap());
    assert_eq!(rules_records(&node).len(), 1);
    drop(node);
    // Not applied yet: the record after the checkpoint counts.
    let node = open(rules_a());
    assert!(!node.append_rules_if_changed().unwrap());
    node.drain().unwrap();
    drop(node);
    let node = open(rules_a());
    assert!(!node.append_rules_if_changed().unwrap());
    assert_eq!(rules_records(&node).len(), 1);
    drop(node);

    let node = open(rules_b());
    assert!(node.append_rules_if_changed().unwrap());
    assert!(!node.append_rules_if_changed().unwrap());
    drop(node);
    let node = open(rules_b());
    assert!(!node.append_rules_if_changed().unwrap());
    let records = rules_records(&node);
    assert_eq!(records.len(), 2);
    let last: Rules = serde_json::from_slice(&records[1]).unwrap();
    assert_eq!(last, rules_b());

    // The same rules from a file, pretty-printed: no change.
    let file = dir.path().join("rules.json");
    std::fs::write(&file, serde_json::to_string_pretty(&rules_b()).unwrap()).unwrap();
    let mut cfg = config(dir.path(), Rules::default());
    cfg.rules_file = Some(file);
    cfg.load_rules().unwrap();
    drop(node);
    let node = Node::open(&cfg).unwrap();
    assert!(!node.append_rules_if_changed().unwrap());
    assert_eq!(rules_records(&node).len(), 2);
}

/// `cfg`'s version moves one step per change applied and never back: a repeated record (a
/// start that appended the rules in force again) spends no version, and a crash before the
/// checkpoint replays the change at the same version.
#[test]
fn the_cfg_version_never_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_a = config(dir.path(), rules_a());
    let mut versions = Vec::new();
    for rules in [rules_a(), rules_b(), rules_a()] {
        let node = Node::open(&config(dir.path(), rules)).unwrap();
        node.append_rules_if_changed().unwrap();
        node.drain().unwrap();
        flush_all(&node);
        versions.push(kv_cfg(&cfg_a).unwrap().0);
    }
    assert_eq!(versions, [1, 2, 3]);
    assert_eq!(kv_cfg(&cfg_a).unwrap().1, rules_a());

    // The rules in force again, as a record: applied, nothing changes.
    let node = Node::open(&cfg_a).unwrap();
    let payload = serde_json::to_vec(&rules_a()).unwrap();
    node.log.append_admin(RecordKind::Rules, payload).unwrap();
    node.drain().unwrap();
    assert_eq!(cfg_queued(&node), None, "nothing new to publish");
    drop(node);

    // A change applied, then a crash before its checkpoint: the replay gives it version 4.
    let node = Node::open(&config(dir.path(), rules_b())).unwrap();
    assert!(node.append_rules_if_changed().unwrap());
    let mut p = node.pipeline().unwrap();
    let mut reader = node.log.reader().unwrap();
    let mut buf = Vec::new();
    reader
        .read(p.offset(), 100, Duration::ZERO, &mut buf)
        .unwrap();
    p.process(&buf).unwrap();
    flush_all(&node);
    assert_eq!(
        kv_cfg(&cfg_a),
        Some((4, rules_b())),
        "published before the checkpoint"
    );
    drop(p);
    drop(node);
    let node = Node::open(&cfg_a).unwrap();
    node.drain().unwrap();
    assert_eq!(cfg_queued(&node), Some(4));
    flush_all(&node);
    assert_eq!(kv_cfg(&cfg_a), Some((4, rules_b())));
}

/// A rules file that is not rules JSON stops the start with the file's path and the parse
/// error, before anything is appended.
#[test]
fn a_bad_rules_file_is_refused_and_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(&config(dir.path(), rules_a())).unwrap();
    assert!(node.append_rules_if_changed().unwrap());
    let end = node.log.end();
    drop(node);
    let file = dir.path().join("rules.json");
    std::fs::write(&file, r#"{"segments": [{"name": 7}]}"#).unwrap();
    let out = run_origin([
        OsStr::new("--data-dir"),
        dir.path().as_os_str(),
        OsStr::new("--rules"),
        file.as_os_str(),
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new("--insecure-dev-no-token"),
        OsStr::new("serve"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&*file.to_string_lossy()), "{err}");
    assert!(err.contains("invalid type"), "{err}");
    let node = Node::open(&config(dir.path(), rules_a())).unwrap();
    assert_eq!(node.log.end(), end);
    assert_eq!(rules_records(&node).len(), 1);
}
