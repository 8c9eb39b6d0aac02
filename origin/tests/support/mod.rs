//! What several of the origin's integration tests need: the binary, a publisher run until KV
//! has everything, a bit flipped on disk. Each test file uses part of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use attune_core::{NeighbourShard, Profile, Trending};
use attune_harness::{Service, Stopped};
use attune_origin::{Node, Publisher, Target};
use rand::{Rng, SeedableRng};

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

/// Everything derived that KV gets: every neighbour shard, trending (at a fixed time, so runs
/// compare) and the stored profiles.
#[derive(Debug, PartialEq)]
pub struct Derived {
    pub neighbours: Vec<NeighbourShard>,
    pub trending: Trending,
    pub profiles: Vec<(String, Profile)>,
}

/// What `node` derived from its log, with trending decayed to `trending_at`; every event must
/// have applied (no dead letters).
pub fn derived(node: &Node, trending_at: u64) -> Derived {
    assert_eq!(node.store.dlq_len().unwrap(), 0, "every event applies");
    let model = node.model.lock().unwrap();
    Derived {
        neighbours: (0..model.shards())
            .map(|s| model.neighbour_shard(s))
            .collect(),
        trending: model.trending(trending_at),
        profiles: node.store.profiles().unwrap(),
    }
}

const LISTENING: &str = "attune-origin listening on ";

/// Starts `cmd` (the binary, or a shell that execs it, serving on `127.0.0.1:0`) and waits for
/// its "listening" line; the origin and its base URL.
pub fn serve(cmd: Command) -> (Service, String) {
    let mut origin = Service::spawn("attune-origin", cmd).expect("spawn");
    let line = origin
        .wait_for_line(LISTENING, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    let url = line
        .trim()
        .strip_prefix(LISTENING)
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .to_string();
    (origin, url)
}

/// SIGTERM, and the origin's own clean exit within 60 s (its store is read next).
pub fn stop(mut origin: Service) {
    let stopped = origin.stop(Duration::from_secs(60)).expect("stop");
    assert!(
        matches!(stopped, Stopped::Exited(_)),
        "the origin did not exit within 60 s of SIGTERM:\n{}",
        origin.output()
    );
}

/// The profiles in the store of the data directory `data`.
pub fn stored_profiles(data: &Path) -> Vec<(String, Profile)> {
    attune_origin::Store::open(&data.join("store.redb"))
        .unwrap()
        .profiles()
        .unwrap()
}

/// `n` events of `users` users over 60 items, one a second from an hour ago, the same for
/// every call (seeded).
pub fn random_events(n: u64, users: u32) -> Vec<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let t0 = attune_origin::now_ms() - 3_600_000;
    (0..n)
        .map(|n| {
            let kind = ["view", "click", "add_to_cart", "purchase"][rng.random_range(0..4)];
            format!(
                r#"{{"v":1,"event_id":"c{n}","user":"u{}","ts":{},"kind":"{kind}","item":"i{}"}}"#,
                rng.random_range(0..users),
                t0 + n * 1000,
                rng.random_range(0..60)
            )
        })
        .collect()
}

/// Whether ingest accepted a POST of `body` (202).
pub fn post_accepted(http: &reqwest::blocking::Client, url: &str, body: &str) -> bool {
    matches!(http.post(format!("{url}/v1/events")).body(body.to_string()).send(), Ok(r) if r.status() == 202)
}

/// A blocking client for the tests' requests to a running origin.
pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// `/v1/status`, if the origin answers.
pub fn status(http: &reqwest::blocking::Client, url: &str) -> Option<serde_json::Value> {
    http.get(format!("{url}/v1/status"))
        .send()
        .ok()?
        .json()
        .ok()
}

/// The value of the first `/metrics` line that starts with `line_start` (a name with its
/// labels).
pub fn metric(http: &reqwest::blocking::Client, url: &str, line_start: &str) -> Option<f64> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .ok()?
        .text()
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
