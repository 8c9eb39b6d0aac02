//! A full disk, simulated with a file-size limit (`ulimit -f`, with `SIGXFSZ` ignored so a write
//! past the limit fails with `EFBIG` as on a full disk): ingest answers 503 with `Retry-After`
//! once the log or the store cannot grow, nothing acknowledged is lost, and a restart with
//! room applies every acknowledged event.
#![cfg(unix)]

use std::process::Command;
use std::time::{Duration, Instant};

mod support;

use attune_harness::Service;
use support::{BIN, serve};

fn start(
    data: &std::path::Path,
    config: &std::path::Path,
    limit_blocks: Option<u64>,
) -> (Service, String) {
    let mut cmd = Command::new("sh");
    let ulimit = limit_blocks.map_or(String::new(), |b| format!("ulimit -f {b}; "));
    cmd.arg("-c")
        .arg(format!("trap '' XFSZ; {ulimit}exec \"$0\" \"$@\""))
        .arg(BIN)
        .arg("--data-dir")
        .arg(data)
        .arg("--config")
        .arg(config)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--profile-key",
            "pk",
            "--ingest-token",
            "t",
            "serve",
        ])
        .env("ATTUNE_LOG", "warn")
        .env_remove("ATTUNE_KV_URL");
    serve(cmd)
}

#[test]
fn a_full_disk_answers_503_with_retry_after_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let config = dir.path().join("origin.toml");
    std::fs::write(&config, "failure_exit_delay_ms = 1000\n").unwrap();
    // 4096 blocks: 2 MiB (512-byte blocks, POSIX sh) or 4 MiB (bash); either is past a fresh
    // store and reached by the log within the loop below.
    let (mut origin, url) = start(&data, &config, Some(4096));
    let http = reqwest::blocking::Client::new();
    let t0 = attune_origin::now_ms() - 3_600_000;
    let (mut sent, mut acked, mut refused) = (0u64, 0u64, None);
    'posting: for batch in 0..200u64 {
        let body: String = (0..2000u64)
            .map(|i| {
                let n = batch * 2000 + i;
                format!(
                    r#"{{"v":1,"event_id":"f{n}","user":"u{}","ts":{},"kind":"view","item":"i{}"}}"#,
                    n % 5000,
                    t0 + n,
                    n % 97
                ) + "\n"
            })
            .collect();
        sent += 2000;
        for _ in 0..50 {
            let Ok(r) = http
                .post(format!("{url}/v1/events"))
                .bearer_auth("t")
                .body(body.clone())
                .send()
            else {
                break 'posting; // the service exited (a stopped pipeline)
            };
            match r.status().as_u16() {
                202 => {
                    acked += 2000;
                    continue 'posting;
                }
                429 => std::thread::sleep(Duration::from_millis(50)),
                503 => {
                    let retry = r.headers().get("retry-after").cloned();
                    refused = Some((retry, r.text().unwrap_or_default()));
                    break 'posting;
                }
                s => panic!("unexpected {s}: {}", r.text().unwrap_or_default()),
            }
        }
    }
    let (retry, why) = refused.expect("the disk never filled");
    assert!(retry.is_some(), "503 without Retry-After: {why}");
    println!("sent {sent}, acknowledged {acked}; refused with: {why}");
    // The process either exits on its own (the store could not grow: a stopped pipeline) or
    // keeps refusing; either way it is stopped here and restarted with room.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut exited = None;
    while Instant::now() < deadline {
        if let Some(status) = origin.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("exited on its own: {exited:?}");
    if let Some(status) = exited {
        assert!(!status.success(), "a stopped pipeline exits non-zero");
    }
    let _ = origin.kill();

    let (_origin, url) = start(&data, &config, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s: serde_json::Value = http
            .get(format!("{url}/v1/status"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if s["applied_offset"] == s["log_end"] && s["checkpointed_offset"] == s["log_end"] {
            break s;
        }
        assert!(Instant::now() < deadline, "never caught up: {s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let received = status["received"].as_u64().unwrap();
    println!("after the restart: {status}");
    // Every acknowledged event is in the log and applied (an unacknowledged append may have
    // reached the disk too, whole).
    assert!(
        received >= acked,
        "acknowledged {acked}, applied {received}"
    );
    assert_eq!(
        received % 2000,
        0,
        "a request is all or nothing: {received}"
    );
    assert_eq!(status["dlq"], 0);
    assert_eq!(status["applied"].as_u64(), Some(received));
}
