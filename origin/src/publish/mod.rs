//! The KV publisher: drains what waits into bulk writes: the persistent outbox (shared keys,
//! deletes, full re-publishes) and the user publishes the pipeline handed over in [`Live`]
//! (checkpointed in `PENDING`, so a crash loses none).
//!
//! [`Live`]: crate::stream::live::Live
//!
//! - Every request to the KV API takes a token from one [`Budget`] (Cloudflare's limit is per
//!   user token across all its API calls, and a 429 blocks the whole account for the rest of
//!   the window); the server's `Ratelimit` and `Retry-After` headers slow it further.
//! - One flush per `flush_interval_ms` at most (the latency target): everything that waits
//!   then goes out in as few requests as the bulk limits allow (`max_pairs` ≤ 10,000 pairs,
//!   `max_request_bytes` ≤ 100 MB). When tokens are short the order is the priority: deletes
//!   (privacy) first, then profiles, then shared keys.
//! - Coalesces: what waits is keys; the value is the key's newest state at publish time (a
//!   user's from memory when the pipeline holds it, else from the store).
//! - At most one write or delete per key per `min_key_interval_ms`, across restarts (the time
//!   of each write is kept in the store for that long); deferred keys keep waiting.
//! - Shared keys (`t`, `n:`, `c:`, `cfg`, and the manifest `m`) go out every
//!   `shared_interval_ms` (KV takes up to 60 s to propagate anyway), and only when their
//!   content changed.
//! - Retries 429/5xx/timeouts with exponential backoff and full jitter, honouring
//!   `Retry-After`; a key leaves the outbox only after KV acknowledged it, and the keys a 200
//!   lists in `unsuccessful_keys` are the ones sent again.
//! - Never an older version over a newer one: `published` remembers what KV holds.
//! - Deletes (forgotten users) go through `POST …/bulk/delete`.
//! - The manifest `m` is written last, after the shared keys it names.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::{Config, PublishConfig};
use crate::lifecycle::Phase;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::node::Node;
use crate::store::Store;
use crate::stream::live::{self, SharedLive};

mod ack;
mod budget;
mod flush;
mod run;
mod send;
mod stats;
mod target;

use budget::Budget;

pub use flush::FlushOutcome;
pub use run::run;
pub use stats::status_json;
pub use target::{Target, check_start, overridden};

/// One KV write.
#[derive(Clone, Debug)]
pub struct Pair {
    pub key: String,
    pub value: Vec<u8>,
    pub version: u64,
}

/// The publisher state (one per store).
pub struct Publisher {
    store: Store,
    model: Arc<Mutex<Model>>,
    live: SharedLive,
    metrics: Arc<Metrics>,
    target: Target,
    cfg: PublishConfig,
    profile_secret: Vec<u8>,
    budget: Arc<Budget>,
    health: crate::lifecycle::Health,
    /// While set, waits (for a token, between retries) end when the phase reaches
    /// [`Phase::StopPublishing`]; a request already sent is never cancelled, so nothing KV
    /// acknowledged is sent again by the final flush.
    stop: Option<watch::Receiver<Phase>>,
    /// Last write or delete per KV key (`p:` keys included).
    last_write: HashMap<String, Instant>,
    /// Last write per user (their keys are HMACs: deferral is decided before computing one).
    last_write_user: HashMap<Arc<str>, Instant>,
    /// Until then, waiting users are also checked by KV key: the write times restored from
    /// the store at start know keys, not users.
    restored_until: Option<Instant>,
    /// A shared key was written since the last manifest.
    manifest_pending: bool,
    /// Shared keys already in KV are collected from then on.
    shared_due: Instant,
    shared_interval: Duration,
    /// Content hash of each shared key's body as last written.
    shared_hash: HashMap<String, u64>,
    /// Consecutive failed requests (the log says so on the first and then sparsely).
    failing_since: u32,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    pub fn new(node: &Node, target: Target) -> Self {
        let cfg: &Config = &node.cfg;
        let p = &cfg.publish;
        let budget = Arc::new(Budget::new(
            p.budget_requests,
            Duration::from_millis(p.budget_window_ms),
            p.budget_burst,
        ));
        let mut publisher = Publisher {
            store: node.store.clone(),
            model: node.model.clone(),
            live: node.live.clone(),
            metrics: node.metrics.clone(),
            target,
            cfg: p.clone(),
            profile_secret: cfg.profile_key.as_bytes().to_vec(),
            budget,
            health: node.health.clone(),
            stop: None,
            last_write: HashMap::new(),
            last_write_user: HashMap::new(),
            restored_until: None,
            manifest_pending: false,
            shared_due: Instant::now(),
            shared_interval: Duration::from_millis(cfg.shared_interval_ms()),
            shared_hash: HashMap::new(),
            failing_since: 0,
        };
        publisher.restore_recent_writes();
        publisher.restore_shared_hashes();
        publisher
    }

    /// Waits end at [`Phase::StopPublishing`] (see `stop`); `None` lets them run to the
    /// flush's deadline.
    pub fn stop_on(&mut self, phase: Option<watch::Receiver<Phase>>) {
        self.stop = phase;
    }

    /// The next flush collects the shared keys whatever their cadence (a full publish, the
    /// final flush at shutdown).
    pub fn publish_shared_now(&mut self) {
        self.shared_due = Instant::now();
    }

    /// Publishes live gauges: what waits, whatever the last flush did.
    pub fn update_gauges(&self) {
        self.metrics
            .outbox_keys
            .set(self.store.outbox_len().unwrap_or(0) as i64);
        let waiting = live::lock(&self.live).unpublished.len();
        self.metrics.waiting_user_publishes.set(waiting as i64);
    }
}
