//! One flush: collects what waits (the outbox and the pipeline's in-memory changes), builds
//! each value from the newest state, and sends deletes, then profiles, then shared keys, then
//! the manifest, in as few bulk requests as the limits allow.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use attune_core::hash::profile_key;
use attune_core::model::keys as kv;
use attune_core::wire::{self, Envelope};
use attune_core::{CatalogShard, NeighbourShard, Trending};
use redb::{ReadableDatabase, ReadableTable};

use super::ack::Ack;
use super::stats::KeyClass;
use super::{Pair, Publisher};
use crate::error::Result;
use crate::store::{OUTBOX, Op, OutboxEntry, PUBLISHED, USERS, decode_user_row, user_key};
use crate::stream::live;

/// Most user publishes one flush prepares (the rest wait for the next flush).
const MAX_PUTS_PER_FLUSH: usize = 50_000;

/// A user publish being prepared: (user, KV key, waiting version, accepted, the state if
/// memory holds it).
type WaitingUser = (Arc<str>, String, u64, u64, Option<attune_core::Profile>);

/// A pair on its way, with what its acknowledgement needs.
#[derive(Clone, Debug)]
pub(super) struct Item {
    pub(super) pair: Pair,
    /// Earliest ingest time among the changes it carries (freshness).
    pub(super) accepted: u64,
    pub(super) user: Option<Arc<str>>,
    /// Content hash of a shared key's body (unchanged content is not written again).
    pub(super) hash: Option<u64>,
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
        // Scaled out, the owner of partition 0 publishes the shared keys; the others keep them
        // waiting, for the day the group hands them that partition.
        let elsewhere = live::lock(&self.live).shared_keys_elsewhere;
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
                    && (elsewhere || !with_shared && published.get(key.as_str())?.is_some())
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
                    if elsewhere || !with_shared && published.get(key.as_str())?.is_some() {
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
                    // The rules the pipeline applied, not the process's config: `cfg`'s
                    // version counts rules records applied.
                    let rules = live::lock(&self.live).rules.clone();
                    Some(encode_shared(version, wall, &*rules))
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
        if self.manifest_pending && !elsewhere {
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
}

/// A shared key's envelope, and the hash of its body alone.
fn encode_shared<T: serde::Serialize>(version: u64, wall: u64, body: T) -> (Vec<u8>, u64) {
    let hash = xxhash_rust::xxh3::xxh3_64(&wire::encode(&Envelope::new(0, 0, &body)));
    (wire::encode(&Envelope::new(version, wall, body)), hash)
}
