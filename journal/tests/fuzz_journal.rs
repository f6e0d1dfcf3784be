//! Fuzzing the journal's recovery: a source is written and synced (so every record is
//! acknowledged), then one of its files is damaged on disk (bit flips, bytes overwritten with
//! length-like values, truncation, garbage appended, a damaged or missing `.idx`), and the
//! journal is opened and read again.
//!
//! Whatever the damage: no panic, no allocation trusting a length, and either `open` refuses
//! with a clear [`Error::Corrupt`] naming the file (damage in a sealed segment), or it opens
//! and then
//! * every record it returns is byte for byte the record written at that seq (a damaged
//!   record is never handed out),
//! * every record before the first damaged byte is still read,
//! * damage in the last segment is cut, the cut is reported, and the source continues with
//!   the next seq.
//!
//! Cases: `PROPTEST_CASES`, or `TICKMESH_FUZZ_LONG=1` for 100x the CI default.

mod common;
#[path = "../../tests/support/fuzz.rs"]
mod fuzz;

use common::{rec, sid};
use fuzz::{config, mutate, mutations, Capped};
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use tickmesh_journal::{Error, FsyncPolicy, Journal, JournalConfig};

#[global_allocator]
static ALLOC: Capped = Capped;

const SRC: &str = "FUZZ";

fn cfg() -> JournalConfig {
    JournalConfig { segment_bytes: 8_192, fsync: FsyncPolicy::Never, index_every: 5, ..JournalConfig::default() }
}

/// The source's files of one extension, sorted by first seq.
fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(SRC))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|x| x == ext));
    v.sort();
    v
}

/// Seq and end offset of each frame of an intact segment.
fn frame_ends(bytes: &[u8]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let rec = &bytes[at + 8..at + 8 + len];
        let seq = u64::from_le_bytes(rec[28..36].try_into().unwrap());
        at += 8 + len;
        out.push((seq, at as u64));
    }
    out
}

#[derive(Debug, Clone)]
enum Target {
    /// A segment, by index modulo the number of segments (the last one included).
    Segment(usize),
    /// The last segment.
    LastSegment,
    /// A sealed segment's `.idx` sidecar.
    Index(usize),
    /// A sealed segment's `.idx` sidecar is deleted.
    DeleteIndex(usize),
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        3 => any::<usize>().prop_map(Target::Segment),
        3 => Just(Target::LastSegment),
        1 => any::<usize>().prop_map(Target::Index),
        1 => any::<usize>().prop_map(Target::DeleteIndex),
    ]
}

fn check_corrupt_error(e: &Error, path: &Path) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(matches!(e, Error::Corrupt { .. }), "expected Corrupt, got {e}");
    prop_assert!(msg.contains(&path.display().to_string()), "error does not name {}: {msg}", path.display());
    prop_assert!(msg.contains("truncate"), "error does not say what to do: {msg}");
    Ok(())
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn damaged_files_never_yield_a_damaged_record(n in 20u64..400, which in target(), muts in mutations(3)) {
        let dir = tempfile::tempdir().unwrap();
        let originals: Vec<Vec<u8>> = (1..=n).map(|s| rec(SRC, s, 1_000 + s)).collect();
        {
            let (j, _) = Journal::open(dir.path(), cfg()).unwrap();
            for r in &originals {
                j.append(r).unwrap();
            }
            j.sync().unwrap(); // every record is acknowledged from here on
        }
        let segs = files(dir.path(), "seg");
        let idxs = files(dir.path(), "idx");
        prop_assert!(!segs.is_empty());
        // Records that must survive: all of every segment before the damaged one, and those
        // of the damaged segment whose frame ends before the first changed byte.
        // A last segment cut exactly at a frame boundary looks like a journal that simply
        // holds fewer records: nothing on disk says more existed (no head anchor yet, see
        // the journal's docs), so that one case may open clean.
        let mut boundary_cut = false;
        let (path, must_keep, sealed) = match which {
            Target::Segment(_) | Target::LastSegment => {
                let i = if let Target::Segment(i) = which { i % segs.len() } else { segs.len() - 1 };
                let path = segs[i].clone();
                let before = std::fs::read(&path).unwrap();
                let after = mutate(&before, &muts);
                let first_diff = before.iter().zip(&after).position(|(a, b)| a != b)
                    .unwrap_or(before.len().min(after.len())) as u64;
                if before == after {
                    return Ok(());
                }
                std::fs::write(&path, &after).unwrap();
                // Frames of segment i that ended before the damage (segments before i are intact).
                let keep_here = frame_ends(&before).iter().filter(|(_, end)| *end <= first_diff).count() as u64;
                boundary_cut = i + 1 == segs.len()
                    && after.len() < before.len()
                    && before.starts_with(&after)
                    && frame_ends(&before).iter().any(|(_, end)| *end == after.len() as u64);
                let first_seq_here = frame_ends(&before).first().map(|(s, _)| *s).unwrap_or(1);
                (path, first_seq_here - 1 + keep_here, i + 1 < segs.len())
            }
            Target::Index(i) | Target::DeleteIndex(i) => {
                if idxs.is_empty() {
                    return Ok(());
                }
                let path = idxs[i % idxs.len()].clone();
                if matches!(which, Target::DeleteIndex(_)) {
                    std::fs::remove_file(&path).unwrap();
                } else {
                    let before = std::fs::read(&path).unwrap();
                    std::fs::write(&path, mutate(&before, &muts)).unwrap();
                }
                // An index is a cache: damage to it must lose nothing.
                (path, n, false)
            }
        };

        let (j, report) = match Journal::open(dir.path(), cfg()) {
            Ok(x) => x,
            Err(e) => {
                // Only damage to a sealed segment may stop open, and then with a clear error.
                prop_assert!(sealed, "open refused damage that is not in a sealed segment: {e}");
                check_corrupt_error(&e, &path)?;
                fuzz::assert_no_huge_alloc();
                return Ok(());
            }
        };
        let mut r = j.reader(&sid(SRC), 1).unwrap();
        let mut read = 0u64;
        let mut end_error = None;
        loop {
            match r.next() {
                Ok(Some(got)) => {
                    read += 1;
                    let seq = got.seq();
                    prop_assert_eq!(seq, read, "records come back in order without holes");
                    prop_assert!(got.bytes() == &originals[(seq - 1) as usize][..], "record {seq} differs from what was written");
                }
                Ok(None) => break,
                Err(e) => {
                    end_error = Some(e);
                    break;
                }
            }
        }
        prop_assert!(read >= must_keep, "only {read} records read back, but the first {must_keep} were before the damage ({report})");
        match end_error {
            Some(e) => {
                prop_assert!(sealed, "reading stopped on damage outside a sealed segment: {e}");
                check_corrupt_error(&e, &path)?;
            }
            None if read < n => {
                // Records were cut from the tail: the report says so, and the source continues
                // with the next seq.
                prop_assert!(
                    !report.is_clean() || boundary_cut,
                    "records {}..={n} vanished without a cut in the report",
                    read + 1
                );
                prop_assert_eq!(j.last_seq(&sid(SRC)), if read == 0 { None } else { Some(read) });
                j.append(&rec(SRC, read + 1, 5_000)).unwrap();
                prop_assert_eq!(j.last_seq(&sid(SRC)), Some(read + 1));
            }
            None => {}
        }
        fuzz::assert_no_huge_alloc();
    }
}
