//! Malformed, duplicate, late, oversize and future events: exact counts in metrics and the
//! DLQ, and `in = applied + duplicates + DLQ`.

use std::time::{Duration, Instant};

use attune_origin::config::Config;

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_counted_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        data_dir: dir.path().join("d"),
        listen: "127.0.0.1:0".into(),
        insecure_dev_no_token: true,
        ..Config::default()
    };
    let running = attune_origin::server::start(cfg).await.unwrap();
    let url = format!("http://{}", running.addr);
    let now = attune_origin::now_ms();
    let ev = |id: &str, ts: u64| {
        format!(r#"{{"v":1,"event_id":"{id}","user":"u{id}","ts":{ts},"kind":"view","item":"i1"}}"#)
    };
    let mut lines = Vec::new();
    for i in 0..10 {
        lines.push(ev(&format!("ok{i}"), now - 1000 + i)); // 10 valid
    }
    lines.push("{not json".into()); // bad_json
    lines.push(r#"{"v":1,"event_id":"k","user":"u","ts":1,"kind":"dance","item":"i"}"#.into()); // unknown_kind
    lines.push(r#"{"v":1,"event_id":"m","ts":1,"kind":"view","item":"i"}"#.into()); // missing user
    lines.push(ev("ok1", now - 999)); // duplicate
    lines.push(ev("ok2", now - 998)); // duplicate
    lines.push(ev("late1", now - 10 * 86_400_000)); // late
    lines.push(ev("late2", now - 3 * 86_400_000)); // late
    lines.push(format!(
        r#"{{"v":1,"event_id":"big","user":"u","ts":{now},"kind":"view","item":"i1","props":{{"x":"{}"}}}}"#,
        "a".repeat(9000)
    )); // too_large
    lines.push(ev("future", now + 3_600_000)); // future_timestamp
    let total = lines.len() as u64;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{url}/v1/events"))
        .body(lines.join("\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let s: serde_json::Value = http
            .get(format!("{url}/v1/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s["received"] == total {
            break s;
        }
        assert!(Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["applied"], 10);
    assert_eq!(status["duplicates"], 2);
    assert_eq!(status["dlq"], 7);
    assert_eq!(status["late"], 2);

    let m = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metric(&m, "attune_events_received_total"), total);
    assert_eq!(metric(&m, "attune_events_applied_total"), 10);
    assert_eq!(metric(&m, "attune_events_duplicate_total"), 2);
    assert_eq!(metric(&m, "attune_events_late_total"), 2);
    assert_eq!(metric(&m, "attune_events_invalid_total"), 7);
    for (reason, n) in [
        ("bad_json", 1),
        ("unknown_kind", 1),
        ("missing_field", 1),
        ("late", 2),
        ("too_large", 1),
        ("future_timestamp", 1),
    ] {
        assert_eq!(
            metric(
                &m,
                &format!("attune_events_invalid_total{{reason=\"{reason}\"}}")
            ),
            n,
            "{reason}"
        );
    }
    let dlq: serde_json::Value = http
        .get(format!("{url}/v1/dlq?limit=100"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dlq["total"], 7);
    let mut reasons: Vec<String> = dlq["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_string())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "bad_json",
            "future_timestamp",
            "late",
            "late",
            "missing_field",
            "too_large",
            "unknown_kind"
        ]
    );
    assert_eq!(total, 10 + 2 + 7, "in = applied + duplicates + DLQ");

    // A body that is not events at all is refused as a whole, nothing logged.
    let r = http
        .post(format!("{url}/v1/events"))
        .body("[1, 2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    running.shutdown().await.unwrap();
}
