//! The writer: the [`Log`] handle, the appender thread that group-commits, and the
//! acknowledged-end sidecar.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};

use super::ADMIN_SOURCE;
use super::reader::LogReader;
use super::record::{MAX_RECORD_BYTES, RecordKind, encode_record};
use crate::error::{Error, Result};

/// Shared durable-end marker.
#[derive(Debug, Default)]
pub(super) struct End {
    pub(super) end: Mutex<u64>,
    pub(super) cv: Condvar,
    pub(super) records: Mutex<u64>,
}

pub(super) struct AppendReq {
    kind: RecordKind,
    accepted_ms: u64,
    source: String,
    payloads: Vec<Vec<u8>>,
    done: Box<dyn FnOnce(Result<u64>) + Send>,
}

/// Handle to the log: cheap to clone; appends go through the appender thread.
#[derive(Clone)]
pub struct Log {
    pub(super) shared: Arc<End>,
    pub(super) tx: SyncSender<AppendReq>,
    pub(super) path: Arc<PathBuf>,
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
pub(super) fn read_acked(path: &Path) -> Result<Option<u64>> {
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
pub(super) fn write_acked(file: &File, end: u64, sync: bool) -> std::io::Result<()> {
    file.write_all_at(&encode_acked(end), 0)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

pub(super) fn open_acked_file(path: &Path) -> Result<File> {
    let side = acked_path(path);
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&side)
        .map_err(|source| Error::File { path: side, source })
}

impl Log {
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

pub(super) fn appender(
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
