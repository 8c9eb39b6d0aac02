//! The writer: the [`Log`] handle, the appender thread that group-commits and rolls segments,
//! and the acknowledged-end sidecar.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use super::ADMIN_SOURCE;
use super::reader::LogReader;
use super::record::{FIRST_OFFSET, MAX_RECORD_BYTES, RecordKind, encode_record};
use super::segment::{self, SEGMENT_HEADER, Segments};
use crate::error::{Error, Result};

pub(super) struct AppendReq {
    kind: RecordKind,
    accepted_ms: u64,
    source: String,
    payloads: Vec<Vec<u8>>,
    done: Box<dyn FnOnce(Result<u64>) + Send>,
}

/// What the appender thread is asked to do.
pub(super) enum Request {
    Append(AppendReq),
    /// Close the segment being appended to (when it holds records) and start the next; the
    /// sender gets the outcome. Erase asks for it: it rewrites closed segments only.
    Roll(std::sync::mpsc::Sender<Result<()>>),
}

/// Handle to the log: cheap to clone; appends go through the appender thread.
#[derive(Clone)]
pub struct Log {
    pub(super) shared: Arc<Segments>,
    pub(super) tx: SyncSender<Request>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

/// Why an append was refused without being attempted.
#[derive(Debug, PartialEq, Eq)]
pub enum AppendRefused {
    QueueFull,
    Closed,
}

/// The sidecar file holding the acknowledged end of the log in `dir`.
pub fn acked_path(dir: &Path) -> PathBuf {
    dir.join("acked")
}

fn encode_acked(end: u64) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&end.to_le_bytes());
    let crc = crc32fast::hash(&out[..8]);
    out[8..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Reads the acknowledged end recorded next to the log at `path` (`None`: no sidecar).
pub(super) fn read_acked(dir: &Path) -> Result<Option<u64>> {
    let side = acked_path(dir);
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
pub(super) fn write_acked(file: &File, end: u64, sync: bool) -> std::io::Result<()> {
    file.write_all_at(&encode_acked(end), 0)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

pub(super) fn open_acked_file(dir: &Path) -> Result<File> {
    let side = acked_path(dir);
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&side)
        .map_err(|source| Error::File { path: side, source })
}

impl Log {
    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The segments' count and bytes (headers included), from the files as they are now.
    pub fn usage(&self) -> LogUsage {
        let bases = self.shared.list().bases.clone();
        let bytes = bases
            .iter()
            .filter_map(|b| std::fs::metadata(self.shared.path(*b)).ok())
            .map(|m| m.len())
            .sum();
        LogUsage {
            segments: bases.len() as u64,
            bytes,
            start: bases.first().copied().unwrap_or(FIRST_OFFSET),
        }
    }

    /// Closes the segment being appended to, when it holds records, and starts the next.
    pub fn roll(&self) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.tx
            .send(Request::Roll(tx))
            .map_err(|_| Error::Log("appender stopped".into()))?;
        rx.recv()
            .map_err(|_| Error::Log("appender stopped".into()))?
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
        self.tx.try_send(Request::Append(req)).map_err(|e| match e {
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
            .send(Request::Append(req))
            .map_err(|_| Error::Log("appender stopped".into()))?;
        rx.recv()
            .map_err(|_| Error::Log("appender stopped".into()))?
    }

    /// Offset just past the last durable record.
    pub fn end(&self) -> u64 {
        self.shared.end()
    }

    /// The first offset still in the log (later than [`FIRST_OFFSET`] once retention retired
    /// segments).
    pub fn start(&self) -> u64 {
        self.shared.list().bases[0]
    }

    /// A reader positioned anywhere (its own file handles).
    pub fn reader(&self) -> Result<LogReader> {
        Ok(LogReader::new(self.shared.clone()))
    }
}

/// How much disk the log takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LogUsage {
    pub segments: u64,
    pub bytes: u64,
    /// The first offset still in the log.
    pub start: u64,
}

/// The segment being appended to.
pub(super) struct Active {
    file: File,
    base: u64,
    /// The log offset just past its last record (where the next append goes).
    pos: u64,
    segment_bytes: u64,
    /// Set when the files may no longer be appended to in this process (a roll that could not
    /// be completed nor undone, or an injected crash): the appender stops, and the next open
    /// checks the files.
    halted: bool,
}

impl Active {
    pub(super) fn new(mut file: File, base: u64, pos: u64, segment_bytes: u64) -> Result<Active> {
        file.seek(SeekFrom::Start(pos - base + SEGMENT_HEADER))?;
        Ok(Active {
            file,
            base,
            pos,
            segment_bytes: segment_bytes.max(1),
            halted: false,
        })
    }

    fn holds_records(&self) -> bool {
        self.pos > self.base
    }

    /// Starts the next segment at the current end: created and synced (with its directory
    /// entry) before anything is appended to it, the acknowledged end synced too, so a closed
    /// segment is never mistaken for a torn tail.
    fn roll(&mut self, acked: &File, shared: &Segments) -> Result<()> {
        let file = segment::create(&shared.dir, self.pos)?;
        if let Err(e) = super::fault::hit_in(&shared.dir, super::fault::Point::AfterRollCreate) {
            self.halted = true;
            return Err(e.into());
        }
        if let Err(e) = write_acked(acked, self.pos, true) {
            // Without the new segment the log is as it was, and appends go on into this one;
            // if it cannot be removed, nothing more may be appended here.
            let path = shared.path(self.pos);
            if std::fs::remove_file(&path)
                .and_then(|()| segment::sync_dir(&shared.dir))
                .is_err()
            {
                self.halted = true;
            }
            return Err(e.into());
        }
        self.file = file;
        self.base = self.pos;
        shared.list().bases.push(self.base);
        tracing::debug!(base = self.base, "started a new log segment");
        Ok(())
    }
}

pub(super) fn appender(
    mut active: Active,
    acked: File,
    rx: Receiver<Request>,
    shared: Arc<Segments>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    while let Ok(first) = rx.recv() {
        let mut reqs = Vec::new();
        let mut next = Some(first);
        while let Some(req) = next.take() {
            match req {
                Request::Append(r) => reqs.push(r),
                Request::Roll(done) => {
                    // Appends queued before the roll go first.
                    write_group(
                        &mut active,
                        &acked,
                        &shared,
                        std::mem::take(&mut reqs),
                        &mut buf,
                    );
                    let r = if active.holds_records() {
                        active.roll(&acked, &shared)
                    } else {
                        Ok(())
                    };
                    let _ = done.send(r);
                }
            }
            if reqs.len() >= 1024 || active.halted {
                break;
            }
            next = rx.try_recv().ok();
        }
        write_group(&mut active, &acked, &shared, reqs, &mut buf);
        if active.halted {
            tracing::error!(log = %shared.dir.display(), "the event log stopped taking appends");
            return;
        }
    }
    // Closing: make the recorded end durable.
    let _ = write_acked(&acked, active.pos, true);
}

/// Writes a group of appends with one sync, then acknowledges them all.
fn write_group(
    active: &mut Active,
    acked: &File,
    shared: &Segments,
    mut reqs: Vec<AppendReq>,
    buf: &mut Vec<u8>,
) {
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
        return;
    }
    if active.halted {
        let cause = Arc::new(std::io::Error::other(
            "the event log stopped taking appends",
        ));
        for r in reqs {
            (r.done)(Err(Error::Append(cause.clone())));
        }
        return;
    }
    buf.clear();
    for r in &reqs {
        for p in &r.payloads {
            encode_record(buf, r.kind, r.accepted_ms, &r.source, p);
        }
    }
    let mut res = Ok(());
    if active.holds_records() && active.pos - active.base + buf.len() as u64 > active.segment_bytes
    {
        res = active.roll(acked, shared);
    }
    let res = res.and_then(|()| {
        active
            .file
            .write_all(buf)
            .and_then(|_| active.file.sync_data())
            .map_err(|e| Error::Append(Arc::new(e)))
    });
    match res {
        Ok(()) => {
            active.pos += buf.len() as u64;
            // Before the acknowledgements: a record a client was told is durable is never
            // past the recorded end (unless the OS loses this unsynced write).
            if let Err(e) = write_acked(acked, active.pos, false) {
                tracing::warn!(log = %shared.dir.display(), error = %e, "cannot record the acknowledged end");
            }
            *shared.end.lock().unwrap_or_else(|e| e.into_inner()) = active.pos;
            shared.cv.notify_all();
            for r in reqs {
                (r.done)(Ok(active.pos));
            }
        }
        Err(e) => {
            // Roll back a partial write so the next append starts at a record boundary.
            let at = active.pos - active.base + SEGMENT_HEADER;
            let _ = active.file.set_len(at);
            let _ = active.file.seek(SeekFrom::Start(at));
            // Every waiting request gets the same cause.
            let cause = match e {
                Error::Append(io) => io,
                other => Arc::new(std::io::Error::other(other.to_string())),
            };
            for r in reqs {
                (r.done)(Err(Error::Append(cause.clone())));
            }
        }
    }
}
