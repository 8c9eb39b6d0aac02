use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use std::path::Path;

use super::record::{Decoded, HEADER, MAX_BODY, MAX_RECORD_BYTES, MIN_RECORD, decode_record};
use super::writer::acked_path;
use super::*;
use crate::error::Error;

/// Large enough that these tests stay in one segment.
const ONE_SEGMENT: u64 = 64 << 20;

/// The first segment: a record's offset is its position in this file.
fn first_segment(dir: &Path) -> std::path::PathBuf {
    segment_path(dir, FIRST_OFFSET)
}

fn read_all(log: &Log) -> Vec<Record> {
    read_from(log, FIRST_OFFSET)
}

/// Every record from `from` to the end (the segment tests use it too).
pub(super) fn read_from(log: &Log, from: u64) -> Vec<Record> {
    let mut r = log.reader().unwrap();
    let mut out = Vec::new();
    r.read(from, usize::MAX, Duration::ZERO, &mut out).unwrap();
    out
}

/// Flips bit `bit` of the byte at `at` (the segment tests use it too).
pub(super) fn flip_bit(path: &Path, at: u64, bit: u8) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ (1 << bit)], at).unwrap();
}

#[test]
fn appends_read_back_and_unacknowledged_torn_tails_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = Log::open(&path, 0, 8, ONE_SEGMENT).unwrap();
    let end = log
        .append_blocking(7, "http", vec![b"a".to_vec(), b"bc".to_vec()])
        .unwrap();
    let out = read_all(&log);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].payload, b"bc");
    assert_eq!(out[1].next, end);
    assert_eq!(out[0].source, "http");
    assert_eq!(out[0].kind, RecordKind::Event);
    drop(log);
    // A torn write past the acknowledged end: a marker and half a header.
    let f = OpenOptions::new()
        .append(true)
        .open(first_segment(&path))
        .unwrap();
    f.write_at(&[0xA7, b'~', b'L', b'R', 9, 0], end).unwrap();
    let log = Log::open(&path, out[1].offset, 8, ONE_SEGMENT).unwrap();
    assert_eq!(log.end(), end);
    assert_eq!(std::fs::metadata(first_segment(&path)).unwrap().len(), end);
}

#[test]
fn admin_records_keep_their_kind() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(&dir.path().join("log"), 0, 8, ONE_SEGMENT).unwrap();
    log.append_admin(RecordKind::Forget, b"u1".to_vec())
        .unwrap();
    let out = read_all(&log);
    assert_eq!(out[0].kind, RecordKind::Forget);
    assert_eq!(out[0].source, ADMIN_SOURCE);
    assert_eq!(out[0].payload, b"u1");
}

/// One flipped byte in an acknowledged record: the log refuses to open, names the file and
/// offset, and cuts nothing; salvage brings back every other record at its offset.
#[test]
fn damage_before_the_acknowledged_end_refuses_and_salvage_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = Log::open(&path, 0, 8, ONE_SEGMENT).unwrap();
    let payloads: Vec<Vec<u8>> = (0..100)
        .map(|i| format!("event {i}").into_bytes())
        .collect();
    log.append_blocking(1, "http", payloads).unwrap();
    let before = read_all(&log);
    drop(log);
    let seg = first_segment(&path);
    let len = std::fs::metadata(&seg).unwrap().len();
    // The 11th record's body.
    let hit = &before[10];
    flip_bit(&seg, hit.offset + HEADER as u64 + 3, 4);
    let err = Log::open(&path, before[5].offset, 8, ONE_SEGMENT).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::LogDamaged { offset, .. } if offset == hit.offset),
        "{msg}"
    );
    assert!(
        msg.contains(&*seg.to_string_lossy()) && msg.contains("salvage"),
        "{msg}"
    );
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len, "nothing cut");

    let report = salvage(&path).unwrap();
    assert_eq!(report.records_kept, 99);
    assert_eq!(report.damaged, vec![(hit.offset, hit.next - hit.offset)]);
    assert_eq!(report.bytes_skipped, hit.next - hit.offset);
    assert_eq!(report.damaged_files.len(), 1);
    assert!(report.damaged_files[0].exists());
    let log = Log::open(&path, before[5].offset, 8, ONE_SEGMENT).unwrap();
    let after = read_all(&log);
    assert_eq!(after.len(), 100);
    assert_eq!(after[10].kind, RecordKind::Gap);
    assert_eq!(after[10].offset, hit.offset);
    assert_eq!(after[10].next, hit.next);
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        if i != 10 {
            assert_eq!(a, b);
        }
    }
}

/// A damaged length field is caught too, and salvage resynchronises on the next marker.
#[test]
fn a_damaged_length_is_found_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = Log::open(&path, 0, 8, ONE_SEGMENT).unwrap();
    log.append_blocking(1, "s", (0..5).map(|i| vec![b'x'; 100 + i]).collect())
        .unwrap();
    let before = read_all(&log);
    drop(log);
    flip_bit(&first_segment(&path), before[2].offset + 5, 4);
    assert!(matches!(
        Log::open(&path, 0, 8, ONE_SEGMENT),
        Err(Error::LogDamaged { offset, .. }) if offset == before[2].offset
    ));
    let report = salvage(&path).unwrap();
    assert_eq!(report.records_kept, 4);
    let log = Log::open(&path, 0, 8, ONE_SEGMENT).unwrap();
    let after = read_all(&log);
    assert_eq!(after[3], before[3]);
    assert_eq!(after[2].kind, RecordKind::Gap);
}

#[test]
fn gap_records_fill_any_length() {
    for bytes in [
        MIN_RECORD as u64,
        100,
        (HEADER + MAX_BODY) as u64 + 5,
        (HEADER + MAX_BODY) as u64 + 40,
    ] {
        let mut out = Vec::new();
        salvage::write_gap_for_tests(&mut out, bytes);
        assert_eq!(out.len() as u64, bytes, "{bytes}");
        let mut at = 0;
        while at < out.len() {
            match decode_record(&out[at..], at as u64) {
                Decoded::Record(r, n) => {
                    assert_eq!(r.kind, RecordKind::Gap);
                    at += n;
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

/// A record over the limit is refused, not written (the reader would take it for damage).
#[test]
fn an_oversized_record_is_refused_and_the_log_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = Log::open(&path, 0, 8, ONE_SEGMENT).unwrap();
    let err = log
        .append_blocking(1, "s", vec![vec![b'x'; MAX_RECORD_BYTES + 1]])
        .unwrap_err();
    assert!(err.to_string().contains("over the limit"), "{err}");
    log.append_blocking(1, "s", vec![b"ok".to_vec()]).unwrap();
    assert_eq!(read_all(&log).len(), 1);
    drop(log);
    Log::open(&path, 0, 8, ONE_SEGMENT).unwrap();
}

/// Without its sidecar every record counts as acknowledged: damage refuses, nothing is cut.
#[test]
fn without_the_sidecar_damage_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = Log::open(&path, 0, 8, ONE_SEGMENT).unwrap();
    log.append_blocking(1, "s", vec![b"a".to_vec(), b"b".to_vec()])
        .unwrap();
    let recs = read_all(&log);
    drop(log);
    std::fs::remove_file(acked_path(&path)).unwrap();
    flip_bit(&first_segment(&path), recs[1].offset + HEADER as u64, 4);
    assert!(matches!(
        Log::open(&path, 0, 8, ONE_SEGMENT),
        Err(Error::LogDamaged { offset, .. }) if offset == recs[1].offset
    ));
}
