//! The segmented log in a node: retention runs after checkpoints and deletes only what the
//! checkpoint is past, the status counts segments and bytes, and a store rebuilt from a log
//! whose first segments were retired is refused unless the loss is accepted.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, SystemTime};

mod support;

use attune_core::CatalogItem;
use attune_origin::config::{Config, TargetKind};
use attune_origin::{Error, FIRST_OFFSET, Node};
use support::run_origin;

const SEGMENT_BYTES: u64 = 64 << 10;

fn config(dir: &Path) -> Config {
    let mut cfg = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    cfg.publish.target = TargetKind::None;
    cfg.log.segment_bytes = SEGMENT_BYTES;
    cfg
}

/// `n` events of 100 users from `from` on.
fn events(from: u64, n: u64) -> Vec<Vec<u8>> {
    let now = attune_origin::now_ms();
    (from..from + n)
        .map(|i| {
            format!(
                r#"{{"v":1,"event_id":"e{i}","user":"u{}","ts":{},"kind":"view","item":"i{}"}}"#,
                i % 100,
                now - 1_000_000 + i,
                i % 30
            )
            .into_bytes()
        })
        .collect()
}

fn run(dir: &Path, args: &[&str]) -> Output {
    let config = dir.join("attune.toml");
    let config_args = [OsStr::new("--config"), config.as_os_str()];
    run_origin(config_args.into_iter().chain(args.iter().map(OsStr::new)))
}

/// Size retention in a running pipeline, then `rebuild`: refused (store untouched) without
/// `--accept-retired`, and with it a store from what is left, reported as incomplete.
#[test]
fn retired_segments_make_a_rebuild_ask_for_the_loss_to_be_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.log.retention_bytes = 4 * SEGMENT_BYTES;
    std::fs::write(
        dir.path().join("attune.toml"),
        format!(
            "data_dir = {:?}\n[publish]\ntarget = \"none\"\n[log]\nsegment_bytes = {}\n\
             retention_bytes = {}\n",
            dir.path(),
            cfg.log.segment_bytes,
            cfg.log.retention_bytes
        ),
    )
    .unwrap();
    let start;
    {
        let node = Node::open(&cfg).unwrap();
        node.put_catalog(vec![CatalogItem {
            id: "i1".into(),
            title: "One".into(),
            url: "/p/1".into(),
            image: String::new(),
            price: "£1".into(),
            category: "c".into(),
        }])
        .unwrap();
        for k in 0..20 {
            node.log
                .append_blocking(attune_origin::now_ms(), "t", events(k * 500, 500))
                .unwrap();
            node.drain().unwrap();
        }
        let usage = node.log.usage();
        start = node.log.start();
        let status = node.status_json(node.log.end());
        eprintln!(
            "10,000 events in {}-byte segments, retention {} bytes: {} segments, {} bytes left, \
             log starts at {start}",
            SEGMENT_BYTES, cfg.log.retention_bytes, usage.segments, usage.bytes
        );
        assert!(start > FIRST_OFFSET, "segments were retired");
        assert!(
            usage.bytes <= cfg.log.retention_bytes + SEGMENT_BYTES,
            "{usage:?}"
        );
        assert_eq!(status["log_segments"], usage.segments);
        assert_eq!(status["log_start"], start);
        assert!(status["log_bytes"].as_u64().unwrap() > 0);
        // Nothing at or past the checkpoint was retired: the checkpoint is in a kept segment.
        assert!(start <= node.store.meta("offset:log").unwrap_or(u64::MAX));
    }
    let store = std::fs::read(cfg.store_path()).unwrap();

    let refused = run(dir.path(), &["rebuild"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("retired") && stderr.contains("--accept-retired"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(cfg.store_path()).unwrap(), store);

    // The node rebuilding a damaged store by itself refuses too, naming the flag.
    std::fs::write(cfg.store_path(), b"damaged").unwrap();
    let err = Node::open(&cfg).unwrap_err();
    assert!(matches!(err, Error::CannotRebuild { .. }), "{err}");
    assert!(err.to_string().contains("--accept-retired"), "{err}");

    let accepted = run(dir.path(), &["rebuild", "--accept-retired"]);
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&accepted.stdout).unwrap();
    eprintln!("rebuild --accept-retired: {report}");
    assert_eq!(report["complete"], false, "{report}");
    assert_eq!(report["replayed_from_offset"], start, "{report}");
    let applied = report["applied"].as_u64().unwrap();
    assert!(applied > 0 && applied < 10_000, "{report}");
    let node = Node::open(&cfg).unwrap();
    // The catalog record was in a retired segment.
    assert_eq!(node.store.catalog().unwrap().len(), 0);
}

/// Age retention: only closed segments older than the retention and wholly before the
/// checkpoint go, when the pipeline checkpoints.
#[test]
fn old_segments_go_after_a_checkpoint_past_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.log.retention_ms = 3_600_000;
    let node = Node::open(&cfg).unwrap();
    // One group commit goes to one segment: appends of 100 let the log roll between them.
    let append = |from: u64| {
        for chunk in events(from, 3_000).chunks(100) {
            node.log
                .append_blocking(attune_origin::now_ms(), "t", chunk.to_vec())
                .unwrap();
        }
    };
    append(0);
    node.drain().unwrap();
    let segments = node.log.usage().segments;
    assert!(segments > 4, "{segments}");
    // Close the segment being appended to, age every segment by two hours, then append more
    // (young segments) without applying them.
    node.log.roll().unwrap();
    let checkpointed = node.log.end();
    let aged: Vec<_> = std::fs::read_dir(cfg.log_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    for p in &aged {
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(7_200))
            .unwrap();
    }
    append(3_000);
    // Old, but the checkpoint is not past them yet: an explicit retention pass keeps them.
    let kept = node
        .log
        .retire(FIRST_OFFSET, &cfg.log, SystemTime::now())
        .unwrap();
    assert_eq!(kept.segments, 0);
    // The drain checkpoints past them: the closed old segments go, the one made empty by the
    // roll (aged too, but being appended to when they went) and the young ones stay.
    node.drain().unwrap();
    assert_eq!(node.log.start(), checkpointed);
    let left: Vec<_> = aged.iter().filter(|p| p.exists()).collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(
        *left[0],
        attune_origin::segment_path(&cfg.log_dir(), checkpointed)
    );
}

/// What a forget costs when the user's events are in every segment: each segment holding one
/// is rewritten whole. Prints the time (`cargo test -p attune-origin --release --test
/// log_segments erase_cost -- --ignored --nocapture`); ignored in the normal run.
#[test]
#[ignore = "a measurement"]
fn erase_cost_when_the_user_is_in_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.log.segment_bytes = 64 << 20;
    let node = Node::open(&cfg).unwrap();
    let now = attune_origin::now_ms();
    let mut n = 0u64;
    while node.log.usage().segments < 5 {
        node.log
            .append_blocking(now, "t", events(n, 50_000))
            .unwrap();
        n += 50_000;
    }
    node.drain().unwrap();
    let usage = node.log.usage();
    let t = std::time::Instant::now();
    node.forget("u7").unwrap();
    node.drain().unwrap();
    eprintln!(
        "forget of a user in every segment: {} events, {} segments, {} bytes; forget + erase \
         in {:?}",
        n,
        usage.segments,
        usage.bytes,
        t.elapsed()
    );
}
