//! The service's edges under faults and hostile input: fail-closed authentication, request
//! bodies in every framing a client sends, bounded metric labels, and supervision (a stopped
//! pipeline makes health fail and ingest answer 503). `RELIABILITY.md` ("Service edges")
//! lists each case with its counts.

use std::time::{Duration, Instant};

use attune_origin::config::Config;
use attune_origin::server::Running;

const TOKEN: &str = "edge-token";

fn config(dir: &std::path::Path) -> Config {
    Config {
        data_dir: dir.join("d"),
        listen: "127.0.0.1:0".into(),
        ingest_token: Some(TOKEN.into()),
        ..Config::default()
    }
}

async fn serve(cfg: Config) -> (Running, String) {
    let running = attune_origin::server::start(cfg).await.unwrap();
    let url = format!("http://{}", running.addr);
    (running, url)
}

fn event(id: &str) -> String {
    let ts = attune_origin::now_ms() - 1000;
    format!(r#"{{"v":1,"event_id":"{id}","user":"u-{id}","ts":{ts},"kind":"view","item":"i1"}}"#)
}

/// Waits until `/v1/status` shows `want` events received (applied + duplicates + DLQ).
async fn status_when(url: &str, want: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s: serde_json::Value = reqwest::get(format!("{url}/v1/status"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s["received"].as_u64() == Some(want) || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_to_run_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.ingest_token = Some(String::new());
    let err = attune_origin::server::start(cfg.clone()).await.unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    cfg.ingest_token = None;
    let err = attune_origin::server::start(cfg.clone()).await.unwrap_err();
    assert!(err.to_string().contains("needs an ingest token"), "{err}");
    cfg.insecure_dev_no_token = true;
    cfg.listen = "0.0.0.0:0".into();
    let err = attune_origin::server::start(cfg.clone()).await.unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
    // Nothing was created by a refused start.
    assert!(!cfg.data_dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_need_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (running, url) = serve(config(dir.path())).await;
    let http = reqwest::Client::new();
    let routes = [
        (reqwest::Method::POST, "/v1/events"),
        (reqwest::Method::PUT, "/v1/catalog"),
        (reqwest::Method::GET, "/v1/users/someone"),
        (reqwest::Method::DELETE, "/v1/users/someone"),
        (reqwest::Method::GET, "/v1/dlq"),
        (reqwest::Method::POST, "/v1/publish/full"),
    ];
    for (method, path) in &routes {
        for auth in [None, Some(""), Some("edge-tokem"), Some("edge-token-")] {
            let mut req = http
                .request(method.clone(), format!("{url}{path}"))
                .body("[]");
            if let Some(a) = auth {
                req = req.header("authorization", format!("Bearer {a}"));
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {auth:?}");
        }
    }
    let r = http
        .get(format!("{url}/v1/dlq"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Counters stay open (no user data in them).
    for path in ["/v1/status", "/metrics", "/healthz", "/readyz"] {
        let r = http.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    running.shutdown().await.unwrap();
}
