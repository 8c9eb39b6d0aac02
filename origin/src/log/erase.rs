//! Erasing forgotten users' records: each one is overwritten in place by a gap record of the
//! same length, so no offset moves and a rebuild from the log cannot bring them back.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::record::{Decoded, FIRST_OFFSET, MIN_RECORD, RecordKind, encode_record, read_record_at};
use crate::error::{Error, Result};

#[derive(serde::Deserialize)]
struct UserOnly {
    user: String,
}

/// Overwrites, for each `user → forget offset` of `users`, the user's event records before
/// that offset and the forget record itself with gap records. Only records before `end` are
/// touched (the caller passes its checkpointed offset: nothing past it is read again by a
/// replay, and no reader is reading before it). Returns how many records were erased.
pub fn erase_users(path: &Path, users: &HashMap<String, u64>, end: u64) -> Result<u64> {
    let Some(last) = users.values().max().copied() else {
        return Ok(0);
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| Error::File {
            path: path.to_path_buf(),
            source,
        })?;
    let file_len = file.metadata()?.len();
    let stop = file_len.min(end).min(last + 1);
    let mut pos = FIRST_OFFSET;
    let mut buf = Vec::new();
    let mut gap = Vec::new();
    let mut erased = 0u64;
    while pos < stop {
        let (rec, n) = match read_record_at(&file, pos, file_len, &mut buf)? {
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
            gap.clear();
            encode_record(&mut gap, RecordKind::Gap, 0, "", &vec![0u8; n - MIN_RECORD]);
            file.write_all_at(&gap, pos)?;
            erased += 1;
        }
        pos += n as u64;
    }
    if erased > 0 {
        file.sync_data()?;
    }
    Ok(erased)
}
