//! `attune-lab bench`: durable pipeline throughput on one core from the embedded log,
//! freshness (event accepted → KV written) and peak RSS. Prints a report.
//!
//! Throughput: synthetic events (uniform users, skewed items, a realistic kind mix) are
//! appended to a fresh log first (not timed); then the pipeline drains the whole log on this
//! one thread exactly as `serve` does: micro-batches applied in memory, and redb checkpoints
//! (one fsync'd transaction each) every 10 s, at 100k changed users, and when it catches up
//! with the log, which the timing includes. Single runs on a shared VM vary by ±20%:
//! `--runs N` repeats the measurement on fresh logs and stores and reports the median, with
//! `--baseline` runs alternating with them.

use std::time::{Duration, Instant};

use clap::Args;
use rand::{Rng, SeedableRng};

use crate::error::Result;
use attune_origin::config::{Config, TargetKind};
use attune_origin::node::Node;
use attune_origin::now_ms;

/// Nexmark q17 keyed aggregation, Flink, per core (the reference the target is set against).
pub const FLINK_Q17_PER_CORE: f64 = 116_800.0;

#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// Events to apply.
    #[arg(long, default_value_t = 2_000_000)]
    pub events: u64,
    /// Distinct users.
    #[arg(long, default_value_t = 1_000_000)]
    pub users: u64,
    /// Distinct items.
    #[arg(long, default_value_t = 5_000)]
    pub items: u64,
    /// Largest micro-batch (micro-batches are sized to take about 50 ms, up to this).
    #[arg(long, default_value_t = 65_536)]
    pub batch: usize,
    /// Freshness probes (0 skips the freshness run).
    #[arg(long, default_value_t = 200)]
    pub probes: usize,
    /// Where to put the bench data (a temp dir by default).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Also run the same events with a commit after every micro-batch (no checkpoint
    /// batching) and report the ratio.
    #[arg(long)]
    pub baseline: bool,
    /// Throughput runs, each on a fresh log and store; the report gives each and the median.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
}

/// One throughput run.
struct Run {
    outcome: attune_origin::BatchOutcome,
    secs: f64,
    store_bytes: u64,
    users_stored: usize,
}

impl Run {
    fn events_per_s(&self) -> f64 {
        self.outcome.received as f64 / self.secs
    }
}

/// Fills a fresh log with the synthetic events (not timed), then drains it on this thread.
fn throughput(a: &BenchArgs, dir: &std::path::Path, checkpoint_interval_ms: u64) -> Result<Run> {
    let mut cfg = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    cfg.pipeline.batch_max = a.batch;
    cfg.pipeline.checkpoint_interval_ms = checkpoint_interval_ms;
    cfg.publish.target = TargetKind::None;
    let node = Node::open(&cfg)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let t0 = now_ms() - 3_600_000;
    eprintln!("generating {} events for {} users ...", a.events, a.users);
    let mut n = 0u64;
    while n < a.events {
        let chunk = (a.events - n).min(50_000);
        let payloads: Vec<Vec<u8>> = (0..chunk)
            .map(|i| synthetic_event(&mut rng, n + i, a.users, a.items, t0 + (n + i) / 1000))
            .collect();
        node.log.append_blocking(now_ms(), "bench", payloads)?;
        n += chunk;
    }
    eprintln!("applying ...");
    let started = Instant::now();
    let outcome = node.drain()?;
    let secs = started.elapsed().as_secs_f64();
    let store_bytes = attune_origin::Store::size_bytes(&cfg.store_path());
    let users_stored = node.store.profiles().map(|p| p.len()).unwrap_or(0);
    Ok(Run {
        outcome,
        secs,
        store_bytes,
        users_stored,
    })
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub fn synthetic_event(rng: &mut impl Rng, n: u64, users: u64, items: u64, ts: u64) -> Vec<u8> {
    let user = rng.random_range(0..users);
    // Skewed items: u^3 puts most traffic on few items.
    let u: f64 = rng.random();
    let item = ((u * u * u) * items as f64) as u64;
    let kind = match rng.random_range(0..100) {
        0..70 => "view",
        70..85 => "click",
        85..95 => "add_to_cart",
        _ => "purchase",
    };
    format!(
        r#"{{"v":1,"event_id":"b{n}","user":"u{user}","ts":{ts},"kind":"{kind}","item":"i{item}"}}"#
    )
    .into_bytes()
}

pub async fn run(a: BenchArgs) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let rss_before = rss_kib("VmRSS:");
    let interval = Config::default().pipeline.checkpoint_interval_ms;
    let mut runs = Vec::new();
    let mut baselines = Vec::new();
    let mut hwm = 0;
    for i in 0..a.runs.max(1) {
        let run_dir = dir.join(format!("throughput-{i}"));
        runs.push(throughput(&a, &run_dir, interval)?);
        if i == 0 {
            // Peak RSS of one checkpointing run (the process's high-water mark so far).
            hwm = rss_kib("VmHWM:");
        }
        let _ = std::fs::remove_dir_all(&run_dir);
        if a.baseline {
            let base_dir = dir.join(format!("baseline-{i}"));
            baselines.push(throughput(&a, &base_dir, 0)?);
            let _ = std::fs::remove_dir_all(&base_dir);
        }
    }
    let all_eps: Vec<f64> = runs.iter().map(Run::events_per_s).collect();
    runs.sort_by(|x, y| x.events_per_s().total_cmp(&y.events_per_s()));
    baselines.sort_by(|x, y| x.events_per_s().total_cmp(&y.events_per_s()));
    let run = &runs[runs.len() / 2];
    let baseline = baselines.get(baselines.len() / 2);
    let outcome = run.outcome;
    let secs = run.secs;
    let batches = outcome.batches;
    let eps = run.events_per_s();
    let store_bytes = run.store_bytes;
    let users_stored = run.users_stored;

    let freshness = if a.probes > 0 {
        Some(freshness(&dir.join("freshness"), a.probes).await?)
    } else {
        None
    };

    println!("attune-lab bench");
    println!(
        "  pipeline (1 thread, embedded log → memory → redb checkpoints, one fsync'd \
         transaction each): {} micro-batches (at most {} events, sized to ~50 ms), \
         {} checkpoints taking {:.2} s in all",
        batches,
        a.batch,
        outcome.checkpoints,
        outcome.checkpoint_us as f64 / 1e6
    );
    println!(
        "    events {}  applied {}  users {}  items {}",
        outcome.received, outcome.applied, users_stored, a.items
    );
    if runs.len() > 1 {
        let each: Vec<String> = all_eps.iter().map(|e| format!("{e:.0}")).collect();
        println!(
            "    {} runs, events/s in run order: {}; the median run:",
            runs.len(),
            each.join(" ")
        );
    }
    println!("    elapsed {secs:.2} s  throughput {eps:.0} events/s");
    println!(
        "    vs Flink Nexmark q17 per core (116,800 events/s): x{:.2}   target >= 350,000: {}",
        eps / FLINK_Q17_PER_CORE,
        if eps >= 350_000.0 { "met" } else { "NOT met" }
    );
    if let Some(b) = baseline {
        println!(
            "    baseline, same events, a commit after every micro-batch ({} commits; median \
             of {} runs alternating with the above): {:.2} s, {:.0} events/s; checkpointing is \
             x{:.2}",
            b.outcome.checkpoints,
            baselines.len(),
            b.secs,
            b.events_per_s(),
            eps / b.events_per_s()
        );
    }
    println!(
        "  memory (checkpointing run): peak RSS {:.1} MiB (before {:.1} MiB) for {} users; \
         store {:.1} MiB on disk",
        hwm as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        users_stored,
        store_bytes as f64 / 1048576.0
    );
    if let Some((p50, p99, max)) = freshness {
        println!(
            "  freshness (accepted → KV bulk write received by a local HTTP stand-in, flush \
             100 ms, 1 write/key/s): \
             p50 {p50:.0} ms  p99 {p99:.0} ms  max {max:.0} ms   target p99 < 1000 ms: {}",
            if p99 < 1000.0 { "met" } else { "NOT met" }
        );
    }
    Ok(())
}

/// Keys a stand-in KV bulk endpoint has received, with the time each first arrived.
type Received = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>>;

/// A local HTTP server with the Cloudflare KV bulk shape (`PUT …/bulk`): what the origin
/// publishes to in production, minus the network. It records when each key arrives.
async fn kv_stand_in() -> Result<(String, Received)> {
    use axum::routing::{post, put};
    let received: Received = Default::default();
    let seen = received.clone();
    let app = axum::Router::new()
        .route(
            "/bulk",
            put(move |body: axum::Json<Vec<serde_json::Value>>| {
                let seen = seen.clone();
                async move {
                    let now = Instant::now();
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    for item in body.0 {
                        if let Some(k) = item.get("key").and_then(|k| k.as_str()) {
                            seen.entry(k.to_string()).or_insert(now);
                        }
                    }
                    axum::Json(serde_json::json!({"success": true}))
                }
            }),
        )
        .route(
            "/bulk/delete",
            post(|| async { axum::Json(serde_json::json!({"success": true})) }),
        )
        // The bulk API takes up to 100 MB per request, and the publisher fills batches to it.
        .layer(axum::extract::DefaultBodyLimit::max(100 * 1024 * 1024));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, received))
}

/// Serves with an HTTP KV target (a local stand-in for the bulk API) under light background
/// load and measures, per probe, the time from the `202` of a new user's event to the bulk
/// request that carries the user's key.
async fn freshness(dir: &std::path::Path, probes: usize) -> Result<(f64, f64, f64)> {
    let mut cfg = Config {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".into(),
        insecure_dev_no_token: true,
        ..Config::default()
    };
    let (kv_url, received) = kv_stand_in().await?;
    cfg.publish.target = TargetKind::Http;
    cfg.publish.url = Some(kv_url);
    cfg.publish.token = Some("bench".into());
    cfg.publish.flush_interval_ms = 100;
    let running = attune_origin::server::start(cfg.clone()).await?;
    let url = format!("http://{}", running.addr);
    let client = attune_origin::client::Client::new(&url, None)?;
    let bg = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(3);
            for i in 0u64.. {
                let now = now_ms();
                let body: Vec<u8> = (0..100)
                    .flat_map(|j| {
                        let mut l = synthetic_event(&mut rng, i * 100 + j, 10_000, 2_000, now);
                        l.push(b'\n');
                        l
                    })
                    .collect();
                if client.post_events("bg", body).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut lat = Vec::with_capacity(probes);
    for i in 0..probes {
        let user = format!("probe-{i}");
        let body = format!(
            r#"{{"v":1,"event_id":"probe-{i}","user":"{user}","ts":{},"kind":"view","item":"i1"}}"#,
            now_ms()
        );
        client.post_events("probe", body.into_bytes()).await?;
        let accepted = Instant::now();
        let key = attune_core::hash::profile_key(cfg.profile_key.as_bytes(), &user);
        let arrived = loop {
            let at = received
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .copied();
            if let Some(at) = at {
                break at;
            }
            if accepted.elapsed() > Duration::from_secs(10) {
                break Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        lat.push(arrived.saturating_duration_since(accepted).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bg.abort();
    running.shutdown().await?;
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Ok((q(0.5), q(0.99), *lat.last().unwrap_or(&0.0)))
}
