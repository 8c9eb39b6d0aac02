//! Crash test: SIGKILL the real binary at random points while it ingests a fixed event file,
//! restart it, and compare the final store with an uninterrupted run: identical profiles,
//! nothing lost, nothing applied twice. 20 kills.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

use attune_harness::Service;
use rand::{Rng, SeedableRng};
use support::{BIN, post_accepted, random_events, serve, stop, stored_profiles};

fn start(data: &Path) -> (Service, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["--data-dir"])
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--profile-key", "pk"])
        .args(["--insecure-dev-no-token", "serve"])
        .env("ATTUNE_LOG", "warn")
        .env_remove("ATTUNE_KV_URL");
    serve(cmd)
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

#[test]
fn sigkill_at_random_points_loses_nothing_and_applies_nothing_twice() {
    let started = Instant::now();
    let events = random_events(3000, 150);
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
        assert!(post_accepted(&http, &url, b));
    }
    wait_caught_up(&http, &url, Some(events.len() as u64));
    stop(origin);
    let expected = stored_profiles(&reference);
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
            if post_accepted(&http, &url, &batches[next]) {
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
        assert!(post_accepted(&http, &url, &batches[next]));
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
    let got = stored_profiles(&crashing);
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
