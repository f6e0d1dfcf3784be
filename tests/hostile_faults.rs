//! Faults under load, seeded and bounded: three regions stream while region processes are
//! SIGKILLed at random points and restarted. One client per region follows PROTOCOL.md's
//! failover (on a lost connection, the next region, `resume` with its last seqs).
//!
//! After the faults: every client saw, per source, strictly increasing seqs (no duplicate),
//! no `gap`, and exactly the records a never-killed witness region replays from its journal
//! for the same range (nothing lost); and wherever two regions' journals hold the same
//! (source, seq) the bytes are identical.
//!
//! The seed is printed; rerun one with `TICKMESH_FAULT_SEED=N`. Bounded: about 30 s.

mod support;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{connect, next_msg, request, Demo, Msg};
use tickmesh_journal::{FsyncPolicy, Journal, JournalConfig};

type Seen = BTreeMap<String, Vec<u64>>;

/// A region restarted by the test (the demo never restarts one).
struct Restarted(Child);

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn restart(state: &Path, region: &str) -> Restarted {
    let dir = state.join(region);
    let log = std::fs::File::create(dir.join("restart.log")).unwrap();
    Restarted(
        Command::new(env!("CARGO_BIN_EXE_tickmesh"))
            .arg("node")
            .arg("--config")
            .arg(dir.join("node.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("restart a region"),
    )
}

fn kill(pid: u32) {
    // SAFETY: a plain syscall on a pid this test started (directly or through the demo).
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// A client that fails over: returns what it saw and how often it reconnected.
async fn client(
    urls: Vec<String>,
    start: usize,
    token: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (Seen, u32) {
    let mut seen = Seen::new();
    let mut at = start;
    let mut reconnects = 0;
    'outer: while !*stop.borrow() {
        let url = &urls[at % urls.len()];
        let resume: serde_json::Map<String, Value> =
            seen.iter().filter_map(|(s, v)| v.last().map(|q| (s.clone(), json!(q)))).collect();
        let conn = tokio::time::timeout(Duration::from_secs(5), async {
            let target = format!("{url}?token={token}");
            tokio_tungstenite::connect_async(target).await.ok()
        })
        .await;
        let Ok(Some((mut ws, _))) = conn else {
            at += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut sub = json!({"op":"subscribe","id":1,"channels":["trades","quotes"],"symbols":"*"});
        if !resume.is_empty() {
            sub["resume"] = Value::Object(resume);
        }
        if support::send_checked(&mut ws, sub).await.is_err() {
            at += 1;
            continue;
        }
        loop {
            if *stop.borrow() {
                break 'outer;
            }
            match next_msg(&mut ws, Duration::from_secs(3)).await {
                Some(Msg::Json(v)) => {
                    let t = v["type"].as_str().unwrap_or("");
                    assert_ne!(t, "gap", "a client was told records are lost: {v}");
                    if t != "trade" && t != "quote" {
                        continue;
                    }
                    let src = v["src"].as_str().unwrap().to_owned();
                    let seq = v["seq"].as_u64().unwrap();
                    let list = seen.entry(src.clone()).or_default();
                    assert!(
                        list.last().is_none_or(|l| seq > *l),
                        "{src}: seq {seq} after {:?} (duplicate or reorder)",
                        list.last()
                    );
                    list.push(seq);
                }
                Some(Msg::Binary(_)) => {}
                Some(Msg::Close(_)) | None => {
                    reconnects += 1;
                    at += 1;
                    continue 'outer;
                }
            }
        }
    }
    (seen, reconnects)
}

/// Trades and quotes of `src` in `from..=to` as a region replays them from its journal.
async fn replay(url: &str, token: &str, src: &str, from: u64, to: u64) -> Vec<u64> {
    let (mut ws, _) = connect(url, token, "").await;
    let r = request(
        &mut ws,
        json!({"op":"subscribe","id":1,"channels":["trades","quotes"],"symbols":"*","resume":{src: from - 1}}),
    )
    .await;
    assert_eq!(r["type"], "subscribed", "{r}");
    let mut out = Vec::new();
    while out.last().is_none_or(|q| *q < to) {
        match next_msg(&mut ws, Duration::from_secs(10)).await {
            Some(Msg::Json(v)) if v["src"] == src && (v["type"] == "trade" || v["type"] == "quote") => {
                out.push(v["seq"].as_u64().unwrap())
            }
            Some(Msg::Json(_)) | Some(Msg::Binary(_)) => {}
            _ => panic!("replay of {src} from the witness ended at {:?}, before {to}", out.last()),
        }
    }
    out.retain(|q| *q <= to);
    out
}

fn journal(state: &Path, region: &str) -> BTreeMap<String, BTreeMap<u64, Vec<u8>>> {
    let cfg = JournalConfig { fsync: FsyncPolicy::Never, ..JournalConfig::default() };
    let (j, _) = Journal::open(&state.join(region).join("journal"), cfg).expect("journal opens after the run");
    let mut out = BTreeMap::new();
    for (src, _) in j.positions() {
        let mut r = j.reader(&src, j.first_seq(&src).unwrap_or(1)).unwrap();
        let mut m = BTreeMap::new();
        while let Some(rec) = r.next_owned().expect("journal reads") {
            m.insert(u64::from_le_bytes(rec[28..36].try_into().unwrap()), rec);
        }
        out.insert(src.to_string(), m);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_regions_while_clients_stream() {
    let seed: u64 = std::env::var("TICKMESH_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| tickmesh_codec::now_ns() % 1_000_000);
    eprintln!("hostile_faults seed {seed} (rerun with TICKMESH_FAULT_SEED={seed})");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap(); // outlives the demo: the journals are read after it
    let demo = Demo::start_in(tmp.path(), &["--rate", "200"], None);
    let names: Vec<String> = demo.regions.iter().map(|r| r.region.clone()).collect();
    let urls: Vec<String> = demo.regions.iter().map(|r| r.ws_url.clone()).collect();
    let state: PathBuf = demo.state_dir.clone();
    let witness = rng.random_range(0..names.len());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let clients: Vec<_> = (0..names.len())
        .map(|i| tokio::spawn(client(urls.clone(), i, demo.user_token.clone(), stop_rx.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut restarted: Vec<Restarted> = Vec::new();
    let mut pids: Vec<u32> = demo.regions.iter().map(|r| r.pid).collect();
    let mut kills = Vec::new();
    for round in 0..3 {
        let victim = loop {
            let v = rng.random_range(0..names.len());
            if v != witness {
                break v;
            }
        };
        let before = Duration::from_millis(rng.random_range(500..2500));
        let down = Duration::from_millis(rng.random_range(300..1500));
        tokio::time::sleep(before).await;
        eprintln!("round {round}: SIGKILL {} after {before:?}, down for {down:?}", names[victim]);
        kill(pids[victim]);
        kills.push(names[victim].clone());
        tokio::time::sleep(down).await;
        let r = restart(&state, &names[victim]);
        pids[victim] = r.0.id();
        restarted.push(r);
        // Wait until it serves again.
        let http = demo.regions[victim].http_url.trim_start_matches("http://").parse().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tickmesh::http_get::get(http, "/healthz", Duration::from_secs(1)).is_err() {
            assert!(tokio::time::Instant::now() < deadline, "{} did not come back within 30 s", names[victim]);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_tx.send(true).unwrap();

    // Every client: nothing lost compared with the witness's journal replay.
    let witness_url = urls[witness].clone();
    let (mut checked, mut reconnects) = (0usize, 0u32);
    for (i, c) in clients.into_iter().enumerate() {
        let (seen, n) = tokio::time::timeout(Duration::from_secs(20), c).await.expect("client stops").unwrap();
        reconnects += n;
        for (src, seqs) in &seen {
            if seqs.len() < 2 {
                continue;
            }
            let (from, to) = (seqs[0], *seqs.last().unwrap());
            let want = replay(&witness_url, &demo.user_token, src, from, to).await;
            assert_eq!(seqs, &want, "client {i} ({}) of {src} in {from}..={to} differs from the witness", names[i]);
            checked += seqs.len();
        }
    }
    eprintln!("faults: {} SIGKILLs ({kills:?}), {reconnects} client reconnects, {checked} records checked, 0 lost, 0 duplicated", kills.len());

    // Journals: identical bytes wherever two regions hold the same record.
    drop(restarted);
    drop(demo);
    let journals: Vec<_> = names.iter().map(|n| (n.clone(), journal(&state, n))).collect();
    assert!(journals.iter().all(|(_, j)| !j.is_empty()), "a region's journal is empty");
    let mut compared = 0;
    for (a, ja) in &journals {
        for (b, jb) in &journals {
            if a >= b {
                continue;
            }
            for (src, ra) in ja {
                let Some(rb) = jb.get(src) else { continue };
                let mut common = 0;
                for (seq, bytes) in ra {
                    if let Some(other) = rb.get(seq) {
                        assert!(bytes == other, "{src} seq {seq} differs between {a} and {b}");
                        common += 1;
                        compared += 1;
                    }
                }
                eprintln!("journals {a}/{b}: {src}: {common} common records identical ({} / {})", ra.len(), rb.len());
            }
        }
    }
    assert!(compared > 1000, "only {compared} records were held by two regions");
}
