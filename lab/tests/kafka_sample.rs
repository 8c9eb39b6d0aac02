//! The shipped Online Retail sample through Kafka-mode ingest gives the same profiles and KV
//! shards as through the embedded log, bit for bit. A real Apache Kafka broker on a free
//! 127.0.0.1 port (`attune-kafka-harness`); ignored by default, run by `cargo xtask test`:
//! `cargo test -p attune-lab --test kafka_sample -- --ignored`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use attune_core::model::{CatalogShard, NeighbourShard, Trending};
use attune_core::wire::{self, Envelope};
use attune_kafka_harness::{Broker, BrokerOptions};
use attune_origin::config::{SourceKind, TargetKind};
use attune_origin::{Config, client::Client};

const SAMPLE: &str = "../data/online-retail/online_retail_sample.csv";

fn config(dir: &Path, kafka: Option<&str>) -> Config {
    let mut cfg = Config {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".into(),
        insecure_dev_no_token: true,
        ..Config::default()
    };
    cfg.publish.target = TargetKind::Dir;
    cfg.publish.dir = Some(dir.join("kv"));
    cfg.publish.flush_interval_ms = 100;
    if let Some(brokers) = kafka {
        cfg.source = SourceKind::Kafka;
        cfg.kafka.brokers = brokers.into();
        cfg.kafka.topic = "sample.events".into();
        cfg.kafka.dlq_topic = "sample.events.dlq".into();
        cfg.kafka.group_id = "sample".into();
    }
    cfg
}

/// Runs one origin in-process over the sample (catalog first, then the events through HTTP
/// ingest), waits until every event is applied and published, stops it gracefully.
async fn run(cfg: Config, catalog: &[attune_core::CatalogItem], lines: &[Vec<u8>]) -> PathBuf {
    let kv = cfg.publish.dir.clone().unwrap();
    let running = attune_origin::server::start(cfg.clone()).await.unwrap();
    let url = format!("http://{}", running.addr);
    Client::new(&url, None)
        .unwrap()
        .put_catalog(catalog)
        .await
        .unwrap();
    attune_origin::cli::feed(&cfg, Some(&url), None, "import", lines.to_vec(), 1000)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let s = running.node.status_json(0);
        if s["received"] == lines.len() as u64 && s["outbox"] == 0 && s["unpublished"] == 0 {
            assert_eq!(s["dlq"], 0, "{s}");
            assert_eq!(s["duplicates"], 0, "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "never caught up: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.shutdown().await.unwrap();
    kv
}

/// The published keys a comparison covers, by file name: profiles whole (their envelope's
/// version and time are the profile's own), shards and trending by body (the envelope's
/// version is the model's change counter, which counts micro-batches).
fn published(kv: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(kv).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".json") || name.starts_with('.') {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let body = fn_body(&name, &bytes);
        if let Some(body) = body {
            out.insert(name, body);
        }
    }
    out
}

fn fn_body(name: &str, bytes: &[u8]) -> Option<String> {
    fn body<T: wire::Read + std::fmt::Debug>(bytes: &[u8]) -> String {
        let env: Envelope<T> = wire::decode(bytes).unwrap();
        format!("{:?}", env.body)
    }
    if name.starts_with("p_") {
        Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
    } else if name.starts_with("c_") {
        Some(body::<CatalogShard>(bytes))
    } else if name.starts_with("n_") {
        Some(body::<NeighbourShard>(bytes))
    } else if name == "t" {
        // Trending is decayed to the wall clock when it is published, which differs between
        // the runs by a factor common to every score: the order, the categories' lists and
        // the scores relative to the top one are what the model decided.
        let env: Envelope<Trending> = wire::decode(bytes).unwrap();
        let t = env.body;
        let top = t.items.first().map_or(1.0, |e| f64::from(e.score));
        let items: Vec<String> = t
            .items
            .iter()
            .map(|e| format!("{} {:.5}", e.item, f64::from(e.score) / top))
            .collect();
        Some(format!("{items:?} {:?}", t.by_category))
    } else {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts a real Kafka broker"]
async fn the_sample_through_kafka_equals_the_embedded_log_bit_for_bit() {
    let started = Instant::now();
    let broker = tokio::task::spawn_blocking(|| Broker::start(&BrokerOptions::for_tests()))
        .await
        .unwrap()
        .expect("starting the broker");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join(SAMPLE);
    let ds = attune_lab::import::load_retail(&sample).unwrap();
    let imp = attune_lab::import::from_retail(&ds, attune_origin::now_ms(), true, false, false);
    let lines: Vec<Vec<u8>> = imp
        .events
        .iter()
        .map(|e| e.to_json().into_bytes())
        .collect();
    let dir = tempfile::tempdir().unwrap();

    let embedded = run(
        config(&dir.path().join("embedded"), None),
        &imp.catalog,
        &lines,
    )
    .await;
    let t = Instant::now();
    let kafka = run(
        config(&dir.path().join("kafka"), Some(&broker.bootstrap_servers())),
        &imp.catalog,
        &lines,
    )
    .await;
    let kafka_took = t.elapsed();

    let a = published(&embedded);
    let b = published(&kafka);
    let count =
        |m: &BTreeMap<String, String>, p: &str| m.keys().filter(|k| k.starts_with(p)).count();
    assert!(
        count(&a, "p_") > 100,
        "profiles published: {}",
        count(&a, "p_")
    );
    assert!(
        count(&a, "n_") > 0 && count(&a, "c_") > 0,
        "shards published"
    );
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same keys"
    );
    for (key, body) in &a {
        assert!(
            b[key] == *body,
            "{key} differs between the embedded log and Kafka"
        );
    }
    let profiles = |d: &Path| {
        attune_origin::Store::open(&d.parent().unwrap().join("store.redb"))
            .unwrap()
            .profiles()
            .unwrap()
    };
    assert_eq!(profiles(&embedded), profiles(&kafka), "stored profiles");
    eprintln!(
        "{} events, {} profiles, {} shards: identical; Kafka run {kafka_took:?}, whole test {:?}",
        lines.len(),
        count(&a, "p_"),
        count(&a, "n_") + count(&a, "c_"),
        started.elapsed()
    );
}
