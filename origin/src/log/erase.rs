//! Erasing forgotten users' records: in each segment that holds some, every one is replaced by
//! a gap record of the same length, so no offset moves and a rebuild from the log cannot bring
//! them back. A segment is rewritten whole and swapped in atomically; the segment being
//! appended to is closed first, so only closed segments are ever rewritten.

use std::collections::HashMap;
use std::path::Path;

use super::record::{Decoded, MIN_RECORD, RecordKind, decode_record, encode_record};
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
    /// no reader is reading before it). Returns how many records were erased. Each segment is
    /// read whole into memory (one at a time).
    ///
    /// A crash part-way leaves each segment either as it was or erased; the caller keeps the
    /// users due until this returns, so the next open finishes the work.
    pub fn erase_users(&self, users: &HashMap<String, u64>, end: u64) -> Result<u64> {
        let Some(last) = users.values().max().copied() else {
            return Ok(0);
        };
        let stop = end.min(last + 1).min(self.end());
        let needles = Needles::new(users);
        let dir = self.dir().to_path_buf();
        let mut erased = 0u64;
        let mut i = 0;
        loop {
            let (base, is_last) = {
                let list = self.shared.list();
                let Some(&base) = list.bases.get(i) else {
                    break;
                };
                (base, i + 1 == list.bases.len())
            };
            if base >= stop {
                break;
            }
            let path = segment_path(&dir, base);
            let mut bytes = read(&path)?;
            let hits = find(&bytes, &path, base, stop, users, &needles)?;
            if !hits.is_empty() {
                if is_last {
                    // Its records to erase are before the checkpoint, so it holds records;
                    // closed, it takes no more appends, and what they added is read again.
                    self.roll()?;
                    bytes = read(&path)?;
                }
                let mut gap = Vec::new();
                for &(offset, n) in &hits {
                    let at = (offset - base + SEGMENT_HEADER) as usize;
                    gap.clear();
                    encode_record(&mut gap, RecordKind::Gap, 0, "", &vec![0u8; n - MIN_RECORD]);
                    bytes[at..at + n].copy_from_slice(&gap);
                }
                replace_atomically(&path, &bytes)?;
                self.shared.list().generation += 1;
                erased += hits.len() as u64;
            }
            i += 1;
        }
        Ok(erased)
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Each forgotten user as a JSON string (`"id"`): an event whose payload holds none of them
/// and no escape can only name another user, and is not parsed.
struct Needles(Vec<Vec<u8>>);

impl Needles {
    fn new(users: &HashMap<String, u64>) -> Needles {
        Needles(
            users
                .keys()
                .map(|u| serde_json::to_vec(u).unwrap_or_default())
                .collect(),
        )
    }

    fn may_name(&self, payload: &[u8]) -> bool {
        payload.contains(&b'\\')
            || self
                .0
                .iter()
                .any(|n| payload.windows(n.len()).any(|w| w == n.as_slice()))
    }
}

/// The records of a segment (`bytes`, the file at `path` starting at offset `base`) before
/// `stop` to erase: their offsets and lengths.
fn find(
    bytes: &[u8],
    path: &Path,
    base: u64,
    stop: u64,
    users: &HashMap<String, u64>,
    needles: &Needles,
) -> Result<Vec<(u64, usize)>> {
    let mut pos = base;
    let mut hits = Vec::new();
    loop {
        let at = (pos - base + SEGMENT_HEADER) as usize;
        if pos >= stop || at >= bytes.len() {
            break;
        }
        let (rec, n) = match decode_record(&bytes[at..], pos) {
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
            RecordKind::Event => {
                needles.may_name(&rec.payload)
                    && serde_json::from_slice::<UserOnly>(&rec.payload)
                        .ok()
                        .and_then(|u| users.get(&u.user))
                        .is_some_and(|forget_at| rec.offset < *forget_at)
            }
            RecordKind::Forget => std::str::from_utf8(&rec.payload)
                .ok()
                .and_then(|u| users.get(u))
                .is_some_and(|forget_at| rec.offset == *forget_at),
            RecordKind::Catalog | RecordKind::Rules | RecordKind::Gap => false,
        };
        if erase && n >= MIN_RECORD {
            hits.push((pos, n));
        }
        pos += n as u64;
    }
    Ok(hits)
}
