//! The embedded durable event log: the default [`Source`], no broker needed.
//!
//! # Format
//!
//! One append-only file: an 8-byte magic, then records. A record is
//!
//! ```text
//! [sync: A7 7E 4C 52][len: u32 LE][crc32: u32 LE][body: len bytes]
//! body = [kind: u8][accepted_ms: u64 LE][source_len: u8][source][payload]
//! ```
//!
//! The CRC covers `len` and the body, so a damaged length is caught like a damaged body. The
//! sync marker lets a reader find the next record after damage ([`salvage()`]). A record's offset
//! is its byte position. [`RecordKind`] says what the payload is: an event (ingest), a forget
//! or catalog change (admin operations, applied by the pipeline at their position in the log),
//! or a gap (bytes [`salvage()`] could not read, kept so every other offset stays the same).
//!
//! # Durability and damage
//!
//! One appender thread owns the write handle and group-commits: it takes every request waiting
//! in its bounded queue, writes them, calls `fdatasync` once and only then acknowledges them
//! all and moves the durable end, so `202` means "on disk". Readers never see past the durable
//! end. After each group commit the appender records the acknowledged end in a sidecar file,
//! `<log>.acked` (8 bytes LE + CRC32). The sidecar is not fsynced at every commit (that would
//! double the fsyncs), so after an OS crash it can lag behind the log; it never runs ahead. A
//! log without its sidecar counts every record as acknowledged. A record over
//! [`MAX_RECORD_BYTES`](record::MAX_RECORD_BYTES) is refused, never written.
//!
//! On open, the records from the consumer's committed offset on are checked. A bad record
//! **at or past** the acknowledged end is a write torn by a crash: the tail from it on was
//! never acknowledged and is cut. A bad record **before** it is damage to acknowledged events:
//! the log refuses to open ([`Error::LogDamaged`] names the file and the offset) and nothing is
//! cut. `attune-origin salvage` ([`salvage()`]) then copies every valid record into a new log,
//! replacing each damaged range by a gap record of the same length (so every offset the store
//! holds still points at the same record), moves the damaged file aside and reports the
//! records kept and the bytes skipped. Records before the committed offset were checked when
//! the pipeline read them; damage there is reported by the reader (a rebuild), with the same
//! error.

use std::time::Duration;

#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;

mod erase;
mod open;
mod reader;
mod record;
mod salvage;
mod writer;
pub use erase::erase_users;
pub use record::{FIRST_OFFSET, Record, RecordKind};
pub use salvage::{SalvageReport, salvage};
pub use writer::{AppendRefused, Log};

/// The embedded log's source name (its offset key in the store).
pub const SOURCE: &str = "log";
/// The source name of records written by admin operations (forget, catalog).
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
mod tests;
