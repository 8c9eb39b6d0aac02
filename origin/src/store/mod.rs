//! The store (redb): profiles, dedup keys, source offsets and watermarks, model state, the
//! publish outbox, what KV holds, the catalog and the dead-letter queue. The pipeline commits
//! everything one batch changed in **one write transaction**, so a crash at any point leaves
//! either all of a batch or none of it.

use std::path::Path;
use std::sync::Arc;

use attune_core::{CatalogItem, Profile};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Unusable};

mod checkpoint;
pub mod format;
mod read;
mod rebuild;
mod tables;

pub use checkpoint::{CheckpointWriter, Forget, ModelDelta};
pub use format::UserState;
pub use read::CheckpointReader;
pub use rebuild::{open_or_rebuild, rebuild};
// The publisher (`publish/`) still opens these tables itself.
use tables::*;
pub(crate) use tables::{OUTBOX, PENDING, PENDING_KEY, PUBLISHED, USERS};

/// What the pipeline and the store key users by: xxh3-128 of the id (a collision is as
/// likely as a random 128-bit match; [`decode_user_row`] would still catch one, since a row
/// carries its id).
pub type UserKey = u128;

pub fn user_key(user: &str) -> UserKey {
    xxhash_rust::xxh3::xxh3_128(user.as_bytes())
}

/// Appends a [`USERS`] row: the id (varint length, UTF-8), then the state.
pub fn encode_user_row(user: &str, state: &UserState, buf: &mut Vec<u8>) {
    crate::store::format::encode_str(user, buf);
    state.encode_into(buf);
}

/// The id a [`USERS`] row belongs to, and the rest of the row.
pub fn user_row_id(row: &[u8]) -> Result<(&str, &[u8])> {
    postcard::take_from_bytes::<&str>(row).map_err(|source| Error::Row {
        what: "user row: bad user id",
        source,
    })
}

/// Decodes a [`USERS`] row that must belong to `user`.
pub fn decode_user_row(user: &str, row: &[u8]) -> Result<UserState> {
    let (id, state) = user_row_id(row)?;
    if id != user {
        return Err(Error::Corrupt(format!(
            "user key collision: `{user}` and `{id}` hash alike (xxh3-128)"
        )));
    }
    UserState::decode(state)
}
/// Packs `(user, version)` pairs for [`PENDING`].
pub fn pack_pending<'a>(users: impl Iterator<Item = (&'a str, u64)>, buf: &mut Vec<u8>) {
    buf.clear();
    for (user, version) in users {
        // User ids are limited to far less than 64 KiB by the core's validation.
        let len = u16::try_from(user.len()).unwrap_or(u16::MAX);
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&user.as_bytes()[..usize::from(len)]);
        buf.extend_from_slice(&version.to_le_bytes());
    }
}

/// Reads a [`PENDING`] row; `None` if it is malformed.
pub fn unpack_pending(mut bytes: &[u8]) -> Option<Vec<(String, u64)>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = usize::from(u16::from_le_bytes(bytes.get(..2)?.try_into().ok()?));
        let user = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?;
        let version = u64::from_le_bytes(bytes.get(2 + len..10 + len)?.try_into().ok()?);
        out.push((user.to_string(), version));
        bytes = &bytes[10 + len..];
    }
    Some(out)
}
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put,
    Delete,
}

/// A pending publish of one key. The value is built from the store at publish time, so many
/// changes to one key coalesce into one write of its newest version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub op: Op,
    pub version: u64,
    /// Earliest ingest time among the changes waiting in this entry (freshness).
    pub accepted_ms: u64,
    /// The user, for `p:` keys (never leaves the store).
    pub user: Option<String>,
}

impl OutboxEntry {
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        Ok(rmp_serde::from_slice(bytes)?)
    }
    pub fn encode(&self) -> Result<Vec<u8>> {
        Ok(rmp_serde::to_vec_named(self)?)
    }
}

/// One dead letter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqRecord {
    pub seq: u64,
    pub source: String,
    pub offset: u64,
    pub accepted_ms: u64,
    /// Stable code (`bad_json`, `too_large`, `late`, …).
    pub reason: String,
    pub detail: String,
    /// Size of the original event.
    pub len: usize,
    /// The event as received, cut to 2 KiB.
    pub raw: String,
}

/// Named counters in `META`.
pub mod keys {
    pub const RECEIVED: &str = "received";
    pub const APPLIED: &str = "applied";
    pub const DUPLICATES: &str = "duplicates";
    pub const DLQ: &str = "dlq";
    pub const LATE: &str = "late";
    pub const DLQ_SEQ: &str = "dlq_seq";
    pub const MODEL_SEQ: &str = "model_seq";
    /// Next `DEDUP_LOG` row number.
    pub const DEDUP_ROW: &str = "dedup_row";
    /// Version of the rules in force (`cfg` in KV): one more at each rules change applied.
    pub const CFG_VERSION: &str = "cfg_version";
    /// The store's [`super::FORMAT_VERSION`].
    pub const FORMAT: &str = "store_format";
    pub fn offset(source: &str) -> String {
        format!("offset:{source}")
    }
    pub fn watermark(source: &str) -> String {
        format!("wm:{source}")
    }
}

/// The opened database, shared by the pipeline, the publisher and the admin API.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Arc<Database>,
}

/// redb page cache size.
const STORE_CACHE_BYTES: usize = 256 << 20;

/// The layout of the store's tables and rows ([`crate::store::format`]), kept in [`META`] under
/// [`keys::FORMAT`]. A store of any other format is not read: the node rebuilds it from the
/// event log, the source of truth (`Node::open`). Bumped whenever what a table holds changes
/// meaning, not only layout (the pair log's weights, for one).
pub const FORMAT_VERSION: u64 = 2;

/// Whether redb refuses a file for what it holds (another redb file format, not a redb
/// file, damaged) rather than for how it was reached (in use, permissions, I/O).
fn not_a_store(e: &redb::DatabaseError) -> bool {
    match e {
        redb::DatabaseError::UpgradeRequired(_)
        | redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => true,
        // redb's "not a redb database" (wrong magic number, a file shorter than its header).
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => {
            io.kind() == std::io::ErrorKind::InvalidData
        }
        _ => false,
    }
}

/// Runs `f`, turning a panic inside it into its message.
pub(crate) fn caught<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        format!("redb panicked reading it ({msg})")
    })
}

/// redb's integrity check of an existing store, on every open: it verifies every page's
/// checksum, so a damaged page is found here rather than by a panic in the middle of the
/// pipeline. A check that had to repair (the allocator state after a kill, or a damaged newest
/// commit replaced by the one before it) is logged: the store is consistent with its own
/// checkpoint offset and the log replays from there.
fn verify(db: &mut Database, path: &Path) -> std::result::Result<(), String> {
    let started = std::time::Instant::now();
    let clean = caught(|| db.check_integrity())?.map_err(|e| e.to_string())?;
    let ms = started.elapsed().as_millis() as u64;
    if clean {
        tracing::debug!(store = %path.display(), ms, "store integrity checked");
    } else {
        tracing::warn!(
            store = %path.display(),
            ms,
            "the store needed repair (an unclean shutdown, or a damaged newest commit rolled back \
             to the one before); the log replays from its checkpoint"
        );
    }
    Ok(())
}

/// What [`Store::carry_over`] copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CarriedOver {
    /// Version lines of shared keys (model sequence, rules version).
    pub versions: u64,
}

/// The format version an opened database records, and its checkpoint's log offset (each
/// `None` when it cannot be read: no such table, another key or value type).
fn format_and_offset(db: &Database) -> (Option<u64>, Option<u64>) {
    let Ok(tx) = db.begin_read() else {
        return (None, None);
    };
    let Ok(meta) = tx.open_table(META) else {
        return (None, None);
    };
    let get = |key: &str| meta.get(key).ok().flatten().map(|v| v.value());
    (get(keys::FORMAT), get(&keys::offset(crate::log::SOURCE)))
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store at `path`, creating it if there is no file. An existing file that is
    /// not a store of [`FORMAT_VERSION`] is not changed: the error says why
    /// ([`Error::StoreUnusable`]).
    pub fn open(path: &Path) -> Result<Store> {
        let unusable = |why| Error::StoreUnusable {
            path: path.to_path_buf(),
            why,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let existed = path.exists();
        // redb's default page cache is 1 GiB; a quarter of that keeps the hot B-tree pages
        // (the pipeline holds its own hot user states) and bounds the service's memory.
        let mut builder = redb::Builder::new();
        builder.set_cache_size(STORE_CACHE_BYTES);
        // redb can panic on a damaged page ("entered unreachable code"), here or at any later
        // read: the open, the integrity check and the first reads run under `catch_unwind`, so
        // a damaged file is an error the caller acts on (a rebuild from the log), never a crash.
        let db = match caught(|| builder.create(path)) {
            Err(panic) => return Err(unusable(Unusable::Damaged(panic))),
            Ok(Ok(db)) => db,
            // A file redb cannot read as its own (another format, another program's file, or
            // damaged). Anything else (in use, permissions, I/O) is an error: the file may be
            // perfectly good.
            Ok(Err(e)) if existed && not_a_store(&e) => {
                return Err(unusable(Unusable::Unreadable(e)));
            }
            Ok(Err(e)) => return Err(e.into()),
        };
        let mut db = db;
        if existed {
            verify(&mut db, path).map_err(|why| unusable(Unusable::Damaged(why)))?;
            let (found, committed) =
                caught(|| format_and_offset(&db)).map_err(|p| unusable(Unusable::Damaged(p)))?;
            if found != Some(FORMAT_VERSION) {
                return Err(unusable(Unusable::Format { found, committed }));
            }
        }
        // Create every table up front so readers never meet a missing one.
        let tx = db.begin_write()?;
        tx.open_table(USERS)?;
        tx.open_table(DEDUP_LOG)?;
        tx.open_table(ITEMS)?;
        tx.open_table(PAIR_LOG)?;
        tx.open_table(META)?.insert(keys::FORMAT, FORMAT_VERSION)?;
        tx.open_table(CATALOG)?;
        tx.open_table(ITEM_COUNTS)?;
        tx.open_table(TREND)?;
        tx.open_table(OUTBOX)?;
        tx.open_table(PUBLISHED)?;
        tx.open_table(PENDING)?;
        tx.open_table(DLQ)?;
        tx.open_table(ERASE)?;
        tx.open_table(RULES)?;
        tx.commit()?;
        Ok(Store { db: Arc::new(db) })
    }

    /// Copies from the store file at `old` what its event log does not hold: the version lines
    /// of shared keys (so KV never sees a version go back). The catalog and the forgets are
    /// records in the log, replayed in order. For a store being rebuilt from the log; fails if
    /// `old` is not a readable store of this layout.
    pub fn carry_over(&self, old: &Path) -> Result<CarriedOver> {
        let old = Database::open(old)?;
        let from = old.begin_read()?;
        let tx = self.db.begin_write()?;
        let mut carried = CarriedOver::default();
        {
            let old_meta = from.open_table(META)?;
            let mut meta = tx.open_table(META)?;
            for key in [keys::MODEL_SEQ, keys::CFG_VERSION] {
                if let Some(v) = old_meta.get(key)? {
                    meta.insert(key, v.value())?;
                    carried.versions += 1;
                }
            }
        }
        tx.commit()?;
        Ok(carried)
    }

    pub fn meta(&self, key: &str) -> Result<u64> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(META)?;
        Ok(t.get(key)?.map(|v| v.value()).unwrap_or(0))
    }

    pub fn user(&self, user: &str) -> Result<Option<UserState>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(USERS)?;
        match t.get(user_key(user))? {
            Some(v) => Ok(Some(decode_user_row(user, v.value())?)),
            None => Ok(None),
        }
    }

    /// Every profile, sorted by user (tests and inspection).
    pub fn profiles(&self) -> Result<Vec<(String, Profile)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(USERS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            let (id, state) = user_row_id(v.value())?;
            out.push((id.to_string(), UserState::decode(state)?.profile));
        }
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    pub fn dlq(&self, limit: usize) -> Result<Vec<DlqRecord>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(DLQ)?;
        let mut out = Vec::new();
        for row in t.iter()?.rev().take(limit) {
            let (_, v) = row?;
            out.push(serde_json::from_slice(v.value())?);
        }
        out.reverse();
        Ok(out)
    }

    pub fn dlq_len(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(DLQ)?.len()?)
    }

    /// Publishes of shared keys and deletes waiting (user publishes wait in memory, see
    /// `live.rs`).
    pub fn outbox_len(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(OUTBOX)?.len()?)
    }

    pub fn published(&self) -> Result<Vec<(String, u64)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PUBLISHED)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), v.value()));
        }
        Ok(out)
    }

    pub fn catalog(&self) -> Result<Vec<CatalogItem>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(CATALOG)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(rmp_serde::from_slice(v.value())?);
        }
        Ok(out)
    }

    /// Bytes the database file takes on disk.
    pub fn size_bytes(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }
}

impl Store {
    /// The forgotten users whose forget record lies before `before`, with its offset: their
    /// records are to be erased from the log ([`ERASE`]).
    pub fn erase_due(&self, before: u64) -> Result<std::collections::HashMap<String, u64>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(ERASE)?;
        let mut due = std::collections::HashMap::new();
        for row in t.iter()? {
            let (k, v) = row?;
            if v.value() < before {
                due.insert(k.value().to_string(), v.value());
            }
        }
        Ok(due)
    }

    /// Drops the [`ERASE`] rows of users whose records are erased.
    pub fn erase_done<'a>(&self, users: impl IntoIterator<Item = &'a String>) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(ERASE)?;
            for user in users {
                t.remove(user.as_str())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// What is waiting in the outbox for `key`.
    pub fn queued(&self, key: &str) -> Result<Option<OutboxEntry>> {
        let tx = self.db.begin_read()?;
        match tx.open_table(OUTBOX)?.get(key)? {
            Some(row) => Ok(Some(OutboxEntry::decode(row.value())?)),
            None => Ok(None),
        }
    }
}

/// Records `version` as the format of the store file at `path` (tests of foreign stores).
#[cfg(test)]
pub(crate) fn write_format(path: &Path, version: u64) -> Result<()> {
    let db = Database::open(path)?;
    let tx = db.begin_write()?;
    tx.open_table(META)?.insert(keys::FORMAT, version)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_rows_carry_their_id() {
        let mut state = UserState::default();
        state.profile.version = 4;
        let mut row = Vec::new();
        encode_user_row("u1", &state, &mut row);
        assert_eq!(user_row_id(&row).unwrap().0, "u1");
        assert_eq!(decode_user_row("u1", &row).unwrap(), state);
        let err = decode_user_row("u2", &row).unwrap_err().to_string();
        assert!(err.contains("collision"), "{err}");
        assert!(user_row_id(&[0xff]).is_err());
    }

    #[test]
    fn pending_rows_round_trip_and_refuse_garbage() {
        let users = [("u1", 3u64), ("", 0), ("ünï", u64::MAX)];
        let mut buf = Vec::new();
        pack_pending(users.iter().copied(), &mut buf);
        let back = unpack_pending(&buf).unwrap();
        assert_eq!(
            back,
            users
                .iter()
                .map(|(u, v)| (u.to_string(), *v))
                .collect::<Vec<_>>()
        );
        assert_eq!(unpack_pending(&[]), Some(vec![]));
        assert_eq!(unpack_pending(&buf[..buf.len() - 1]), None);
        assert_eq!(unpack_pending(&[5, 0, b'a']), None);
    }
}

#[cfg(test)]
mod encoding_tests {
    use super::*;
    use attune_core::decay::Acc;
    use attune_core::profile::Affinity;

    /// Every field survives the store encoding, including affinities whose short or long
    /// accumulator is zero (the core skips zero accumulators when it serializes).
    #[test]
    fn user_states_round_trip_with_skipped_fields() {
        let mut state = UserState::default();
        state.profile.version = 3;
        state.profile.items = vec![
            Affinity {
                key: "a".into(),
                short: Acc::default(),
                long: Acc(1, 2, 3),
            },
            Affinity {
                key: "b".into(),
                short: Acc(4, 5, 6),
                long: Acc::default(),
            },
        ];
        state.recent_ids = vec![7, 8];
        let mut buf = Vec::new();
        state.encode_into(&mut buf);
        assert_eq!(UserState::decode(&buf).unwrap(), state);
    }
}
