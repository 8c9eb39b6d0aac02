//! Opens stores written by earlier versions, which used redb 2 and its file format v2.
//!
//! redb 4 refuses a v2 file (`UpgradeRequired(2)`). [`from_redb2`] upgrades it in place with
//! redb 2.6's own `Database::upgrade`, after converting the one table redb 4 would read
//! differently: `pairs`, keyed by a variable-width tuple `(&str, &str)`, whose encoding changed in
//! redb 3 (redb 4 has no reader for the old one). Its rows are folded into the pair log, the
//! format the model has written since. Every other table keeps its bytes: fixed-width tuple keys
//! (`dedup_log`, `trend`) are encoded as before.
//!
//! The conversion is one redb 2 write transaction and the upgrade is redb's own, so an
//! interrupted upgrade leaves either the old file or the new one, and opening again finishes it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use redb2::{ReadableTable, TableDefinition, TableHandle};

use crate::error::{Error, Result};
use crate::model::{pair_entries, push_pair};

/// `(a, b)` with `a < b` by name → co-occurrence count (the first versions' model table).
const PAIRS: TableDefinition<(&str, &str), u64> = TableDefinition::new("pairs");
/// Interned item id → item name (dense ids); as [`crate::store::ITEMS`].
const ITEMS: TableDefinition<u32, &str> = TableDefinition::new("items");
/// Sequence → packed `[a: u32][b: u32][count: u64]` records; as [`crate::store::PAIR_LOG`].
const PAIR_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("pair_log");

/// Pairs per pair-log record written here (the model reads records of any size).
const RECORD_PAIRS: usize = 1 << 16;

fn err(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Store(format!(
        "upgrading a store written by redb 2: {context}: {e}"
    ))
}

/// Converts and upgrades the redb 2 store at `path` so that redb 4 opens it.
pub fn from_redb2(path: &Path) -> Result<()> {
    let mut db = redb2::Database::open(path).map_err(|e| err("open", e))?;
    let tx = db.begin_write().map_err(|e| err("begin", e))?;
    let has_pairs = tx
        .list_tables()
        .map_err(|e| err("list tables", e))?
        .any(|t| t.name() == PAIRS.name());
    if has_pairs {
        fold_pairs_into_log(&tx)?;
        tx.delete_table(PAIRS).map_err(|e| err("delete pairs", e))?;
    }
    tx.commit().map_err(|e| err("commit", e))?;
    db.upgrade().map_err(|e| err("file format", e))?;
    Ok(())
}

/// Rewrites the pair log as one snapshot of `pairs` overlaid with the log (the log's absolute
/// values were written later, so they win), naming items by id and interning new names.
fn fold_pairs_into_log(tx: &redb2::WriteTransaction) -> Result<()> {
    let mut items = tx.open_table(ITEMS).map_err(|e| err("items", e))?;
    let mut ids: HashMap<String, u32> = HashMap::new();
    for row in items.iter().map_err(|e| err("items", e))? {
        let (k, v) = row.map_err(|e| err("items", e))?;
        ids.insert(v.value().to_string(), k.value());
    }
    let mut next_id = items
        .last()
        .map_err(|e| err("items", e))?
        .map_or(0, |(k, _)| k.value() + 1);
    let mut counts: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    let pairs = tx.open_table(PAIRS).map_err(|e| err("pairs", e))?;
    for row in pairs.iter().map_err(|e| err("pairs", e))? {
        let (k, v) = row.map_err(|e| err("pairs", e))?;
        let (a, b) = k.value();
        let mut id_of = |name: &str| -> Result<u32> {
            if let Some(&id) = ids.get(name) {
                return Ok(id);
            }
            let id = next_id;
            items.insert(id, name).map_err(|e| err("items", e))?;
            ids.insert(name.to_string(), id);
            next_id += 1;
            Ok(id)
        };
        let (a, b) = (id_of(a)?, id_of(b)?);
        counts.insert((a.min(b), a.max(b)), v.value());
    }
    drop(pairs);
    let mut log = tx.open_table(PAIR_LOG).map_err(|e| err("pair log", e))?;
    let mut next_seq = 0;
    for row in log.iter().map_err(|e| err("pair log", e))? {
        let (k, v) = row.map_err(|e| err("pair log", e))?;
        next_seq = k.value() + 1;
        for (a, b, c) in pair_entries(v.value()) {
            counts.insert((a.min(b), a.max(b)), c);
        }
    }
    log.retain(|_, _| false).map_err(|e| err("pair log", e))?;
    let all: Vec<((u32, u32), u64)> = counts.into_iter().collect();
    for chunk in all.chunks(RECORD_PAIRS) {
        let mut buf = Vec::with_capacity(chunk.len() * 16);
        for &((a, b), c) in chunk {
            push_pair(&mut buf, a, b, c);
        }
        log.insert(next_seq, buf.as_slice())
            .map_err(|e| err("pair log", e))?;
        next_seq += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase, ReadableTable as _};

    use super::*;
    use crate::config::ModelConfig;
    use crate::model::Model;
    use crate::store::{self, Store, UserState};

    const USERS: TableDefinition<u128, &[u8]> = TableDefinition::new("users");
    const ITEM_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("item_counts");
    const TREND: TableDefinition<&str, (f64, u64)> = TableDefinition::new("trend");
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
    const DEDUP_LOG: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("dedup_log");

    fn record(entries: &[(u32, u32, u64)]) -> Vec<u8> {
        let mut buf = Vec::new();
        for &(a, b, c) in entries {
            push_pair(&mut buf, a, b, c);
        }
        buf
    }

    /// A store as an earlier version left it (redb 2, pairs by name beside a pair log) opens
    /// with every table readable, and its model equals one loaded from the same pairs written
    /// the current way.
    #[test]
    fn a_redb2_store_opens_with_the_same_contents() {
        let dir = tempfile::tempdir().unwrap();
        let old_path = dir.path().join("old.redb");
        let mut alice = UserState::default();
        alice.profile.version = 3;
        alice.recent_ids = vec![1, 0];
        let mut alice_row = Vec::new();
        store::encode_user_row("alice", &alice, &mut alice_row);
        {
            let db = redb2::Database::create(&old_path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                tx.open_table(USERS)
                    .unwrap()
                    .insert(store::user_key("alice"), alice_row.as_slice())
                    .unwrap();
                let mut items = tx.open_table(ITEMS).unwrap();
                items.insert(0, "a").unwrap();
                items.insert(1, "b").unwrap();
                let mut pairs = tx.open_table(PAIRS).unwrap();
                pairs.insert(("a", "b"), 3).unwrap();
                // "c" has no id yet: the upgrade gives it one.
                pairs.insert(("a", "c"), 5).unwrap();
                pairs.insert(("b", "c"), 1).unwrap();
                // Written after the pairs table, so it wins for (a, b).
                tx.open_table(PAIR_LOG)
                    .unwrap()
                    .insert(4, record(&[(0, 1, 7)]).as_slice())
                    .unwrap();
                let mut counts = tx.open_table(ITEM_COUNTS).unwrap();
                for (item, n) in [("a", 9), ("b", 8), ("c", 6)] {
                    counts.insert(item, n).unwrap();
                }
                tx.open_table(TREND)
                    .unwrap()
                    .insert("a", (1.5, 1_000))
                    .unwrap();
                tx.open_table(META)
                    .unwrap()
                    .insert("offset:log", 42)
                    .unwrap();
                tx.open_table(DEDUP_LOG)
                    .unwrap()
                    .insert((1_000, 0), [7u8; 24].as_slice())
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        // redb 4 alone refuses the file: the upgrade path is what opens it.
        assert!(matches!(
            redb::Database::open(&old_path),
            Err(redb::DatabaseError::UpgradeRequired(2))
        ));
        let old = Store::open(&old_path).unwrap();

        // The same state, written the current way.
        let new = Store::open(&dir.path().join("new.redb")).unwrap();
        {
            let tx = new.db.begin_write().unwrap();
            {
                let mut items = tx.open_table(store::ITEMS).unwrap();
                for (id, item) in ["a", "b", "c"].into_iter().enumerate() {
                    items.insert(id as u32, item).unwrap();
                }
                tx.open_table(store::PAIR_LOG)
                    .unwrap()
                    .insert(0, record(&[(0, 1, 7), (0, 2, 5), (1, 2, 1)]).as_slice())
                    .unwrap();
                let mut counts = tx.open_table(store::ITEM_COUNTS).unwrap();
                for (item, n) in [("a", 9), ("b", 8), ("c", 6)] {
                    counts.insert(item, n).unwrap();
                }
                tx.open_table(store::TREND)
                    .unwrap()
                    .insert("a", (1.5, 1_000))
                    .unwrap();
            }
            tx.commit().unwrap();
        }

        let cfg = ModelConfig::default();
        let (upgraded, expected) = (
            Model::load(cfg.clone(), &old).unwrap(),
            Model::load(cfg, &new).unwrap(),
        );
        for item in ["a", "b", "c"] {
            assert!(!expected.neighbours(item).is_empty());
            assert_eq!(
                upgraded.neighbours(item),
                expected.neighbours(item),
                "{item}"
            );
        }
        assert_eq!(upgraded.trending(2_000), expected.trending(2_000));
        assert_eq!(old.user("alice").unwrap(), Some(alice));

        let tx = old.db.begin_read().unwrap();
        let meta = tx.open_table(store::META).unwrap();
        assert_eq!(meta.get("offset:log").unwrap().unwrap().value(), 42);
        let dedup = tx.open_table(store::DEDUP_LOG).unwrap();
        let (k, v) = dedup.first().unwrap().unwrap();
        assert_eq!((k.value(), v.value()), ((1_000, 0), [7u8; 24].as_slice()));
        assert!(
            tx.list_tables()
                .unwrap()
                .all(|t| redb::TableHandle::name(&t) != "pairs")
        );
        drop((tx, old));
        // Upgraded in place: it opens again as it is.
        Store::open(&old_path).unwrap();
    }
}
