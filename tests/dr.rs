//! Disaster recovery: backup, wipe, restore (byte-identical), incremental backups,
//! point-in-time restore against the journal reader, damaged backups, recovery plans.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::fill_ts as ts;
use tickmesh::dr::{self, Target};
use tickmesh_codec::{testing, Seq, Side, SourceId};
use tickmesh_journal::{Journal, JournalConfig};
use tickmesh_replicate::{AuditLog, DataClass, Decision, Direction, Transfer, TransferAudit};

const SOURCES: [&str; 3] = ["SYN.USE1", "SYN.EUW1", "XNAS.ITCH"];

fn small() -> JournalConfig {
    JournalConfig { segment_bytes: 8_192, ..JournalConfig::default() }
}

/// Appends records `from..=to` of every source.
fn fill(state: &Path, from: u64, to: u64) {
    support::fill_journal(state, &SOURCES, from, to);
}

fn audit(state: &Path, n: u64) {
    let log = AuditLog::open(&state.join("audit")).unwrap();
    for i in 0..n {
        log.record(Transfer {
            src: "SYN.USE1".into(),
            first_seq: i + 1,
            last_seq: i + 1,
            count: 1,
            bytes: 96,
            from: "us-east-1".into(),
            to: "eu-west-1".into(),
            class: DataClass::MarketData,
            dir: Direction::Send,
            decision: Decision::Allow,
        });
    }
    log.flush();
}

/// Every file under `dir/journal` with a `.seg` name, relative path to bytes.
fn segments(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let j = dir.join("journal");
    for s in std::fs::read_dir(&j).unwrap() {
        let s = s.unwrap().path();
        if !s.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&s).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|x| x == "seg") {
                out.push((f.strip_prefix(&j).unwrap().to_owned(), std::fs::read(&f).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Every record of `src` in the journal at `dir`, as bytes.
fn records(dir: &Path, src: &str) -> Vec<Vec<u8>> {
    support::journal_records(dir, src)
}

fn tickmesh(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tickmesh")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn backup_wipe_restore_gives_the_same_journal_and_later_backups_are_incremental() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let bk = tmp.path().join("backup");
    fill(&state, 1, 400);
    audit(&state, 25);
    let nsegs = segments(&state).len() as u64;
    assert!(nsegs > 9, "the test wants several segments per source, got {nsegs}");

    let (code, out, err) = tickmesh(&["backup", "--state-dir", state.to_str().unwrap(), "--to", bk.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["kind"], "full");
    assert_eq!(v["segments_copied"], nsegs);
    assert_eq!(v["sources"]["SYN.EUW1"]["first_seq"], 1);
    assert_eq!(v["sources"]["SYN.EUW1"]["last_seq"], 400);

    // Nothing changed: nothing copied.
    let url = format!("file://{}", bk.display());
    let r = dr::backup(&state, &Target::parse(&url).unwrap()).unwrap();
    assert_eq!((r.manifest.kind.as_str(), r.segments_copied, r.segments_unchanged), ("incremental", 0, nsegs));
    // More records: only the segments that grew or are new are copied.
    fill(&state, 401, 450);
    audit(&state, 5);
    let after = segments(&state).len() as u64;
    let r = dr::backup(&state, &Target::parse(&url).unwrap()).unwrap();
    assert_eq!(r.manifest.number, 3);
    assert!(r.segments_copied >= 3 && r.segments_copied <= after - nsegs + 3, "{r:?}");
    assert_eq!(r.segments_copied + r.segments_unchanged, after);
    assert_eq!(r.manifest.sources["XNAS.ITCH"].last_seq, 450);
    assert!(bk.join("manifests/000001.json").exists() && bk.join("manifests/000003.json").exists());

    let before = segments(&state);
    let audit_before = std::fs::read(state.join("audit/audit.jsonl")).unwrap();
    std::fs::remove_dir_all(&state).unwrap();
    let (code, out, err) = tickmesh(&["restore", "--from", &url, "--state-dir", state.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"restored\""), "{out}");
    assert_eq!(segments(&state), before, "restored segments differ from the originals");
    assert_eq!(std::fs::read(state.join("audit/audit.jsonl")).unwrap(), audit_before);
    assert!(AuditLog::verify(&state.join("audit/audit.jsonl")).unwrap().is_intact());
    assert_eq!(records(&state, "SYN.USE1").len(), 450);

    // Restoring over a journal is refused.
    let (code, _, err) = tickmesh(&["restore", "--from", &url, "--state-dir", state.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("already holds a journal"), "{err}");
}

#[test]
fn point_in_time_restore_reproduces_the_journal_up_to_the_time() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let bk = Target::parse(tmp.path().join("backup").to_str().unwrap()).unwrap();
    fill(&state, 1, 300);
    dr::backup(&state, &bk).unwrap();
    fill(&state, 301, 500);
    dr::backup(&state, &bk).unwrap();
    // Between two sources' records of seq 333: SYN.USE1 (k = 0) has it, the others do not.
    let at = ts(0, 333);
    for (n, at) in [(0, at), (1, ts(2, 500)), (2, ts(0, 1) - 1)] {
        let dir = tmp.path().join(format!("pit{n}"));
        let r = dr::restore(&bk, &dir, Some(at)).unwrap();
        for (k, s) in SOURCES.iter().enumerate() {
            let want: Vec<Vec<u8>> = records(&state, s)
                .into_iter()
                .take_while(|b| tickmesh_codec::access_untrusted(b).unwrap().ts_ingest() <= at)
                .collect();
            let got = records(&dir, s);
            assert_eq!(got.len(), want.len(), "{s} at {at}");
            assert!(got == want, "{s}: restored records differ");
            if n == 0 {
                assert_eq!(got.len() as u64, if k == 0 { 333 } else { 332 }, "{s}");
                assert_eq!(r.sources[*s].last_seq, got.len() as u64);
            }
        }
    }
    assert!(dr::parse_time("17s").unwrap() == 17_000_000_000 && dr::parse_time("yesterday").is_err());
}

#[test]
fn a_damaged_backup_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let bkdir = tmp.path().join("backup");
    fill(&state, 1, 100);
    let bk = Target::parse(bkdir.to_str().unwrap()).unwrap();
    dr::backup(&state, &bk).unwrap();
    let seg = std::fs::read_dir(bkdir.join("journal/SYN.EUW1")).unwrap().next().unwrap().unwrap().path();
    let mut b = std::fs::read(&seg).unwrap();
    b[100] ^= 0x40;
    std::fs::write(&seg, b).unwrap();
    let e = dr::restore(&bk, &tmp.path().join("r"), None).unwrap_err().to_string();
    assert!(e.contains("checksum mismatch"), "{e}");
    assert!(!tmp.path().join("r/journal").exists(), "a failed restore leaves no journal behind");
    assert!(Target::parse("gs://bucket/x").unwrap_err().to_string().contains("not supported"));
    assert!(Target::parse("s3:///x").unwrap_err().to_string().contains("no bucket"));
}

#[test]
fn a_recovery_plan_is_applied_only_while_its_inputs_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let bkdir = tmp.path().join("backup");
    let url = bkdir.to_str().unwrap().to_owned();
    fill(&full, 1, 300);
    dr::backup(&full, &Target::parse(&url).unwrap()).unwrap();
    // The damaged region: one source survived further than the backup, one is behind, one is gone.
    let state = tmp.path().join("state");
    let (j, _) = Journal::open(&state.join("journal"), small()).unwrap();
    for seq in 1..=320 {
        let mut r = testing::trade(seq, "AAPL", "1", "1", Side::Buy);
        r.header.src = SourceId::new("SYN.USE1").unwrap();
        r.header.ts_ingest = ts(0, seq);
        j.append(&r.to_bytes()).unwrap();
        if seq <= 50 {
            r.header.src = SourceId::new("SYN.EUW1").unwrap();
            j.append(&r.to_bytes()).unwrap();
        }
    }
    drop(j);
    let p = dr::plan(&state, std::slice::from_ref(&url), None).unwrap();
    let step = |s: &str| p.steps.iter().find(|x| x.src == s).unwrap().clone();
    assert_eq!((step("SYN.USE1").action.as_str(), step("SYN.USE1").local), ("keep", Some((1, 320))));
    assert_eq!((step("SYN.EUW1").action.as_str(), step("SYN.EUW1").backup), ("replace", Some((1, 300))));
    assert_eq!(step("XNAS.ITCH").action, "restore");
    assert!(step("XNAS.ITCH").then.contains("after seq 300"), "{:?}", step("XNAS.ITCH"));
    assert!(!step("XNAS.ITCH").fetch.is_empty());

    // Through the binary: plan written to a file, inputs change, apply refused.
    let planfile = tmp.path().join("plan.json");
    let (code, out, err) = tickmesh(&[
        "recover",
        "plan",
        "--state-dir",
        state.to_str().unwrap(),
        "--from",
        &url,
        "--out",
        planfile.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replace") && out.contains("tickmesh recover apply"), "{out}");
    fill(&full, 301, 310);
    dr::backup(&full, &Target::parse(&url).unwrap()).unwrap();
    let (code, _, err) = tickmesh(&["recover", "apply", planfile.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("inputs changed"), "{err}");
    assert_eq!(records(&state, "SYN.EUW1").len(), 50, "a refused plan changes nothing");

    // A fresh plan applies.
    let (code, _, err) = tickmesh(&[
        "recover",
        "plan",
        "--state-dir",
        state.to_str().unwrap(),
        "--from",
        &url,
        "--out",
        planfile.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = tickmesh(&["recover", "apply", planfile.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"recovered\""), "{out}");
    // The node started on it holds its home feeds until a peer reports (ARCHITECTURE.md).
    assert!(state.join(dr::RESTORED_MARKER).exists(), "recover apply marks the state directory");
    assert_eq!(records(&state, "SYN.USE1").len(), 320, "kept");
    assert_eq!(records(&state, "SYN.EUW1"), records(&full, "SYN.EUW1"), "replaced");
    assert_eq!(records(&state, "XNAS.ITCH"), records(&full, "XNAS.ITCH"), "restored");
    assert!(std::fs::read_dir(&state).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("journal.before-recover-")));
}

#[test]
fn a_plan_takes_each_source_from_the_backup_that_holds_it_furthest() {
    let tmp = tempfile::tempdir().unwrap();
    let (own, peer) = (tmp.path().join("own"), tmp.path().join("peer"));
    let (own_bk, peer_bk) = (tmp.path().join("own-bk"), tmp.path().join("peer-bk"));
    fill(&own, 1, 300);
    audit(&own, 5);
    fill(&peer, 1, 350); // the peer received our home sources further than our last backup
    audit(&peer, 9);
    dr::backup(&own, &Target::parse(own_bk.to_str().unwrap()).unwrap()).unwrap();
    dr::backup(&peer, &Target::parse(peer_bk.to_str().unwrap()).unwrap()).unwrap();
    let from = vec![own_bk.to_str().unwrap().to_owned(), peer_bk.to_str().unwrap().to_owned()];
    let state = tmp.path().join("wiped");
    let p = dr::plan(&state, &from, None).unwrap();
    for s in &p.steps {
        assert_eq!(
            (s.action.as_str(), s.backup, s.backup_from.as_deref()),
            ("restore", Some((1, 350)), Some(from[1].as_str()))
        );
    }
    assert!(p.restore_audit);
    let r = dr::apply(&p).unwrap();
    assert_eq!(r.restored["SYN.USE1"].last_seq, 350);
    assert_eq!(records(&state, "SYN.EUW1"), records(&peer, "SYN.EUW1"));
    assert_eq!(r.audit_entries, 5, "only this region's own audit log is restored");
    // On a tie the first (own) backup wins.
    let p = dr::plan(&tmp.path().join("other"), &[from[1].clone(), from[0].clone()], Some(ts(2, 300))).unwrap();
    assert!(p.steps.iter().all(|s| s.backup_from.as_deref() == Some(from[1].as_str())), "{:?}", p.steps);
}

#[test]
fn compare_finds_reused_seqs_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    fill(&a, 1, 120);
    fill(&b, 1, 100);
    // c: the same first 60, then other records under seqs 61..=90 (a reused range).
    fill(&c, 1, 60);
    {
        let (j, _) = Journal::open(&c.join("journal"), small()).unwrap();
        for seq in 61..=90 {
            let mut r = testing::trade(seq, "MSFT", "1.00", "1", Side::Buy);
            r.header.src = SourceId::new("SYN.USE1").unwrap();
            r.header.seq = Seq(seq);
            r.header.ts_ingest = ts(0, seq) + 7;
            j.append(&r.to_bytes()).unwrap();
        }
        j.sync().unwrap();
    }
    let same = dr::compare(&a, &b, "SYN.USE1").unwrap();
    assert_eq!((same.overlap, same.differing, same.missing, same.last_seq, same.other_last_seq), (100, 0, 0, 120, 100));
    let reused = dr::compare(&c, &a, "SYN.USE1").unwrap();
    assert_eq!((reused.overlap, reused.differing, reused.first_differing), (90, 30, Some(61)), "{reused:?}");
    let (code, out, _) = tickmesh(&[
        "recover",
        "compare",
        "--state-dir",
        c.to_str().unwrap(),
        "--with",
        a.to_str().unwrap(),
        "--source",
        "SYN.USE1",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("\"differing\":30"), "{out}");
}
