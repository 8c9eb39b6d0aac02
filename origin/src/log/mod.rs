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
//! sync marker lets a reader find the next record after damage ([`salvage`]). A record's offset
//! is its byte position. [`RecordKind`] says what the payload is: an event (ingest), a forget
//! or catalog change (admin operations, applied by the pipeline at their position in the log),
//! or a gap (bytes [`salvage`] could not read, kept so every other offset stays the same).
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
//! [`MAX_RECORD_BYTES`] is refused, never written.
//!
//! On open, the records from the consumer's committed offset on are checked. A bad record
//! **at or past** the acknowledged end is a write torn by a crash: the tail from it on was
//! never acknowledged and is cut. A bad record **before** it is damage to acknowledged events:
//! the log refuses to open ([`Error::LogDamaged`] names the file and the offset) and nothing is
//! cut. `attune-origin salvage` ([`salvage`]) then copies every valid record into a new log,
//! replacing each damaged range by a gap record of the same length (so every offset the store
//! holds still points at the same record), moves the damaged file aside and reports the
//! records kept and the bytes skipped. Records before the committed offset were checked when
//! the pipeline read them; damage there is reported by the reader (a rebuild), with the same
//! error.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};

mod erase;
mod salvage;
pub use erase::erase_users;
pub use salvage::{SalvageReport, salvage};

/// The embedded log's source name (its offset key in the store).
pub const SOURCE: &str = "log";
/// The source name of records written by admin operations (forget, catalog).
pub const ADMIN_SOURCE: &str = "admin";

const MAGIC: &[u8; 8] = b"ATLOG\x002\n";
/// Offset of the first record.
pub const FIRST_OFFSET: u64 = MAGIC.len() as u64;
/// Largest record body accepted (an oversize event is still logged so it reaches the DLQ).
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;
/// Marks the start of every record.
const SYNC: [u8; 4] = *b"\xA7~LR";
/// sync + len + crc.
const HEADER: usize = 12;
/// kind + accepted_ms + source_len.
const BODY_MIN: usize = 10;
/// The smallest record (an empty source and payload).
const MIN_RECORD: usize = HEADER + BODY_MIN;
/// Largest `len` a record can have (body: the payload plus its fixed fields and source).
const MAX_BODY: usize = MAX_RECORD_BYTES + BODY_MIN + 255;

/// What a record's payload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// One event as received (JSON).
    Event,
    /// A privacy delete: the payload is the user id (UTF-8).
    Forget,
    /// Catalog entries to add or replace: the payload is a MessagePack array of `CatalogItem`.
    Catalog,
    /// Bytes [`salvage`] could not read; nothing to apply.
    Gap,
}

impl RecordKind {
    fn code(self) -> u8 {
        match self {
            RecordKind::Event => 0,
            RecordKind::Forget => 1,
            RecordKind::Catalog => 2,
            RecordKind::Gap => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => RecordKind::Event,
            1 => RecordKind::Forget,
            2 => RecordKind::Catalog,
            3 => RecordKind::Gap,
            _ => return None,
        })
    }
}

/// One record read back from a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    /// Offset of the next record: what the consumer commits after applying this one.
    pub next: u64,
    pub kind: RecordKind,
    /// When ingest accepted it (epoch ms): the `now` for validation and the start of freshness.
    pub accepted_ms: u64,
    /// Which producer it came from (per-source watermarks).
    pub source: String,
    pub payload: Vec<u8>,
}

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

/// Shared durable-end marker.
#[derive(Debug, Default)]
struct End {
    end: Mutex<u64>,
    cv: Condvar,
    records: Mutex<u64>,
}

struct AppendReq {
    kind: RecordKind,
    accepted_ms: u64,
    source: String,
    payloads: Vec<Vec<u8>>,
    done: Box<dyn FnOnce(Result<u64>) + Send>,
}

/// Handle to the log: cheap to clone; appends go through the appender thread.
#[derive(Clone)]
pub struct Log {
    shared: Arc<End>,
    tx: SyncSender<AppendReq>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("path", &self.path).finish()
    }
}

/// Why an append was refused without being attempted.
#[derive(Debug, PartialEq, Eq)]
pub enum AppendRefused {
    QueueFull,
    Closed,
}

fn encode_record(
    buf: &mut Vec<u8>,
    kind: RecordKind,
    accepted_ms: u64,
    source: &str,
    payload: &[u8],
) {
    let source = &source.as_bytes()[..source.len().min(255)];
    let body_len = BODY_MIN + source.len() + payload.len();
    let at = buf.len();
    buf.extend_from_slice(&SYNC);
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.push(kind.code());
    buf.extend_from_slice(&accepted_ms.to_le_bytes());
    buf.push(source.len() as u8);
    buf.extend_from_slice(source);
    buf.extend_from_slice(payload);
    let crc = record_crc(&buf[at + 4..at + 8], &buf[at + HEADER..]);
    buf[at + 8..at + 12].copy_from_slice(&crc.to_le_bytes());
}

fn record_crc(len: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(body);
    h.finalize()
}

/// What is at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    /// A valid record of this many bytes.
    Record(Record, usize),
    /// The buffer ends before the record does (it may be complete in the file).
    Incomplete { need: usize },
    /// Not a valid record.
    Bad(&'static str),
}

/// The total length a record header announces, if the header is plausible.
fn announced_len(head: &[u8]) -> std::result::Result<usize, &'static str> {
    if head[0..4] != SYNC {
        return Err("no record marker");
    }
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if !(BODY_MIN..=MAX_BODY).contains(&len) {
        return Err("impossible record length");
    }
    Ok(HEADER + len)
}

/// Parses one record at the start of `buf`.
fn decode_record(buf: &[u8], offset: u64) -> Decoded {
    if buf.len() < HEADER {
        return Decoded::Incomplete { need: HEADER };
    }
    let total = match announced_len(&buf[..HEADER]) {
        Ok(t) => t,
        Err(why) => return Decoded::Bad(why),
    };
    if buf.len() < total {
        return Decoded::Incomplete { need: total };
    }
    let crc = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let body = &buf[HEADER..total];
    if record_crc(&buf[4..8], body) != crc {
        return Decoded::Bad("checksum mismatch");
    }
    let Some(kind) = RecordKind::from_code(body[0]) else {
        return Decoded::Bad("unknown record kind");
    };
    let accepted_ms = u64::from_le_bytes(body[1..9].try_into().unwrap_or_default());
    let slen = body[9] as usize;
    if BODY_MIN + slen > body.len() {
        return Decoded::Bad("source longer than the record");
    }
    let source = String::from_utf8_lossy(&body[BODY_MIN..BODY_MIN + slen]).into_owned();
    let payload = body[BODY_MIN + slen..].to_vec();
    Decoded::Record(
        Record {
            offset,
            next: offset + total as u64,
            kind,
            accepted_ms,
            source,
            payload,
        },
        total,
    )
}

/// Reads the record at `pos` from `file` (of length `len`): `Ok(None)` when it runs past `len`.
fn read_record_at(file: &File, pos: u64, len: u64, buf: &mut Vec<u8>) -> std::io::Result<Decoded> {
    if pos + HEADER as u64 > len {
        return Ok(Decoded::Incomplete { need: HEADER });
    }
    buf.resize(HEADER, 0);
    file.read_exact_at(buf, pos)?;
    let total = match announced_len(buf) {
        Ok(t) => t,
        Err(why) => return Ok(Decoded::Bad(why)),
    };
    if pos + total as u64 > len {
        return Ok(Decoded::Incomplete { need: total });
    }
    buf.resize(total, 0);
    file.read_exact_at(&mut buf[HEADER..], pos + HEADER as u64)?;
    Ok(decode_record(buf, pos))
}

/// The sidecar file holding the acknowledged end of the log at `path`.
pub fn acked_path(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf().into_os_string();
    p.push(".acked");
    PathBuf::from(p)
}

fn encode_acked(end: u64) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&end.to_le_bytes());
    let crc = crc32fast::hash(&out[..8]);
    out[8..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Reads the acknowledged end recorded next to the log at `path` (`None`: no sidecar).
fn read_acked(path: &Path) -> Result<Option<u64>> {
    let side = acked_path(path);
    let bytes = match std::fs::read(&side) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::File { path: side, source }),
    };
    let ok = bytes.len() == 12 && crc32fast::hash(&bytes[..8]).to_le_bytes() == bytes[8..12];
    if !ok {
        return Err(Error::Log(format!(
            "{} is damaged: the acknowledged end of the log is unknown. Run `attune-origin \
             salvage` to check every record and write a new one",
            side.display()
        )));
    }
    Ok(Some(u64::from_le_bytes(
        bytes[..8].try_into().unwrap_or_default(),
    )))
}

/// Writes the acknowledged end (durably when `sync`).
fn write_acked(file: &File, end: u64, sync: bool) -> std::io::Result<()> {
    file.write_all_at(&encode_acked(end), 0)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

fn open_acked_file(path: &Path) -> Result<File> {
    let side = acked_path(path);
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&side)
        .map_err(|source| Error::File { path: side, source })
}

impl Log {
    /// Opens (or creates) the log at `path`, checking the records from `committed` (a
    /// known-good record boundary, the consumer's committed offset) on: a torn tail past the
    /// acknowledged end is cut, damage before it refuses to open ([`Error::LogDamaged`]).
    pub fn open(path: &Path, committed: u64, queue_capacity: usize) -> Result<Log> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        let mut acked = read_acked(path)?;
        if len < FIRST_OFFSET {
            file.set_len(0)?;
            file.write_all(MAGIC)?;
            file.sync_all()?;
            acked = None;
            if let Some(dir) = path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).ok();
            }
        } else {
            let mut magic = [0u8; 8];
            file.read_exact_at(&mut magic, 0)?;
            if &magic != MAGIC {
                return Err(Error::Log(format!(
                    "{} is not an attune log of this format",
                    path.display()
                )));
            }
        }
        let committed = committed.max(FIRST_OFFSET);
        let len = file.metadata()?.len();
        if committed > len {
            return Err(Error::Log(format!(
                "{}: committed offset {committed} is past the end of the log ({len})",
                path.display()
            )));
        }
        // No sidecar next to records (it was removed): every record counts as acknowledged,
        // so damage anywhere refuses rather than cuts.
        let acked = acked.unwrap_or(len).max(committed);
        if acked > len {
            return Err(Error::LogDamaged {
                path: path.to_path_buf(),
                offset: len,
                detail: format!("the file ends before the acknowledged end {acked}"),
            });
        }
        let (pos, records) = scan(&file, path, committed, acked, len)?;
        if pos < len {
            tracing::warn!(
                log = %path.display(),
                at = pos,
                len,
                acknowledged = acked,
                "cutting an unacknowledged torn tail of the event log"
            );
            file.set_len(pos)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::Start(pos))?;
        let acked_file = open_acked_file(path)?;
        write_acked(&acked_file, pos, true)?;
        if let Some(dir) = path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).ok();
        }
        let shared = Arc::new(End {
            end: Mutex::new(pos),
            cv: Condvar::new(),
            records: Mutex::new(records),
        });
        let (tx, rx) = sync_channel::<AppendReq>(queue_capacity.max(1));
        let s = shared.clone();
        let log_path = path.to_path_buf();
        std::thread::Builder::new()
            .name("attune-log-append".into())
            .spawn(move || appender(file, acked_file, log_path, pos, rx, s))?;
        Ok(Log {
            shared,
            tx,
            path: Arc::new(path.to_path_buf()),
        })
    }

    /// The log's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues an append of events; `done` runs on the appender thread with the new durable
    /// end once the records are on disk (or with the error).
    pub fn try_append(
        &self,
        accepted_ms: u64,
        source: &str,
        payloads: Vec<Vec<u8>>,
        done: impl FnOnce(Result<u64>) + Send + 'static,
    ) -> std::result::Result<(), AppendRefused> {
        let req = AppendReq {
            kind: RecordKind::Event,
            accepted_ms,
            source: source.to_string(),
            payloads,
            done: Box::new(done),
        };
        self.tx.try_send(req).map_err(|e| match e {
            TrySendError::Full(_) => AppendRefused::QueueFull,
            TrySendError::Disconnected(_) => AppendRefused::Closed,
        })
    }

    /// Appends events and waits until durable (blocking; for offline commands and tests).
    pub fn append_blocking(
        &self,
        accepted_ms: u64,
        source: &str,
        payloads: Vec<Vec<u8>>,
    ) -> Result<u64> {
        self.append_kind_blocking(RecordKind::Event, accepted_ms, source, payloads)
    }

    /// Appends one admin record ([`RecordKind::Forget`], [`RecordKind::Catalog`]) and waits
    /// until durable; returns the durable end (just past it).
    pub fn append_admin(&self, kind: RecordKind, payload: Vec<u8>) -> Result<u64> {
        self.append_kind_blocking(kind, crate::now_ms(), ADMIN_SOURCE, vec![payload])
    }

    fn append_kind_blocking(
        &self,
        kind: RecordKind,
        accepted_ms: u64,
        source: &str,
        payloads: Vec<Vec<u8>>,
    ) -> Result<u64> {
        let (tx, rx) = std::sync::mpsc::channel();
        let req = AppendReq {
            kind,
            accepted_ms,
            source: source.to_string(),
            payloads,
            done: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        };
        self.tx
            .send(req)
            .map_err(|_| Error::Log("appender stopped".into()))?;
        rx.recv()
            .map_err(|_| Error::Log("appender stopped".into()))?
    }

    /// Offset just past the last durable record.
    pub fn end(&self) -> u64 {
        *self.shared.end.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A reader positioned anywhere (its own file handle).
    pub fn reader(&self) -> Result<LogReader> {
        Ok(LogReader {
            file: File::open(&*self.path)?,
            path: self.path.clone(),
            shared: self.shared.clone(),
            buf: Vec::new(),
        })
    }
}

/// Checks the records of `file` from `from` (a record boundary) to its end `len`; returns the
/// end of the last valid record and how many there were. A bad record before `acked` is an
/// error; at or past it, the scan stops there (a torn tail).
fn scan(file: &File, path: &Path, from: u64, acked: u64, len: u64) -> Result<(u64, u64)> {
    let mut pos = from;
    let mut records = 0u64;
    let mut buf = Vec::new();
    while pos < len {
        let why = match read_record_at(file, pos, len, &mut buf)? {
            Decoded::Record(_, n) => {
                pos += n as u64;
                records += 1;
                continue;
            }
            Decoded::Incomplete { .. } => "the record runs past the end of the file",
            Decoded::Bad(why) => why,
        };
        if pos < acked {
            return Err(Error::LogDamaged {
                path: path.to_path_buf(),
                offset: pos,
                detail: format!("{why}, before the acknowledged end {acked}"),
            });
        }
        break;
    }
    Ok((pos, records))
}

fn appender(
    file: File,
    acked: File,
    path: PathBuf,
    mut pos: u64,
    rx: Receiver<AppendReq>,
    shared: Arc<End>,
) {
    let mut file = file;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    while let Ok(first) = rx.recv() {
        let mut reqs = vec![first];
        while let Ok(more) = rx.try_recv() {
            reqs.push(more);
            if reqs.len() >= 1024 {
                break;
            }
        }
        // A record the reader would refuse as impossibly long is never written.
        reqs.retain_mut(|r| {
            let Some(big) = r
                .payloads
                .iter()
                .map(Vec::len)
                .find(|n| *n > MAX_RECORD_BYTES)
            else {
                return true;
            };
            let done = std::mem::replace(&mut r.done, Box::new(|_| {}));
            done(Err(Error::Log(format!(
                "a record of {big} bytes is over the limit of {MAX_RECORD_BYTES}"
            ))));
            false
        });
        if reqs.is_empty() {
            continue;
        }
        buf.clear();
        let mut n = 0u64;
        for r in &reqs {
            for p in &r.payloads {
                encode_record(&mut buf, r.kind, r.accepted_ms, &r.source, p);
                n += 1;
            }
        }
        let res = file.write_all(&buf).and_then(|_| file.sync_data());
        match res {
            Ok(()) => {
                pos += buf.len() as u64;
                // Before the acknowledgements: a record a client was told is durable is never
                // past the recorded end (unless the OS loses this unsynced write).
                if let Err(e) = write_acked(&acked, pos, false) {
                    tracing::warn!(log = %path.display(), error = %e, "cannot record the acknowledged end");
                }
                {
                    let mut end = shared.end.lock().unwrap_or_else(|e| e.into_inner());
                    *end = pos;
                    *shared.records.lock().unwrap_or_else(|e| e.into_inner()) += n;
                }
                shared.cv.notify_all();
                for r in reqs {
                    (r.done)(Ok(pos));
                }
            }
            Err(e) => {
                // Roll back a partial write so the next append starts at a record boundary.
                let _ = file.set_len(pos);
                let _ = file.seek(SeekFrom::Start(pos));
                // Every waiting request gets the same cause.
                let cause = Arc::new(e);
                for r in reqs {
                    (r.done)(Err(Error::Append(cause.clone())));
                }
            }
        }
    }
    // Closing: make the recorded end durable.
    let _ = write_acked(&acked, pos, true);
}

/// Reads the log by offset, up to the durable end.
pub struct LogReader {
    file: File,
    path: Arc<PathBuf>,
    shared: Arc<End>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader").finish_non_exhaustive()
    }
}

impl LogReader {
    fn damaged(&self, offset: u64, why: &str) -> Error {
        Error::LogDamaged {
            path: self.path.to_path_buf(),
            offset,
            detail: why.to_string(),
        }
    }
}

impl Source for LogReader {
    fn name(&self) -> &str {
        "log"
    }

    fn read(&mut self, from: u64, max: usize, wait: Duration, out: &mut Vec<Record>) -> Result<()> {
        let end = {
            let guard = self.shared.end.lock().unwrap_or_else(|e| e.into_inner());
            if *guard > from || wait.is_zero() {
                *guard
            } else {
                let (g, _) = self
                    .shared
                    .cv
                    .wait_timeout_while(guard, wait, |e| *e <= from)
                    .unwrap_or_else(|e| e.into_inner());
                *g
            }
        };
        if end <= from {
            return Ok(());
        }
        const CHUNK: u64 = 4 << 20;
        let mut pos = from;
        while out.len() < max && pos < end {
            let want = (end - pos).min(CHUNK) as usize;
            self.buf.resize(want, 0);
            self.file.read_exact_at(&mut self.buf, pos)?;
            let mut at = 0usize;
            while out.len() < max && at < want {
                match decode_record(&self.buf[at..], pos + at as u64) {
                    Decoded::Record(rec, n) => {
                        at += n;
                        out.push(rec);
                    }
                    Decoded::Incomplete { need } => {
                        if pos + (at + need) as u64 > end {
                            return Err(
                                self.damaged(pos + at as u64, "a record runs past the durable end")
                            );
                        }
                        break;
                    }
                    Decoded::Bad(why) => return Err(self.damaged(pos + at as u64, why)),
                }
            }
            if at == 0 && out.len() < max {
                // A record larger than the chunk: read exactly it.
                let mut one = Vec::new();
                match read_record_at(&self.file, pos, end, &mut one)? {
                    Decoded::Record(rec, n) => {
                        out.push(rec);
                        at = n;
                    }
                    Decoded::Incomplete { .. } => {
                        return Err(self.damaged(pos, "a record runs past the durable end"));
                    }
                    Decoded::Bad(why) => return Err(self.damaged(pos, why)),
                }
            }
            pos += at as u64;
        }
        Ok(())
    }

    fn end(&self) -> u64 {
        *self.shared.end.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start(&self) -> u64 {
        FIRST_OFFSET
    }
}

#[cfg(test)]
mod tests;
