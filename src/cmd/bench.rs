//! `tickmesh bench e2e`: ingest-to-client latency through the real processes.
//!
//! Starts `tickmesh demo --json` (one process per region), connects one client per region,
//! subscribes to everything, and records, for every data message, the client's receive
//! time minus the record's `ts_ingest` in an hdrhistogram: one histogram for records of
//! the client's own region and one for records of other regions. All processes share this
//! machine's clock, so the difference is a true one-way latency.

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Options of `bench e2e`.
#[derive(Debug, Clone)]
pub struct E2eOptions {
    /// Regions to run.
    pub regions: Vec<String>,
    /// Records per second per region.
    pub rate: u32,
    /// Measurement window.
    pub duration: Duration,
    /// `real` or `off` (see `tickmesh demo --wan`).
    pub wan: String,
}

struct Up {
    region: String,
    ws_url: String,
}

/// Runs the measurement and prints the table.
pub fn e2e(opts: E2eOptions) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let state = std::env::temp_dir().join(format!("tickmesh-bench-{}", std::process::id()));
    let mut child = Command::new(exe)
        .args([
            "demo",
            "--json",
            "--port-base",
            "0",
            "--feed",
            "synthetic",
            "--wan",
            &opts.wan,
            "--rate",
            &opts.rate.to_string(),
            "--regions",
            &opts.regions.join(","),
        ])
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting tickmesh demo")?;
    let stdout = child.stdout.take().context("demo stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut ups = Vec::new();
    let mut token = String::new();
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line?)?;
        match v["event"].as_str() {
            Some("region_up") => ups.push(Up {
                region: v["region"].as_str().unwrap_or_default().into(),
                ws_url: v["ws_url"].as_str().unwrap_or_default().into(),
            }),
            Some("tokens") => token = v["user"].as_str().unwrap_or_default().into(),
            Some("ready") => break,
            _ => {}
        }
    }
    if token.is_empty() {
        let _ = child.kill();
        bail!("the demo did not become ready");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = rt.block_on(measure(&ups, &token, opts.duration));
    // SAFETY: a plain syscall on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&state);
    let (local, remote) = result?;
    println!(
        "ingest-to-client latency, {} regions, {} rec/s per region, {:?} window",
        ups.len(),
        opts.rate,
        opts.duration
    );
    println!("| path | records | p50 µs | p99 µs | p99.9 µs | max µs |");
    println!("|---|---|---|---|---|---|");
    for (name, h) in [("same region", &local), ("remote region", &remote)] {
        let us = |v: u64| v as f64 / 1000.0;
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            h.len(),
            us(h.value_at_quantile(0.5)),
            us(h.value_at_quantile(0.99)),
            us(h.value_at_quantile(0.999)),
            us(h.max())
        );
    }
    Ok(())
}

async fn measure(ups: &[Up], token: &str, window: Duration) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let mut tasks = Vec::new();
    for up in ups {
        let url = format!("{}?token={token}", up.ws_url);
        // Sources are named `<feed>.<region code>` (SYN.USE1): the suffix says whose it is.
        let own = format!(".{}", crate::regions::short_code(&up.region));
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
            let mut remote = local.clone();
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
            let sub = r#"{"op":"subscribe","id":1,"channels":["trades","quotes"],"symbols":"*"}"#;
            ws.send(Message::Text(sub.into())).await?;
            let deadline = tokio::time::Instant::now() + window;
            while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, ws.next()).await {
                let now = tickmesh_codec::now_ns();
                let Message::Text(t) = msg? else { continue };
                let v: serde_json::Value = serde_json::from_str(t.as_str())?;
                let (Some(src), Some(ts)) = (v["src"].as_str(), v["ts_ingest"].as_u64()) else { continue };
                let h = if src.ends_with(&own) { &mut local } else { &mut remote };
                h.saturating_record(now.saturating_sub(ts).max(1));
            }
            anyhow::Ok((local, remote))
        }));
    }
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut remote = local.clone();
    for t in tasks {
        let (l, r) = t.await??;
        local.add(l)?;
        remote.add(r)?;
    }
    Ok((local, remote))
}
