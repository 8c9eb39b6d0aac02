//! The embedded durable event log: the default [`Source`], no broker needed.
//!
//! # Format
//!
//! A directory of segment files, each named by the offset of its first record (its base,
//! 20 digits, `.seg`) and starting with a 16-byte header: the format magic and the base
//! again. Then records:
//!
//! ```text
//! [sync: A7 7E 4C 52][len: u32 LE][crc32: u32 LE][body: len bytes]
//! body = [kind: u8][accepted_ms: u64 LE][source_len: u8][source][payload]
//! ```
//!
//! Offsets are global and only grow: a record's offset is its segment's base plus its position
//! after the header, and each segment starts where the previous one ends. The appender closes a
//! segment and starts the next once a write would take it past the configured size. The CRC
//! covers `len` and the body, so a damaged length is caught like a damaged body. The sync
//! marker lets a reader find the next record after damage ([`salvage()`]). [`RecordKind`] says
//! what the payload is: an event (ingest), a forget, catalog change or rules change (admin
//! operations, applied by the pipeline at their position in the log), or a gap (bytes [`salvage()`] could
//! not read or a forgotten user's erased record, kept so every other offset stays the same).
//!
//! # Durability and damage
//!
//! One appender thread owns the segment being written and group-commits: it takes every
//! request waiting in its bounded queue, writes them, calls `fdatasync` once and only then
//! acknowledges them all and moves the durable end, so `202` means "on disk". Readers never see
//! past the durable end. After each group commit the appender records the acknowledged end in
//! a sidecar file, `acked` (8 bytes LE + CRC32). The sidecar is not fsynced at every commit
//! (that would double the fsyncs), so after an OS crash it can lag behind the log; it never
//! runs ahead. It is fsynced when a segment is closed, and the new segment (header, directory
//! entry) is durable before anything is written to it. A log without its sidecar counts every
//! record as acknowledged. A record over [`MAX_RECORD_BYTES`](record::MAX_RECORD_BYTES) is
//! refused, never written.
//!
//! On open, the segment chain is checked (headers, each closed segment ending exactly where
//! the next begins), then the records from the consumer's committed offset on. Only the last
//! segment can have a torn tail: a bad record in it **at or past** the acknowledged end was
//! never acknowledged and is cut. Any other bad record (in a closed segment, or before the
//! acknowledged end) is damage to acknowledged events: the log refuses to open
//! ([`Error::LogDamaged`] names the segment file and the offset) and nothing is cut.
//! `attune-origin salvage` ([`salvage()`]) then rewrites each damaged segment with every valid
//! record at its offset and each damaged range a gap record of the same length (so every offset
//! the store holds still points at the same record), moves the damaged file aside and reports
//! the records kept and the bytes skipped. Records before the committed offset were checked when
//! the pipeline read them; damage there is reported by the reader (a rebuild), with the same
//! error.
//!
//! # Erase and retention
//!
//! After a checkpoint the pipeline erases forgotten users' records ([`Log::erase_users`]):
//! each segment holding some is rewritten with gaps in their place and swapped in atomically
//! (the segment being appended to is closed first). Retention ([`Log::retire`]) deletes the
//! oldest closed segments that end at or before the checkpoint and are older than the
//! configured age (or while the log is over the configured size). A store rebuilt from a log
//! whose first segments were retired lacks what they held, so a rebuild refuses unless told
//! that this is accepted.

use std::time::Duration;

#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;

mod erase;
#[doc(hidden)]
pub mod fault;
mod open;
mod reader;
mod record;
mod retention;
mod salvage;
mod segment;
mod writer;
pub use record::{FIRST_OFFSET, Record, RecordKind};
pub use retention::Retired;
pub use salvage::{SalvageReport, salvage};
pub use segment::{extent, segment_path};
pub use writer::{AppendRefused, Log, LogUsage};

/// The embedded log's source name (its offset key in the store).
pub const SOURCE: &str = "log";
/// The source name of records written by admin operations (forget, catalog, rules).
pub const ADMIN_SOURCE: &str = "admin";

/// An ordered, replayable stream of records read by offset. The embedded [`Log`] is one;
/// a Kafka partition is another (offsets are then Kafka offsets).
pub trait Source: Send {
    /// Stable name, the key of this source's committed offset in the store.
    fn name(&self) -> &str;
    /// Reads up to `max` records starting at `from` into `out`, waiting at most `wait` for the
    /// first one. Returns with `out` empty when nothing arrived in time.
    fn read(&mut self, from: u64, max: usize, wait: Duration, out: &mut Vec<Record>) -> Result<()>;
    /// Offset just past the last durable record.
    fn end(&self) -> u64;
    /// The first offset of the source.
    fn start(&self) -> u64;
}

#[cfg(test)]
mod segment_tests;
#[cfg(test)]
mod tests;
