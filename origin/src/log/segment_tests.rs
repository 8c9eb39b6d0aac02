//! Segments: rolling, reopening, damage in a closed segment, salvage, retention, erase and the
//! crashes in the middle of a roll or an erase.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::fault::{Point, arm};
use super::record::HEADER;
use super::segment::{SEGMENT_HEADER, list};
use super::tests::{flip_bit, read_from};
use super::*;
use crate::config::LogConfig;
use crate::error::Error;

/// Small segments: about ten 60-byte records each.
const SMALL: u64 = 600;

fn event(n: u64, user: &str) -> Vec<u8> {
    format!(r#"{{"v":1,"event_id":"e{n}","user":"{user}","kind":"view","item":"i{n}"}}"#)
        .into_bytes()
}

/// Appends `n` events (users `u0`..`u4` in turn), one group commit per 3 records.
fn fill(log: &Log, from: u64, n: u64) {
    let all: Vec<Vec<u8>> = (from..from + n)
        .map(|i| event(i, &format!("u{}", i % 5)))
        .collect();
    for chunk in all.chunks(3) {
        log.append_blocking(1, "t", chunk.to_vec()).unwrap();
    }
}

/// The segment holding `offset` and the offset's position in its file.
fn locate(dir: &Path, offset: u64) -> (PathBuf, u64) {
    let bases = list(dir).unwrap();
    let base = *bases.iter().rfind(|b| **b <= offset).unwrap();
    (segment_path(dir, base), offset - base + SEGMENT_HEADER)
}

fn set_age(path: &Path, age: Duration) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

#[test]
fn segments_roll_by_size_and_offsets_stay_global() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = Log::open(&path, 0, 8, SMALL).unwrap();
    fill(&log, 0, 100);
    let all = read_from(&log, FIRST_OFFSET);
    assert_eq!(all.len(), 100);
    for w in all.windows(2) {
        assert_eq!(
            w[0].next, w[1].offset,
            "offsets are contiguous across segments"
        );
    }
    let bases = list(&path).unwrap();
    assert!(bases.len() >= 8, "{bases:?}");
    assert_eq!(bases[0], FIRST_OFFSET);
    // Each segment starts where the previous ends, at a record, and none runs far past the size.
    for (i, b) in bases.iter().enumerate() {
        assert!(all.iter().any(|r| r.offset == *b) || *b == log.end(), "{b}");
        let len = std::fs::metadata(segment_path(&path, *b)).unwrap().len();
        if let Some(next) = bases.get(i + 1) {
            assert_eq!(b + len - SEGMENT_HEADER, *next);
            assert!(len - SEGMENT_HEADER <= SMALL + 3 * 70, "{len}");
        }
    }
    let usage = log.usage();
    assert_eq!(usage.segments, bases.len() as u64);
    assert_eq!(usage.start, FIRST_OFFSET);
    let end = log.end();
    drop(log);

    // A restart at a checkpoint in a middle segment reads on from exactly there.
    let at = all[57].offset;
    let log = Log::open(&path, at, 8, SMALL).unwrap();
    assert_eq!(log.end(), end);
    assert_eq!(read_from(&log, at), all[57..]);
    fill(&log, 100, 5);
    let more = read_from(&log, end);
    assert_eq!(more.len(), 5);
    assert_eq!(more[0].offset, end);
}

#[test]
fn damage_in_a_closed_segment_names_it_and_salvage_repairs_only_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = Log::open(&path, 0, 8, SMALL).unwrap();
    fill(&log, 0, 100);
    let before = read_from(&log, FIRST_OFFSET);
    drop(log);
    let hit = &before[40];
    let (seg, at) = locate(&path, hit.offset);
    let last = segment_path(&path, *list(&path).unwrap().last().unwrap());
    assert_ne!(seg, last, "the damage is in a closed segment");
    flip_bit(&seg, at + HEADER as u64 + 2, 2);
    // From the first record: refused, naming the segment and the offset.
    let err = Log::open(&path, 0, 8, SMALL).unwrap_err();
    assert!(
        matches!(&err, Error::LogDamaged { path: p, offset, .. } if *p == seg && *offset == hit.offset),
        "{err}"
    );
    // From a checkpoint past it the open does not look there; a reader from before does.
    let log = Log::open(&path, before[60].offset, 8, SMALL).unwrap();
    let mut r = log.reader().unwrap();
    let err = r
        .read(FIRST_OFFSET, usize::MAX, Duration::ZERO, &mut Vec::new())
        .unwrap_err();
    assert!(
        matches!(&err, Error::LogDamaged { path: p, .. } if *p == seg),
        "{err}"
    );
    drop(log);

    let untouched = std::fs::read(segment_path(&path, FIRST_OFFSET)).unwrap();
    let report = salvage(&path).unwrap();
    assert_eq!(report.records_kept, 99);
    assert_eq!(report.damaged, vec![(hit.offset, hit.next - hit.offset)]);
    assert_eq!(report.damaged_files.len(), 1);
    assert_eq!(
        std::fs::read(segment_path(&path, FIRST_OFFSET)).unwrap(),
        untouched
    );
    let log = Log::open(&path, 0, 8, SMALL).unwrap();
    let after = read_from(&log, FIRST_OFFSET);
    assert_eq!(after.len(), 100);
    assert_eq!(after[40].kind, RecordKind::Gap);
    assert_eq!((after[40].offset, after[40].next), (hit.offset, hit.next));
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        if i != 40 {
            assert_eq!(a, b);
        }
    }
}

/// Only the last segment's unacknowledged tail is cut: bytes after the end of a closed segment
/// are damage (the chain no longer lines up), and a missing middle segment too.
#[test]
fn a_torn_tail_is_cut_only_in_the_last_segment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = Log::open(&path, 0, 8, SMALL).unwrap();
    fill(&log, 0, 60);
    let end = log.end();
    drop(log);
    let bases = list(&path).unwrap();
    let last = segment_path(&path, *bases.last().unwrap());
    let f = OpenOptions::new().append(true).open(&last).unwrap();
    f.write_at(
        &[0xA7, b'~', b'L', b'R', 200, 0, 0],
        std::fs::metadata(&last).unwrap().len(),
    )
    .unwrap();
    drop(f);
    assert_eq!(Log::open(&path, 0, 8, SMALL).unwrap().end(), end);

    let middle = segment_path(&path, bases[2]);
    let f = OpenOptions::new().append(true).open(&middle).unwrap();
    f.write_at(&[0xA7, b'~'], std::fs::metadata(&middle).unwrap().len())
        .unwrap();
    drop(f);
    let err = Log::open(&path, 0, 8, SMALL).unwrap_err();
    assert!(
        matches!(&err, Error::LogDamaged { path: p, .. } if *p == middle),
        "{err}"
    );
    // Salvage cuts what runs into the next segment's offsets; the chain lines up again.
    let report = salvage(&path).unwrap();
    assert_eq!(report.records_kept, 60);
    assert_eq!(Log::open(&path, 0, 8, SMALL).unwrap().end(), end);

    std::fs::remove_file(segment_path(&path, bases[3])).unwrap();
    let err = Log::open(&path, 0, 8, SMALL).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn retention_retires_only_old_segments_wholly_before_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = Log::open(&path, 0, 8, SMALL).unwrap();
    fill(&log, 0, 100);
    let all = read_from(&log, FIRST_OFFSET);
    let bases = list(&path).unwrap();
    let n = bases.len();
    // Every segment but the last two is a day old; the checkpoint is inside segment 4.
    for b in &bases[..n - 2] {
        set_age(&segment_path(&path, *b), Duration::from_secs(86_400));
    }
    let checkpoint = bases[4] + 1;
    let hour = LogConfig {
        retention_ms: 3_600_000,
        ..LogConfig::default()
    };
    let off = LogConfig::default();
    assert_eq!(
        log.retire(checkpoint, &off, SystemTime::now())
            .unwrap()
            .segments,
        0
    );
    let retired = log.retire(checkpoint, &hour, SystemTime::now()).unwrap();
    // Segments 0..4 end at or before the checkpoint (segment 4 holds it).
    assert_eq!(retired.segments, 4);
    assert_eq!(list(&path).unwrap(), bases[4..]);
    assert_eq!(log.start(), bases[4]);
    // Young segments stay even with the checkpoint at the end, and the last always does.
    let retired = log.retire(log.end(), &hour, SystemTime::now()).unwrap();
    assert_eq!(retired.segments as usize, n - 2 - 4);
    assert_eq!(list(&path).unwrap(), bases[n - 2..]);
    // By size: everything before the checkpoint may go, never the segment being appended to.
    let tiny = LogConfig {
        retention_bytes: 1,
        ..LogConfig::default()
    };
    assert_eq!(
        log.retire(log.end(), &tiny, SystemTime::now())
            .unwrap()
            .segments,
        1
    );
    assert_eq!(list(&path).unwrap(), bases[n - 1..]);

    // Reading before the start says the segments were retired; from the start reads on.
    let mut r = log.reader().unwrap();
    let err = r
        .read(FIRST_OFFSET, 10, Duration::ZERO, &mut Vec::new())
        .unwrap_err();
    assert!(err.to_string().contains("retired"), "{err}");
    let rest = read_from(&log, log.start());
    assert_eq!(rest, all[all.len() - rest.len()..]);
    let end = log.end();
    drop(log);
    // A restart with the checkpoint at or past the start opens; before it, segments are missing.
    assert_eq!(Log::open(&path, end, 8, SMALL).unwrap().end(), end);
    let err = Log::open(&path, bases[1], 8, SMALL).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

fn of_user(records: &[Record], user: &str) -> usize {
    let marker = format!(r#""user":"{user}""#);
    records
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.payload).contains(&marker))
        .count()
}

#[test]
fn erase_rewrites_only_the_segments_holding_the_user_and_closes_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = Log::open(&path, 0, 8, SMALL).unwrap();
    // u9 in the first segment and in the one being appended to, nowhere between.
    log.append_blocking(1, "t", vec![event(1_000, "u9")])
        .unwrap();
    fill(&log, 0, 60);
    log.append_blocking(1, "t", vec![event(1_001, "u9")])
        .unwrap();
    let forget_end = log
        .append_admin(RecordKind::Forget, b"u9".to_vec())
        .unwrap();
    let forget = read_from(&log, FIRST_OFFSET).pop().unwrap();
    // After the forget: a new profile, kept.
    log.append_blocking(1, "t", vec![event(1_002, "u9")])
        .unwrap();
    let bases = list(&path).unwrap();
    assert!(bases.len() >= 5, "{bases:?}");
    for b in &bases {
        set_age(&segment_path(&path, *b), Duration::from_secs(86_400));
    }
    let first_age = std::fs::metadata(segment_path(&path, FIRST_OFFSET))
        .unwrap()
        .modified()
        .unwrap();
    assert!(first_age <= SystemTime::now() - Duration::from_secs(86_000));
    let middle = &bases[1..bases.len() - 1];
    let untouched: Vec<Vec<u8>> = middle
        .iter()
        .map(|b| std::fs::read(segment_path(&path, *b)).unwrap())
        .collect();
    let before = read_from(&log, FIRST_OFFSET);
    assert_eq!(of_user(&before, "u9"), 3);

    let users = HashMap::from([("u9".to_string(), forget.offset)]);
    let erased = log.erase_users(&users, forget_end).unwrap();
    // Two events and the forget record itself; the event after the forget stays.
    assert_eq!(erased, 3);
    let after = read_from(&log, FIRST_OFFSET);
    assert_eq!(after.len(), before.len());
    assert_eq!(of_user(&after, "u9"), 1);
    assert!(
        after
            .iter()
            .zip(&before)
            .all(|(a, b)| (a.offset, a.next) == (b.offset, b.next))
    );
    assert_eq!(after[0].kind, RecordKind::Gap);
    assert_eq!(
        after
            .iter()
            .find(|r| r.offset == forget.offset)
            .unwrap()
            .kind,
        RecordKind::Gap
    );
    let now = list(&path).unwrap();
    assert_eq!(
        now.len(),
        bases.len() + 1,
        "the active segment was closed first: {now:?}"
    );
    for (b, bytes) in middle.iter().zip(&untouched) {
        assert_eq!(&std::fs::read(segment_path(&path, *b)).unwrap(), bytes);
    }
    // A rewritten segment keeps its age (retention reads it).
    let age = std::fs::metadata(segment_path(&path, FIRST_OFFSET))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(age, first_age);
    assert!(std::fs::read_dir(&path).unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(segment::REWRITING)
    }));
    // Appends go on in the new segment, and a reopen reads the same records.
    log.append_blocking(1, "t", vec![event(1_003, "u8")])
        .unwrap();
    let end = log.end();
    drop(log);
    let log = Log::open(&path, forget_end, 8, SMALL).unwrap();
    assert_eq!(log.end(), end);
    assert_eq!(read_from(&log, FIRST_OFFSET)[..after.len()], after);
}

/// A crash between writing a segment's replacement and renaming it: the leftover goes at the
/// next open, the segment is intact, and erasing again finishes the work.
#[test]
fn a_crash_in_the_middle_of_an_erase_leaves_every_segment_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = Log::open(&path, 0, 8, SMALL).unwrap();
    fill(&log, 0, 60);
    let before = read_from(&log, FIRST_OFFSET);
    let end = log.end();
    let users = HashMap::from([("u3".to_string(), end)]);
    let total = of_user(&before, "u3");
    arm(&path, Point::BeforeRewriteRename, 2);
    let err = log.erase_users(&users, end).unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    let halfway = of_user(&read_from(&log, FIRST_OFFSET), "u3");
    assert!(halfway > 0 && halfway < total, "{halfway} of {total}");
    drop(log);
    let leftovers = || {
        std::fs::read_dir(&path)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(segment::REWRITING)
            })
            .count()
    };
    assert_eq!(leftovers(), 1);
    let log = Log::open(&path, 0, 8, SMALL).unwrap();
    assert_eq!(leftovers(), 0);
    assert_eq!(log.end(), end);
    log.erase_users(&users, end).unwrap();
    let after = read_from(&log, FIRST_OFFSET);
    assert_eq!(of_user(&after, "u3"), 0);
    assert_eq!(after.len(), before.len());
}

/// A crash right after the next segment was created: the open finds an empty last segment
/// starting where the previous one ends, and appends go on there.
#[test]
fn a_crash_in_the_middle_of_a_roll_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = Log::open(&path, 0, 8, SMALL).unwrap();
    fill(&log, 0, 30);
    let before = read_from(&log, FIRST_OFFSET);
    let end = log.end();
    let segments = list(&path).unwrap().len();
    arm(&path, Point::AfterRollCreate, 0);
    // Appends until one needs a new segment: that one fails and the appender stops.
    let mut failed = false;
    for i in 0..20 {
        if log
            .append_blocking(1, "t", vec![event(100 + i, "u1")])
            .is_err()
        {
            failed = true;
            break;
        }
    }
    assert!(failed);
    let acked = read_from(&log, FIRST_OFFSET);
    assert!(log.append_blocking(1, "t", vec![event(999, "u1")]).is_err());
    eprintln!(
        "crash mid-roll: {} records acknowledged before the roll's append failed",
        acked.len()
    );
    drop(log);
    assert_eq!(list(&path).unwrap().len(), segments + 1);
    let log = Log::open(&path, end, 8, SMALL).unwrap();
    assert_eq!(read_from(&log, FIRST_OFFSET), acked);
    assert_eq!(acked[..before.len()], before);
    log.append_blocking(1, "t", vec![event(1_000, "u1")])
        .unwrap();
    assert_eq!(read_from(&log, FIRST_OFFSET).len(), acked.len() + 1);

    // A segment cut short inside its header by a crash while it was created is made again.
    drop(log);
    let next = log_end(&path);
    std::fs::write(segment_path(&path, next), b"ATLOG").unwrap();
    let log = Log::open(&path, 0, 8, SMALL).unwrap();
    assert_eq!(log.end(), next);
    assert_eq!(
        std::fs::metadata(segment_path(&path, next)).unwrap().len(),
        SEGMENT_HEADER
    );
}

/// The end of the log in `path`, from its last segment's size.
fn log_end(path: &Path) -> u64 {
    let last = *list(path).unwrap().last().unwrap();
    let len = std::fs::metadata(segment_path(path, last)).unwrap().len();
    last + len - SEGMENT_HEADER
}

#[test]
fn a_single_file_log_of_the_earlier_format_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("events.log"), b"ATLOG\x002\n").unwrap();
    let err = Log::open(&dir.path().join("log"), 0, 8, SMALL).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("single-file") && msg.contains("move it out"),
        "{msg}"
    );
    assert!(salvage(&dir.path().join("log")).is_err());
}

/// Events are read without parsing unless they may name a forgotten user; a user written with
/// JSON escapes is still found.
#[test]
fn erase_finds_a_user_written_with_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = Log::open(&path, 0, 8, SMALL).unwrap();
    let escaped = br#"{"v":1,"event_id":"x","user":"\u0075\u0039","kind":"view","item":"i1"}"#;
    log.append_blocking(
        1,
        "t",
        vec![escaped.to_vec(), event(1, "u9"), event(2, "u99")],
    )
    .unwrap();
    let forget_end = log
        .append_admin(RecordKind::Forget, b"u9".to_vec())
        .unwrap();
    let forget = read_from(&log, FIRST_OFFSET).pop().unwrap();
    let users = HashMap::from([("u9".to_string(), forget.offset)]);
    assert_eq!(log.erase_users(&users, forget_end).unwrap(), 3);
    let kinds: Vec<RecordKind> = read_from(&log, FIRST_OFFSET)
        .iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            RecordKind::Gap,
            RecordKind::Gap,
            RecordKind::Event,
            RecordKind::Gap
        ]
    );
}
