//! Reads of the last checkpoint, for the operators that load their state from it when the
//! pipeline opens (and for the pipeline's reads of stored user states). One read transaction:
//! everything read through one [`CheckpointReader`] belongs to the same checkpoint.

use attune_core::CatalogItem;
use redb::{ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::tables::*;
use super::{Store, UserKey, UserState, decode_user_row, keys, unpack_pending};
use crate::error::{Error, Result};

/// The last committed checkpoint, read consistently (see the module docs).
pub struct CheckpointReader {
    tx: ReadTransaction,
}

impl std::fmt::Debug for CheckpointReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointReader").finish_non_exhaustive()
    }
}

impl Store {
    pub fn read_checkpoint(&self) -> Result<CheckpointReader> {
        Ok(CheckpointReader {
            tx: self.db.begin_read()?,
        })
    }
}

impl CheckpointReader {
    /// A named counter (0 if never written).
    pub fn counter(&self, key: &str) -> Result<u64> {
        Ok(self
            .tx
            .open_table(META)?
            .get(key)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// Each source's watermark.
    pub fn watermarks(&self) -> Result<Vec<(String, u64)>> {
        let prefix = keys::watermark("");
        let mut out = Vec::new();
        for row in self.tx.open_table(META)?.range("wm:".."wm;")? {
            let (k, v) = row?;
            out.push((k.value()[prefix.len()..].to_string(), v.value()));
        }
        Ok(out)
    }

    /// Calls `f` with the packed entries of every dedup row whose newest key is not older
    /// than `cutoff`, in row order.
    pub fn dedup_rows(&self, cutoff: u64, mut f: impl FnMut(&[u8])) -> Result<()> {
        for row in self.tx.open_table(DEDUP_LOG)?.range((cutoff, 0)..)? {
            let (_, v) = row?;
            f(v.value());
        }
        Ok(())
    }

    /// The stored states of `users` (best in key order, the B-tree's), each handed to `f`
    /// (`None`: not stored).
    pub fn users<'a>(
        &self,
        users: impl IntoIterator<Item = (UserKey, &'a str)>,
        mut f: impl FnMut(UserKey, &'a str, Option<UserState>),
    ) -> Result<()> {
        let rows = self.tx.open_table(USERS)?;
        for (key, user) in users {
            let state = match rows.get(key)? {
                Some(v) => Some(decode_user_row(user, v.value())?),
                None => None,
            };
            f(key, user, state);
        }
        Ok(())
    }

    /// The key of every stored user.
    pub fn user_keys(&self) -> Result<Vec<UserKey>> {
        let users = self.tx.open_table(USERS)?;
        let mut out = Vec::with_capacity(users.len()? as usize);
        for row in users.iter()? {
            let (k, _) = row?;
            out.push(k.value());
        }
        Ok(out)
    }

    /// The user publishes the checkpoint left waiting: (user, version).
    pub fn pending(&self) -> Result<Vec<(String, u64)>> {
        match self.tx.open_table(PENDING)?.get(PENDING_KEY)? {
            Some(row) => unpack_pending(row.value())
                .ok_or_else(|| Error::Corrupt("the pending publishes row is malformed".into())),
            None => Ok(Vec::new()),
        }
    }

    /// The interned item names, by id from 0.
    pub fn item_names(&self, mut f: impl FnMut(u32, &str) -> Result<()>) -> Result<()> {
        for row in self.tx.open_table(ITEMS)?.iter()? {
            let (k, v) = row?;
            f(k.value(), v.value())?;
        }
        Ok(())
    }

    /// item → number of user histories it entered.
    pub fn item_counts(&self, mut f: impl FnMut(&str, u64)) -> Result<()> {
        for row in self.tx.open_table(ITEM_COUNTS)?.iter()? {
            let (k, v) = row?;
            f(k.value(), v.value());
        }
        Ok(())
    }

    /// The co-occurrence log's records in order: (sequence, packed entries).
    pub fn pair_records(&self, mut f: impl FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
        for row in self.tx.open_table(PAIR_LOG)?.iter()? {
            let (k, v) = row?;
            f(k.value(), v.value())?;
        }
        Ok(())
    }

    /// item → (decayed trend score, reference time of the score).
    pub fn trends(&self, mut f: impl FnMut(&str, (f64, u64))) -> Result<()> {
        for row in self.tx.open_table(TREND)?.iter()? {
            let (k, v) = row?;
            f(k.value(), v.value());
        }
        Ok(())
    }

    /// The catalog, by item.
    pub fn catalog(&self, mut f: impl FnMut(&str, CatalogItem)) -> Result<()> {
        for row in self.tx.open_table(CATALOG)?.iter()? {
            let (k, v) = row?;
            f(k.value(), rmp_serde::from_slice(v.value())?);
        }
        Ok(())
    }

    /// The rules in force at the checkpoint (JSON), if a rules record was applied.
    pub fn rules(&self) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tx
            .open_table(RULES)?
            .get(RULES_KEY)?
            .map(|v| v.value().to_vec()))
    }

    /// Every KV key KV acknowledged, with its version.
    pub fn published(&self, mut f: impl FnMut(&str, u64)) -> Result<()> {
        for row in self.tx.open_table(PUBLISHED)?.iter()? {
            let (k, v) = row?;
            f(k.value(), v.value());
        }
        Ok(())
    }
}
