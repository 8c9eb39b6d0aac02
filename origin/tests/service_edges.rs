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

async fn post(
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{url}/v1/events"))
        .bearer_auth(TOKEN)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Request headers, body, and the number of events it holds.
type Case = (Vec<(&'static str, &'static str)>, Vec<u8>, u64);

/// Each framing a client sends gives exactly its events: counted as received, none of them
/// dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_in_every_framing_give_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let (running, url) = serve(config(dir.path())).await;
    const JSON: (&str, &str) = ("content-type", "application/json");
    const NDJSON: (&str, &str) = ("content-type", "application/x-ndjson");
    let pretty = |id: &str| {
        let v: serde_json::Value = serde_json::from_str(&event(id)).unwrap();
        serde_json::to_string_pretty(&v).unwrap()
    };
    let array = |ids: &[&str]| {
        format!(
            "[{}]",
            ids.iter().map(|i| event(i)).collect::<Vec<_>>().join(",")
        )
    };
    let lines = |ids: &[&str]| ids.iter().map(|i| event(i) + "\n").collect::<String>();
    // (headers, body, events it holds)
    let cases: Vec<Case> = vec![
        (vec![JSON], array(&["a1", "a2", "a3"]).into_bytes(), 3),
        (vec![JSON], pretty("p1").into_bytes(), 1),
        (vec![], pretty("p2").into_bytes(), 1),
        (vec![NDJSON], lines(&["n1", "n2"]).into_bytes(), 2),
        (vec![], lines(&["s1", "s2"]).into_bytes(), 2),
        (
            vec![JSON],
            format!("\u{feff}{}", array(&["b1", "b2"])).into_bytes(),
            2,
        ),
        (
            vec![NDJSON],
            format!("\u{feff}{}", lines(&["b3"])).into_bytes(),
            1,
        ),
        (
            vec![("content-encoding", "gzip"), NDJSON],
            gzip(lines(&["g1", "g2", "g3"]).as_bytes()),
            3,
        ),
        (
            vec![("content-encoding", "gzip")],
            gzip(array(&["g4", "g5"]).as_bytes()),
            2,
        ),
    ];
    let mut sent = 0;
    for (headers, body, n) in cases {
        let r = post(&url, &headers, body).await;
        assert_eq!(r.status(), 202, "{headers:?}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["accepted"], n, "{headers:?}");
        sent += n;
    }
    let s = status_when(&url, sent).await;
    assert_eq!(s["received"], sent, "{s}");
    assert_eq!(s["applied"], sent, "{s}");
    assert_eq!(s["dlq"], 0, "{s}");

    // Refused as a whole, with nothing appended: an unknown encoding, gzip that is not gzip,
    // gzip that inflates past the body limit, and a JSON body that is not JSON.
    let r = post(&url, &[("content-encoding", "br")], lines(&["x"])).await;
    assert_eq!(r.status(), 415);
    let r = post(&url, &[("content-encoding", "gzip")], lines(&["x"])).await;
    assert_eq!(r.status(), 400);
    let bomb = gzip(&vec![b' '; 2 * 1024 * 1024]);
    assert!(bomb.len() < 64 * 1024);
    let r = post(&url, &[("content-encoding", "gzip")], bomb).await;
    assert_eq!(r.status(), 413);
    let r = post(&url, &[JSON], lines(&["x", "y"])).await;
    assert_eq!(r.status(), 400);
    let s = status_when(&url, sent).await;
    assert_eq!(s["received"].as_u64(), Some(sent), "{s}");
    assert_eq!(s["log_end"], s["applied_offset"], "nothing appended: {s}");
    running.shutdown().await.unwrap();
}

/// Exposure labels come from the published rules only: 3,000 impressions with distinct
/// experiment values add one `unknown` series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposure_labels_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.rules = serde_json::from_value(serde_json::json!({
        "experiments": [{"id": "hero-test", "slot": "hero", "traffic_bp": 10000,
            "control": "a", "arms": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}]
    }))
    .unwrap();
    let (running, url) = serve(cfg).await;
    let ts = attune_origin::now_ms() - 1000;
    let impression = |i: usize, exp: &str, arm: &str| {
        format!(
            r#"{{"v":1,"event_id":"imp{i}","user":"v{i}","ts":{ts},"kind":"impression","item":"i1","props":{{"experiment":"{exp}","arm":"{arm}"}}}}"#
        ) + "\n"
    };
    let before = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut body = String::new();
    for i in 0..3000 {
        body += &impression(i, &format!("exp-{i}"), "a");
    }
    for i in 3000..3010 {
        body += &impression(i, "hero-test", if i % 2 == 0 { "a" } else { "b" });
    }
    let r = post(&url, &[], body).await;
    assert_eq!(r.status(), 202);
    let s = status_when(&url, 3010).await;
    assert_eq!(s["applied"], 3010, "{s}");
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("attune_exposures_total{"))
        .collect();
    assert_eq!(series.len(), 3, "{series:?}");
    assert!(
        text.contains(r#"experiment="unknown",arm="unknown"} 3000"#),
        "{series:?}"
    );
    assert!(
        text.contains(r#"experiment="hero-test",arm="a"} 5"#),
        "{series:?}"
    );
    assert!(
        text.len() < before.len() + 2048,
        "{} → {} bytes",
        before.len(),
        text.len()
    );
    println!("/metrics: {} → {} bytes", before.len(), text.len());
    // The log's size is there too (one segment: 3,010 events are far from 64 MiB).
    assert!(text.contains("\nattune_log_segments 1\n"), "{text}");
    let log_bytes = text
        .lines()
        .find_map(|l| l.strip_prefix("attune_log_bytes "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(log_bytes.is_some_and(|b| b > 3010 * 50), "{log_bytes:?}");
    running.shutdown().await.unwrap();
}

/// A pipeline that stops on a store error: health and readiness answer 503 with the reason,
/// ingest answers 503 + `Retry-After` (nothing acknowledged that would not be applied), and the
/// service then stops with the error (the binary exits non-zero); a restart replays the log
/// from the checkpoint and applies everything acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_pipeline_fails_health_refuses_events_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.failure_exit_delay_ms = 3_000;
    let faults = attune_origin::server::Faults::default();
    let running = attune_origin::server::start_with_faults(cfg.clone(), faults.clone())
        .await
        .unwrap();
    let url = format!("http://{}", running.addr);
    let body: String = (0..50)
        .map(|i| event(&format!("before{i}")) + "\n")
        .collect();
    assert_eq!(post(&url, &[], body).await.status(), 202);
    status_when(&url, 50).await;

    faults
        .fail_pipeline
        .store(true, std::sync::atomic::Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(10);
    let readyz = loop {
        let r = reqwest::get(format!("{url}/readyz")).await.unwrap();
        if r.status() == 503 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(readyz.status(), 503);
    let v: serde_json::Value = readyz.json().await.unwrap();
    let reason = v["failing"]["pipeline"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("no space left"), "{v}");
    let healthz = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(healthz.status(), 503);
    let r = post(&url, &[], event("after") + "\n").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["failing"]["pipeline"].is_string(), "{v}");

    let stopped = tokio::time::timeout(Duration::from_secs(30), running.wait())
        .await
        .expect("the service stops on its own");
    let err = stopped.unwrap_err();
    assert!(err.to_string().contains("no space left"), "{err}");

    // The supervisor's restart: everything acknowledged is applied, nothing twice.
    let (running, url) = serve(cfg).await;
    let s = status_when(&url, 50).await;
    assert_eq!(
        (s["received"].as_u64(), s["applied"].as_u64()),
        (Some(50), Some(50)),
        "{s}"
    );
    assert_eq!(
        reqwest::get(format!("{url}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );
    running.shutdown().await.unwrap();
}

/// A panic inside the pipeline (redb on a page damaged while running) is a stop like an
/// error: health names it, ingest answers 503, and the service stops with an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_pipeline_is_a_stop_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.failure_exit_delay_ms = 2_000;
    let faults = attune_origin::server::Faults::default();
    let running = attune_origin::server::start_with_faults(cfg, faults.clone())
        .await
        .unwrap();
    let url = format!("http://{}", running.addr);
    faults
        .panic_pipeline
        .store(true, std::sync::atomic::Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(10);
    let healthz = loop {
        let r = reqwest::get(format!("{url}/healthz")).await.unwrap();
        if r.status() == 503 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(healthz.status(), 503);
    let v: serde_json::Value = healthz.json().await.unwrap();
    assert!(
        v["failing"]["pipeline"]
            .as_str()
            .unwrap_or_default()
            .contains("panicked"),
        "{v}"
    );
    let r = post(&url, &[], event("x") + "\n").await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let stopped = tokio::time::timeout(Duration::from_secs(30), running.wait()).await;
    assert!(stopped.expect("stops on its own").is_err());
}
