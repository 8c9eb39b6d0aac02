//! Erasing forgotten users' records: in each segment that holds some, every one is replaced by
//! a gap record of the same length, so no offset moves and a rebuild from the log cannot bring
//! them back. A segment is rewritten whole and swapped in atomically; the segment being
//! appended to is closed first, so only closed segments are ever rewritten.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use super::record::{Decoded, MIN_RECORD, RecordKind, encode_record, read_record_at};
use super::segment::{SEGMENT_HEADER, replace_atomically, segment_path};
use super::writer::Log;
use crate::error::{Error, Result};

#[derive(serde::Deserialize)]
struct UserOnly {
    user: String,
}

impl Log {
    /// Erases, for each `user → forget offset` of `users`, the user's event records before
    /// that offset and the forget record itself. Only records before `end` are touched (the
    /// caller passes its checkpointed offset: nothing past it is read again by a replay, and
    /// no reader is reading before it). Returns how many records were erased.
    ///
    /// A crash part-way leaves each segment either as it was or erased; the caller keeps the
    /// users due until this returns, so the next open finishes the work.
    pub fn erase_users(&self, users: &HashMap<String, u64>, end: u64) -> Result<u64> {
        let Some(last) = users.values().max().copied() else {
            return Ok(0);
        };
        let stop = end.min(last + 1).min(self.end());
        let dir = self.dir().to_path_buf();
        let mut erased = 0u64;
        let mut i = 0;
        loop {
            let (base, seg_end, is_last) = {
                let list = self.shared.list();
                let Some(&base) = list.bases.get(i) else {
                    break;
                };
                let next = list.bases.get(i + 1).copied();
                (base, next.unwrap_or(u64::MAX), next.is_none())
            };
            if base >= stop {
                break;
            }
            let path = segment_path(&dir, base);
            let hits = find(&path, base, seg_end.min(stop), users)?;
            if !hits.is_empty() {
                if is_last {
                    // Its records to erase are before the checkpoint, so it holds records.
                    self.roll()?;
                }
                rewrite(&path, base, &hits)?;
                self.shared.list().generation += 1;
                erased += hits.len() as u64;
            }
            i += 1;
        }
        Ok(erased)
    }
}

/// The records of the segment at `path` (starting at offset `base`) before `stop` to erase:
/// their offsets and lengths.
fn find(
    path: &Path,
    base: u64,
    stop: u64,
    users: &HashMap<String, u64>,
) -> Result<Vec<(u64, usize)>> {
    let file = File::open(path).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })?;
    let file_len = file.metadata()?.len();
    let mut pos = base;
    let mut buf = Vec::new();
    let mut hits = Vec::new();
    while pos < stop && pos - base + SEGMENT_HEADER < file_len {
        let at = pos - base + SEGMENT_HEADER;
        let (rec, n) = match read_record_at(&file, at, pos, file_len, &mut buf)? {
            Decoded::Record(rec, n) => (rec, n),
            Decoded::Incomplete { .. } | Decoded::Bad(_) => {
                return Err(Error::LogDamaged {
                    path: path.to_path_buf(),
                    offset: pos,
                    detail: "while erasing forgotten users' records".into(),
                });
            }
        };
        let erase = match rec.kind {
            RecordKind::Event => serde_json::from_slice::<UserOnly>(&rec.payload)
                .ok()
                .and_then(|u| users.get(&u.user))
                .is_some_and(|forget_at| rec.offset < *forget_at),
            RecordKind::Forget => std::str::from_utf8(&rec.payload)
                .ok()
                .and_then(|u| users.get(u))
                .is_some_and(|forget_at| rec.offset == *forget_at),
            RecordKind::Catalog | RecordKind::Gap => false,
        };
        if erase && n >= MIN_RECORD {
            hits.push((pos, n));
        }
        pos += n as u64;
    }
    Ok(hits)
}

/// Rewrites the closed segment at `path` with a gap record in place of each hit.
fn rewrite(path: &Path, base: u64, hits: &[(u64, usize)]) -> Result<()> {
    let mut bytes = std::fs::read(path).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })?;
    let mut gap = Vec::new();
    for &(offset, n) in hits {
        let at = (offset - base + SEGMENT_HEADER) as usize;
        gap.clear();
        encode_record(&mut gap, RecordKind::Gap, 0, "", &vec![0u8; n - MIN_RECORD]);
        bytes[at..at + n].copy_from_slice(&gap);
    }
    replace_atomically(path, &bytes)
}
