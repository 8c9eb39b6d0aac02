//! The store's redb tables. Private to `store/`: every other module reads through the
//! store's typed operations and writes through a [`super::CheckpointWriter`]. The publisher
//! still opens `OUTBOX`, `PUBLISHED` and `USERS` itself (re-exported `pub(crate)` for it).

use redb::TableDefinition;

/// [`super::user_key`] of the user → a user row: the user's id, then its `UserState`
/// (`encode_user_row`). Keyed by hash rather than by name: a checkpoint writes up to 100k
/// rows, and fixed 16-byte keys sort and compare much faster than names in the B-tree.
pub(crate) const USERS: TableDefinition<u128, &[u8]> = TableDefinition::new("users");

/// The dedup keys a batch added, one row per batch: (newest event time in the row, the
/// batch's end offset) → packed `[xxh3-128 of event_id: u128 LE][event time: u64 LE]`.
/// A row is deleted once its newest event time falls behind the horizon.
pub(crate) const DEDUP_LOG: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("dedup_log");
/// Named counters, offsets (`offset:<source>`) and watermarks (`wm:<source>`).
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// item → `CatalogItem` (MessagePack).
pub(crate) const CATALOG: TableDefinition<&str, &[u8]> = TableDefinition::new("catalog");
/// item → number of user histories it entered.
pub(crate) const ITEM_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("item_counts");
/// Interned item id → item (ids are dense, assigned in order).
pub(crate) const ITEMS: TableDefinition<u32, &str> = TableDefinition::new("items");
/// Co-occurrence weights as a log of absolute values: sequence → packed
/// `[a: u32 LE][b: u32 LE][weight: u64 LE]` (item ids, a < b; the weight in units of
/// `model::PAIR_WEIGHT_SCALE`ths). Replayed in order at load; compacted into a snapshot when it
/// outgrows the live state (see `model/persist.rs`).
pub(crate) const PAIR_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("pair_log");
/// item → (decayed trend score, reference time of the score).
pub(crate) const TREND: TableDefinition<&str, (f64, u64)> = TableDefinition::new("trend");
/// KV key → `OutboxEntry` (MessagePack): what still has to be published.
pub(crate) const OUTBOX: TableDefinition<&str, &[u8]> = TableDefinition::new("outbox");
/// The user publishes waiting for KV at the last checkpoint, as one packed row
/// ([`PENDING_KEY`] → repeated `[user length: u16 LE][user][version: u64 LE]`), rewritten whole
/// by every checkpoint: a few bytes per waiting user instead of a B-tree row each. Entries KV
/// acknowledged after the checkpoint are dropped when read (the publisher checks `PUBLISHED`).
pub(crate) const PENDING: TableDefinition<&str, &[u8]> = TableDefinition::new("pending_users");
pub(crate) const PENDING_KEY: &str = "users";

/// Forgotten user → offset of the forget record: the user's records before it are still to be
/// erased from the log (the pipeline does it once its checkpoint has passed that offset, then
/// removes the row). Kept in the checkpoint so a crash between the two cannot skip it.
pub(crate) const ERASE: TableDefinition<&str, u64> = TableDefinition::new("erase");
/// KV key → version KV acknowledged.
pub(crate) const PUBLISHED: TableDefinition<&str, u64> = TableDefinition::new("published");
/// sequence → `DlqRecord` (JSON).
pub(crate) const DLQ: TableDefinition<u64, &[u8]> = TableDefinition::new("dlq");
/// [`RULES_KEY`] → the rules in force at the checkpoint (`attune_core::rules::Config` as the
/// JSON of the log's last applied rules record); absent until one was applied.
pub(crate) const RULES: TableDefinition<&str, &[u8]> = TableDefinition::new("rules");
pub(crate) const RULES_KEY: &str = "applied";
