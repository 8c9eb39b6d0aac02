//! Crash test: SIGKILL the real binary at random points while it ingests a fixed event file,
//! restart it, and compare the final store with an uninterrupted run: identical profiles,
//! nothing lost, nothing applied twice. 20 kills.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use attune_harness::{Service, Stopped};
use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_attune-origin");
const LISTENING: &str = "attune-origin listening on ";

fn start(data: &Path) -> (Service, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["--data-dir"])
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--profile-key", "pk"])
        .args(["--insecure-dev-no-token", "serve"])
        .env("ATTUNE_LOG", "warn")
        .env_remove("ATTUNE_KV_URL");
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

fn events() -> Vec<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let t0 = attune_origin::now_ms() - 3_600_000;
    (0..3000)
        .map(|n| {
            let kind = ["view", "click", "add_to_cart", "purchase"][rng.random_range(0..4)];
            format!(
                r#"{{"v":1,"event_id":"c{n}","user":"u{}","ts":{},"kind":"{kind}","item":"i{}"}}"#,
                rng.random_range(0..150),
                t0 + n * 1000,
                rng.random_range(0..60)
            )
        })
        .collect()
}

fn post(http: &reqwest::blocking::Client, url: &str, body: &str) -> bool {
    matches!(http.post(format!("{url}/v1/events")).body(body.to_string()).send(), Ok(r) if r.status() == 202)
}

fn wait_caught_up(http: &reqwest::blocking::Client, url: &str, expect_received: Option<u64>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{url}/v1/status")).send()
            && let Ok(s) = r.json::<serde_json::Value>()
            && s["applied_offset"] == s["log_end"]
            // The counters are the checkpoint's (it follows as soon as the pipeline is idle).
            && s["checkpointed_offset"] == s["log_end"]
            && expect_received.is_none_or(|n| s["received"] == n)
        {
            return;
        }
        assert!(Instant::now() < deadline, "pipeline never caught up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, and the origin's own clean exit (its store is read next).
fn stop(mut origin: Service) {
    let stopped = origin.stop(Duration::from_secs(60)).expect("stop");
    assert!(
        matches!(stopped, Stopped::Exited(_)),
        "the origin did not exit within 60 s of SIGTERM:\n{}",
        origin.output()
    );
}

fn profiles(data: &Path) -> Vec<(String, attune_core::Profile)> {
    let store = attune_origin::Store::open(&data.join("store.redb")).unwrap();
    store.profiles().unwrap()
}

#[test]
fn sigkill_at_random_points_loses_nothing_and_applies_nothing_twice() {
    let started = Instant::now();
    let events = events();
    let batches: Vec<String> = events.chunks(50).map(|c| c.join("\n")).collect();
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Reference: one uninterrupted run.
    let reference = dir.path().join("reference");
    let (origin, url) = start(&reference);
    for b in &batches {
        assert!(post(&http, &url, b));
    }
    wait_caught_up(&http, &url, Some(events.len() as u64));
    stop(origin);
    let expected = profiles(&reference);
    assert_eq!(
        expected.iter().map(|p| p.1.version).sum::<u64>(),
        events.len() as u64
    );

    // Crashing run: 20 SIGKILLs at random points; unacknowledged batches are sent again.
    let crashing = dir.path().join("crashing");
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut next = 0usize;
    for _kill in 0..20 {
        let (mut origin, url) = start(&crashing);
        let kill_after = Duration::from_millis(rng.random_range(5..120));
        let t = Instant::now();
        let killer = {
            let group = origin.group();
            std::thread::spawn(move || {
                std::thread::sleep(kill_after);
                let _ = group.kill();
            })
        };
        while next < batches.len() && t.elapsed() < kill_after + Duration::from_millis(50) {
            if post(&http, &url, &batches[next]) {
                next += 1;
            } else {
                break; // killed mid-request: resend this batch after the restart
            }
        }
        killer.join().unwrap();
        let _ = origin.kill();
    }
    let (origin, url) = start(&crashing);
    while next < batches.len() {
        assert!(post(&http, &url, &batches[next]));
        next += 1;
    }
    wait_caught_up(&http, &url, None);
    let status: serde_json::Value = http
        .get(format!("{url}/v1/status"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    stop(origin);
    let got = profiles(&crashing);
    assert_eq!(got.len(), expected.len(), "users");
    for ((u1, p1), (u2, p2)) in expected.iter().zip(got.iter()) {
        assert_eq!(u1, u2);
        assert_eq!(p1, p2, "profile of {u1} differs after crashes");
    }
    assert_eq!(status["applied"], events.len() as u64, "{status}");
    assert_eq!(status["dlq"], 0, "{status}");
    eprintln!(
        "crash test: 20 kills, {} duplicates resent and dropped, {:?}",
        status["duplicates"],
        started.elapsed()
    );
}
