//! Opening the log: the check of the records past the committed offset, where a bad record
//! at or past the acknowledged end is a torn tail (cut) and one before it is damage (refused).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Condvar, Mutex};

use super::record::{Decoded, FIRST_OFFSET, MAGIC, read_record_at};
use super::writer::{AppendReq, End, Log, appender, open_acked_file, read_acked, write_acked};
use crate::error::{Error, Result};

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
