//! A region restored from its own, older backup never reuses a `seq` of its home source.
//!
//! Three real regions. Region A is backed up at time T, keeps ingesting (its records beyond
//! T reach the peers), is SIGKILLed, wiped and restored from the old backup, and restarted
//! with its own node.toml. Before its feed starts it takes the records beyond T back from
//! the peers: afterwards A's journal of its home source is gap-free, byte-identical to the
//! peers' where both hold it, and continues past what the peers held; clients on A and on
//! a peer see every seq at most once.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{connect, next_json, read_journal, request, Demo, Ws};

fn tickmesh(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tickmesh")).args(args).output().unwrap();
    assert!(out.status.success(), "tickmesh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn home_source(region_dir: &Path) -> String {
    let cfg: toml::Value = toml::from_str(&std::fs::read_to_string(region_dir.join("node.toml")).unwrap()).unwrap();
    cfg["feeds"][0]["source"].as_str().unwrap().to_owned()
}

/// Collects (src, seq) of data messages until `until`; panics on a repeated or backward seq.
async fn collect(ws: &mut Ws, until: Instant, seen: &mut BTreeMap<String, Vec<u64>>) {
    while Instant::now() < until {
        let Some(v) = next_json(ws, until - Instant::now()).await else { break };
        if let (Some(src), Some(seq)) = (v["src"].as_str(), v["seq"].as_u64()) {
            if v["type"] == "trade" || v["type"] == "quote" {
                let list = seen.entry(src.to_owned()).or_default();
                assert!(list.last().is_none_or(|l| seq > *l), "{src}: seq {seq} after {:?}: a duplicate", list.last());
                list.push(seq);
            }
        }
    }
}

async fn subscribe_all(ws_url: &str, token: &str) -> Ws {
    let (mut ws, _) = connect(ws_url, token, "").await;
    let r = request(&mut ws, json!({"op":"subscribe","id":1,"channels":["trades","quotes"],"symbols":"*"})).await;
    assert_eq!(r["type"], "subscribed", "{r}");
    ws
}

async fn get_json(url: &str) -> (u16, Value) {
    match tickmesh::admin_api::http_request("GET", url, None, None, &[], Duration::from_secs(3)).await {
        Ok((s, body)) => (s, serde_json::from_str(&body).unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_from_an_old_own_backup_continues_after_the_peers_seq() {
    let state = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let demo = Demo::start_in(state.path(), &["--rate", "200"], None);
    let (a, b) = (demo.regions[0].clone(), demo.regions[1].clone());
    let a_dir = state.path().join(&a.region);
    let src = home_source(&a_dir);

    // A client on B for the whole run.
    let mut on_b = subscribe_all(&b.ws_url, &demo.user_token).await;
    let mut seen_b = BTreeMap::new();
    collect(&mut on_b, Instant::now() + Duration::from_secs(2), &mut seen_b).await;

    // T: A's backup.
    let out = tickmesh(&["backup", "--state-dir", a_dir.to_str().unwrap(), "--to", backup.path().to_str().unwrap()]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let backed_up = v["sources"][&src]["last_seq"].as_u64().expect("the backup holds A's home source");

    // A runs on; the peers receive what it ingests beyond T. Then it dies and is wiped.
    collect(&mut on_b, Instant::now() + Duration::from_secs(3), &mut seen_b).await;
    demo.kill_region(&a.region);
    collect(&mut on_b, Instant::now() + Duration::from_secs(1), &mut seen_b).await;
    let held_by_b = *seen_b.get(&src).and_then(|s| s.last()).expect("B's client saw A's source");
    assert!(held_by_b > backed_up + 50, "the peers must hold more than the backup: {held_by_b} vs {backed_up}");
    for d in ["journal", "audit"] {
        std::fs::remove_dir_all(a_dir.join(d)).unwrap();
    }
    let out = tickmesh(&["restore", "--from", backup.path().to_str().unwrap(), "--state-dir", a_dir.to_str().unwrap()]);
    assert!(out.contains("\"restored\""), "{out}");
    assert!(a_dir.join(tickmesh::dr::RESTORED_MARKER).exists(), "restore marks the state directory");

    // Restart A from its own node.toml.
    let mut node = Command::new(env!("CARGO_BIN_EXE_tickmesh"))
        .args(["node", "--config"])
        .arg(a_dir.join("node.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(node.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains("node_up"), "{line}");

    // A becomes ready once its feed runs again (after the check with the peers).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, v) = get_json(&format!("{}/readyz", a.http_url)).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "A not ready 60 s after restart: {v}");
        collect(&mut on_b, Instant::now() + Duration::from_millis(200), &mut seen_b).await;
    }
    assert!(!a_dir.join(tickmesh::dr::RESTORED_MARKER).exists(), "the marker goes once the peers reported");
    let mut on_a = subscribe_all(&a.ws_url, &demo.user_token).await;
    let mut seen_a = BTreeMap::new();
    let until = Instant::now() + Duration::from_secs(3);
    let (_, _) = tokio::join!(collect(&mut on_a, until, &mut seen_a), collect(&mut on_b, until, &mut seen_b));
    let after_a = seen_a.get(&src).expect("A's client sees A's source after the restart");
    assert!(after_a[0] > held_by_b, "new records continue after the peers' seq {held_by_b}: {:?}", &after_a[..3]);
    let b_all = &seen_b[&src];
    assert!(*b_all.last().unwrap() > held_by_b + 50, "B receives A's new records");

    // Stop everything; compare the journals.
    // SAFETY: a plain syscall on our own child.
    unsafe { libc::kill(node.id() as i32, libc::SIGTERM) };
    let _ = node.wait();
    let b_dir = state.path().join(&b.region);
    let c_dir = state.path().join(&demo.regions[2].region);
    drop(demo);
    let ja = read_journal(&a_dir);
    let a_recs = &ja[&src];
    for w in a_recs.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "A's journal of {src} has a gap or a repeat at {}", w[0].0);
    }
    assert!(a_recs.last().unwrap().0 > held_by_b, "A's journal continues past the peers' seq");
    for peer_dir in [b_dir, c_dir] {
        let jp = read_journal(&peer_dir);
        let p_recs: BTreeMap<u64, &Vec<u8>> = jp[&src].iter().map(|(s, b)| (*s, b)).collect();
        let mut overlap = 0;
        for (seq, bytes) in a_recs {
            if let Some(theirs) = p_recs.get(seq) {
                assert!(*theirs == bytes, "{}: seq {seq} of {src} differs from A's: a reused seq", peer_dir.display());
                overlap += 1;
            }
        }
        // The whole stretch between the backup and the kill is in the overlap.
        assert!(overlap as u64 > held_by_b - backed_up, "overlap of {overlap} records only");
        assert!(p_recs.contains_key(&(held_by_b + 20)), "{} got A's new records", peer_dir.display());
    }
}
