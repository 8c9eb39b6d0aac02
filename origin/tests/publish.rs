//! Ingest → store → publish to a real local HTTP server shaped like the Cloudflare KV bulk API,
//! which checks every request and injects 429, 5xx and timeouts. Everything ends published
//! exactly once per version, never an older version over a newer one, the manifest last.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use base64::Engine;

mod kv_stand_in;
use kv_stand_in::{cloudflare_config, event, ok};

#[derive(Default)]
struct Kv {
    requests: u64,
    faults: u64,
    /// key → versions applied, in order.
    applied: BTreeMap<String, Vec<u64>>,
    order: Vec<String>,
    violations: Vec<String>,
}

type S = Arc<Mutex<Kv>>;

#[allow(clippy::result_large_err)]
fn check_headers(h: &HeaderMap) -> Result<(), Response> {
    if h.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer cf-token") {
        return Err((StatusCode::UNAUTHORIZED, "bad auth").into_response());
    }
    if !h
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
    {
        return Err((StatusCode::BAD_REQUEST, "content-type").into_response());
    }
    Ok(())
}

async fn bulk(State(s): State<S>, h: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = check_headers(&h) {
        s.lock().unwrap().violations.push("headers".into());
        return r;
    }
    let n = {
        let mut kv = s.lock().unwrap();
        kv.requests += 1;
        kv.requests
    };
    // Faults: the 2nd request gets 429, the 4th a 503, the 6th times out.
    match n {
        2 => {
            s.lock().unwrap().faults += 1;
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                "slow down",
            )
                .into_response();
        }
        4 => {
            s.lock().unwrap().faults += 1;
            return (StatusCode::SERVICE_UNAVAILABLE, "oops").into_response();
        }
        6 => {
            s.lock().unwrap().faults += 1;
            tokio::time::sleep(Duration::from_secs(3)).await;
            return (StatusCode::GATEWAY_TIMEOUT, "late").into_response();
        }
        _ => {}
    }
    let items: Vec<serde_json::Value> = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return (StatusCode::BAD_REQUEST, "json").into_response(),
    };
    let mut kv = s.lock().unwrap();
    if items.is_empty() || items.len() > 10_000 || body.len() > 100_000_000 {
        kv.violations.push(format!("bad bulk size {}", items.len()));
    }
    for it in &items {
        let key = it["key"].as_str().unwrap_or_default().to_string();
        let b64 = it["value"].as_str().unwrap_or_default();
        if it["base64"] != serde_json::json!(true)
            || base64::engine::general_purpose::STANDARD
                .decode(b64)
                .is_err()
        {
            kv.violations.push(format!("{key}: value not base64"));
        }
        let Some(v) = it["metadata"]["v"].as_u64() else {
            kv.violations.push(format!("{key}: no metadata.v"));
            continue;
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default();
        if key.starts_with("p:") {
            match attune_core::wire::decode::<attune_core::Profile>(&bytes) {
                Ok(env) if env.version == v => {}
                _ => kv
                    .violations
                    .push(format!("{key}: envelope/version mismatch")),
            }
        }
        let last = kv.applied.get(&key).and_then(|l| l.last().copied());
        if key != "m" && last.is_some_and(|last| last >= v) {
            kv.violations
                .push(format!("{key}: version {v} after {last:?}"));
        }
        kv.applied.entry(key.clone()).or_default().push(v);
        kv.order.push(key);
    }
    ok(items.len())
}

async fn bulk_delete(State(s): State<S>, h: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = check_headers(&h) {
        return r;
    }
    let keys: Vec<String> = serde_json::from_slice(&body).unwrap_or_default();
    let mut kv = s.lock().unwrap();
    for k in &keys {
        kv.applied.remove(k);
        kv.order.push(format!("delete {k}"));
    }
    ok(keys.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_exactly_once_per_version_through_faults() {
    let started = Instant::now();
    let kv: S = Arc::default();
    let base = "/client/v4/accounts/acc/storage/kv/namespaces/ns";
    let app = Router::new()
        .route(&format!("{base}/bulk"), put(bulk))
        .route(&format!("{base}/bulk/delete"), post(bulk_delete))
        .with_state(kv.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let kv_addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cloudflare_config(&dir.path().join("d"), kv_addr);
    cfg.publish.request_timeout_ms = 500;
    cfg.publish.flush_interval_ms = 50;
    cfg.publish.max_pairs = 7; // force several bulk requests
    cfg.publish.shared_interval_ms = Some(300);
    let running = attune_origin::server::start(cfg.clone()).await.unwrap();
    let url = format!("http://{}", running.addr);
    let http = reqwest::Client::new();

    // Unauthenticated ingest is refused.
    let r = http
        .post(format!("{url}/v1/events"))
        .body(event("x", "u", "i", "view"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let catalog = serde_json::json!([
        {"id":"i1","title":"One","url":"/p/i1.html","image":"/img/a.svg","price":"£1.00","category":"Mugs"},
        {"id":"i2","title":"Two","url":"/p/i2.html","image":"/img/a.svg","price":"£2.00","category":"Bags"}
    ]);
    let r = http
        .put(format!("{url}/v1/catalog"))
        .bearer_auth("itok")
        .json(&catalog)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    for round in 0..4 {
        let body: String = (0..20)
            .map(|u| {
                event(
                    &format!("r{round}u{u}"),
                    &format!("user{u}"),
                    if u % 2 == 0 { "i1" } else { "i2" },
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
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    // Forget one user: store and KV.
    let r = http
        .delete(format!("{url}/v1/users/user3"))
        .bearer_auth("itok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Wait for the outbox to drain.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s: serde_json::Value = http
            .get(format!("{url}/v1/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s["outbox"] == 0 && s["applied"] == 80 {
            break;
        }
        assert!(Instant::now() < deadline, "outbox never drained: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let node = running.node.clone();
    running.shutdown().await.unwrap();

    let kv = kv.lock().unwrap();
    assert!(kv.violations.is_empty(), "{:?}", kv.violations);
    assert_eq!(kv.faults, 3, "429, 503 and a timeout were injected");
    // Every stored profile is in KV at its version; each version was written once.
    for (user, profile) in node.store.profiles().unwrap() {
        let key = attune_core::hash::profile_key(b"pk", &user);
        let versions = &kv.applied[&key];
        assert_eq!(*versions.last().unwrap(), profile.version, "{user}");
        let mut dedup = versions.clone();
        dedup.dedup();
        assert_eq!(&dedup, versions, "{user}: a version written twice");
    }
    let forgotten = attune_core::hash::profile_key(b"pk", "user3");
    assert!(
        !kv.applied.contains_key(&forgotten),
        "forgotten user still in KV"
    );
    assert!(node.store.user("user3").unwrap().is_none());
    for k in ["t", "cfg", "m"] {
        assert!(kv.applied.contains_key(k), "{k} missing");
    }
    assert_eq!(
        kv.order
            .iter()
            .rev()
            .find(|k| !k.starts_with("p:") && !k.starts_with("delete"))
            .map(String::as_str),
        Some("m"),
        "manifest last"
    );
    eprintln!("publish test took {:?}", started.elapsed());
}
