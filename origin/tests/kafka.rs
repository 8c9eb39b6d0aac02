//! The origin on a real Apache Kafka broker (`attune-kafka-harness`, one broker for the whole
//! file on a free 127.0.0.1 port; each test has its own topics and group). Ignored by default
//! (the broker's jars come from Maven Central, the Python client from PyPI);
//! `cargo xtask test` runs them after `bootstrap --kafka`:
//! `cargo test -p attune-origin --test kafka -- --ignored`.

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

mod support;

use attune_core::Profile;
use attune_harness::Service;
use attune_kafka_harness::{Broker, BrokerOptions, provision};
use rand::{Rng, SeedableRng};
use support::{BIN, http, post_accepted, random_events, serve, status, stop, stored_profiles};

/// One broker for every test of this file; the harness's watchdog kills it when the test
/// process ends (statics are never dropped).
fn broker() -> String {
    static BROKER: OnceLock<Mutex<Broker>> = OnceLock::new();
    let b = BROKER.get_or_init(|| {
        let started = Instant::now();
        let broker = Broker::start(&BrokerOptions::for_tests()).expect("starting the broker");
        eprintln!(
            "broker on {} in {:?}",
            broker.bootstrap_servers(),
            started.elapsed()
        );
        Mutex::new(broker)
    });
    b.lock()
        .unwrap_or_else(|e| e.into_inner())
        .bootstrap_servers()
}

/// The origin binary; in Kafka mode on `topic` when given.
fn start(data: &Path, kafka: Option<(&str, &str)>) -> (Service, String) {
    start_with(data, kafka, &[])
}

/// [`start`] with extra arguments before `serve` (e.g. `--config`).
fn start_with(data: &Path, kafka: Option<(&str, &str)>, extra: &[&str]) -> (Service, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(extra);
    cmd.args(["--data-dir"])
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--profile-key", "pk"])
        .arg("--insecure-dev-no-token")
        .env("ATTUNE_LOG", "warn")
        .env_remove("ATTUNE_KV_URL");
    cmd.arg("serve");
    if let Some((brokers, topic)) = kafka {
        cmd.args(["--source", "kafka", "--brokers", brokers])
            .args(["--kafka-topic", topic])
            .args(["--kafka-dlq-topic", &format!("{topic}.dlq")])
            .args(["--kafka-group", &format!("{topic}-group")]);
    }
    serve(cmd)
}

/// Waits until the checkpointed counters say `field` reached `n`.
fn wait_for(http: &reqwest::blocking::Client, url: &str, field: &str, n: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(s) = status(http, url)
            && s[field].as_u64() >= Some(n)
        {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{field} never reached {n}: {:?}",
            status(http, url)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The profiles of one uninterrupted run of `batches` (`events` in all) on the embedded log.
fn embedded_profiles(data: &Path, batches: &[String], events: usize) -> Vec<(String, Profile)> {
    let http = http();
    let (origin, url) = start(data, None);
    for b in batches {
        assert!(post_accepted(&http, &url, b));
    }
    wait_for(&http, &url, "applied", events as u64);
    stop(origin);
    stored_profiles(data)
}

fn assert_same_profiles(expected: &[(String, Profile)], got: &[(String, Profile)], after: &str) {
    assert_eq!(got.len(), expected.len(), "users");
    for ((u1, p1), (u2, p2)) in expected.iter().zip(got.iter()) {
        assert_eq!(u1, u2);
        assert_eq!(p1, p2, "profile of {u1} differs after {after}");
    }
}

/// SIGKILL at random points while events go in through Kafka-mode ingest and out through the
/// consumer; a batch not acknowledged is sent again. The profiles equal those of one
/// uninterrupted run on the embedded log: nothing lost, nothing applied twice.
#[test]
#[ignore = "starts a real Kafka broker"]
fn sigkill_mid_stream_loses_nothing_and_applies_nothing_twice() {
    let started = Instant::now();
    let brokers = broker();
    let events = random_events(3000, 150);
    let batches: Vec<String> = events.chunks(50).map(|c| c.join("\n")).collect();
    let http = http();
    let dir = tempfile::tempdir().unwrap();

    let expected = embedded_profiles(&dir.path().join("reference"), &batches, events.len());

    let crashing = dir.path().join("crashing");
    let kafka = Some((brokers.as_str(), "crash.events"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut next = 0usize;
    let kills = 8;
    let mut applied_at_kill = Vec::new();
    // Batches sent again after a kill cut their request: only their events may be duplicates.
    let mut resent = 0u64;
    for _ in 0..kills {
        let (mut origin, url) = start(&crashing, kafka);
        // Kill while the consumer is applying: once this process applied something, at a
        // random point within the next 300 ms, with ingest still sending.
        let applied_before = status(&http, &url).map_or(0, |s| s["applied"].as_u64().unwrap_or(0));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut posted = 0;
        loop {
            if posted < 5 && next < batches.len() {
                if !post_accepted(&http, &url, &batches[next]) {
                    resent += 1;
                    break;
                }
                next += 1;
                posted += 1;
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
            let applied = status(&http, &url).map_or(0, |s| s["applied"].as_u64().unwrap_or(0));
            if applied > applied_before || Instant::now() > deadline {
                break;
            }
        }
        let kill_after = Duration::from_millis(rng.random_range(0..300));
        let t = Instant::now();
        let killer = {
            let group = origin.group();
            std::thread::spawn(move || {
                std::thread::sleep(kill_after);
                let _ = group.kill();
            })
        };
        let mut during = 0;
        while next < batches.len()
            && during < 3
            && t.elapsed() < kill_after + Duration::from_millis(50)
        {
            during += 1;
            if post_accepted(&http, &url, &batches[next]) {
                next += 1;
            } else {
                resent += 1;
                break;
            }
        }
        killer.join().unwrap();
        let _ = origin.kill();
        applied_at_kill.push(next);
    }
    eprintln!("batches acknowledged at each kill: {applied_at_kill:?}");
    assert!(next > 0, "no batch went in before the kills");
    let (origin, url) = start(&crashing, kafka);
    while next < batches.len() {
        assert!(post_accepted(&http, &url, &batches[next]));
        next += 1;
    }
    wait_for(&http, &url, "applied", events.len() as u64);
    // Anything applied twice would show up late: give it a moment to.
    std::thread::sleep(Duration::from_millis(500));
    let status = status(&http, &url).unwrap();
    stop(origin);
    assert_same_profiles(&expected, &stored_profiles(&crashing), "crashes");
    assert_eq!(status["applied"], events.len() as u64, "{status}");
    assert_eq!(status["dlq"], 0, "{status}");
    // Records consumed again (a restart that did not resume from the store's offsets) would be
    // caught by the dedup too; the count shows they were never read twice.
    assert!(
        status["duplicates"].as_u64().unwrap() <= 50 * resent,
        "{status}, {resent} batches resent"
    );
    eprintln!(
        "kafka crash test: {kills} kills, {} duplicates resent and dropped, {:?}",
        status["duplicates"],
        started.elapsed()
    );
}

/// A third-party client (PyPI's confluent-kafka, `lab/kafka/produce.py`) writes events to the
/// topic directly; the origin applies them. Then the admin records through Kafka: a catalog
/// change (a copy per partition, applied once) and a forget (in the user's partition).
#[test]
#[ignore = "starts a real Kafka broker"]
fn third_party_events_and_admin_records_are_applied() {
    let brokers = broker();
    let python = provision::python_client().expect("the Python client").path;
    let topic = "thirdparty.events";
    let http = http();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("origin");
    let (origin, url) = start(&data, Some((&brokers, topic)));

    let out = Command::new(&python)
        .arg(attune_kafka_harness::lab_dir().join("produce.py"))
        .args(["--bootstrap", &brokers, "--topic", topic])
        .args(["--count", "500", "--users", "20", "--items", "50"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "produce.py failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let s = wait_for(&http, &url, "received", 500);
    assert_eq!(s["received"], 500, "{s}");
    assert_eq!(
        s["applied"].as_u64().unwrap() + s["dlq"].as_u64().unwrap(),
        500,
        "{s}"
    );
    assert_eq!(s["duplicates"], 0, "{s}");
    let user = http.get(format!("{url}/v1/users/u000001")).send().unwrap();
    assert_eq!(
        user.status(),
        200,
        "a user of produce.py's events has a profile"
    );

    // A catalog change reaches every partition; the pipeline applies one copy and skips the
    // others (as gaps), so the catalog has the item once and the applied count is unchanged.
    let catalog =
        r#"[{"id":"I00001","title":"One","url":"/p/1","image":"","price":"1","category":"home"}]"#;
    let r = http
        .put(format!("{url}/v1/catalog"))
        .header("content-type", "application/json")
        .body(catalog)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&http, &url).map(|s| s["catalog"].clone()) != Some(1.into()) {
        assert!(
            Instant::now() < deadline,
            "the catalog change was never applied"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The forget goes to the user's partition, after their events.
    let r = http
        .delete(format!("{url}/v1/users/u000001"))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http.get(format!("{url}/v1/users/u000001")).send().unwrap();
        if r.status() == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "the forget was never applied");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Everything is applied and committed: each of the topic's 4 partitions reports a lag of
    // 0 once librdkafka's statistics have caught up with the last commit.
    let deadline = Instant::now() + Duration::from_secs(30);
    let lags = loop {
        let text = http
            .get(format!("{url}/metrics"))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default();
        let lags: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("attune_kafka_consumer_lag{"))
            .map(str::to_string)
            .collect();
        if lags.len() == 4 && lags.iter().all(|l| l.ends_with(" 0")) {
            break lags;
        }
        assert!(
            Instant::now() < deadline,
            "the consumer lag never read 0 on every partition: {lags:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        lags.iter().any(|l| l.contains(r#"partition="3""#)),
        "{lags:?}"
    );
    stop(origin);

    // After a restart nothing is applied again (offsets came from the store), and the other
    // partitions' catalog copies stay skipped.
    let before = stored_profiles(&data);
    let (origin, url) = start(&data, Some((&brokers, topic)));
    std::thread::sleep(Duration::from_secs(2));
    let s = status(&http, &url).unwrap();
    assert_eq!(s["received"], 500, "{s}");
    stop(origin);
    assert_eq!(stored_profiles(&data), before);
}

/// A second origin started in the same consumer group refuses to join it (the model needs
/// every partition, and its join would split the topic between the two), says why, and
/// leaves the first origin running: it stays healthy and keeps applying events.
#[test]
#[ignore = "starts a real Kafka broker"]
fn a_second_origin_in_the_group_is_refused() {
    let brokers = broker();
    let topic = "shared.events";
    let http = http();
    let dir = tempfile::tempdir().unwrap();
    let (first, url) = start(&dir.path().join("first"), Some((&brokers, topic)));
    assert!(post_accepted(&http, &url, &random_events(20, 5).join("\n")));
    wait_for(&http, &url, "received", 20);
    let (second, url2) = start(&dir.path().join("second"), Some((&brokers, topic)));
    let deadline = Instant::now() + Duration::from_secs(60);
    let healthz = |url: &str| {
        http.get(format!("{url}/healthz"))
            .send()
            .map(|r| (r.status().as_u16(), r.text().unwrap_or_default()))
    };
    let reason = loop {
        if let Ok((503, body)) = healthz(&url2) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the second origin never refused the group"
        );
        assert_eq!(healthz(&url).unwrap().0, 200, "the first origin stopped");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(reason.contains("already has a member"), "{reason}");
    assert!(reason.contains("one origin per consumer group"), "{reason}");
    drop(second);
    // Past the group's session timeout: a rebalance the second caused would have shown by now.
    std::thread::sleep(Duration::from_secs(7));
    let (code, body) = healthz(&url).unwrap();
    assert_eq!(code, 200, "{body}");
    let more = random_events(40, 5);
    assert!(post_accepted(&http, &url, &more[20..].join("\n")));
    wait_for(&http, &url, "applied", 40);
    drop(first);
}

/// `/readyz`'s status code and body.
fn readiness(http: &reqwest::blocking::Client, url: &str) -> Option<(u16, serde_json::Value)> {
    let r = http.get(format!("{url}/readyz")).send().ok()?;
    let code = r.status().as_u16();
    Some((code, r.json().ok()?))
}

/// Waits until `/readyz` answers `code`.
fn wait_readiness(http: &reqwest::blocking::Client, url: &str, code: u16) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((c, body)) = readiness(http, url)
            && c == code
        {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never answered {code}: {:?}",
            readiness(http, url)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The broker crashes mid-stream (SIGKILL, no shutdown hook) and comes back on the same
/// directory and port. While it is away ingest acknowledges nothing and `/readyz` says why;
/// once it is back, the events refused meanwhile are sent again and the profiles equal those
/// of one uninterrupted run on the embedded log: nothing acknowledged lost, nothing applied
/// twice. Its own broker: the restart would cut the other tests' one.
#[test]
#[ignore = "starts a real Kafka broker"]
fn a_broker_restart_mid_stream_loses_nothing_and_applies_nothing_twice() {
    let started = Instant::now();
    let mut broker = Broker::start(&BrokerOptions::for_tests()).expect("starting the broker");
    let brokers = broker.bootstrap_servers();
    let events = random_events(2000, 120);
    let batches: Vec<String> = events.chunks(50).map(|c| c.join("\n")).collect();
    let http = http();
    let dir = tempfile::tempdir().unwrap();
    let expected = embedded_profiles(&dir.path().join("reference"), &batches, events.len());

    // A refused send answers within 3 s instead of the default 10.
    let config = dir.path().join("origin.toml");
    std::fs::write(&config, "[kafka]\nproduce_timeout_ms = 3000\n").unwrap();
    let data = dir.path().join("kafka");
    let (origin, url) = start_with(
        &data,
        Some((&brokers, "restart.events")),
        &["--config", config.to_str().unwrap()],
    );
    let third = batches.len() / 3;
    for b in &batches[..third] {
        assert!(post_accepted(&http, &url, b));
    }
    wait_for(&http, &url, "applied", 1);
    assert_eq!(wait_readiness(&http, &url, 200)["status"], "ready");

    broker.kill();
    let mut next = third;
    let mut refused = 0u64;
    // Sent while the broker is away: never acknowledged (a refused batch is sent again later).
    while refused < 2 {
        assert!(
            !post_accepted(&http, &url, &batches[next]),
            "a batch was acknowledged with the broker down"
        );
        refused += 1;
    }
    let body = wait_readiness(&http, &url, 503);
    assert!(
        body["failing"]["kafka"]
            .as_str()
            .is_some_and(|r| r.contains("no Kafka broker is up")),
        "{body}"
    );

    broker.restart().expect("restarting the broker");
    assert_eq!(wait_readiness(&http, &url, 200)["status"], "ready");
    let resend_deadline = Instant::now() + Duration::from_secs(60);
    while next < batches.len() {
        if post_accepted(&http, &url, &batches[next]) {
            next += 1;
        } else {
            // The producer may still be reconnecting to the partition leaders.
            refused += 1;
            assert!(
                Instant::now() < resend_deadline,
                "ingest refused for 60 s after the restart"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    wait_for(&http, &url, "applied", events.len() as u64);
    std::thread::sleep(Duration::from_millis(500));
    let status = status(&http, &url).unwrap();
    stop(origin);
    assert_same_profiles(&expected, &stored_profiles(&data), "a broker restart");
    assert_eq!(status["applied"], events.len() as u64, "{status}");
    assert_eq!(status["dlq"], 0, "{status}");
    // A refused batch may have been written before its acknowledgement was lost: only those
    // come back as duplicates, and the dedup drops them.
    assert!(
        status["duplicates"].as_u64().unwrap() <= 50 * refused,
        "{status}, {refused} batches refused"
    );
    broker.stop(Duration::from_secs(30)).unwrap();
    eprintln!(
        "broker restart test: {refused} batches refused, {} duplicates dropped, {:?}",
        status["duplicates"],
        started.elapsed()
    );
}
