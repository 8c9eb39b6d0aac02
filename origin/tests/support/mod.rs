//! What several of the origin's integration tests need: the binary, a publisher run until KV
//! has everything, a bit flipped on disk. Each test file uses part of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use attune_origin::{Node, Publisher, Target};

pub const BIN: &str = env!("CARGO_BIN_EXE_attune-origin");

/// Publishes until nothing is left waiting; fails if keys still wait after 20 flushes. KV takes
/// one write per key per second, so a flush right after another defers some keys; each retry
/// comes a second later.
pub fn flush_all(node: &Node) {
    assert!(flush(node, 20), "keys were still deferred after 20 flushes");
}

/// Up to `tries` flushes, a second apart, until one defers nothing; whether one did.
pub fn flush(node: &Node, tries: usize) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut publisher = Publisher::new(node, Target::from_config(&node.cfg).unwrap());
    rt.block_on(async {
        for attempt in 0..tries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(1100)).await;
            }
            let outcome = publisher
                .flush(Some(Instant::now() + Duration::from_secs(30)))
                .await
                .unwrap();
            if outcome.deferred == 0 {
                return true;
            }
        }
        false
    })
}

/// Flips bit `bit` of the byte at `at`.
pub fn flip_bit(path: &Path, at: u64, bit: u8) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ (1 << bit)], at).unwrap();
}

/// Runs `attune-origin` with `args` to its end, quietly and with no KV target from the
/// environment.
pub fn run_origin<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    Command::new(BIN)
        .args(args)
        .env("ATTUNE_LOG", "warn")
        .env_remove("ATTUNE_KV_URL")
        .output()
        .unwrap()
}

/// `attune-origin --data-dir <dir> rebuild`, which must succeed; its report.
pub fn rebuild(dir: &Path) -> serde_json::Value {
    let out = run_origin([
        OsStr::new("--data-dir"),
        dir.as_os_str(),
        OsStr::new("rebuild"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
