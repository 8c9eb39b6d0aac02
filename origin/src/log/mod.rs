//! The embedded durable event log: the default [`Source`], no broker needed.
//!
//! One append-only file. A record is `[len: u32 LE][crc32: u32 LE][body]`, body =
//! `[accepted_ms: u64 LE][source_len: u8][source][payload]`; a record's offset is its byte
//! position. One appender thread owns the write handle and group-commits: it takes every
//! request waiting in its bounded queue, writes them, calls `fdatasync` once and only then
//! acknowledges them all and moves the durable end, so `202` means "on disk". Readers never see
//! past the durable end. On open, the tail after the last complete, checksummed record (a torn
//! write from a crash) is truncated.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};

/// The embedded log's source name (its offset key in the store).
pub const SOURCE: &str = "log";

const MAGIC: &[u8; 8] = b"ATLOG\x001\n";
/// Offset of the first record.
pub const FIRST_OFFSET: u64 = MAGIC.len() as u64;
/// Largest record body accepted (an oversize event is still logged so it reaches the DLQ).
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

/// One record read back from a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    /// Offset of the next record: what the consumer commits after applying this one.
    pub next: u64,
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
    path: Arc<std::path::PathBuf>,
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

fn encode_record(buf: &mut Vec<u8>, accepted_ms: u64, source: &str, payload: &[u8]) {
    let source = &source.as_bytes()[..source.len().min(255)];
    let body_len = 8 + 1 + source.len() + payload.len();
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    let crc_at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    let body_at = buf.len();
    buf.extend_from_slice(&accepted_ms.to_le_bytes());
    buf.push(source.len() as u8);
    buf.extend_from_slice(source);
    buf.extend_from_slice(payload);
    let crc = crc32fast::hash(&buf[body_at..]);
    buf[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Parses one record at the start of `buf`. `None` when incomplete or corrupt.
fn decode_record(buf: &[u8], offset: u64) -> Option<(Record, usize)> {
    if buf.len() < 8 {
        return None;
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().ok()?);
    if !(9..=MAX_RECORD_BYTES + 300).contains(&len) || buf.len() < 8 + len {
        return None;
    }
    let body = &buf[8..8 + len];
    if crc32fast::hash(body) != crc {
        return None;
    }
    let accepted_ms = u64::from_le_bytes(body[0..8].try_into().ok()?);
    let slen = body[8] as usize;
    if 9 + slen > body.len() {
        return None;
    }
    let source = String::from_utf8_lossy(&body[9..9 + slen]).into_owned();
    let payload = body[9 + slen..].to_vec();
    let total = 8 + len;
    Some((
        Record {
            offset,
            next: offset + total as u64,
            accepted_ms,
            source,
            payload,
        },
        total,
    ))
}

impl Log {
    /// Opens (or creates) the log at `path`, scanning from `committed` (a known-good record
    /// boundary, the consumer's committed offset) and truncating a torn tail.
    pub fn open(path: &Path, committed: u64, queue_capacity: usize) -> Result<Log> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        if len < FIRST_OFFSET {
            file.set_len(0)?;
            file.write_all(MAGIC)?;
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).ok();
            }
        } else {
            let mut magic = [0u8; 8];
            file.read_exact_at(&mut magic, 0)?;
            if &magic != MAGIC {
                return Err(Error::Log(format!(
                    "{} is not an attune log",
                    path.display()
                )));
            }
        }
        let committed = committed.max(FIRST_OFFSET);
        let len = file.metadata()?.len();
        if committed > len {
            return Err(Error::Log(format!(
                "committed offset {committed} is past the end of the log ({len})"
            )));
        }
        // Scan from the committed offset to find the durable end.
        let mut pos = committed;
        let mut records = 0u64;
        let mut buf = Vec::new();
        file.seek(SeekFrom::Start(pos))?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, &file);
        loop {
            let mut head = [0u8; 8];
            if reader.read_exact(&mut head).is_err() {
                break;
            }
            let blen = u32::from_le_bytes(head[0..4].try_into().unwrap_or_default()) as usize;
            if blen > MAX_RECORD_BYTES + 300 {
                break;
            }
            buf.clear();
            buf.extend_from_slice(&head);
            buf.resize(8 + blen, 0);
            if reader.read_exact(&mut buf[8..]).is_err() {
                break;
            }
            match decode_record(&buf, pos) {
                Some((_, n)) => {
                    pos += n as u64;
                    records += 1;
                }
                None => break,
            }
        }
        drop(reader);
        if pos < len {
            tracing::warn!(at = pos, len, "truncating a torn tail of the event log");
            file.set_len(pos)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::Start(pos))?;
        let shared = Arc::new(End {
            end: Mutex::new(pos),
            cv: Condvar::new(),
            records: Mutex::new(records),
        });
        let (tx, rx) = sync_channel::<AppendReq>(queue_capacity.max(1));
        let s = shared.clone();
        std::thread::Builder::new()
            .name("attune-log-append".into())
            .spawn(move || appender(file, pos, rx, s))?;
        Ok(Log {
            shared,
            tx,
            path: Arc::new(path.to_path_buf()),
        })
    }

    /// Queues an append; `done` runs on the appender thread with the new durable end once the
    /// records are on disk (or with the error).
    pub fn try_append(
        &self,
        accepted_ms: u64,
        source: &str,
        payloads: Vec<Vec<u8>>,
        done: impl FnOnce(Result<u64>) + Send + 'static,
    ) -> std::result::Result<(), AppendRefused> {
        let req = AppendReq {
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

    /// Appends and waits until durable (blocking; for offline commands and tests).
    pub fn append_blocking(
        &self,
        accepted_ms: u64,
        source: &str,
        payloads: Vec<Vec<u8>>,
    ) -> Result<u64> {
        let (tx, rx) = std::sync::mpsc::channel();
        let req = AppendReq {
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
            shared: self.shared.clone(),
            buf: Vec::new(),
        })
    }
}

fn appender(file: File, mut pos: u64, rx: Receiver<AppendReq>, shared: Arc<End>) {
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
        buf.clear();
        let mut n = 0u64;
        for r in &reqs {
            for p in &r.payloads {
                encode_record(&mut buf, r.accepted_ms, &r.source, p);
                n += 1;
            }
        }
        let res = file.write_all(&buf).and_then(|_| file.sync_data());
        match res {
            Ok(()) => {
                pos += buf.len() as u64;
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
}

/// Reads the log by offset, up to the durable end.
pub struct LogReader {
    file: File,
    shared: Arc<End>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader").finish_non_exhaustive()
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
            let mut progressed = false;
            while out.len() < max {
                match decode_record(&self.buf[at..], pos + at as u64) {
                    Some((rec, n)) => {
                        at += n;
                        progressed = true;
                        out.push(rec);
                    }
                    None => break,
                }
            }
            if !progressed {
                // A record larger than the chunk: read exactly it.
                let mut head = [0u8; 8];
                self.file.read_exact_at(&mut head, pos)?;
                let len = 8 + u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
                if pos + len as u64 > end || len > MAX_RECORD_BYTES + 308 {
                    return Err(Error::Log(format!("corrupt record at offset {pos}")));
                }
                self.buf.resize(len, 0);
                self.file.read_exact_at(&mut self.buf, pos)?;
                let (rec, n) = decode_record(&self.buf, pos)
                    .ok_or_else(|| Error::Log(format!("corrupt record at offset {pos}")))?;
                out.push(rec);
                at = n;
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
mod tests {
    use super::*;

    #[test]
    fn appends_read_back_and_torn_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let log = Log::open(&path, 0, 8).unwrap();
        let end = log
            .append_blocking(7, "http", vec![b"a".to_vec(), b"bc".to_vec()])
            .unwrap();
        let mut r = log.reader().unwrap();
        let mut out = Vec::new();
        r.read(FIRST_OFFSET, 10, Duration::ZERO, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].payload, b"bc");
        assert_eq!(out[1].next, end);
        assert_eq!(out[0].source, "http");
        drop((log, r));
        // A torn write.
        let f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_at(&[9, 0, 0, 0, 1], end).unwrap();
        let log = Log::open(&path, out[1].offset, 8).unwrap();
        assert_eq!(log.end(), end);
    }
}
