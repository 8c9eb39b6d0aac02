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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attune_core::hash::profile_key;
use attune_core::model::keys as kv;
use attune_core::wire::{self, Envelope};
use attune_core::{CatalogShard, Manifest, NeighbourShard, Trending};
use rand::Rng;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

use crate::config::{Config, PublishConfig};
use crate::error::{Error, Result};
use crate::lifecycle::Phase;
use crate::metrics::{Metrics, labels};
use crate::model::Model;
use crate::node::Node;
use crate::store::{OUTBOX, Op, OutboxEntry, PUBLISHED, Store, USERS, decode_user_row, user_key};
use crate::stream::live::{self, SharedLive};

mod budget;
mod health;
mod run;
mod stats;
mod target;

use budget::Budget;

/// The publisher's part of a status report: projected KV writes per day by key class.
pub fn status_json(store: &Store) -> serde_json::Value {
    let per_day = writes_per_day(store, crate::now_ms()).unwrap_or_default();
    let total: u64 = per_day.iter().map(|(_, n)| n).sum();
    let mut by_class = serde_json::Map::new();
    for (class, n) in per_day {
        by_class.insert(class.into(), n.into());
    }
    serde_json::json!({ "kv_writes_per_day": total, "kv_writes_per_day_by_class": by_class })
}
pub use health::Health;
pub use run::run;
pub use stats::{KeyClass, writes_per_day};
pub use target::{SendError, Sent, Target, check_start, overridden};

/// Wall time (ms) of a write → the KV keys it wrote, `\n`-separated: what the per-key
/// interval needs to survive a restart. Rows older than the interval are pruned as new ones
/// are added.
const RECENT_WRITES: TableDefinition<u64, &[u8]> = TableDefinition::new("publish_recent_writes");

/// Shared KV key → hash of the body KV holds (a restart does not rewrite unchanged content).
const SHARED_HASHES: TableDefinition<&str, u64> = TableDefinition::new("publish_shared_hashes");

impl Ack {
    /// A waiting entry that needs no write (KV holds that version or newer, or the state is
    /// gone): it is only dropped.
    fn stale(key: String, version: u64, user: Option<Arc<str>>) -> Self {
        Ack {
            key,
            version,
            user,
            written: false,
        }
    }
}

/// Most user publishes one flush prepares (the rest wait for the next flush).
const MAX_PUTS_PER_FLUSH: usize = 50_000;

/// A user publish being prepared: (user, KV key, waiting version, accepted, the state if
/// memory holds it).
type WaitingUser = (Arc<str>, String, u64, u64, Option<attune_core::Profile>);

/// One KV write.
#[derive(Clone, Debug)]
pub struct Pair {
    pub key: String,
    pub value: Vec<u8>,
    pub version: u64,
}

/// A pair on its way, with what its acknowledgement needs.
#[derive(Clone, Debug)]
struct Item {
    pair: Pair,
    /// Earliest ingest time among the changes it carries (freshness).
    accepted: u64,
    user: Option<Arc<str>>,
    /// Content hash of a shared key's body (unchanged content is not written again).
    hash: Option<u64>,
}

/// What a write acknowledges besides the KV key: the user of a `p:` key, so its waiting
/// publish can be dropped (the next checkpoint's `PENDING` row no longer lists it).
#[derive(Clone, Debug)]
struct Ack {
    key: String,
    version: u64,
    user: Option<Arc<str>>,
    /// KV was written at `version` (false: the entry was stale and is only dropped).
    written: bool,
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
    health: Health,
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
    rules: Arc<attune_core::rules::Config>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// What one flush did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushOutcome {
    pub written: usize,
    pub deleted: usize,
    /// Keys still waiting after this flush: held back by the per-key interval (the manifest
    /// included), or listed by KV as unsuccessful.
    pub deferred: usize,
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
            health: Health::default(),
            stop: None,
            last_write: HashMap::new(),
            last_write_user: HashMap::new(),
            restored_until: None,
            manifest_pending: false,
            shared_due: Instant::now(),
            shared_interval: Duration::from_millis(cfg.shared_interval_ms()),
            shared_hash: HashMap::new(),
            failing_since: 0,
            rules: Arc::new(cfg.rules.clone()),
        };
        publisher.restore_recent_writes();
        publisher.restore_shared_hashes();
        publisher
    }

    /// The readiness view of this publisher.
    pub fn health(&self) -> Health {
        self.health.clone()
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

    /// Reads the hashes of the shared bodies KV holds.
    fn restore_shared_hashes(&mut self) {
        let Ok(tx) = self.store.db.begin_read() else {
            return;
        };
        // No table yet: no shared key was ever written.
        let Ok(t) = tx.open_table(SHARED_HASHES) else {
            return;
        };
        let Ok(rows) = t.iter() else {
            return;
        };
        for (k, v) in rows.flatten() {
            self.shared_hash.insert(k.value().to_string(), v.value());
        }
    }

    /// Reads the write times the last run left for keys still inside the per-key interval.
    fn restore_recent_writes(&mut self) {
        let gap = self.cfg.min_key_interval_ms;
        let wall = crate::now_ms();
        let now = Instant::now();
        let Ok(tx) = self.store.db.begin_read() else {
            return;
        };
        // No table yet: nothing was ever written.
        let Ok(t) = tx.open_table(RECENT_WRITES) else {
            return;
        };
        let Ok(rows) = t.range(wall.saturating_sub(gap)..) else {
            return;
        };
        for (at, keys) in rows.flatten() {
            let age = Duration::from_millis(wall.saturating_sub(at.value()));
            let Some(when) = now.checked_sub(age) else {
                continue;
            };
            for key in String::from_utf8_lossy(keys.value()).split('\n') {
                if !key.is_empty() {
                    self.last_write.insert(key.to_string(), when);
                }
            }
        }
        if !self.last_write.is_empty() {
            self.restored_until = Some(now + Duration::from_millis(gap));
        }
    }

    /// Publishes live gauges: what waits, whatever the last flush did.
    pub fn update_gauges(&self) {
        self.metrics
            .outbox_keys
            .set(self.store.outbox_len().unwrap_or(0) as i64);
        let waiting = live::lock(&self.live).unpublished.len();
        self.metrics.waiting_user_publishes.set(waiting as i64);
    }

    /// Takes a token from the budget (HTTP targets only), waiting as long as it says.
    async fn take_token(&self, op: &'static str, deadline: Option<Instant>) -> Result<()> {
        if !self.target.is_http() {
            return Ok(());
        }
        loop {
            match self.budget.try_take(Instant::now()) {
                Ok(()) => return Ok(()),
                Err(wait) => {
                    self.metrics.publish_budget_waits.inc();
                    self.pause(op, wait, deadline, "waiting for the request budget")
                        .await?
                }
            }
        }
    }

    /// Sleeps `wait`, unless that passes `deadline` or shutdown reaches the publisher.
    async fn pause(
        &self,
        op: &'static str,
        wait: Duration,
        deadline: Option<Instant>,
        why: &str,
    ) -> Result<()> {
        if let Some(d) = deadline
            && Instant::now() + wait > d
        {
            return Err(Error::PublishDeadline {
                op,
                message: why.to_string(),
            });
        }
        match &self.stop {
            Some(stop) => {
                let mut stop = stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => Ok(()),
                    _ = stop.wait_for(|p| *p >= Phase::StopPublishing) => {
                        Err(Error::PublishStopped { op })
                    }
                }
            }
            None => {
                tokio::time::sleep(wait).await;
                Ok(())
            }
        }
    }

    /// Sends with retries until success or `deadline`, one budget token per attempt.
    async fn send<F, Fut>(
        &mut self,
        op: &'static str,
        deadline: Option<Instant>,
        f: F,
    ) -> Result<Sent>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<Sent, SendError>>,
    {
        let mut attempt = 0u32;
        loop {
            self.take_token(op, deadline).await?;
            let result = f().await;
            let now = Instant::now();
            match result {
                Ok(sent) => {
                    if let Some(info) = sent.rate {
                        self.budget.observe(info, now);
                    }
                    self.metrics
                        .publish_requests
                        .get_or_create(&labels(&[("op", op), ("outcome", "ok")]))
                        .inc();
                    self.metrics
                        .last_publish_success_seconds
                        .set((crate::now_ms() / 1000) as i64);
                    if self.health.set(None) || self.failing_since > 0 {
                        tracing::info!(
                            op,
                            failed_attempts = self.failing_since,
                            "KV requests succeed again"
                        );
                    }
                    self.failing_since = 0;
                    return Ok(sent);
                }
                Err(e) => {
                    self.metrics
                        .publish_requests
                        .get_or_create(&labels(&[("op", op), ("outcome", "error")]))
                        .inc();
                    self.metrics
                        .publish_failures
                        .get_or_create(&labels(&[("reason", e.reason)]))
                        .inc();
                    if let Some(info) = e.rate {
                        self.budget.observe(info, now);
                    }
                    let exp = self
                        .cfg
                        .backoff_base_ms
                        .saturating_mul(1u64 << attempt.min(20))
                        .min(self.cfg.backoff_max_ms);
                    let jittered = rand::rng().random_range(exp / 2..=exp.max(1));
                    let mut wait = Duration::from_millis(jittered);
                    if let Some(ra) = e.retry_after {
                        wait = wait.max(ra);
                    }
                    if e.reason == "rate-limited" {
                        // The block is the account's, not this request's: every request waits.
                        self.budget.block_until(now + wait);
                    }
                    if !e.retryable {
                        // A 4xx other than 429: keep the keys, try again much later.
                        wait = wait.max(Duration::from_millis(self.cfg.backoff_max_ms));
                    }
                    self.failing_since += 1;
                    // A flush can retry for as long as KV fails: the gauges must still move.
                    self.update_gauges();
                    if e.is_auth() {
                        let reason = format!(
                            "the KV API refuses the publish token ({}); nothing is published",
                            e.message
                        );
                        if self.health.set(Some(reason)) {
                            tracing::error!(op, error = %e.message, ?wait,
                                "KV API refuses the token (401/403): check publish.token / \
                                 CLOUDFLARE_API_TOKEN and its KV write permission");
                        } else {
                            tracing::debug!(op, attempt, error = %e.message, "KV API still refuses the token");
                        }
                    } else if self.failing_since == 1 || self.failing_since.is_power_of_two() {
                        tracing::warn!(op, attempt, failures = self.failing_since,
                            reason = e.reason, error = %e.message, ?wait, "KV request failed");
                    } else {
                        tracing::debug!(op, attempt, reason = e.reason, error = %e.message, "KV request failed");
                    }
                    self.metrics.publish_retries.inc();
                    attempt += 1;
                    self.pause(op, wait, deadline, &e.message).await?;
                }
            }
        }
    }

    /// Publishes what waits: deletes, then profiles, then (on their cadence) shared keys,
    /// then the manifest. Keys inside the per-key interval keep waiting.
    pub async fn flush(&mut self, deadline: Option<Instant>) -> Result<FlushOutcome> {
        let mut outcome = FlushOutcome::default();
        let now = Instant::now();
        let min_gap = Duration::from_millis(self.cfg.min_key_interval_ms);
        if self.restored_until.is_some_and(|t| now >= t) {
            self.restored_until = None;
        }
        let check_keys = self.restored_until.is_some();
        let with_shared = now >= self.shared_due;
        if with_shared {
            self.shared_due = now + self.shared_interval;
        }
        self.update_gauges();
        // 1. Collect what waits: the outbox (shared keys, deletes, full re-publishes) and what
        //    the pipeline changed since (in memory), and build values from the newest state.
        let mut users_out: Vec<Item> = Vec::new();
        let mut shared_out: Vec<Item> = Vec::new();
        let mut deletes: Vec<String> = Vec::new();
        let mut stale: Vec<Ack> = Vec::new();
        let deferred = |key: &str, last_write: &HashMap<String, Instant>| {
            last_write
                .get(key)
                .is_some_and(|t| now.duration_since(*t) < min_gap)
        };
        {
            let tx = self.store.db.begin_read()?;
            let outbox = tx.open_table(OUTBOX)?;
            let published = tx.open_table(PUBLISHED)?;
            let rows = tx.open_table(USERS)?;
            let mut model = self.model.lock().unwrap_or_else(|e| e.into_inner());
            // A no-op unless a micro-batch stopped half-way (an error): its pairs are applied.
            model.settle();
            let mut users: Vec<WaitingUser> = Vec::new();
            let mut shared: HashMap<String, (u64, u64)> = HashMap::new();
            for row in outbox.iter()? {
                let (k, v) = row?;
                let key = k.value().to_string();
                let entry = OutboxEntry::decode(v.value())?;
                if entry.op == Op::Put
                    && entry.user.is_none()
                    && !with_shared
                    && published.get(key.as_str())?.is_some()
                {
                    continue;
                }
                if deferred(&key, &self.last_write) {
                    outcome.deferred += 1;
                    continue;
                }
                match (entry.op, entry.user) {
                    (Op::Delete, _) => deletes.push(key),
                    (Op::Put, Some(user)) => {
                        users.push((user.into(), key, entry.version, entry.accepted_ms, None));
                        // A full re-publish queues every user here: one flush takes a bounded
                        // share (the rest stays queued for the next).
                        if users.len() >= MAX_PUTS_PER_FLUSH {
                            break;
                        }
                    }
                    (Op::Put, None) => {
                        shared.insert(key, (entry.version, entry.accepted_ms));
                    }
                }
            }
            {
                let live = live::lock(&self.live);
                for (key, u) in &live.shared {
                    if !with_shared && published.get(key.as_str())?.is_some() {
                        continue;
                    }
                    if deferred(key, &self.last_write) {
                        outcome.deferred += 1;
                        continue;
                    }
                    let e = shared
                        .entry(key.clone())
                        .or_insert((u.version, u.accepted_ms));
                    e.0 = e.0.max(u.version);
                    e.1 = e.1.min(u.accepted_ms);
                }
                if self.last_write_user.len() > 4096 {
                    self.last_write_user
                        .retain(|_, t| now.duration_since(*t) < min_gap);
                }
                if self.last_write.len() > 4096 {
                    self.last_write
                        .retain(|_, t| now.duration_since(*t) < min_gap);
                }
                for (user, u) in live.unpublished.values() {
                    if users.len() >= MAX_PUTS_PER_FLUSH {
                        break;
                    }
                    // A forgotten user who came back: the new profile waits until the delete
                    // of the old one has gone out, or the delete would remove it from KV.
                    if (!live.forgetting.is_empty() || !deletes.is_empty()) && {
                        let key = profile_key(&self.profile_secret, user);
                        live.forgetting.contains(&key) || deletes.contains(&key)
                    } {
                        outcome.deferred += 1;
                        continue;
                    }
                    if self
                        .last_write_user
                        .get(user)
                        .is_some_and(|t| now.duration_since(*t) < min_gap)
                    {
                        outcome.deferred += 1;
                        continue;
                    }
                    let key = profile_key(&self.profile_secret, user);
                    if check_keys && deferred(&key, &self.last_write) {
                        outcome.deferred += 1;
                        continue;
                    }
                    let state = live.user(user).map(|s| s.profile.clone());
                    users.push((user.clone(), key, u.version, u.accepted_ms, state));
                }
            }
            for (user, key, waiting, accepted, state) in users {
                let p = match state {
                    Some(p) => p,
                    // Not in memory: the checkpoint holds its newest state.
                    None => match rows.get(user_key(&user))? {
                        Some(v) => decode_user_row(&user, v.value())?.profile,
                        None => {
                            stale.push(Ack::stale(key, waiting, Some(user)));
                            continue;
                        }
                    },
                };
                let version = p.version;
                let have = published.get(key.as_str())?.map(|v| v.value());
                if have.is_some_and(|h| h >= version) {
                    // KV already has this version or a newer one.
                    stale.push(Ack::stale(key, waiting, Some(user)));
                    continue;
                }
                let env = Envelope::new(version, p.last_seen, p);
                let value = wire::encode_profile(&env, wire::PROFILE_CAP_BYTES);
                users_out.push(Item {
                    pair: Pair {
                        key,
                        value,
                        version,
                    },
                    accepted,
                    user: Some(user),
                    hash: None,
                });
            }
            let wall = crate::now_ms();
            let mut trending: Option<Trending> = None;
            for (key, (version, accepted)) in shared {
                // Checked before building the value: a neighbour shard is not cheap.
                let have = published.get(key.as_str())?.map(|v| v.value());
                if have.is_some_and(|h| h >= version) {
                    stale.push(Ack::stale(key, version, None));
                    continue;
                }
                // The body is hashed alone (the envelope's version and time always change).
                let encoded = if key == kv::TRENDING {
                    let t = trending.get_or_insert_with(|| model.trending(wall)).clone();
                    Some(encode_shared(version, wall, t))
                } else if key == kv::CONFIG {
                    Some(encode_shared(version, wall, &*self.rules))
                } else if let Some(s) = key.strip_prefix("n:") {
                    let shard: NeighbourShard =
                        model.neighbour_shard(s.parse().unwrap_or(u32::MAX));
                    Some(encode_shared(version, wall, shard))
                } else if let Some(s) = key.strip_prefix("c:") {
                    let shard: CatalogShard = model.catalog_shard(s.parse().unwrap_or(u32::MAX));
                    Some(encode_shared(version, wall, shard))
                } else {
                    None
                };
                let Some((value, hash)) = encoded else {
                    stale.push(Ack::stale(key, version, None));
                    continue;
                };
                if have.is_some() && self.shared_hash.get(&key) == Some(&hash) {
                    // Same content as KV holds: not worth a write. (A key `published` does
                    // not list, after a full re-publish for one, is written whatever its hash.)
                    stale.push(Ack::stale(key, version, None));
                    continue;
                }
                shared_out.push(Item {
                    pair: Pair {
                        key,
                        value,
                        version,
                    },
                    accepted,
                    user: None,
                    hash: Some(hash),
                });
            }
        }
        if !stale.is_empty() {
            self.ack(&stale, false)?;
        }
        // 2. Deletes first: a forgotten user's profile leaves KV before anything else is spent.
        for keys in deletes.chunks(self.cfg.max_pairs) {
            let target = self.target.clone();
            let keys_vec = keys.to_vec();
            let sent = self
                .send("delete", deadline, || target.delete(&keys_vec))
                .await?;
            let rejected: HashSet<&str> = sent.rejected.iter().map(String::as_str).collect();
            self.count_rejected(rejected.len());
            outcome.deferred += rejected.len();
            let done: Vec<&String> = keys
                .iter()
                .filter(|k| !rejected.contains(k.as_str()))
                .collect();
            let sent_at = Instant::now();
            for k in &done {
                self.last_write.insert((*k).clone(), sent_at);
            }
            let acks: Vec<Ack> = done
                .iter()
                .map(|k| Ack {
                    key: (*k).clone(),
                    version: u64::MAX,
                    user: None,
                    written: true,
                })
                .collect();
            self.ack(&acks, true)?;
            self.count_writes(KeyClass::Delete, done.len() as u64);
            outcome.deleted += done.len();
        }
        // 3. Bulk writes, profiles before shared keys, chunked by pairs and bytes.
        let mut chunk: Vec<Item> = Vec::new();
        let mut chunk_bytes = 2usize;
        for item in users_out.into_iter().chain(shared_out) {
            let size = item.pair.key.len() + item.pair.value.len().div_ceil(3) * 4 + 80;
            if !chunk.is_empty()
                && (chunk.len() >= self.cfg.max_pairs
                    || chunk_bytes + size > self.cfg.max_request_bytes)
            {
                let (written, rejected) = self
                    .write_chunk(std::mem::take(&mut chunk), deadline)
                    .await?;
                outcome.written += written;
                outcome.deferred += rejected;
                chunk_bytes = 2;
            }
            chunk_bytes += size;
            chunk.push(item);
        }
        if !chunk.is_empty() {
            let (written, rejected) = self.write_chunk(chunk, deadline).await?;
            outcome.written += written;
            outcome.deferred += rejected;
        }
        // 4. The manifest, last, once per shared cadence at most (it moves with shared keys).
        if self.manifest_pending {
            if deferred(kv::MANIFEST, &self.last_write) {
                outcome.deferred += 1;
            } else {
                self.write_manifest(deadline).await?;
                if self.manifest_pending {
                    // KV listed it as unsuccessful.
                    outcome.deferred += 1;
                }
            }
        }
        self.update_gauges();
        Ok(outcome)
    }

    fn count_rejected(&self, n: usize) {
        if n > 0 {
            self.metrics
                .publish_failures
                .get_or_create(&labels(&[("reason", "rejected-keys")]))
                .inc_by(n as u64);
            tracing::warn!(
                keys = n,
                "KV listed keys as unsuccessful; they are sent again"
            );
        }
    }

    fn count_writes(&self, class: KeyClass, n: u64) {
        if n > 0 {
            self.metrics
                .published_keys
                .get_or_create(&labels(&[("kind", class.label())]))
                .inc_by(n);
        }
    }

    /// Writes one bulk request; returns how many keys KV took and how many it listed as
    /// unsuccessful (they keep waiting).
    async fn write_chunk(
        &mut self,
        chunk: Vec<Item>,
        deadline: Option<Instant>,
    ) -> Result<(usize, usize)> {
        let pairs: Vec<Pair> = chunk.iter().map(|c| c.pair.clone()).collect();
        let target = self.target.clone();
        let sent = self.send("put", deadline, || target.put(&pairs)).await?;
        let rejected: HashSet<String> = sent.rejected.into_iter().collect();
        self.count_rejected(rejected.len());
        let wall = crate::now_ms();
        let sent_at = Instant::now();
        let mut acks = Vec::with_capacity(chunk.len());
        let mut hashes: Vec<(String, u64)> = Vec::new();
        for item in chunk {
            if rejected.contains(&item.pair.key) {
                continue;
            }
            let key = item.pair.key;
            self.last_write.insert(key.clone(), sent_at);
            if let Some(user) = &item.user {
                self.last_write_user.insert(user.clone(), sent_at);
                self.metrics
                    .freshness_seconds
                    .observe(wall.saturating_sub(item.accepted) as f64 / 1000.0);
            } else {
                // Every shared key written moves the manifest; kept on the publisher, so a
                // flush cut short after this request still writes the manifest later.
                self.manifest_pending = true;
            }
            if let Some(hash) = item.hash {
                self.shared_hash.insert(key.clone(), hash);
                hashes.push((key.clone(), hash));
            }
            self.count_writes(KeyClass::of(&key), 1);
            acks.push(Ack {
                key,
                version: item.pair.version,
                user: item.user,
                written: true,
            });
        }
        self.ack(&acks, false)?;
        if !hashes.is_empty() {
            let tx = self.store.db.begin_write()?;
            {
                let mut t = tx.open_table(SHARED_HASHES)?;
                for (key, hash) in &hashes {
                    t.insert(key.as_str(), *hash)?;
                }
            }
            tx.commit()?;
        }
        Ok((acks.len(), rejected.len()))
    }

    /// Records what KV now holds and drops the waiting publishes it covers (outbox rows and
    /// the in-memory entries); the time of each write goes to `RECENT_WRITES` in the same
    /// transaction.
    fn ack(&self, acks: &[Ack], delete: bool) -> Result<()> {
        let wall = crate::now_ms();
        // Lock order: redb write transaction → live (as the pipeline's checkpoint).
        let tx = self.store.db.begin_write()?;
        {
            let mut outbox = tx.open_table(OUTBOX)?;
            let mut published = tx.open_table(PUBLISHED)?;
            let mut live = live::lock(&self.live);
            for Ack {
                key,
                version,
                user,
                written,
            } in acks
            {
                let version = *version;
                if delete {
                    published.remove(key.as_str())?;
                } else if *written {
                    let have = published.get(key.as_str())?.map(|v| v.value()).unwrap_or(0);
                    if version > have {
                        published.insert(key.as_str(), version)?;
                    }
                }
                let covered = match outbox.get(key.as_str())? {
                    Some(v) => {
                        let e = OutboxEntry::decode(v.value())?;
                        if delete {
                            e.op == Op::Delete
                        } else {
                            e.op == Op::Put && e.version <= version
                        }
                    }
                    None => false,
                };
                if covered {
                    outbox.remove(key.as_str())?;
                }
                match user {
                    Some(user) => live.ack_user(user, version),
                    None if !delete => live.ack_shared(key, version),
                    None => {
                        live.forgetting.remove(key);
                    }
                }
            }
        }
        let written: Vec<&str> = acks
            .iter()
            .filter(|a| a.written)
            .map(|a| a.key.as_str())
            .collect();
        self.record_writes(&tx, wall, &written)?;
        let mut classes = [0u64; KeyClass::ALL.len()];
        for key in &written {
            let class = if delete {
                KeyClass::Delete
            } else {
                KeyClass::of(key)
            };
            classes[class as usize] += 1;
        }
        stats::record(&tx, wall, &classes)?;
        tx.commit()?;
        Ok(())
    }

    /// Keeps `keys`' write time for the per-key interval of the next run, and drops times
    /// older than that interval.
    fn record_writes(&self, tx: &redb::WriteTransaction, wall: u64, keys: &[&str]) -> Result<()> {
        let mut t = tx.open_table(RECENT_WRITES)?;
        let cutoff = wall.saturating_sub(self.cfg.min_key_interval_ms.saturating_mul(2));
        let old: Vec<u64> = t
            .range(..cutoff)?
            .map(|r| r.map(|(k, _)| k.value()))
            .collect::<std::result::Result<_, _>>()?;
        for k in old {
            t.remove(k)?;
        }
        if keys.is_empty() {
            return Ok(());
        }
        let mut row = t.get(wall)?.map(|v| v.value().to_vec()).unwrap_or_default();
        for key in keys {
            if !row.is_empty() {
                row.push(b'\n');
            }
            row.extend_from_slice(key.as_bytes());
        }
        t.insert(wall, row.as_slice())?;
        Ok(())
    }

    async fn write_manifest(&mut self, deadline: Option<Instant>) -> Result<()> {
        let shards = self
            .model
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shards();
        let versions: Vec<(String, u64)> = self
            .store
            .published()?
            .into_iter()
            .filter(|(k, _)| !k.starts_with("p:") && k != kv::MANIFEST)
            .collect();
        let version = versions.iter().map(|v| v.1).max().unwrap_or(0);
        let manifest = Manifest { shards, versions };
        let pair = Pair {
            key: kv::MANIFEST.into(),
            value: wire::encode(&Envelope::new(version, crate::now_ms(), manifest)),
            version,
        };
        let target = self.target.clone();
        let pairs = vec![pair];
        let sent = self.send("put", deadline, || target.put(&pairs)).await?;
        if !sent.rejected.is_empty() {
            // Still pending: the next flush writes it.
            self.count_rejected(sent.rejected.len());
            return Ok(());
        }
        self.last_write.insert(kv::MANIFEST.into(), Instant::now());
        // The manifest's own version is informational; it is rewritten whenever shared keys
        // move, so it is not tracked in `published` (it would shadow the shared versions).
        let tx = self.store.db.begin_write()?;
        let wall = crate::now_ms();
        self.record_writes(&tx, wall, &[kv::MANIFEST])?;
        let mut classes = [0u64; KeyClass::ALL.len()];
        classes[KeyClass::Manifest as usize] = 1;
        stats::record(&tx, wall, &classes)?;
        tx.commit()?;
        self.count_writes(KeyClass::Manifest, 1);
        self.manifest_pending = false;
        Ok(())
    }

    /// Rewrites the checkpoint's list of waiting user publishes to what still waits, so the
    /// next open (and `inspect status`) sees the truth after a drained shutdown. Only called
    /// once the pipeline has stopped (it owns that row while it runs).
    pub fn save_pending(&self) -> Result<()> {
        let tx = self.store.db.begin_write()?;
        {
            let mut t = tx.open_table(crate::store::PENDING)?;
            let live = live::lock(&self.live);
            let mut buf = Vec::new();
            crate::store::pack_pending(
                live.unpublished
                    .values()
                    .map(|(user, u)| (&**user, u.version)),
                &mut buf,
            );
            if buf.is_empty() {
                t.remove(crate::store::PENDING_KEY)?;
            } else {
                t.insert(crate::store::PENDING_KEY, buf.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// A shared key's envelope, and the hash of its body alone.
fn encode_shared<T: serde::Serialize>(version: u64, wall: u64, body: T) -> (Vec<u8>, u64) {
    let hash = xxhash_rust::xxh3::xxh3_64(&wire::encode(&Envelope::new(0, 0, &body)));
    (wire::encode(&Envelope::new(version, wall, body)), hash)
}
