//! The checkpoint writer: one redb write transaction with a typed method for each part of a
//! checkpoint. Each stream operator writes its own part through it (dedup keys, watermarks,
//! user states, model changes, dead letters, the outbox); nothing is visible until
//! [`CheckpointWriter::commit`], so a crash leaves all of a checkpoint or none of it. The node's
//! admin writes (rules, full publish) use it too.
//!
//! Each method opens the tables it needs and closes them before returning (redb refuses to
//! open a table twice in one transaction), so methods can be called in any order.

use attune_core::CatalogItem;
use redb::{ReadableTable, WriteTransaction};

use super::tables::*;
use super::{DlqRecord, Op, OutboxEntry, Store, UserKey, keys, user_row_id};
use crate::error::Result;

/// A checkpoint being written (see the module docs).
pub struct CheckpointWriter {
    tx: WriteTransaction,
}

impl std::fmt::Debug for CheckpointWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointWriter").finish_non_exhaustive()
    }
}

impl Store {
    /// Starts a checkpoint (waits for any other writer to commit).
    pub fn begin_checkpoint(&self) -> Result<CheckpointWriter> {
        Ok(CheckpointWriter {
            tx: self.db.begin_write()?,
        })
    }
}

impl CheckpointWriter {
    /// Makes everything written durable, at once.
    pub fn commit(self) -> Result<()> {
        self.tx.commit()?;
        Ok(())
    }

    /// A named counter as this checkpoint has it so far.
    pub fn counter(&self, key: &str) -> Result<Option<u64>> {
        Ok(self.tx.open_table(META)?.get(key)?.map(|v| v.value()))
    }

    pub fn put_counter(&self, key: &str, value: u64) -> Result<()> {
        self.tx.open_table(META)?.insert(key, value)?;
        Ok(())
    }

    /// Adds to named counters (a zero adds nothing and writes nothing).
    pub fn add_counters(&self, adds: &[(&str, u64)]) -> Result<()> {
        let mut meta = self.tx.open_table(META)?;
        for (key, add) in adds {
            if *add > 0 {
                let v = meta.get(*key)?.map(|v| v.value()).unwrap_or(0);
                meta.insert(*key, v + add)?;
            }
        }
        Ok(())
    }

    /// The log offset the checkpoint covers for `source`.
    pub fn put_offset(&self, source: &str, offset: u64) -> Result<()> {
        self.put_counter(&keys::offset(source), offset)
    }

    /// The watermark operator's part: each source's watermark.
    pub fn put_watermarks<'a>(
        &self,
        by_source: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> Result<()> {
        let mut meta = self.tx.open_table(META)?;
        for (source, wm) in by_source {
            meta.insert(keys::watermark(source).as_str(), wm)?;
        }
        Ok(())
    }

    /// The dedup operator's part: the keys added since the last checkpoint as dedup row `row`
    /// (packed entries, the newest event time among them), and the next row number.
    pub fn put_dedup(&self, newest: u64, row: u64, packed: &[u8]) -> Result<()> {
        self.tx
            .open_table(DEDUP_LOG)?
            .insert((newest, row), packed)?;
        self.put_counter(keys::DEDUP_ROW, row + 1)
    }

    /// Deletes the dedup rows whose newest key is older than `cutoff`.
    pub fn prune_dedup(&self, cutoff: u64) -> Result<()> {
        self.tx
            .open_table(DEDUP_LOG)?
            .retain_in(..(cutoff, 0), |_, _| false)?;
        Ok(())
    }

    /// User rows (`encode_user_row`), best in key order (the inserts then walk the B-tree's
    /// leaves once).
    pub fn put_users<'a>(&self, rows: impl IntoIterator<Item = (UserKey, &'a [u8])>) -> Result<()> {
        let mut users = self.tx.open_table(USERS)?;
        for (key, row) in rows {
            users.insert(key, row)?;
        }
        Ok(())
    }

    /// The user publishes waiting for KV (`pack_pending`), replacing the previous ones.
    pub fn put_pending(&self, packed: &[u8]) -> Result<()> {
        self.tx.open_table(PENDING)?.insert(PENDING_KEY, packed)?;
        Ok(())
    }

    /// A forgotten user: their row goes (unless `back`, when a new state replaced it), their
    /// records before `at` are to be erased from the log (if `erase`), and the KV delete of
    /// `kv_key` is queued (replacing anything waiting for the key).
    pub fn put_forget(&self, forget: Forget<'_>, now: u64) -> Result<()> {
        if !forget.back {
            self.tx.open_table(USERS)?.remove(forget.key)?;
        }
        if forget.erase {
            self.tx.open_table(ERASE)?.insert(forget.user, forget.at)?;
        }
        let entry = OutboxEntry {
            op: Op::Delete,
            version: 0,
            accepted_ms: now,
            user: None,
        };
        self.tx
            .open_table(OUTBOX)?
            .insert(forget.kv_key, entry.encode()?.as_slice())?;
        Ok(())
    }

    /// Queues shared keys (model shards, trending, config) for publishing at `version`;
    /// returns how many were queued.
    pub fn enqueue_shared(
        &self,
        keys: impl IntoIterator<Item = String>,
        version: u64,
        now: u64,
    ) -> Result<usize> {
        let mut outbox = self.tx.open_table(OUTBOX)?;
        let mut n = 0;
        for key in keys {
            outbox_put(&mut outbox, &key, put(version, now, None))?;
            n += 1;
        }
        Ok(n)
    }

    /// Queues shared keys each at its own version: (key, version, accepted).
    pub fn enqueue_shared_versions<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a str, u64, u64)>,
    ) -> Result<()> {
        let mut outbox = self.tx.open_table(OUTBOX)?;
        for (key, version, accepted) in entries {
            outbox_put(&mut outbox, key, put(version, accepted, None))?;
        }
        Ok(())
    }

    /// The rules in force from this checkpoint on (JSON), and their `cfg` version.
    pub fn put_rules(&self, json: &[u8], version: u64) -> Result<()> {
        self.tx.open_table(RULES)?.insert(RULES_KEY, json)?;
        self.tx
            .open_table(META)?
            .insert(keys::CFG_VERSION, version)?;
        Ok(())
    }

    /// Whether `key` is in KV or waiting to be published.
    pub fn published_or_queued(&self, key: &str) -> Result<bool> {
        Ok(self.tx.open_table(PUBLISHED)?.get(key)?.is_some()
            || self.tx.open_table(OUTBOX)?.get(key)?.is_some())
    }

    /// Forgets that KV holds `key` (so it is published again whatever its version).
    pub fn unpublish(&self, key: &str) -> Result<()> {
        self.tx.open_table(PUBLISHED)?.remove(key)?;
        Ok(())
    }

    /// Queues every stored user's profile for publishing again under `kv_key(user)`; returns
    /// how many.
    pub fn requeue_users(&self, kv_key: impl Fn(&str) -> String, now: u64) -> Result<usize> {
        let users = self.tx.open_table(USERS)?;
        let mut outbox = self.tx.open_table(OUTBOX)?;
        let mut published = self.tx.open_table(PUBLISHED)?;
        let mut n = 0;
        for row in users.iter()? {
            let (_, v) = row?;
            let (user, state) = user_row_id(v.value())?;
            let state = super::UserState::decode(state)?;
            let key = kv_key(user);
            published.remove(key.as_str())?;
            let entry = put(state.profile.version, now, Some(user.to_string()));
            outbox_put(&mut outbox, &key, entry)?;
            n += 1;
        }
        Ok(n)
    }

    /// New dead letters, and the last dead-letter sequence number used.
    pub fn put_dead_letters(&self, dead: &[DlqRecord], last_seq: u64) -> Result<()> {
        if dead.is_empty() {
            return Ok(());
        }
        let mut dlq = self.tx.open_table(DLQ)?;
        for d in dead {
            dlq.insert(d.seq, serde_json::to_vec(d)?.as_slice())?;
        }
        drop(dlq);
        self.put_counter(keys::DLQ_SEQ, last_seq)
    }

    /// Deletes the dead letters accepted before `cutoff`, oldest first (sequence order is
    /// acceptance order), at most `max` of them.
    pub fn expire_dead_letters(&self, cutoff: u64, max: usize) -> Result<u64> {
        let mut dlq = self.tx.open_table(DLQ)?;
        let mut expired = Vec::new();
        for row in dlq.iter()?.take(max) {
            let (seq, v) = row?;
            let d: DlqRecord = serde_json::from_slice(v.value())?;
            if d.accepted_ms >= cutoff {
                break;
            }
            expired.push(seq.value());
        }
        for seq in &expired {
            dlq.remove(seq)?;
        }
        Ok(expired.len() as u64)
    }

    /// The model's part, in pieces the model writes as it walks its changes.
    pub fn model(&self) -> ModelDelta<'_> {
        ModelDelta { tx: &self.tx }
    }
}

/// One forgotten user, for [`CheckpointWriter::put_forget`].
#[derive(Debug)]
pub struct Forget<'a> {
    pub key: UserKey,
    pub user: &'a str,
    /// Offset of the forget record.
    pub at: u64,
    /// The user's `p:` KV key.
    pub kv_key: &'a str,
    /// Back since the forget: a new state replaces the old row.
    pub back: bool,
    /// Whether the user's records are to be erased from a log.
    pub erase: bool,
}

/// The model's writes in a checkpoint ([`CheckpointWriter::model`]).
pub struct ModelDelta<'a> {
    tx: &'a WriteTransaction,
}

impl std::fmt::Debug for ModelDelta<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelDelta").finish_non_exhaustive()
    }
}

impl ModelDelta<'_> {
    /// The model's change sequence.
    pub fn put_seq(&self, seq: u64) -> Result<()> {
        self.tx.open_table(META)?.insert(keys::MODEL_SEQ, seq)?;
        Ok(())
    }

    /// Catalog entries, by item.
    pub fn put_catalog<'i>(
        &self,
        items: impl IntoIterator<Item = (&'i str, &'i CatalogItem)>,
    ) -> Result<()> {
        let mut t = self.tx.open_table(CATALOG)?;
        for (id, item) in items {
            t.insert(id, rmp_serde::to_vec_named(item)?.as_slice())?;
        }
        Ok(())
    }

    /// Interned item names from id `first` on.
    pub fn put_item_names<'i>(
        &self,
        first: u32,
        names: impl IntoIterator<Item = &'i str>,
    ) -> Result<()> {
        let mut t = self.tx.open_table(ITEMS)?;
        for (id, name) in (first..).zip(names) {
            t.insert(id, name)?;
        }
        Ok(())
    }

    /// item → number of user histories it entered.
    pub fn put_item_counts<'i>(
        &self,
        counts: impl IntoIterator<Item = (&'i str, u64)>,
    ) -> Result<()> {
        let mut t = self.tx.open_table(ITEM_COUNTS)?;
        for (item, n) in counts {
            t.insert(item, n)?;
        }
        Ok(())
    }

    /// item → (decayed trend score, reference time of the score).
    pub fn put_trends<'i>(
        &self,
        trends: impl IntoIterator<Item = (&'i str, (f64, u64))>,
    ) -> Result<()> {
        let mut t = self.tx.open_table(TREND)?;
        for (item, trend) in trends {
            t.insert(item, trend)?;
        }
        Ok(())
    }

    /// Empties the co-occurrence log (a compaction rewrites it whole).
    pub fn clear_pair_log(&self) -> Result<()> {
        self.tx.open_table(PAIR_LOG)?.retain(|_, _| false)?;
        Ok(())
    }

    /// One co-occurrence log record (packed `[a][b][count]` entries) at `seq`.
    pub fn put_pair_record(&self, seq: u64, packed: &[u8]) -> Result<()> {
        self.tx.open_table(PAIR_LOG)?.insert(seq, packed)?;
        Ok(())
    }
}

fn put(version: u64, now: u64, user: Option<String>) -> OutboxEntry {
    OutboxEntry {
        op: Op::Put,
        version,
        accepted_ms: now,
        user,
    }
}

/// Merges a pending publish into the outbox: the newest version, the earliest acceptance.
fn outbox_put(table: &mut redb::Table<&str, &[u8]>, key: &str, entry: OutboxEntry) -> Result<()> {
    let merged = match table.get(key)? {
        Some(old) => {
            let old = OutboxEntry::decode(old.value())?;
            OutboxEntry {
                accepted_ms: old.accepted_ms.min(entry.accepted_ms),
                ..entry
            }
        }
        None => entry,
    };
    table.insert(key, merged.encode()?.as_slice())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        (dir, store)
    }

    /// What operators write is read back by the reader only once committed, and a writer
    /// dropped without committing leaves nothing.
    #[test]
    fn parts_are_visible_only_once_committed() {
        let (_dir, store) = store();
        let tx = store.begin_checkpoint().unwrap();
        tx.put_watermarks([("a", 7), ("b", 9)]).unwrap();
        tx.put_dedup(100, 0, &[1; 24]).unwrap();
        tx.put_offset("a", 42).unwrap();
        drop(tx);
        let r = store.read_checkpoint().unwrap();
        assert!(r.watermarks().unwrap().is_empty());
        assert_eq!(r.counter(&keys::offset("a")).unwrap(), 0);
        drop(r);

        let tx = store.begin_checkpoint().unwrap();
        tx.put_watermarks([("a", 7), ("b", 9)]).unwrap();
        tx.put_dedup(100, 0, &[1; 24]).unwrap();
        tx.put_dedup(300, 1, &[2; 24]).unwrap();
        tx.put_offset("a", 42).unwrap();
        tx.add_counters(&[(keys::APPLIED, 3), (keys::LATE, 0)])
            .unwrap();
        tx.add_counters(&[(keys::APPLIED, 2)]).unwrap();
        tx.commit().unwrap();
        let r = store.read_checkpoint().unwrap();
        let mut wm = r.watermarks().unwrap();
        wm.sort();
        assert_eq!(wm, vec![("a".to_string(), 7), ("b".to_string(), 9)]);
        assert_eq!(r.counter(&keys::offset("a")).unwrap(), 42);
        assert_eq!(r.counter(keys::APPLIED).unwrap(), 5);
        assert_eq!(r.counter(keys::DEDUP_ROW).unwrap(), 2);
        let mut rows = Vec::new();
        r.dedup_rows(0, |row| rows.push(row[0])).unwrap();
        assert_eq!(rows, vec![1, 2]);
        drop(r);

        // Pruning drops the rows whose newest key is behind the cutoff, only those.
        let tx = store.begin_checkpoint().unwrap();
        tx.prune_dedup(200).unwrap();
        tx.commit().unwrap();
        let mut rows = Vec::new();
        store
            .read_checkpoint()
            .unwrap()
            .dedup_rows(0, |row| rows.push(row[0]))
            .unwrap();
        assert_eq!(rows, vec![2]);
    }

    /// Shared keys merge in the outbox: the newest version, the earliest acceptance; a forget
    /// replaces whatever waits for its key with a delete and removes the user's row.
    #[test]
    fn outbox_merges_and_forgets_replace() {
        let (_dir, store) = store();
        let mut row = Vec::new();
        super::super::encode_user_row("u", &super::super::UserState::default(), &mut row);
        let key = super::super::user_key("u");
        let tx = store.begin_checkpoint().unwrap();
        tx.put_users([(key, row.as_slice())]).unwrap();
        tx.enqueue_shared(["t".to_string()], 1, 50).unwrap();
        tx.enqueue_shared_versions([("t", 2, 80), ("p:u", 3, 10)])
            .unwrap();
        tx.commit().unwrap();
        let t = store.queued("t").unwrap().unwrap();
        assert_eq!((t.op, t.version, t.accepted_ms), (Op::Put, 2, 50));
        assert!(store.user("u").unwrap().is_some());

        let tx = store.begin_checkpoint().unwrap();
        let forget = Forget {
            key,
            user: "u",
            at: 5,
            kv_key: "p:u",
            back: false,
            erase: true,
        };
        tx.put_forget(forget, 99).unwrap();
        tx.commit().unwrap();
        let p = store.queued("p:u").unwrap().unwrap();
        assert_eq!((p.op, p.accepted_ms), (Op::Delete, 99));
        assert!(store.user("u").unwrap().is_none());
        assert_eq!(store.erase_due(6).unwrap().get("u"), Some(&5));
        assert!(store.erase_due(5).unwrap().is_empty());
    }
}
