//! The strict stand-in of Cloudflare's KV bulk API these tests run the publisher against.

use attune_origin::config::Config;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::kv_stand_in::cloudflare_config;

/// A strict stand-in of Cloudflare's KV bulk API: a request budget per sliding window (a
/// request over it blocks every request for a whole window with 429), `Ratelimit` headers,
/// `unsuccessful_keys`, 401 or 403 on demand, and the per-key limit of one write per second checked
/// on every key it receives.
pub(crate) struct Cf {
    pub(crate) limit: usize,
    pub(crate) window: Duration,
    pub(crate) sent: std::collections::VecDeque<Instant>,
    pub(crate) blocked_until: Option<Instant>,
    /// Send the `ratelimit` header.
    pub(crate) headers: bool,
    /// Every this many accepted put requests, the first key is listed as unsuccessful.
    pub(crate) reject_every: u64,
    /// Refuse every request with this status (401 or 403), as Cloudflare does a bad token.
    pub(crate) refuse_auth: Option<StatusCode>,
    pub(crate) requests: u64,
    pub(crate) puts: u64,
    pub(crate) too_many: u64,
    pub(crate) refused: u64,
    pub(crate) rejected: u64,
    pub(crate) applied: BTreeMap<String, Vec<u64>>,
    pub(crate) last_write: std::collections::HashMap<String, Instant>,
    /// (key, time received) of every write and delete.
    pub(crate) writes: Vec<(String, Instant)>,
    pub(crate) violations: Vec<String>,
}

pub(crate) type Shared = Arc<Mutex<Cf>>;

impl Cf {
    pub(crate) fn new(limit: usize, window: Duration) -> Shared {
        Arc::new(Mutex::new(Cf {
            limit,
            window,
            sent: Default::default(),
            blocked_until: None,
            headers: true,
            reject_every: 0,
            refuse_auth: None,
            requests: 0,
            puts: 0,
            too_many: 0,
            refused: 0,
            rejected: 0,
            applied: BTreeMap::new(),
            last_write: Default::default(),
            writes: Vec::new(),
            violations: Vec::new(),
        }))
    }

    /// The budget and auth checks every API call goes through; `Ok` carries the headers.
    #[allow(clippy::result_large_err)]
    pub(crate) fn admit(&mut self, now: Instant) -> Result<Vec<(String, String)>, Response> {
        self.requests += 1;
        if let Some(status) = self.refuse_auth {
            self.refused += 1;
            return Err((
                status,
                axum::Json(serde_json::json!({"success": false,
                    "errors": [{"code": 10000, "message": "Authentication error"}]})),
            )
                .into_response());
        }
        while self
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            self.sent.pop_front();
        }
        if self.blocked_until.is_some_and(|b| now < b) || self.sent.len() >= self.limit {
            self.too_many += 1;
            let until = *self.blocked_until.get_or_insert(now + self.window);
            let secs = until.duration_since(now).as_secs_f64().ceil() as u64;
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", secs.to_string())],
                "rate limited",
            )
                .into_response());
        }
        self.blocked_until = None;
        self.sent.push_back(now);
        let mut h = Vec::new();
        if self.headers {
            let reset = self
                .sent
                .front()
                .map(|t| (self.window - now.duration_since(*t)).as_secs_f64().ceil() as u64)
                .unwrap_or(0);
            h.push((
                "ratelimit".into(),
                format!("\"default\";r={};t={reset}", self.limit - self.sent.len()),
            ));
        }
        Ok(h)
    }

    pub(crate) fn wrote(&mut self, key: &str, now: Instant) {
        if let Some(last) = self.last_write.get(key)
            && now.duration_since(*last) < Duration::from_secs(1)
        {
            self.violations.push(format!(
                "{key}: written again after {:?}",
                now.duration_since(*last)
            ));
        }
        self.last_write.insert(key.to_string(), now);
        self.writes.push((key.to_string(), now));
    }
}

pub(crate) fn answer(headers: Vec<(String, String)>, body: serde_json::Value) -> Response {
    let mut r = axum::Json(body).into_response();
    for (k, v) in headers {
        r.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    r
}

pub(crate) async fn cf_bulk(State(s): State<Shared>, body: Bytes) -> Response {
    let now = Instant::now();
    let mut cf = s.lock().unwrap();
    let headers = match cf.admit(now) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let items: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
    if items.is_empty() || items.len() > 10_000 || body.len() > 100_000_000 {
        cf.violations.push(format!("bad bulk size {}", items.len()));
    }
    cf.puts += 1;
    let reject = (cf.reject_every > 0 && cf.puts % cf.reject_every == 0)
        .then(|| items[0]["key"].as_str().unwrap().to_string());
    for it in &items {
        let key = it["key"].as_str().unwrap().to_string();
        if reject.as_deref() == Some(key.as_str()) {
            cf.rejected += 1;
            continue;
        }
        let v = it["metadata"]["v"].as_u64().unwrap();
        let last = cf.applied.get(&key).and_then(|l| l.last().copied());
        if key != "m" && last.is_some_and(|last| last >= v) {
            cf.violations
                .push(format!("{key}: version {v} after {last:?}"));
        }
        cf.wrote(&key, now);
        cf.applied.entry(key).or_default().push(v);
    }
    let unsuccessful: Vec<String> = reject.into_iter().collect();
    answer(
        headers,
        serde_json::json!({"success": true, "errors": [], "messages": [],
            "result": {"successful_key_count": items.len() - unsuccessful.len(),
                       "unsuccessful_keys": unsuccessful}}),
    )
}

pub(crate) async fn cf_delete(State(s): State<Shared>, body: Bytes) -> Response {
    let now = Instant::now();
    let mut cf = s.lock().unwrap();
    let headers = match cf.admit(now) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let keys: Vec<String> = serde_json::from_slice(&body).unwrap();
    for k in &keys {
        cf.wrote(k, now);
        cf.applied.remove(k);
    }
    answer(
        headers,
        serde_json::json!({"success": true, "errors": [], "messages": [],
            "result": {"successful_key_count": keys.len(), "unsuccessful_keys": []}}),
    )
}

pub(crate) async fn start_cf(cf: Shared) -> std::net::SocketAddr {
    let base = "/client/v4/accounts/acc/storage/kv/namespaces/ns";
    let app = Router::new()
        .route(&format!("{base}/bulk"), put(cf_bulk))
        .route(&format!("{base}/bulk/delete"), post(cf_delete))
        .with_state(cf);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

/// An origin publishing to the stand-in, with the API budget scaled down to a 5 s window.
pub(crate) fn cf_config(data_dir: &std::path::Path, cf: std::net::SocketAddr) -> Config {
    let mut cfg = cloudflare_config(data_dir, cf);
    cfg.publish.request_timeout_ms = 2_000;
    cfg.publish.flush_interval_ms = 500;
    cfg.publish.shared_interval_ms = Some(1_500);
    // 8 per 5 s with a burst of 3: never more than 11 in any 5 s (the stand-in allows 12).
    cfg.publish.budget_requests = 8;
    cfg.publish.budget_window_ms = 5_000;
    cfg.publish.budget_burst = 3;
    cfg.shutdown_deadline_ms = 15_000;
    cfg
}
