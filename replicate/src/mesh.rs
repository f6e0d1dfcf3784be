//! The mesh driver: a thin quinn shell around the sans-I/O [`MeshCore`].
//!
//! One endpoint per node on its own thread, `replicate-io` (a current-thread runtime).
//! One task owns the core and turns its actions into I/O: a connection per peer (mutual
//! TLS, [`crate::tls`]), a stream per subscribed source, one writer task per stream (so a
//! slow stream never blocks another, and a batch's `Written` comes back only when quinn
//! took it: at most one ~64 KiB batch in flight per served stream), one reader task per
//! stream feeding `Data` events through a bounded channel (so a slow core pushes back on
//! QUIC flow control instead of buffering without bound).
//!
//! User-data requests ([`crate::peer_request`]) ride the same connections on their own
//! streams: an accepted stream whose first message is a `USER_REQUEST` is answered by the
//! registered [`UserRequestHandler`] and never reaches the core.
//!
//! Pull, not push: a node subscribes to each source *after the `seq` it already holds*,
//! and the upstream serves from its store. Catch-up after a restart, a new region's
//! backfill and the live stream are the same code path.

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tickmesh_codec::SourceId;
use tokio::sync::{mpsc, watch};

use crate::error::{Error, Result};
use crate::link::{Action, ConnDir, ConnId, CoreConfig, Event, HomeView, MeshCore, Role, SourceView, StreamId};
use crate::peer_request::{self, Channel, RequestError, UserMessage, UserRequestHandler};
use crate::store::RecordStore;
use crate::tls::Credentials;
use crate::transfer::{TransferAudit, TransferPolicy};

/// One peer region.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Region name (must match the name in its certificate).
    pub region: String,
    /// Its mesh endpoint, `host:port` (a DNS name is resolved at every dial, so a peer
    /// that moves keeps being found).
    pub addr: String,
}

/// The `[mesh]` section of a node's configuration.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// UDP address of this region's endpoint. Default `127.0.0.1:4433`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Peer regions. Default none (a single-region node).
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Certificate files.
    pub tls: crate::tls::TlsFiles,
    /// First delay before redialing a lost peer; doubles up to 2 s. Default 100 ms.
    #[serde(default = "default_reconnect")]
    pub reconnect_ms: u64,
    /// For a `role = "gateway"` node: `host:port` of its region's ingest (or `all`) node,
    /// the one upstream it takes every source from. Default none.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Scheduling of the `replicate-io` thread (`[mesh.io_thread]`, see [`crate::sched`]).
    /// Default: a 100 µs slice, no real-time priority.
    #[serde(default)]
    pub io_thread: crate::sched::ThreadSched,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4433))
}
fn default_reconnect() -> u64 {
    100
}

impl MeshConfig {
    /// Collects every problem, prefixed with its TOML path.
    pub fn validate(&self, region: &str, problems: &mut Vec<String>) {
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            if p.region == region {
                problems.push(format!(
                    "mesh.peers[{i}].region is this node's own region {region}; list only other regions"
                ));
            }
            if !p.addr.rsplit_once(':').is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok()) {
                problems.push(format!(
                    "mesh.peers[{i}].addr {:?} is not host:port; write it like \"eu-west-1.mesh.example.com:4433\"",
                    p.addr
                ));
            }
            if !seen.insert(&p.region) {
                problems.push(format!("mesh.peers[{i}].region {} is listed twice; list each peer once", p.region));
            }
        }
        if let Some(u) = &self.upstream {
            if !u.rsplit_once(':').is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok()) {
                problems.push(format!(
                    "mesh.upstream {u:?} is not host:port; write the mesh address of this region's ingest node"
                ));
            }
        }
        if !(10..=60_000).contains(&self.reconnect_ms) {
            problems.push(format!(
                "mesh.reconnect_ms = {} is out of range; use 10 to 60000 (default 100)",
                self.reconnect_ms
            ));
        }
        self.io_thread.validate("mesh.io_thread", problems);
    }
}

/// What one peer link looks like right now.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq)]
pub struct PeerState {
    /// Peer region.
    pub region: String,
    /// Our link to it is up with heartbeats on time: we can receive from it.
    pub receiving: bool,
    /// It has a connection to us that we serve.
    pub sending: bool,
    /// Smoothed round-trip time, ms (0 until known).
    pub rtt_ms: f64,
    /// Records received from it since start.
    pub records_in: u64,
    /// Records sent to it since start.
    pub records_out: u64,
    /// Record bytes received from it.
    pub bytes_in: u64,
    /// Record bytes sent to it.
    pub bytes_out: u64,
    /// Packets QUIC declared lost on our connections with it.
    pub lost_packets: u64,
    /// Records it sent that we already held (expected 0).
    pub duplicates: u64,
    /// Protocol violations that closed one of its connections (malformed or forged
    /// messages; expected 0).
    pub protocol_errors: u64,
    /// Its role, once it said hello.
    pub role: Option<Role>,
    /// It says it is draining (operator drain or graceful stop): still reachable, but it
    /// belongs in no route answer and no failover list.
    pub draining: bool,
}

/// Shared status of the mesh, read by `/readyz`, `/v1/regions` and metrics. Refreshed by
/// the `replicate-io` thread every tick (50 ms).
#[derive(Debug, Default)]
pub struct MeshStatus {
    inner: Mutex<(Vec<PeerState>, Vec<SourceView>)>,
    home: Mutex<Vec<HomeView>>,
}

impl MeshStatus {
    /// Every known peer.
    pub fn peers(&self) -> Vec<PeerState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// Replication state of every source this node takes from peers: upstream in use,
    /// lag in records and ms.
    pub fn sources(&self) -> Vec<SourceView> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).1.clone()
    }

    /// While home recovery is on ([`MeshHandle::recover_home`]): what the peers hold of
    /// each home source. Empty otherwise.
    pub fn home(&self) -> Vec<HomeView> {
        self.home.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_home(&self, home: Vec<HomeView>) {
        *self.home.lock().unwrap_or_else(|e| e.into_inner()) = home;
    }

    fn set(&self, peers: Vec<PeerState>, sources: Vec<SourceView>) {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = (peers, sources);
    }
}

/// A batch of validated records from a peer, for the node's journal.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Length-prefixed records (codec `frame` format) of one source, continuing what the
    /// node holds.
    pub frames: Bytes,
    /// When the sender made the batch, on the sender's clock (ns since the epoch).
    pub sent_ns: u64,
    /// When this node's mesh received it (ns since the epoch). `received_ns - sent_ns` is
    /// the mesh hop: the sender's queueing after the batch was made, the link, and this
    /// side's reading and validation.
    pub received_ns: u64,
}

impl Delivery {
    /// The mesh hop of this batch, ns (0 if the clocks disagree the other way).
    pub fn hop_ns(&self) -> u64 {
        self.received_ns.saturating_sub(self.sent_ns)
    }
}

/// Receives validated records from peers, one batch of one source at a time.
pub type Inbound = Arc<dyn Fn(Delivery) + Send + Sync>;

#[derive(Debug)]
enum Command {
    AddPeer(PeerConfig),
    RemovePeer(String),
    UserRequest(Box<UserRequestCmd>),
    SetDraining(bool),
    RecoverHome(bool),
}

/// A user-data request waiting for a connection to its peer.
struct UserRequestCmd {
    peer: String,
    msg: UserMessage,
    timeout: Duration,
    reply: std::sync::mpsc::Sender<std::result::Result<UserMessage, RequestError>>,
}

impl std::fmt::Debug for UserRequestCmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRequestCmd").field("peer", &self.peer).field("op", &self.msg.op).finish_non_exhaustive()
    }
}

/// A running mesh.
#[derive(Debug)]
pub struct Mesh {
    status: Arc<MeshStatus>,
    local_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    cmds: mpsc::UnboundedSender<Command>,
    thread: Option<std::thread::JoinHandle<()>>,
    users: Arc<Channel>,
}

/// Changes the peers of a running mesh; see [`Mesh::handle`].
#[derive(Debug, Clone)]
pub struct MeshHandle {
    cmds: mpsc::UnboundedSender<Command>,
}

impl MeshHandle {
    /// Sends a user-data request to `peer` over the mesh and waits (blocking: call it from
    /// a blocking thread) for the answer, at most `timeout`. The residency policy is asked
    /// on both sides, for the request and the answer, and every message is audited.
    pub fn user_request(
        &self,
        peer: &str,
        msg: UserMessage,
        timeout: Duration,
    ) -> std::result::Result<UserMessage, RequestError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let cmd = UserRequestCmd { peer: peer.to_owned(), msg, timeout, reply: tx };
        self.cmds.send(Command::UserRequest(Box::new(cmd))).map_err(|_| RequestError::Stopped)?;
        rx.recv_timeout(timeout + Duration::from_secs(1)).map_err(|_| RequestError::Failed {
            region: peer.to_owned(),
            reason: format!("no answer within {} ms", timeout.as_millis()),
        })?
    }
}

impl MeshHandle {
    /// See [`Mesh::add_peer`].
    pub fn add_peer(&self, peer: PeerConfig) -> Result<()> {
        self.cmds
            .send(Command::AddPeer(peer))
            .map_err(|_| Error::Protocol { peer: "mesh".into(), what: "the mesh has stopped".into() })
    }

    /// See [`Mesh::remove_peer`].
    pub fn remove_peer(&self, region: &str) -> Result<()> {
        self.cmds
            .send(Command::RemovePeer(region.to_owned()))
            .map_err(|_| Error::Protocol { peer: "mesh".into(), what: "the mesh has stopped".into() })
    }

    /// Tells every peer, in the heartbeat, that this node is draining (or active again):
    /// their `/v1/regions`, `/v1/route` and `hello` lists leave it out meanwhile.
    pub fn set_draining(&self, draining: bool) -> Result<()> {
        self.cmds
            .send(Command::SetDraining(draining))
            .map_err(|_| Error::Protocol { peer: "mesh".into(), what: "the mesh has stopped".into() })
    }

    /// Takes this node's home sources from peers that hold more of them, until
    /// [`MeshHandle::end_home_recovery`]; progress in [`MeshStatus::home`]. See
    /// [`MeshCore::recover_home`].
    pub fn recover_home(&self) -> Result<()> {
        self.cmds
            .send(Command::RecoverHome(true))
            .map_err(|_| Error::Protocol { peer: "mesh".into(), what: "the mesh has stopped".into() })
    }

    /// Ends [`MeshHandle::recover_home`] (the node's feeds are about to start).
    pub fn end_home_recovery(&self) -> Result<()> {
        self.cmds
            .send(Command::RecoverHome(false))
            .map_err(|_| Error::Protocol { peer: "mesh".into(), what: "the mesh has stopped".into() })
    }
}

/// Everything the mesh needs to start.
pub struct MeshParams {
    /// This region.
    pub region: String,
    /// This node's role (a gateway node dials only `cfg.upstream`).
    pub role: Role,
    /// Configuration.
    pub cfg: MeshConfig,
    /// Credentials.
    pub creds: Credentials,
    /// The region's store.
    pub store: Arc<dyn RecordStore>,
    /// The sources this node is home to.
    pub home: Vec<SourceId>,
    /// Bumped by the node after every append, so senders wake.
    pub appended: watch::Receiver<u64>,
    /// Where received records go.
    pub inbound: Inbound,
    /// Residency rules, asked before sending and on receiving.
    pub policy: Arc<dyn TransferPolicy>,
    /// Where cross-region transfers are reported.
    pub audit: Arc<dyn TransferAudit>,
}

impl std::fmt::Debug for MeshParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshParams").field("region", &self.region).field("home", &self.home).finish_non_exhaustive()
    }
}

impl Mesh {
    /// Binds the endpoint and starts the `replicate-io` thread.
    pub fn start(p: MeshParams) -> Result<Mesh> {
        let server = p.creds.server_config()?;
        let client = p.creds.client_config()?;
        let listen = p.cfg.listen;
        let sock = std::net::UdpSocket::bind(listen).map_err(|source| Error::Bind { addr: listen, source })?;
        let local_addr = sock.local_addr()?;
        socket_buffers(&sock, local_addr);
        let status = Arc::new(MeshStatus::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let st = status.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let users = Arc::new(Channel {
            region: p.region.clone(),
            policy: p.policy.clone(),
            audit: p.audit.clone(),
            handler: std::sync::RwLock::new(None),
        });
        let ch = users.clone();
        let span = tracing::info_span!("mesh", region = %p.region, role = ?p.role);
        let sched = p.cfg.io_thread;
        let thread = std::thread::Builder::new()
            .name("replicate-io".into())
            .spawn(move || {
                // Every task of this thread's runtime (the driver, quinn's endpoint and
                // connection tasks, stream readers and writers) is polled here, inside
                // `block_on`: entering the span for the thread's life puts each of their
                // log lines under `mesh{region=..}`.
                let _root = span.entered();
                if let Err(e) = sched.apply_to_current("mesh.io_thread") {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::Io(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    let endpoint = match quinn::Endpoint::new(
                        quinn::EndpointConfig::default(),
                        Some(server),
                        sock,
                        Arc::new(quinn::TokioRuntime),
                    ) {
                        Ok(mut e) => {
                            e.set_default_client_config(client);
                            e
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(Error::Io(e)));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    Driver::new(endpoint.clone(), p, st, ch).run(stop_rx, cmd_rx).await;
                    endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
                    let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
                });
            })
            .map_err(Error::Io)?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Error::Tls("replicate-io thread ended during start-up".into())),
        }
        Ok(Mesh { status, local_addr, stop: Some(stop_tx), cmds: cmd_tx, thread: Some(thread), users })
    }

    /// Link status.
    pub fn status(&self) -> Arc<MeshStatus> {
        self.status.clone()
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runtime join: starts dialing `peer` and accepts its certificate from now on. A
    /// region already known gets the new address.
    pub fn add_peer(&self, peer: PeerConfig) -> Result<()> {
        self.handle().add_peer(peer)
    }

    /// Stops dialing `region`, closes its connections and refuses its certificate.
    pub fn remove_peer(&self, region: &str) -> Result<()> {
        self.handle().remove_peer(region)
    }

    /// A cloneable handle for [`Mesh::add_peer`] / [`Mesh::remove_peer`] (for admin routes).
    pub fn handle(&self) -> MeshHandle {
        MeshHandle { cmds: self.cmds.clone() }
    }

    /// Registers what answers peers' user-data requests (replacing any earlier handler).
    /// Until one is registered, requests are answered with an error naming this region.
    pub fn set_user_handler(&self, h: Arc<dyn UserRequestHandler>) {
        *self.users.handler.write().unwrap_or_else(|e| e.into_inner()) = Some(h);
    }

    /// Closes every connection and joins the thread.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Socket buffers asked for on the mesh's UDP socket, each way (the kernel caps them at
/// `net.core.rmem_max` / `wmem_max`).
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Gives a UDP socket [`SOCKET_BUFFER`] bytes of kernel buffer each way.
///
/// The default (~200 KB) holds 20 ms of a 10 MB/s link: a receiving thread that is not
/// scheduled for longer (a busy or shared machine) loses datagrams, QUIC retransmits them a
/// round trip later and halves its window, and every record behind them waits. 4 MiB holds
/// 400 ms. A smaller result than asked (a low `rmem_max`) is logged, not fatal.
pub fn socket_buffers(sock: impl std::os::fd::AsFd, addr: SocketAddr) {
    let s = socket2::SockRef::from(&sock);
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    let got = s.recv_buffer_size().unwrap_or(0);
    if got < SOCKET_BUFFER {
        tracing::info!(
            %addr,
            asked = SOCKET_BUFFER,
            got,
            "mesh UDP receive buffer is smaller than asked; raise net.core.rmem_max to absorb scheduling stalls"
        );
    }
}

/// What I/O tasks tell the driver task.
enum Msg {
    Core(Event),
    Dialed {
        peer: String,
        conn: quinn::Connection,
    },
    DialFailed {
        peer: String,
        error: String,
    },
    Accepted(quinn::Connection),
    /// A stream the peer opened for the record protocol; `prefix` is what was read from it
    /// to tell it from a user-data request.
    AcceptedStream {
        conn: ConnId,
        stream: StreamId,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        prefix: Bytes,
    },
}

enum Write {
    Bytes(Bytes, bool),
    Finish,
}

/// The task that owns the core.
struct Driver {
    endpoint: quinn::Endpoint,
    core: MeshCore,
    region: String,
    inbound: Inbound,
    status: Arc<MeshStatus>,
    appended: watch::Receiver<u64>,
    /// Region -> `host:port` to dial.
    addrs: BTreeMap<String, String>,
    /// Regions whose certificate the acceptor takes (peers and this region's own nodes).
    allowed: BTreeSet<String>,
    conns: HashMap<ConnId, (quinn::Connection, String)>,
    writers: HashMap<(ConnId, StreamId), mpsc::UnboundedSender<Write>>,
    next_conn: ConnId,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    last_export: std::time::Instant,
    /// The user-data request channel.
    users: Arc<Channel>,
    /// The time given to the core with the event being handled (a batch's receipt time).
    now: u64,
}

fn now_ns() -> u64 {
    tickmesh_codec::now_ns()
}

impl Driver {
    fn new(endpoint: quinn::Endpoint, p: MeshParams, status: Arc<MeshStatus>, users: Arc<Channel>) -> Driver {
        let mut addrs = BTreeMap::new();
        let mut allowed = BTreeSet::new();
        allowed.insert(p.region.clone());
        // `tickmesh tap`: read-only, it only subscribes (and the policy applies to it).
        allowed.insert("tap".to_owned());
        if let (Role::Gateway, Some(up)) = (p.role, &p.cfg.upstream) {
            // The upstream is this region's ingest node; its certificate names our region.
            addrs.insert(p.region.clone(), up.clone());
        } else {
            for peer in &p.cfg.peers {
                addrs.insert(peer.region.clone(), peer.addr.clone());
                allowed.insert(peer.region.clone());
            }
        }
        let mut ccfg = CoreConfig::new(&p.region, p.home.clone(), addrs.keys().cloned().collect());
        ccfg.role = p.role;
        ccfg.reconnect_ns = p.cfg.reconnect_ms * 1_000_000;
        let core = MeshCore::new(ccfg, p.store.clone(), p.policy.clone(), p.audit.clone(), now_ns());
        let (tx, rx) = mpsc::channel(4096);
        Driver {
            endpoint,
            core,
            region: p.region.clone(),
            inbound: p.inbound.clone(),
            status,
            appended: p.appended.clone(),
            addrs,
            allowed,
            conns: HashMap::new(),
            writers: HashMap::new(),
            next_conn: 1,
            tx,
            rx,
            last_export: std::time::Instant::now(),
            users,
            now: now_ns(),
        }
    }

    async fn run(mut self, mut stop: tokio::sync::oneshot::Receiver<()>, mut cmds: mpsc::UnboundedReceiver<Command>) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let endpoint = self.endpoint.clone();
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Some(msg) = self.rx.recv() => {
                    self.msg(msg);
                    // Whatever else the I/O tasks queued meanwhile is handled in this same
                    // wake-up (bounded, so the other branches still get their turn).
                    for _ in 0..256 {
                        let Ok(msg) = self.rx.try_recv() else { break };
                        self.msg(msg);
                    }
                }
                _ = tick.tick() => {
                    self.event(Event::Tick);
                    self.export();
                }
                r = self.appended.changed() => {
                    if r.is_err() {
                        break;
                    }
                    self.appended.borrow_and_update();
                    self.event(Event::Appended);
                }
                Some(cmd) = cmds.recv() => self.command(cmd),
                Some(incoming) = endpoint.accept() => {
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        match incoming.await {
                            Ok(conn) => {
                                let _ = tx.send(Msg::Accepted(conn)).await;
                            }
                            Err(e) => tracing::warn!(error = %e, "mesh handshake refused"),
                        }
                    });
                }
            }
        }
        // Transfers of the last (partial) second still reach the audit trail.
        self.core.flush_audit();
        for (c, _) in self.conns.values() {
            c.close(quinn::VarInt::from_u32(0), b"shutdown");
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::AddPeer(p) => {
                tracing::info!(peer = %p.region, addr = %p.addr, "mesh peer added");
                self.addrs.insert(p.region.clone(), p.addr);
                self.allowed.insert(p.region.clone());
                self.event(Event::AddPeer(p.region));
            }
            Command::RemovePeer(r) => {
                tracing::info!(peer = %r, "mesh peer removed");
                self.addrs.remove(&r);
                if r != self.region {
                    self.allowed.remove(&r);
                }
                self.event(Event::RemovePeer(r));
            }
            Command::UserRequest(cmd) => self.user_request(*cmd),
            Command::SetDraining(on) => {
                tracing::info!(draining = on, "telling mesh peers this node's state");
                self.core.set_draining(on);
                while let Some(a) = self.core.poll_action() {
                    self.action(a);
                }
            }
            Command::RecoverHome(on) => {
                if on {
                    self.core.recover_home();
                } else {
                    self.core.end_home_recovery();
                }
                while let Some(a) = self.core.poll_action() {
                    self.action(a);
                }
                self.status.set_home(self.core.home());
            }
        }
    }

    /// Sends a user-data request on a connection to its peer (the one we dialed when there
    /// is one), in its own task.
    fn user_request(&mut self, cmd: UserRequestCmd) {
        let mut conns: Vec<(ConnId, &quinn::Connection)> =
            self.conns.iter().filter(|(_, (_, p))| *p == cmd.peer).map(|(id, (c, _))| (*id, c)).collect();
        // Lowest id first: the longest-lived connection.
        conns.sort_by_key(|(id, _)| *id);
        let Some((_, conn)) = conns.first() else {
            let _ = cmd.reply.send(Err(RequestError::NotConnected(cmd.peer)));
            return;
        };
        let (conn, ch) = ((*conn).clone(), self.users.clone());
        tokio::spawn(async move {
            let r = peer_request::send_request(ch, conn, cmd.peer, cmd.msg, cmd.timeout).await;
            let _ = cmd.reply.send(r);
        });
    }

    fn msg(&mut self, msg: Msg) {
        match msg {
            // Events of connections already closed are dropped by the core.
            Msg::Core(ev) => self.event(ev),
            Msg::Dialed { peer, conn } => {
                if !self.addrs.contains_key(&peer) {
                    // Removed while the dial was in flight.
                    conn.close(quinn::VarInt::from_u32(0), b"peer removed");
                    return;
                }
                tracing::info!(peer = %peer, remote = %conn.remote_address(), dir = "dialed", "mesh connection up");
                let id = self.register(conn, peer.clone());
                self.event(Event::Connected { conn: id, peer, dir: ConnDir::Dialed });
            }
            Msg::DialFailed { peer, error } => {
                tracing::debug!(peer = %peer, error = %error, "mesh dial failed; retrying");
                self.event(Event::DialFailed { peer });
            }
            Msg::Accepted(conn) => {
                // Only a certificate from our CA (checked by TLS) that names a configured
                // region (or this region: its gateway nodes) is accepted.
                let named = certificate_region(&conn);
                let Some(region) = named.filter(|r| self.allowed.contains(r)) else {
                    tracing::warn!(
                        remote = %conn.remote_address(),
                        "mesh peer refused: its certificate names no configured region; issue it with `tickmesh certs issue REGION` and list the region in mesh.peers"
                    );
                    metrics::counter!("tickmesh_replicate_peers_refused_total", "reason" => "certificate").increment(1);
                    conn.close(quinn::VarInt::from_u32(1), b"certificate names no configured region");
                    return;
                };
                tracing::info!(peer = %region, remote = %conn.remote_address(), dir = "accepted", "mesh connection up");
                let id = self.register(conn, region.clone());
                self.event(Event::Connected { conn: id, peer: region, dir: ConnDir::Accepted });
            }
            Msg::AcceptedStream { conn, stream, send, recv, prefix } => {
                if !self.conns.contains_key(&conn) {
                    return;
                }
                let w = spawn_writer(conn, stream, self.tx.clone(), async move { Ok(send) });
                self.writers.insert((conn, stream), w);
                // The bytes read to classify the stream go to the core before any the
                // reader task reads (this task handles both in order), once the writer
                // is in place for the core's answer.
                if !prefix.is_empty() {
                    self.event(Event::Data { conn, stream, bytes: prefix });
                }
                spawn_reader(conn, stream, recv, self.tx.clone());
            }
        }
    }

    /// Gives a connection an id and watches it: streams the peer opens, and its end.
    fn register(&mut self, conn: quinn::Connection, peer: String) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(id, (conn.clone(), peer.clone()));
        let tx = self.tx.clone();
        let users = self.users.clone();
        tokio::spawn(async move {
            let mut next: StreamId = 1;
            loop {
                match conn.accept_bi().await {
                    Ok((send, recv)) => {
                        let stream = next;
                        next += 2;
                        tokio::spawn(classify_stream(id, stream, send, recv, tx.clone(), users.clone(), peer.clone()));
                    }
                    Err(_) => {
                        let _ = tx.send(Msg::Core(Event::Closed { conn: id })).await;
                        return;
                    }
                }
            }
        });
        id
    }

    fn event(&mut self, ev: Event) {
        let closed = if let Event::Closed { conn } = &ev { Some(*conn) } else { None };
        let now = now_ns();
        self.now = now;
        if let Err(e) = self.core.handle(now, ev) {
            tracing::warn!(error = %e, "mesh protocol error; closing that peer's connection");
        }
        if let Some(c) = closed {
            self.forget(c);
        }
        while let Some(a) = self.core.poll_action() {
            self.action(a);
        }
    }

    fn forget(&mut self, conn: ConnId) {
        if let Some((c, peer)) = self.conns.remove(&conn) {
            let why = c.close_reason().map(|r| r.to_string()).unwrap_or_else(|| "closed here".into());
            tracing::info!(peer = %peer, remote = %c.remote_address(), reason = %why, "mesh connection down");
        }
        self.writers.retain(|(c, _), _| *c != conn);
    }

    fn action(&mut self, a: Action) {
        match a {
            Action::Dial { peer } => {
                let Some(addr) = self.addrs.get(&peer).cloned() else {
                    self.event(Event::DialFailed { peer });
                    return;
                };
                let endpoint = self.endpoint.clone();
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let r = dial(&endpoint, &addr, &peer).await;
                    let _ = tx
                        .send(match r {
                            Ok(conn) => Msg::Dialed { peer, conn },
                            Err(error) => Msg::DialFailed { peer, error },
                        })
                        .await;
                });
            }
            Action::OpenStream { conn, stream } => {
                let Some((c, _)) = self.conns.get(&conn) else { return };
                let c = c.clone();
                let tx = self.tx.clone();
                let (open_tx, open_rx) = tokio::sync::oneshot::channel();
                let w = spawn_writer(conn, stream, self.tx.clone(), async move {
                    let (send, recv) = c.open_bi().await.map_err(|e| e.to_string())?;
                    let _ = open_tx.send(recv);
                    Ok(send)
                });
                tokio::spawn(async move {
                    if let Ok(recv) = open_rx.await {
                        spawn_reader(conn, stream, recv, tx);
                    }
                });
                self.writers.insert((conn, stream), w);
            }
            Action::Send { conn, stream, bytes, ack } => {
                if let Some(w) = self.writers.get(&(conn, stream)) {
                    let _ = w.send(Write::Bytes(bytes, ack));
                }
            }
            Action::Finish { conn, stream } => {
                if let Some(w) = self.writers.remove(&(conn, stream)) {
                    let _ = w.send(Write::Finish);
                }
            }
            Action::Close { conn, reason } => {
                if let Some((c, peer)) = self.conns.get(&conn) {
                    tracing::info!(peer = %peer, reason = %reason, "closing mesh connection");
                    let mut r = reason.into_bytes();
                    r.truncate(200);
                    c.close(quinn::VarInt::from_u32(3), &r);
                }
                self.forget(conn);
            }
            Action::Deliver { frames, sent_ns, .. } => {
                (self.inbound)(Delivery { frames, sent_ns, received_ns: self.now })
            }
        }
    }

    /// Publishes status and metrics (status every tick, metrics once a second).
    fn export(&mut self) {
        let mut lost: HashMap<&str, u64> = HashMap::new();
        let mut quic_rtt: HashMap<&str, f64> = HashMap::new();
        for (c, peer) in self.conns.values() {
            let st = c.stats();
            *lost.entry(peer.as_str()).or_default() += st.path.lost_packets;
            quic_rtt.insert(peer.as_str(), c.rtt().as_secs_f64() * 1000.0);
        }
        let peers: Vec<PeerState> = self
            .core
            .peers()
            .into_iter()
            // Only links we dial are peer regions; this region's gateway nodes and taps
            // dial us and are not.
            .filter(|v| v.dialed)
            .map(|v| PeerState {
                rtt_ms: if v.rtt_us > 0 {
                    v.rtt_us as f64 / 1000.0
                } else {
                    quic_rtt.get(v.region.as_str()).copied().unwrap_or(0.0)
                },
                receiving: v.healthy,
                sending: v.serving,
                records_in: v.stats.records_in,
                records_out: v.stats.records_out,
                bytes_in: v.stats.bytes_in,
                bytes_out: v.stats.bytes_out,
                lost_packets: lost.get(v.region.as_str()).copied().unwrap_or(0),
                duplicates: v.stats.duplicates,
                protocol_errors: v.stats.protocol_errors,
                role: v.role,
                draining: v.draining,
                region: v.region,
            })
            .collect();
        let sources = self.core.sources();
        self.status.set_home(self.core.home());
        if self.last_export.elapsed() >= Duration::from_secs(1) {
            self.last_export = std::time::Instant::now();
            for p in &peers {
                let l = [("peer", p.region.clone())];
                metrics::gauge!("tickmesh_mesh_rtt_seconds", &l).set(p.rtt_ms / 1000.0);
                metrics::counter!("tickmesh_mesh_records_received_total", &l).absolute(p.records_in);
                metrics::counter!("tickmesh_mesh_records_sent_total", &l).absolute(p.records_out);
                metrics::counter!("tickmesh_mesh_bytes_received_total", &l).absolute(p.bytes_in);
                metrics::counter!("tickmesh_mesh_bytes_sent_total", &l).absolute(p.bytes_out);
                metrics::counter!("tickmesh_mesh_lost_packets_total", &l).absolute(p.lost_packets);
                metrics::counter!("tickmesh_mesh_duplicates_dropped_total", &l).absolute(p.duplicates);
                metrics::counter!("tickmesh_mesh_protocol_errors_total", &l).absolute(p.protocol_errors);
                metrics::gauge!("tickmesh_mesh_peer_up", &l).set(if p.receiving { 1.0 } else { 0.0 });
            }
            for s in &sources {
                let l = [("source", s.src.clone())];
                metrics::gauge!("tickmesh_mesh_lag_records", &l).set(s.lag_records as f64);
                if let Some(ms) = s.lag_ms {
                    metrics::gauge!("tickmesh_mesh_lag_seconds", &l).set(ms / 1000.0);
                }
            }
        }
        self.status.set(peers, sources);
    }
}

async fn dial(endpoint: &quinn::Endpoint, addr: &str, peer: &str) -> std::result::Result<quinn::Connection, String> {
    let sock = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| {
            format!("mesh address {addr:?} of {peer} did not resolve ({e}); check the name or use an IP address")
        })?
        .next()
        .ok_or_else(|| format!("mesh address {addr:?} of {peer} resolved to no address"))?;
    let connecting = endpoint.connect(sock, peer).map_err(|e| format!("connect to {peer} at {addr}: {e}"))?;
    connecting.await.map_err(|e| format!("handshake with {peer} at {addr}: {e}"))
}

/// Reads an accepted stream's first message header: a user-data request is answered here;
/// any other stream goes to the driver (and the core) with the bytes read so far.
async fn classify_stream(
    conn: ConnId,
    stream: StreamId,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<Msg>,
    users: Arc<Channel>,
    peer: String,
) {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match recv.read(&mut head[got..]).await {
            Ok(Some(n)) => got += n,
            // Ended or reset before a header: hand what there is to the core, which
            // treats a short stream like any other.
            Ok(None) | Err(_) => break,
        }
    }
    if got == head.len() && head[4] == peer_request::USER_REQUEST {
        peer_request::serve_request(users, peer, head, send, recv).await;
        return;
    }
    let prefix = Bytes::copy_from_slice(&head[..got]);
    let _ = tx.send(Msg::AcceptedStream { conn, stream, send, recv, prefix }).await;
}

/// A stream's writer: writes in order, acknowledges batches once quinn took them.
fn spawn_writer<F>(conn: ConnId, stream: StreamId, tx: mpsc::Sender<Msg>, open: F) -> mpsc::UnboundedSender<Write>
where
    F: std::future::Future<Output = std::result::Result<quinn::SendStream, String>> + Send + 'static,
{
    let (wtx, mut wrx) = mpsc::unbounded_channel::<Write>();
    tokio::spawn(async move {
        let Ok(mut send) = open.await else { return };
        while let Some(w) = wrx.recv().await {
            match w {
                Write::Bytes(b, ack) => {
                    if send.write_chunk(b).await.is_err() {
                        return;
                    }
                    if ack && tx.send(Msg::Core(Event::Written { conn, stream })).await.is_err() {
                        return;
                    }
                }
                Write::Finish => {
                    let _ = send.finish();
                    return;
                }
            }
        }
    });
    wtx
}

/// A stream's reader: chunks become `Data` events; the end becomes `StreamEnded`.
fn spawn_reader(conn: ConnId, stream: StreamId, mut recv: quinn::RecvStream, tx: mpsc::Sender<Msg>) {
    tokio::spawn(async move {
        loop {
            match recv.read_chunk(256 * 1024, true).await {
                Ok(Some(chunk)) => {
                    if tx.send(Msg::Core(Event::Data { conn, stream, bytes: chunk.bytes })).await.is_err() {
                        return;
                    }
                }
                Ok(None) | Err(_) => {
                    let _ = tx.send(Msg::Core(Event::StreamEnded { conn, stream })).await;
                    return;
                }
            }
        }
    });
}

/// The region a peer's certificate names (its first DNS subject alternative name). The
/// TLS layer already checked that the certificate chains to our CA.
fn certificate_region(conn: &quinn::Connection) -> Option<String> {
    let certs = conn.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
        _ => None,
    })
}
