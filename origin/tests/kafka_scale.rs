//! Scale-out on a real Apache Kafka broker: two origins in one consumer group split the topic,
//! one is SIGKILLed mid-stream, the other restores its partitions from the state changelog and
//! carries on. Ignored by default (the broker's jars come from Maven Central);
//! `cargo xtask test` runs it after `bootstrap --kafka`:
//! `cargo test -p attune-origin --test kafka_scale -- --ignored`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

use attune_core::{CatalogShard, NeighbourShard, wire};
use attune_harness::Service;
use attune_kafka_harness::{Broker, BrokerOptions};
use attune_origin::{Config, Node};
use support::{
    BIN, Derived, derived, http, metric, post_accepted, random_events, serve, status, stop,
};

/// An origin in the scaled-out group on `topic`, or on the embedded log when `brokers` is
/// `None`.
fn start(data: &Path, kv: &Path, brokers: Option<&str>, topic: &str) -> (Service, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("--data-dir")
        .arg(data)
        .arg("--kv-dir")
        .arg(kv)
        .args(["--listen", "127.0.0.1:0", "--profile-key", "pk"])
        .arg("--insecure-dev-no-token")
        .env("ATTUNE_LOG", "info")
        .env_remove("ATTUNE_KV_URL");
    if let Some(brokers) = brokers {
        let config = data.with_extension("toml");
        std::fs::write(&config, "[kafka]\ntransaction_timeout_ms = 5000\n").unwrap();
        cmd.arg("--config").arg(&config);
        cmd.args(["--brokers", brokers, "--kafka-scale-out"])
            .args(["--kafka-topic", topic])
            .args(["--kafka-dlq-topic", &format!("{topic}.dlq")])
            .args(["--kafka-group", &format!("{topic}-group")])
            // A killed member leaves the group in 6 s, not librdkafka's default 45.
            .args(["--kafka-setting", "session.timeout.ms=6000"])
            .args(["--kafka-setting", "heartbeat.interval.ms=500"]);
    }
    cmd.arg("serve");
    if brokers.is_some() {
        cmd.args(["--source", "kafka"]);
    }
    serve(cmd)
}

/// What a stopped origin derived, trending decayed to `trending_at` (one time for every run).
/// After this batch, user `FORGOTTEN` is forgotten (in every run at the same point of the
/// stream): the forget is a tombstone in the changelog, and its KV delete is the owner's.
const FORGET_AFTER: usize = 8;
const FORGOTTEN: &str = "u3";

/// Posts batch `i`, and the forget after [`FORGET_AFTER`].
fn send(http: &reqwest::blocking::Client, url: &str, batches: &[String], i: usize) {
    assert!(post_accepted(http, url, &batches[i]), "batch {i}");
    if i == FORGET_AFTER {
        let r = http
            .delete(format!("{url}/v1/users/{FORGOTTEN}"))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "forget: {}", r.status());
    }
}

/// A catalog of the sample's 60 items in 4 categories (categories feed the profiles'
/// category affinities and trending by category).
fn catalog_json() -> String {
    let items: Vec<String> = (0..60)
        .map(|i| {
            format!(
                r#"{{"id":"i{i}","title":"Item {i}","url":"/p/{i}","image":"","price":"1","category":"c{}"}}"#,
                i % 4
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// Puts `catalog` and waits until it is applied.
fn put_catalog(http: &reqwest::blocking::Client, url: &str, catalog: &str) {
    let r = http
        .put(format!("{url}/v1/catalog"))
        .header("content-type", "application/json")
        .body(catalog.to_string())
        .send()
        .unwrap();
    assert!(r.status().is_success(), "catalog: {}", r.status());
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(http, url).and_then(|s| s["catalog"].as_u64()) != Some(60) {
        assert!(Instant::now() < deadline, "the catalog was never applied");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A KV directory's values by file name (`p:…` is written as `p_…`).
fn kv_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .filter(|(name, _)| !name.starts_with('.'))
        .collect()
}

fn open(data: &Path, trending_at: u64) -> Derived {
    let cfg = Config {
        data_dir: data.to_path_buf(),
        ..Config::default()
    };
    let node = Node::open(&cfg).unwrap();
    derived(&node, trending_at)
}

/// Whether every one of `partitions` partitions is reported caught up (lag 0) by one of
/// `urls` (each reports the partitions it owns; the gauge follows librdkafka's statistics,
/// every 2 s).
fn caught_up(http: &reqwest::blocking::Client, urls: &[&str], partitions: u32) -> bool {
    let lag = |url: &str, p: u32| {
        metric(
            http,
            url,
            &format!("attune_kafka_consumer_lag{{partition=\"{p}\"}}"),
        )
    };
    (0..partitions).all(|p| urls.iter().any(|url| lag(url, p) == Some(0.0)))
}

/// Waits, at most `within`, until [`caught_up`] holds for 5 s in a row; `urls` answers the
/// instances' current URLs (a supervised one may have been started again).
fn wait_caught_up(
    http: &reqwest::blocking::Client,
    mut urls: impl FnMut() -> Vec<String>,
    partitions: u32,
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    let mut zero_since: Option<Instant> = None;
    loop {
        let now = urls();
        let now: Vec<&str> = now.iter().map(String::as_str).collect();
        match (caught_up(http, &now, partitions), zero_since) {
            (true, Some(t)) if t.elapsed() > Duration::from_secs(5) => return true,
            (true, None) => zero_since = Some(Instant::now()),
            (false, _) => zero_since = None,
            _ => {}
        }
        if Instant::now() > deadline {
            for url in now {
                eprintln!("never caught up: {url} {:?}", status(http, url));
            }
            return false;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One uninterrupted run of `batches` on the embedded log (its KV in `kv`): what it derived.
fn reference_run(
    http: &reqwest::blocking::Client,
    data: &Path,
    kv: &Path,
    batches: &[String],
    events: usize,
    trending_at: u64,
    catalog: Option<&str>,
) -> Derived {
    let (origin, url) = start(data, kv, None, "");
    if let Some(catalog) = catalog {
        put_catalog(http, &url, catalog);
    }
    for i in 0..batches.len() {
        send(http, &url, batches, i);
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while status(http, &url).and_then(|s| s["applied"].as_u64()) != Some(events as u64) {
        assert!(
            Instant::now() < deadline,
            "the reference run never applied everything"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop(origin);
    open(data, trending_at)
}

/// KV as the scaled-out instances left it equals the single run's: every profile byte for
/// byte (a profile's envelope carries its version and last-seen time, both deterministic),
/// and the neighbour shards' contents.
fn assert_same_kv(reference: &Path, scaled: &Path, users: usize) {
    let (ref_kv, scaled_kv) = (kv_files(reference), kv_files(scaled));
    let profiles = |files: &BTreeMap<String, Vec<u8>>| -> Vec<(String, Vec<u8>)> {
        files
            .iter()
            .filter(|(k, _)| k.starts_with("p_"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let ref_profiles = profiles(&ref_kv);
    assert_eq!(
        ref_profiles.len(),
        users,
        "the reference published them all"
    );
    assert!(
        profiles(&scaled_kv) == ref_profiles,
        "KV profiles differ from the single run's"
    );
    let shards = |files: &BTreeMap<String, Vec<u8>>| -> BTreeMap<String, NeighbourShard> {
        files
            .iter()
            .filter(|(k, _)| k.starts_with("n_"))
            .map(|(k, v)| (k.clone(), wire::decode::<NeighbourShard>(v).unwrap().body))
            .collect()
    };
    assert_eq!(shards(&scaled_kv), shards(&ref_kv), "KV neighbour shards");
}

/// Two instances in the group on `topic`, fed alternately until both apply events (the group
/// split the partitions). Returns them and the next batch to send.
struct Two {
    a: (Service, String),
    b: (Service, String),
    next: usize,
}

fn start_two(
    http: &reqwest::blocking::Client,
    dir: &Path,
    brokers: &str,
    topic: &str,
    batches: &[String],
) -> Two {
    let kv = dir.join("kv-scaled");
    let (a, url_a) = start(&dir.join("a"), &kv, Some(brokers), topic);
    let (b, url_b) = start(&dir.join("b"), &kv, Some(brokers), topic);
    let mut next = 0;
    let applied = |u: &str| {
        status(http, u)
            .and_then(|s| s["applied"].as_u64())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while applied(&url_a) == 0 || applied(&url_b) == 0 {
        if next < batches.len() / 2 {
            let url = if next.is_multiple_of(2) {
                &url_a
            } else {
                &url_b
            };
            send(http, url, batches, next);
            next += 1;
        }
        assert!(
            Instant::now() < deadline,
            "the group never split the topic.\nA: {}\nB: {}",
            a.output(),
            b.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("both instances applying after {next} batches");
    Two {
        a: (a, url_a),
        b: (b, url_b),
        next,
    }
}

fn batches() -> (usize, Vec<String>) {
    let events = random_events(3000, 150);
    (
        events.len(),
        events.chunks(50).map(|c| c.join("\n")).collect(),
    )
}

/// Two origins split the four partitions; one is SIGKILLed while events flow; the other takes
/// its partitions over (restored from `attune.state`, resumed at the offsets the group
/// committed in the same transactions) and ends with the profiles, neighbour shards and
/// trending of one uninterrupted single-instance run, and KV with its contents: nothing lost,
/// nothing applied twice.
#[test]
#[ignore = "starts a real Kafka broker"]
fn a_killed_instance_s_partitions_are_restored_by_the_other() {
    let started = Instant::now();
    let broker = Broker::start(&BrokerOptions::for_tests()).expect("starting the broker");
    let (events, batches) = batches();
    let http = http();
    let dir = tempfile::tempdir().unwrap();
    let trending_at = attune_origin::now_ms() + 60_000;
    let ref_kv = dir.path().join("kv-reference");
    let expected = reference_run(
        &http,
        &dir.path().join("reference"),
        &ref_kv,
        &batches,
        events,
        trending_at,
        None,
    );

    let two = start_two(
        &http,
        dir.path(),
        &broker.bootstrap_servers(),
        "scale.events",
        &batches,
    );
    let (mut a, url_a) = two.a;
    let (b, url_b) = two.b;
    let mut next = two.next;
    // A few more through A, then A is killed with B still taking events.
    for _ in 0..5 {
        send(&http, &url_a, &batches, next);
        next += 1;
    }
    a.group().kill().unwrap();
    let _ = a.kill();
    let killed_at = next;
    while next < batches.len() {
        send(&http, &url_b, &batches, next);
        next += 1;
    }
    assert!(
        wait_caught_up(&http, || vec![url_b.clone()], 4, Duration::from_secs(120)),
        "B's output:\n{}",
        b.output()
    );
    let restored = metric(&http, &url_b, "attune_kafka_partitions_restored").unwrap_or(0.0);
    let status_b = status(&http, &url_b).unwrap();
    stop(b);
    let got = open(&dir.path().join("b"), trending_at);
    eprintln!(
        "scale test: A killed after {killed_at} of {} batches; B restored {restored} partitions; \
         B's status {status_b}; {:?}",
        batches.len(),
        started.elapsed()
    );
    assert!(
        restored >= 1.0,
        "B never restored a partition from the changelog"
    );
    assert_eq!(got.profiles.len(), expected.profiles.len(), "users");
    for ((u1, p1), (u2, p2)) in expected.profiles.iter().zip(got.profiles.iter()) {
        assert_eq!(u1, u2);
        assert_eq!(p1, p2, "profile of {u1}");
    }
    assert_eq!(got.neighbours, expected.neighbours, "neighbour shards");
    let items = |d: &Derived| {
        d.trending
            .items
            .iter()
            .map(|t| t.item.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(items(&got), items(&expected), "trending order");
    for (g, e) in got.trending.items.iter().zip(&expected.trending.items) {
        assert!(
            (g.score - e.score).abs() <= 1e-5 * e.score.abs().max(1.0),
            "trending score of {}: {} vs {}",
            e.item,
            g.score,
            e.score
        );
    }
    assert_same_kv(
        &ref_kv,
        &dir.path().join("kv-scaled"),
        expected.profiles.len(),
    );
}

/// An instance run as its supervisor would (systemd's `Restart=on-failure`): started again
/// on the same data directory when it exits.
struct Supervised {
    data: PathBuf,
    kv: PathBuf,
    brokers: String,
    topic: String,
    service: Service,
    url: String,
    restarts: u32,
    /// Output of the runs that exited.
    exited: String,
}

impl Supervised {
    fn new(
        service: Service,
        url: String,
        data: PathBuf,
        kv: PathBuf,
        brokers: &str,
        topic: &str,
    ) -> Self {
        Supervised {
            data,
            kv,
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            service,
            url,
            restarts: 0,
            exited: String::new(),
        }
    }

    /// Its URL, after starting it again if it exited.
    fn url(&mut self) -> String {
        if !self.service.is_running() {
            self.exited.push_str(&self.service.output());
            let (service, url) = start(&self.data, &self.kv, Some(&self.brokers), &self.topic);
            self.service = service;
            self.url = url;
            self.restarts += 1;
        }
        self.url.clone()
    }
}

/// The broker is SIGKILLed and restarted (same directory and port) while two supervised
/// instances consume. A transaction the broker did not take is sent again; a member the group
/// dropped meanwhile cannot commit (its generation is gone), so its pipeline stops and its
/// supervisor starts it again from its store; requests refused meanwhile are sent again. KV
/// ends as a single uninterrupted run leaves it.
#[test]
#[ignore = "starts a real Kafka broker"]
fn a_broker_restart_under_two_instances_loses_nothing() {
    let started = Instant::now();
    let mut broker = Broker::start(&BrokerOptions::for_tests()).expect("starting the broker");
    let brokers = broker.bootstrap_servers();
    let (events, batches) = batches();
    let http = http();
    let dir = tempfile::tempdir().unwrap();
    let trending_at = attune_origin::now_ms() + 60_000;
    let ref_kv = dir.path().join("kv-reference");
    let expected = reference_run(
        &http,
        &dir.path().join("reference"),
        &ref_kv,
        &batches,
        events,
        trending_at,
        None,
    );

    let topic = "restart.events";
    let two = start_two(&http, dir.path(), &brokers, topic, &batches);
    let kv = dir.path().join("kv-scaled");
    let mut a = Supervised::new(
        two.a.0,
        two.a.1,
        dir.path().join("a"),
        kv.clone(),
        &brokers,
        topic,
    );
    let mut b = Supervised::new(
        two.b.0,
        two.b.1,
        dir.path().join("b"),
        kv.clone(),
        &brokers,
        topic,
    );
    let mut next = two.next;
    for _ in 0..4 {
        let url = if next.is_multiple_of(2) {
            a.url()
        } else {
            b.url()
        };
        send(&http, &url, &batches, next);
        next += 1;
    }
    broker.kill();
    std::thread::sleep(Duration::from_secs(2));
    broker.restart().expect("restarting the broker");
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    while next < batches.len() {
        let url = if next.is_multiple_of(2) {
            a.url()
        } else {
            b.url()
        };
        if post_accepted(&http, &url, &batches[next]) {
            next += 1;
        } else {
            refused += 1;
            assert!(
                Instant::now() < deadline,
                "ingest refused for 180 s after the restart"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let done = wait_caught_up(
        &http,
        || vec![a.url(), b.url()],
        4,
        Duration::from_secs(180),
    );
    assert!(
        done,
        "never caught up.\nA: {}{}\nB: {}{}",
        a.exited,
        a.service.output(),
        b.exited,
        b.service.output()
    );
    let (restarts_a, restarts_b) = (a.restarts, b.restarts);
    stop(a.service);
    stop(b.service);
    eprintln!(
        "broker restart under two instances: {refused} requests refused and sent again; \
         supervisor restarts A {restarts_a}, B {restarts_b}; {:?}",
        started.elapsed()
    );
    assert_same_kv(&ref_kv, &kv, expected.profiles.len());
}

/// An instance that joins a running group restores the partitions it is given from the
/// changelog (their catalog copies are behind the offsets it starts at) and gets the catalog
/// from the model topic, which it reads to its end before applying any event: its users'
/// category affinities and the catalog shards in KV are a single run's.
#[test]
#[ignore = "starts a real Kafka broker"]
fn a_joining_instance_restores_partitions_and_gets_the_catalog() {
    let started = Instant::now();
    let broker = Broker::start(&BrokerOptions::for_tests()).expect("starting the broker");
    let brokers = broker.bootstrap_servers();
    let (events, batches) = batches();
    let catalog = catalog_json();
    let http = http();
    let dir = tempfile::tempdir().unwrap();
    let trending_at = attune_origin::now_ms() + 60_000;
    let ref_kv = dir.path().join("kv-reference");
    let expected = reference_run(
        &http,
        &dir.path().join("reference"),
        &ref_kv,
        &batches,
        events,
        trending_at,
        Some(&catalog),
    );

    let topic = "join.events";
    let kv = dir.path().join("kv-scaled");
    let (a, url_a) = start(&dir.path().join("a"), &kv, Some(&brokers), topic);
    put_catalog(&http, &url_a, &catalog);
    let half = batches.len() / 2;
    for i in 0..half {
        send(&http, &url_a, &batches, i);
    }
    let applied = |u: &str| {
        status(&http, u)
            .and_then(|s| s["applied"].as_u64())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while applied(&url_a) < 50 * half as u64 {
        assert!(Instant::now() < deadline, "A never applied the first half");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (c, url_c) = start(&dir.path().join("c"), &kv, Some(&brokers), topic);
    // C has joined once it restored a partition A had been consuming.
    let deadline = Instant::now() + Duration::from_secs(90);
    while metric(&http, &url_c, "attune_kafka_partitions_restored").unwrap_or(0.0) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the joining instance never took a partition over.\nC: {}",
            c.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut next = half;
    while next < batches.len() {
        let url = if next.is_multiple_of(2) {
            &url_a
        } else {
            &url_c
        };
        send(&http, url, &batches, next);
        next += 1;
    }
    assert!(
        wait_caught_up(
            &http,
            || vec![url_a.clone(), url_c.clone()],
            4,
            Duration::from_secs(120)
        ),
        "A's output:\n{}\nC's output:\n{}",
        a.output(),
        c.output()
    );
    let restored = metric(&http, &url_c, "attune_kafka_partitions_restored").unwrap_or(0.0);
    let status_c = status(&http, &url_c).unwrap();
    stop(a);
    stop(c);
    eprintln!(
        "joining instance: C restored {restored} partitions; C's status {status_c}; {:?}",
        started.elapsed()
    );
    assert!(status_c["applied"].as_u64() > Some(0), "C applied events");
    assert_eq!(status_c["catalog"], 60, "C has the catalog");
    assert_same_kv(&ref_kv, &kv, expected.profiles.len());
    let catalog_shards = |dir: &Path| -> BTreeMap<String, CatalogShard> {
        kv_files(dir)
            .iter()
            .filter(|(k, _)| k.starts_with("c_"))
            .map(|(k, v)| (k.clone(), wire::decode::<CatalogShard>(v).unwrap().body))
            .collect()
    };
    let ref_catalog = catalog_shards(&ref_kv);
    assert!(
        !ref_catalog.is_empty(),
        "the reference published catalog shards"
    );
    assert_eq!(catalog_shards(&kv), ref_catalog, "KV catalog shards");
}
