//! `attune-origin salvage`: a new log from a damaged one, every valid record kept at its
//! offset.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::{
    Decoded, HEADER, MAGIC, MAX_BODY, MIN_RECORD, RecordKind, SYNC, encode_record, read_record_at,
};
use super::writer::{open_acked_file, write_acked};
use crate::error::{Error, Result};

/// What [`salvage`] did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SalvageReport {
    /// The new log (at the original path).
    pub log: PathBuf,
    /// Where the damaged file was moved.
    pub damaged_file: PathBuf,
    /// Valid records copied (gap records, from an earlier salvage or an erased user, copied
    /// too but not counted).
    pub records_kept: u64,
    /// Bytes no valid record covered, each range replaced by gap records of the same length.
    pub bytes_skipped: u64,
    /// The damaged ranges: (offset, length).
    pub damaged: Vec<(u64, u64)>,
}

/// Copies every valid record of the log at `path` into a new log, each damaged range replaced
/// by gap records of exactly its length, so every offset before and after the damage names the
/// same record as before (the store's checkpoint stays valid). The damaged file is moved to
/// `<path>.damaged-<epoch ms>`: it still holds what could not be read, so delete it once it is
/// no longer needed (a later forget does not erase records from it). The log must not be open
/// (the node must be stopped).
pub fn salvage(path: &Path) -> Result<SalvageReport> {
    let file = File::open(path).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })?;
    let len = file.metadata()?.len();
    let mut magic = [0u8; 8];
    if len < MAGIC.len() as u64 || {
        file.read_exact_at(&mut magic, 0)?;
        &magic != MAGIC
    } {
        return Err(Error::Log(format!(
            "{} is not an attune log of this format: nothing to salvage",
            path.display()
        )));
    }
    let mut tmp = path.to_path_buf().into_os_string();
    tmp.push(".salvaging");
    let tmp = PathBuf::from(tmp);
    let mut out = std::io::BufWriter::with_capacity(
        1 << 20,
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?,
    );
    out.write_all(MAGIC)?;
    let mut report = SalvageReport {
        log: path.to_path_buf(),
        damaged_file: PathBuf::new(),
        records_kept: 0,
        bytes_skipped: 0,
        damaged: Vec::new(),
    };
    let mut pos = MAGIC.len() as u64;
    let mut buf = Vec::new();
    let mut gap = Vec::new();
    while pos < len {
        if let Decoded::Record(rec, n) = read_record_at(&file, pos, len, &mut buf)? {
            out.write_all(&buf[..n])?;
            if rec.kind != RecordKind::Gap {
                report.records_kept += 1;
            }
            pos += n as u64;
            continue;
        }
        // No record can start inside the smallest one.
        let next = next_valid(&file, pos + MIN_RECORD as u64, len)?;
        let skipped = next - pos;
        report.bytes_skipped += skipped;
        report.damaged.push((pos, skipped));
        tracing::warn!(log = %path.display(), offset = pos, bytes = skipped, "skipping damaged bytes");
        write_gap(&mut out, skipped, &mut gap)?;
        pos = next;
    }
    let out = out.into_inner().map_err(|e| e.into_error())?;
    out.sync_all()?;
    drop(out);
    let mut aside = path.to_path_buf().into_os_string();
    aside.push(format!(".damaged-{}", crate::now_ms()));
    report.damaged_file = PathBuf::from(aside);
    std::fs::rename(path, &report.damaged_file)?;
    std::fs::rename(&tmp, path)?;
    let new_len = std::fs::metadata(path)?.len();
    let side = open_acked_file(path)?;
    write_acked(&side, new_len, true)?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).ok();
    }
    Ok(report)
}

/// Gap records covering exactly `bytes` (a trailing fragment shorter than the smallest record
/// is dropped: it can only be the end of the file).
fn write_gap(out: &mut impl Write, mut bytes: u64, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let max = (HEADER + MAX_BODY) as u64;
    while bytes >= MIN_RECORD as u64 {
        // Leave no remainder too small for a record of its own.
        let mut take = bytes.min(max);
        if bytes - take != 0 && bytes - take < MIN_RECORD as u64 {
            take -= MIN_RECORD as u64;
        }
        buf.clear();
        let payload = vec![0u8; take as usize - MIN_RECORD];
        encode_record(buf, RecordKind::Gap, 0, "", &payload);
        debug_assert_eq!(buf.len() as u64, take);
        out.write_all(buf)?;
        bytes -= take;
    }
    Ok(())
}

/// The offset of the first valid record at or after `from` (`len` if there is none).
fn next_valid(file: &File, from: u64, len: u64) -> std::io::Result<u64> {
    const WINDOW: usize = 1 << 20;
    let mut q = from;
    let mut win = Vec::new();
    let mut rec = Vec::new();
    while q + HEADER as u64 <= len {
        let n = ((len - q) as usize).min(WINDOW);
        win.resize(n, 0);
        file.read_exact_at(&mut win, q)?;
        for (i, w) in win.windows(SYNC.len()).enumerate() {
            if w == SYNC
                && matches!(
                    read_record_at(file, q + i as u64, len, &mut rec)?,
                    Decoded::Record(..)
                )
            {
                return Ok(q + i as u64);
            }
        }
        // The next window overlaps this one by a marker's length less one.
        q += (n - (SYNC.len() - 1)).max(1) as u64;
    }
    Ok(len)
}

#[cfg(test)]
pub(super) fn write_gap_for_tests(out: &mut Vec<u8>, bytes: u64) {
    let mut buf = Vec::new();
    write_gap(out, bytes, &mut buf).unwrap();
}
