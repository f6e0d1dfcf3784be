//! Live figures of a region for the dashboard, `GET /v1/stats`, `GET /v1/stats/global`
//! and `GET /v1/vwap`, and the gauges the alert rules in `deploy/monitoring/` read.
//!
//! Three writers, each off the per-record path:
//! * the hub thread owns a [`HubTally`]: per record it bumps plain fields (no lock, no
//!   clock), and once per hub batch it folds them into [`Stats`] under one lock;
//! * the `stats` thread samples the counters once per second into a small ring (rates
//!   are differences of samples, so a slow HTTP poller never skews them), keeps a window
//!   of the ingest-to-send histogram, and sets the Prometheus gauges;
//! * HTTP handlers only read.
//!
//! `/v1/stats/global` asks every region of the configuration for its `/v1/stats` with a
//! short timeout, all at once; a region that does not answer is shown `down` and never
//! holds the page up.

pub mod vwap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tickmesh_codec::{BodyRef, RecordRef, SourceId, Symbol};
use tickmesh_gateway::hops::Hop;
use tickmesh_gateway::GatewayShared;
use tickmesh_journal::Journal;
use tickmesh_replicate::MeshStatus;

use crate::config::{NodeConfig, RegionEntry};
use vwap::{Leg, VwapBook};

/// Samples kept: one per second, so rates over up to a minute and a minute of history
/// for a freshly opened dashboard.
pub const RING: usize = 61;

/// Seconds over which `/v1/stats` computes its rates: long enough to smooth the bursts of
/// a loaded machine, short enough to follow a change.
pub const RATE_WINDOW_S: usize = 5;

/// Seconds of the latency window (`latency.ingest_to_send` and its gauges).
pub const LATENCY_WINDOW_S: usize = 10;

/// How long a built `/v1/stats/global` answer is reused.
pub const GLOBAL_CACHE: Duration = Duration::from_millis(500);

/// How long `/v1/stats/global` waits for a region.
pub const PEER_TIMEOUT: Duration = Duration::from_millis(800);

/// Why the region should not take traffic (empty: ready); the node's `/readyz` logic.
pub type ReadyFn = Box<dyn Fn() -> Vec<String> + Send + Sync>;

/// What the hub knows of one source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceFig {
    /// Records of the source that passed the hub since start.
    pub records: u64,
    /// Highest `seq` seen.
    pub last_seq: u64,
    /// `ts_ingest` (home region) of the newest record, ns.
    pub last_ingest_ns: u64,
    /// When the newest record was journaled here, ns.
    pub last_arrival_ns: u64,
}

#[derive(Debug, Default)]
struct Live {
    sources: BTreeMap<SourceId, SourceFig>,
    vwap: VwapBook,
}

/// One sample of the counters.
#[derive(Debug, Clone, Default)]
struct Sample {
    t_ns: u64,
    per_source: BTreeMap<SourceId, u64>,
    messages_out: f64,
    bytes_out: f64,
    slow_events: f64,
    connections: f64,
}

#[derive(Default)]
struct Sampled {
    ring: VecDeque<Sample>,
    /// Copies of the ingest-to-send histogram, one per second, oldest first.
    hists: VecDeque<hdrhistogram::Histogram<u64>>,
}

/// A region's live figures; shared by the hub's tally, the sampler and the routes.
pub struct Stats {
    region: String,
    regions: Vec<RegionEntry>,
    home: Vec<SourceId>,
    state_dir: PathBuf,
    shared: Arc<GatewayShared>,
    journal: Arc<Journal>,
    started_ns: u64,
    mesh: OnceLock<Arc<MeshStatus>>,
    ready: OnceLock<ReadyFn>,
    live: Mutex<Live>,
    sampled: Mutex<Sampled>,
    /// The last global view and when it was built: every open dashboard polls once a
    /// second, and they share one fan-out to the regions per [`GLOBAL_CACHE`].
    global: tokio::sync::Mutex<Option<(std::time::Instant, Value)>>,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats").field("region", &self.region).finish_non_exhaustive()
    }
}

impl Stats {
    /// Figures for the node of `cfg`; registers the counters the alert rules read, so a
    /// series exists (at 0) before its first event and `rate()` over it is defined.
    pub fn new(cfg: &NodeConfig, shared: Arc<GatewayShared>, journal: Arc<Journal>) -> Arc<Stats> {
        register_metrics();
        Arc::new(Stats {
            region: cfg.region.clone(),
            regions: cfg.regions.clone(),
            home: cfg.feeds.iter().filter_map(|f| SourceId::new(f.source()).ok()).collect(),
            state_dir: cfg.state_dir.clone(),
            shared,
            journal,
            started_ns: tickmesh_codec::now_ns(),
            mesh: OnceLock::new(),
            ready: OnceLock::new(),
            live: Mutex::new(Live::default()),
            sampled: Mutex::new(Sampled::default()),
            global: tokio::sync::Mutex::new(None),
        })
    }

    /// Gives the figures the mesh's status (peers, round-trip times).
    pub fn set_mesh(&self, mesh: Arc<MeshStatus>) {
        let _ = self.mesh.set(mesh);
    }

    /// Gives the figures the node's readiness check.
    pub fn set_ready(&self, f: ReadyFn) {
        let _ = self.ready.set(f);
    }

    /// The hub's side: give it to the hub thread.
    pub fn tally(self: &Arc<Self>) -> HubTally {
        HubTally { stats: self.clone(), sources: Vec::new(), trades: Vec::new() }
    }

    /// Starts the `stats` thread: one sample per second until the last [`Stats`] handle
    /// is gone.
    pub fn start_sampler(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let weak: Weak<Stats> = Arc::downgrade(self);
        std::thread::Builder::new().name("stats".into()).spawn(move || loop {
            let Some(s) = weak.upgrade() else { break };
            s.sample(tickmesh_codec::now_ns());
            drop(s);
            std::thread::sleep(Duration::from_secs(1));
        })
    }

    /// The routes `/v1/stats`, `/v1/stats/global` and `/v1/vwap`.
    pub fn routes(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/stats", get(stats_route))
            .route("/v1/stats/global", get(global_route))
            .route("/v1/vwap", get(vwap_route))
            .with_state(self.clone())
    }

    fn is_home(&self, src: &SourceId) -> bool {
        self.home.contains(src)
    }

    /// Takes one sample now and updates the gauges.
    fn sample(&self, now_ns: u64) {
        let text = self.shared.metrics_text();
        let sources: BTreeMap<SourceId, SourceFig> =
            self.live.lock().unwrap_or_else(|e| e.into_inner()).sources.clone();
        let s = Sample {
            t_ns: now_ns,
            per_source: sources.iter().map(|(k, v)| (*k, v.records)).collect(),
            messages_out: metric_sum(&text, "tickmesh_gateway_frames_sent_total"),
            bytes_out: metric_sum(&text, "tickmesh_gateway_bytes_sent_total"),
            slow_events: metric_sum(&text, "tickmesh_gateway_slow_consumer_events_total"),
            connections: metric_sum(&text, "tickmesh_gateway_connections"),
        };
        let hist = self.shared.hops().histogram(Hop::IngestToSend);
        let window = {
            let mut g = self.sampled.lock().unwrap_or_else(|e| e.into_inner());
            g.ring.push_back(s);
            while g.ring.len() > RING {
                g.ring.pop_front();
            }
            g.hists.push_back(hist);
            while g.hists.len() > LATENCY_WINDOW_S + 1 {
                g.hists.pop_front();
            }
            window_latency(&g.hists)
        };
        self.export_gauges(now_ns, &sources, window);
    }

    fn export_gauges(&self, now_ns: u64, sources: &BTreeMap<SourceId, SourceFig>, window: Option<(u64, u64, u64)>) {
        let mut all: BTreeMap<SourceId, SourceFig> = self.home.iter().map(|s| (*s, SourceFig::default())).collect();
        all.extend(sources.iter().map(|(k, v)| (*k, *v)));
        for (src, f) in &all {
            let origin = if self.is_home(src) { "home" } else { "peer" };
            let labels = [("source", src.as_str().to_owned()), ("origin", origin.to_owned())];
            metrics::counter!("tickmesh_node_source_records_total", &labels).absolute(f.records);
            let since = if f.last_arrival_ns == 0 { self.started_ns } else { f.last_arrival_ns };
            metrics::gauge!("tickmesh_node_source_last_record_age_seconds", &labels)
                .set(now_ns.saturating_sub(since) as f64 / 1e9);
            if origin == "peer" && f.last_ingest_ns > 0 {
                metrics::gauge!("tickmesh_node_source_delay_seconds", &labels)
                    .set(f.last_arrival_ns.saturating_sub(f.last_ingest_ns) as f64 / 1e9);
            }
        }
        if let Some(m) = self.mesh.get() {
            for p in m.peers() {
                metrics::gauge!("tickmesh_node_peer_up", "peer" => p.region.clone())
                    .set(f64::from(u8::from(p.receiving)));
                metrics::gauge!("tickmesh_node_peer_rtt_seconds", "peer" => p.region.clone()).set(p.rtt_ms / 1e3);
            }
        }
        let reasons = self.ready.get().map(|f| f()).unwrap_or_default();
        metrics::gauge!("tickmesh_node_ready").set(f64::from(u8::from(reasons.is_empty())));
        let writable = crate::node::journal_probe(&self.state_dir).is_ok();
        metrics::gauge!("tickmesh_node_journal_writable").set(f64::from(u8::from(writable)));
        metrics::gauge!("tickmesh_node_draining").set(f64::from(u8::from(self.shared.is_draining())));
        metrics::gauge!("tickmesh_node_uptime_seconds").set(now_ns.saturating_sub(self.started_ns) as f64 / 1e9);
        let (p50, p99) = window.map(|(_, p50, p99)| (p50, p99)).unwrap_or((0, 0));
        metrics::gauge!("tickmesh_node_ingest_to_send_seconds", "quantile" => "0.5").set(p50 as f64 / 1e9);
        metrics::gauge!("tickmesh_node_ingest_to_send_seconds", "quantile" => "0.99").set(p99 as f64 / 1e9);
    }

    /// This region's `/v1/stats` body.
    pub fn local_json(&self, now_ns: u64) -> Value {
        let sources = self.live.lock().unwrap_or_else(|e| e.into_inner()).sources.clone();
        let (last, prev, history, window) = {
            let g = self.sampled.lock().unwrap_or_else(|e| e.into_inner());
            let n = g.ring.len();
            let last = g.ring.back().cloned().unwrap_or_default();
            let prev = if n >= 2 { g.ring.get(n.saturating_sub(RATE_WINDOW_S + 1)).cloned() } else { None };
            let history: Vec<Value> =
                g.ring.iter().zip(g.ring.iter().skip(1)).map(|(a, b)| history_point(a, b, &self.home)).collect();
            (last, prev, history, window_latency(&g.hists))
        };
        let rate = |f: &dyn Fn(&Sample) -> f64| -> f64 {
            match &prev {
                Some(p) if last.t_ns > p.t_ns => (f(&last) - f(p)).max(0.0) / ((last.t_ns - p.t_ns) as f64 / 1e9),
                _ => 0.0,
            }
        };
        let positions: BTreeMap<SourceId, u64> = self.journal.positions().into_iter().collect();
        let mut all: BTreeMap<SourceId, SourceFig> = self.home.iter().map(|s| (*s, SourceFig::default())).collect();
        all.extend(sources.iter().map(|(k, v)| (*k, *v)));
        let (mut home_rate, mut peer_rate) = (0.0, 0.0);
        let mut src_rows = Vec::new();
        let mut lag = Vec::new();
        for (src, f) in &all {
            let home = self.is_home(src);
            let r = rate(&|s: &Sample| s.per_source.get(src).copied().unwrap_or(0) as f64);
            if home {
                home_rate += r;
            } else {
                peer_rate += r;
            }
            let since = if f.last_arrival_ns == 0 { self.started_ns } else { f.last_arrival_ns };
            let age_ms = now_ns.saturating_sub(since) as f64 / 1e6;
            let delay_ms =
                (f.last_ingest_ns > 0).then(|| f.last_arrival_ns.saturating_sub(f.last_ingest_ns) as f64 / 1e6);
            src_rows.push(json!({
                "source": src.as_str(), "origin": if home { "home" } else { "peer" },
                "records": f.records, "records_per_s": round2(r), "last_seq": f.last_seq,
                "journal_seq": positions.get(src).copied().unwrap_or(0),
                "age_ms": round2(age_ms), "delay_ms": delay_ms.map(round2),
            }));
            if !home {
                lag.push(json!({"source": src.as_str(), "delay_ms": delay_ms.map(round2), "age_ms": round2(age_ms),
                    "last_seq": f.last_seq}));
            }
        }
        let peers: Vec<Value> = self
            .mesh
            .get()
            .map(|m| m.peers())
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                json!({"region": p.region, "receiving": p.receiving, "sending": p.sending, "rtt_ms": round2(p.rtt_ms),
                "records_in": p.records_in, "records_out": p.records_out})
            })
            .collect();
        let reasons = self.ready.get().map(|f| f()).unwrap_or_default();
        let draining = self.shared.is_draining();
        let total = self.shared.hops().stats(Hop::IngestToSend);
        let ms = |ns: u64| round3(ns as f64 / 1e6);
        let latency = match window {
            Some((count, p50, p99)) => {
                json!({"window_s": LATENCY_WINDOW_S, "count": count, "p50_ms": ms(p50), "p99_ms": ms(p99),
                "since_start": {"count": total.count, "p50_ms": ms(total.p50_ns), "p99_ms": ms(total.p99_ns)}})
            }
            None => json!({"window_s": LATENCY_WINDOW_S, "count": 0, "p50_ms": null, "p99_ms": null,
                "since_start": {"count": total.count, "p50_ms": ms(total.p50_ns), "p99_ms": ms(total.p99_ns)}}),
        };
        json!({
            "region": self.region,
            "state": if draining { "draining" } else { "active" },
            "draining": draining,
            "ready": reasons.is_empty(),
            "reasons": reasons,
            "at_ms": now_ns / 1_000_000,
            "rate_window_s": RATE_WINDOW_S,
            "uptime_s": round2(now_ns.saturating_sub(self.started_ns) as f64 / 1e9),
            "records_in_per_s": {"home": round2(home_rate), "replicated": round2(peer_rate), "total": round2(home_rate + peer_rate)},
            "records_in_total": all.values().map(|f| f.records).sum::<u64>(),
            "sources": src_rows,
            "messages_out_per_s": round2(rate(&|s| s.messages_out)),
            "bytes_out_per_s": round2(rate(&|s| s.bytes_out)),
            "messages_out_total": last.messages_out,
            "bytes_out_total": last.bytes_out,
            // The gauge is a float moved up and down by each core: never show -0.
            "connections": last.connections.max(0.0) + 0.0,
            "slow_consumer_events_total": last.slow_events,
            "slow_consumer_events_per_s": round2(rate(&|s| s.slow_events)),
            "latency": {"ingest_to_send": latency},
            "peers": peers,
            "lag": lag,
            "journal": {"positions": positions.iter().map(|(k, v)| (k.as_str().to_owned(), json!(v))).collect::<serde_json::Map<_, _>>()},
            "history": history,
        })
    }

    /// `/v1/stats/global`: every region's `/v1/stats` (this one from memory), each
    /// region's state, and the replication lag in records per source and region.
    pub async fn global_json(self: &Arc<Self>) -> Value {
        // Held across the fan-out: concurrent pollers wait for one answer, not N fan-outs.
        let mut cache = self.global.lock().await;
        if let Some((at, v)) = cache.as_ref() {
            if at.elapsed() < GLOBAL_CACHE {
                return v.clone();
            }
        }
        let v = self.build_global().await;
        *cache = Some((std::time::Instant::now(), v.clone()));
        v
    }

    async fn build_global(self: &Arc<Self>) -> Value {
        let now = tickmesh_codec::now_ns();
        let mut tasks = Vec::new();
        for e in &self.regions {
            if e.region == self.region {
                continue;
            }
            let (region, url) = (e.region.clone(), e.http_url.clone());
            tasks.push((region, tokio::task::spawn_blocking(move || fetch_stats(&url, PEER_TIMEOUT))));
        }
        let mut by_region: BTreeMap<String, Result<Value, String>> = BTreeMap::new();
        by_region.insert(self.region.clone(), Ok(self.local_json(now)));
        for (region, t) in tasks {
            let r = match tokio::time::timeout(PEER_TIMEOUT + Duration::from_millis(200), t).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(format!("fetch task failed: {e}")),
                Err(_) => Err(format!("no answer within {} ms", PEER_TIMEOUT.as_millis())),
            };
            by_region.insert(region, r);
        }
        global_view(&self.region, &self.regions, by_region)
    }
}

/// Builds the global body from what each region answered (pure, for tests).
pub fn global_view(me: &str, regions: &[RegionEntry], answers: BTreeMap<String, Result<Value, String>>) -> Value {
    let mut order: Vec<String> = regions.iter().map(|r| r.region.clone()).collect();
    if !order.iter().any(|r| r == me) {
        order.insert(0, me.to_owned());
    }
    let order = crate::regions::failover_order(me, &order);
    // The home region of each source, and its newest seq there.
    let mut home_of: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for (region, a) in &answers {
        if let Ok(v) = a {
            for s in v["sources"].as_array().into_iter().flatten() {
                if s["origin"] == "home" {
                    if let Some(src) = s["source"].as_str() {
                        home_of.insert(src.to_owned(), (region.clone(), s["last_seq"].as_u64().unwrap_or(0)));
                    }
                }
            }
        }
    }
    let mut lag = Vec::new();
    let mut out = Vec::new();
    for region in &order {
        let http_url = regions.iter().find(|r| &r.region == region).map(|r| r.http_url.clone()).unwrap_or_default();
        match answers.get(region) {
            Some(Ok(v)) => {
                for s in v["sources"].as_array().into_iter().flatten() {
                    if s["origin"] != "peer" {
                        continue;
                    }
                    let Some(src) = s["source"].as_str() else { continue };
                    let here = s["last_seq"].as_u64().unwrap_or(0);
                    let (home, at_home) = home_of.get(src).cloned().unwrap_or_default();
                    lag.push(json!({
                        "region": region, "source": src, "from": if home.is_empty() { Value::Null } else { json!(home) },
                        "records_behind": if home.is_empty() { Value::Null } else { json!(at_home.saturating_sub(here)) },
                        "delay_ms": s["delay_ms"], "age_ms": s["age_ms"],
                    }));
                }
                let state = v["state"].as_str().unwrap_or("active").to_owned();
                out.push(json!({"region": region, "http_url": http_url, "state": state, "stats": v}));
            }
            Some(Err(e)) => out.push(json!({"region": region, "http_url": http_url, "state": "down", "error": e})),
            None => out.push(json!({"region": region, "http_url": http_url, "state": "down", "error": "not asked"})),
        }
    }
    json!({"region": me, "at_ms": tickmesh_codec::now_ns() / 1_000_000, "regions": out, "lag": lag})
}

/// GET `url`/v1/stats with `timeout` (blocking; run on the blocking pool).
fn fetch_stats(http_url: &str, timeout: Duration) -> Result<Value, String> {
    use std::net::ToSocketAddrs;
    let rest = http_url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{http_url} is not an http:// URL; /v1/stats/global reads plain HTTP"))?;
    let (hostport, base) = match rest.split_once('/') {
        Some((h, p)) => (h, format!("/{}", p.trim_end_matches('/'))),
        None => (rest, String::new()),
    };
    let hostport = if hostport.contains(':') { hostport.to_owned() } else { format!("{hostport}:80") };
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{hostport} did not resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport} has no address"))?;
    let (status, body) = crate::http_get::get(addr, &format!("{base}/v1/stats"), timeout)
        .map_err(|e| format!("GET {http_url}/v1/stats: {e}"))?;
    if status != 200 {
        return Err(format!("GET {http_url}/v1/stats answered {status}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("GET {http_url}/v1/stats: not JSON ({e})"))
}

/// The hub thread's tally: plain fields per record, folded into [`Stats`] once per batch.
pub struct HubTally {
    stats: Arc<Stats>,
    sources: Vec<(SourceId, SourceFig)>,
    trades: Vec<(Symbol, SourceId, Leg)>,
}

impl std::fmt::Debug for HubTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubTally").field("pending_trades", &self.trades.len()).finish_non_exhaustive()
    }
}

impl HubTally {
    /// Counts one record the hub journaled and published.
    pub fn observe(&mut self, rec: &RecordRef<'_>) {
        let src = rec.source_id();
        let i = match self.sources.iter().position(|(s, _)| *s == src) {
            Some(i) => i,
            None => {
                self.sources.push((src, SourceFig::default()));
                self.sources.len() - 1
            }
        };
        let f = &mut self.sources[i].1;
        f.records += 1;
        f.last_seq = f.last_seq.max(rec.seq());
        f.last_ingest_ns = f.last_ingest_ns.max(rec.ts_ingest());
        if let BodyRef::Trade(t) = rec.body() {
            let (px, qty) = (t.px.get(), t.qty.get().raw());
            if !px.is_null() && qty > 0 {
                if let Ok(sym) = Symbol::new(rec.sym()) {
                    let leg = Leg { notional: px.raw() as i128 * qty as i128, volume: qty as i128, trades: 1 };
                    match self.trades.last_mut() {
                        Some((s, o, l)) if *s == sym && *o == src => {
                            l.notional += leg.notional;
                            l.volume += leg.volume;
                            l.trades += 1;
                        }
                        _ => self.trades.push((sym, src, leg)),
                    }
                }
            }
        }
    }

    /// Folds what was counted into the shared figures (one lock).
    pub fn flush(&mut self) {
        if self.sources.is_empty() && self.trades.is_empty() {
            return;
        }
        let now = tickmesh_codec::now_ns();
        let mut live = self.stats.live.lock().unwrap_or_else(|e| e.into_inner());
        for (src, d) in self.sources.drain(..) {
            let f = live.sources.entry(src).or_default();
            f.records += d.records;
            f.last_seq = f.last_seq.max(d.last_seq);
            f.last_ingest_ns = f.last_ingest_ns.max(d.last_ingest_ns);
            f.last_arrival_ns = now;
        }
        for (sym, src, leg) in self.trades.drain(..) {
            live.vwap.add_leg(sym, src, &leg);
        }
    }
}

fn history_point(a: &Sample, b: &Sample, home: &[SourceId]) -> Value {
    let dt = (b.t_ns.saturating_sub(a.t_ns) as f64 / 1e9).max(1e-3);
    let (mut h, mut p) = (0u64, 0u64);
    for (src, n) in &b.per_source {
        let d = n.saturating_sub(a.per_source.get(src).copied().unwrap_or(0));
        if home.contains(src) {
            h += d;
        } else {
            p += d;
        }
    }
    json!({
        "t_ms": b.t_ns / 1_000_000,
        "home_per_s": round2(h as f64 / dt),
        "replicated_per_s": round2(p as f64 / dt),
        "messages_out_per_s": round2((b.messages_out - a.messages_out).max(0.0) / dt),
        "bytes_out_per_s": round2((b.bytes_out - a.bytes_out).max(0.0) / dt),
    })
}

/// (count, p50, p99) of the samples recorded between the oldest and newest copy.
fn window_latency(hists: &VecDeque<hdrhistogram::Histogram<u64>>) -> Option<(u64, u64, u64)> {
    let (first, last) = (hists.front()?, hists.back()?);
    let mut w = last.clone();
    if hists.len() > 1 && w.subtract(first).is_err() {
        return None;
    }
    if w.is_empty() {
        return None;
    }
    Some((w.len(), w.value_at_quantile(0.5), w.value_at_quantile(0.99)))
}

/// Sum of every sample of metric `name` (all label sets) in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Counters the alert rules take `rate()` of, registered at 0 with the label sets the
/// code uses, so the series exist before the first event.
fn register_metrics() {
    for reason in ["disconnect", "drop", "conflate"] {
        metrics::counter!("tickmesh_gateway_slow_consumer_events_total", "reason" => reason).increment(0);
    }
    metrics::counter!("tickmesh_node_home_records_refused_total").increment(0);
    metrics::counter!("tickmesh_node_duplicates_dropped_total").increment(0);
    metrics::counter!("tickmesh_node_records_total").increment(0);
    metrics::counter!("tickmesh_gateway_frames_sent_total").increment(0);
    metrics::counter!("tickmesh_gateway_bytes_sent_total").increment(0);
}

async fn stats_route(State(s): State<Arc<Stats>>) -> Response {
    Json(s.local_json(tickmesh_codec::now_ns())).into_response()
}

async fn global_route(State(s): State<Arc<Stats>>) -> Response {
    Json(s.global_json().await).into_response()
}

/// `GET /v1/vwap[?symbol=SYM][&limit=N]`: volume and VWAP per symbol, largest volume first.
async fn vwap_route(State(s): State<Arc<Stats>>, req: axum::extract::Request) -> Response {
    let q = req.uri().query().unwrap_or("").to_owned();
    let param = |k: &str| {
        q.split('&').find_map(|kv| {
            let (a, b) = kv.split_once('=').unwrap_or((kv, ""));
            (a == k).then(|| b.to_owned())
        })
    };
    let limit = match param("limit").map(|v| v.parse::<usize>()) {
        None => usize::MAX,
        Some(Ok(n @ 1..=100_000)) => n,
        Some(_) => {
            return tickmesh_gateway::http_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "limit must be 1 to 100000 (default: every symbol)",
            )
        }
    };
    let live = s.live.lock().unwrap_or_else(|e| e.into_inner());
    match param("symbol").filter(|v| !v.is_empty()) {
        Some(sym) => match live.vwap.row(&sym) {
            Some(row) => Json(vec![row]).into_response(),
            None => tickmesh_gateway::http_error(
                StatusCode::NOT_FOUND,
                "unknown_symbol",
                &format!("no trade of {sym} since this node started; GET /v1/vwap lists the symbols that traded"),
            ),
        },
        None => Json(live.vwap.rows(limit)).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_label_sets_and_skips_prefixes() {
        let text =
            "# TYPE a_total counter\na_total{core=\"0\"} 3\na_total{core=\"1\"} 4.5\na_total_other 100\na_total 1\n";
        assert_eq!(metric_sum(text, "a_total"), 8.5);
        assert_eq!(metric_sum(text, "missing"), 0.0);
    }

    #[test]
    fn tally_counts_sources_and_trades() {
        use tickmesh_codec::{testing, Side};
        let dir = tempfile::tempdir().unwrap();
        let cfg: NodeConfig = toml::from_str(&format!(
            "region = \"us-east-1\"\nstate_dir = {:?}\n[[feeds]]\nkind = \"synthetic\"\nsource = \"TEST.SRC\"\n",
            dir.path()
        ))
        .unwrap();
        let (journal, _) = Journal::open(&dir.path().join("j"), Default::default()).unwrap();
        let shared =
            Arc::new(GatewayShared::new("us-east-1", tickmesh_gateway::auth::Verifier::new(), Box::new(String::new)));
        let stats = Stats::new(&cfg, shared, Arc::new(journal));
        let mut t = stats.tally();
        for (i, (p, q)) in [("10", "1"), ("20", "3")].iter().enumerate() {
            let b = testing::trade(i as u64 + 1, "AAPL", p, q, Side::Buy).to_bytes();
            t.observe(&tickmesh_codec::access_untrusted(&b).unwrap());
        }
        let b = testing::quote(3, "AAPL", Some(("1", "1")), None).to_bytes();
        t.observe(&tickmesh_codec::access_untrusted(&b).unwrap());
        t.flush();
        let row = stats.live.lock().unwrap().vwap.row("AAPL").unwrap();
        assert_eq!((row.volume.as_str(), row.vwap.as_str(), row.trades), ("4", "17.5", 2));
        stats.sample(tickmesh_codec::now_ns());
        let v = stats.local_json(tickmesh_codec::now_ns());
        assert_eq!(v["sources"][0]["source"], "TEST.SRC");
        assert_eq!(v["sources"][0]["origin"], "home");
        assert_eq!(v["sources"][0]["records"], 3);
        assert_eq!(v["sources"][0]["last_seq"], 3);
        assert_eq!(v["records_in_total"], 3);
    }

    #[test]
    fn fetch_errors_say_what_failed() {
        let e = fetch_stats("https://eu-west-1.example.com", Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("is not an http:// URL"), "{e}");
        // A port nothing listens on: refused at once, reported with the URL.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let e = fetch_stats(&format!("http://127.0.0.1:{port}"), Duration::from_millis(500)).unwrap_err();
        assert!(e.starts_with(&format!("GET http://127.0.0.1:{port}/v1/stats")), "{e}");
    }

    #[test]
    fn global_view_marks_silent_regions_down_and_computes_lag() {
        let e = |r: &str| RegionEntry { region: r.into(), ws_url: String::new(), http_url: format!("http://{r}") };
        let regions = vec![e("us-east-1"), e("eu-west-1"), e("ap-southeast-1")];
        let mut a = BTreeMap::new();
        a.insert(
            "us-east-1".to_owned(),
            Ok(json!({"state": "active", "sources": [
                {"source": "SYN.USE1", "origin": "home", "last_seq": 100},
                {"source": "SYN.EUW1", "origin": "peer", "last_seq": 40, "delay_ms": 35.0, "age_ms": 1.0}]})),
        );
        a.insert(
            "eu-west-1".to_owned(),
            Ok(json!({"state": "draining", "sources": [
                {"source": "SYN.EUW1", "origin": "home", "last_seq": 50},
                {"source": "SYN.USE1", "origin": "peer", "last_seq": 100}]})),
        );
        a.insert("ap-southeast-1".to_owned(), Err("no answer within 800 ms".to_owned()));
        let v = global_view("us-east-1", &regions, a);
        let states: Vec<(&str, &str)> = v["regions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["region"].as_str().unwrap(), r["state"].as_str().unwrap()))
            .collect();
        assert_eq!(states, [("us-east-1", "active"), ("eu-west-1", "draining"), ("ap-southeast-1", "down")]);
        let lag = v["lag"].as_array().unwrap();
        let use1 = lag.iter().find(|l| l["region"] == "us-east-1").unwrap();
        assert_eq!(
            (use1["source"].as_str(), use1["from"].as_str(), use1["records_behind"].as_u64()),
            (Some("SYN.EUW1"), Some("eu-west-1"), Some(10))
        );
        let euw1 = lag.iter().find(|l| l["region"] == "eu-west-1").unwrap();
        assert_eq!(euw1["records_behind"], 0);
    }
}
