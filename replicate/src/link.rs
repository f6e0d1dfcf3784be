//! The mesh link protocol as a sans-I/O state machine: [`MeshCore`] takes [`Event`]s
//! (a connection came up or went down, bytes arrived on a stream, the node appended
//! records, a timer tick) with the time passed in, and returns [`Action`]s (dial a peer,
//! open a stream, write bytes, hand validated records to the node, close a connection).
//! It never touches a socket or a clock, so the same code runs under quinn
//! ([`crate::mesh`]) and in the deterministic simulation (`tests/sim.rs`).
//!
//! # Connections and streams
//! Every node dials each configured peer (or, for a gateway-role node, its upstream):
//! the *dialed* connection is where this node subscribes; the *accepted* connection (the
//! peer dialed us) is where this node serves. On a dialed connection the dialer opens
//! one control stream (hello, then heartbeats both ways) and **one stream per
//! subscribed source**, so a slow or stuck source never holds another back.
//!
//! # Messages (version [`VERSION`])
//! Every message on every stream is `u32` little-endian length, `u8` type, body:
//! * `HELLO` (JSON [`Hello`]): protocol version, region, role, home sources.
//! * `HEARTBEAT` (JSON [`Heartbeat`]): every `heartbeat_ns` both ways on the control
//!   stream; carries the sender's positions (with each source's origin region), its link
//!   table (peers, rtt, health) and a timestamp echo for round-trip time.
//! * `SUBSCRIBE` (JSON [`Subscribe`]): first message of a source stream: serve `src`
//!   after `after_seq`, from the store, then live.
//! * `UNSUBSCRIBE`: stop serving this stream.
//! * `REFUSED` (JSON [`Refused`]): the server will not serve this source and why.
//! * `USER_REQUEST` / `USER_RESPONSE` (0x40 / 0x41): not part of this state machine; a
//!   stream opened with one is a user-data request, answered by the driver
//!   ([`crate::peer_request`]) and never handed to the core.
//! * `BATCH` (binary): `u8` source length, source, `u64` `sent_ns` (sender's clock), then
//!   codec frames (length-prefixed records), up to about 64 KiB per batch.
//!
//! Every record is validated with `access_untrusted` and must belong to the stream's
//! source and continue its `seq` with no gap; anything malformed closes that peer's
//! connection with an [`Error::Protocol`] naming the peer (never a panic). A peer is the
//! origin only of the sources its `HELLO` claims, and a claim on a source another region
//! (or this node) is already home to is refused: a peer with a valid certificate cannot
//! pass itself off as another region's origin (`tests/hostile_peer.rs`).
//!
//! # Routing
//! For each source this node is not home to, the upstream is the origin region when its
//! link is healthy, else the healthy peer with the lowest `rtt(us, peer) + rtt(peer,
//! origin)` (from the peer's link table) that holds the source. Switching upstream is
//! unsubscribe-old, subscribe-new after the highest `seq` this node holds: no gap, no
//! duplicate. When the direct link heals the source goes back to it.
//!
//! # Residency
//! Before serving a source to a peer of another region the policy is asked (`Send`); a
//! denial is a `REFUSED` reply and a denied audit entry. Before subscribing, and on every
//! batch received, the receiver asks too (`Receive`): denied records are dropped, never
//! handed to the node. Allowed transfers are audited aggregated per (peer, source,
//! direction): one entry per second at most with the `seq` range, count and bytes moved
//! in that second. Same-region links (a gateway node and its region's ingest node) are not
//! transfers: no check, no audit.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use tickmesh_codec::{frame, SourceId};

use crate::error::{Error, Result};
use crate::store::{Cursor, RecordStore};
use crate::transfer::{Decision, Direction, Transfer, TransferAudit, TransferPolicy};

/// Protocol version carried in `HELLO`; a peer with another version is refused.
pub const VERSION: u32 = 2;

/// Largest message accepted (a batch of ~64 KiB plus its last record, or a heartbeat of
/// a node with many sources).
pub const MAX_MESSAGE: usize = 4 << 20;

/// Batches in flight per served stream: enough to keep a link busy during catch-up, few
/// enough that a stuck peer holds at most a few hundred KiB of ours.
const MAX_INFLIGHT: u32 = 4;

const HELLO: u8 = 1;
const HEARTBEAT: u8 = 2;
const SUBSCRIBE: u8 = 3;
const UNSUBSCRIBE: u8 = 4;
const REFUSED: u8 = 5;
const BATCH: u8 = 6;

/// The driver's id of one connection (unique for the life of a [`MeshCore`]).
pub type ConnId = u64;
/// A stream within a connection. Streams the core opens have even ids; the driver gives
/// streams the remote side opened odd ids.
pub type StreamId = u64;

/// What a node does in its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Ingests feeds, serves clients, replicates: the default.
    #[default]
    All,
    /// Ingests and replicates; no client WebSocket.
    Ingest,
    /// Serves clients; takes every record from its region's ingest node.
    Gateway,
    /// A read-only analytics reader.
    Tap,
}

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnDir {
    /// We dialed: we subscribe on it.
    Dialed,
    /// The peer dialed: we serve on it.
    Accepted,
}

/// Tuning of the state machine (all times in ns).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This node's region.
    pub region: String,
    /// This node's role.
    pub role: Role,
    /// Sources this node is home to (their records are created here).
    pub home: Vec<SourceId>,
    /// Peer regions this node dials (for a gateway node: its upstream, named after its own region).
    pub peers: Vec<String>,
    /// Heartbeat interval. Default 100 ms.
    pub heartbeat_ns: u64,
    /// A link with no heartbeat for this long is unhealthy. Default 1 s.
    pub dead_after_ns: u64,
    /// First redial delay; doubles up to 2 s.
    pub reconnect_ns: u64,
    /// Target batch size in bytes. Default 64 KiB.
    pub batch_bytes: usize,
}

impl CoreConfig {
    /// Defaults for `region` with `peers`.
    pub fn new(region: &str, home: Vec<SourceId>, peers: Vec<String>) -> Self {
        CoreConfig {
            region: region.to_owned(),
            role: Role::All,
            home,
            peers,
            heartbeat_ns: 100_000_000,
            dead_after_ns: 1_000_000_000,
            reconnect_ns: 100_000_000,
            batch_bytes: 64 * 1024,
        }
    }
}

/// Something that happened, told to [`MeshCore::handle`].
#[derive(Debug)]
pub enum Event {
    /// Time passed (heartbeats, health, redials, routing, audit flush).
    Tick,
    /// A connection is up. `peer` is the region its certificate names.
    Connected {
        /// Connection id.
        conn: ConnId,
        /// Peer region (from the certificate).
        peer: String,
        /// Who dialed.
        dir: ConnDir,
    },
    /// A dial of `peer` failed.
    DialFailed {
        /// Peer region.
        peer: String,
    },
    /// A connection is gone.
    Closed {
        /// Connection id.
        conn: ConnId,
    },
    /// Bytes arrived on a stream (a new odd id is a stream the peer opened).
    Data {
        /// Connection id.
        conn: ConnId,
        /// Stream id.
        stream: StreamId,
        /// The bytes.
        bytes: Bytes,
    },
    /// The remote side finished or reset a stream.
    StreamEnded {
        /// Connection id.
        conn: ConnId,
        /// Stream id.
        stream: StreamId,
    },
    /// The driver finished writing a batch sent with `ack` (flow control: one batch in
    /// flight per served stream).
    Written {
        /// Connection id.
        conn: ConnId,
        /// Stream id.
        stream: StreamId,
    },
    /// The node appended records to its store.
    Appended,
    /// Start dialing a new peer region (runtime join).
    AddPeer(String),
    /// Stop dialing a peer region and close its connections.
    RemovePeer(String),
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Dial `peer`; answer with `Connected { dir: Dialed }` or `DialFailed`.
    Dial {
        /// Peer region.
        peer: String,
    },
    /// Open a new bidirectional stream with this id on `conn`.
    OpenStream {
        /// Connection id.
        conn: ConnId,
        /// Stream id chosen by the core.
        stream: StreamId,
    },
    /// Write bytes on a stream, in order.
    Send {
        /// Connection id.
        conn: ConnId,
        /// Stream id.
        stream: StreamId,
        /// Bytes (one or more whole messages).
        bytes: Bytes,
        /// Report `Written` once written.
        ack: bool,
    },
    /// Finish our side of a stream (nothing more will be sent on it).
    Finish {
        /// Connection id.
        conn: ConnId,
        /// Stream id.
        stream: StreamId,
    },
    /// Close a connection.
    Close {
        /// Connection id.
        conn: ConnId,
        /// Why (sent to the peer, logged).
        reason: String,
    },
    /// Validated, contiguous, new records of `src` for the node's journal.
    Deliver {
        /// The peer they came from.
        peer: String,
        /// Their source.
        src: SourceId,
        /// Length-prefixed records, `seq` continuing what this node holds.
        frames: Bytes,
        /// How many.
        count: u32,
        /// First `seq`.
        first_seq: u64,
        /// Last `seq`.
        last_seq: u64,
        /// When the peer made the batch (its clock, the batch's `sent_ns`): the mesh hop is
        /// receipt time minus this.
        sent_ns: u64,
    },
}

/// `HELLO`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Hello {
    /// Protocol version ([`VERSION`]).
    pub version: u32,
    /// Sender's region.
    pub region: String,
    /// Sender's role.
    pub role: Role,
    /// Sources the sender is home to.
    pub home: Vec<String>,
}

/// One entry of a link table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinkInfo {
    /// Peer region.
    pub region: String,
    /// Round-trip time in µs (0: unknown).
    pub rtt_us: u64,
    /// Connected with heartbeats on time.
    pub healthy: bool,
}

/// A source the sender holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Held {
    /// Source.
    pub src: String,
    /// Highest `seq` held.
    pub seq: u64,
    /// Its home region ("" if not known yet).
    pub origin: String,
}

/// `HEARTBEAT`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Heartbeat {
    /// Sender's clock when sent (ns).
    pub t: u64,
    /// The last `t` the sender received from us on this connection (0: none).
    pub echo: u64,
    /// How long the sender held that echo before sending (ns).
    pub hold: u64,
    /// What the sender holds.
    pub sources: Vec<Held>,
    /// The sender's links.
    pub links: Vec<LinkInfo>,
    /// The sender is draining (an operator drain or a graceful stop): peers leave it out
    /// of route answers and failover lists. Absent (false) from senders that predate it,
    /// and omitted when false, so either side may be older.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

/// `SUBSCRIBE`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Subscribe {
    /// Source.
    pub src: String,
    /// Serve records with `seq` above this.
    pub after_seq: u64,
}

/// `REFUSED`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Refused {
    /// Source.
    pub src: String,
    /// Why.
    pub reason: String,
}

/// Counters of one peer link (plain numbers; the driver exports them).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LinkStats {
    /// Record bytes received from the peer.
    pub bytes_in: u64,
    /// Record bytes sent to the peer.
    pub bytes_out: u64,
    /// Records received and handed to the node.
    pub records_in: u64,
    /// Records sent.
    pub records_out: u64,
    /// Records received that this node already held (expected 0).
    pub duplicates: u64,
    /// Records dropped because the receive policy denied their source.
    pub denied: u64,
    /// Protocol errors that closed a connection.
    pub protocol_errors: u64,
}

/// What one peer link looks like (for status and metrics).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PeerView {
    /// Peer region.
    pub region: String,
    /// We dial it (a configured peer or upstream); otherwise it only dials us.
    pub dialed: bool,
    /// Our dialed connection is up, hello received, heartbeats on time.
    pub healthy: bool,
    /// The peer has a connection to us that we serve.
    pub serving: bool,
    /// Round-trip time (µs, 0 until known).
    pub rtt_us: u64,
    /// The peer's role (from its hello).
    pub role: Option<Role>,
    /// The peer says it is draining (from its heartbeats on our dialed link).
    pub draining: bool,
    /// Counters.
    pub stats: LinkStats,
}

/// What the peers hold of one home source during [`MeshCore::recover_home`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct HomeView {
    /// Source.
    pub src: String,
    /// Highest `seq` this node holds (journaled or delivered).
    pub seq: u64,
    /// Highest `seq` any reporting peer holds.
    pub peers_seq: u64,
    /// Healthy peers whose heartbeat (with their positions) arrived.
    pub reported_by: Vec<String>,
}

/// Replication state of one non-home source.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SourceView {
    /// Source.
    pub src: String,
    /// Its home region ("" unknown).
    pub origin: String,
    /// The peer we take it from now (None: no healthy path).
    pub upstream: Option<String>,
    /// Highest `seq` this node holds.
    pub seq: u64,
    /// Records behind the most advanced peer (from heartbeats).
    pub lag_records: u64,
    /// `now - ts_ingest` of the last record received, ms (None: none received).
    pub lag_ms: Option<f64>,
}

#[derive(Debug, Default)]
struct PeerInfo {
    role: Option<Role>,
    draining: bool,
    /// A heartbeat arrived on our dialed link: `sources` is what the peer holds.
    heard: bool,
    sources: BTreeMap<SourceId, (u64, String)>,
    links: Vec<LinkInfo>,
}

struct Peer {
    /// We dial it.
    configured: bool,
    dialed: Option<ConnId>,
    dialing: bool,
    next_dial: u64,
    backoff: u64,
    last_heard: u64,
    rtt_ns: u64,
    info: PeerInfo,
    stats: LinkStats,
    /// Accepted connections from it.
    accepted: Vec<ConnId>,
    delay: Option<metrics::Histogram>,
}

impl Peer {
    fn new(configured: bool) -> Self {
        Peer {
            configured,
            dialed: None,
            dialing: false,
            next_dial: 0,
            backoff: 0,
            last_heard: 0,
            rtt_ns: 0,
            info: PeerInfo::default(),
            stats: LinkStats::default(),
            accepted: Vec::new(),
            delay: None,
        }
    }
}

enum StreamKind {
    /// Accepted stream, first message not seen yet.
    Pending,
    Control,
    /// Our subscription on a dialed connection.
    Sub(SourceId),
    /// We serve `src` on an accepted connection.
    Serve(Box<Serve>),
    /// Unsubscribed or refused: late bytes are ignored.
    Dead,
}

struct Serve {
    src: SourceId,
    cursor: Box<dyn Cursor>,
    /// Batches handed to the driver and not yet written (at most [`MAX_INFLIGHT`]).
    inflight: u32,
    /// Crosses a region boundary (audited).
    cross: bool,
}

struct Conn {
    peer: String,
    dir: ConnDir,
    streams: BTreeMap<StreamId, StreamKind>,
    bufs: BTreeMap<StreamId, BytesMut>,
    next_stream: StreamId,
    hello: bool,
    /// Last heartbeat `t` received and when (for the echo).
    last_t: u64,
    last_t_at: u64,
    next_heartbeat: u64,
}

#[derive(Default)]
struct Sub {
    origin: String,
    upstream: Option<(String, ConnId, StreamId)>,
    last_ts_ingest: u64,
    denied_noted: BTreeMap<String, bool>,
}

#[derive(Default)]
struct Agg {
    first: u64,
    last: u64,
    count: u64,
    bytes: u64,
}

/// The state machine of one node's side of the mesh. See the module documentation.
pub struct MeshCore {
    cfg: CoreConfig,
    store: Arc<dyn RecordStore>,
    policy: Arc<dyn TransferPolicy>,
    audit: Arc<dyn TransferAudit>,
    now: u64,
    peers: BTreeMap<String, Peer>,
    conns: BTreeMap<ConnId, Conn>,
    /// Highest `seq` held per source (store at start, then every delivery).
    have: BTreeMap<SourceId, u64>,
    subs: BTreeMap<SourceId, Sub>,
    /// The region each source is home to, from that region's own `HELLO` (or our config):
    /// authoritative, unlike the origin a relay reports in its heartbeat. First claim wins
    /// for the life of the core; a second region claiming the same source is refused.
    home_of: BTreeMap<SourceId, String>,
    /// Allowed transfers not yet written to the audit trail, per (peer, source, direction).
    agg: BTreeMap<(String, SourceId, bool), Agg>,
    next_audit_flush: u64,
    actions: VecDeque<Action>,
    batch: Vec<u8>,
    /// This node is draining (told to peers in every heartbeat).
    draining: bool,
    /// Home sources taken from peers until the node's feeds start (see
    /// [`MeshCore::recover_home`]).
    recovering: BTreeSet<SourceId>,
}

impl std::fmt::Debug for MeshCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCore").field("region", &self.cfg.region).field("now", &self.now).finish_non_exhaustive()
    }
}

fn message(kind: u8, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + body.len());
    b.put_u32_le(body.len() as u32 + 1);
    b.put_u8(kind);
    b.put_slice(body);
    b.freeze()
}

fn json_message<T: serde::Serialize>(kind: u8, v: &T) -> Bytes {
    // Serializing these plain structs cannot fail.
    message(kind, &serde_json::to_vec(v).unwrap_or_default())
}

impl MeshCore {
    /// A core for one node. `store` is read for positions and to serve subscriptions.
    pub fn new(
        cfg: CoreConfig,
        store: Arc<dyn RecordStore>,
        policy: Arc<dyn TransferPolicy>,
        audit: Arc<dyn TransferAudit>,
        now: u64,
    ) -> Self {
        let have = store.positions().into_iter().collect();
        let home_of = cfg.home.iter().map(|s| (*s, cfg.region.clone())).collect();
        let mut peers = BTreeMap::new();
        for p in &cfg.peers {
            peers.insert(p.clone(), Peer::new(true));
        }
        MeshCore {
            cfg,
            store,
            policy,
            audit,
            now,
            peers,
            conns: BTreeMap::new(),
            have,
            subs: BTreeMap::new(),
            home_of,
            agg: BTreeMap::new(),
            next_audit_flush: now + 1_000_000_000,
            actions: VecDeque::new(),
            batch: Vec::new(),
            draining: false,
            recovering: BTreeSet::new(),
        }
    }

    /// Before its feeds start, a node takes its own home sources from peers like any other
    /// source: after a restore from an older backup (or a crash that lost an unsynced
    /// tail) peers may hold records of them that this node lacks, and the feeds must
    /// continue after those, never reusing a `seq`. [`MeshCore::home`] tells the node how
    /// far the peers are; [`MeshCore::end_home_recovery`] ends it once the feeds start.
    pub fn recover_home(&mut self) {
        self.recovering = self.cfg.home.iter().copied().collect();
        self.route();
    }

    /// Ends [`MeshCore::recover_home`]: home sources are this node's own again.
    pub fn end_home_recovery(&mut self) {
        for src in std::mem::take(&mut self.recovering) {
            self.unsubscribe(&src);
            self.subs.remove(&src);
        }
    }

    /// What the peers hold of each home source, while [`MeshCore::recover_home`] is on.
    pub fn home(&self) -> Vec<HomeView> {
        self.recovering
            .iter()
            .map(|src| {
                let reported: Vec<(&String, u64)> = self
                    .peers
                    .iter()
                    .filter(|(r, p)| p.info.heard && self.healthy(r))
                    .map(|(r, p)| (r, p.info.sources.get(src).map(|x| x.0).unwrap_or(0)))
                    .collect();
                HomeView {
                    src: src.as_str().to_owned(),
                    seq: self.have.get(src).copied().unwrap_or(0),
                    peers_seq: reported.iter().map(|x| x.1).max().unwrap_or(0),
                    reported_by: reported.iter().map(|x| x.0.clone()).collect(),
                }
            })
            .collect()
    }

    /// Marks this node draining (or active again). Every connection gets a heartbeat at
    /// once, so peers learn it within one round trip instead of one heartbeat interval.
    pub fn set_draining(&mut self, draining: bool) {
        if self.draining == draining {
            return;
        }
        self.draining = draining;
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for c in conns {
            self.heartbeat(c);
        }
    }

    /// This node's region.
    pub fn region(&self) -> &str {
        &self.cfg.region
    }

    /// Next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Handles one event at time `now` (ns since the epoch, or the simulation's clock).
    /// A protocol violation closes the offending connection (an `Action::Close` is queued)
    /// and is returned so the driver can log it; the core stays usable.
    pub fn handle(&mut self, now: u64, ev: Event) -> Result<()> {
        self.now = self.now.max(now);
        match ev {
            Event::Tick => {
                self.tick();
                Ok(())
            }
            Event::Connected { conn, peer, dir } => {
                self.connected(conn, peer, dir);
                Ok(())
            }
            Event::DialFailed { peer } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.dialing = false;
                    p.backoff = (p.backoff * 2).clamp(self.cfg.reconnect_ns, 2_000_000_000);
                    p.next_dial = self.now + p.backoff;
                }
                Ok(())
            }
            Event::Closed { conn } => {
                self.closed(conn);
                Ok(())
            }
            Event::Data { conn, stream, bytes } => {
                let r = self.data(conn, stream, bytes);
                if let Err(e) = &r {
                    self.fail(conn, e);
                }
                r
            }
            Event::StreamEnded { conn, stream } => {
                self.stream_ended(conn, stream);
                Ok(())
            }
            Event::Written { conn, stream } => {
                if let Some(StreamKind::Serve(s)) = self.conns.get_mut(&conn).and_then(|c| c.streams.get_mut(&stream)) {
                    s.inflight = s.inflight.saturating_sub(1);
                    self.pump(conn, stream);
                }
                Ok(())
            }
            Event::Appended => {
                self.pump_all();
                Ok(())
            }
            Event::AddPeer(region) => {
                let p = self.peers.entry(region).or_insert_with(|| Peer::new(true));
                p.configured = true;
                p.next_dial = 0;
                self.tick();
                Ok(())
            }
            Event::RemovePeer(region) => {
                if let Some(p) = self.peers.remove(&region) {
                    for c in p.dialed.into_iter().chain(p.accepted) {
                        self.actions.push_back(Action::Close { conn: c, reason: "peer removed".into() });
                        self.conns.remove(&c);
                    }
                }
                self.route();
                Ok(())
            }
        }
    }

    fn fail(&mut self, conn: ConnId, e: &Error) {
        if let Some(c) = self.conns.get(&conn) {
            if let Some(p) = self.peers.get_mut(&c.peer) {
                p.stats.protocol_errors += 1;
            }
            self.actions.push_back(Action::Close { conn, reason: e.to_string() });
            self.closed(conn);
        }
    }

    fn perr(&self, conn: ConnId, what: String) -> Error {
        let peer = self.conns.get(&conn).map(|c| c.peer.clone()).unwrap_or_else(|| format!("connection {conn}"));
        // The text may quote the peer's bytes (JSON errors do): one bounded log line,
        // control characters escaped, so a peer cannot forge log lines.
        let what = if what.len() > 512 || what.chars().any(char::is_control) {
            let mut w: String =
                what.chars().flat_map(|c| if c.is_control() { c.escape_debug().collect() } else { vec![c] }).collect();
            if w.len() > 512 {
                let cut = (0..=512).rev().find(|i| w.is_char_boundary(*i)).unwrap_or(0);
                w.truncate(cut);
                w.push_str("...");
            }
            w
        } else {
            what
        };
        Error::Protocol { peer, what }
    }

    fn connected(&mut self, conn: ConnId, peer: String, dir: ConnDir) {
        let configured = dir == ConnDir::Dialed;
        let p = self.peers.entry(peer.clone()).or_insert_with(|| Peer::new(configured));
        let mut c = Conn {
            peer: peer.clone(),
            dir,
            streams: BTreeMap::new(),
            bufs: BTreeMap::new(),
            next_stream: 0,
            hello: false,
            last_t: 0,
            last_t_at: 0,
            next_heartbeat: self.now,
        };
        match dir {
            ConnDir::Dialed => {
                if let Some(old) = p.dialed.replace(conn) {
                    self.actions.push_back(Action::Close { conn: old, reason: "replaced by a new connection".into() });
                    self.conns.remove(&old);
                }
                p.dialing = false;
                p.backoff = 0;
                p.last_heard = self.now;
                c.streams.insert(0, StreamKind::Control);
                c.next_stream = 2;
                self.actions.push_back(Action::OpenStream { conn, stream: 0 });
                let hello = self.hello();
                self.actions.push_back(Action::Send { conn, stream: 0, bytes: hello, ack: false });
            }
            ConnDir::Accepted => p.accepted.push(conn),
        }
        self.conns.insert(conn, c);
    }

    fn hello(&self) -> Bytes {
        json_message(
            HELLO,
            &Hello {
                version: VERSION,
                region: self.cfg.region.clone(),
                role: self.cfg.role,
                home: self.cfg.home.iter().map(|s| s.as_str().to_owned()).collect(),
            },
        )
    }

    fn closed(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else { return };
        if let Some(p) = self.peers.get_mut(&c.peer) {
            if p.dialed == Some(conn) {
                p.dialed = None;
                p.dialing = false;
                p.backoff = (p.backoff * 2).clamp(self.cfg.reconnect_ns, 2_000_000_000);
                p.next_dial = self.now + p.backoff;
            }
            p.accepted.retain(|x| *x != conn);
        }
        for sub in self.subs.values_mut() {
            if sub.upstream.as_ref().is_some_and(|(_, c2, _)| *c2 == conn) {
                sub.upstream = None;
            }
        }
        self.route();
    }

    fn stream_ended(&mut self, conn: ConnId, stream: StreamId) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.bufs.remove(&stream);
        match c.streams.insert(stream, StreamKind::Dead) {
            Some(StreamKind::Sub(src)) => {
                if let Some(sub) = self.subs.get_mut(&src) {
                    if sub.upstream.as_ref().is_some_and(|(_, c2, s2)| *c2 == conn && *s2 == stream) {
                        sub.upstream = None;
                    }
                }
                self.route();
            }
            Some(StreamKind::Control) => {
                // The control stream ending ends the link.
                self.actions.push_back(Action::Close { conn, reason: "control stream ended".into() });
                self.closed(conn);
            }
            _ => {}
        }
    }

    fn data(&mut self, conn: ConnId, stream: StreamId, bytes: Bytes) -> Result<()> {
        let Some(c) = self.conns.get_mut(&conn) else { return Ok(()) };
        let kind = c.streams.entry(stream).or_insert_with(|| {
            if stream % 2 == 1 {
                StreamKind::Pending
            } else {
                StreamKind::Dead
            }
        });
        if matches!(kind, StreamKind::Dead) {
            return Ok(());
        }
        let buf = c.bufs.entry(stream).or_default();
        buf.extend_from_slice(&bytes);
        loop {
            let Some(c) = self.conns.get_mut(&conn) else { return Ok(()) };
            let Some(buf) = c.bufs.get_mut(&stream) else { return Ok(()) };
            if buf.len() < 4 {
                return Ok(());
            }
            let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len == 0 || len > MAX_MESSAGE {
                return Err(self.perr(conn, format!("message length {len} is outside 1..={MAX_MESSAGE}")));
            }
            if buf.len() < 4 + len {
                return Ok(());
            }
            buf.advance(4);
            let mut msg = buf.split_to(len).freeze();
            let kind = msg.get_u8();
            self.message(conn, stream, kind, msg)?;
        }
    }

    fn message(&mut self, conn: ConnId, stream: StreamId, kind: u8, body: Bytes) -> Result<()> {
        let Some(c) = self.conns.get_mut(&conn) else { return Ok(()) };
        let dir = c.dir;
        let skind = c.streams.get(&stream);
        match (skind, kind) {
            (Some(StreamKind::Dead), _) => Ok(()),
            (Some(StreamKind::Pending), HELLO) if dir == ConnDir::Accepted => {
                c.streams.insert(stream, StreamKind::Control);
                self.on_hello(conn, stream, &body)
            }
            (Some(StreamKind::Pending), SUBSCRIBE) if dir == ConnDir::Accepted => {
                self.on_subscribe(conn, stream, &body)
            }
            (Some(StreamKind::Control), HELLO) if dir == ConnDir::Dialed => self.on_hello(conn, stream, &body),
            (Some(StreamKind::Control), HEARTBEAT) => self.on_heartbeat(conn, &body),
            (Some(StreamKind::Serve(_)), UNSUBSCRIBE) => {
                c.streams.insert(stream, StreamKind::Dead);
                self.actions.push_back(Action::Finish { conn, stream });
                Ok(())
            }
            (Some(StreamKind::Sub(src)), BATCH) => {
                let src = *src;
                self.on_batch(conn, stream, src, body)
            }
            (Some(StreamKind::Sub(src)), REFUSED) => {
                let src = *src;
                let peer = c.peer.clone();
                c.streams.insert(stream, StreamKind::Dead);
                let r: Refused = serde_json::from_slice(&body)
                    .map_err(|e| self.perr(conn, format!("REFUSED is not valid JSON ({e})")))?;
                tracing::warn!(peer = %peer, source = %src, reason = ?r.reason, "peer refused to serve a source");
                if let Some(sub) = self.subs.get_mut(&src) {
                    sub.upstream = None;
                    sub.denied_noted.insert(peer, true);
                }
                Ok(())
            }
            (_, k) => Err(self.perr(conn, format!("unexpected message type {k} on stream {stream}"))),
        }
    }

    fn on_hello(&mut self, conn: ConnId, stream: StreamId, body: &[u8]) -> Result<()> {
        let h: Hello =
            serde_json::from_slice(body).map_err(|e| self.perr(conn, format!("HELLO is not valid JSON ({e})")))?;
        if h.version != VERSION {
            return Err(self.perr(
                conn,
                format!(
                    "speaks mesh protocol version {}, this node {VERSION}; run the same tickmesh release",
                    h.version
                ),
            ));
        }
        let Some(c) = self.conns.get_mut(&conn) else { return Ok(()) };
        if h.region != c.peer {
            // Escaped and cut: the text is the peer's and ends up in log lines.
            let claimed: String = h.region.chars().take(64).flat_map(char::escape_debug).collect();
            let what = format!("says it is region {claimed} but its certificate names {}", c.peer);
            return Err(self.perr(conn, what));
        }
        let peer = c.peer.clone();
        let home = self.check_home_claims(conn, &peer, &h.home)?;
        let Some(c) = self.conns.get_mut(&conn) else { return Ok(()) };
        c.hello = true;
        let dir = c.dir;
        for src in &home {
            self.home_of.insert(*src, peer.clone());
            // The origin's own word overrides what a relay reported.
            self.subs.entry(*src).or_default().origin = peer.clone();
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.info.role = Some(h.role);
            p.last_heard = self.now;
            for src in home {
                p.info.sources.entry(src).or_insert((0, peer.clone())).1 = peer.clone();
            }
        }
        if dir == ConnDir::Accepted {
            let hello = self.hello();
            self.actions.push_back(Action::Send { conn, stream, bytes: hello, ack: false });
        }
        self.heartbeat(conn);
        self.route();
        Ok(())
    }

    /// The home sources a `HELLO` from `peer` claims, refused when another region is
    /// already known as home to one of them (ours included): a peer with a valid
    /// certificate must not pass itself off as another region's origin and feed us
    /// records of its source.
    fn check_home_claims(&self, conn: ConnId, peer: &str, claims: &[String]) -> Result<Vec<SourceId>> {
        let mut out = Vec::with_capacity(claims.len().min(1024));
        for s in claims {
            let src =
                SourceId::new(s).map_err(|e| self.perr(conn, format!("HELLO claims an invalid home source ({e})")))?;
            if let Some(owner) = self.home_of.get(&src).filter(|o| o.as_str() != peer) {
                return Err(self.perr(conn, format!("claims to be home to {src}, which is home to region {owner}")));
            }
            out.push(src);
        }
        Ok(out)
    }

    fn on_heartbeat(&mut self, conn: ConnId, body: &[u8]) -> Result<()> {
        let hb: Heartbeat =
            serde_json::from_slice(body).map_err(|e| self.perr(conn, format!("HEARTBEAT is not valid JSON ({e})")))?;
        let now = self.now;
        let Some(c) = self.conns.get_mut(&conn) else { return Ok(()) };
        c.last_t = hb.t;
        c.last_t_at = now;
        let dir = c.dir;
        let peer = c.peer.clone();
        let Some(p) = self.peers.get_mut(&peer) else { return Ok(()) };
        if hb.echo > 0 && hb.echo <= now {
            let rtt = (now - hb.echo).saturating_sub(hb.hold);
            p.rtt_ns = if p.rtt_ns == 0 { rtt } else { (p.rtt_ns * 7 + rtt) / 8 };
        }
        if dir == ConnDir::Dialed {
            let mut sources = BTreeMap::new();
            for h in hb.sources {
                if let Ok(src) = SourceId::new(&h.src) {
                    // A region is origin only of what its hello claimed (checked there).
                    if h.origin == peer && self.home_of.get(&src) != Some(&peer) {
                        let what = format!("heartbeat claims to be the origin of {src}, which its hello did not claim");
                        return Err(Error::Protocol { peer, what });
                    }
                    sources.insert(src, (h.seq, h.origin));
                }
            }
            let Some(p) = self.peers.get_mut(&peer) else { return Ok(()) };
            p.last_heard = now;
            p.info.links = hb.links;
            p.info.draining = hb.draining;
            p.info.heard = true;
            p.info.sources = sources;
            for (src, (_, origin)) in &p.info.sources {
                if !origin.is_empty() && !self.cfg.home.contains(src) {
                    let sub = self.subs.entry(*src).or_default();
                    if sub.origin.is_empty() {
                        sub.origin = self.home_of.get(src).unwrap_or(origin).clone();
                    }
                }
            }
        }
        Ok(())
    }

    fn on_subscribe(&mut self, conn: ConnId, stream: StreamId, body: &[u8]) -> Result<()> {
        let s: Subscribe =
            serde_json::from_slice(body).map_err(|e| self.perr(conn, format!("SUBSCRIBE is not valid JSON ({e})")))?;
        let src = SourceId::new(&s.src)
            .map_err(|e| self.perr(conn, format!("SUBSCRIBE names an invalid source {:?} ({e})", s.src)))?;
        let peer = self.conns.get(&conn).map(|c| c.peer.clone()).unwrap_or_default();
        let cross = peer != self.cfg.region;
        if cross {
            if let Decision::Deny(reason) = self.policy.check(&src, &self.cfg.region, &peer, Direction::Send) {
                self.audit.record(self.transfer(
                    &src,
                    &self.cfg.region,
                    &peer,
                    Direction::Send,
                    Decision::Deny(reason.clone()),
                ));
                let msg = json_message(
                    REFUSED,
                    &Refused {
                        src: s.src.clone(),
                        reason: format!("region {} may not send {}: {reason}", self.cfg.region, s.src),
                    },
                );
                self.actions.push_back(Action::Send { conn, stream, bytes: msg, ack: false });
                self.actions.push_back(Action::Finish { conn, stream });
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.streams.insert(stream, StreamKind::Dead);
                }
                return Ok(());
            }
        }
        let cursor = self.store.cursor(&src, s.after_seq)?;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.streams.insert(stream, StreamKind::Serve(Box::new(Serve { src, cursor, inflight: 0, cross })));
        }
        self.pump(conn, stream);
        Ok(())
    }

    fn transfer(&self, src: &SourceId, from: &str, to: &str, dir: Direction, decision: Decision) -> Transfer {
        Transfer {
            src: src.as_str().to_owned(),
            first_seq: 0,
            last_seq: 0,
            count: 0,
            bytes: 0,
            from: from.to_owned(),
            to: to.to_owned(),
            class: self.policy.class_of(src),
            dir,
            decision,
        }
    }

    fn on_batch(&mut self, conn: ConnId, stream: StreamId, src: SourceId, mut body: Bytes) -> Result<()> {
        if body.remaining() < 1 {
            return Err(self.perr(conn, "BATCH is empty".into()));
        }
        let n = usize::from(body.get_u8());
        if body.remaining() < n + 8 {
            return Err(self.perr(conn, "BATCH header is truncated".into()));
        }
        if &body[..n] != src.as_str().as_bytes() {
            return Err(self.perr(
                conn,
                format!("BATCH for source {:?} on the stream of {src}", String::from_utf8_lossy(&body[..n])),
            ));
        }
        body.advance(n);
        let sent_ns = body.get_u64_le();
        let now = self.now;
        let peer = self.conns.get(&conn).map(|c| c.peer.clone()).unwrap_or_default();
        let cross = peer != self.cfg.region;
        // Validate every record: right source, seq continuing ours, no gap.
        let have = self.have.get(&src).copied().unwrap_or(0);
        let mut next = have;
        let mut rest: &[u8] = &body;
        let mut start = None;
        let (mut count, mut dups, mut last_ts) = (0u32, 0u64, 0u64);
        let mut first_seq = 0;
        while !rest.is_empty() {
            let (rec, tail) = match frame::split_frame(rest) {
                Ok(Some(x)) => x,
                Ok(None) => return Err(self.perr(conn, "BATCH ends inside a record".into())),
                Err(e) => return Err(self.perr(conn, format!("BATCH is corrupt: {e}"))),
            };
            let r = tickmesh_codec::access_untrusted(rec)
                .map_err(|e| self.perr(conn, format!("sent an invalid record of {src}: {e}")))?;
            if r.source_id() != src {
                return Err(self.perr(conn, format!("sent a record of {} on the stream of {src}", r.src())));
            }
            let seq = r.seq();
            if seq <= next {
                if start.is_some() {
                    return Err(self.perr(conn, format!("{src} seq {seq} after {next}: out of order")));
                }
                dups += 1;
            } else {
                if next != 0 && seq != next + 1 {
                    return Err(self.perr(conn, format!("{src} jumps from seq {next} to {seq}: a gap")));
                }
                if start.is_none() {
                    start = Some(body.len() - rest.len());
                    first_seq = seq;
                }
                next = seq;
                count += 1;
                last_ts = r.ts_ingest();
            }
            rest = tail;
        }
        let Some(p) = self.peers.get_mut(&peer) else { return Ok(()) };
        p.stats.duplicates += dups;
        p.delay
            .get_or_insert_with(|| metrics::histogram!("tickmesh_mesh_batch_delay_seconds", "peer" => peer.clone()))
            .record(now.saturating_sub(sent_ns) as f64 / 1e9);
        let Some(start) = start else { return Ok(()) };
        if cross {
            if let Decision::Deny(reason) = self.policy.check(&src, &peer, &self.cfg.region, Direction::Receive) {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.stats.denied += u64::from(count);
                }
                let mut t = self.transfer(&src, &peer, &self.cfg.region, Direction::Receive, Decision::Deny(reason));
                (t.first_seq, t.last_seq, t.count, t.bytes) =
                    (first_seq, next, u64::from(count), (body.len() - start) as u64);
                self.audit.record(t);
                // Stop the flow: this source is not wanted from this peer.
                if let Some(sub) = self.subs.get_mut(&src) {
                    sub.denied_noted.insert(peer.clone(), true);
                }
                self.unsubscribe(&src);
                return Ok(());
            }
        }
        let frames = body.slice(start..);
        let Some(p) = self.peers.get_mut(&peer) else { return Ok(()) };
        p.stats.records_in += u64::from(count);
        p.stats.bytes_in += frames.len() as u64;
        self.have.insert(src, next);
        let sub = self.subs.entry(src).or_default();
        sub.last_ts_ingest = last_ts;
        if cross {
            let a = self.agg.entry((peer.clone(), src, false)).or_default();
            if a.count == 0 {
                a.first = first_seq;
            }
            a.last = next;
            a.count += u64::from(count);
            a.bytes += frames.len() as u64;
        }
        let _ = stream;
        self.actions.push_back(Action::Deliver { peer, src, frames, count, first_seq, last_seq: next, sent_ns });
        Ok(())
    }

    fn pump_all(&mut self) {
        let streams: Vec<(ConnId, StreamId)> = self
            .conns
            .iter()
            .flat_map(|(c, conn)| {
                conn.streams
                    .iter()
                    .filter(|(_, k)| matches!(k, StreamKind::Serve(s) if s.inflight < MAX_INFLIGHT))
                    .map(move |(s, _)| (*c, *s))
            })
            .collect();
        for (c, s) in streams {
            self.pump(c, s);
        }
    }

    /// Sends the next batches of a served stream while fewer than [`MAX_INFLIGHT`] are in flight.
    fn pump(&mut self, conn: ConnId, stream: StreamId) {
        while self.pump_one(conn, stream) {}
    }

    /// One batch; false when nothing was sent.
    fn pump_one(&mut self, conn: ConnId, stream: StreamId) -> bool {
        let now = self.now;
        let max = self.cfg.batch_bytes;
        let Some(c) = self.conns.get_mut(&conn) else { return false };
        let peer = c.peer.clone();
        let Some(StreamKind::Serve(s)) = c.streams.get_mut(&stream) else { return false };
        if s.inflight >= MAX_INFLIGHT {
            return false;
        }
        let name = s.src.as_str().as_bytes();
        let b = &mut self.batch;
        b.clear();
        b.extend_from_slice(&[0, 0, 0, 0, BATCH, name.len() as u8]);
        b.extend_from_slice(name);
        b.extend_from_slice(&now.to_le_bytes());
        let head = b.len();
        let n = match s.cursor.fill(b, max) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(peer = %peer, source = %s.src, error = %e, "reading the store to serve a peer failed");
                return false;
            }
        };
        if n == 0 {
            return false;
        }
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_le_bytes());
        let (first, last) = seq_range(&b[head..]);
        let bytes = Bytes::copy_from_slice(b);
        let rec_bytes = (b.len() - head) as u64;
        s.inflight += 1;
        let (src, cross) = (s.src, s.cross);
        self.actions.push_back(Action::Send { conn, stream, bytes, ack: true });
        if let Some(p) = self.peers.get_mut(&peer) {
            p.stats.records_out += n as u64;
            p.stats.bytes_out += rec_bytes;
        }
        if cross {
            let a = self.agg.entry((peer, src, true)).or_default();
            if a.count == 0 {
                a.first = first;
            }
            a.last = last;
            a.count += n as u64;
            a.bytes += rec_bytes;
        }
        true
    }

    fn healthy(&self, peer: &str) -> bool {
        self.peers.get(peer).is_some_and(|p| {
            p.dialed.is_some_and(|c| self.conns.get(&c).is_some_and(|c| c.hello))
                && self.now.saturating_sub(p.last_heard) < self.cfg.dead_after_ns
        })
    }

    fn tick(&mut self) {
        let now = self.now;
        // Dial configured peers that have no connection.
        let mut dial = Vec::new();
        for (r, p) in &mut self.peers {
            if p.configured && p.dialed.is_none() && !p.dialing && now >= p.next_dial {
                p.dialing = true;
                dial.push(r.clone());
            }
        }
        for peer in dial {
            self.actions.push_back(Action::Dial { peer });
        }
        // A dialed link silent for too long is closed (the driver's idle timeout would
        // do it too; this keeps the simulation and the driver the same).
        let dead: Vec<ConnId> = self
            .peers
            .values()
            .filter_map(|p| p.dialed.filter(|_| now.saturating_sub(p.last_heard) > 3 * self.cfg.dead_after_ns))
            .collect();
        for c in dead {
            self.actions.push_back(Action::Close { conn: c, reason: "no heartbeat".into() });
            self.closed(c);
        }
        let due: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.hello || c.dir == ConnDir::Dialed)
            .filter(|(_, c)| now >= c.next_heartbeat)
            .map(|(id, _)| *id)
            .collect();
        for c in due {
            self.heartbeat(c);
        }
        self.route();
        self.pump_all();
        if now >= self.next_audit_flush {
            self.flush_audit();
            self.next_audit_flush = now + 1_000_000_000;
        }
    }

    /// Writes the aggregated allowed transfers of the last second to the audit trail.
    pub fn flush_audit(&mut self) {
        for ((peer, src, sent), a) in std::mem::take(&mut self.agg) {
            if a.count == 0 {
                continue;
            }
            let (from, to, dir) = if sent {
                (self.cfg.region.clone(), peer, Direction::Send)
            } else {
                (peer, self.cfg.region.clone(), Direction::Receive)
            };
            let mut t = self.transfer(&src, &from, &to, dir, Decision::Allow);
            (t.first_seq, t.last_seq, t.count, t.bytes) = (a.first, a.last, a.count, a.bytes);
            self.audit.record(t);
        }
    }

    fn heartbeat(&mut self, conn: ConnId) {
        let now = self.now;
        let sources = self.held();
        let links = self.links();
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let Some(stream) = c.streams.iter().find_map(|(id, k)| matches!(k, StreamKind::Control).then_some(*id)) else {
            return;
        };
        c.next_heartbeat = now + self.cfg.heartbeat_ns;
        let hb = Heartbeat {
            t: now.max(1),
            echo: c.last_t,
            hold: if c.last_t > 0 { now - c.last_t_at } else { 0 },
            sources,
            links,
            draining: self.draining,
        };
        self.actions.push_back(Action::Send { conn, stream, bytes: json_message(HEARTBEAT, &hb), ack: false });
    }

    fn held(&self) -> Vec<Held> {
        let mut m: BTreeMap<SourceId, u64> = self.store.positions().into_iter().collect();
        for (s, q) in &self.have {
            let e = m.entry(*s).or_insert(0);
            *e = (*e).max(*q);
        }
        m.into_iter()
            .map(|(s, seq)| Held {
                src: s.as_str().to_owned(),
                seq,
                origin: if self.cfg.home.contains(&s) {
                    self.cfg.region.clone()
                } else {
                    self.subs.get(&s).map(|x| x.origin.clone()).unwrap_or_default()
                },
            })
            .collect()
    }

    fn links(&self) -> Vec<LinkInfo> {
        self.peers
            .iter()
            .filter(|(_, p)| p.configured)
            .map(|(r, p)| LinkInfo { region: r.clone(), rtt_us: p.rtt_ns / 1000, healthy: self.healthy(r) })
            .collect()
    }

    /// The peer to take `src` from now, if any.
    fn choose(&self, src: &SourceId, origin: &str) -> Option<String> {
        if !origin.is_empty() && self.healthy(origin) && self.holds(origin, src) {
            return Some(origin.to_owned());
        }
        let ours = self.have.get(src).copied().unwrap_or(0);
        let mut best: Option<(u64, String)> = None;
        let mut fallback: Option<(u64, u64, String)> = None;
        for (r, p) in &self.peers {
            if r == origin || !self.healthy(r) || !self.holds(r, src) {
                continue;
            }
            if self.subs.get(src).is_some_and(|s| s.denied_noted.get(r).copied().unwrap_or(false)) {
                continue;
            }
            let via = p.info.links.iter().find(|l| l.region == origin && l.healthy);
            if let Some(l) = via {
                let cost = p.rtt_ns / 1000 + l.rtt_us;
                if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                    best = Some((cost, r.clone()));
                }
            }
            // No peer reaches the origin: take it from whoever is most advanced.
            let seq = p.info.sources.get(src).map(|x| x.0).unwrap_or(0);
            if seq > ours && fallback.as_ref().is_none_or(|(s, rtt, _)| seq > *s || (seq == *s && p.rtt_ns < *rtt)) {
                fallback = Some((seq, p.rtt_ns, r.clone()));
            }
        }
        best.map(|(_, r)| r).or(fallback.map(|(_, _, r)| r))
    }

    fn holds(&self, peer: &str, src: &SourceId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.info.sources.contains_key(src))
    }

    /// Re-evaluates the upstream of every source held by some peer.
    fn route(&mut self) {
        let mut known: Vec<SourceId> = Vec::new();
        for p in self.peers.values() {
            for s in p.info.sources.keys() {
                if (!self.cfg.home.contains(s) || self.recovering.contains(s)) && !known.contains(s) {
                    known.push(*s);
                }
            }
        }
        for src in known {
            let sub = self.subs.entry(src).or_default();
            let origin = sub.origin.clone();
            let current = sub.upstream.as_ref().map(|(p, _, _)| p.clone());
            let want = self.choose(&src, &origin);
            let keep = match (&current, &want) {
                (Some(c), Some(w)) => {
                    // Stay on a healthy relay unless the origin is back or the new path
                    // is clearly better; flapping costs a resubscribe round trip.
                    c == w
                        || (self.healthy(c) && w != &origin && c != &origin && !self.much_better(&src, w, c, &origin))
                }
                (Some(c), None) => self.healthy(c),
                (None, _) => false,
            };
            if keep {
                continue;
            }
            if current.is_some() {
                self.unsubscribe(&src);
            }
            if let Some(w) = want {
                if w != self.cfg.region {
                    if let Decision::Deny(reason) = self.policy.check(&src, &w, &self.cfg.region, Direction::Receive) {
                        let sub = self.subs.entry(src).or_default();
                        if !sub.denied_noted.insert(w.clone(), true).unwrap_or(false) {
                            let t =
                                self.transfer(&src, &w, &self.cfg.region, Direction::Receive, Decision::Deny(reason));
                            self.audit.record(t);
                        }
                        continue;
                    }
                }
                self.subscribe(&src, &w);
            }
        }
    }

    fn much_better(&self, _src: &SourceId, new: &str, cur: &str, origin: &str) -> bool {
        let cost = |r: &str| {
            self.peers.get(r).and_then(|p| {
                p.info.links.iter().find(|l| l.region == origin && l.healthy).map(|l| p.rtt_ns / 1000 + l.rtt_us)
            })
        };
        match (cost(new), cost(cur)) {
            (Some(n), Some(c)) => n * 10 < c * 8,
            (Some(_), None) => true,
            _ => false,
        }
    }

    fn subscribe(&mut self, src: &SourceId, peer: &str) {
        let Some(conn) = self.peers.get(peer).and_then(|p| p.dialed) else { return };
        let after = self.have.get(src).copied().unwrap_or(0);
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let stream = c.next_stream;
        c.next_stream += 2;
        c.streams.insert(stream, StreamKind::Sub(*src));
        self.actions.push_back(Action::OpenStream { conn, stream });
        let msg = json_message(SUBSCRIBE, &Subscribe { src: src.as_str().to_owned(), after_seq: after });
        self.actions.push_back(Action::Send { conn, stream, bytes: msg, ack: false });
        self.subs.entry(*src).or_default().upstream = Some((peer.to_owned(), conn, stream));
    }

    fn unsubscribe(&mut self, src: &SourceId) {
        let Some(sub) = self.subs.get_mut(src) else { return };
        let Some((_, conn, stream)) = sub.upstream.take() else { return };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.streams.insert(stream, StreamKind::Dead);
            c.bufs.remove(&stream);
            self.actions.push_back(Action::Send { conn, stream, bytes: message(UNSUBSCRIBE, &[]), ack: false });
            self.actions.push_back(Action::Finish { conn, stream });
        }
    }

    /// Every peer link.
    pub fn peers(&self) -> Vec<PeerView> {
        self.peers
            .iter()
            .map(|(r, p)| PeerView {
                region: r.clone(),
                dialed: p.configured,
                healthy: self.healthy(r),
                serving: !p.accepted.is_empty(),
                rtt_us: p.rtt_ns / 1000,
                role: p.info.role,
                draining: p.info.draining,
                stats: p.stats.clone(),
            })
            .collect()
    }

    /// Every non-home source known.
    pub fn sources(&self) -> Vec<SourceView> {
        self.subs
            .iter()
            .map(|(src, s)| {
                let seq = self.have.get(src).copied().unwrap_or(0);
                let best = self.peers.values().filter_map(|p| p.info.sources.get(src).map(|x| x.0)).max().unwrap_or(0);
                SourceView {
                    src: src.as_str().to_owned(),
                    origin: s.origin.clone(),
                    upstream: s.upstream.as_ref().map(|(p, _, _)| p.clone()),
                    seq,
                    lag_records: best.saturating_sub(seq),
                    lag_ms: (s.last_ts_ingest > 0).then(|| self.now.saturating_sub(s.last_ts_ingest) as f64 / 1e6),
                }
            })
            .collect()
    }

    /// The upstream of `src` now.
    pub fn upstream(&self, src: &SourceId) -> Option<&str> {
        self.subs.get(src).and_then(|s| s.upstream.as_ref()).map(|(p, _, _)| p.as_str())
    }
}

/// First and last `seq` of a run of frames read from our own store: only the two ends are
/// looked at, so serving costs no per-record validation.
fn seq_range(frames: &[u8]) -> (u64, u64) {
    let seq = |rec: &[u8]| tickmesh_codec::access_untrusted(rec).map(|r| r.seq()).unwrap_or(0);
    let mut rest = frames;
    let (mut first, mut last) = (None, None);
    while let Ok(Some((rec, tail))) = frame::split_frame(rest) {
        if first.is_none() {
            first = Some(rec);
        }
        last = Some(rec);
        rest = tail;
    }
    (first.map(seq).unwrap_or(0), last.map(seq).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::transfer::{AllowAll, NoAudit};

    fn core(region: &str, peers: &[&str]) -> MeshCore {
        let store: Arc<dyn RecordStore> = Arc::new(Arc::new(MemoryStore::default()));
        let cfg = CoreConfig::new(region, vec![], peers.iter().map(|p| p.to_string()).collect());
        MeshCore::new(cfg, store, Arc::new(AllowAll), Arc::new(NoAudit), 1)
    }

    fn drain(c: &mut MeshCore) -> Vec<Action> {
        std::iter::from_fn(|| c.poll_action()).collect()
    }

    #[test]
    fn malformed_messages_close_the_connection_with_the_peer_named() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("length", vec![0, 0, 0, 0]),
            ("length", (u32::MAX).to_le_bytes().to_vec()),
            ("unexpected message type 9", message(9, b"x").to_vec()),
            ("HELLO is not valid JSON", message(HELLO, b"{").to_vec()),
            (
                "version 1",
                json_message(HELLO, &Hello { version: 1, region: "b".into(), role: Role::All, home: vec![] }).to_vec(),
            ),
            (
                "certificate names b",
                json_message(HELLO, &Hello { version: VERSION, region: "x".into(), role: Role::All, home: vec![] })
                    .to_vec(),
            ),
            ("invalid source", json_message(SUBSCRIBE, &Subscribe { src: "bad id!".into(), after_seq: 0 }).to_vec()),
        ];
        for (want, bytes) in cases {
            let mut c = core("a", &[]);
            c.handle(1, Event::Connected { conn: 7, peer: "b".into(), dir: ConnDir::Accepted }).unwrap();
            let e = c.handle(2, Event::Data { conn: 7, stream: 1, bytes: Bytes::from(bytes) }).unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with("peer b:") && text.contains(want), "{want}: {text}");
            let acts = drain(&mut c);
            assert!(acts.iter().any(|a| matches!(a, Action::Close { conn: 7, .. })), "{want}: {acts:?}");
            assert_eq!(c.peers()[0].stats.protocol_errors, 1);
            // Later bytes of the closed connection are ignored.
            c.handle(3, Event::Data { conn: 7, stream: 1, bytes: Bytes::from_static(b"junk") }).unwrap();
        }
    }

    #[test]
    fn a_bad_record_in_a_batch_closes_the_link_and_nothing_is_delivered() {
        let mut c = core("a", &["b"]);
        c.handle(1, Event::Tick).unwrap();
        assert!(matches!(drain(&mut c).as_slice(), [Action::Dial { peer }] if peer == "b"));
        c.handle(2, Event::Connected { conn: 1, peer: "b".into(), dir: ConnDir::Dialed }).unwrap();
        let hello = Hello { version: VERSION, region: "b".into(), role: Role::All, home: vec!["TEST.SRC".into()] };
        c.handle(3, Event::Data { conn: 1, stream: 0, bytes: json_message(HELLO, &hello) }).unwrap();
        let hb = Heartbeat {
            t: 3,
            echo: 0,
            hold: 0,
            sources: vec![Held { src: "TEST.SRC".into(), seq: 5, origin: "b".into() }],
            links: vec![],
            draining: false,
        };
        c.handle(4, Event::Data { conn: 1, stream: 0, bytes: json_message(HEARTBEAT, &hb) }).unwrap();
        c.handle(5, Event::Tick).unwrap();
        let acts = drain(&mut c);
        let sub = acts.iter().find_map(|a| match a {
            Action::OpenStream { conn: 1, stream } if *stream > 0 => Some(*stream),
            _ => None,
        });
        let stream = sub.expect("subscribed to TEST.SRC");
        assert_eq!(c.upstream(&SourceId::new("TEST.SRC").unwrap()), Some("b"));
        let batch = |recs: &[Vec<u8>]| {
            let mut b = vec![0u8; 4];
            b.push(BATCH);
            b.push(8);
            b.extend_from_slice(b"TEST.SRC");
            b.extend_from_slice(&9u64.to_le_bytes());
            for r in recs {
                frame::put_frame(r, &mut b);
            }
            let n = (b.len() - 4) as u32;
            b[..4].copy_from_slice(&n.to_le_bytes());
            Bytes::from(b)
        };
        let good = |s| tickmesh_codec::testing::trade(s, "AAPL", "1", "1", tickmesh_codec::Side::Buy).to_bytes();
        c.handle(6, Event::Data { conn: 1, stream, bytes: batch(&[good(1), good(2)]) }).unwrap();
        let acts = drain(&mut c);
        assert!(acts.iter().any(|a| matches!(a, Action::Deliver { count: 2, first_seq: 1, last_seq: 2, .. })));
        // A gap (seq 4 after 2) and a corrupt record are protocol errors; nothing is delivered.
        let e = c.handle(7, Event::Data { conn: 1, stream, bytes: batch(&[good(4)]) }).unwrap_err();
        assert!(e.to_string().contains("gap"), "{e}");
        assert!(!drain(&mut c).iter().any(|a| matches!(a, Action::Deliver { .. })));
    }

    #[test]
    fn draining_travels_in_the_heartbeat_and_old_heartbeats_read_as_active() {
        let mut c = core("a", &["b"]);
        c.handle(1, Event::Tick).unwrap();
        drain(&mut c);
        c.handle(2, Event::Connected { conn: 1, peer: "b".into(), dir: ConnDir::Dialed }).unwrap();
        let hello = Hello { version: VERSION, region: "b".into(), role: Role::All, home: vec![] };
        c.handle(3, Event::Data { conn: 1, stream: 0, bytes: json_message(HELLO, &hello) }).unwrap();
        drain(&mut c);
        // The peer says it drains; then a heartbeat without the field (an older peer).
        let hb = |t: u64, extra: &str| {
            let body = format!(r#"{{"t":{t},"echo":0,"hold":0,"sources":[],"links":[]{extra}}}"#);
            message(HEARTBEAT, body.as_bytes())
        };
        c.handle(4, Event::Data { conn: 1, stream: 0, bytes: hb(4, r#","draining":true"#) }).unwrap();
        assert!(c.peers().iter().any(|p| p.region == "b" && p.draining));
        c.handle(5, Event::Data { conn: 1, stream: 0, bytes: hb(5, "") }).unwrap();
        assert!(c.peers().iter().all(|p| !p.draining));
        // Our own drain goes out at once, on every connection; undrain omits the field.
        c.set_draining(true);
        let sent: Vec<Bytes> = drain(&mut c)
            .into_iter()
            .filter_map(|a| match a {
                Action::Send { conn: 1, bytes, .. } => Some(bytes),
                _ => None,
            })
            .collect();
        assert_eq!(sent.len(), 1, "one heartbeat on the one connection");
        let hb: Heartbeat = serde_json::from_slice(&sent[0][5..]).unwrap();
        assert!(hb.draining);
        c.set_draining(false);
        let sent = drain(&mut c);
        let Some(Action::Send { bytes, .. }) = sent.first() else { panic!("no heartbeat after undrain: {sent:?}") };
        assert!(!String::from_utf8_lossy(&bytes[5..]).contains("draining"));
    }
}
