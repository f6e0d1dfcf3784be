//! Random appends, batches, duplicates, reads, crashes (tail truncation) and reopens,
//! checked against a model of what each source should hold.

mod common;

use common::{frame_len, rec, sid};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use tickmesh_journal::{Error, Journal, JournalConfig};

const SOURCES: [&str; 3] = ["A", "B.x", "C-1"];

#[derive(Debug, Clone)]
enum Op {
    /// `n` records of a source, seqs rising by `gap`, one by one or as one batch.
    Append { src: usize, gap: u64, n: usize, batch: bool },
    /// A record at or below the source's last seq.
    Duplicate { src: usize, back: u64 },
    /// Read from a seq and compare with the model.
    Read { src: usize, from: u64 },
    /// Close and reopen.
    Reopen,
    /// Close, cut `cut` bytes off the end of a source's last segment, reopen.
    Crash { src: usize, cut: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 1..4u64, 1..80usize, any::<bool>()).prop_map(|(src, gap, n, batch)| Op::Append { src, gap, n, batch }),
        1 => (0..3usize, 0..5u64).prop_map(|(src, back)| Op::Duplicate { src, back }),
        2 => (0..3usize, 0..400u64).prop_map(|(src, from)| Op::Read { src, from }),
        1 => Just(Op::Reopen),
        1 => (0..3usize, 0..600u64).prop_map(|(src, cut)| Op::Crash { src, cut }),
    ]
}

fn cfg() -> JournalConfig {
    JournalConfig { segment_bytes: 8_192, index_every: 5, ..common::small_cfg() }
}

fn last_segment(dir: &Path, src: &str) -> Option<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join(src))
        .ok()?
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v.pop()
}

fn check(j: &Journal, model: &BTreeMap<usize, Vec<u64>>) -> Result<(), TestCaseError> {
    let want: Vec<_> =
        model.iter().filter(|(_, v)| !v.is_empty()).map(|(s, v)| (sid(SOURCES[*s]), *v.last().unwrap())).collect();
    let mut want = want;
    want.sort();
    prop_assert_eq!(j.positions(), want);
    Ok(())
}

fn read(j: &Journal, src: usize, from: u64) -> Vec<u64> {
    let mut r = j.reader(&sid(SOURCES[src]), from).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next().unwrap() {
        out.push(rec.seq());
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn journal_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Some(Journal::open(dir.path(), cfg()).unwrap().0);
        let mut model: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for op in ops {
            let journal = j.as_ref().unwrap();
            match op {
                Op::Append { src, gap, n, batch } => {
                    let seqs = model.entry(src).or_default();
                    let start = seqs.last().copied().unwrap_or(0);
                    let new: Vec<u64> = (1..=n as u64).map(|k| start + k * gap).collect();
                    let recs: Vec<Vec<u8>> = new.iter().map(|s| rec(SOURCES[src], *s, *s)).collect();
                    if batch {
                        let out = journal.append_batch(recs.iter().map(|r| &r[..])).unwrap();
                        prop_assert_eq!((out.appended, out.duplicates), (n as u64, 0));
                    } else {
                        for r in &recs {
                            journal.append(r).unwrap();
                        }
                    }
                    seqs.extend(new);
                }
                Op::Duplicate { src, back } => {
                    let last = model.get(&src).and_then(|v| v.last().copied()).unwrap_or(0);
                    if last > back {
                        let got = journal.append(&rec(SOURCES[src], last - back, 1));
                        let is_out_of_order = matches!(got, Err(Error::OutOfOrder { .. }));
                        prop_assert!(is_out_of_order);
                    }
                }
                Op::Read { src, from } => {
                    let want: Vec<u64> = model.get(&src).map(|v| v.iter().copied().filter(|s| *s >= from).collect()).unwrap_or_default();
                    prop_assert_eq!(read(journal, src, from), want);
                }
                Op::Reopen => {
                    drop(j.take());
                    let (jn, report) = Journal::open(dir.path(), cfg()).unwrap();
                    prop_assert!(report.is_clean(), "{}", report);
                    j = Some(jn);
                }
                Op::Crash { src, cut } => {
                    drop(j.take());
                    if let Some(path) = last_segment(dir.path(), SOURCES[src]) {
                        let len = std::fs::metadata(&path).unwrap().len();
                        let cut = cut.min(len);
                        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - cut).unwrap();
                        let f = frame_len();
                        let kept = (len - cut) / f;
                        let lost = (len / f - kept) as usize;
                        let seqs = model.get_mut(&src).unwrap();
                        seqs.truncate(seqs.len() - lost);
                        let (jn, report) = Journal::open(dir.path(), cfg()).unwrap();
                        let s = report.source(&sid(SOURCES[src])).unwrap();
                        prop_assert_eq!(s.bytes_cut, (len - cut) - kept * f);
                        prop_assert_eq!(s.records_cut, 0);
                        j = Some(jn);
                    } else {
                        j = Some(Journal::open(dir.path(), cfg()).unwrap().0);
                    }
                }
            }
            check(j.as_ref().unwrap(), &model)?;
        }
        let journal = j.as_ref().unwrap();
        for src in 0..SOURCES.len() {
            prop_assert_eq!(read(journal, src, 0), model.get(&src).cloned().unwrap_or_default());
        }
    }
}
