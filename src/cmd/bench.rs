//! `tickmesh bench e2e`: latency of every hop of the data path, through the real region
//! processes, against `budgets.toml`; and `tickmesh bench all`, one report of every bench.
//!
//! `e2e` starts `tickmesh demo --json` (one process per region, WAN emulation optional),
//! connects `--clients` clients spread over the regions, and for a measurement window:
//!
//! * every node's `GET /v1/latency` is read at the start and at the end of the window and
//!   the difference kept, so start-up does not count: decode, journal, mesh, gateway and
//!   ingest-to-send histograms of sampled records (1 in 64 by `seq`), merged over regions;
//! * the mesh hop is reported net of each link's emulated one-way delay (REGIONS.md RTT/2,
//!   with `--wan real`): each region reports it split by source, and the source's home
//!   region names the link;
//! * each client records, for every data message, its receive time minus the record's
//!   `ts_ingest`: the client-receive hop (for records of other regions, net of the link's
//!   one-way delay). All processes share this machine's clock, so these are true one-way
//!   latencies.
//!
//! Each hop's p50 / p99 / p99.9 is compared with its budget (PASS or OVER), printed as a
//! table, and written to `--out` as `report.md`, `result.json` and `latency.svg`.

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tickmesh_gateway::hops::{decode_histogram, LatencyReport};
use tokio_tungstenite::tungstenite::Message;

use crate::budgets::{Budgets, Percentile};

/// Options of `bench e2e`.
#[derive(Debug, Clone)]
pub struct E2eOptions {
    /// Regions to run.
    pub regions: Vec<String>,
    /// Records per second per region.
    pub rate: u32,
    /// Clients in total, spread over the regions (at least one per region).
    pub clients: usize,
    /// Measurement window.
    pub duration: Duration,
    /// `real` or `off` (see `tickmesh demo --wan`).
    pub wan: String,
    /// Where the report goes (default `target/bench/<timestamp>`).
    pub out: Option<PathBuf>,
    /// The budgets file.
    pub budgets: PathBuf,
}

/// Parses `--regions`: a count (the first N of REGIONS.md, primaries first) or a list.
pub fn parse_regions(v: &[String]) -> anyhow::Result<Vec<String>> {
    if let [one] = v {
        if let Ok(n) = one.parse::<usize>() {
            if n == 0 || n > crate::regions::REGIONS.len() {
                bail!("--regions {n}: use 1 to {} (or a comma-separated list of names)", crate::regions::REGIONS.len());
            }
            return Ok(crate::regions::REGIONS[..n].iter().map(|s| s.to_string()).collect());
        }
    }
    for r in v {
        if !crate::regions::is_known(r) {
            bail!("--regions: '{r}' is not a region of REGIONS.md; use names like us-east-1 or a count such as 3");
        }
    }
    Ok(v.to_vec())
}

struct Up {
    region: String,
    ws_url: String,
    http: std::net::SocketAddr,
}

/// One row of the result: a hop's percentiles and its verdicts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// Row name (hop, or hop and scope).
    pub name: String,
    /// The budget it is held to (`hop: p50 / p99 / p99.9` µs), if any.
    pub budget: Option<String>,
    /// Samples.
    pub count: u64,
    /// Median (ns).
    pub p50_ns: u64,
    /// 99th percentile (ns).
    pub p99_ns: u64,
    /// 99.9th percentile (ns).
    pub p999_ns: u64,
    /// Largest (ns).
    pub max_ns: u64,
    /// PASS / OVER per percentile (p50, p99, p99.9), empty without a budget.
    pub verdicts: Vec<String>,
    /// What the row measures.
    pub note: String,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap_or_else(|_| unreachable!("constant bounds are valid"))
}

/// `h` with `d` taken off every sample (floored at 1 ns): a latency net of a fixed delay.
fn shifted(h: &Histogram<u64>, d: u64) -> Histogram<u64> {
    let mut out = new_hist();
    for v in h.iter_recorded() {
        let _ = out.record_n(v.value_iterated_to().saturating_sub(d).max(1), v.count_at_value());
    }
    out
}

fn fetch_latency(addr: std::net::SocketAddr) -> anyhow::Result<LatencyReport> {
    let (status, body) = crate::http_get::get(addr, "/v1/latency", Duration::from_secs(5))
        .with_context(|| format!("GET http://{addr}/v1/latency"))?;
    if status != 200 {
        bail!("GET http://{addr}/v1/latency answered {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("http://{addr}/v1/latency is not a latency report"))
}

/// Histograms of one report: hop name → histogram, and `mesh:<source>` → histogram.
fn histograms(r: &LatencyReport) -> anyhow::Result<BTreeMap<String, Histogram<u64>>> {
    let mut out = BTreeMap::new();
    for h in &r.hops {
        out.insert(h.hop.clone(), decode_histogram(&h.histogram).map_err(anyhow::Error::msg)?);
    }
    for (src, h) in &r.mesh_by_source {
        out.insert(format!("mesh:{src}"), decode_histogram(&h.histogram).map_err(anyhow::Error::msg)?);
    }
    Ok(out)
}

/// `after - before` per key (what happened during the window).
fn window(
    before: &BTreeMap<String, Histogram<u64>>,
    after: BTreeMap<String, Histogram<u64>>,
) -> BTreeMap<String, Histogram<u64>> {
    after
        .into_iter()
        .map(|(k, mut h)| {
            if let Some(b) = before.get(&k) {
                // Fails only if `before` holds counts `after` lacks (a restarted node): keep all.
                let _ = h.subtract(b);
            }
            (k, h)
        })
        .collect()
}

/// The home region of a source named `<feed>.<region code>`.
fn home_of(src: &str, regions: &[String]) -> Option<String> {
    let code = src.rsplit('.').next()?;
    regions.iter().find(|r| crate::regions::short_code(r) == code).cloned()
}

/// One-way emulated delay between two regions (ns), 0 without WAN emulation.
fn one_way_ns(wan: bool, a: &str, b: &str) -> u64 {
    if !wan || a == b {
        return 0;
    }
    u64::from(crate::regions::rtt_ms(a, b).unwrap_or(0)) * 1_000_000 / 2
}

/// Runs the measurement, prints the table and writes the report.
pub fn e2e(opts: E2eOptions) -> anyhow::Result<()> {
    if opts.wan != "off" && opts.wan != "real" {
        bail!("--wan {} is not known; use --wan real (REGIONS.md round-trip times) or --wan off", opts.wan);
    }
    if opts.duration.is_zero() {
        bail!("--duration 0: measure for at least 1 second");
    }
    let budgets = Budgets::load(&opts.budgets)?;
    let out_dir = opts.out.clone().unwrap_or_else(default_out);
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("creating the report directory {}", out_dir.display()))?;
    let exe = std::env::current_exe()?;
    let state = std::env::temp_dir().join(format!("tickmesh-bench-{}", std::process::id()));
    let mut child = Command::new(exe)
        .args(["demo", "--json", "--port-base", "0", "--feed", "synthetic", "--wan", &opts.wan, "--rate"])
        .arg(opts.rate.to_string())
        .args(["--regions", &opts.regions.join(",")])
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting tickmesh demo")?;
    let result = (|| {
        let stdout = child.stdout.take().context("demo stdout")?;
        let mut ups = Vec::new();
        let mut token = String::new();
        for line in BufReader::new(stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(&line?)?;
            match v["event"].as_str() {
                Some("region_up") => {
                    let http = v["http_url"].as_str().unwrap_or_default().trim_start_matches("http://");
                    ups.push(Up {
                        region: v["region"].as_str().unwrap_or_default().into(),
                        ws_url: v["ws_url"].as_str().unwrap_or_default().into(),
                        http: http.parse().with_context(|| format!("demo printed http_url {http}"))?,
                    })
                }
                Some("tokens") => token = v["user"].as_str().unwrap_or_default().into(),
                Some("ready") => break,
                _ => {}
            }
        }
        if token.is_empty() || ups.is_empty() {
            bail!("the demo did not become ready; run `tickmesh demo` alone to see why");
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(measure(&opts, &ups, &token))
    })();
    // SAFETY: a plain syscall on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&state);
    let m = result?;
    let rows = rows(&m, &budgets);
    let table = table_md(&rows);
    println!(
        "per-hop latency, {} regions, {} rec/s per region, {} clients, {:?} window, wan {}",
        opts.regions.len(),
        opts.rate,
        m.clients,
        opts.duration,
        opts.wan
    );
    println!("{table}");
    write_report(&out_dir, &opts, &m, &rows, &table)?;
    println!("report: {}", out_dir.join("report.md").display());
    Ok(())
}

fn default_out() -> PathBuf {
    PathBuf::from("target/bench").join(format!("{}", tickmesh_codec::now_ns() / 1_000_000_000))
}

/// What one run measured.
struct Measured {
    /// Hop → histogram merged over regions (mesh already net of link delay).
    hops: BTreeMap<String, Histogram<u64>>,
    client_local: Histogram<u64>,
    client_remote: Histogram<u64>,
    clients: usize,
    mesh_links: Vec<(String, String, u64)>,
}

async fn measure(opts: &E2eOptions, ups: &[Up], token: &str) -> anyhow::Result<Measured> {
    let wan = opts.wan == "real";
    let regions: Vec<String> = ups.iter().map(|u| u.region.clone()).collect();
    // Connect and subscribe first, let the pipeline settle, then open the window.
    let n = opts.clients.max(ups.len());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..n {
        let up = &ups[i % ups.len()];
        let url = format!("{}?token={token}", up.ws_url);
        let me = up.region.clone();
        let regions = regions.clone();
        let (stop, counting) = (stop.clone(), counting.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = new_hist();
            let mut remote = new_hist();
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.context("client connect")?;
            let sub = r#"{"op":"subscribe","id":1,"channels":["trades","quotes"],"symbols":"*"}"#;
            ws.send(Message::Text(sub.into())).await?;
            let mut delays: BTreeMap<String, u64> = BTreeMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(100), ws.next()).await else { continue };
                let now = tickmesh_codec::now_ns();
                let Message::Text(t) = msg? else { continue };
                if !counting.load(std::sync::atomic::Ordering::Relaxed) {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(t.as_str())?;
                let (Some(src), Some(ts)) = (v["src"].as_str(), v["ts_ingest"].as_u64()) else { continue };
                let d = match delays.get(src) {
                    Some(d) => *d,
                    None => {
                        let home = home_of(src, &regions).unwrap_or_else(|| me.clone());
                        let d = if home == me { u64::MAX } else { one_way_ns(wan, &home, &me) };
                        delays.insert(src.to_owned(), d);
                        d
                    }
                };
                let lat = now.saturating_sub(ts);
                if d == u64::MAX {
                    local.saturating_record(lat.max(1));
                } else {
                    remote.saturating_record(lat.saturating_sub(d).max(1));
                }
            }
            anyhow::Ok((local, remote))
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut before = Vec::new();
    for u in ups {
        before.push(histograms(&fetch_latency(u.http)?)?);
    }
    counting.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(opts.duration).await;
    counting.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut hops: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    let mut mesh_links = Vec::new();
    for (u, b) in ups.iter().zip(&before) {
        let w = window(b, histograms(&fetch_latency(u.http)?)?);
        for (k, h) in w {
            let (key, h) = match k.strip_prefix("mesh:") {
                Some(src) => {
                    let home = home_of(src, &regions).unwrap_or_else(|| u.region.clone());
                    let d = one_way_ns(wan, &home, &u.region);
                    mesh_links.push((home, u.region.clone(), d));
                    ("mesh_net".to_owned(), shifted(&h, d))
                }
                None => (k, h),
            };
            hops.entry(key).or_insert_with(new_hist).add(&h).context("merging histograms")?;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut client_local = new_hist();
    let mut client_remote = new_hist();
    for t in tasks {
        let (l, r) = t.await??;
        client_local.add(l)?;
        client_remote.add(r)?;
    }
    Ok(Measured { hops, client_local, client_remote, clients: n, mesh_links })
}

fn row(name: &str, budget_name: Option<&str>, h: &Histogram<u64>, budgets: &Budgets, note: &str) -> Row {
    let b = budget_name.and_then(|n| budgets.get(n));
    let verdicts = match b {
        Some(b) if !h.is_empty() => Percentile::ALL
            .iter()
            .map(|&p| if h.value_at_quantile(p.quantile()) <= b.at_ns(p) { "PASS" } else { "OVER" }.to_owned())
            .collect(),
        Some(_) => vec!["no samples".to_owned()],
        None => Vec::new(),
    };
    Row {
        name: name.to_owned(),
        budget: b.map(|b| format!("{}: {} / {} / {}", budget_name.unwrap_or_default(), b.p50_us, b.p99_us, b.p999_us)),
        count: h.len(),
        p50_ns: h.value_at_quantile(0.5),
        p99_ns: h.value_at_quantile(0.99),
        p999_ns: h.value_at_quantile(0.999),
        max_ns: h.max(),
        verdicts,
        note: note.to_owned(),
    }
}

fn rows(m: &Measured, budgets: &Budgets) -> Vec<Row> {
    let empty = new_hist();
    let get = |k: &str| m.hops.get(k).unwrap_or(&empty);
    vec![
        row("decode", Some("decode"), get("decode"), budgets, "ingest thread: record made / decoded"),
        row("journal", Some("journal"), get("journal"), budgets, "hand-over to hub → sequenced and appended"),
        row(
            "mesh (net of link delay)",
            Some("mesh"),
            get("mesh_net"),
            budgets,
            "home ts_ingest → peer hub arrival, minus RTT/2 (upper bound)",
        ),
        row("gateway", Some("gateway"), get("gateway"), budgets, "fan-out publish → frame written"),
        row(
            "ingest → frame written",
            None,
            get("ingest_to_send"),
            budgets,
            "ts_ingest → frame written (remote records include the link delay)",
        ),
        row("client, same region", Some("client"), &m.client_local, budgets, "ts_ingest → client read"),
        row(
            "client, other region (net)",
            Some("client"),
            &m.client_remote,
            budgets,
            "ts_ingest → client read, minus RTT/2",
        ),
    ]
}

fn us(ns: u64) -> String {
    let v = ns as f64 / 1000.0;
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The per-hop table (Markdown).
fn table_md(rows: &[Row]) -> String {
    let mut s = String::from(
        "| hop | samples | p50 µs | p99 µs | p99.9 µs | max µs | budget p50/p99/p99.9 µs | verdict p50/p99/p99.9 |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.count,
            us(r.p50_ns),
            us(r.p99_ns),
            us(r.p999_ns),
            us(r.max_ns),
            r.budget.as_deref().unwrap_or("-"),
            if r.verdicts.is_empty() { "-".into() } else { r.verdicts.join(" / ") }
        ));
    }
    s
}

fn write_report(dir: &Path, opts: &E2eOptions, m: &Measured, rows: &[Row], table: &str) -> anyhow::Result<()> {
    let mut md = String::new();
    md.push_str("# tickmesh bench e2e\n\n");
    md.push_str(&format!(
        "{} regions ({}), {} records/s per region (synthetic feeds), {} clients subscribed to trades and quotes of every symbol, {} s window, WAN emulation `{}`.\n\n",
        opts.regions.len(),
        opts.regions.join(", "),
        opts.rate,
        m.clients,
        opts.duration.as_secs(),
        opts.wan
    ));
    md.push_str("Node hops are of sampled records (1 in 64 by seq), merged over every region; client rows are every data message the clients read. Budgets from `budgets.toml`.\n\n");
    md.push_str(table);
    md.push_str("\n![latency per hop](latency.svg)\n\n");
    if !m.mesh_links.is_empty() {
        md.push_str("Mesh links (one-way delay taken off each sample):\n\n| from | to | one-way ms |\n|---|---|---|\n");
        let mut links = m.mesh_links.clone();
        links.sort();
        links.dedup();
        for (a, b, d) in links {
            md.push_str(&format!("| {a} | {b} | {} |\n", d / 1_000_000));
        }
        md.push('\n');
    }
    md.push_str("Notes: every process (regions, relays, clients) shares this machine's cores, so tails include scheduling; the mesh row is an upper bound (it also holds the home region's journal hop and the sender's batching).\n");
    std::fs::write(dir.join("report.md"), md)
        .with_context(|| format!("writing {}", dir.join("report.md").display()))?;
    let json = serde_json::json!({
        "regions": opts.regions, "rate": opts.rate, "clients": m.clients,
        "duration_s": opts.duration.as_secs(), "wan": opts.wan, "sample_every": tickmesh_gateway::hops::SAMPLE_EVERY,
        "rows": rows,
        "histograms": m.hops.iter().map(|(k, h)| (k.clone(), tickmesh_gateway::hops::encode_histogram(h)))
            .chain([("client_local".to_owned(), tickmesh_gateway::hops::encode_histogram(&m.client_local)),
                    ("client_remote".to_owned(), tickmesh_gateway::hops::encode_histogram(&m.client_remote))])
            .collect::<BTreeMap<_, _>>(),
    });
    std::fs::write(dir.join("result.json"), serde_json::to_vec_pretty(&json)?)?;
    let mut series: Vec<(&str, &Histogram<u64>)> = Vec::new();
    let empty = new_hist();
    for (label, key) in [
        ("decode", "decode"),
        ("journal", "journal"),
        ("mesh (net)", "mesh_net"),
        ("gateway", "gateway"),
        ("ingest→send", "ingest_to_send"),
    ] {
        series.push((label, m.hops.get(key).unwrap_or(&empty)));
    }
    series.push(("client local", &m.client_local));
    series.push(("client remote (net)", &m.client_remote));
    crate::cmd::plot::percentile_plot(&dir.join("latency.svg"), "latency per hop", &series)?;
    Ok(())
}
