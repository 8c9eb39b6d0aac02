//! The publisher against a strict stand-in of Cloudflare's KV bulk API: a request budget per
//! window (a 429 blocks the whole window), `Ratelimit` headers, `unsuccessful_keys`, 401/403.
//! At steady event rates the origin stays under the budget with no 429, every key ends at its
//! latest version, and each key is written at most once per second, across a restart.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{post, put};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "../kv_stand_in/mod.rs"]
mod kv_stand_in;
mod strict;

use kv_stand_in::{event, ok};
use strict::{Cf, cf_config, start_cf};

/// Sends `rate` events/s for `secs` seconds over `users` users, in 10 requests a second.
async fn feed_steady(url: &str, rate: usize, secs: u64, users: usize, tag: &str) -> usize {
    let http = reqwest::Client::new();
    let per_tick = (rate / 10).max(1);
    let ticks = secs * 10;
    let mut sent = 0;
    let start = Instant::now();
    for tick in 0..ticks {
        let body: String = (0..per_tick)
            .map(|i| {
                let n = sent + i;
                event(
                    &format!("{tag}-{n}"),
                    &format!("user{}", n % users),
                    &format!("i{}", n % 7),
                    "view",
                ) + "\n"
            })
            .collect();
        let r = http
            .post(format!("{url}/v1/events"))
            .bearer_auth("itok")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        sent += per_tick;
        tokio::time::sleep_until((start + Duration::from_millis(100 * (tick + 1))).into()).await;
    }
    sent
}

async fn put_catalog(url: &str) {
    let catalog: Vec<serde_json::Value> = (0..7)
        .map(|i| serde_json::json!({"id": format!("i{i}"), "title": "T", "url": format!("/p/{i}"),
            "image": "/img/a.svg", "price": "£1.00", "category": if i % 2 == 0 {"Mugs"} else {"Bags"}}))
        .collect();
    let r = reqwest::Client::new()
        .put(format!("{url}/v1/catalog"))
        .bearer_auth("itok")
        .json(&catalog)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Every stored profile is in KV at its version.
fn assert_latest(cf: &Cf, node: &attune_origin::node::Node) {
    let profiles = node.store.profiles().unwrap();
    assert!(!profiles.is_empty());
    for (user, profile) in profiles {
        let key = attune_core::hash::profile_key(b"pk", &user);
        let versions = cf
            .applied
            .get(&key)
            .unwrap_or_else(|| panic!("{user} not in KV"));
        assert_eq!(*versions.last().unwrap(), profile.version, "{user}");
    }
}

async fn steady_rate(rate: usize, users: usize) {
    let cf = Cf::new(12, Duration::from_secs(5));
    cf.lock().unwrap().reject_every = 4;
    let cf_addr = start_cf(cf.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = cf_config(&dir.path().join("d"), cf_addr);

    // Two runs over one data directory: the restart must keep one write per key per second.
    let mut sent = 0;
    for run in 0..2 {
        let running = attune_origin::server::start(cfg.clone()).await.unwrap();
        let url = format!("http://{}", running.addr);
        // The same catalog again after the restart: new versions of the `c:` shards, same
        // content, so no write.
        put_catalog(&url).await;
        sent += feed_steady(&url, rate, 3, users, &format!("r{run}")).await;
        let status: serde_json::Value = reqwest::get(format!("{url}/v1/status"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            status["kv_writes_per_day_by_class"]["profile"]
                .as_u64()
                .is_some_and(|n| n > 0),
            "{status}"
        );
        let node = running.node.clone();
        running.shutdown().await.unwrap();
        let cf = cf.lock().unwrap();
        assert_eq!(
            cf.too_many, 0,
            "{rate}/s: the origin went over the API budget"
        );
        assert!(cf.violations.is_empty(), "{rate}/s: {:?}", cf.violations);
        assert_latest(&cf, &node);
        assert!(cf.rejected > 0, "the stand-in listed unsuccessful keys");
        let status = node.status_json(0);
        assert_eq!(status["unpublished"], 0, "{status}");
        assert_eq!(status["outbox"], 0, "{status}");
        for k in ["t", "cfg", "m"] {
            assert!(cf.applied.contains_key(k), "{k} missing");
        }
        drop(cf);
        // What `inspect status` reads after a drained shutdown: nothing waits.
        drop(node);
        let reopened = attune_origin::node::Node::open(&cfg).unwrap();
        let status = reopened.status_json(0);
        assert_eq!(status["unpublished"], 0, "reopened: {status}");
        assert_eq!(status["outbox"], 0, "reopened: {status}");
    }
    let cf = cf.lock().unwrap();
    let last_shared = cf
        .writes
        .iter()
        .rev()
        .find(|(k, _)| !k.starts_with("p:"))
        .map(|(k, _)| k.as_str());
    assert_eq!(last_shared, Some("m"), "manifest last");
    let catalog_writes: BTreeMap<&str, usize> = cf
        .writes
        .iter()
        .filter(|(k, _)| k.starts_with("c:"))
        .fold(BTreeMap::new(), |mut m, (k, _)| {
            *m.entry(k.as_str()).or_default() += 1;
            m
        });
    assert!(!catalog_writes.is_empty());
    assert!(
        catalog_writes.values().all(|n| *n == 1),
        "unchanged catalog shards written again: {catalog_writes:?}"
    );
    eprintln!(
        "{rate} events/s: {sent} events, {} requests, {} key writes",
        cf.requests,
        cf.writes.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stays_under_the_api_budget_at_10_events_per_second() {
    steady_rate(10, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stays_under_the_api_budget_at_100_events_per_second() {
    steady_rate(100, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stays_under_the_api_budget_at_1000_events_per_second() {
    steady_rate(1000, 500).await;
}

/// A shared key (`t`, `n:`, `c:`, `cfg`).
fn is_shared(key: &str) -> bool {
    key == "t" || key == "cfg" || key.starts_with("n:") || key.starts_with("c:")
}

/// Shared keys on their cadence, under a steady event rate for a few `shared_interval_ms`.
/// The rule (publish/flush.rs): a flush collects the shared keys already in KV only once
/// `shared_due` has passed, and then sets it an interval after the flush's start; a key not
/// yet in KV goes out with the next flush whatever the cadence (its first publication). So
/// after its first write, each shared key is written at most once per interval: consecutive
/// writes of a key are an interval apart, less the time a flush spends before its shared
/// keys (the tolerance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_keys_are_written_at_most_once_per_shared_interval() {
    let cf = Cf::new(1_000, Duration::from_secs(5));
    let cf_addr = start_cf(cf.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cf_config(&dir.path().join("d"), cf_addr);
    cfg.publish.budget_requests = 1_000;
    cfg.publish.budget_burst = 100;
    // Longer than the per-key limit (1 s) plus a flush interval (0.5 s): keys written on every
    // flush they may be would come 1.5 s apart, and must fail this.
    cfg.publish.shared_interval_ms = Some(2_500);
    let interval = Duration::from_millis(2_500);
    let tolerance = Duration::from_millis(200);
    let running = attune_origin::server::start(cfg).await.unwrap();
    let url = format!("http://{}", running.addr);
    put_catalog(&url).await;
    // About 3 intervals of steady load: `t` and the `n:` shards change all along.
    feed_steady(&url, 100, 8, 50, "s").await;
    // The final flush at shutdown writes what changed whatever the cadence: not counted.
    let stopping = Instant::now();
    running.shutdown().await.unwrap();

    let cf = cf.lock().unwrap();
    assert!(cf.violations.is_empty(), "{:?}", cf.violations);
    let mut writes: BTreeMap<&str, Vec<Instant>> = BTreeMap::new();
    for (key, at) in &cf.writes {
        if *at < stopping && is_shared(key) {
            writes.entry(key.as_str()).or_default().push(*at);
        }
    }
    let start = cf.writes.first().map(|(_, at)| *at).unwrap();
    let ms = |at: &Instant| at.duration_since(start).as_millis();
    for (key, times) in &writes {
        eprintln!("{key}: {:?} ms", times.iter().map(ms).collect::<Vec<_>>());
    }
    // Not vacuous: `t` changes with every event, so it is rewritten on each interval.
    let t = writes.get("t").map(Vec::len).unwrap_or(0);
    assert!(t >= 3, "`t` written {t} times in ~8 s: {writes:?}");
    assert!(
        writes.keys().any(|k| k.starts_with("n:")),
        "no neighbour shard written"
    );
    for (key, times) in &writes {
        // After the first publication: consecutive writes at least an interval apart.
        for pair in times[1..].windows(2) {
            let gap = pair[1].duration_since(pair[0]);
            assert!(
                gap + tolerance >= interval,
                "{key} written twice {gap:?} apart (shared interval {interval:?}): {:?} ms",
                times.iter().map(ms).collect::<Vec<_>>()
            );
        }
        // And at most once per interval window overall, plus that first publication.
        let span = stopping.duration_since(start).as_secs_f64();
        let most = 2 + (span / interval.as_secs_f64()) as usize;
        assert!(
            times.len() <= most,
            "{key}: {} writes in {span:.1} s",
            times.len()
        );
    }
}

/// With a budget far above the account's limit, the `Ratelimit` headers alone keep the
/// publisher from a 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_headers_slow_it_down_before_a_429() {
    let cf = Cf::new(6, Duration::from_secs(3));
    let cf_addr = start_cf(cf.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cf_config(&dir.path().join("d"), cf_addr);
    cfg.publish.budget_requests = 1_000;
    cfg.publish.budget_burst = 100;
    cfg.publish.flush_interval_ms = 100;
    cfg.publish.shared_interval_ms = Some(300);
    let running = attune_origin::server::start(cfg).await.unwrap();
    let url = format!("http://{}", running.addr);
    put_catalog(&url).await;
    feed_steady(&url, 100, 4, 50, "h").await;
    let node = running.node.clone();
    running.shutdown().await.unwrap();
    let cf = cf.lock().unwrap();
    assert_eq!(cf.too_many, 0, "a 429 despite the headers");
    assert!(cf.violations.is_empty(), "{:?}", cf.violations);
    assert_latest(&cf, &node);
}

/// A refused token (403): `/readyz` says not ready and why, retries back off, and readiness
/// comes back once the API accepts the token again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_makes_the_node_not_ready() {
    refused_token(StatusCode::FORBIDDEN).await;
}

/// An unauthenticated token (401): the same as a 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_token_makes_the_node_not_ready() {
    refused_token(StatusCode::UNAUTHORIZED).await;
}

async fn refused_token(status: StatusCode) {
    let cf = Cf::new(1_000, Duration::from_secs(5));
    cf.lock().unwrap().refuse_auth = Some(status);
    let cf_addr = start_cf(cf.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cf_config(&dir.path().join("d"), cf_addr);
    cfg.publish.budget_requests = 1_000;
    cfg.publish.budget_burst = 100;
    cfg.publish.backoff_max_ms = 1_000;
    let running = attune_origin::server::start(cfg).await.unwrap();
    let url = format!("http://{}", running.addr);
    let http = reqwest::Client::new();
    put_catalog(&url).await;
    feed_steady(&url, 10, 1, 5, "a").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http.get(format!("{url}/readyz")).send().await.unwrap();
        if r.status() == 503 {
            let body = r.text().await.unwrap();
            assert!(body.contains("publisher"), "{status}: {body}");
            break;
        }
        assert!(Instant::now() < deadline, "{status}: /readyz stayed ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refused = cf.lock().unwrap().refused;
    // Backing off to 1 s between attempts: a handful in ~3 s, not one per flush.
    assert!(refused > 0, "{status}: the stand-in refused nothing");
    assert!(refused <= 8, "{status}: {refused} refused requests");
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("attune_publish_failures_total{reason=\"auth\"}"),
        "{status}: {metrics}"
    );
    // The outage shows: the waiting publishes are counted while nothing gets through.
    let waiting = metrics
        .lines()
        .find_map(|l| l.strip_prefix("attune_waiting_user_publishes "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert_eq!(waiting, Some(5), "{status}: {metrics}");
    cf.lock().unwrap().refuse_auth = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http.get(format!("{url}/readyz")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{status}: /readyz never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.shutdown().await.unwrap();
}

/// `serve` refuses a Cloudflare target without a token or with the built-in profile key,
/// unless told it is a dev set-up.
#[tokio::test]
async fn a_cloudflare_target_needs_a_token_and_a_real_profile_key() {
    let dir = tempfile::tempdir().unwrap();
    let addr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut cfg = cf_config(&dir.path().join("d"), addr);
    cfg.publish.token = None;
    let e = attune_origin::server::start(cfg.clone()).await.unwrap_err();
    assert!(e.to_string().contains("token"), "{e}");
    cfg.publish.token = Some("cf-token".into());
    cfg.profile_key = attune_origin::config::DEV_PROFILE_KEY.into();
    let e = attune_origin::server::start(cfg.clone()).await.unwrap_err();
    assert!(e.to_string().contains("profile key"), "{e}");
    cfg.publish.allow_dev_secrets = true;
    let running = attune_origin::server::start(cfg).await.unwrap();
    running.shutdown().await.unwrap();
}

/// Requests as the KV API saw them: (time, `delete` or `put`, keys in body order).
type Seen = Arc<Mutex<Vec<(Instant, &'static str, Vec<String>)>>>;

async fn seen_put(State(s): State<Seen>, body: Bytes) -> Response {
    let items: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
    let keys = items
        .iter()
        .map(|i| i["key"].as_str().unwrap().to_string())
        .collect();
    s.lock().unwrap().push((Instant::now(), "put", keys));
    ok(items.len())
}

async fn seen_delete(State(s): State<Seen>, body: Bytes) -> Response {
    let keys: Vec<String> = serde_json::from_slice(&body).unwrap();
    let n = keys.len();
    s.lock().unwrap().push((Instant::now(), "delete", keys));
    ok(n)
}

/// Within one flush the requests go in priority order: deletes (privacy), then profiles, then
/// shared keys, then the manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_sends_deletes_then_profiles_then_shared_keys_then_the_manifest() {
    let seen: Seen = Arc::default();
    let base = "/client/v4/accounts/acc/storage/kv/namespaces/ns";
    let app = Router::new()
        .route(&format!("{base}/bulk"), put(seen_put))
        .route(&format!("{base}/bulk/delete"), post(seen_delete))
        .with_state(seen.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cf_config(&dir.path().join("d"), addr);
    cfg.publish.budget_requests = 1_000;
    cfg.publish.budget_burst = 100;
    cfg.publish.flush_interval_ms = 1_500;
    cfg.publish.shared_interval_ms = Some(0);
    let running = attune_origin::server::start(cfg).await.unwrap();
    let url = format!("http://{}", running.addr);
    let http = reqwest::Client::new();
    put_catalog(&url).await;
    feed_steady(&url, 10, 1, 5, "a").await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    // One flush then carries a forget, profile changes and shared-key changes.
    let r = http
        .delete(format!("{url}/v1/users/user1"))
        .bearer_auth("itok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    feed_steady(&url, 10, 1, 5, "b").await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    running.shutdown().await.unwrap();

    let seen = seen.lock().unwrap();
    // Flushes are 1.5 s apart; a flush's requests follow each other within milliseconds.
    let mut flushes: Vec<Vec<(&'static str, Vec<String>)>> = Vec::new();
    let mut last: Option<Instant> = None;
    for (at, kind, keys) in seen.iter() {
        if last.is_none_or(|l| at.duration_since(l) > Duration::from_millis(700)) {
            flushes.push(Vec::new());
        }
        last = Some(*at);
        flushes.last_mut().unwrap().push((*kind, keys.clone()));
    }
    let mut with_delete = 0;
    for f in &flushes {
        let order: Vec<u8> = f
            .iter()
            .flat_map(|(kind, keys)| {
                keys.iter().map(move |k| match (*kind, k.as_str()) {
                    ("delete", _) => 0,
                    (_, k) if k.starts_with("p:") => 1,
                    (_, "m") => 3,
                    _ => 2,
                })
            })
            .collect();
        assert!(order.is_sorted(), "out of priority order: {f:?}");
        if order.first() == Some(&0) && order.len() > 1 {
            with_delete += 1;
        }
    }
    assert!(
        with_delete > 0,
        "no flush carried a delete with other keys: {flushes:?}"
    );
}
