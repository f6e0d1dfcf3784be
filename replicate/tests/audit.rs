//! The audit chain: append and verify, and every kind of tampering detected at the right index.

use proptest::prelude::*;
use std::path::{Path, PathBuf};
use tickmesh_replicate::audit::{AuditEntry, AuditLog, HEAD_FILE, LOG_FILE};
use tickmesh_replicate::{AuditFilter, DataClass, Decision, Direction, Transfer, TransferAudit};

fn transfer(i: u64) -> Transfer {
    let pii = i % 5 == 4;
    Transfer {
        src: if pii { "USR.EUW1".into() } else { format!("SYN.S{}", i % 3) },
        first_seq: if pii { 0 } else { i * 10 + 1 },
        last_seq: if pii { 0 } else { i * 10 + 10 },
        count: if pii { 0 } else { 10 },
        bytes: if pii { 0 } else { 960 + i },
        from: "eu-west-1".into(),
        to: if i.is_multiple_of(2) { "us-east-1".into() } else { "ap-southeast-1".into() },
        class: if pii { DataClass::Pii } else { DataClass::MarketData },
        dir: Direction::Send,
        decision: if pii { Decision::Deny("pii stays home".into()) } else { Decision::Allow },
    }
}

/// A log of `n` entries in a new temporary directory.
fn chain(n: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    for i in 0..n {
        log.record(transfer(i));
    }
    log.flush();
    assert_eq!(log.written(), n);
    drop(log);
    let path = dir.path().join(LOG_FILE);
    (dir, path)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(String::from).collect()
}

fn write_lines(path: &Path, l: &[String]) {
    let mut s = l.join("\n");
    if !l.is_empty() {
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

/// The index and reason of the first break.
fn broken(path: &Path) -> (u64, String) {
    let r = AuditLog::verify(path).unwrap();
    let b = r.broken.clone().unwrap_or_else(|| panic!("tampering not detected: {r:?}"));
    assert!(b.action.contains("evidence"), "{b:?}");
    (b.index, b.reason)
}

#[test]
fn an_appended_chain_verifies_and_continues_after_reopen() {
    let (dir, path) = chain(10);
    let r = AuditLog::verify(&path).unwrap();
    assert!(r.is_intact(), "{r:?}");
    assert_eq!(r.entries, 10);
    assert_eq!(r.head.as_ref().unwrap().index, 9);
    assert_eq!(r.last_hash.as_deref(), Some(r.head.as_ref().unwrap().hash.as_str()));
    let log = AuditLog::open(dir.path()).unwrap();
    for i in 10..15 {
        log.record(transfer(i));
    }
    log.flush();
    drop(log);
    let r = AuditLog::verify(&path).unwrap();
    assert!(r.is_intact(), "{r:?}");
    assert_eq!(r.entries, 15);
    let all: Vec<AuditEntry> = lines(&path).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(all.iter().map(|e| e.index).collect::<Vec<_>>(), (0..15).collect::<Vec<_>>());
    assert_eq!(all[0].prev_hash, tickmesh_replicate::audit::GENESIS);
    for w in all.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
    }
    // The entry says what moved.
    assert_eq!(all[4].decision, "deny");
    assert_eq!(all[4].reason.as_deref(), Some("pii stays home"));
    assert_eq!(all[4].transfer(), transfer(4));
    assert_eq!(all[3].transfer(), transfer(3));
}

#[test]
fn an_edited_field_is_detected_at_its_index() {
    let (_d, path) = chain(10);
    let mut l = lines(&path);
    l[3] = l[3].replace("\"count\":10", "\"count\":11");
    write_lines(&path, &l);
    let (i, why) = broken(&path);
    assert_eq!(i, 3);
    assert!(why.contains("does not match its hash"), "{why}");
}

#[test]
fn an_edited_entry_with_a_recomputed_hash_breaks_the_next_link() {
    let (_d, path) = chain(10);
    let mut l = lines(&path);
    let mut e: AuditEntry = serde_json::from_str(&l[3]).unwrap();
    e.to = "sa-east-1".into();
    e.hash = e.compute_hash();
    l[3] = serde_json::to_string(&e).unwrap();
    write_lines(&path, &l);
    let (i, why) = broken(&path);
    assert_eq!(i, 4);
    assert!(why.contains("prev_hash is not the hash of entry 3"), "{why}");
}

#[test]
fn a_deleted_line_is_detected() {
    let (_d, path) = chain(10);
    let mut l = lines(&path);
    l.remove(4);
    write_lines(&path, &l);
    let (i, why) = broken(&path);
    assert_eq!(i, 4);
    assert!(why.contains("removed"), "{why}");
}

#[test]
fn swapped_lines_are_detected() {
    let (_d, path) = chain(10);
    let mut l = lines(&path);
    l.swap(2, 3);
    write_lines(&path, &l);
    let (i, why) = broken(&path);
    assert_eq!(i, 2);
    assert!(why.contains("reordered"), "{why}");
}

#[test]
fn an_inserted_forged_line_is_detected() {
    // A careful forgery: right index, linked to its predecessor, hash recomputed.
    let (_d, path) = chain(10);
    let mut l = lines(&path);
    let prev: AuditEntry = serde_json::from_str(&l[4]).unwrap();
    let forged = AuditEntry::new(5, prev.time_ns + 1, &transfer(99), &prev.hash);
    l.insert(5, serde_json::to_string(&forged).unwrap());
    write_lines(&path, &l);
    let (i, why) = broken(&path);
    assert_eq!(i, 6);
    assert!(why.contains("inserted"), "{why}");
    // A careless one (a copy of another line) is caught where it stands.
    let (_d, path) = chain(10);
    let mut l = lines(&path);
    let copy = l[2].clone();
    l.insert(5, copy);
    write_lines(&path, &l);
    assert_eq!(broken(&path).0, 5);
    // Garbage too.
    let (_d, path) = chain(10);
    let mut l = lines(&path);
    l.insert(7, "{\"index\":7,\"src\":\"X\"}".into());
    write_lines(&path, &l);
    let (i, why) = broken(&path);
    assert_eq!(i, 7);
    assert!(why.contains("not a valid audit entry"), "{why}");
}

#[test]
fn a_truncated_tail_is_detected_through_the_head() {
    let (_d, path) = chain(10);
    let mut l = lines(&path);
    l.truncate(8);
    write_lines(&path, &l);
    let (i, why) = broken(&path);
    assert_eq!(i, 8);
    assert!(why.contains("removed from the tail"), "{why}");
    // Everything removed, head left: still detected.
    write_lines(&path, &[]);
    assert_eq!(broken(&path).0, 0);
}

#[test]
fn a_rewritten_chain_does_not_match_the_head() {
    let (_d, path) = chain(6);
    let l = lines(&path);
    // Rebuild the whole chain with one entry changed; only the head gives it away.
    let mut prev = tickmesh_replicate::audit::GENESIS.to_owned();
    let mut out = Vec::new();
    for (i, line) in l.iter().enumerate() {
        let e: AuditEntry = serde_json::from_str(line).unwrap();
        let mut t = e.transfer();
        if i == 2 {
            t.count = 1_000;
        }
        let n = AuditEntry::new(e.index, e.time_ns, &t, &prev);
        prev = n.hash.clone();
        out.push(serde_json::to_string(&n).unwrap());
    }
    write_lines(&path, &out);
    let (i, why) = broken(&path);
    assert_eq!(i, 5);
    assert!(why.contains("head anchor"), "{why}");
}

#[test]
fn a_torn_last_line_is_cut_on_open_and_the_chain_continues() {
    let (dir, path) = chain(3);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"{\"index\":3,\"time_ns\":12");
    std::fs::write(&path, &bytes).unwrap();
    let r = AuditLog::verify(&path).unwrap();
    assert!(r.is_intact() && r.torn_tail && r.entries == 3, "{r:?}");
    let log = AuditLog::open(dir.path()).unwrap();
    log.record(transfer(3));
    log.flush();
    drop(log);
    let r = AuditLog::verify(&path).unwrap();
    assert!(r.is_intact() && !r.torn_tail && r.entries == 4, "{r:?}");
}

#[test]
fn open_refuses_to_append_to_a_broken_chain() {
    let (dir, path) = chain(5);
    let mut l = lines(&path);
    l.remove(1);
    write_lines(&path, &l);
    let e = AuditLog::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("broken at index 1") && e.contains("moving the file aside"), "{e}");
    // A damaged head is a break too.
    let (dir, _path) = chain(2);
    std::fs::write(dir.path().join(HEAD_FILE), b"{oops").unwrap();
    assert!(AuditLog::open(dir.path()).is_err());
}

#[test]
fn records_from_many_threads_form_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(AuditLog::open(dir.path()).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    log.record(transfer(t * 1000 + i));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    log.flush();
    let r = AuditLog::verify(&log.path()).unwrap();
    assert!(r.is_intact(), "{r:?}");
    assert_eq!(r.entries, 2000);
}

#[test]
fn queries_filter_and_page() {
    let (dir, path) = chain(20);
    let log = AuditLog::open(dir.path()).unwrap();
    let q = |f: AuditFilter| log.query(&f).unwrap();
    assert_eq!(q(AuditFilter::default()).entries.len(), 20);
    let deny = q(AuditFilter { decision: Some("deny".into()), ..Default::default() });
    assert_eq!(deny.entries.iter().map(|e| e.index).collect::<Vec<_>>(), vec![4, 9, 14, 19]);
    assert!(deny.entries.iter().all(|e| e.class == DataClass::Pii && e.src == "USR.EUW1"));
    let pii = q(AuditFilter { class: Some(DataClass::Pii), to: Some("ap-southeast-1".into()), ..Default::default() });
    assert_eq!(pii.entries.iter().map(|e| e.index).collect::<Vec<_>>(), vec![9, 19]);
    let src = q(AuditFilter { src: Some("SYN.S0".into()), from: Some("eu-west-1".into()), ..Default::default() });
    assert!(!src.entries.is_empty() && src.entries.iter().all(|e| e.src == "SYN.S0"));
    let page = q(AuditFilter { limit: Some(7), ..Default::default() });
    assert_eq!(page.entries.len(), 7);
    assert_eq!(page.next_after, Some(6));
    let page2 = q(AuditFilter { limit: Some(7), after: page.next_after, ..Default::default() });
    assert_eq!(page2.entries.first().map(|e| e.index), Some(7));
    let last = q(AuditFilter { limit: Some(7), after: Some(13), ..Default::default() });
    assert_eq!((last.entries.len(), last.next_after), (6, None));
    assert_eq!(last.head.unwrap().index, 19);
    let all = AuditLog::query_file(&path, &AuditFilter::default()).unwrap().entries;
    let t10 = all[10].time_ns;
    let since = q(AuditFilter { since_ns: Some(t10), ..Default::default() });
    assert!(since.entries.iter().all(|e| e.time_ns >= t10) && since.entries.iter().any(|e| e.index == 10));
    let until = q(AuditFilter { until_ns: Some(t10), ..Default::default() });
    assert!(until.entries.iter().all(|e| e.time_ns < t10));
    assert!(
        AuditFilter { decision: Some("maybe".into()), ..Default::default() }.problems()[0].contains("allow or deny")
    );
    assert!(AuditFilter { limit: Some(0), ..Default::default() }.problems()[0].contains("out of range"));
}

#[derive(Debug, Clone)]
enum Tamper {
    /// Replace one byte of a line with a different ASCII letter or digit.
    Byte {
        line: usize,
        pos: usize,
        with: u8,
    },
    Delete(usize),
    Swap(usize),
    Truncate(usize),
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        (0usize..12, 0usize..400, prop::sample::select(b"abcdefxyz0123456789".to_vec()))
            .prop_map(|(line, pos, with)| Tamper::Byte { line, pos, with }),
        (0usize..12).prop_map(Tamper::Delete),
        (0usize..11).prop_map(Tamper::Swap),
        (0usize..12).prop_map(Tamper::Truncate),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_random_edit_is_detected_at_its_index(t in tamper()) {
        let (_d, path) = chain(12);
        let mut l = lines(&path);
        let want = match t {
            Tamper::Byte { line, pos, with } => {
                let mut b = l[line].clone().into_bytes();
                let pos = pos % b.len();
                prop_assume!(b[pos] != with);
                b[pos] = with;
                l[line] = String::from_utf8(b).unwrap();
                line as u64
            }
            Tamper::Delete(i) => { l.remove(i); i as u64 }
            Tamper::Swap(i) => { l.swap(i, i + 1); i as u64 }
            Tamper::Truncate(n) => { l.truncate(n); n as u64 }
        };
        write_lines(&path, &l);
        let r = AuditLog::verify(&path).unwrap();
        let b = r.broken.clone();
        prop_assert!(b.is_some(), "not detected: {:?} {:?}", t, r);
        prop_assert_eq!(b.unwrap().index, want, "{:?}", t);
    }
}

fn erasure(user: &str, to: &str) -> tickmesh_replicate::UserDataRecord {
    tickmesh_replicate::UserDataRecord {
        op: "forget".into(),
        user: tickmesh_replicate::user_pseudonym(user),
        home: "us-east-1".into(),
        from: "us-east-1".into(),
        to: to.into(),
        dir: Direction::Send,
        class: DataClass::Pii,
        fields: vec!["name".into(), "email".into()],
        regions: vec!["eu-west-1".into(), "ap-southeast-1".into()],
        operator: Some("ops".into()),
        decision: "allow".into(),
        reason: None,
        outcome: "erased".into(),
        bytes: 0,
    }
}

/// A log written before entries had kinds (a line typed by hand in that format, its hash
/// computed here independently) still verifies, and erasures continue the same chain.
#[test]
fn lines_without_kind_are_transfers_and_erasures_join_the_chain() {
    use sha2::{Digest, Sha256};
    use tickmesh_replicate::EntryKind;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let canonical = r#"{"index":0,"time_ns":1700000000000000000,"src":"SYN.S0","first_seq":1,"last_seq":10,"count":10,"bytes":960,"from":"eu-west-1","to":"us-east-1","class":"market_data","dir":"send","decision":"allow","prev_hash":"0000000000000000000000000000000000000000000000000000000000000000"}"#;
    let mut h = Sha256::new();
    h.update([0u8; 32]);
    h.update(canonical.as_bytes());
    let hash: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let line = format!("{},\"hash\":\"{hash}\"}}", &canonical[..canonical.len() - 1]);
    write_lines(&path, std::slice::from_ref(&line));
    std::fs::write(dir.path().join(HEAD_FILE), format!("{{\"index\":0,\"hash\":\"{hash}\"}}")).unwrap();
    assert!(AuditLog::verify(&path).unwrap().is_intact(), "an old-format line verifies");
    let e: AuditEntry = serde_json::from_str(&line).unwrap();
    assert_eq!((e.kind, e.src.as_str(), e.count), (EntryKind::Transfer, "SYN.S0", 10));
    assert_eq!(serde_json::to_string(&e).unwrap(), line, "a transfer is written back byte for byte");

    let log = AuditLog::open(dir.path()).unwrap();
    log.record_user_data(EntryKind::Erasure, erasure("alice", "us-east-1"));
    log.record(transfer(1));
    log.record_user_data(EntryKind::Erasure, erasure("bob", "us-east-1"));
    log.flush();
    let r = AuditLog::verify(&path).unwrap();
    assert!(r.is_intact() && r.entries == 4, "{r:?}");
    let l = lines(&path);
    assert!(l[1].contains("\"kind\":\"erasure\"") && !l[1].contains("alice"), "pseudonym only: {}", l[1]);
    assert!(!l[2].contains("\"kind\""), "transfers keep the old format: {}", l[2]);

    let q = |f: AuditFilter| log.query(&f).unwrap().entries;
    let er = q(AuditFilter { kind: Some(EntryKind::Erasure), ..Default::default() });
    assert_eq!(er.iter().map(|e| e.index).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(er[0].event.as_ref().unwrap().fields, ["name", "email"]);
    let tr = q(AuditFilter { kind: Some(EntryKind::Transfer), ..Default::default() });
    assert_eq!(tr.iter().map(|e| e.index).collect::<Vec<_>>(), [0, 2]);
    let bob = q(AuditFilter { user: Some(tickmesh_replicate::user_pseudonym("bob")), ..Default::default() });
    assert_eq!(bob.iter().map(|e| e.index).collect::<Vec<_>>(), [3]);
    drop(log);

    // An edited erasure (its outcome rewritten) breaks the chain at its index.
    let mut l = lines(&path);
    l[1] = l[1].replace("\"outcome\":\"erased\"", "\"outcome\":\"nothing stored\"");
    write_lines(&path, &l);
    let (at, why) = broken(&path);
    assert_eq!(at, 1, "{why}");
    // A transfer line that claims a kind is not a valid entry.
    let mut l = lines(&path);
    l[1] = l[0].replacen("{\"index\":0", "{\"kind\":\"transfer\",\"index\":0", 1);
    write_lines(&path, &l);
    assert_eq!(broken(&path).0, 1);
}
