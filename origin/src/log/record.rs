//! The record format: framing, CRC and kinds, and decoding one record from a buffer or a file.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// The start of every segment file (format 3: segments).
pub(super) const MAGIC: &[u8; 8] = b"ATLOG\x003\n";
/// Offset of the first record of a log (the first segment's header is before it, so in that
/// segment a record's offset is its position in the file).
pub const FIRST_OFFSET: u64 = super::segment::SEGMENT_HEADER;
/// Largest record body accepted (an oversize event is still logged so it reaches the DLQ).
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;
/// Marks the start of every record.
pub(super) const SYNC: [u8; 4] = *b"\xA7~LR";
/// sync + len + crc.
pub(super) const HEADER: usize = 12;
/// kind + accepted_ms + source_len.
pub(super) const BODY_MIN: usize = 10;
/// The smallest record (an empty source and payload).
pub(super) const MIN_RECORD: usize = HEADER + BODY_MIN;
/// Largest `len` a record can have (body: the payload plus its fixed fields and source).
pub(super) const MAX_BODY: usize = MAX_RECORD_BYTES + BODY_MIN + 255;

/// What a record's payload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// One event as received (JSON).
    Event,
    /// A privacy delete: the payload is the user id (UTF-8).
    Forget,
    /// Catalog entries to add or replace: the payload is a MessagePack array of `CatalogItem`.
    Catalog,
    /// Bytes [`salvage`](super::salvage()) could not read; nothing to apply.
    Gap,
    /// The segment, variant and experiment rules in force from this record on: the payload
    /// is an `attune_core::rules::Config` as JSON.
    Rules,
}

impl RecordKind {
    pub(super) fn code(self) -> u8 {
        match self {
            RecordKind::Event => 0,
            RecordKind::Forget => 1,
            RecordKind::Catalog => 2,
            RecordKind::Gap => 3,
            RecordKind::Rules => 4,
        }
    }

    pub(super) fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => RecordKind::Event,
            1 => RecordKind::Forget,
            2 => RecordKind::Catalog,
            3 => RecordKind::Gap,
            4 => RecordKind::Rules,
            _ => return None,
        })
    }
}

/// One record read back from a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    /// Offset of the next record: what the consumer commits after applying this one.
    pub next: u64,
    pub kind: RecordKind,
    /// When ingest accepted it (epoch ms): the `now` for validation and the start of freshness.
    pub accepted_ms: u64,
    /// Which producer it came from (per-source watermarks).
    pub source: String,
    pub payload: Vec<u8>,
}

pub(super) fn encode_record(
    buf: &mut Vec<u8>,
    kind: RecordKind,
    accepted_ms: u64,
    source: &str,
    payload: &[u8],
) {
    let source = &source.as_bytes()[..source.len().min(255)];
    let body_len = BODY_MIN + source.len() + payload.len();
    let at = buf.len();
    buf.extend_from_slice(&SYNC);
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.push(kind.code());
    buf.extend_from_slice(&accepted_ms.to_le_bytes());
    buf.push(source.len() as u8);
    buf.extend_from_slice(source);
    buf.extend_from_slice(payload);
    let crc = record_crc(&buf[at + 4..at + 8], &buf[at + HEADER..]);
    buf[at + 8..at + 12].copy_from_slice(&crc.to_le_bytes());
}

pub(super) fn record_crc(len: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(body);
    h.finalize()
}

/// What is at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decoded {
    /// A valid record of this many bytes.
    Record(Record, usize),
    /// The buffer ends before the record does (it may be complete in the file).
    Incomplete { need: usize },
    /// Not a valid record.
    Bad(&'static str),
}

/// The total length a record header announces, if the header is plausible.
pub(super) fn announced_len(head: &[u8]) -> std::result::Result<usize, &'static str> {
    if head[0..4] != SYNC {
        return Err("no record marker");
    }
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if !(BODY_MIN..=MAX_BODY).contains(&len) {
        return Err("impossible record length");
    }
    Ok(HEADER + len)
}

/// Parses one record at the start of `buf`.
pub(super) fn decode_record(buf: &[u8], offset: u64) -> Decoded {
    if buf.len() < HEADER {
        return Decoded::Incomplete { need: HEADER };
    }
    let total = match announced_len(&buf[..HEADER]) {
        Ok(t) => t,
        Err(why) => return Decoded::Bad(why),
    };
    if buf.len() < total {
        return Decoded::Incomplete { need: total };
    }
    let crc = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let body = &buf[HEADER..total];
    if record_crc(&buf[4..8], body) != crc {
        return Decoded::Bad("checksum mismatch");
    }
    let Some(kind) = RecordKind::from_code(body[0]) else {
        return Decoded::Bad("unknown record kind");
    };
    let accepted_ms = u64::from_le_bytes(body[1..9].try_into().unwrap_or_default());
    let slen = body[9] as usize;
    if BODY_MIN + slen > body.len() {
        return Decoded::Bad("source longer than the record");
    }
    let source = String::from_utf8_lossy(&body[BODY_MIN..BODY_MIN + slen]).into_owned();
    let payload = body[BODY_MIN + slen..].to_vec();
    Decoded::Record(
        Record {
            offset,
            next: offset + total as u64,
            kind,
            accepted_ms,
            source,
            payload,
        },
        total,
    )
}

/// Reads the record at file position `pos` from `file` (of length `len`), giving it the
/// log offset `offset`.
pub(super) fn read_record_at(
    file: &File,
    pos: u64,
    offset: u64,
    len: u64,
    buf: &mut Vec<u8>,
) -> std::io::Result<Decoded> {
    if pos + HEADER as u64 > len {
        return Ok(Decoded::Incomplete { need: HEADER });
    }
    buf.resize(HEADER, 0);
    file.read_exact_at(buf, pos)?;
    let total = match announced_len(buf) {
        Ok(t) => t,
        Err(why) => return Ok(Decoded::Bad(why)),
    };
    if pos + total as u64 > len {
        return Ok(Decoded::Incomplete { need: total });
    }
    buf.resize(total, 0);
    file.read_exact_at(&mut buf[HEADER..], pos + HEADER as u64)?;
    Ok(decode_record(buf, offset))
}
