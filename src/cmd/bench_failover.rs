//! `tickmesh bench failover`: SIGKILL the region a client is on, N times, and report how
//! long the client went without records and whether it lost or duplicated any.
//!
//! Each run starts `tickmesh demo --json` (three regions, `--wan real` by default), puts a
//! [`crate::client::Client`] on the first region and a plain reference client on the last,
//! both subscribed to trades and quotes of every symbol, waits `warmup`, SIGKILLs the first
//! region, and keeps reading for `after`. Reported per run and overall:
//! * detect: kill to the client's `Disconnected` (a killed process's kernel resets the
//!   TCP connection, so this does not wait for three missed heartbeats);
//! * resume: kill to the first record delivered by the next region (target under 2 s);
//! * lost: records the reference received, in the window both clients observed, that the
//!   client never handed to the application (target 0);
//! * duplicated: records handed to the application twice (target 0); `dropped` counts the
//!   duplicates the client itself filtered out.

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Client, Event};

/// How the region fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL: the kernel closes the region's sockets (a crashed process).
    Kill,
    /// SIGSTOP: sockets stay open and silent (a hung host or a partition); only the
    /// heartbeat deadline can notice.
    Freeze,
}

/// Options of `bench failover`.
#[derive(Debug, Clone)]
pub struct FailoverOptions {
    /// Number of kills (each on a fresh demo).
    pub runs: u32,
    /// Regions (the client starts on the first, the reference is on the last).
    pub regions: Vec<String>,
    /// Records per second per region.
    pub rate: u32,
    /// `real` or `off`.
    pub wan: String,
    /// Reading before the kill.
    pub warmup: Duration,
    /// Reading after the kill.
    pub after: Duration,
    /// Kill or freeze.
    pub fault: Fault,
}

struct Up {
    region: String,
    pid: u32,
    ws_url: String,
}

/// A demo process, stopped on drop.
struct DemoProc {
    child: Child,
    state: std::path::PathBuf,
}

impl Drop for DemoProc {
    fn drop(&mut self) {
        // SAFETY: a plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn start_demo(o: &FailoverOptions, run: u32) -> anyhow::Result<(DemoProc, Vec<Up>, String)> {
    let state = std::env::temp_dir().join(format!("tickmesh-bench-failover-{}-{run}", std::process::id()));
    let mut child = Command::new(std::env::current_exe()?)
        .args(["demo", "--json", "--port-base", "0", "--feed", "synthetic", "--wan", &o.wan])
        .args(["--rate", &o.rate.to_string(), "--regions", &o.regions.join(",")])
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting tickmesh demo")?;
    let stdout = child.stdout.take().context("demo stdout")?;
    let demo = DemoProc { child, state };
    let mut ups = Vec::new();
    let mut token = String::new();
    for line in BufReader::new(stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(&line?)?;
        match v["event"].as_str() {
            Some("region_up") => ups.push(Up {
                region: v["region"].as_str().unwrap_or_default().into(),
                pid: v["pid"].as_u64().unwrap_or_default() as u32,
                ws_url: v["ws_url"].as_str().unwrap_or_default().into(),
            }),
            Some("tokens") => token = v["user"].as_str().unwrap_or_default().into(),
            Some("ready") => return Ok((demo, ups, token)),
            _ => {}
        }
    }
    bail!("the demo ended before it was ready; run `tickmesh demo` alone to see why")
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct RunResult {
    detect: Duration,
    resume: Duration,
    silence_limit: Duration,
    compared: usize,
    lost: usize,
    duplicated: usize,
    dropped: u64,
}

type Seen = BTreeMap<String, Vec<u64>>;

async fn reference(ws_url: String, token: String, until: tokio::time::Instant) -> anyhow::Result<Seen> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{ws_url}?token={token}")).await?;
    let sub = r#"{"op":"subscribe","id":1,"channels":["trades","quotes"],"symbols":"*"}"#;
    ws.send(Message::Text(sub.into())).await?;
    let mut seen = Seen::new();
    while let Ok(Some(msg)) = tokio::time::timeout_at(until, ws.next()).await {
        let Message::Text(t) = msg? else { continue };
        let v: serde_json::Value = serde_json::from_str(t.as_str())?;
        if v["type"] == "trade" || v["type"] == "quote" {
            if let (Some(src), Some(seq)) = (v["src"].as_str(), v["seq"].as_u64()) {
                seen.entry(src.to_owned()).or_default().push(seq);
            }
        }
    }
    Ok(seen)
}

async fn one_run(o: &FailoverOptions, ups: &[Up], token: &str) -> anyhow::Result<RunResult> {
    let (first, last) = (&ups[0], &ups[ups.len() - 1]);
    let start = tokio::time::Instant::now();
    let end = start + o.warmup + o.after;
    let reference = tokio::spawn(reference(last.ws_url.clone(), token.to_owned(), end + Duration::from_millis(500)));
    let mut client = Client::builder()
        .regions([first.ws_url.clone()])
        .token(token)
        .subscribe(["trades", "quotes"], ["*"])
        .build()?
        .connect()
        .await?;
    let mut got = Seen::new();
    let mut killed_at = None;
    let (mut detect, mut resume) = (None, None);
    loop {
        let now = tokio::time::Instant::now();
        if killed_at.is_none() && now >= start + o.warmup {
            let sig = if o.fault == Fault::Kill { libc::SIGKILL } else { libc::SIGSTOP };
            // SAFETY: a plain syscall on a pid the demo reported.
            unsafe { libc::kill(first.pid as i32, sig) };
            killed_at = Some(Instant::now());
        }
        let wake = if killed_at.is_none() { start + o.warmup } else { end };
        if killed_at.is_some() && now >= end {
            break;
        }
        match tokio::time::timeout_at(wake, client.next()).await {
            Err(_) => continue,
            Ok(ev) => match ev? {
                Event::Record(r) => {
                    if let (Some(k), None) = (killed_at, resume) {
                        if &*r.region != first.region.as_str() {
                            resume = Some(k.elapsed());
                        }
                    }
                    got.entry(r.src).or_default().push(r.seq);
                }
                Event::Disconnected(_) => {
                    if let (Some(k), None) = (killed_at, detect) {
                        detect = Some(k.elapsed());
                    }
                }
                _ => {}
            },
        }
    }
    if o.fault == Fault::Freeze {
        // SAFETY: as above; a stopped region would hold up the demo's shutdown.
        unsafe { libc::kill(first.pid as i32, libc::SIGKILL) };
    }
    let want = reference.await??;
    let mut compared = 0;
    let mut lost = 0;
    let mut duplicated = 0;
    for seqs in got.values() {
        duplicated += seqs.len() - seqs.iter().collect::<BTreeSet<_>>().len();
    }
    for (src, theirs) in &want {
        let Some(mine) = got.get(src) else {
            lost += theirs.len();
            continue;
        };
        let (Some(m0), Some(t0), Some(m1), Some(t1)) = (mine.first(), theirs.first(), mine.last(), theirs.last())
        else {
            continue;
        };
        let (lo, hi) = (*m0.max(t0), *m1.min(t1));
        let mine: BTreeSet<u64> = mine.iter().copied().filter(|s| (lo..=hi).contains(s)).collect();
        for s in theirs.iter().filter(|s| (lo..=hi).contains(*s)) {
            compared += 1;
            if !mine.contains(s) {
                lost += 1;
            }
        }
    }
    Ok(RunResult {
        detect: detect.context("the client never noticed the kill")?,
        resume: resume.context("no record arrived from another region after the kill")?,
        silence_limit: client.silence_limit(),
        compared,
        lost,
        duplicated,
        dropped: client.stats().duplicates_dropped,
    })
}

/// Runs the scenario `runs` times and prints a table and a summary.
pub fn run(o: FailoverOptions) -> anyhow::Result<()> {
    if o.regions.len() < 2 {
        bail!("--regions names {} region(s); failover needs at least 2", o.regions.len());
    }
    if o.runs == 0 {
        bail!("--runs 0 measures nothing; use 1 or more");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let what = if o.fault == Fault::Kill { "SIGKILL" } else { "SIGSTOP (silent region)" };
    println!(
        "failover after {what}: {} regions ({}), --wan {}, {} rec/s per region, warm-up {:?}, then {:?}",
        o.regions.len(),
        o.regions.join(","),
        o.wan,
        o.rate,
        o.warmup,
        o.after
    );
    println!("| run | detect ms | first resumed record ms | compared | lost | duplicated | dropped by client |");
    println!("|---|---|---|---|---|---|---|");
    let mut results = Vec::new();
    for i in 1..=o.runs {
        let (demo, ups, token) = start_demo(&o, i)?;
        let r = rt.block_on(one_run(&o, &ups, &token));
        drop(demo);
        let r = r.with_context(|| format!("run {i}"))?;
        println!(
            "| {i} | {:.1} | {:.1} | {} | {} | {} | {} |",
            r.detect.as_secs_f64() * 1e3,
            r.resume.as_secs_f64() * 1e3,
            r.compared,
            r.lost,
            r.duplicated,
            r.dropped
        );
        results.push(r);
    }
    let mut resume: Vec<Duration> = results.iter().map(|r| r.resume).collect();
    resume.sort();
    let p50 = resume[(resume.len() - 1) / 2];
    let max = resume[resume.len() - 1];
    let lost: usize = results.iter().map(|r| r.lost).sum();
    let dup: usize = results.iter().map(|r| r.duplicated).sum();
    // A silent region is noticed only after three heartbeat intervals (PROTOCOL.md), so
    // the 2 s target holds for it only with gateway.heartbeat_ms of 600 or less.
    let limit = match o.fault {
        Fault::Kill => Duration::from_secs(2),
        Fault::Freeze => results[0].silence_limit + Duration::from_secs(2),
    };
    if o.fault == Fault::Freeze {
        println!(
            "a silent region is noticed after 3 heartbeats = {:?} (from hello); target here {limit:?}",
            results[0].silence_limit
        );
    }
    println!(
        "kill to first resumed record: p50 {:.1} ms, max {:.1} ms (target < {} ms); lost {lost}, duplicated {dup} (target 0)",
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        limit.as_millis()
    );
    if max >= limit || lost > 0 || dup > 0 {
        bail!("a target was missed");
    }
    Ok(())
}
