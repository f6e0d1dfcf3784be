//! Append, read, recovery, retention and concurrency tests on a real directory.

mod common;

use common::{drain, frame_len, rec, sid, small_cfg};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tickmesh_journal::{Error, FsyncPolicy, Journal, JournalConfig};

const TS0: u64 = 1_700_000_000_000_000_000;

fn open(dir: &Path) -> Journal {
    Journal::open(dir, small_cfg()).unwrap().0
}

fn segments(dir: &Path, src: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(src))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Seqs 1..=n with ts = TS0 + seq.
fn fill(j: &Journal, src: &str, seqs: impl IntoIterator<Item = u64>) {
    for s in seqs {
        j.append(&rec(src, s, TS0 + s)).unwrap();
    }
}

#[test]
fn round_trip_across_segments_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    let want: Vec<u64> = (1..=500).collect();
    fill(&j, "XNAS.ITCH", want.iter().copied());
    let segs = segments(dir.path(), "XNAS.ITCH");
    assert!(segs.len() >= 5, "expected several segments, got {}", segs.len());
    assert_eq!(segs[0].file_name().unwrap(), "00000000000000000001.seg");
    for p in &segs {
        assert!(std::fs::metadata(p).unwrap().len() <= 8_192);
    }
    let src = sid("XNAS.ITCH");
    assert_eq!(drain(&mut j.reader(&src, 0).unwrap()), want);
    // Bytes come back exactly.
    let mut r = j.reader(&src, 123).unwrap();
    assert_eq!(r.next_owned().unwrap().unwrap(), rec("XNAS.ITCH", 123, TS0 + 123));
    drop(r);
    drop(j);

    let (j, report) = Journal::open(dir.path(), small_cfg()).unwrap();
    assert!(report.is_clean(), "{report}");
    let s = report.source(&src).unwrap();
    assert_eq!((s.first_seq, s.last_seq, s.segments), (Some(1), Some(500), segs.len()));
    assert_eq!(s.indexes_rebuilt, 0, "sealed segments should load from their .idx");
    assert_eq!(drain(&mut j.reader(&src, 0).unwrap()), want);
    assert_eq!(j.last_seq(&src), Some(500));
    assert_eq!(j.durable_seq(&src), Some(500));
    fill(&j, "XNAS.ITCH", [501]);
    assert_eq!(drain(&mut j.reader(&src, 499).unwrap()), vec![499, 500, 501]);
}

#[test]
fn missing_or_damaged_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    fill(&j, "S", 1..=300);
    drop(j);
    let segs = segments(dir.path(), "S");
    std::fs::remove_file(segs[0].with_extension("idx")).unwrap();
    let idx1 = segs[1].with_extension("idx");
    let mut b = std::fs::read(&idx1).unwrap();
    b[20] ^= 0xff;
    std::fs::write(&idx1, b).unwrap();
    let (j, report) = Journal::open(dir.path(), small_cfg()).unwrap();
    assert_eq!(report.source(&sid("S")).unwrap().indexes_rebuilt, 2);
    assert!(segs[0].with_extension("idx").exists());
    assert_eq!(drain(&mut j.reader(&sid("S"), 0).unwrap()), (1..=300).collect::<Vec<_>>());
    assert_eq!(drain(&mut j.reader(&sid("S"), 150).unwrap()), (150..=300).collect::<Vec<_>>());
}

#[test]
fn reader_positions_middle_hole_end_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    // 1..=100, a hole, then 250..=400.
    let seqs: Vec<u64> = (1..=100).chain(250..=400).collect();
    fill(&j, "S", seqs.iter().copied());
    let src = sid("S");
    let from = |n: u64| seqs.iter().copied().filter(|s| *s >= n).collect::<Vec<_>>();
    for start in [0, 1, 2, 50, 99, 100, 101, 180, 249, 250, 251, 333, 400] {
        assert_eq!(drain(&mut j.reader(&src, start).unwrap()), from(start), "from {start}");
    }
    // Beyond the end: nothing now, then what arrives from there on.
    let mut r = j.reader(&src, 410).unwrap();
    assert!(r.next().unwrap().is_none());
    fill(&j, "S", [405, 410, 411]);
    assert_eq!(drain(&mut r), vec![410, 411]);

    // From time: ts = TS0 + seq.
    assert_eq!(drain(&mut j.reader_from_time(&src, 0).unwrap()).len(), seqs.len() + 3);
    assert_eq!(drain(&mut j.reader_from_time(&src, TS0 + 60).unwrap())[0], 60);
    assert_eq!(drain(&mut j.reader_from_time(&src, TS0 + 101).unwrap())[0], 250);
    assert_eq!(drain(&mut j.reader_from_time(&src, TS0 + 300).unwrap())[0], 300);
    let mut late = j.reader_from_time(&src, TS0 + 1_000).unwrap();
    assert!(late.next().unwrap().is_none());
    j.append(&rec("S", 412, TS0 + 999)).unwrap();
    j.append(&rec("S", 413, TS0 + 1_000)).unwrap();
    assert_eq!(drain(&mut late), vec![413]);
}

#[test]
fn time_lookup_survives_a_clock_step_back() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    // ts rises to seq 200, steps back 1000 ns, rises again.
    for s in 1..=400u64 {
        let ts = if s <= 200 { TS0 + s * 10 } else { TS0 + s * 10 - 1_000 };
        j.append(&rec("S", s, ts)).unwrap();
    }
    // First record in seq order with ts >= TS0 + 1500 is seq 150 (before the step).
    assert_eq!(drain(&mut j.reader_from_time(&sid("S"), TS0 + 1_500).unwrap())[0], 150);
    // ts >= TS0 + 2005: seq 201 has TS0 + 1010, ..., seq 301 has TS0 + 2010.
    assert_eq!(drain(&mut j.reader_from_time(&sid("S"), TS0 + 2_005).unwrap())[0], 301);
}

#[test]
fn out_of_order_and_invalid_records_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    fill(&j, "S", [5, 9]);
    for got in [9, 8, 1] {
        match j.append(&rec("S", got, TS0)) {
            Err(Error::OutOfOrder { source_id, last: 9, got: g }) => {
                assert_eq!((source_id, g), (sid("S"), got));
            }
            other => panic!("expected OutOfOrder, got {other:?}"),
        }
    }
    assert!(matches!(j.append(&rec("S", 0, TS0)), Err(Error::Unsequenced { .. })));
    let mut bad = rec("S", 10, TS0);
    bad.truncate(40);
    assert!(matches!(j.append(&bad), Err(Error::InvalidRecord { index: 0, .. })));
    let batch = [rec("S", 10, TS0), bad];
    assert!(matches!(j.append_batch(batch.iter().map(|r| &r[..])), Err(Error::InvalidRecord { index: 1, .. })));
    assert_eq!(j.last_seq(&sid("S")), Some(9), "a failed batch writes nothing");
    assert!(matches!(j.append(&rec(".", 1, TS0)), Err(Error::ReservedSourceId { .. })));
    assert!(matches!(j.append(&rec("..", 1, TS0)), Err(Error::ReservedSourceId { .. })));
    // Holes are fine, and the error message says what to do.
    fill(&j, "S", [1_000]);
    let msg = j.append(&rec("S", 1_000, TS0)).unwrap_err().to_string();
    assert!(msg.contains("not above") && msg.contains("1000"), "{msg}");
}

#[test]
fn batches_skip_duplicates_and_mix_sources() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    fill(&j, "B", [1, 2]);
    let recs: Vec<Vec<u8>> =
        (1..=200u64).flat_map(|s| [rec("A", s, TS0 + s), rec("B", s, TS0 + s), rec("A", s, TS0 + s)]).collect();
    let out = j.append_batch(recs.iter().map(|r| &r[..])).unwrap();
    assert_eq!(out.appended, 200 + 198);
    assert_eq!(out.duplicates, 200 + 2);
    assert_eq!(j.positions(), vec![(sid("A"), 200), (sid("B"), 200)]);
    assert_eq!(drain(&mut j.reader(&sid("A"), 0).unwrap()), (1..=200).collect::<Vec<_>>());
    assert_eq!(drain(&mut j.reader(&sid("B"), 0).unwrap()), (1..=200).collect::<Vec<_>>());
    assert!(segments(dir.path(), "A").len() > 1);
    let stats = j.stats();
    assert_eq!(stats[0].records, 200);
    assert_eq!(stats[0].bytes, 200 * frame_len());
}

#[test]
fn reader_of_an_unknown_source_picks_up_its_first_records() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    let mut r = j.reader(&sid("NEW"), 0).unwrap();
    let mut t = j.reader_from_time(&sid("NEW"), TS0 + 3).unwrap();
    assert!(r.next().unwrap().is_none());
    assert_eq!(j.positions(), vec![], "an empty source is not a position");
    assert_eq!(j.first_seq(&sid("NEW")), None);
    fill(&j, "NEW", 1..=5);
    assert_eq!(drain(&mut r), vec![1, 2, 3, 4, 5]);
    assert_eq!(drain(&mut t), vec![3, 4, 5]);
}

#[test]
fn directory_lock_config_and_ignored_entries() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    assert!(matches!(Journal::open(dir.path(), small_cfg()), Err(Error::Locked { .. })));
    fill(&j, "S", [1]);
    drop(j);
    std::fs::write(dir.path().join("notes.txt"), "hi").unwrap();
    std::fs::write(dir.path().join("S").join("README"), "hi").unwrap();
    let (_j, report) = Journal::open(dir.path(), small_cfg()).unwrap();
    assert_eq!(report.ignored.len(), 2, "{:?}", report.ignored);
    drop(_j);
    let bad = JournalConfig { segment_bytes: 10, ..small_cfg() };
    match Journal::open(dir.path(), bad) {
        Err(Error::Config { problems }) => assert_eq!(problems.len(), 1),
        other => panic!("expected a config error, got {other:?}"),
    }
}

// ---- crash recovery -------------------------------------------------------------------

/// Writes seqs 1..=n to a fresh directory and returns the path of the last segment.
fn journal_with(dir: &Path, n: u64) -> PathBuf {
    let (j, _) = Journal::open(dir, small_cfg()).unwrap();
    fill(&j, "S", 1..=n);
    drop(j);
    segments(dir, "S").pop().unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir(to.join(e.file_name())).unwrap();
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn truncation_anywhere_in_the_last_two_records_is_cut_and_reported() {
    let f = frame_len();
    let n = 100; // several segments; the last one holds a few records
    let probe = tempfile::tempdir().unwrap();
    let last = journal_with(probe.path(), n);
    let full = std::fs::metadata(&last).unwrap().len();
    assert!(full >= 2 * f);
    for cut_at in (full - 2 * f)..full {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(probe.path(), dir.path());
        let last = dir.path().join("S").join(last.file_name().unwrap());
        OpenOptions::new().write(true).open(&last).unwrap().set_len(cut_at).unwrap();
        let (j, report) = Journal::open(dir.path(), small_cfg()).unwrap();
        let s = report.source(&sid("S")).unwrap();
        let whole = (full - cut_at).div_ceil(f); // records touched by the cut
        let kept = n - whole;
        let boundary = full - whole * f;
        assert_eq!(s.last_seq, Some(kept), "cut at {cut_at}");
        assert_eq!(s.bytes_cut, cut_at - boundary, "cut at {cut_at}");
        assert_eq!(s.records_cut, 0);
        assert_eq!(s.cuts.len(), usize::from(cut_at != boundary));
        assert_eq!(std::fs::metadata(&last).unwrap().len(), boundary);
        assert_eq!(drain(&mut j.reader(&sid("S"), 0).unwrap()), (1..=kept).collect::<Vec<_>>());
        j.append(&rec("S", kept + 1, TS0)).unwrap();
        assert_eq!(j.last_seq(&sid("S")), Some(kept + 1));
        drop(j);
        let (j, report) = Journal::open(dir.path(), small_cfg()).unwrap();
        assert!(report.is_clean(), "second open after cut at {cut_at}: {report}");
        assert_eq!(drain(&mut j.reader(&sid("S"), 0).unwrap()).len() as u64, kept + 1);
    }
}

#[test]
fn garbage_after_the_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let last = journal_with(dir.path(), 50);
    let len = std::fs::metadata(&last).unwrap().len();
    let mut b = std::fs::read(&last).unwrap();
    b.extend_from_slice(&[0xAB; 37]);
    std::fs::write(&last, b).unwrap();
    let (j, report) = Journal::open(dir.path(), small_cfg()).unwrap();
    let s = report.source(&sid("S")).unwrap();
    assert_eq!((s.bytes_cut, s.records_cut, s.last_seq), (37, 0, Some(50)));
    assert_eq!(s.cuts[0].offset, len);
    assert!(s.cuts[0].reason.contains("length field"), "{}", s.cuts[0].reason);
    assert_eq!(drain(&mut j.reader(&sid("S"), 0).unwrap()).len(), 50);
    j.append(&rec("S", 51, TS0)).unwrap();
}

#[test]
fn a_flipped_byte_before_the_last_record_cuts_and_saves_the_intact_one() {
    let dir = tempfile::tempdir().unwrap();
    let last = journal_with(dir.path(), 50);
    let f = frame_len() as usize;
    let mut b = std::fs::read(&last).unwrap();
    let second_last = b.len() - 2 * f;
    b[second_last + 30] ^= 0x01;
    std::fs::write(&last, &b).unwrap();
    let (j, report) = Journal::open(dir.path(), small_cfg()).unwrap();
    let s = report.source(&sid("S")).unwrap();
    assert_eq!((s.bytes_cut, s.records_cut, s.last_seq), (2 * f as u64, 1, Some(48)));
    let saved = s.cuts[0].saved_to.clone().expect("intact records are saved");
    assert_eq!(std::fs::read(&saved).unwrap(), &b[second_last..]);
    assert!(s.cuts[0].reason.contains("CRC"), "{}", s.cuts[0].reason);
    assert!(report.to_string().contains("1 intact record"), "{report}");
    j.append(&rec("S", 49, TS0)).unwrap();
    drop(j);
    let (_, report) = Journal::open(dir.path(), small_cfg()).unwrap();
    assert!(report.is_clean() && report.ignored.is_empty(), "{report}");
}

#[test]
fn a_wholly_torn_last_segment_is_removed_and_the_previous_continues() {
    let dir = tempfile::tempdir().unwrap();
    let last = journal_with(dir.path(), 100);
    let before = segments(dir.path(), "S").len();
    let mut b = std::fs::read(&last).unwrap();
    b.truncate(5); // only part of its first frame survived
    std::fs::write(&last, b).unwrap();
    let first_in_last: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let (j, report) = Journal::open(dir.path(), small_cfg()).unwrap();
    let s = report.source(&sid("S")).unwrap();
    assert_eq!(s.last_seq, Some(first_in_last - 1));
    assert!(s.cuts[0].file_removed);
    assert!(!last.exists());
    assert_eq!(segments(dir.path(), "S").len(), before - 1);
    // The previous segment is full: the next append rolls into a new one named for it.
    j.append(&rec("S", first_in_last + 10, TS0)).unwrap();
    let now_last = segments(dir.path(), "S").pop().unwrap();
    assert_eq!(now_last.file_name().unwrap().to_str().unwrap(), format!("{:020}.seg", first_in_last + 10));
    let got = drain(&mut j.reader(&sid("S"), 0).unwrap());
    assert_eq!(got.len() as u64, first_in_last);
}

#[test]
fn damage_in_a_sealed_segment_is_an_error_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 300);
    let segs = segments(dir.path(), "S");
    let victim = &segs[1];
    let f = frame_len() as usize;
    let mut b = std::fs::read(victim).unwrap();
    b[3 * f + 50] ^= 0x40;
    std::fs::write(victim, &b).unwrap();
    // With its sidecar the segment is not scanned at open; the reader finds the damage.
    let (j, _) = Journal::open(dir.path(), small_cfg()).unwrap();
    let mut r = j.reader(&sid("S"), 0).unwrap();
    let err = loop {
        match r.next() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("damage not detected"),
            Err(e) => break e,
        }
    };
    match &err {
        Error::Corrupt { path, offset, .. } => assert_eq!((path, *offset), (victim, 3 * f as u64)),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(r.next().is_err(), "a reader does not skip damage");
    drop((r, j));
    // Without its sidecar, open scans the segment and refuses to start.
    std::fs::remove_file(victim.with_extension("idx")).unwrap();
    match Journal::open(dir.path(), small_cfg()) {
        Err(Error::Corrupt { path, offset, reason }) => {
            assert_eq!((&path, offset), (victim, 3 * f as u64));
            assert!(reason.contains("sealed"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let msg = Journal::open(dir.path(), small_cfg()).unwrap_err().to_string();
    assert!(msg.contains("truncate -s") && msg.contains(&victim.display().to_string()), "{msg}");
    assert_eq!(std::fs::read(victim).unwrap(), b, "nothing was changed on disk");
}

// ---- retention ------------------------------------------------------------------------

#[test]
fn retention_by_size_deletes_whole_oldest_segments() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = JournalConfig { retain_bytes: 3 * 8_192, ..small_cfg() };
    let (j, _) = Journal::open(dir.path(), cfg.clone()).unwrap();
    fill(&j, "S", 1..=1_000);
    fill(&j, "T", 1..=10);
    let mut early = j.reader(&sid("S"), 1).unwrap();
    assert_eq!(early.next().unwrap().unwrap().seq(), 1);
    let before = segments(dir.path(), "S");
    let report = j.apply_retention(TS0).unwrap();
    let after = segments(dir.path(), "S");
    assert_eq!(report.sources.len(), 1, "T is small and keeps everything");
    let r = &report.sources[0];
    assert_eq!(r.segments_deleted, before.len() - after.len());
    assert!(after.len() <= 4);
    let total: u64 = after.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert!(total <= 3 * 8_192, "{total}");
    let first = j.first_seq(&sid("S")).unwrap();
    assert_eq!(r.first_seq, Some(first));
    assert_eq!(after[0].file_name().unwrap().to_str().unwrap(), format!("{first:020}.seg"));
    assert!(!before[0].with_extension("idx").exists());
    // A reader from before the first held seq starts at the first held one.
    assert_eq!(j.reader(&sid("S"), 1).unwrap().next().unwrap().unwrap().seq(), first);
    // The reader that was inside the first deleted segment finishes it, is told it was
    // lapped, then carries on from the first held seq.
    let mut got = Vec::new();
    let err = loop {
        match early.next() {
            Ok(Some(r)) => got.push(r.seq()),
            Ok(None) => panic!("the lapped reader was not told"),
            Err(e) => break e,
        }
    };
    let after = *got.last().unwrap();
    assert_eq!(got, (2..=after).collect::<Vec<_>>());
    match err {
        Error::Lapped { source_id, after: a, resume_at } => {
            assert_eq!((source_id, a, resume_at), (sid("S"), after, first))
        }
        other => panic!("expected Lapped, got {other:?}"),
    }
    assert_eq!(drain(&mut early), (first..=1_000).collect::<Vec<_>>());
    assert_eq!(j.apply_retention(TS0).unwrap().sources.len(), 0);
    drop(j);
    let (j, report) = Journal::open(dir.path(), cfg).unwrap();
    assert_eq!(report.source(&sid("S")).unwrap().first_seq, Some(first));
    assert_eq!(drain(&mut j.reader(&sid("S"), 0).unwrap()), (first..=1_000).collect::<Vec<_>>());
}

#[test]
fn retention_by_age_never_deletes_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = JournalConfig { retain_age_secs: 60, ..small_cfg() };
    let (j, _) = Journal::open(dir.path(), cfg).unwrap();
    let sec = 1_000_000_000;
    // Seqs 1..=300 ingested one second apart.
    for s in 1..=300u64 {
        j.append(&rec("S", s, TS0 + s * sec)).unwrap();
    }
    let n = segments(dir.path(), "S").len();
    // At t = 60 s every record (ts >= 1 s) is younger than 60 s.
    assert!(j.apply_retention(TS0 + 60 * sec).unwrap().sources.is_empty());
    // At t = 300 s, records with ts < 240 s are older than 60 s: segments holding only
    // those go, the one holding seq 240 stays.
    let report = j.apply_retention(TS0 + 300 * sec).unwrap();
    let first = j.first_seq(&sid("S")).unwrap();
    assert!(report.sources[0].segments_deleted > 0, "{report:?}");
    assert!(first > 1 && first <= 240, "first {first}");
    assert_eq!(drain(&mut j.reader(&sid("S"), 0).unwrap()), (first..=300).collect::<Vec<_>>());
    // The segment before `first` was all older than the cutoff: it would have gone too.
    let report = j.apply_retention(TS0 + 300 * sec).unwrap();
    assert!(report.sources.is_empty());
    // Far in the future, everything but the active segment goes.
    j.apply_retention(u64::MAX).unwrap();
    assert_eq!(segments(dir.path(), "S").len(), 1);
    assert!(n > 1);
    assert_eq!(j.last_seq(&sid("S")), Some(300));
    fill(&j, "S", [301]);
}

// ---- concurrency ----------------------------------------------------------------------

#[test]
fn one_writer_two_readers_see_a_strictly_increasing_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let j = Arc::new(open(dir.path()));
    let done = Arc::new(AtomicBool::new(false));
    let total = 3_000u64;
    let readers: Vec<_> = (0..2)
        .map(|k| {
            let (j, done) = (j.clone(), done.clone());
            std::thread::spawn(move || {
                let mut r = j.reader(&sid("S"), 0).unwrap();
                let mut seen = Vec::new();
                loop {
                    let finished = done.load(Ordering::Acquire);
                    while let Some(rec) = r.next().unwrap() {
                        seen.push(rec.seq());
                    }
                    if finished {
                        return seen;
                    }
                    if k == 1 {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    let other = {
        let j = j.clone();
        std::thread::spawn(move || fill(&j, "OTHER", 1..=1_000))
    };
    for s in 1..=total {
        // Every third seq skipped: holes are allowed.
        if s % 3 != 0 {
            j.append(&rec("S", s, TS0 + s)).unwrap();
        }
    }
    done.store(true, Ordering::Release);
    other.join().unwrap();
    let want: Vec<u64> = (1..=total).filter(|s| s % 3 != 0).collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), want);
    }
    assert_eq!(j.positions(), vec![(sid("OTHER"), 1_000), (sid("S"), total - 1)]);
}

#[test]
fn group_commit_advances_durable_seq() {
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        JournalConfig { fsync: FsyncPolicy::Group, group_commit_us: 500, group_commit_records: 64, ..small_cfg() };
    let (j, _) = Journal::open(dir.path(), cfg).unwrap();
    let j = Arc::new(j);
    let src = sid("S");
    let waiter = {
        let j = j.clone();
        std::thread::spawn(move || j.wait_durable(&sid("S"), 500, Duration::from_secs(30)))
    };
    fill(&j, "S", 1..=500);
    assert!(j.wait_durable(&src, 500, Duration::from_secs(30)));
    assert!(waiter.join().unwrap());
    assert_eq!(j.durable_seq(&src), Some(500));
    assert!(!j.wait_durable(&src, 501, Duration::from_millis(20)));
    fill(&j, "S", [501]);
    j.sync().unwrap();
    assert_eq!(j.durable_seq(&src), Some(501));

    for (policy, durable_now) in [(FsyncPolicy::Always, true), (FsyncPolicy::Never, true)] {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), JournalConfig { fsync: policy, ..small_cfg() }).unwrap();
        fill(&j, "S", 1..=200);
        assert_eq!(j.durable_seq(&src) == Some(200), durable_now, "{policy:?}");
    }
}

#[test]
fn journal_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Journal>();
    check::<tickmesh_journal::Reader>();
}
