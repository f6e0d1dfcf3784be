//! State the node shares with every gateway core: region identity, the failover list,
//! the symbol directory, positions, token verification and metrics rendering.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tickmesh_codec::SourceId;

use crate::auth::Verifier;

/// One entry of the `hello` failover list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RegionLink {
    /// Region name.
    pub region: String,
    /// Its WebSocket URL.
    pub ws_url: String,
}

/// Renders the Prometheus text for `/metrics`.
pub type MetricsFn = Box<dyn Fn() -> String + Send + Sync>;

/// Shared by the node and all cores. Locks here are off the per-record path: the fan-out
/// takes them only when it sees a new (source, symbol) pair, and sessions only on connect
/// and subscribe.
pub struct GatewayShared {
    region: String,
    verifier: Verifier,
    regions: RwLock<Vec<RegionLink>>,
    directory: RwLock<BTreeMap<String, BTreeSet<SourceId>>>,
    positions: Mutex<BTreeMap<SourceId, u64>>,
    metrics: MetricsFn,
    draining: AtomicBool,
    drain: Mutex<Option<crate::drain::DrainPlan>>,
    drain_generation: std::sync::atomic::AtomicU64,
    /// Open client sessions on every core (a shutdown waits for them to leave).
    sessions: std::sync::atomic::AtomicUsize,
    journal: std::sync::OnceLock<std::sync::Arc<tickmesh_journal::Journal>>,
    hops: crate::hops::Hops,
    /// Books read from the journal at start-up and the positions they are at: each core
    /// starts from a copy.
    warm: Mutex<Option<WarmBooks>>,
    /// Set on an ingest-role node: `/v1/ws` is refused, pointing at the region's gateway
    /// nodes (the inner `Option` is the region's public WebSocket address, if known).
    no_clients: std::sync::OnceLock<Option<RegionLink>>,
}

type WarmBooks = (Arc<crate::books::BookMap>, BTreeMap<SourceId, u64>);

impl std::fmt::Debug for GatewayShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayShared").field("region", &self.region).finish_non_exhaustive()
    }
}

impl GatewayShared {
    /// New shared state for `region`.
    pub fn new(region: impl Into<String>, verifier: Verifier, metrics: MetricsFn) -> Self {
        GatewayShared {
            region: region.into(),
            verifier,
            regions: RwLock::new(Vec::new()),
            directory: RwLock::new(BTreeMap::new()),
            positions: Mutex::new(BTreeMap::new()),
            metrics,
            draining: AtomicBool::new(false),
            drain: Mutex::new(None),
            drain_generation: std::sync::atomic::AtomicU64::new(0),
            sessions: std::sync::atomic::AtomicUsize::new(0),
            journal: std::sync::OnceLock::new(),
            hops: crate::hops::Hops::new(),
            warm: Mutex::new(None),
            no_clients: std::sync::OnceLock::new(),
        }
    }

    /// Makes this node refuse client WebSockets (HTTP 503, code `ingest_node`) for its
    /// life: an ingest-role node keeps its HTTP routes and the mesh, and its clients belong
    /// on the region's gateway nodes, reached at `gateways` (the region's load balancer).
    pub fn refuse_clients(&self, gateways: Option<RegionLink>) {
        let _ = self.no_clients.set(gateways);
    }

    /// `Some` when client WebSockets are refused ([`GatewayShared::refuse_clients`]), with
    /// where the region's gateway nodes are, if known.
    pub fn clients_refused(&self) -> Option<Option<&RegionLink>> {
        self.no_clients.get().map(Option::as_ref)
    }

    /// This region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Latency per hop of sampled records.
    pub fn hops(&self) -> &crate::hops::Hops {
        &self.hops
    }

    /// Token verification.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Sets the failover list sent in `hello` (this region first).
    pub fn set_regions(&self, regions: Vec<RegionLink>) {
        *self.regions.write().unwrap_or_else(|e| e.into_inner()) = regions;
    }

    /// The failover list.
    pub fn regions(&self) -> Vec<RegionLink> {
        self.regions.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records that `src` carries `sym`.
    pub fn learn_symbol(&self, sym: &str, src: SourceId) {
        self.directory.write().unwrap_or_else(|e| e.into_inner()).entry(sym.to_owned()).or_default().insert(src);
    }

    /// True if some source carries `sym`.
    pub fn knows_symbol(&self, sym: &str) -> bool {
        self.directory.read().unwrap_or_else(|e| e.into_inner()).contains_key(sym)
    }

    /// The sources carrying `sym`.
    pub fn sources_of(&self, sym: &str) -> Vec<SourceId> {
        self.directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(sym)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Notes the highest `seq` published for `src`.
    pub fn note_position(&self, src: SourceId, seq: u64) {
        let mut p = self.positions.lock().unwrap_or_else(|e| e.into_inner());
        let e = p.entry(src).or_insert(0);
        *e = (*e).max(seq);
    }

    /// Highest published `seq` of every known source.
    pub fn positions(&self) -> BTreeMap<SourceId, u64> {
        self.positions.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The `/metrics` text (the node's recorder, then the latency per hop).
    pub fn metrics_text(&self) -> String {
        (self.metrics)() + &self.hops.prometheus_text()
    }

    /// Gives the gateway the region's journal (for `resume`).
    pub fn set_journal(&self, journal: std::sync::Arc<tickmesh_journal::Journal>) {
        let _ = self.journal.set(journal);
    }

    /// Reads every book from the journal set by [`Self::set_journal`], so the cores start
    /// with whole books; call before [`crate::Gateway::start`]. Returns the number of books.
    pub fn warm_books(&self) -> Result<usize, tickmesh_journal::Error> {
        let Some(journal) = self.journal() else { return Ok(0) };
        let positions: BTreeMap<SourceId, u64> = journal.positions().into_iter().collect();
        let books = crate::books::warm_from_journal(journal)?;
        let n = books.len();
        *self.warm.lock().unwrap_or_else(|e| e.into_inner()) = Some((Arc::new(books), positions));
        Ok(n)
    }

    /// The books a core starts from, and the positions they are at.
    pub(crate) fn warm(&self) -> (crate::books::BookMap, BTreeMap<SourceId, u64>) {
        match &*self.warm.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((books, positions)) => ((**books).clone(), positions.clone()),
            None => (crate::books::BookMap::new(), self.positions()),
        }
    }

    /// The region's journal, if set.
    pub fn journal(&self) -> Option<&std::sync::Arc<tickmesh_journal::Journal>> {
        self.journal.get()
    }

    /// True while the region refuses new connections.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Sets the draining state (a drain with the default grace period, or none).
    pub fn set_draining(&self, v: bool) {
        if v {
            self.start_drain(crate::drain::DEFAULT_GRACE);
        } else {
            self.undrain();
        }
    }

    /// Starts draining: new upgrades get 503, every core sends its clients `reconnect`
    /// naming the next region of the failover list and closes the rest with 1012 after
    /// `grace`. Draining again restarts the grace period.
    pub fn start_drain(&self, grace: std::time::Duration) -> crate::drain::DrainPlan {
        self.start_drain_for(crate::drain::DrainReason::Drain, grace)
    }

    /// Like [`GatewayShared::start_drain`], telling clients `reason` (`shutdown` when the
    /// process stops: a graceful stop is a drain that never ends).
    pub fn start_drain_for(
        &self,
        reason: crate::drain::DrainReason,
        grace: std::time::Duration,
    ) -> crate::drain::DrainPlan {
        let next = self.regions().into_iter().find(|r| r.region != self.region);
        let generation = self.drain_generation.fetch_add(1, Ordering::Relaxed) + 1;
        let plan = crate::drain::DrainPlan { generation, next, started: std::time::Instant::now(), grace, reason };
        *self.drain.lock().unwrap_or_else(|e| e.into_inner()) = Some(plan.clone());
        self.draining.store(true, Ordering::Relaxed);
        plan
    }

    /// Ends a drain: the region takes connections again.
    pub fn undrain(&self) {
        self.drain_generation.fetch_add(1, Ordering::Relaxed);
        *self.drain.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.draining.store(false, Ordering::Relaxed);
    }

    /// Open client sessions, every core together.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    pub(crate) fn session_opened(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn session_closed(&self) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
    }

    /// The drain in force, if any.
    pub fn drain_plan(&self) -> Option<crate::drain::DrainPlan> {
        if !self.is_draining() {
            return None;
        }
        self.drain.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
