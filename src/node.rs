//! One region node: wires ingest, the journal, the mesh and the gateway together.
//!
//! ```text
//!  ingest-<src> threads ──┐                           ┌─> gateway Fanout ─> gw-core-N ─> clients
//!                         ├─> hub thread ─> journal ──┤
//!  replicate-io (peers) ──┘   (dedupe by (src, seq))  └─> appended watch ─> mesh senders ─> peers
//! ```
//!
//! The hub is the single writer of the journal's order and the gateway's input: every
//! record, local or remote, passes it once, in per-source `seq` order, and a record a peer
//! sends twice (reconnect, relay) is refused by the journal and never reaches a client.

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use crossbeam_channel::{Receiver, Sender};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tickmesh_codec::{frame, Seq, SourceId};
use tickmesh_gateway::auth::Verifier;
use tickmesh_gateway::{Fanout, Gateway, GatewayShared, RegionLink};
use tickmesh_ingest::synthetic::SyntheticFeed;
use tickmesh_ingest::{Pacer, Sequencer};
use tickmesh_journal::Journal;
use tickmesh_replicate::{Cursor, Mesh, MeshHandle, MeshParams, MeshStatus, RecordStore};

use crate::config::{FeedConfig, NodeConfig};
use crate::metrics::Metrics;

/// What producers hand the hub.
enum HubMsg {
    /// One record of a home source, not yet sequenced: the hub numbers it when it journals
    /// it, so a record the journal refuses (a full disk) never consumes a `seq`. The `u64`
    /// is when the ingest thread handed it over (ns): the start of the journal hop.
    Local(Box<tickmesh_codec::Record>, u64),
    /// A batch of length-prefixed records from a peer, already validated, with the times
    /// it was sent (peer's clock) and received (the mesh hop).
    Remote(tickmesh_replicate::Delivery),
}

/// A running node.
pub struct Node {
    cfg: NodeConfig,
    gateway: Option<Gateway>,
    mesh: Option<Mesh>,
    journal: Arc<Journal>,
    stop: Arc<AtomicBool>,
    ingest: Vec<JoinHandle<()>>,
    hub: Option<JoinHandle<()>>,
    hub_tx: Option<Sender<HubMsg>>,
    trading: crate::tiers::trading::TradingTier,
    trading_hub: Arc<std::sync::RwLock<Option<Sender<HubMsg>>>>,
    users: Option<Arc<crate::tiers::userdata::UserTier>>,
    /// Drain state and open sessions (a graceful stop is a drain with reason `shutdown`).
    shared: Arc<GatewayShared>,
    /// Tells peers this node's state (active / draining).
    mesh_ctl: Option<MeshHandle>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("region", &self.cfg.region).finish_non_exhaustive()
    }
}

/// State the node's own HTTP routes read.
struct NodeView {
    cfg: NodeConfig,
    mesh: std::sync::OnceLock<Arc<MeshStatus>>,
    /// Runtime changes of the mesh's peers (`POST /v1/admin/peers`).
    mesh_ctl: std::sync::OnceLock<MeshHandle>,
    /// Regions joined at runtime, listed in `/v1/regions` after the configured ones.
    joined: std::sync::Mutex<Vec<crate::config::RegionEntry>>,
    shared: Arc<GatewayShared>,
    /// When each home source last had a record journaled (ns), for feed staleness.
    home_last: Arc<std::sync::Mutex<std::collections::BTreeMap<SourceId, u64>>>,
    started_ns: u64,
    /// `/v1/route`, the weights, each region's health.
    route: Arc<crate::route_http::RouteService>,
    /// The residency rules of `[residency]` (checked by the mesh on send and receive).
    #[allow(dead_code)] // kept for the node's own routes; the mesh holds its own reference
    policy: Arc<tickmesh_replicate::ResidencyPolicy>,
    /// The audit trail of cross-region transfers (`<state_dir>/audit`), served at /v1/audit.
    audit: Option<Arc<tickmesh_replicate::AuditLog>>,
    /// Why the home feeds have not started yet (None: they run, or there are none).
    home_held: Arc<std::sync::Mutex<Option<String>>>,
}

impl Node {
    /// Starts every part of the node; returns once clients can connect.
    pub fn start(cfg: NodeConfig, metrics: Metrics) -> anyhow::Result<Node> {
        let problems = cfg.problems();
        if !problems.is_empty() {
            anyhow::bail!("configuration has {} problem(s):\n  {}", problems.len(), problems.join("\n  "));
        }
        if tickmesh_codec::clock_offset_ms() != 0 {
            tracing::warn!(
                offset_ms = tickmesh_codec::clock_offset_ms(),
                "TICKMESH_CLOCK_OFFSET_MS is set: this node's wall clock is shifted (a test hook; unset it in production)"
            );
        }
        let journal_dir = cfg.state_dir.join("journal");
        std::fs::create_dir_all(&journal_dir)
            .with_context(|| format!("creating the journal directory {}", journal_dir.display()))?;
        let (journal, report) = Journal::open(&journal_dir, cfg.journal.clone())
            .with_context(|| format!("opening the journal in {}", journal_dir.display()))?;
        if !report.is_clean() {
            tracing::warn!(?report, "journal recovered after an unclean stop");
        }
        let journal = Arc::new(journal);

        let mut verifier = Verifier::new();
        for f in &cfg.auth.hs256_key_files {
            let key = std::fs::read(f).with_context(|| format!("reading the HS256 key {}", f.display()))?;
            verifier.add_hs256(trim_newline(&key));
        }
        for f in &cfg.auth.eddsa_public_key_files {
            let pem = std::fs::read(f).with_context(|| format!("reading the EdDSA public key {}", f.display()))?;
            verifier
                .add_eddsa_public_pem(&pem)
                .with_context(|| format!("loading the EdDSA public key {}", f.display()))?;
        }
        let render = metrics.clone();
        let shared = Arc::new(GatewayShared::new(cfg.region.clone(), verifier, Box::new(move || render.render())));
        shared.set_regions(hello_regions(&cfg, None, 0));
        if cfg.role == tickmesh_replicate::Role::Ingest {
            // Clients belong on the region's gateway nodes (its public address); the cores
            // still serve health, metrics, stats and admin routes.
            shared.refuse_clients(
                cfg.regions
                    .iter()
                    .find(|e| e.region == cfg.region)
                    .map(|e| RegionLink { region: e.region.clone(), ws_url: e.ws_url.clone() }),
            );
        }
        for (src, seq) in journal.positions() {
            shared.note_position(src, seq);
        }
        shared.set_journal(journal.clone());
        let t0 = std::time::Instant::now();
        let books = shared.warm_books().context("reading the books back from the journal")?;
        tracing::info!(books, ms = t0.elapsed().as_millis() as u64, "books read back from the journal");

        let policy = Arc::new(tickmesh_replicate::ResidencyPolicy::new(&cfg.residency));
        let audit_dir = cfg.state_dir.join("audit");
        let audit = Arc::new(
            tickmesh_replicate::AuditLog::open(&audit_dir)
                .with_context(|| format!("opening the audit log in {}", audit_dir.display()))?,
        );
        let home_last = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let view = Arc::new(NodeView {
            cfg: cfg.clone(),
            mesh: std::sync::OnceLock::new(),
            mesh_ctl: std::sync::OnceLock::new(),
            joined: Default::default(),
            shared: shared.clone(),
            home_last: home_last.clone(),
            started_ns: tickmesh_codec::now_ns(),
            route: crate::route_http::RouteService::new(&cfg, shared.clone()),
            policy: policy.clone(),
            audit: Some(audit.clone()),
            // A restored region is not ready from the first probe: the home-gate thread
            // says why once it runs (and clears it when the peers have reported).
            home_held: Arc::new(std::sync::Mutex::new(
                (cfg.mesh.is_some() && cfg.state_dir.join(crate::dr::RESTORED_MARKER).exists()).then(|| {
                    "the journal was restored from a backup; checking the home sources with the peers".to_owned()
                }),
            )),
        });
        view.route.spawn_poller().context("starting the route-health thread")?;
        let stats = crate::stats::Stats::new(&cfg, shared.clone(), journal.clone());
        let (users, users_home) = match &cfg.userdata {
            Some(u) => {
                let (tier, home) = user_tier(&cfg, u, audit.clone())?;
                (Some(Arc::new(tier)), Some(home))
            }
            None => (None, None),
        };
        let (hub_tx, hub_rx) = crossbeam_channel::unbounded();
        let taps = Arc::new(crate::tiers::trading::Taps::default());
        // The tier reaches the hub through a slot that shutdown empties: handles a service
        // keeps must not hold the hub open after the node stops.
        let trading_hub = Arc::new(std::sync::RwLock::new(Some(hub_tx.clone())));
        let trading = {
            let slot = trading_hub.clone();
            let submit: crate::tiers::trading::Submit = Arc::new(move |rec| {
                let tx = slot.read().unwrap_or_else(|e| e.into_inner());
                tx.as_ref().is_some_and(|tx| tx.send(HubMsg::Local(Box::new(rec), tickmesh_codec::now_ns())).is_ok())
            });
            let src = cfg.trading.as_ref().map(|t| SourceId::new(&t.source)).transpose()?;
            crate::tiers::trading::TradingTier::new(cfg.region.clone(), src, submit, taps.clone())
        };
        let mut routes = node_routes(view.clone()).merge(stats.routes()).merge(crate::tiers::http::trading_routes(
            Arc::new(crate::tiers::http::TradingState { tier: trading.clone(), shared: shared.clone() }),
        ));
        if let Some(tier) = &users {
            let state = Arc::new(crate::tiers::http::UsersState { tier: tier.clone(), shared: shared.clone() });
            routes = routes.merge(crate::tiers::http::routes(state));
        }
        let (gateway, fanout) =
            Gateway::start(cfg.gateway.clone(), shared.clone(), routes).context("starting the gateway")?;

        let (appended_tx, appended_rx) = tokio::sync::watch::channel(0u64);

        let mut home = Vec::new();
        for f in &cfg.feeds {
            match f {
                FeedConfig::Synthetic(s) => {
                    let src = SourceId::new(&s.source)?;
                    // Known before the first record, so an early subscribe is not refused.
                    for sym in &s.symbols {
                        shared.learn_symbol(sym, src);
                    }
                    home.push(src);
                }
                FeedConfig::Capture(c) => home.push(SourceId::new(&c.source)?),
            }
        }
        // Captures are decoded up front (a bad file fails the start, with its path).
        let mut captures = Vec::new();
        for f in &cfg.feeds {
            if let FeedConfig::Capture(c) = f {
                let t0 = std::time::Instant::now();
                let recs = crate::cmd::ingest::decode_all(&c.format, &c.path, Some(&c.source), c.date.as_deref())
                    .with_context(|| format!("feed {}: decoding {}", c.source, c.path.display()))?;
                // Captures are decoded once, up front: the decode hop is the average cost per
                // record of that pass, counted once per record a live feed would sample.
                if !recs.is_empty() {
                    let per = t0.elapsed().as_nanos() as u64 / recs.len() as u64;
                    let n = (recs.len() as u64 / tickmesh_gateway::hops::SAMPLE_EVERY).max(1);
                    shared.hops().record_n(tickmesh_gateway::hops::Hop::Decode, per, n);
                }
                if recs.is_empty() {
                    anyhow::bail!(
                        "feed {}: {} holds no records; check --format {}",
                        c.source,
                        c.path.display(),
                        c.format
                    );
                }
                let src = SourceId::new(&c.source)?;
                for r in &recs {
                    shared.learn_symbol(r.header.sym.as_str(), src);
                }
                let rate = if c.pace == crate::config::Pace::Fast { 5_000_000 } else { c.rate };
                captures.push((src, rate, c.pace == crate::config::Pace::Recorded, recs));
            }
        }

        let mesh = match &cfg.mesh {
            None => None,
            Some(mcfg) => {
                let creds =
                    tickmesh_replicate::tls::Credentials::load(&mcfg.tls).context("loading mesh certificates")?;
                let tx = hub_tx.clone();
                let mesh = Mesh::start(MeshParams {
                    region: cfg.region.clone(),
                    role: cfg.role,
                    // Both checked on every cross-region transfer (send and receive), and every
                    // transfer, allowed or refused, is appended to the audit trail.
                    policy: policy.clone(),
                    audit: audit.clone(),
                    cfg: mcfg.clone(),
                    creds,
                    store: Arc::new(JournalStore(journal.clone())),
                    // The orders source is personal data and is not in this list: it is
                    // never offered to peers (the residency policy classes it `pii` too).
                    home: home.clone(),
                    appended: appended_rx,
                    inbound: Arc::new(move |d| {
                        let _ = tx.send(HubMsg::Remote(d));
                    }),
                })
                .context("starting the mesh")?;
                let _ = view.mesh.set(mesh.status());
                view.route.set_mesh(mesh.status());
                let _ = view.mesh_ctl.set(mesh.handle());
                if let (Some(tier), Some(home)) = (&users, &users_home) {
                    // Peers' user-data requests reach the tier; its own reach them.
                    mesh.set_user_handler(Arc::new(crate::tiers::userdata::TierHandler(tier.clone())));
                    home.set_mesh(mesh.handle());
                }
                stats.set_mesh(mesh.status());
                Some(mesh)
            }
        };

        let ready_view = view.clone();
        stats.set_ready(Box::new(move || {
            let peers = ready_view.mesh.get().map(|m| m.peers()).unwrap_or_default();
            let sources = ready_view.mesh.get().map(|m| m.sources()).unwrap_or_default();
            not_ready_reasons(&ready_view, tickmesh_codec::now_ns(), &peers, &sources)
        }));
        stats.start_sampler().context("starting the stats thread")?;
        let hub = {
            let journal = journal.clone();
            let tally = stats.tally();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("hub".into())
                .spawn(move || {
                    let _root = tracing::info_span!("hub", region = shared.region()).entered();
                    let out = HubOutputs { fanout, appended: appended_tx, home_last, taps, tally, shared };
                    run_hub(hub_rx, journal, out)
                })
                .context("starting the hub thread")?
        };

        let stop = Arc::new(AtomicBool::new(false));
        spawn_state_watch(view.clone(), stop.clone()).context("starting the region-state thread")?;
        // Each feed's thread, started at once or, with a mesh, once the peers confirmed
        // where the home sources stand (`home_gate`).
        let mut starters: Vec<FeedStarter> = Vec::new();
        for f in &cfg.feeds {
            match f {
                FeedConfig::Synthetic(s) => {
                    let feed = SyntheticFeed::new(s)?;
                    let src = feed.source();
                    let tx = hub_tx.clone();
                    let stop = stop.clone();
                    let rate = s.rate;
                    let shared = shared.clone();
                    starters.push(Box::new(move || {
                        std::thread::Builder::new().name(format!("ingest-{src}")).spawn(move || {
                            let _root =
                                tracing::info_span!("ingest", region = shared.region(), source = %src).entered();
                            run_synthetic(feed, rate, tx, stop, shared)
                        })
                    }));
                }
                FeedConfig::Capture(_) => {}
            }
        }
        for (src, rate, recorded, recs) in captures {
            let tx = hub_tx.clone();
            let stop = stop.clone();
            let region = cfg.region.clone();
            starters.push(Box::new(move || {
                std::thread::Builder::new().name(format!("ingest-{src}")).spawn(move || {
                    let _root = tracing::info_span!("ingest", region, source = %src).entered();
                    run_capture(recs, rate, recorded, tx, stop)
                })
            }));
        }
        let mut ingest = Vec::new();
        if cfg.journal.retain_bytes != 0 || cfg.journal.retain_age_secs != 0 {
            let (journal, stop) = (journal.clone(), stop.clone());
            let every = Duration::from_secs(cfg.journal.retention_every_secs);
            ingest.push(
                std::thread::Builder::new()
                    .name("journal-retention".into())
                    .spawn(move || run_retention(&journal, every, &stop))
                    .context("starting the journal retention thread")?,
            );
        }
        match (view.mesh.get(), view.mesh_ctl.get()) {
            (Some(status), Some(ctl)) if !home.is_empty() && !starters.is_empty() => {
                ctl.recover_home().context("starting the home-source check")?;
                let gate = HomeGateInputs {
                    region: cfg.region.clone(),
                    state_dir: cfg.state_dir.clone(),
                    strict: cfg.state_dir.join(crate::dr::RESTORED_MARKER).exists(),
                    peers: cfg.mesh.as_ref().map(|m| m.peers.len()).unwrap_or(0),
                    status: status.clone(),
                    ctl: ctl.clone(),
                    journal: journal.clone(),
                    held: view.home_held.clone(),
                    stop: stop.clone(),
                };
                ingest.push(
                    std::thread::Builder::new()
                        .name("home-gate".into())
                        .spawn(move || run_home_gate(gate, starters))
                        .context("starting the home-gate thread")?,
                );
            }
            _ => {
                // No home feeds to hold (or no mesh to ask): nothing to wait for.
                *view.home_held.lock().unwrap_or_else(|e| e.into_inner()) = None;
                for start in starters {
                    ingest.push(start().context("starting an ingest thread")?);
                }
            }
        }
        Ok(Node {
            cfg,
            gateway: Some(gateway),
            mesh,
            journal,
            stop,
            ingest,
            hub: Some(hub),
            hub_tx: Some(hub_tx),
            trading,
            trading_hub,
            users,
            mesh_ctl: view.mesh_ctl.get().cloned(),
            shared,
        })
    }

    /// The gateway's bound address.
    pub fn gateway_addr(&self) -> Option<std::net::SocketAddr> {
        self.gateway.as_ref().map(Gateway::local_addr)
    }

    /// The mesh's bound address.
    pub fn mesh_addr(&self) -> Option<std::net::SocketAddr> {
        self.mesh.as_ref().map(Mesh::local_addr)
    }

    /// The trading tier: subscribe to journaled records, publish users' order updates.
    pub fn trading(&self) -> crate::tiers::trading::TradingTier {
        self.trading.clone()
    }

    /// The user-data tier, when `[userdata]` is configured.
    pub fn users(&self) -> Option<Arc<crate::tiers::userdata::UserTier>> {
        self.users.clone()
    }

    /// The node's region.
    pub fn region(&self) -> &str {
        &self.cfg.region
    }

    /// Stops gracefully: a drain with reason `shutdown` (PROTOCOL.md "Drain and failover").
    ///
    /// 1. At once: `/readyz` turns 503 (the load balancer stops sending), upgrades get 503
    ///    naming the next region, every client gets `reconnect` (reason `shutdown`, the next
    ///    healthy region), and peers hear in the next heartbeat that this region is draining
    ///    (they drop it from route answers and `hello` lists).
    /// 2. Home feeds stop; the mesh keeps running, so the last home records reach the
    ///    peers while clients move there and `resume`.
    /// 3. Wait until every client left or `gateway.shutdown_grace_ms` passed (default
    ///    1.5 s), then close the rest with 1012, stop the mesh, let the hub drain into the
    ///    journal, and sync it.
    pub fn shutdown(mut self) {
        let grace = Duration::from_millis(self.cfg.gateway.shutdown_grace_ms);
        if self.gateway.is_some() {
            let plan = self.shared.start_drain_for(tickmesh_gateway::drain::DrainReason::Shutdown, grace);
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                clients = self.shared.sessions(),
                next = ?plan.next.as_ref().map(|n| &n.region),
                "shutting down: clients told to reconnect to the next region"
            );
        }
        if let Some(m) = &self.mesh_ctl {
            let _ = m.set_draining(true);
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in self.ingest.drain(..) {
            let _ = t.join();
        }
        if let Some(g) = self.gateway.take() {
            // The cores close the clients still here with 1012 at the end of the grace
            // (their drain tick runs every heartbeat_ms / 10, at most 100 ms): allow two.
            let deadline = std::time::Instant::now() + grace + Duration::from_millis(200);
            while self.shared.sessions() > 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            g.shutdown();
        }
        if let Some(m) = self.mesh.take() {
            m.shutdown();
        }
        self.trading_hub.write().unwrap_or_else(|e| e.into_inner()).take();
        drop(self.hub_tx.take());
        if let Some(h) = self.hub.take() {
            let _ = h.join();
        }
        if let Err(e) = self.journal.sync() {
            tracing::error!(error = %e, "journal sync at shutdown failed");
        }
    }
}

/// The user-data tier: its store (redb in the state directory, or PostgreSQL), other
/// regions reached over the mesh (the returned client gets the mesh once it runs), and
/// erasures written to the node's audit chain.
fn user_tier(
    cfg: &NodeConfig,
    u: &crate::tiers::userdata::UserDataConfig,
    trail: Arc<dyn crate::tiers::userdata::UserTrail>,
) -> anyhow::Result<(crate::tiers::userdata::UserTier, Arc<crate::tiers::userdata::MeshHome>)> {
    use crate::tiers::userdata::{Backend, PgStore, RedbStore, UserStore};
    let store: Arc<dyn UserStore> = match u.backend {
        Backend::Redb => Arc::new(RedbStore::open(&cfg.state_dir.join("userdata.redb"))?),
        Backend::Postgres => Arc::new(PgStore::connect(u.postgres_url.as_deref().unwrap_or_default())?),
    };
    let home = Arc::new(crate::tiers::userdata::MeshHome::new(cfg.region.clone(), Duration::from_secs(5)));
    let others = cfg.regions.iter().map(|r| r.region.clone()).filter(|r| *r != cfg.region).collect();
    let tier = crate::tiers::userdata::UserTier::new(
        cfg.region.clone(),
        others,
        store,
        home.clone(),
        trail,
        Duration::from_secs(u.cache_ttl_s),
    );
    Ok((tier, home))
}

fn trim_newline(b: &[u8]) -> &[u8] {
    let mut b = b;
    while let Some((last, rest)) = b.split_last() {
        if *last == b'\n' || *last == b'\r' {
            b = rest;
        } else {
            break;
        }
    }
    b
}

/// How long after start a peer not heard from yet counts as unknown, not down: links take
/// a dial and a heartbeat to come up, and a list without them would leave early clients
/// (and a stop's `reconnect`) nowhere to go.
const PEERS_SETTLE_NS: u64 = 5_000_000_000;

/// The `hello` failover list: this region first, then the others by round-trip time,
/// leaving out regions that are draining (their heartbeat says so) or known to be down
/// (no link, once `PEERS_SETTLE_NS` after start has passed). If that leaves no other
/// region, the non-draining ones are listed anyway: a guess beats no failover target.
fn hello_regions(cfg: &NodeConfig, mesh: Option<&MeshStatus>, since_start_ns: u64) -> Vec<RegionLink> {
    let names: Vec<String> = cfg.regions.iter().map(|r| r.region.clone()).collect();
    let peers = mesh.map(|m| m.peers()).unwrap_or_default();
    let draining: Vec<&str> = peers.iter().filter(|p| p.draining).map(|p| p.region.as_str()).collect();
    let settled = since_start_ns >= PEERS_SETTLE_NS;
    let down: Vec<&str> = peers.iter().filter(|p| settled && !p.receiving).map(|p| p.region.as_str()).collect();
    let order = crate::regions::failover_order(&cfg.region, &names);
    let list = |skip_down: bool| -> Vec<RegionLink> {
        order
            .iter()
            .filter(|r| {
                let gone = draining.contains(&r.as_str()) || (skip_down && down.contains(&r.as_str()));
                !gone
            })
            .filter_map(|r| cfg.regions.iter().find(|e| e.region == *r))
            .map(|e| RegionLink { region: e.region.clone(), ws_url: e.ws_url.clone() })
            .collect()
    };
    let up = list(true);
    if up.iter().any(|l| l.region != cfg.region) {
        up
    } else {
        list(false)
    }
}

/// Starts one feed's ingest thread.
type FeedStarter = Box<dyn FnOnce() -> std::io::Result<JoinHandle<()>> + Send>;

/// How long a node whose journal was not restored waits for its peers to report before its
/// home feeds start anyway (a region starting alone, or the first region of a mesh).
const HOME_WAIT_NS: u64 = 3_000_000_000;

/// What `run_home_gate` needs.
struct HomeGateInputs {
    region: String,
    state_dir: std::path::PathBuf,
    /// The journal came from a backup (`restore` / `recover apply` left the marker): the
    /// feeds wait for a peer however long it takes.
    strict: bool,
    /// Configured peers.
    peers: usize,
    status: Arc<MeshStatus>,
    ctl: MeshHandle,
    journal: Arc<Journal>,
    held: Arc<std::sync::Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
}

/// The gate's answer.
#[derive(Debug, PartialEq, Eq)]
enum HomeGate {
    /// Hold the feeds, for this reason.
    Wait(String),
    /// Start them (the reason is logged).
    Start(String),
}

/// May the home feeds start? Only once no peer holds a record of a home source beyond this
/// node's journal (else the sequencer would give new records numbers peers already hold
/// for others). `journaled` is this node's last `seq` of a source; `home` is what the
/// reporting peers hold (`MeshStatus::home`); `elapsed_ns` counts from the node's start.
fn home_gate(
    strict: bool,
    peers: usize,
    elapsed_ns: u64,
    home: &[tickmesh_replicate::HomeView],
    journaled: impl Fn(&str) -> u64,
) -> HomeGate {
    let mut reporters: Vec<&str> = home.iter().flat_map(|h| h.reported_by.iter().map(String::as_str)).collect();
    reporters.sort_unstable();
    reporters.dedup();
    if reporters.is_empty() {
        return if strict {
            HomeGate::Wait(
                "the journal was restored from a backup and no peer has reported its positions yet; the home feeds start once a peer is reachable (to start them now, accepting that seqs the peers hold may be reused, restart with `tickmesh node --home-without-peers`)".into(),
            )
        } else if peers == 0 {
            // Nobody to ask (a lone region): its journal is the only record of its sources.
            HomeGate::Start("no mesh peers configured; starting after the journal's own positions".into())
        } else if elapsed_ns >= HOME_WAIT_NS {
            HomeGate::Start(format!(
                "no peer reported within {} s; starting after the journal's own positions",
                HOME_WAIT_NS / 1_000_000_000
            ))
        } else {
            HomeGate::Wait("waiting for a peer to report the home sources' positions".into())
        };
    }
    for h in home {
        let ours = journaled(&h.src);
        if ours < h.peers_seq {
            return HomeGate::Wait(format!(
                "{}: journal at seq {ours}, peers hold up to {}; taking the rest from them",
                h.src, h.peers_seq
            ));
        }
    }
    if reporters.len() < peers && elapsed_ns < HOME_WAIT_NS {
        return HomeGate::Wait(format!("{} of {peers} peers reported; waiting for the others", reporters.len()));
    }
    let at: Vec<String> = home.iter().map(|h| format!("{} after seq {}", h.src, journaled(&h.src))).collect();
    HomeGate::Start(format!("peers {} reported; home sources continue: {}", reporters.join(", "), at.join(", ")))
}

/// The `home-gate` thread: holds the home feeds until `home_gate` says go, then starts
/// them and waits for them (so `Node::shutdown` joins them through this thread).
fn run_home_gate(g: HomeGateInputs, starters: Vec<FeedStarter>) {
    let _root = tracing::info_span!("home-gate", region = %g.region).entered();
    let started = std::time::Instant::now();
    let mut last_log: Option<(std::time::Instant, String)> = None;
    let go = loop {
        if g.stop.load(Ordering::Relaxed) {
            *g.held.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return;
        }
        let home = g.status.home();
        let elapsed = started.elapsed().as_nanos() as u64;
        let journaled = |src: &str| SourceId::new(src).ok().and_then(|s| g.journal.last_seq(&s)).unwrap_or(0);
        let decision = if home.is_empty() {
            // The mesh has not published its first status yet.
            HomeGate::Wait("the mesh is starting".into())
        } else {
            home_gate(g.strict, g.peers, elapsed, &home, journaled)
        };
        // Readiness says why only when the wait is more than the few seconds of an
        // ordinary start: after a restore, or while taking records back from peers.
        let serious = g.strict || home.iter().any(|h| journaled(&h.src) < h.peers_seq);
        match decision {
            HomeGate::Start(why) => break why,
            HomeGate::Wait(why) => {
                let due = last_log.as_ref().is_none_or(|(t, w)| *w != why || t.elapsed() >= Duration::from_secs(10));
                if due && serious {
                    tracing::warn!(reason = %why, "home feeds held");
                } else if due {
                    tracing::info!(reason = %why, "home feeds wait for the peers' positions");
                }
                if due {
                    last_log = Some((std::time::Instant::now(), why.clone()));
                }
                *g.held.lock().unwrap_or_else(|e| e.into_inner()) = serious.then_some(why);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = g.ctl.end_home_recovery();
    let marker = g.state_dir.join(crate::dr::RESTORED_MARKER);
    if marker.exists() {
        if let Err(e) = std::fs::remove_file(&marker) {
            tracing::error!(file = %marker.display(), error = %e, "cannot remove the restore marker; the next start waits for a peer again");
        }
    }
    tracing::info!(reason = %go, waited_ms = started.elapsed().as_millis() as u64, "home feeds start");
    *g.held.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let mut threads = Vec::new();
    for start in starters {
        match start() {
            Ok(t) => threads.push(t),
            Err(e) => tracing::error!(error = %e, "cannot start an ingest thread"),
        }
    }
    for t in threads {
        let _ = t.join();
    }
}

/// How often the `region-state` thread looks at the drain flag and the peers.
const STATE_WATCH_EVERY: Duration = Duration::from_millis(200);

/// Starts the `region-state` thread: it tells the mesh when this region's drain flag
/// changes (an admin drain or undrain; peers then see it in the heartbeat), and keeps the
/// `hello` failover list current (peers that went down or are draining leave it, so
/// `reconnect` and new clients name a region that takes them). Ends with the node.
fn spawn_state_watch(view: Arc<NodeView>, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    let weak = Arc::downgrade(&view);
    drop(view);
    std::thread::Builder::new().name("region-state".into()).spawn(move || {
        let mut told = false;
        while !stop.load(Ordering::Relaxed) {
            let Some(v) = weak.upgrade() else { return };
            let draining = v.shared.is_draining();
            if draining != told {
                if let Some(m) = v.mesh_ctl.get() {
                    if m.set_draining(draining).is_err() {
                        return; // the mesh stopped: the node is going away
                    }
                }
                told = draining;
            }
            let since = tickmesh_codec::now_ns().saturating_sub(v.started_ns);
            v.shared.set_regions(hello_regions(&v.cfg, v.mesh.get().map(|m| m.as_ref()), since));
            drop(v);
            std::thread::sleep(STATE_WATCH_EVERY);
        }
    })?;
    Ok(())
}

/// Where the hub's records go once journaled, besides the journal itself.
struct HubOutputs {
    /// The gateway's fan-out.
    fanout: Fanout,
    /// The mesh senders' wake-up (count of records appended).
    appended: tokio::sync::watch::Sender<u64>,
    /// When each home source last had a record journaled (feed staleness).
    home_last: Arc<std::sync::Mutex<std::collections::BTreeMap<SourceId, u64>>>,
    /// The trading tier's in-process subscribers.
    taps: Arc<crate::tiers::trading::Taps>,
    /// Counters behind /v1/stats and /v1/vwap.
    tally: crate::stats::HubTally,
    /// Latency per hop (and the region, for the thread's span).
    shared: Arc<GatewayShared>,
}

fn run_hub(rx: Receiver<HubMsg>, journal: Arc<Journal>, out: HubOutputs) {
    let HubOutputs { mut fanout, appended, home_last, taps, mut tally, shared } = out;
    use tickmesh_gateway::hops::{sampled, Hop};
    let hops = shared.hops();
    let mut appended_n = 0u64;
    let publish = |fanout: &mut Fanout, tally: &mut crate::stats::HubTally, bytes: &[u8]| {
        // SAFETY: local records were encoded by `Record::encode` in this process, and
        // remote ones were validated by the mesh with `access_untrusted`.
        let rec = unsafe { tickmesh_codec::access_trusted(bytes) };
        fanout.publish(&rec);
        taps.offer(bytes);
        tally.observe(&rec);
    };
    let mut fresh: Vec<SourceId> = Vec::new();
    let mut seqs: std::collections::BTreeMap<SourceId, Sequencer> = std::collections::BTreeMap::new();
    while let Ok(first) = rx.recv() {
        let mut n = 0u64;
        fresh.clear();
        for msg in std::iter::once(first).chain(rx.try_iter().take(4096)) {
            match msg {
                HubMsg::Local(mut rec, handed_ns) => {
                    let src = rec.header.src;
                    let seq = seqs
                        .entry(src)
                        .or_insert_with(|| Sequencer::new(src, Seq(journal.last_seq(&src).unwrap_or(0))));
                    let before = seq.last();
                    seq.stamp(&mut rec, tickmesh_codec::now_ns());
                    let bytes = rec.to_bytes();
                    match journal.append(&bytes) {
                        Ok(_) => {
                            if sampled(rec.header.seq.0) {
                                // Hand-over to appended: queueing to the hub, sequencing, encoding
                                // and the journal write (ts_ingest is stamped here, just before).
                                hops.record(Hop::Journal, tickmesh_codec::now_ns().saturating_sub(handed_ns));
                            }
                            publish(&mut fanout, &mut tally, &bytes);
                            n += 1;
                            if !fresh.contains(&src) {
                                fresh.push(src);
                            }
                        }
                        Err(e) => {
                            // The number goes back: the source has no hole, and /readyz
                            // reports the journal (and then the feed) until it recovers.
                            *seq = Sequencer::new(src, before);
                            metrics::counter!("tickmesh_node_home_records_refused_total").increment(1);
                            tracing::error!(source = %src, error = %e, "journal refused a home record; it was not sequenced or published");
                        }
                    }
                }
                HubMsg::Remote(batch) => {
                    let mesh_ns = batch.hop_ns();
                    let mut rest: &[u8] = &batch.frames;
                    while let Ok(Some((rec, tail))) = frame::split_frame(rest) {
                        rest = tail;
                        match journal.append(rec) {
                            Ok(_) => {
                                // The mesh hop is the batch's receipt here minus its `sent_ns`
                                // (stamped by the peer when it made the batch): the link delay
                                // plus both mesh ends, without the home region's journal hop.
                                // SAFETY: the mesh validated every record with `access_untrusted`.
                                let r = unsafe { tickmesh_codec::access_trusted(rec) };
                                if sampled(r.seq()) {
                                    hops.record_mesh(r.source_id().as_str(), mesh_ns);
                                }
                                publish(&mut fanout, &mut tally, rec);
                                n += 1;
                            }
                            Err(tickmesh_journal::Error::OutOfOrder { .. }) => {
                                metrics::counter!("tickmesh_node_duplicates_dropped_total").increment(1);
                            }
                            Err(e) => tracing::error!(error = %e, "journal append of a peer record failed"),
                        }
                    }
                }
            }
        }
        if !fresh.is_empty() {
            let now = tickmesh_codec::now_ns();
            let mut m = home_last.lock().unwrap_or_else(|e| e.into_inner());
            for s in &fresh {
                m.insert(*s, now);
            }
        }
        tally.flush();
        if n > 0 {
            appended_n += n;
            metrics::counter!("tickmesh_node_records_total").increment(n);
            appended.send_replace(appended_n);
        }
    }
}

fn run_synthetic(
    mut feed: SyntheticFeed,
    rate: u32,
    tx: Sender<HubMsg>,
    stop: Arc<AtomicBool>,
    shared: Arc<GatewayShared>,
) {
    let mut pacer = Pacer::new(rate, tickmesh_codec::now_ns());
    let mut made = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let now = tickmesh_codec::now_ns();
        for _ in 0..pacer.due(now) {
            // The synthetic feed's "decode" is making the record; timed for one in 64.
            made += 1;
            let timed = tickmesh_gateway::hops::sampled(made).then(std::time::Instant::now);
            let rec = feed.next_record(now);
            if let Some(t) = timed {
                shared.hops().record(tickmesh_gateway::hops::Hop::Decode, t.elapsed().as_nanos() as u64);
            }
            if tx.send(HubMsg::Local(Box::new(rec), tickmesh_codec::now_ns())).is_err() {
                return;
            }
        }
        let wait = pacer.wait_ns(tickmesh_codec::now_ns()).clamp(50_000, 10_000_000);
        std::thread::sleep(Duration::from_nanos(wait));
    }
}

/// Replays decoded capture records in a loop, at `rate` records per second or, with
/// `recorded`, at the capture's own pace. At the end of each pass every level the pass left
/// standing is set to 0, so books start clean again.
fn run_capture(
    recs: Vec<tickmesh_codec::Record>,
    rate: u32,
    recorded: bool,
    tx: Sender<HubMsg>,
    stop: Arc<AtomicBool>,
) {
    use std::collections::BTreeMap;
    use tickmesh_codec::{Body, Level, Qty};
    let mut pacer = Pacer::new(rate, tickmesh_codec::now_ns());
    let mut standing: BTreeMap<(tickmesh_codec::Symbol, u32, u8, i64), tickmesh_codec::Record> = BTreeMap::new();
    let mut i = 0usize;
    // Recorded pace: record i is due at pass_start + (ts_event[i] - ts_event[0]).
    let mut pass_start = tickmesh_codec::now_ns();
    let first_ts = recs.first().map(|r| r.header.ts_event).unwrap_or(0);
    let send = |rec: &mut tickmesh_codec::Record| -> bool {
        tx.send(HubMsg::Local(Box::new(*rec), tickmesh_codec::now_ns())).is_ok()
    };
    while !stop.load(Ordering::Relaxed) {
        let now = tickmesh_codec::now_ns();
        let due = if recorded {
            let mut n = 0u64;
            while n < 10_000 && i + (n as usize) < recs.len() {
                let at = pass_start + recs[i + n as usize].header.ts_event.saturating_sub(first_ts);
                if at > now {
                    break;
                }
                n += 1;
            }
            if i == recs.len() {
                n = 1;
            }
            if n == 0 {
                let next = pass_start + recs[i].header.ts_event.saturating_sub(first_ts);
                std::thread::sleep(Duration::from_nanos(next.saturating_sub(now).min(200_000_000)));
                continue;
            }
            n
        } else {
            pacer.due(now)
        };
        for _ in 0..due {
            if i == recs.len() {
                pass_start = tickmesh_codec::now_ns();
                for (_, mut r) in std::mem::take(&mut standing) {
                    if let Body::Level(l) = r.body {
                        r.body = Body::Level(Level { qty: Qty::ZERO, count: 0, ..l });
                        r.header.ts_event = tickmesh_codec::now_ns();
                        if !send(&mut r) {
                            return;
                        }
                    }
                }
                i = 0;
            }
            let mut rec = recs[i];
            i += 1;
            if let Body::Level(l) = rec.body {
                let key = (rec.header.sym, rec.header.instrument.0, l.side as u8, l.px.raw());
                if l.qty.raw() > 0 {
                    standing.insert(key, rec);
                } else {
                    standing.remove(&key);
                }
            }
            if !send(&mut rec) {
                return;
            }
        }
        if !recorded {
            let wait = pacer.wait_ns(tickmesh_codec::now_ns()).clamp(50_000, 10_000_000);
            std::thread::sleep(Duration::from_nanos(wait));
        }
    }
}

/// The journal as the mesh's record store.
struct JournalStore(Arc<Journal>);

impl RecordStore for JournalStore {
    fn positions(&self) -> Vec<(SourceId, u64)> {
        self.0.positions()
    }
    fn cursor(&self, src: &SourceId, after: u64) -> tickmesh_replicate::Result<Box<dyn Cursor>> {
        Ok(Box::new(JournalCursor { journal: self.0.clone(), src: *src, after, reader: None }))
    }
}

struct JournalCursor {
    journal: Arc<Journal>,
    src: SourceId,
    after: u64,
    reader: Option<tickmesh_journal::Reader>,
}

impl Cursor for JournalCursor {
    fn fill(&mut self, out: &mut Vec<u8>, max_bytes: usize) -> tickmesh_replicate::Result<usize> {
        let store_err = |e: tickmesh_journal::Error| tickmesh_replicate::Error::Store(e.to_string());
        if self.reader.is_none() {
            if self.journal.last_seq(&self.src).is_none_or(|l| l <= self.after) {
                return Ok(0);
            }
            self.reader = Some(self.journal.reader(&self.src, self.after + 1).map_err(store_err)?);
        }
        let Some(reader) = self.reader.as_mut() else { return Ok(0) };
        let mut n = 0;
        while out.len() < max_bytes {
            match reader.next().map_err(store_err)? {
                Some(rec) => {
                    self.after = rec.seq();
                    frame::put_frame(rec.bytes(), out);
                    n += 1;
                }
                None => break,
            }
        }
        Ok(n)
    }
}

fn node_routes(view: Arc<NodeView>) -> Router {
    let route = crate::route_http::routes(view.route.clone());
    let audit = crate::audit_http::router(view.shared.clone(), view.audit.clone());
    let admin = crate::admin_api::routes(&view.cfg.region, &view.cfg.regions, view.shared.clone());
    Router::new()
        .route("/readyz", get(readyz))
        .route("/v1/regions", get(regions))
        .route("/v1/admin/peers", post(add_peer))
        .route("/v1/latency", get(latency))
        .with_state(view)
        .merge(route)
        .merge(audit)
        .merge(admin)
}

/// `POST /v1/admin/peers` body.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPeer {
    region: String,
    addr: String,
    ws_url: String,
    http_url: String,
}

/// `POST /v1/admin/peers` (token with role `admin`): a region joins the mesh at runtime.
/// This node dials it and accepts its certificate from now on; it appears in `/v1/regions`.
/// The joining region, started with this region among its peers, backfills everything
/// through the same subscribe-after-seq path as any catch-up.
async fn add_peer(State(v): State<Arc<NodeView>>, req: axum::extract::Request) -> Response {
    use tickmesh_gateway::http_error;
    let query = req.uri().query().map(str::to_owned);
    let authz = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    let Some(token) = tickmesh_gateway::auth::token_from_request(query.as_deref(), authz) else {
        return http_error(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "no token; pass Authorization: Bearer JWT with role admin",
        );
    };
    let claims = match v.shared.verifier().verify(&token, tickmesh_codec::now_ns() / 1_000_000_000) {
        Ok(c) => c,
        Err(e) => return http_error(StatusCode::UNAUTHORIZED, e.code(), &e.to_string()),
    };
    if !claims.has_role("admin") {
        return http_error(StatusCode::FORBIDDEN, "forbidden", "adding a mesh peer needs a token with role admin");
    }
    let body = match axum::body::to_bytes(req.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(e) => return http_error(StatusCode::BAD_REQUEST, "bad_request", &format!("cannot read the body: {e}")),
    };
    let p: NewPeer = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("body must be JSON {{\"region\", \"addr\", \"ws_url\", \"http_url\"}}: {e}"),
            )
        }
    };
    let mut problems = Vec::new();
    let mcfg = tickmesh_replicate::MeshConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        peers: vec![tickmesh_replicate::PeerConfig { region: p.region.clone(), addr: p.addr.clone() }],
        tls: tickmesh_replicate::tls::TlsFiles { ca_cert: "-".into(), cert: "-".into(), key: "-".into() },
        reconnect_ms: 100,
        upstream: None,
        io_thread: Default::default(),
    };
    mcfg.validate(&v.cfg.region, &mut problems);
    if p.region.is_empty() || !p.region.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-') {
        problems.push(format!("region {:?} is not a region name; use lowercase letters, digits and '-'", p.region));
    }
    if !problems.is_empty() {
        return http_error(StatusCode::BAD_REQUEST, "bad_request", &problems.join("; "));
    }
    let Some(ctl) = v.mesh_ctl.get() else {
        return http_error(
            StatusCode::CONFLICT,
            "no_mesh",
            "this node runs without [mesh]; configure it to join peers",
        );
    };
    if let Err(e) = ctl.add_peer(tickmesh_replicate::PeerConfig { region: p.region.clone(), addr: p.addr.clone() }) {
        return http_error(StatusCode::SERVICE_UNAVAILABLE, "mesh_stopped", &e.to_string());
    }
    {
        let mut j = v.joined.lock().unwrap_or_else(|e| e.into_inner());
        j.retain(|e| e.region != p.region);
        j.push(crate::config::RegionEntry { region: p.region.clone(), ws_url: p.ws_url, http_url: p.http_url });
    }
    tracing::info!(peer = %p.region, addr = %p.addr, by = %claims.sub, "mesh peer added by admin call");
    (StatusCode::OK, Json(json!({"added": p.region, "addr": p.addr}))).into_response()
}

async fn latency(State(v): State<Arc<NodeView>>) -> Response {
    Json(v.shared.hops().report(&v.cfg.region)).into_response()
}

/// Why this region should not take traffic now (empty: ready).
fn not_ready_reasons(
    v: &NodeView,
    now_ns: u64,
    peers: &[tickmesh_replicate::PeerState],
    sources: &[tickmesh_replicate::SourceView],
) -> Vec<String> {
    let mut reasons = Vec::new();
    if v.shared.is_draining() {
        reasons.push(format!("region {} is draining", v.cfg.region));
    }
    if let Some(why) = v.home_held.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        reasons.push(format!("home feeds not started: {why}"));
    }
    let limit = v.cfg.ready.max_feed_staleness_ms;
    if limit > 0 {
        let last = v.home_last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for f in &v.cfg.feeds {
            let Ok(src) = SourceId::new(f.source()) else { continue };
            let since = last.get(&src).copied().unwrap_or(v.started_ns);
            let age_ms = now_ns.saturating_sub(since) / 1_000_000;
            if age_ms > limit {
                reasons.push(format!(
                    "feed {src} has had no record for {age_ms} ms (ready.max_feed_staleness_ms = {limit})"
                ));
            }
        }
    }
    let reachable = peers.iter().filter(|p| p.receiving).count();
    if reachable < v.cfg.ready.min_peers_reachable {
        reasons.push(format!(
            "{reachable} peer(s) reachable, fewer than ready.min_peers_reachable = {}",
            v.cfg.ready.min_peers_reachable
        ));
    }
    // Behind on a replicated source: records exist upstream that this node has not got, and
    // the newest it has got is older than the limit. A source that is merely quiet is not
    // behind (no record waits upstream), so neither a quiet venue nor a lost peer trips it.
    let limit = v.cfg.ready.max_replication_lag_ms;
    if limit > 0 {
        for s in sources.iter().filter(|s| s.lag_records > 0) {
            let behind = s.lag_ms.is_none_or(|ms| ms > limit as f64);
            if behind {
                let age = s.lag_ms.map_or("none received yet".to_owned(), |ms| format!("newest {ms:.0} ms old"));
                reasons.push(format!(
                    "source {} is {} records behind its upstream ({age}; ready.max_replication_lag_ms = {limit})",
                    s.src, s.lag_records
                ));
            }
        }
    }
    if let Err(e) = journal_probe(&v.cfg.state_dir) {
        reasons.push(format!("journal directory is not writable ({e}); check the disk and its free space"));
    }
    reasons
}

/// Writes and removes a probe file in the journal directory: can the journal be written?
pub(crate) fn journal_probe(state_dir: &std::path::Path) -> std::io::Result<()> {
    // A name per call: readiness is checked by HTTP handlers on every core and by the
    // stats thread at once, and two probes must not remove each other's file.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let probe = state_dir.join("journal").join(format!(".ready-probe-{n}"));
    std::fs::write(&probe, b"ok").and_then(|()| std::fs::remove_file(&probe))
}

async fn readyz(State(v): State<Arc<NodeView>>) -> Response {
    let peers = v.mesh.get().map(|m| m.peers()).unwrap_or_default();
    let sources = v.mesh.get().map(|m| m.sources()).unwrap_or_default();
    let reasons = not_ready_reasons(&v, tickmesh_codec::now_ns(), &peers, &sources);
    let peer_map: serde_json::Map<String, serde_json::Value> = peers
        .iter()
        .map(|p| (p.region.clone(), json!({"receiving": p.receiving, "sending": p.sending, "rtt_ms": p.rtt_ms})))
        .collect();
    let ready = reasons.is_empty();
    let body = json!({"ready": ready, "region": v.cfg.region, "reasons": reasons, "peers": peer_map});
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

async fn regions(State(v): State<Arc<NodeView>>) -> Response {
    let peers = v.mesh.get().map(|m| m.peers()).unwrap_or_default();
    let sources = v.mesh.get().map(|m| m.sources()).unwrap_or_default();
    let mut entries = v.cfg.regions.clone();
    for j in v.joined.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        if !entries.iter().any(|e| e.region == j.region) {
            entries.push(j.clone());
        }
    }
    let names: Vec<String> = entries.iter().map(|r| r.region.clone()).collect();
    // Refresh the hello list while we are at it: regions that went down leave it.
    let since = tickmesh_codec::now_ns().saturating_sub(v.started_ns);
    v.shared.set_regions(hello_regions(&v.cfg, v.mesh.get().map(|m| m.as_ref()), since));
    let out: Vec<serde_json::Value> = crate::regions::failover_order(&v.cfg.region, &names)
        .into_iter()
        .filter_map(|r| entries.iter().find(|e| e.region == r))
        .map(|e| {
            // Replication lag of the sources whose home is that region, as this node sees it.
            let lag: serde_json::Map<String, serde_json::Value> = sources
                .iter()
                .filter(|s| s.origin == e.region)
                .map(|s| {
                    let l = json!({"records": s.lag_records, "ms": s.lag_ms, "seq": s.seq, "upstream": s.upstream});
                    (s.src.clone(), l)
                })
                .collect();
            let me = e.region == v.cfg.region;
            let peer = peers.iter().find(|p| p.region == e.region);
            let healthy = me || peer.is_some_and(|p| p.receiving);
            let state = if (me && v.shared.is_draining()) || (healthy && peer.is_some_and(|p| p.draining)) {
                "draining"
            } else if healthy {
                "active"
            } else {
                "down"
            };
            json!({
                "region": e.region, "ws_url": e.ws_url, "http_url": e.http_url, "state": state,
                "healthy": healthy, "rtt_ms": if me { 0.0 } else { peer.map(|p| p.rtt_ms).unwrap_or(0.0) },
                "weight": v.route.weight(&e.region), "lag": lag,
            })
        })
        .collect();
    Json(out).into_response()
}

/// Applies the journal's retention every `every` until `stop`: without it `retain_bytes` and
/// `retain_age_secs` would never delete anything and the journal would fill the disk.
fn run_retention(journal: &Journal, every: Duration, stop: &AtomicBool) {
    let mut next = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if std::time::Instant::now() >= next {
            next += every;
            match journal.apply_retention(tickmesh_codec::now_ns()) {
                Ok(report) if !report.sources.is_empty() => {
                    let freed = report.bytes_freed();
                    metrics::counter!("tickmesh_journal_retention_freed_bytes_total").increment(freed);
                    for s in &report.sources {
                        tracing::info!(
                            source = %s.source_id,
                            segments = s.segments_deleted,
                            bytes = s.bytes_freed,
                            first_seq = s.first_seq,
                            "journal retention deleted old segments"
                        );
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "journal retention failed; retrying at the next round"),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickmesh_gateway::auth::Verifier;

    fn view(dir: &std::path::Path) -> NodeView {
        let cfg: NodeConfig = toml::from_str(&format!(
            "region = \"us-east-1\"\nstate_dir = {:?}\n[ready]\nmax_feed_staleness_ms = 1000\nmin_peers_reachable = 1\n[[feeds]]\nkind = \"synthetic\"\nsource = \"SYN.USE1\"\n",
            dir
        ))
        .unwrap();
        std::fs::create_dir_all(dir.join("journal")).unwrap();
        let shared = Arc::new(GatewayShared::new("us-east-1", Verifier::new(), Box::new(String::new)));
        NodeView {
            route: crate::route_http::RouteService::new(&cfg, shared.clone()),
            shared,
            cfg,
            mesh: std::sync::OnceLock::new(),
            mesh_ctl: std::sync::OnceLock::new(),
            joined: Default::default(),
            home_last: Default::default(),
            started_ns: 1_000_000_000,
            policy: Arc::new(tickmesh_replicate::ResidencyPolicy::new(&Default::default())),
            audit: None,
            home_held: Default::default(),
        }
    }

    #[test]
    fn readiness_names_every_threshold_crossed() {
        let dir = tempfile::tempdir().unwrap();
        let v = view(dir.path());
        let src = SourceId::new("SYN.USE1").unwrap();
        let peer = |receiving| tickmesh_replicate::PeerState {
            region: "eu-west-1".into(),
            receiving,
            sending: true,
            rtt_ms: 1.0,
            ..Default::default()
        };
        v.home_last.lock().unwrap().insert(src, 2_000_000_000);
        assert!(not_ready_reasons(&v, 2_500_000_000, &[peer(true)], &[]).is_empty());
        let r = not_ready_reasons(&v, 3_500_000_000, &[peer(false)], &[]);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r[0].starts_with("feed SYN.USE1 has had no record for 1500 ms"), "{r:?}");
        assert!(r[1].starts_with("0 peer(s) reachable"), "{r:?}");
        v.shared.set_draining(true);
        assert!(not_ready_reasons(&v, 2_500_000_000, &[peer(true)], &[])[0].contains("draining"));
        v.shared.set_draining(false);
        std::fs::remove_dir_all(dir.path().join("journal")).unwrap();
        let r = not_ready_reasons(&v, 2_500_000_000, &[peer(true)], &[]);
        assert!(r[0].starts_with("journal directory is not writable"), "{r:?}");
        std::fs::create_dir_all(dir.path().join("journal")).unwrap();
        // Replication: behind and old is not ready; quiet (nothing upstream) or fresh is.
        let src = |lag_records, lag_ms| tickmesh_replicate::SourceView {
            src: "SYN.EUW1".into(),
            origin: "eu-west-1".into(),
            upstream: Some("eu-west-1".into()),
            seq: 10,
            lag_records,
            lag_ms,
        };
        let ok = |s| not_ready_reasons(&v, 2_500_000_000, &[peer(true)], &[s]).is_empty();
        assert!(ok(src(0, Some(60_000.0))), "a quiet source is not behind");
        assert!(ok(src(5, Some(200.0))), "a few records in flight are not behind");
        assert!(!ok(src(5, Some(40_000.0))));
        let r = not_ready_reasons(&v, 2_500_000_000, &[peer(true)], &[src(500, None)]);
        assert!(r[0].starts_with("source SYN.EUW1 is 500 records behind its upstream (none received yet"), "{r:?}");
    }

    #[test]
    fn home_feeds_wait_for_the_peers_positions() {
        let hv = |seq, peers_seq, by: &[&str]| tickmesh_replicate::HomeView {
            src: "SYN.USE1".into(),
            seq,
            peers_seq,
            reported_by: by.iter().map(|s| s.to_string()).collect(),
        };
        let start = |g: &HomeGate| matches!(g, HomeGate::Start(_));
        // Restored: no peer yet means wait, however long; the message names the override.
        let g = home_gate(true, 2, 60_000_000_000, &[hv(100, 0, &[])], |_| 100);
        assert!(matches!(&g, HomeGate::Wait(w) if w.contains("--home-without-peers")), "{g:?}");
        // Not restored: a lone region starts after the wait.
        assert!(!start(&home_gate(false, 2, 1_000_000_000, &[hv(100, 0, &[])], |_| 100)));
        // No peers configured: nobody to wait for.
        assert!(start(&home_gate(false, 0, 0, &[hv(100, 0, &[])], |_| 100)));
        assert!(start(&home_gate(false, 2, HOME_WAIT_NS, &[hv(100, 0, &[])], |_| 100)));
        // A peer holds more: wait until the journal has it, restored or not, however long.
        for strict in [true, false] {
            let g = home_gate(strict, 2, 60_000_000_000, &[hv(100, 250, &["b"])], |_| 249);
            assert!(matches!(&g, HomeGate::Wait(w) if w.contains("seq 249") && w.contains("250")), "{g:?}");
            assert!(start(&home_gate(strict, 2, 60_000_000_000, &[hv(250, 250, &["b"])], |_| 250)));
        }
        // Caught up with one of two peers: the other gets the wait period to report.
        assert!(!start(&home_gate(true, 2, 1_000_000_000, &[hv(250, 250, &["b"])], |_| 250)));
        assert!(start(&home_gate(true, 2, 1_000_000_000, &[hv(250, 250, &["b", "c"])], |_| 250)));
    }
}
