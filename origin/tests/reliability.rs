//! The long reliability suite: many SIGKILLs at random points, byte flips at random positions
//! in the log and in the store, a disk that fills at random sizes. Every test is `#[ignore]`d
//! (the fast cases of the same faults run in `cargo test`); `cargo xtask reliability` runs them
//! and prints the table of counts `RELIABILITY.md` quotes. Each case prints one line
//! `RELIABILITY|<fault>|<sent>|<acknowledged>|<applied>|<dead-lettered>|<lost>|<notes>`.
//! Sizes come from the environment (`ATTUNE_RELIABILITY_KILLS`, `…_FLIPS`, `…_FULL_DISKS`) so
//! the command can run a longer suite.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

use attune_harness::Service;
use attune_origin::{Config, Error, Node, Source};
use rand::{Rng, SeedableRng};
use support::{BIN, flip_bit, serve, stop, stored_profiles};

/// Small segments, so kills, flips and full disks land around rolls too.
const SEGMENT_BYTES: u64 = 32 << 10;

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn row(fault: &str, sent: u64, acked: u64, applied: u64, dlq: u64, lost: u64, notes: &str) {
    println!("RELIABILITY|{fault}|{sent}|{acked}|{applied}|{dlq}|{lost}|{notes}");
}

fn write_config(dir: &Path, segment_bytes: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("origin.toml");
    std::fs::write(
        &path,
        format!("failure_exit_delay_ms = 500\n[log]\nsegment_bytes = {segment_bytes}\n"),
    )
    .unwrap();
    path
}

/// Starts `serve` on `data`, under `ulimit -f blocks` when given (with `SIGXFSZ` ignored, so a
/// write past it fails with `EFBIG` as on a full disk).
fn start(data: &Path, config: &Path, limit_blocks: Option<u64>) -> (Service, String) {
    let ulimit = limit_blocks.map_or(String::new(), |b| format!("ulimit -f {b}; "));
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("trap '' XFSZ; {ulimit}exec \"$0\" \"$@\""))
        .arg(BIN)
        .arg("--data-dir")
        .arg(data)
        .arg("--config")
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--profile-key", "pk"])
        .args(["--insecure-dev-no-token", "serve"])
        .env("ATTUNE_LOG", "error")
        .env_remove("ATTUNE_KV_URL");
    serve(cmd)
}

fn event(n: u64, rng: &mut impl Rng, t0: u64) -> String {
    let kind = ["view", "click", "add_to_cart", "purchase"][rng.random_range(0..4)];
    format!(
        r#"{{"v":1,"event_id":"r{n}","user":"u{}","ts":{},"kind":"{kind}","item":"i{}"}}"#,
        rng.random_range(0..300),
        t0 + n * 10,
        rng.random_range(0..80)
    )
}

fn batches(n: u64, per: usize, seed: u64) -> Vec<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let t0 = attune_origin::now_ms() - 3_600_000;
    let all: Vec<String> = (0..n).map(|i| event(i, &mut rng, t0)).collect();
    all.chunks(per).map(|c| c.join("\n")).collect()
}

/// `Some(status)` of a POST of one batch (`None`: no answer, the process is gone).
fn post(http: &reqwest::blocking::Client, url: &str, body: &str) -> Option<u16> {
    http.post(format!("{url}/v1/events"))
        .body(body.to_string())
        .send()
        .ok()
        .map(|r| r.status().as_u16())
}

fn caught_up(http: &reqwest::blocking::Client, url: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = http.get(format!("{url}/v1/status")).send()
            && let Ok(s) = r.json::<serde_json::Value>()
            && s["applied_offset"] == s["log_end"]
            && s["checkpointed_offset"] == s["log_end"]
        {
            return s;
        }
        assert!(Instant::now() < deadline, "the pipeline never caught up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The kill run's requests: 50-event batches where every 40 batches one user `f<k>` has its
/// events and is then forgotten (`Some(k)` after its last batch).
fn kill_run_requests(n: u64) -> Vec<(String, Option<u64>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let t0 = attune_origin::now_ms() - 3_600_000;
    let all: Vec<String> = (0..n).map(|i| event(i, &mut rng, t0)).collect();
    all.chunks(50)
        .enumerate()
        .map(|(b, chunk)| {
            let k = b as u64 / 40;
            let mut chunk = chunk.to_vec();
            let mut first: serde_json::Value = serde_json::from_str(&chunk[0]).unwrap();
            first["user"] = format!("f{k}").into();
            chunk[0] = first.to_string();
            let forget = (b % 40 == 39).then_some(k);
            (chunk.join("\n"), forget)
        })
        .collect()
}

/// Sends one request of the kill run: the batch, then the forget it ends with (`None`: no
/// answer, the process is gone). A forget repeated after a kill forgets nothing more.
fn send(http: &reqwest::blocking::Client, url: &str, req: &(String, Option<u64>)) -> Option<u16> {
    let status = post(http, url, &req.0)?;
    if status != 202 {
        return Some(status);
    }
    if let Some(k) = req.1 {
        let r = http.delete(format!("{url}/v1/users/f{k}")).send().ok()?;
        assert!(r.status().is_success(), "forget: {}", r.status());
    }
    Some(202)
}

/// The log's segment files in `data`: how many, and their bytes.
fn segment_files(data: &Path) -> (u64, u64) {
    let mut n = (0, 0);
    for e in std::fs::read_dir(data.join("log")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "seg") {
            n.0 += 1;
            n.1 += std::fs::metadata(p).unwrap().len();
        }
    }
    n
}

/// Forgotten users (`f<k>`) whose events are still in the log's segment files.
fn forgotten_in_log(data: &Path, forgotten: u64) -> u64 {
    let mut bytes = Vec::new();
    for e in std::fs::read_dir(data.join("log")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "seg") {
            bytes.extend(std::fs::read(p).unwrap());
        }
    }
    (0..forgotten)
        .filter(|k| {
            let marker = format!("\"user\":\"f{k}\"");
            bytes.windows(marker.len()).any(|w| w == marker.as_bytes())
        })
        .count() as u64
}

/// SIGKILL at random points (during ingest, during the replay right after a start, around
/// segment rolls, forgets' erases and retention) in a service with small segments and size
/// retention; every request not answered is sent again, as a client would. The final profiles
/// must equal an uninterrupted run's and no forgotten user's event may be left in the log.
#[test]
#[ignore = "long: cargo xtask reliability"]
fn sigkill_at_random_points() {
    let kills = count("ATTUNE_RELIABILITY_KILLS", 100);
    let n = 20_000u64;
    let requests = kill_run_requests(n);
    let forgotten = requests.iter().filter(|r| r.1.is_some()).count() as u64;
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), SEGMENT_BYTES);
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap()
            + &format!("retention_bytes = {}\n", 8 * SEGMENT_BYTES),
    )
    .unwrap();

    let reference = dir.path().join("reference");
    let (origin, url) = start(&reference, &config, None);
    for r in &requests {
        assert_eq!(send(&http, &url, r), Some(202));
    }
    caught_up(&http, &url);
    stop(origin);
    let expected = stored_profiles(&reference);

    let data = dir.path().join("killed");
    let mut rng = rand::rngs::StdRng::seed_from_u64(4242);
    let (mut next, mut unanswered) = (0usize, 0u64);
    let started = Instant::now();
    for _ in 0..kills {
        let (mut origin, url) = start(&data, &config, None);
        // A third of the kills land within the first milliseconds (the replay, the first
        // appends); the rest anywhere in 300 ms of ingest.
        let after = if rng.random_bool(0.33) {
            Duration::from_millis(rng.random_range(0..10))
        } else {
            Duration::from_millis(rng.random_range(10..300))
        };
        let t = Instant::now();
        let group = origin.group();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(after);
            let _ = group.kill();
        });
        while next < requests.len() && t.elapsed() < after + Duration::from_millis(50) {
            match send(&http, &url, &requests[next]) {
                Some(202) => next += 1,
                Some(429) => std::thread::sleep(Duration::from_millis(5)),
                Some(s) => panic!("unexpected status {s}"),
                None => {
                    unanswered += 1;
                    break;
                }
            }
        }
        killer.join().unwrap();
        let _ = origin.kill();
    }
    let (origin, url) = start(&data, &config, None);
    while next < requests.len() {
        assert_eq!(send(&http, &url, &requests[next]), Some(202));
        next += 1;
    }
    let status = caught_up(&http, &url);
    stop(origin);
    let got = stored_profiles(&data);
    let differ = expected.iter().zip(&got).filter(|(a, b)| a != b).count()
        + expected.len().abs_diff(got.len());
    let left = forgotten_in_log(&data, forgotten) + forgotten_in_log(&reference, forgotten);
    let (segments, bytes) = segment_files(&data);
    let applied = u(&status["applied"]);
    row(
        &format!("{kills} SIGKILLs at random points"),
        n,
        n,
        applied,
        u(&status["dlq"]),
        n.saturating_sub(applied),
        &format!(
            "{unanswered} requests cut by a kill and sent again, {} duplicates dropped, {differ} \
             of {} profiles differ from an uninterrupted run, {forgotten} users forgotten and \
             {left} of them with events left in the log, {segments} segment files of {bytes} \
             bytes left (retention: {} bytes), {:.0} s",
            status["duplicates"],
            expected.len(),
            8 * SEGMENT_BYTES,
            started.elapsed().as_secs_f64()
        ),
    );
    assert_eq!(differ, 0);
    assert_eq!(left, 0);
    assert_eq!(applied, n);
    assert!(bytes <= 9 * SEGMENT_BYTES, "retention kept {bytes} bytes");
}

fn in_process_config(data: &Path) -> Config {
    let mut cfg = Config {
        data_dir: data.to_path_buf(),
        ..Config::default()
    };
    cfg.profile_key = "pk".into();
    cfg.publish.target = attune_origin::config::TargetKind::None;
    cfg.log.segment_bytes = SEGMENT_BYTES;
    cfg
}

/// A data directory with `half` events applied and checkpointed and `half` more acknowledged
/// but not applied (the process "killed" before its pipeline read them).
fn populated(data: &Path, half: u64) {
    let node = Node::open(&in_process_config(data)).unwrap();
    let bodies = batches(2 * half, 100, 5);
    let now = attune_origin::now_ms();
    for (i, b) in bodies.iter().enumerate() {
        let payloads = b.lines().map(|l| l.as_bytes().to_vec()).collect();
        node.log.append_blocking(now, "t", payloads).unwrap();
        if (i + 1) * 100 == half as usize {
            node.drain().unwrap();
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Reads every record of the log from its start (what a rebuild does).
fn read_whole_log(node: &Node) -> attune_origin::Result<u64> {
    let mut r = node.log.reader()?;
    let (mut pos, mut n) = (r.start(), 0u64);
    let mut out = Vec::new();
    while pos < r.end() {
        out.clear();
        r.read(pos, 10_000, Duration::ZERO, &mut out)?;
        pos = out.last().map_or(pos, |rec| rec.next);
        n += out.len() as u64;
    }
    Ok(n)
}

/// One bit flipped at a random position of a random log segment (header or record, before or
/// after the checkpoint), then the node opened and drained; when it refuses, `salvage` and
/// again. Counts what was applied, and whether the whole log still reads (a rebuild's path).
#[test]
#[ignore = "long: cargo xtask reliability"]
fn byte_flips_in_the_log() {
    let trials = count("ATTUNE_RELIABILITY_FLIPS", 100);
    let half = 2_000u64;
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine");
    populated(&pristine, half);
    let segments: Vec<(PathBuf, u64)> = {
        let mut s: Vec<_> = std::fs::read_dir(pristine.join("log"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .map(|p| {
                let len = std::fs::metadata(&p).unwrap().len();
                (p, len)
            })
            .collect();
        s.sort();
        s
    };
    let total: u64 = segments.iter().map(|s| s.1).sum();
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let (mut refused, mut salvaged, mut found_by_read, mut unnoticed) = (0, 0, 0, 0);
    let (mut applied, mut dlq, mut lost, mut other) = (0u64, 0u64, 0u64, Vec::new());
    for trial in 0..trials {
        let data = dir.path().join(format!("t{trial}"));
        copy_dir(&pristine, &data);
        let mut at = rng.random_range(0..total);
        let (seg, _) = segments
            .iter()
            .find(|(_, len)| {
                let here = at < *len;
                if !here {
                    at -= len;
                }
                here
            })
            .unwrap();
        let seg = data.join("log").join(seg.file_name().unwrap());
        flip_bit(&seg, at, rng.random_range(0..8));
        let cfg = in_process_config(&data);
        let node = match Node::open(&cfg) {
            Ok(node) => node,
            Err(Error::LogDamaged { .. }) => {
                refused += 1;
                let report = attune_origin::salvage(&cfg.log_dir()).unwrap();
                salvaged += u64::from(report.records_kept < 2 * half);
                Node::open(&cfg).unwrap()
            }
            Err(e) => {
                other.push(e.to_string());
                continue;
            }
        };
        node.drain().unwrap();
        let status = node.status_json(node.log.end());
        let a = u(&status["applied"]);
        applied += a;
        dlq += u(&status["dlq"]);
        lost += (2 * half).saturating_sub(a + u(&status["dlq"]));
        // Damage before the checkpoint is not read again by the node; a rebuild reads it.
        match read_whole_log(&node) {
            Err(Error::LogDamaged { .. }) => found_by_read += 1,
            Err(e) => other.push(e.to_string()),
            Ok(_) if a + u(&status["dlq"]) == 2 * half => unnoticed += 1,
            Ok(_) => {}
        }
        drop(node);
        std::fs::remove_dir_all(&data).unwrap();
    }
    let n = trials as u64 * 2 * half;
    row(
        &format!("{trials} single-bit flips at random positions of the log"),
        n,
        n,
        applied,
        dlq,
        lost,
        &format!(
            "{refused} refused at open (the damage past the checkpoint) and salvaged \
             ({salvaged} of them lost a record), {found_by_read} opened and found by a full \
             read (damage before the checkpoint: the store has the events, a rebuild needs \
             salvage), {unnoticed} with nothing lost and nothing found, {} other errors{}",
            other.len(),
            other
                .first()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        ),
    );
    assert!(other.is_empty(), "{other:?}");
}

/// One bit flipped at a random position of a populated store, then the node opened and
/// drained: the state must come back whole (unchanged, or rebuilt from the log), never a
/// panic.
#[test]
#[ignore = "long: cargo xtask reliability"]
fn byte_flips_in_the_store() {
    let trials = count("ATTUNE_RELIABILITY_FLIPS", 100);
    let half = 1_000u64;
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine");
    populated(&pristine, half);
    {
        // Apply the second half too: the store holds every event.
        Node::open(&in_process_config(&pristine))
            .unwrap()
            .drain()
            .unwrap();
    }
    let expected = stored_profiles(&pristine);
    let len = std::fs::metadata(pristine.join("store.redb"))
        .unwrap()
        .len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut same, mut rebuilt, mut refused, mut panics, mut differ) = (0, 0, 0, 0, 0);
    let mut applied = 0u64;
    for trial in 0..trials {
        let data = dir.path().join(format!("t{trial}"));
        copy_dir(&pristine, &data);
        flip_bit(
            &data.join("store.redb"),
            rng.random_range(0..len),
            rng.random_range(0..8),
        );
        let cfg = in_process_config(&data);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let node = Node::open(&cfg)?;
            node.drain()?;
            let moved = std::fs::read_dir(&data).unwrap().any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".replaced-")
            });
            let status = node.status_json(node.log.end());
            Ok::<_, Error>((moved, u(&status["applied"]), node.store.profiles()?))
        }));
        match outcome {
            Err(_) => panics += 1,
            Ok(Err(_)) => refused += 1,
            Ok(Ok((moved, a, got))) => {
                if moved {
                    rebuilt += 1
                } else {
                    same += 1
                }
                applied += a;
                if got != expected {
                    differ += 1;
                }
            }
        }
        std::fs::remove_dir_all(&data).unwrap();
    }
    let n = trials as u64 * 2 * half;
    row(
        &format!("{trials} single-bit flips at random positions of a {len}-byte store"),
        n,
        n,
        applied,
        0,
        n.saturating_sub(applied),
        &format!(
            "{same} unchanged, {rebuilt} found damaged and rebuilt from the log, {refused} \
             refused with an error, {panics} panics, {differ} with profiles unlike the original"
        ),
    );
    assert_eq!(panics, 0);
    assert_eq!(differ, 0);
}

/// A disk that fills at a random size (`ulimit -f`), requests until refused, then a restart
/// with room: every acknowledged event is applied.
#[test]
#[ignore = "long: cargo xtask reliability"]
fn disk_full_at_random_sizes() {
    let runs = count("ATTUNE_RELIABILITY_FULL_DISKS", 5);
    let dir = tempfile::tempdir().unwrap();
    // The file-size limit applies per file: segments larger than it, so the log reaches it.
    let config = write_config(dir.path(), 64 << 20);
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let (mut sent, mut acked, mut applied, mut dlq, mut lost) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut refusals = Vec::new();
    for run in 0..runs {
        let data = dir.path().join(format!("d{run}"));
        // 512-byte blocks (POSIX sh): 1 to 6 MiB.
        let blocks = rng.random_range(2_048..12_288u64);
        let (mut origin, url) = start(&data, &config, Some(blocks));
        let bodies = batches(200_000, 1_000, run as u64);
        let mut run_acked = 0u64;
        'bodies: for body in &bodies {
            sent += 1_000;
            loop {
                match post(&http, &url, body) {
                    Some(202) => {
                        run_acked += 1_000;
                        continue 'bodies;
                    }
                    Some(429) => std::thread::sleep(Duration::from_millis(50)),
                    Some(503) | None => {
                        refusals.push(blocks);
                        break 'bodies;
                    }
                    Some(s) => panic!("unexpected status {s}"),
                }
            }
        }
        let _ = origin.kill();
        let (origin, url) = start(&data, &config, None);
        let status = caught_up(&http, &url);
        stop(origin);
        let received = u(&status["received"]);
        acked += run_acked;
        applied += u(&status["applied"]);
        dlq += u(&status["dlq"]);
        lost += run_acked.saturating_sub(received);
    }
    row(
        &format!("{runs} full disks at random sizes (1-6 MiB file limit)"),
        sent,
        acked,
        applied,
        dlq,
        lost,
        &format!(
            "{} of {runs} runs refused with 503 before their events ran out; applied counts \
             unacknowledged requests that reached the disk whole too",
            refusals.len()
        ),
    );
    assert_eq!(lost, 0);
}
