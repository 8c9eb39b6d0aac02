//! The KV publisher: drains what waits into bulk writes: the persistent outbox (shared keys,
//! deletes, full re-publishes) and the user publishes the pipeline handed over in [`Live`]
//! (checkpointed in `PENDING`, so a crash loses none).
//!
//! [`Live`]: crate::stream::live::Live
//!
//! - Coalesces: what waits is keys; the value is the key's newest state at publish time (a
//!   user's from memory when the pipeline holds it, else from the store).
//! - At most one write per key per `min_key_interval_ms`; deferred keys stay in the outbox.
//! - Bulk requests of at most `max_pairs` (≤ 10,000) pairs and `max_request_bytes` (≤ 100 MB),
//!   values base64 with metadata `{"v": version}`.
//! - Retries 429/5xx/timeouts with exponential backoff and full jitter, honouring
//!   `Retry-After`; a key leaves the outbox only after KV acknowledged it.
//! - Never an older version over a newer one: `published` remembers what KV holds.
//! - Deletes (forgotten users) go through `POST …/bulk/delete`.
//! - The manifest `m` is written last, after the shared keys it names.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attune_core::hash::profile_key;
use attune_core::model::keys as kv;
use attune_core::wire::{self, Envelope};
use attune_core::{CatalogShard, Manifest, NeighbourShard, Trending};
use rand::Rng;
use redb::{ReadableDatabase, ReadableTable};

use crate::config::{Config, PublishConfig};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, labels};
use crate::model::Model;
use crate::node::Node;
use crate::store::{OUTBOX, Op, OutboxEntry, PUBLISHED, Store, USERS, decode_user_row, user_key};
use crate::stream::live::{self, SharedLive};

mod run;
mod target;

pub use run::run;
pub use target::{SendError, Target};

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
    last_write: HashMap<String, Instant>,
    /// Last write per user (their keys are HMACs: deferral is decided before computing one).
    last_write_user: HashMap<Arc<str>, Instant>,
    manifest_pending: bool,
    last_chunk_len: usize,
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
    /// Keys left in the outbox because of the per-key rate limit.
    pub deferred: usize,
}

impl Publisher {
    pub fn new(node: &Node, target: Target) -> Self {
        let cfg: &Config = &node.cfg;
        Publisher {
            store: node.store.clone(),
            model: node.model.clone(),
            live: node.live.clone(),
            metrics: node.metrics.clone(),
            target,
            cfg: cfg.publish.clone(),
            profile_secret: cfg.profile_key.as_bytes().to_vec(),
            last_write: HashMap::new(),
            last_write_user: HashMap::new(),
            manifest_pending: false,
            last_chunk_len: 0,
            rules: Arc::new(cfg.rules.clone()),
        }
    }

    /// Sends with retries until success or `deadline`.
    async fn send<F, Fut>(&self, op: &'static str, deadline: Option<Instant>, f: F) -> Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<(), SendError>>,
    {
        let mut attempt = 0u32;
        loop {
            match f().await {
                Ok(()) => {
                    self.metrics
                        .publish_requests
                        .get_or_create(&labels(&[("op", op), ("outcome", "ok")]))
                        .inc();
                    return Ok(());
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
                    if !e.retryable {
                        // A 4xx other than 429: keep the keys, try again much later.
                        wait = wait.max(Duration::from_millis(self.cfg.backoff_max_ms));
                    }
                    tracing::warn!(op, attempt, reason = e.reason, error = %e.message, ?wait, "KV request failed");
                    if let Some(d) = deadline
                        && Instant::now() + wait > d
                    {
                        return Err(Error::PublishDeadline {
                            op,
                            message: e.message,
                        });
                    }
                    self.metrics.publish_retries.inc();
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Publishes what the outbox holds (respecting the per-key interval unless `force`).
    pub async fn flush(&mut self, deadline: Option<Instant>) -> Result<FlushOutcome> {
        let mut outcome = FlushOutcome::default();
        let now = Instant::now();
        let min_gap = Duration::from_millis(self.cfg.min_key_interval_ms);
        // 1. Collect what waits: the outbox (shared keys, deletes, full re-publishes) and what
        //    the pipeline changed since (in memory), and build values from the newest state.
        let mut puts: Vec<(Pair, u64, Option<Arc<str>>)> = Vec::new();
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
                let pair = Pair {
                    key,
                    value,
                    version,
                };
                puts.push((pair, accepted, Some(user)));
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
                let value = if key == kv::TRENDING {
                    let t = trending.get_or_insert_with(|| model.trending(wall)).clone();
                    wire::encode(&Envelope::new(version, wall, t))
                } else if key == kv::CONFIG {
                    wire::encode(&Envelope::new(version, wall, &*self.rules))
                } else if let Some(s) = key.strip_prefix("n:") {
                    let shard: NeighbourShard =
                        model.neighbour_shard(s.parse().unwrap_or(u32::MAX));
                    wire::encode(&Envelope::new(version, wall, shard))
                } else if let Some(s) = key.strip_prefix("c:") {
                    let shard: CatalogShard = model.catalog_shard(s.parse().unwrap_or(u32::MAX));
                    wire::encode(&Envelope::new(version, wall, shard))
                } else {
                    stale.push(Ack::stale(key, version, None));
                    continue;
                };
                let pair = Pair {
                    key,
                    value,
                    version,
                };
                puts.push((pair, accepted, None));
            }
        }
        if !stale.is_empty() {
            self.ack(&stale, false)?;
        }
        // 2. Bulk writes, chunked by pairs and bytes.
        let mut shared_written = false;
        let mut chunk: Vec<(Pair, u64, Option<Arc<str>>)> = Vec::new();
        let mut chunk_bytes = 2usize;
        let mut pending = puts.into_iter().peekable();
        while let Some((pair, acc, user)) = pending.next() {
            let size = pair.key.len() + pair.value.len().div_ceil(3) * 4 + 80;
            if !chunk.is_empty()
                && (chunk.len() >= self.cfg.max_pairs
                    || chunk_bytes + size > self.cfg.max_request_bytes)
            {
                shared_written |= self
                    .write_chunk(std::mem::take(&mut chunk), deadline)
                    .await?;
                outcome.written += self.last_chunk_len;
                chunk_bytes = 2;
            }
            chunk_bytes += size;
            chunk.push((pair, acc, user));
            if pending.peek().is_none() {
                break;
            }
        }
        if !chunk.is_empty() {
            shared_written |= self.write_chunk(chunk, deadline).await?;
            outcome.written += self.last_chunk_len;
        }
        // 3. Deletes.
        for keys in deletes.chunks(self.cfg.max_pairs) {
            let target = self.target.clone();
            let keys_vec = keys.to_vec();
            self.send("delete", deadline, || target.delete(&keys_vec))
                .await?;
            let acks: Vec<Ack> = keys
                .iter()
                .map(|k| Ack {
                    key: k.clone(),
                    version: u64::MAX,
                    user: None,
                    written: true,
                })
                .collect();
            self.ack(&acks, true)?;
            self.metrics
                .published_keys
                .get_or_create(&labels(&[("kind", "delete")]))
                .inc_by(keys.len() as u64);
            outcome.deleted += keys.len();
        }
        // 4. The manifest, last.
        if shared_written {
            self.manifest_pending = true;
        }
        if self.manifest_pending
            && self
                .last_write
                .get(kv::MANIFEST)
                .is_none_or(|t| now.duration_since(*t) >= min_gap)
        {
            self.write_manifest(deadline).await?;
        }
        self.metrics
            .outbox_keys
            .set(self.store.outbox_len().unwrap_or(0) as i64);
        Ok(outcome)
    }

    async fn write_chunk(
        &mut self,
        chunk: Vec<(Pair, u64, Option<Arc<str>>)>,
        deadline: Option<Instant>,
    ) -> Result<bool> {
        let pairs: Vec<Pair> = chunk.iter().map(|c| c.0.clone()).collect();
        let target = self.target.clone();
        self.send("put", deadline, || target.put(&pairs)).await?;
        let wall = crate::now_ms();
        let sent = Instant::now();
        let mut shared = false;
        for (p, acc, user) in &chunk {
            match user {
                Some(user) => {
                    self.last_write_user.insert(user.clone(), sent);
                }
                None => {
                    self.last_write.insert(p.key.clone(), sent);
                }
            }
            let kind = if p.key.starts_with("p:") {
                self.metrics
                    .freshness_seconds
                    .observe(wall.saturating_sub(*acc) as f64 / 1000.0);
                "profile"
            } else {
                shared = true;
                "shared"
            };
            self.metrics
                .published_keys
                .get_or_create(&labels(&[("kind", kind)]))
                .inc();
        }
        let acks: Vec<Ack> = chunk
            .into_iter()
            .map(|(p, _, user)| Ack {
                key: p.key,
                version: p.version,
                user,
                written: true,
            })
            .collect();
        self.ack(&acks, false)?;
        self.last_chunk_len = pairs.len();
        Ok(shared)
    }

    /// Records what KV now holds and drops the waiting publishes it covers (outbox rows and
    /// the in-memory entries).
    fn ack(&self, acks: &[Ack], delete: bool) -> Result<()> {
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
        tx.commit()?;
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
        self.send("put", deadline, || target.put(&pairs)).await?;
        self.last_write.insert(kv::MANIFEST.into(), Instant::now());
        // The manifest's own version is informational; it is rewritten whenever shared keys
        // move, so it is not tracked in `published` (it would shadow the shared versions).
        self.manifest_pending = false;
        Ok(())
    }
}
