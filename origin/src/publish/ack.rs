//! The bookkeeping of what KV acknowledged: `published` versions, the outbox rows and waiting
//! publishes a write covers, each key's write time (for the per-key interval across restarts)
//! and the hash of each shared body, kept in the store and restored at start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::Publisher;
use super::stats::{self, KeyClass};
use crate::error::Result;
use crate::store::{OUTBOX, Op, OutboxEntry, PUBLISHED};
use crate::stream::live;

/// Wall time (ms) of a write → the KV keys it wrote, `\n`-separated: what the per-key
/// interval needs to survive a restart. Rows older than the interval are pruned as new ones
/// are added.
const RECENT_WRITES: TableDefinition<u64, &[u8]> = TableDefinition::new("publish_recent_writes");

/// Shared KV key → hash of the body KV holds (a restart does not rewrite unchanged content).
pub(super) const SHARED_HASHES: TableDefinition<&str, u64> =
    TableDefinition::new("publish_shared_hashes");

/// What a write acknowledges besides the KV key: the user of a `p:` key, so its waiting
/// publish can be dropped (the next checkpoint's `PENDING` row no longer lists it).
#[derive(Clone, Debug)]
pub(super) struct Ack {
    pub(super) key: String,
    pub(super) version: u64,
    pub(super) user: Option<Arc<str>>,
    /// KV was written at `version` (false: the entry was stale and is only dropped).
    pub(super) written: bool,
}

impl Ack {
    /// A waiting entry that needs no write (KV holds that version or newer, or the state is
    /// gone): it is only dropped.
    pub(super) fn stale(key: String, version: u64, user: Option<Arc<str>>) -> Self {
        Ack {
            key,
            version,
            user,
            written: false,
        }
    }
}

impl Publisher {
    /// Reads the hashes of the shared bodies KV holds.
    pub(super) fn restore_shared_hashes(&mut self) {
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
    pub(super) fn restore_recent_writes(&mut self) {
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

    /// Records what KV now holds and drops the waiting publishes it covers (outbox rows and
    /// the in-memory entries); the time of each write goes to `RECENT_WRITES` in the same
    /// transaction.
    pub(super) fn ack(&self, acks: &[Ack], delete: bool) -> Result<()> {
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
    pub(super) fn record_writes(
        &self,
        tx: &redb::WriteTransaction,
        wall: u64,
        keys: &[&str],
    ) -> Result<()> {
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
