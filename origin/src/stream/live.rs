//! What the pipeline has applied but not yet checkpointed, shared (behind one mutex) with the
//! publisher and the privacy delete.
//!
//! The pipeline applies micro-batches in memory and makes them durable in **checkpoints**: one
//! redb transaction with every user state, dedup key, offset, watermark, counter, model change,
//! dead letter and pending publish changed since the previous one (see `pipeline.rs`). Between
//! checkpoints the newest user states live only here, so:
//! - the publisher reads a changed user's state from [`Live::users`] (the store's copy may be a
//!   checkpoint behind) and publishes what [`Live::unpublished`] lists, without waiting for a
//!   checkpoint (freshness does not depend on the checkpoint interval);
//! - a crash loses nothing: the log is durable and the pipeline replays it from the
//!   checkpointed offset, deterministically, so the replay recomputes the same user states and
//!   versions (KV may already hold some of them; the publisher never rewrites a version KV has);
//! - a forget is a record in the log: the pipeline applies it at its position (removes the
//!   user here, and from the store and KV at the next checkpoint), so a replay does exactly
//!   what the first run did.

use std::collections::HashMap;
use std::sync::Arc;

use crate::store::UserState;
use foldhash::{HashMap as FoldHashMap, HashSet as FoldHashSet};

/// The key users are held under in memory and in the store: xxh3-128 of the user id. A
/// lookup compares 16 bytes inside the map instead of following a pointer to the id (a cache
/// miss per lookup, three lookups per event).
pub use crate::store::{UserKey, user_key};

/// A user state the pipeline holds decoded.
#[derive(Debug)]
pub struct Cached {
    /// The user (the map's key, shared).
    pub user: Arc<str>,
    pub state: Box<UserState>,
    /// Micro-batch number of the last use (eviction order).
    pub used: u64,
    /// Micro-batch number that last changed it (marks it dirty once per micro-batch).
    pub dirty_in: u64,
    /// Changed since the last checkpoint (never evicted while set).
    pub unsaved: bool,
}

impl Cached {
    /// A state just loaded (or started) by micro-batch `batch_no`.
    pub fn new(user: Arc<str>, state: UserState, batch_no: u64) -> Self {
        Cached {
            user,
            state: Box::new(state),
            used: batch_no,
            dirty_in: 0,
            unsaved: false,
        }
    }
}

/// A publish waiting for KV: the version to publish (at least) and the earliest ingest time of
/// the changes it carries (freshness).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unpublished {
    pub version: u64,
    pub accepted_ms: u64,
}

impl Unpublished {
    /// Folds a newer change into a waiting publish.
    pub fn merge(&mut self, version: u64, accepted_ms: u64) {
        self.version = self.version.max(version);
        self.accepted_ms = self.accepted_ms.min(accepted_ms);
    }
}

#[derive(Debug, Default)]
pub struct Live {
    /// Decoded user states: every user changed since the last checkpoint, plus a bounded
    /// number of clean ones (least recently used evicted).
    pub users: FoldHashMap<UserKey, Cached>,
    /// Users whose newest state KV has not acknowledged yet.
    pub unpublished: FoldHashMap<UserKey, (Arc<str>, Unpublished)>,
    /// Shared keys (neighbour shards, trending) changed by micro-batches and not yet
    /// acknowledged by KV.
    pub shared: HashMap<String, Unpublished>,
    /// `p:` keys of users forgotten whose KV delete has not gone out yet (the publisher removes
    /// a key when KV acknowledges its delete): the publisher holds back a new profile of theirs
    /// until then, since a put first would be deleted, or skipped as older than the old
    /// profile's version. Not persisted: after a restart the outbox's delete, or the replayed
    /// forget, does the same.
    pub forgetting: std::collections::HashSet<String>,
    /// Every user the store holds a state for (loaded at open, kept by checkpoints and
    /// forgets): a user not in it is new, and the pipeline starts it without a B-tree lookup
    /// (first visits are common; the lookup of a missing key was a measurable share of them).
    pub stored: FoldHashSet<UserKey>,
    /// The rules in force at the pipeline's position in the log: what `cfg` publishes
    /// (the built-in defaults until a rules record was applied).
    pub rules: Arc<attune_core::rules::Config>,
    /// Kafka scale-out: another instance (the owner of partition 0) publishes the shared keys;
    /// this one publishes only its own users.
    pub shared_keys_elsewhere: bool,
}

impl Live {
    /// Drops what KV acknowledged: a user's or shared key's entry goes once KV holds its
    /// version (a newer change keeps it waiting).
    pub fn ack_user(&mut self, user: &str, version: u64) {
        let key = user_key(user);
        if self
            .unpublished
            .get(&key)
            .is_some_and(|(_, u)| u.version <= version)
        {
            self.unpublished.remove(&key);
        }
    }

    pub fn ack_shared(&mut self, key: &str, version: u64) {
        if self.shared.get(key).is_some_and(|u| u.version <= version) {
            self.shared.remove(key);
        }
    }

    /// Waiting publishes (users and shared keys).
    pub fn unpublished_len(&self) -> usize {
        self.unpublished.len() + self.shared.len()
    }

    /// The newest state of `user` if it is held here.
    pub fn user(&self, user: &str) -> Option<&UserState> {
        self.users.get(&user_key(user)).map(|c| &*c.state)
    }
}

/// The shared handle.
pub type SharedLive = Arc<std::sync::Mutex<Live>>;

/// Locks, recovering from a poisoned lock (the data has no invariant a panic could break
/// halfway that the next checkpoint would not rewrite).
pub fn lock(live: &SharedLive) -> std::sync::MutexGuard<'_, Live> {
    live.lock().unwrap_or_else(|e| e.into_inner())
}
