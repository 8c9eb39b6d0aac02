//! A damaged store never crashes the process: every flipped byte gives a clear error or a
//! logged rebuild from the event log, and `attune-origin rebuild` recreates the store with the
//! state it held. `RELIABILITY.md` ("Service edges") lists the cases.

use std::ffi::OsStr;
use std::path::Path;

mod support;

use attune_core::{CatalogItem, Profile};
use attune_origin::Node;
use attune_origin::config::{Config, TargetKind};
use support::run_origin;

fn config(dir: &Path) -> Config {
    let mut cfg = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    cfg.publish.target = TargetKind::None;
    cfg
}

/// A data directory with 2,000 events of 200 users applied and checkpointed; its profiles.
fn populate(cfg: &Config, catalog: bool) -> Vec<(String, Profile)> {
    let node = Node::open(cfg).unwrap();
    if catalog {
        let items = (0..20)
            .map(|i| CatalogItem {
                id: format!("i{i}"),
                title: format!("Item {i}"),
                url: format!("/p/{i}"),
                image: String::new(),
                price: "£1.00".into(),
                category: format!("cat{}", i % 4),
            })
            .collect();
        node.put_catalog(items).unwrap();
    }
    let now = attune_origin::now_ms();
    for batch in 0..10u64 {
        let events = (0..200u64)
            .map(|u| {
                let n = batch * 200 + u;
                format!(
                    r#"{{"v":1,"event_id":"e{n}","user":"u{u}","ts":{},"kind":"view","item":"i{}"}}"#,
                    now - 100_000 + n,
                    (n * 7) % 20
                )
                .into_bytes()
            })
            .collect();
        node.log.append_blocking(now, "test", events).unwrap();
    }
    node.drain().unwrap();
    node.store.profiles().unwrap()
}

fn profiles_after_drain(cfg: &Config) -> Result<Vec<(String, Profile)>, String> {
    let node = Node::open(cfg).map_err(|e| e.to_string())?;
    node.drain().map_err(|e| e.to_string())?;
    node.store.profiles().map_err(|e| e.to_string())
}

fn replaced(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".replaced-"))
        .collect()
}

#[test]
fn flipped_bytes_in_the_store_give_an_error_or_a_rebuild_never_a_panic() {
    // The WARN lines (why each store was rebuilt) show with `--nocapture`.
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let original = populate(&cfg, false);
    assert_eq!(original.len(), 200);
    let bytes = std::fs::read(cfg.store_path()).unwrap();
    let len = bytes.len();
    let mut positions = vec![0, 9, 40, 100, 600, 4096 + 17, 8192 + 300];
    positions.extend((1..16).map(|i| i * len / 16 + 123));
    positions.push(len - 100);
    let (mut same, mut rebuilt, mut refused) = (0, 0, 0);
    for &at in positions.iter().filter(|&&at| at < len) {
        for old in replaced(dir.path()) {
            std::fs::remove_file(old).unwrap();
        }
        let mut damaged = bytes.clone();
        damaged[at] ^= 0xFF;
        std::fs::write(cfg.store_path(), &damaged).unwrap();
        let outcome = std::panic::catch_unwind(|| profiles_after_drain(&cfg));
        let rebuilt_now = !replaced(dir.path()).is_empty();
        match outcome {
            Err(_) => panic!("a flipped byte at {at} of {len} panicked"),
            Ok(Ok(profiles)) => {
                assert_eq!(profiles, original, "byte {at}: the state differs");
                if rebuilt_now { rebuilt += 1 } else { same += 1 }
            }
            Ok(Err(msg)) => {
                assert!(msg.contains("store"), "byte {at}: unclear error {msg}");
                refused += 1;
            }
        }
    }
    println!(
        "{len}-byte store: unchanged state {same}, rebuilt from the log {rebuilt}, refused {refused}"
    );
    assert!(rebuilt > 0, "no position was detected as damage");
}

#[test]
fn rebuild_restores_the_state_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let original = populate(&cfg, true);
    let report = support::rebuild(dir.path());
    assert_eq!(report["applied"], 2000, "{report}");
    assert_eq!(replaced(dir.path()).len(), 1);
    let node = Node::open(&cfg).unwrap();
    assert_eq!(node.store.profiles().unwrap(), original);
    assert_eq!(node.store.catalog().unwrap().len(), 20);
    drop(node);

    // No log: the command refuses and leaves the store alone.
    std::fs::remove_dir_all(cfg.log_dir()).unwrap();
    let before = std::fs::read(cfg.store_path()).unwrap();
    let out = run_origin([
        OsStr::new("--data-dir"),
        dir.path().as_os_str(),
        OsStr::new("rebuild"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no segments"));
    assert_eq!(std::fs::read(cfg.store_path()).unwrap(), before);
}
