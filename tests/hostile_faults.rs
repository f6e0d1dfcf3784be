//! Faults under load, seeded and bounded: three regions stream while region processes are
//! SIGKILLed at random points and restarted. One client per region follows PROTOCOL.md's
//! failover (on a lost connection, the next region, `resume` with its last seqs).
//!
//! After the faults: every client saw, per source, strictly increasing seqs (no duplicate),
//! no `gap`, and exactly the records a never-killed witness region replays from its journal
//! for the same range (nothing lost); and wherever two regions' journals hold the same
//! (source, seq) the bytes are identical.
//!
//! The second test does the same through the demo's WAN relays (`--wan real`) with link
//! partitions and heals, 5 % loss on every link, and one region's wall clock 2 s ahead or
//! behind the others (`TICKMESH_CLOCK_OFFSET_MS`, the test hook in `codec::now_ns`); its
//! readiness must not flap because of the skew. After the faults every region's journal
//! holds every record any client saw, contiguous, and identical bytes across regions.
//!
//! The seed is printed; rerun one with `TICKMESH_FAULT_SEED=N`. Bounded: about 30 s and
//! 60 s; the two tests take turns (one demo at a time on a small machine).

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

/// One demo at a time: the tests of this file take turns.
static ONE_DEMO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn restart(state: &Path, region: &str, env: &[(&str, String)]) -> Restarted {
    let dir = state.join(region);
    let log = std::fs::File::create(dir.join("restart.log")).unwrap();
    Restarted(
        Command::new(env!("CARGO_BIN_EXE_tickmesh"))
            .arg("node")
            .arg("--config")
            .arg(dir.join("node.toml"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("restart a region"),
    )
}

/// SIGKILLs `pid` and waits until it has exited (gone, or a zombie its parent has not
/// reaped yet): only then are its journal lock and ports free for a restart.
fn kill(pid: u32) {
    // SAFETY: a plain syscall on a pid this test started (directly or through the demo).
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command name in parentheses.
        let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
        if matches!(state, None | Some('Z') | Some('X')) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "pid {pid} still runs 30 s after SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
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
    let _turn = ONE_DEMO.lock().await;
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
        let r = restart(&state, &names[victim], &[]);
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

fn http_status(http_url: &str, path: &str) -> Option<(u16, String)> {
    let addr = http_url.trim_start_matches("http://").trim_end_matches('/').parse().ok()?;
    tickmesh::http_get::get(addr, path, Duration::from_secs(2)).ok()
}

/// Polls every region's `/readyz` for `how_long`; returns the answers that were not 200.
async fn readiness_failures(http_urls: &[String], names: &[String], how_long: Duration) -> Vec<String> {
    let mut bad = Vec::new();
    let end = tokio::time::Instant::now() + how_long;
    while tokio::time::Instant::now() < end {
        for (url, name) in http_urls.iter().zip(names) {
            let (url, name) = (url.clone(), name.clone());
            let r = tokio::task::spawn_blocking(move || http_status(&url, "/readyz")).await.unwrap();
            match r {
                Some((200, _)) => {}
                Some((s, body)) => bad.push(format!("{name}: {s} {body}")),
                None => bad.push(format!("{name}: no answer")),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bad
}

/// Median of `ts_ingest - now` (ms, this test's clock) per source over about 2 s of
/// records received from `ws_url`.
async fn clock_offsets(ws_url: &str, token: &str) -> BTreeMap<String, i64> {
    let (mut ws, _) = connect(ws_url, token, "").await;
    let r = request(&mut ws, json!({"op":"subscribe","id":1,"channels":["trades","quotes"],"symbols":"*"})).await;
    assert_eq!(r["type"], "subscribed", "{r}");
    let mut deltas: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < end {
        if let Some(Msg::Json(v)) = next_msg(&mut ws, Duration::from_secs(2)).await {
            if let (Some(src), Some(ts)) = (v["src"].as_str(), v["ts_ingest"].as_u64()) {
                let d = (ts as i128 - tickmesh_codec::now_ns() as i128) / 1_000_000;
                deltas.entry(src.to_owned()).or_default().push(d as i64);
            }
        }
    }
    deltas
        .into_iter()
        .filter(|(_, v)| v.len() >= 5)
        .map(|(s, mut v)| {
            v.sort_unstable();
            (s, v[v.len() / 2])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_loss_and_clock_skew_under_load() {
    let _turn = ONE_DEMO.lock().await;
    let seed: u64 = std::env::var("TICKMESH_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| tickmesh_codec::now_ns() % 1_000_000);
    eprintln!("hostile_faults (network) seed {seed} (rerun with TICKMESH_FAULT_SEED={seed})");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let demo = Demo::start_in(tmp.path(), &["--rate", "200", "--wan", "real"], None);
    let names: Vec<String> = demo.regions.iter().map(|r| r.region.clone()).collect();
    let urls: Vec<String> = demo.regions.iter().map(|r| r.ws_url.clone()).collect();
    let https: Vec<String> = demo.regions.iter().map(|r| r.http_url.clone()).collect();
    let state: PathBuf = demo.state_dir.clone();
    let ctl = state.join("wan.ctl");
    let set_wan = |text: String| {
        eprintln!("wan.ctl = {:?}", text.trim());
        std::fs::write(&ctl, text).unwrap();
    };

    // Clock skew: one region restarts with its wall clock 2 s ahead or behind.
    let skewed = rng.random_range(0..names.len());
    let witness = (skewed + 1 + rng.random_range(0..names.len() - 1)) % names.len();
    let offset_ms: i64 = if rng.random_bool(0.5) { 2000 } else { -2000 };
    eprintln!("clock: {} runs {offset_ms:+} ms; witness {}", names[skewed], names[witness]);
    kill(demo.regions[skewed].pid);
    let mut skewed_node = restart(&state, &names[skewed], &[("TICKMESH_CLOCK_OFFSET_MS", offset_ms.to_string())]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let r = http_status(&https[skewed], "/readyz");
        if r.as_ref().is_some_and(|(s, _)| *s == 200) {
            break;
        }
        let exited = skewed_node.0.try_wait().ok().flatten();
        if exited.is_some() || tokio::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(state.join(&names[skewed]).join("restart.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            panic!("{} is not ready ({exited:?}, {r:?}); its log ends:\n{}", names[skewed], tail.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(state.join(&names[skewed]).join("restart.log")).unwrap_or_default();
    assert!(log.contains("TICKMESH_CLOCK_OFFSET_MS is set"), "the skewed node does not say so:\n{log}");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let clients: Vec<_> = (0..names.len())
        .map(|i| tokio::spawn(client(urls.clone(), i, demo.user_token.clone(), stop_rx.clone())))
        .collect();

    // Phase 1, skew only: the skew shows in the records, and no region's readiness flaps.
    let offsets = clock_offsets(&urls[skewed], &demo.user_token).await;
    eprintln!("ts_ingest - now per source, ms, seen from {}: {offsets:?}", names[skewed]);
    assert!(
        offsets.values().any(|d| (d - offset_ms).abs() < 1000) && offsets.values().any(|d| d.abs() < 1000),
        "the skewed region's records do not carry its {offset_ms:+} ms clock: {offsets:?}"
    );
    let flaps = readiness_failures(&https, &names, Duration::from_secs(6)).await;
    assert!(flaps.is_empty(), "readiness flapped with one region's clock {offset_ms:+} ms off: {flaps:?}");

    // Phase 2: partitions and heals of random links (one link at a time: every region keeps
    // a path through the third).
    let mut faults = vec![format!("clock skew {offset_ms:+} ms on {}", names[skewed])];
    for round in 0..3 {
        let a = rng.random_range(0..names.len());
        let b = (a + 1 + rng.random_range(0..names.len() - 1)) % names.len();
        let cut = Duration::from_millis(rng.random_range(1500..4000));
        eprintln!("round {round}: cut {} - {} for {cut:?}", names[a], names[b]);
        set_wan(format!("{} {}\n", names[a], names[b]));
        tokio::time::sleep(cut).await;
        set_wan(String::new());
        faults.push(format!("partition {}-{} {cut:?}", names[a], names[b]));
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..2000))).await;
    }

    // Phase 3: 5 % loss on every link, with one more partition in the middle of it.
    set_wan("* * loss 0.05\n".into());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let a = rng.random_range(0..names.len());
    let b = (a + 1) % names.len();
    set_wan(format!("* * loss 0.05\n{} {}\n", names[a], names[b]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    set_wan("* * loss 0.05\n".into());
    tokio::time::sleep(Duration::from_secs(4)).await;
    set_wan(String::new());
    faults.push("5 % loss on every link for 10 s".into());
    faults.push(format!("partition {}-{} 2 s during the loss", names[a], names[b]));
    let flaps = readiness_failures(&https, &names, Duration::from_secs(1)).await;
    eprintln!("readiness right after the faults: {flaps:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop_tx.send(true).unwrap();

    // Every client: strictly increasing seqs, no gap (checked as they ran), and exactly what
    // the witness replays for the same range.
    let witness_url = urls[witness].clone();
    let (mut checked, mut reconnects) = (0usize, 0u32);
    let mut seen_max: BTreeMap<String, u64> = BTreeMap::new();
    for (i, c) in clients.into_iter().enumerate() {
        let (seen, n) = tokio::time::timeout(Duration::from_secs(20), c).await.expect("client stops").unwrap();
        reconnects += n;
        for (src, seqs) in &seen {
            let last = *seqs.last().unwrap_or(&0);
            let e = seen_max.entry(src.clone()).or_default();
            *e = (*e).max(last);
            if seqs.len() < 2 {
                continue;
            }
            let want = replay(&witness_url, &demo.user_token, src, seqs[0], last).await;
            assert_eq!(seqs, &want, "client {i} ({}) of {src} differs from the witness", names[i]);
            checked += seqs.len();
        }
    }
    assert!(checked > 5000, "only {checked} records were checked");

    // Journals: after the heal every region holds every record a client saw, contiguous,
    // with the same bytes everywhere.
    drop(skewed_node);
    drop(demo);
    let journals: Vec<_> = names.iter().map(|n| (n.clone(), journal(&state, n))).collect();
    for (src, max) in &seen_max {
        let mut first: Option<&BTreeMap<u64, Vec<u8>>> = None;
        for (region, j) in &journals {
            let recs = j.get(src).unwrap_or_else(|| panic!("{region} holds nothing of {src}"));
            let seqs: Vec<u64> = recs.keys().copied().collect();
            assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{region}'s journal of {src} has a hole");
            assert!(seqs.last().is_some_and(|l| l >= max), "{region} lacks {src} up to {max}, seen by a client");
            if let Some(f) = first {
                for (q, bytes) in recs.range(..=*max) {
                    assert!(f.get(q).is_none_or(|b| b == bytes), "{src} seq {q} differs in {region}");
                }
            }
            first.get_or_insert(recs);
        }
    }
    eprintln!(
        "network faults: {faults:?}; {reconnects} client reconnects, {checked} records checked, 0 lost, 0 duplicated; journals of {} sources identical",
        seen_max.len()
    );
}
