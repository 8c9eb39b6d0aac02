//! The user-state operator: the users changed and forgotten since the last checkpoint. The
//! states themselves live in [`Live`] (shared with the publisher); its part of a checkpoint is
//! every changed user's row, the pending user publishes, the shared keys waiting (queued in
//! [`Live`] too), and each forget (the row removed, the KV delete queued, the log erasure
//! recorded). After a checkpoint it keeps memory within its capacity.

use std::sync::Arc;

use foldhash::HashMap as FoldHashMap;

use super::live::{self, Live, SharedLive, UserKey, user_key};
use super::warm::{WARM_AHEAD, warm};
use crate::error::Result;
use crate::store::{CheckpointWriter, Forget, encode_user_row, pack_pending};

#[derive(Debug)]
pub(super) struct UserStates {
    live: SharedLive,
    /// Users changed since the last checkpoint (each once).
    unsaved: Vec<UserKey>,
    /// Users forgotten since the last checkpoint → (user, offset of the forget record); the
    /// checkpoint queues their KV deletes and their erasure from the log.
    forgotten: FoldHashMap<UserKey, (Arc<str>, u64)>,
    /// Keyed-hash secret of the `p:` keys (a forget queues the KV delete).
    profile_secret: String,
    /// Whether forgotten users' records are erased from the log (the embedded log is the
    /// source).
    erase: bool,
    /// Most user states held in memory after a checkpoint.
    cache_cap: usize,
}

/// What a checkpoint writes from [`Live`], encoded while holding its lock.
#[derive(Debug, Default)]
struct EncodedUsers {
    /// Users and the span of their encoded row in `bytes`, in key order.
    users: Vec<(UserKey, std::ops::Range<usize>)>,
    bytes: Vec<u8>,
    /// The packed pending-publishes row.
    pending: Vec<u8>,
    /// Shared keys waiting: (key, version, accepted).
    shared: Vec<(String, u64, u64)>,
    /// Users forgotten since the last checkpoint.
    forgotten: Vec<Forgotten>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Forgotten {
    key: UserKey,
    user: std::sync::Arc<str>,
    /// Offset of the forget record.
    at: u64,
    /// The `p:` KV key.
    kv_key: String,
    /// Back since the forget (a new state replaces the old row).
    back: bool,
}

impl UserStates {
    pub(super) fn new(
        live: SharedLive,
        profile_secret: String,
        erase: bool,
        cache_cap: usize,
    ) -> Self {
        UserStates {
            live,
            unsaved: Vec::new(),
            forgotten: FoldHashMap::default(),
            profile_secret,
            erase,
            cache_cap: cache_cap.max(1),
        }
    }

    /// Notes a user changed since the last checkpoint (call once per user: the caller keeps
    /// [`live::Cached::unsaved`]).
    pub(super) fn changed(&mut self, key: UserKey) {
        self.unsaved.push(key);
    }

    /// Users changed since the last checkpoint.
    pub(super) fn unsaved_keys(&self) -> &[UserKey] {
        &self.unsaved
    }

    /// Users forgotten since the last checkpoint.
    pub(super) fn forgotten_users(&self) -> impl Iterator<Item = (&UserKey, &str)> {
        self.forgotten.iter().map(|(k, (u, _))| (k, &**u))
    }

    pub(super) fn unsaved_len(&self) -> usize {
        self.unsaved.len()
    }

    /// Whether a user changed or was forgotten since the last checkpoint.
    pub(super) fn has_unsaved(&self) -> bool {
        !self.unsaved.is_empty() || !self.forgotten.is_empty()
    }

    /// Privacy delete at offset `at`: the user's state leaves memory now, the store and KV at
    /// the next checkpoint.
    pub(super) fn forget(&mut self, user: &str, at: u64) {
        let key = user_key(user);
        let mut live = live::lock(&self.live);
        live.users.remove(&key);
        live.stored.remove(&key);
        live.unpublished.remove(&key);
        live.forgetting.insert(attune_core::hash::profile_key(
            self.profile_secret.as_bytes(),
            user,
        ));
        self.forgotten.insert(key, (Arc::from(user), at));
    }

    /// Writes this operator's part of the checkpoint (with the shared keys waiting in
    /// [`Live`] when `shared_changed`). Encodes under the live lock, writes after releasing
    /// it: the publisher reads live while the B-tree inserts and the fsync run.
    pub(super) fn checkpoint(&mut self, tx: &CheckpointWriter, shared_changed: bool) -> Result<()> {
        let encoded = self.encode(shared_changed)?;
        self.write(tx, &encoded)
    }

    /// The checkpoint committed: starts the next one. Answers whether it held forgets (their
    /// records are now to be erased from the log).
    pub(super) fn committed(&mut self) -> bool {
        self.unsaved.clear();
        let forgot = !self.forgotten.is_empty();
        self.forgotten.clear();
        forgot
    }

    /// Encodes what the checkpoint writes from [`Live`]: every user changed since the last
    /// checkpoint (in user order, so the transaction's writes are deterministic), the waiting
    /// user publishes, the waiting shared keys, and the forgets a replay can no longer reach.
    fn encode(&mut self, shared_changed: bool) -> Result<EncodedUsers> {
        let mut out = EncodedUsers::default();
        let live_arc = self.live.clone();
        let mut live = live::lock(&live_arc);
        let Live {
            users,
            unpublished,
            shared,
            stored,
            ..
        } = &mut *live;
        let mut rows: Vec<(UserKey, std::ops::Range<usize>)> =
            Vec::with_capacity(self.unsaved.len());
        let keys = &self.unsaved;
        // Room for typical rows up front (pages are only touched as they are written): growing
        // from empty copied the buffer again at every doubling, at every checkpoint.
        out.bytes.reserve(keys.len() * 256);
        for chunk in keys.chunks(WARM_AHEAD) {
            warm(users, None, chunk.iter());
            for key in chunk {
                // Absent: forgotten since it changed.
                let Some(c) = users.get_mut(key) else {
                    continue;
                };
                // Counted as stored before the write: a key too many (a failed commit) only
                // costs a lookup that finds nothing; a key missing would start a stored user
                // afresh.
                stored.insert(*key);
                c.unsaved = false;
                let start = out.bytes.len();
                encode_user_row(&c.user, &c.state, &mut out.bytes);
                rows.push((*key, start..out.bytes.len()));
            }
        }
        // B-tree order: the inserts then walk its leaves once.
        rows.sort_unstable_by_key(|r| r.0);
        out.users = rows;
        pack_pending(
            unpublished.values().map(|(u, p)| (&**u, p.version)),
            &mut out.pending,
        );
        if shared_changed {
            out.shared = shared
                .iter()
                .map(|(k, u)| (k.clone(), u.version, u.accepted_ms))
                .collect();
        }
        // A user back since the forget has a new state, written above over the old row.
        out.forgotten = self
            .forgotten
            .iter()
            .map(|(key, (user, at))| Forgotten {
                key: *key,
                user: user.clone(),
                at: *at,
                kv_key: attune_core::hash::profile_key(self.profile_secret.as_bytes(), user),
                back: users.contains_key(key),
            })
            .collect();
        out.forgotten.sort_unstable();
        Ok(out)
    }

    fn write(&self, tx: &CheckpointWriter, e: &EncodedUsers) -> Result<()> {
        tx.put_users(
            e.users
                .iter()
                .map(|(key, span)| (*key, &e.bytes[span.clone()])),
        )?;
        tx.put_pending(&e.pending)?;
        if !e.shared.is_empty() {
            tx.enqueue_shared_versions(e.shared.iter().map(|(k, v, a)| (k.as_str(), *v, *a)))?;
        }
        for f in &e.forgotten {
            let forget = Forget {
                key: f.key,
                user: &f.user,
                at: f.at,
                kv_key: &f.kv_key,
                back: f.back,
                erase: self.erase,
            };
            tx.put_forget(forget, crate::now_ms())?;
        }
        Ok(())
    }

    /// Keeps memory within its capacity: drops the least recently used quarter of the clean
    /// user states (states changed since the checkpoint stay).
    pub(super) fn evict(&self) {
        let mut live = live::lock(&self.live);
        if live.users.len() <= self.cache_cap {
            return;
        }
        let keep = self.cache_cap - self.cache_cap / 4;
        let mut used: Vec<u64> = live.users.values().map(|c| c.used).collect();
        let drop_n = used.len() - keep;
        let (_, nth, _) = used.select_nth_unstable(drop_n);
        let threshold = *nth;
        live.users.retain(|_, c| c.unsaved || c.used >= threshold);
    }
}
