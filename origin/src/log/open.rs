//! Opening the log: the segment chain checked (headers, no segment missing or cut short), then
//! the records past the committed offset, where a bad record at or past the acknowledged end of
//! the last segment is a torn tail (cut) and any other is damage (refused).

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::sync_channel;

use super::record::{Decoded, FIRST_OFFSET, read_record_at};
use super::segment::{self, SEGMENT_HEADER, Segments, check_header, segment_path};
use super::writer::{Active, Log, Request, appender, open_acked_file, read_acked, write_acked};
use crate::error::{Error, Result};

/// One segment file as found at open.
struct Found {
    base: u64,
    file: File,
    len: u64,
}

impl Found {
    /// Offset just past its last byte.
    fn end(&self) -> u64 {
        self.base + self.len.saturating_sub(SEGMENT_HEADER)
    }
}

impl Log {
    /// Opens (or creates) the log in the directory `dir`, checking the records from
    /// `committed` (a known-good record boundary, the consumer's committed offset) on: a torn
    /// tail of the last segment past the acknowledged end is cut, any other damage refuses to
    /// open ([`Error::LogDamaged`] names the segment file and the offset). A segment is closed
    /// and the next started once a write would take it past `segment_bytes`.
    pub fn open(
        dir: &Path,
        committed: u64,
        queue_capacity: usize,
        segment_bytes: u64,
    ) -> Result<Log> {
        segment::refuse_single_file_log(dir)?;
        std::fs::create_dir_all(dir).map_err(|source| Error::File {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut acked = read_acked(dir)?;
        let mut found = find_segments(dir, acked)?;
        if found.is_empty() {
            if committed > FIRST_OFFSET {
                return Err(Error::Log(format!(
                    "{}: the store's checkpoint is at offset {committed}, but the log has no \
                     segments",
                    dir.display()
                )));
            }
            let file = segment::create(dir, FIRST_OFFSET)?;
            acked = None;
            found.push(Found {
                base: FIRST_OFFSET,
                file,
                len: SEGMENT_HEADER,
            });
        }
        let first = found[0].base;
        let last = found.len() - 1;
        let end = found[last].end();
        // An empty store (0) starts at the first retained segment; a checkpoint before it
        // means segments it still needs are gone (retention never retires those).
        let committed = if committed <= FIRST_OFFSET {
            first
        } else {
            committed
        };
        if committed < first {
            return Err(Error::Log(format!(
                "{}: the store's checkpoint is at offset {committed}, before the first segment \
                 ({}): segments the store still needs are missing",
                dir.display(),
                segment_path(dir, first).display()
            )));
        }
        if committed > end {
            return Err(Error::Log(format!(
                "{}: committed offset {committed} is past the end of the log ({end})",
                dir.display()
            )));
        }
        // No sidecar next to records (it was removed): every record counts as acknowledged,
        // so damage anywhere refuses rather than cuts.
        let acked = acked.unwrap_or(end).max(committed);
        if acked > end {
            return Err(Error::LogDamaged {
                path: segment_path(dir, found[last].base),
                offset: end,
                detail: format!("the log ends before the acknowledged end {acked}"),
            });
        }
        let mut pos = committed;
        for (i, seg) in found.iter().enumerate() {
            if seg.end() <= pos && i < last {
                continue;
            }
            // In a closed segment every record was synced before the next segment was made.
            let acked_here = if i == last { acked } else { seg.end() };
            pos = scan(seg, dir, pos, acked_here)?;
        }
        let active = found.pop().expect("at least one segment");
        let bases: Vec<u64> = found.iter().map(|f| f.base).chain([active.base]).collect();
        drop(found);
        if pos < end {
            let path = segment_path(dir, active.base);
            tracing::warn!(
                segment = %path.display(),
                at = pos,
                end,
                acknowledged = acked,
                "cutting an unacknowledged torn tail of the event log"
            );
            active.file.set_len(pos - active.base + SEGMENT_HEADER)?;
            active.file.sync_all()?;
        }
        let acked_file = open_acked_file(dir)?;
        write_acked(&acked_file, pos, true)?;
        segment::sync_dir(dir).ok();
        let shared = Arc::new(Segments::new(dir.to_path_buf(), bases, pos));
        let (tx, rx) = sync_channel::<Request>(queue_capacity.max(1));
        let s = shared.clone();
        let active = Active::new(active.file, active.base, pos, segment_bytes)?;
        std::thread::Builder::new()
            .name("attune-log-append".into())
            .spawn(move || appender(active, acked_file, rx, s))?;
        Ok(Log { shared, tx })
    }
}

/// The segment files of `dir`, headers checked and each closed one ending exactly where the
/// next begins. A last segment cut short inside its header (a crash while it was created,
/// before anything was acknowledged in it) is made again.
fn find_segments(dir: &Path, acked: Option<u64>) -> Result<Vec<Found>> {
    let bases = segment::list(dir)?;
    let mut found: Vec<Found> = Vec::with_capacity(bases.len());
    for (i, base) in bases.iter().copied().enumerate() {
        let path = segment_path(dir, base);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| Error::File {
                path: path.clone(),
                source,
            })?;
        let mut len = file.metadata()?.len();
        let is_last = i + 1 == bases.len();
        if let Some(prev) = found.last()
            && prev.end() != base
        {
            return Err(Error::LogDamaged {
                path: segment_path(dir, prev.base),
                offset: prev.end().min(base),
                detail: format!(
                    "the segment ends at offset {} but the next one starts at {base}: a \
                     segment is missing or was cut short",
                    prev.end()
                ),
            });
        }
        if len < SEGMENT_HEADER {
            if !is_last || acked.is_some_and(|a| a > base) {
                return Err(Error::LogDamaged {
                    path,
                    offset: base,
                    detail: "the segment is shorter than its header".into(),
                });
            }
            tracing::warn!(segment = %path.display(), "remaking a segment a crash left half created");
            drop(file);
            let file = segment::create(dir, base)?;
            len = SEGMENT_HEADER;
            found.push(Found { base, file, len });
            continue;
        }
        check_header(&file, &path, base)?;
        found.push(Found { base, file, len });
    }
    Ok(found)
}

/// Checks the records of `seg` from offset `from` (a record boundary) to its end; returns the
/// end of the last valid record. A bad record before `acked` is an error; at or past it, the
/// scan stops there (a torn tail).
fn scan(seg: &Found, dir: &Path, from: u64, acked: u64) -> Result<u64> {
    let mut pos = from;
    let mut buf = Vec::new();
    let end = seg.end();
    while pos < end {
        let at = pos - seg.base + SEGMENT_HEADER;
        let why = match read_record_at(&seg.file, at, pos, seg.len, &mut buf)? {
            Decoded::Record(_, n) => {
                pos += n as u64;
                continue;
            }
            Decoded::Incomplete { .. } => "the record runs past the end of the segment",
            Decoded::Bad(why) => why,
        };
        if pos < acked {
            return Err(Error::LogDamaged {
                path: segment_path(dir, seg.base),
                offset: pos,
                detail: format!("{why}, before the acknowledged end {acked}"),
            });
        }
        break;
    }
    Ok(pos)
}
