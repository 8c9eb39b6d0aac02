//! `attune-origin salvage`: every damaged segment rewritten with each valid record kept at its
//! offset and each damaged range a gap of the same length.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::{
    Decoded, HEADER, MAX_BODY, MIN_RECORD, RecordKind, SYNC, encode_record, read_record_at,
};
use super::segment::{self, REWRITING, SEGMENT_HEADER, header, segment_path, sync_dir};
use super::writer::{open_acked_file, write_acked};
use crate::error::{Error, Result};

/// What [`salvage`] did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SalvageReport {
    /// The log's directory.
    pub log: PathBuf,
    /// Segments checked.
    pub segments: u64,
    /// Where each damaged segment file was moved (a new one took its name).
    pub damaged_files: Vec<PathBuf>,
    /// Valid records (gap records, from an earlier salvage or an erased user, are kept too but
    /// not counted).
    pub records_kept: u64,
    /// Bytes no valid record covered, each range replaced by gap records of the same length
    /// (or dropped: a fragment shorter than the smallest record at the end of the log).
    pub bytes_skipped: u64,
    /// The damaged ranges: (offset, length).
    pub damaged: Vec<(u64, u64)>,
}

/// Checks every segment of the log in `dir` and rewrites each damaged one: valid records
/// copied, each damaged range (a bad header, bad records, a closed segment cut short) replaced
/// by gap records of exactly its length, so every offset before and after the damage names the
/// same record as before (the store's checkpoint stays valid). A damaged file is moved to
/// `<segment>.damaged-<epoch ms>`: it still holds what could not be read, so delete it once
/// it is no longer needed (a later forget does not erase records from it). The log must not be
/// open (the node must be stopped).
pub fn salvage(dir: &Path) -> Result<SalvageReport> {
    segment::refuse_single_file_log(dir)?;
    let bases = segment::list(dir)?;
    if bases.is_empty() {
        return Err(Error::Log(format!(
            "{} holds no log segments: nothing to salvage",
            dir.display()
        )));
    }
    let mut report = SalvageReport {
        log: dir.to_path_buf(),
        segments: bases.len() as u64,
        damaged_files: Vec::new(),
        records_kept: 0,
        bytes_skipped: 0,
        damaged: Vec::new(),
    };
    let mut end = bases[0];
    for (i, &base) in bases.iter().enumerate() {
        let path = segment_path(dir, base);
        let file = File::open(&path).map_err(|source| Error::File {
            path: path.clone(),
            source,
        })?;
        let len = file.metadata()?.len();
        // A closed segment must end where the next begins; the last ends where its file does.
        let seg_end = bases
            .get(i + 1)
            .copied()
            .unwrap_or(base + len.saturating_sub(SEGMENT_HEADER));
        let is_last = i + 1 == bases.len();
        end = if check(&file, base, len, seg_end, &mut report)? {
            seg_end
        } else {
            salvage_segment(&file, &path, base, len, seg_end, is_last, &mut report)?
        };
    }
    let side = open_acked_file(dir)?;
    write_acked(&side, end, true)?;
    sync_dir(dir)?;
    Ok(report)
}

/// Whether the segment is intact: its header, every record, its end. Counts its records.
fn check(
    file: &File,
    base: u64,
    len: u64,
    seg_end: u64,
    report: &mut SalvageReport,
) -> Result<bool> {
    let mut h = [0u8; SEGMENT_HEADER as usize];
    if len < SEGMENT_HEADER || file.read_exact_at(&mut h, 0).is_err() || h != header(base) {
        return Ok(false);
    }
    if base + len - SEGMENT_HEADER != seg_end {
        return Ok(false);
    }
    let mut pos = base;
    let mut buf = Vec::new();
    let mut kept = 0;
    while pos < seg_end {
        match read_record_at(file, pos - base + SEGMENT_HEADER, pos, len, &mut buf)? {
            Decoded::Record(rec, n) => {
                kept += u64::from(rec.kind != RecordKind::Gap);
                pos += n as u64;
            }
            _ => return Ok(false),
        }
    }
    report.records_kept += kept;
    Ok(true)
}

/// Writes the salvaged segment beside `path`, moves the damaged file aside and puts the new
/// one in its place; returns the new segment's end offset.
fn salvage_segment(
    file: &File,
    path: &Path,
    base: u64,
    len: u64,
    seg_end: u64,
    is_last: bool,
    report: &mut SalvageReport,
) -> Result<u64> {
    let mut tmp = path.to_path_buf().into_os_string();
    tmp.push(REWRITING);
    let tmp = PathBuf::from(tmp);
    let mut out = std::io::BufWriter::with_capacity(
        1 << 20,
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?,
    );
    out.write_all(&header(base))?;
    // What the file holds of this segment's offsets; bytes past them would overlap the next
    // segment's.
    let readable = len.min(seg_end - base + SEGMENT_HEADER);
    if len > readable {
        tracing::warn!(segment = %path.display(), bytes = len - readable, "dropping bytes past the segment's end");
        report.bytes_skipped += len - readable;
    }
    let mut pos = base;
    let mut new_end = base;
    let mut buf = Vec::new();
    let mut gap = Vec::new();
    while pos < seg_end {
        let at = pos - base + SEGMENT_HEADER;
        if at < readable
            && let Decoded::Record(rec, n) = read_record_at(file, at, pos, readable, &mut buf)?
        {
            out.write_all(&buf[..n])?;
            report.records_kept += u64::from(rec.kind != RecordKind::Gap);
            pos += n as u64;
            new_end = pos;
            continue;
        }
        // No record can start inside the smallest one.
        let next = if at < readable {
            let next_at = next_valid(file, (at + MIN_RECORD as u64).min(readable), readable)?;
            base + next_at - SEGMENT_HEADER
        } else {
            seg_end
        };
        let skipped = next - pos;
        report.bytes_skipped += skipped;
        report.damaged.push((pos, skipped));
        tracing::warn!(segment = %path.display(), offset = pos, bytes = skipped, "skipping damaged bytes");
        let written = write_gap(&mut out, skipped, &mut gap)?;
        new_end += written;
        if written != skipped && (next != seg_end || !is_last) {
            return Err(Error::Log(format!(
                "{}: a damaged range of {skipped} bytes at offset {pos} is too short to be \
                 replaced by a gap record",
                path.display()
            )));
        }
        pos = next;
    }
    let out = out.into_inner().map_err(|e| e.into_error())?;
    if let Ok(modified) = file.metadata().and_then(|m| m.modified()) {
        out.set_modified(modified)?;
    }
    out.sync_all()?;
    drop(out);
    let mut aside = path.to_path_buf().into_os_string();
    aside.push(format!(".damaged-{}", crate::now_ms()));
    let aside = PathBuf::from(aside);
    // The damaged file gets its second name before the new one takes the first, so a crash
    // in between never leaves the segment missing.
    std::fs::hard_link(path, &aside)?;
    std::fs::rename(&tmp, path)?;
    report.damaged_files.push(aside);
    Ok(new_end)
}

/// Gap records covering exactly `bytes`, but for a remainder shorter than the smallest
/// record, which is dropped (only the end of the log can have one). Returns the bytes written.
fn write_gap(out: &mut impl Write, mut bytes: u64, buf: &mut Vec<u8>) -> std::io::Result<u64> {
    let max = (HEADER + MAX_BODY) as u64;
    let mut written = 0;
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
        written += take;
    }
    Ok(written)
}

/// The file position of the first valid record at or after `from` (`len` if there is none).
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
            let at = q + i as u64;
            // The offset given to the decoder does not matter: only validity is asked.
            if w == SYNC
                && matches!(
                    read_record_at(file, at, at, len, &mut rec)?,
                    Decoded::Record(..)
                )
            {
                return Ok(at);
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
