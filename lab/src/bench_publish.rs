//! `attune-lab bench-publish`: the publisher against a local stand-in of Cloudflare's KV bulk
//! API at steady event rates, with the production defaults (latency target, request budget,
//! shared-key cadence). Per rate: API requests per second (projected to 5 minutes, and measured
//! in the busiest sliding 5 minutes when the run lasts that long, against Cloudflare's 1,200),
//! KV writes per second by key class, the shared keys' writes after each one's first
//! publication (the cadence), and freshness p50/p99: from the `202` of an event to the
//! stand-in receiving the first write of that user's key after it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;

use crate::error::Result;
use attune_origin::config::{Config, TargetKind};
use attune_origin::now_ms;

#[derive(Debug, Args, Clone)]
pub struct BenchPublishArgs {
    /// Event rates to run, events per second.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    pub rates: Vec<u64>,
    /// Seconds of steady load per rate.
    #[arg(long, default_value_t = 15)]
    pub secs: u64,
    /// Run the origin in Kafka mode on these brokers (`bootstrap.servers`): freshness then
    /// includes the broker's acknowledgement and the consumer.
    #[arg(long)]
    pub kafka: Option<String>,
}

/// Cloudflare's API limit: requests per window per user token.
const API_LIMIT: usize = 1_200;
const API_WINDOW: Duration = Duration::from_secs(300);

#[derive(Default)]
struct Seen {
    /// Arrival times of the requests inside the current window.
    recent: std::collections::VecDeque<Instant>,
    requests: u64,
    /// Arrival time of every request (the busiest 5 minutes of a long run).
    arrivals: Vec<Instant>,
    too_many: u64,
    writes: BTreeMap<&'static str, u64>,
    /// Writes per shared key (`t`, `n:`, `c:`, `cfg`): beyond one, the cadence shows.
    shared: HashMap<String, u64>,
    /// KV key → when the oldest event not yet covered by a write was accepted.
    waiting: HashMap<String, Instant>,
    freshness: Vec<Duration>,
}

type Shared = Arc<Mutex<Seen>>;

impl Seen {
    /// Counts a request against the API limit; false (a 429) once the window is spent.
    fn admit(&mut self, now: Instant) -> bool {
        self.requests += 1;
        self.arrivals.push(now);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= API_WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= API_LIMIT {
            self.too_many += 1;
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

fn class(key: &str) -> &'static str {
    match key {
        "m" => "m",
        "t" => "t",
        "cfg" => "cfg",
        k if k.starts_with("p:") => "p:",
        k if k.starts_with("n:") => "n:",
        k if k.starts_with("c:") => "c:",
        _ => "other",
    }
}

async fn stand_in(seen: Shared) -> Result<String> {
    use axum::routing::{post, put};
    let base = "/client/v4/accounts/bench/storage/kv/namespaces/bench";
    let puts = seen.clone();
    let app = axum::Router::new()
        .route(
            &format!("{base}/bulk"),
            put(move |body: axum::Json<Vec<serde_json::Value>>| {
                let seen = puts.clone();
                async move {
                    let now = Instant::now();
                    let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                    if !s.admit(now) {
                        return (
                            axum::http::StatusCode::TOO_MANY_REQUESTS,
                            axum::Json(serde_json::json!({"success": false})),
                        );
                    }
                    for item in body.0 {
                        if let Some(k) = item.get("key").and_then(|k| k.as_str()) {
                            *s.writes.entry(class(k)).or_default() += 1;
                            if matches!(class(k), "t" | "n:" | "c:" | "cfg") {
                                *s.shared.entry(k.to_owned()).or_default() += 1;
                            }
                            if let Some(at) = s.waiting.remove(k) {
                                s.freshness.push(now.duration_since(at));
                            }
                        }
                    }
                    (
                        axum::http::StatusCode::OK,
                        axum::Json(serde_json::json!({"success": true, "result":
                            {"unsuccessful_keys": []}})),
                    )
                }
            }),
        )
        .route(
            &format!("{base}/bulk/delete"),
            post(move || {
                let seen = seen.clone();
                async move {
                    let ok = seen
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .admit(Instant::now());
                    axum::Json(serde_json::json!({"success": ok}))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/client/v4", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}

struct Row {
    rate: u64,
    events: u64,
    secs: f64,
    requests: u64,
    /// Most requests in any sliding 5 minutes; `None` for a run shorter than that.
    busiest_window: Option<usize>,
    too_many: u64,
    writes: BTreeMap<&'static str, u64>,
    /// Shared-key writes after each key's first one.
    shared_rewrites: u64,
    p50: Duration,
    p99: Duration,
    samples: usize,
}

/// The bench's own ingest token: `serve` refuses to run without one.
const INGEST_TOKEN: &str = "bench-ingest-token";

async fn one_rate(rate: u64, secs: u64, kafka: Option<&str>) -> Result<Row> {
    let dir = tempfile::tempdir()?;
    let seen: Shared = Arc::default();
    let api = stand_in(seen.clone()).await?;
    let mut cfg = Config {
        data_dir: dir.path().join("d"),
        listen: "127.0.0.1:0".into(),
        profile_key: "bench-profile-key".into(),
        ingest_token: Some(INGEST_TOKEN.into()),
        ..Config::default()
    };
    cfg.publish.target = TargetKind::Cloudflare;
    cfg.publish.cloudflare_api = api;
    cfg.publish.cloudflare_account_id = Some("bench".into());
    cfg.publish.cloudflare_namespace_id = Some("bench".into());
    cfg.publish.token = Some("bench".into());
    if let Some(brokers) = kafka {
        // A topic and group per run: each starts from an empty topic.
        let run = format!("bench-publish-{rate}-{}", now_ms());
        cfg.source = attune_origin::config::SourceKind::Kafka;
        cfg.kafka.brokers = brokers.into();
        cfg.kafka.topic = format!("{run}.events");
        cfg.kafka.dlq_topic = format!("{run}.dlq");
        cfg.kafka.group_id = run;
    }
    let secret = cfg.profile_key.clone();
    let running = attune_origin::server::start(cfg).await?;
    let client = attune_origin::client::Client::new(
        &format!("http://{}", running.addr),
        Some(INGEST_TOKEN.to_owned()),
    )?;
    let users = (rate * 10).max(100);
    let per_tick = (rate / 10).max(1);
    let start = Instant::now();
    let mut n = 0u64;
    for tick in 0..secs * 10 {
        let ts = now_ms();
        let mut body = Vec::new();
        let mut keys = Vec::with_capacity(per_tick as usize);
        for _ in 0..per_tick {
            let user = format!("u{}", n % users);
            body.extend_from_slice(
                format!(
                    r#"{{"v":1,"event_id":"e{n}","user":"{user}","ts":{ts},"kind":"view","item":"i{}"}}"#,
                    n % 50
                )
                .as_bytes(),
            );
            body.push(b'\n');
            keys.push(attune_core::hash::profile_key(secret.as_bytes(), &user));
            n += 1;
        }
        client.post_events("bench", body).await?;
        let accepted = Instant::now();
        {
            let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
            for k in keys {
                s.waiting.entry(k).or_insert(accepted);
            }
        }
        tokio::time::sleep_until((start + Duration::from_millis(100 * (tick + 1))).into()).await;
    }
    // Counted over the steady load only; what waits then is drained by the shutdown flush.
    let elapsed = start.elapsed().as_secs_f64();
    let (requests, busiest_window, too_many, writes, shared_rewrites) = {
        let s = seen.lock().unwrap_or_else(|e| e.into_inner());
        let busiest = (start.elapsed() >= API_WINDOW).then(|| busiest_window(&s.arrivals));
        let rewrites = s.shared.values().map(|n| n.saturating_sub(1)).sum();
        (s.requests, busiest, s.too_many, s.writes.clone(), rewrites)
    };
    running.shutdown().await?;
    let mut fresh = std::mem::take(&mut seen.lock().unwrap_or_else(|e| e.into_inner()).freshness);
    fresh.sort();
    let pct = |p: f64| {
        fresh
            .get(((fresh.len() as f64 * p) as usize).min(fresh.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Row {
        rate,
        events: n,
        secs: elapsed,
        requests,
        busiest_window,
        too_many,
        writes,
        shared_rewrites,
        p50: pct(0.50),
        p99: pct(0.99),
        samples: fresh.len(),
    })
}

/// Most of `arrivals` (in order) inside any window of [`API_WINDOW`].
fn busiest_window(arrivals: &[Instant]) -> usize {
    let mut first = 0;
    let mut most = 0;
    for (i, at) in arrivals.iter().enumerate() {
        while at.duration_since(arrivals[first]) >= API_WINDOW {
            first += 1;
        }
        most = most.max(i + 1 - first);
    }
    most
}

pub async fn run(a: BenchPublishArgs) -> Result<()> {
    let mut rows = Vec::new();
    for rate in &a.rates {
        eprintln!("bench-publish: {rate} events/s for {} s ...", a.secs);
        rows.push(one_rate(*rate, a.secs, a.kafka.as_deref()).await?);
    }
    println!(
        "Publisher with the production defaults (flush ≤ 1/s, budget 1,000 requests per 5 min + \
         burst 50, shared keys every 60 s) against a local stand-in of the Cloudflare bulk API; \
         {} s of steady load per rate{}.\n",
        a.secs,
        if a.kafka.is_some() {
            "; the origin in Kafka mode (ingest → broker → consumer)"
        } else {
            ""
        }
    );
    println!(
        "| events/s | events | requests/s | requests per 5 min (projected from the run) | most requests in any 5 min | 429s | KV writes/s: p: | t | n: | c: | cfg | m | shared writes after first publication | writes/day (projected) | freshness p50 | p99 | samples |"
    );
    println!(
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let per_s = |c: &str| r.writes.get(c).copied().unwrap_or(0) as f64 / r.secs;
        let total: u64 = r.writes.values().sum();
        println!(
            "| {} | {} | {:.2} | {:.0} | {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.0} | {} ms | {} ms | {} |",
            r.rate,
            r.events,
            r.requests as f64 / r.secs,
            r.requests as f64 / r.secs * 300.0,
            r.busiest_window
                .map_or_else(|| "—".to_owned(), |n| n.to_string()),
            r.too_many,
            per_s("p:"),
            per_s("t"),
            per_s("n:"),
            per_s("c:"),
            per_s("cfg"),
            per_s("m"),
            r.shared_rewrites,
            total as f64 / r.secs * 86_400.0,
            r.p50.as_millis(),
            r.p99.as_millis(),
            r.samples,
        );
    }
    println!(
        "\nRequests per 5 min (projected) is requests/s × 300 from this {} s run; the most \
         requests in any sliding 5 min is measured only on a run of at least 300 s (— \
         otherwise). Shared-key writes/s in a short run are mostly each key's first \
         publication at start; \"shared writes after first publication\" counts the writes of \
         `t`, `n:`, `c:` and `cfg` keys after each key's first one: with shared keys every \
         60 s it must be 0 in a run shorter than 60 s.",
        a.secs
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_window_counts_the_most_requests_within_5_minutes() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // 3 at the start, 1 in the middle, 4 just under 5 minutes after the middle one.
        let arrivals = [
            at(0),
            at(1),
            at(2),
            at(200),
            at(400),
            at(450),
            at(480),
            at(499),
        ];
        assert_eq!(busiest_window(&arrivals), 5);
        assert_eq!(busiest_window(&arrivals[..3]), 3);
        assert_eq!(busiest_window(&[]), 0);
        // Exactly 5 minutes apart: not in one window.
        assert_eq!(busiest_window(&[at(0), at(300)]), 1);
    }
}
