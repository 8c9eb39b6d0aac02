//! Segment files: names, headers, the directory listing, the set the appender, readers and
//! maintenance share, and the atomic replacement of a closed segment.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::record::MAGIC;
use crate::error::{Error, Result};

/// A segment file starts with the format magic and its base offset (u64 LE).
pub const SEGMENT_HEADER: u64 = MAGIC.len() as u64 + 8;
/// The name the previous, single-file log had in the data directory.
const SINGLE_FILE_LOG: &str = "events.log";
/// The suffix of a segment file (its name is its base offset, 20 digits).
const SUFFIX: &str = ".seg";
/// The suffix of a segment being rewritten (erase); one left by a crash is removed at open.
pub(super) const REWRITING: &str = ".rewriting";

/// The path of the segment starting at `base` in `dir`.
pub fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}{SUFFIX}"))
}

/// The base offset a segment file name stands for (`None`: not a segment file).
fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

pub(super) fn header(base: u64) -> [u8; SEGMENT_HEADER as usize] {
    let mut h = [0u8; SEGMENT_HEADER as usize];
    h[..MAGIC.len()].copy_from_slice(MAGIC);
    h[MAGIC.len()..].copy_from_slice(&base.to_le_bytes());
    h
}

/// Refuses a data directory that still holds the single-file log of an earlier development
/// version: this one neither reads nor converts it.
pub(super) fn refuse_single_file_log(dir: &Path) -> Result<()> {
    let Some(data_dir) = dir.parent() else {
        return Ok(());
    };
    let old = data_dir.join(SINGLE_FILE_LOG);
    if old.exists() {
        return Err(Error::Log(format!(
            "{} is a single-file event log of an earlier development version; this version \
             keeps the log as segment files in {}. It is not read or converted: move it out \
             of the data directory (and the store with it, which points into it) to start \
             empty",
            old.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// The segment bases in `dir`, ascending (an absent directory has none). Leftovers of a
/// rewrite a crash interrupted are removed: the segment they were to replace is intact.
pub fn list(dir: &Path) -> Result<Vec<u64>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::File {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut bases = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = parse_name(name) {
            bases.push(base);
        } else if name.ends_with(REWRITING) {
            std::fs::remove_file(entry.path())?;
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Checks a segment file's header: the magic of this format and the base its name gives.
pub(super) fn check_header(file: &File, path: &Path, base: u64) -> Result<()> {
    let mut h = [0u8; SEGMENT_HEADER as usize];
    file.read_exact_at(&mut h, 0)
        .map_err(|source| Error::File {
            path: path.to_path_buf(),
            source,
        })?;
    if h != header(base) {
        return Err(Error::LogDamaged {
            path: path.to_path_buf(),
            offset: base,
            detail: "the segment header is not this format's, or names another base offset".into(),
        });
    }
    Ok(())
}

/// Creates the segment starting at `base` holding only its header, durably (file and
/// directory entry) before anything is appended to it.
pub(super) fn create(dir: &Path, base: u64) -> Result<File> {
    let path = segment_path(dir, base);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|source| Error::File {
            path: path.clone(),
            source,
        })?;
    file.write_all(&header(base))?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(file)
}

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces the closed segment at `path` with `bytes` atomically: a new file written and
/// synced beside it, given the old file's modification time (retention reads segment ages
/// from it), renamed over it, and the directory synced. A crash leaves the old or the new
/// file, never a mix.
pub(super) fn replace_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let modified = std::fs::metadata(path)?.modified()?;
    let mut tmp = path.to_path_buf().into_os_string();
    tmp.push(REWRITING);
    let tmp = PathBuf::from(tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.set_modified(modified)?;
    f.sync_all()?;
    drop(f);
    super::fault::hit_in(path, super::fault::Point::BeforeRewriteRename)?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// The segments of an open log, shared by the appender (which adds one when it rolls),
/// readers and maintenance (erase, retention).
#[derive(Debug)]
pub(super) struct Segments {
    pub(super) dir: PathBuf,
    inner: Mutex<SegmentList>,
    /// The durable end of the log (just past the last record synced).
    pub(super) end: Mutex<u64>,
    pub(super) cv: Condvar,
}

#[derive(Clone, Debug)]
pub(super) struct SegmentList {
    /// Ascending base offsets; the last is the segment being appended to.
    pub(super) bases: Vec<u64>,
    /// Changes whenever a segment file is replaced or deleted, so readers reopen theirs.
    pub(super) generation: u64,
}

impl SegmentList {
    /// The index of the segment holding `offset` (`None`: before the first).
    pub(super) fn find(&self, offset: u64) -> Option<usize> {
        self.bases.partition_point(|b| *b <= offset).checked_sub(1)
    }
}

impl Segments {
    pub(super) fn new(dir: PathBuf, bases: Vec<u64>, end: u64) -> Segments {
        Segments {
            dir,
            inner: Mutex::new(SegmentList {
                bases,
                generation: 0,
            }),
            end: Mutex::new(end),
            cv: Condvar::new(),
        }
    }

    pub(super) fn list(&self) -> MutexGuard<'_, SegmentList> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn end(&self) -> u64 {
        *self.end.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn path(&self, base: u64) -> PathBuf {
        segment_path(&self.dir, base)
    }
}

/// The offsets the segment files in `dir` cover, read from their names and sizes without
/// checking their records (`None`: no segments).
pub fn extent(dir: &Path) -> Result<Option<std::ops::Range<u64>>> {
    refuse_single_file_log(dir)?;
    let bases = list(dir)?;
    let (Some(&first), Some(&last)) = (bases.first(), bases.last()) else {
        return Ok(None);
    };
    let path = segment_path(dir, last);
    let len = std::fs::metadata(&path)
        .map_err(|source| Error::File { path, source })?
        .len();
    Ok(Some(first..last + len.saturating_sub(SEGMENT_HEADER)))
}
