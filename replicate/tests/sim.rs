//! Deterministic simulation of the mesh link protocol: no sockets, no sleeps, a virtual
//! clock. Three to six regions with the REGIONS.md round-trip matrix (plus jitter and
//! retransmission delays for loss), each with a memory journal and a home source producing
//! records, through scripted and seeded random cuts, heals, kills (a killed region loses
//! its link state; its journal survives) and restarts.
//!
//! Checked for every seed: no region ever accepted a duplicate or a gap (every delivery
//! continues the journal exactly), no core counted a duplicate, and after every link heals
//! every region holds every source with identical bytes. The scripted run also checks that
//! while A-B was cut, B kept receiving A's records through C, and went back to A after.
//!
//! `TICKMESH_SIM_SEEDS=N` runs N random seeds (default 200).

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::{Arc, Mutex};
use tickmesh_codec::{frame, Body, InstrumentId, Meta, Px, Qty, Record, Seq, Side, SourceId, Symbol, Trade};
use tickmesh_replicate::link::{Action, ConnDir, ConnId, CoreConfig, Event, MeshCore, StreamId};
use tickmesh_replicate::{
    DataClass, Decision, Direction, MemoryStore, RecordStore, Transfer, TransferAudit, TransferPolicy,
};

const MS: u64 = 1_000_000;
const T0: u64 = 1_700_000_000_000_000_000;

const REGIONS: [&str; 6] = ["us-east-1", "eu-west-1", "ap-southeast-1", "sa-east-1", "ap-southeast-2", "me-south-1"];
const RTT: [[u64; 6]; 6] = [
    [0, 70, 212, 114, 198, 160],
    [70, 0, 182, 176, 256, 96],
    [212, 182, 0, 322, 93, 86],
    [114, 176, 322, 0, 312, 272],
    [198, 256, 93, 312, 0, 178],
    [160, 96, 86, 272, 178, 0],
];

fn src_of(i: usize) -> SourceId {
    SourceId::new(&format!("SYN.R{i}")).unwrap()
}

fn record(src: SourceId, seq: u64, now: u64) -> Vec<u8> {
    let meta = Meta {
        src,
        seq: Seq(seq),
        instrument: InstrumentId(1),
        sym: Symbol::new("AAPL").unwrap(),
        ts_event: now,
        ts_ingest: now,
    };
    let body = Body::Trade(Trade {
        px: Px::parse("100.25").unwrap(),
        qty: Qty::parse(&format!("{}", seq % 97 + 1)).unwrap(),
        side: Side::Buy,
        match_id: seq,
    });
    Record::new(meta, body).to_bytes()
}

#[derive(Debug)]
enum Ev {
    /// (node, epoch): a restarted node's old tick chain stops.
    Tick(usize, u64),
    Produce(usize),
    Core(usize, Event),
    /// Bytes for (node, conn, stream), checked against the connection still existing.
    Data(usize, ConnId, StreamId, Bytes),
    End(usize, ConnId, StreamId),
    Dialed {
        from: usize,
        to: usize,
    },
    Op(Op),
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Cut(usize, usize),
    Heal(usize, usize),
    Kill(usize),
    Restart(usize),
    StopProducing,
    HealAll,
}

/// One side of a simulated connection.
#[derive(Debug, Clone, Copy)]
struct End {
    node: usize,
    conn: ConnId,
}

struct SimConn {
    a: End,
    b: End,
    /// Last delivery time per (direction a->b?, stream), so a stream stays in order.
    last: BTreeMap<(bool, StreamId), u64>,
    /// When its link was cut while it was open (closed by "idle timeout" 1.5 s later).
    cut_since: Option<u64>,
    /// Deliveries that reached a cut link, in order: QUIC retransmits them after a heal.
    parked: Vec<Ev>,
}

struct Node {
    store: Arc<MemoryStore>,
    core: Option<MeshCore>,
    src: SourceId,
    next_seq: u64,
    epoch: u64,
}

#[derive(Default)]
struct Stats {
    /// (receiver, source, from-peer) -> records, counted only while `watch` is active.
    relayed_while_cut: u64,
    deliveries: u64,
}

struct Policy;
impl TransferPolicy for Policy {
    fn class_of(&self, _src: &SourceId) -> DataClass {
        DataClass::MarketData
    }
    fn check(&self, _src: &SourceId, _from: &str, _to: &str, _dir: Direction) -> Decision {
        Decision::Allow
    }
}

#[derive(Default)]
struct Audit(Mutex<Vec<Transfer>>);
impl TransferAudit for Audit {
    fn record(&self, t: Transfer) {
        self.0.lock().unwrap().push(t);
    }
}

struct Sim {
    now: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    evs: BTreeMap<usize, Ev>,
    next_ev: usize,
    nodes: Vec<Node>,
    conns: BTreeMap<u64, SimConn>,
    /// (node, conn id) -> sim connection key.
    by_end: BTreeMap<(usize, ConnId), u64>,
    next_conn: u64,
    cut: BTreeSet<(usize, usize)>,
    rng: rand::rngs::StdRng,
    jitter: f64,
    loss: f64,
    producing: bool,
    /// While set: (a, b, c): count records b receives for a's source from c.
    watch: Option<(usize, usize, usize)>,
    stats: Stats,
    audit: Arc<Audit>,
    /// An `Appended` is already scheduled for this node (the node's watch coalesces too).
    appended_pending: Vec<bool>,
    /// Records each home source produces every 10 ms.
    per_produce: u64,
    /// Each region's residency policy.
    policies: Vec<Arc<dyn TransferPolicy>>,
}

impl Sim {
    fn new(n: usize, seed: u64, jitter: f64, loss: f64) -> Sim {
        let mut sim = Sim {
            now: T0,
            queue: BinaryHeap::new(),
            evs: BTreeMap::new(),
            next_ev: 0,
            nodes: Vec::new(),
            conns: BTreeMap::new(),
            by_end: BTreeMap::new(),
            next_conn: 1,
            cut: BTreeSet::new(),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            jitter,
            loss,
            producing: true,
            watch: None,
            stats: Stats::default(),
            audit: Arc::new(Audit::default()),
            appended_pending: vec![false; n],
            per_produce: 3,
            policies: (0..n).map(|_| Arc::new(Policy) as Arc<dyn TransferPolicy>).collect(),
        };
        for i in 0..n {
            sim.nodes.push(Node {
                store: Arc::new(MemoryStore::default()),
                core: None,
                src: src_of(i),
                next_seq: 1,
                epoch: 0,
            });
        }
        for i in 0..n {
            sim.start_core(i);
            sim.at(sim.now + (i as u64) * MS, Ev::Produce(i));
        }
        sim
    }

    fn start_core(&mut self, i: usize) {
        let n = self.nodes.len();
        let peers = (0..n).filter(|j| *j != i).map(|j| REGIONS[j].to_owned()).collect();
        let cfg = CoreConfig::new(REGIONS[i], vec![src_of(i)], peers);
        let store: Arc<dyn RecordStore> = Arc::new(self.nodes[i].store.clone());
        let core = MeshCore::new(cfg, store, self.policies[i].clone(), self.audit.clone(), self.now);
        self.nodes[i].core = Some(core);
        self.nodes[i].epoch += 1;
        let t = self.now + 1 + (i as u64) * 3 * MS;
        self.at(t, Ev::Tick(i, self.nodes[i].epoch));
    }

    fn at(&mut self, t: u64, ev: Ev) {
        let id = self.next_ev;
        self.next_ev += 1;
        self.evs.insert(id, ev);
        self.queue.push(Reverse((t, id as u64, id)));
    }

    fn is_cut(&self, a: usize, b: usize) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }

    fn one_way(&mut self, a: usize, b: usize) -> u64 {
        let base = RTT[a][b] * MS / 2;
        let j = (base as f64 * self.jitter * self.rng.random::<f64>()) as u64;
        // A lost packet costs a retransmission: about one more round trip.
        let l = if self.rng.random::<f64>() < self.loss { RTT[a][b] * MS } else { 0 };
        base + j + l
    }

    fn run_until(&mut self, end: u64) {
        while let Some(Reverse((t, _, id))) = self.queue.peek().copied() {
            if t > end {
                break;
            }
            self.queue.pop();
            self.now = t;
            let ev = self.evs.remove(&id).unwrap();
            self.step(ev);
        }
        self.now = end;
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Tick(i, epoch) => {
                if self.nodes[i].core.is_some() && self.nodes[i].epoch == epoch {
                    self.core(i, Event::Tick);
                    self.idle_timeouts();
                    let t = self.now + 50 * MS;
                    self.at(t, Ev::Tick(i, epoch));
                }
            }
            Ev::Produce(i) => {
                if self.producing && self.nodes[i].core.is_some() {
                    let node = &mut self.nodes[i];
                    for _ in 0..self.per_produce {
                        let rec = record(node.src, node.next_seq, self.now);
                        assert!(node.store.append(&rec).unwrap());
                        node.next_seq += 1;
                    }
                    self.appended(i);
                }
                let t = self.now + 10 * MS;
                if self.producing {
                    self.at(t, Ev::Produce(i));
                }
            }
            Ev::Core(i, Event::Appended) => {
                self.appended_pending[i] = false;
                self.core(i, Event::Appended);
            }
            Ev::Core(i, e) => {
                if self.nodes[i].core.is_some() {
                    self.core(i, e);
                }
            }
            Ev::Data(i, conn, _, _) | Ev::End(i, conn, _) => {
                let Some(k) = self.by_end.get(&(i, conn)).copied() else { return };
                let c = &self.conns[&k];
                if self.is_cut(c.a.node, c.b.node) || !c.parked.is_empty() {
                    // Retransmitted, in order, once the link heals (or lost with the
                    // connection when it times out).
                    self.conns.get_mut(&k).unwrap().parked.push(ev);
                    return;
                }
                self.deliver(ev);
            }
            Ev::Dialed { from, to } => {
                if self.nodes[from].core.is_none() {
                    return;
                }
                if self.nodes[to].core.is_none() || self.is_cut(from, to) {
                    self.core(from, Event::DialFailed { peer: REGIONS[to].to_owned() });
                    return;
                }
                let key = self.next_conn;
                self.next_conn += 1;
                // Connection ids differ per side, like two processes' own counters.
                let a = End { node: from, conn: key * 2 };
                let b = End { node: to, conn: key * 2 + 1 };
                self.conns.insert(key, SimConn { a, b, last: BTreeMap::new(), cut_since: None, parked: Vec::new() });
                self.by_end.insert((from, a.conn), key);
                self.by_end.insert((to, b.conn), key);
                self.core(
                    to,
                    Event::Connected { conn: b.conn, peer: REGIONS[from].to_owned(), dir: ConnDir::Accepted },
                );
                self.core(from, Event::Connected { conn: a.conn, peer: REGIONS[to].to_owned(), dir: ConnDir::Dialed });
            }
            Ev::Op(op) => self.op(op),
        }
    }

    fn appended(&mut self, i: usize) {
        if !std::mem::replace(&mut self.appended_pending[i], true) {
            let t = self.now + MS;
            self.at(t, Ev::Core(i, Event::Appended));
        }
    }

    fn deliver(&mut self, ev: Ev) {
        match ev {
            Ev::Data(i, conn, stream, bytes) => self.core(i, Event::Data { conn, stream, bytes }),
            Ev::End(i, conn, stream) => self.core(i, Event::StreamEnded { conn, stream }),
            _ => unreachable!(),
        }
    }

    fn op(&mut self, op: Op) {
        match op {
            Op::Cut(a, b) => {
                self.cut.insert((a.min(b), a.max(b)));
                let now = self.now;
                for c in self.conns.values_mut() {
                    let (x, y) = (c.a.node.min(c.b.node), c.a.node.max(c.b.node));
                    if (x, y) == (a.min(b), a.max(b)) && c.cut_since.is_none() {
                        c.cut_since = Some(now);
                    }
                }
            }
            Op::Heal(a, b) => {
                self.cut.remove(&(a.min(b), a.max(b)));
                let mut flush = Vec::new();
                for c in self.conns.values_mut() {
                    let (x, y) = (c.a.node.min(c.b.node), c.a.node.max(c.b.node));
                    if (x, y) == (a.min(b), a.max(b)) {
                        c.cut_since = None;
                        flush.append(&mut c.parked);
                    }
                }
                for ev in flush {
                    self.deliver(ev);
                }
            }
            Op::HealAll => {
                let all: Vec<_> = self.cut.iter().copied().collect();
                for (a, b) in all {
                    self.op(Op::Heal(a, b));
                }
            }
            Op::Kill(i) => {
                if self.nodes[i].core.take().is_none() {
                    return;
                }
                // The peers notice by idle timeout; the dead side's ends vanish now.
                let keys: Vec<u64> =
                    self.conns.iter().filter(|(_, c)| c.a.node == i || c.b.node == i).map(|(k, _)| *k).collect();
                for k in keys {
                    let c = &self.conns[&k];
                    let other = if c.a.node == i { c.b } else { c.a };
                    let mine = if c.a.node == i { c.a } else { c.b };
                    self.by_end.remove(&(mine.node, mine.conn));
                    let t = self.now + 1500 * MS;
                    self.at(t, Ev::Core(other.node, Event::Closed { conn: other.conn }));
                    self.conns.get_mut(&k).unwrap().cut_since = None;
                }
            }
            Op::Restart(i) => {
                if self.nodes[i].core.is_none() {
                    self.start_core(i);
                }
            }
            Op::StopProducing => self.producing = false,
        }
    }

    /// Connections whose link has been cut for 1.5 s close at both ends (QUIC idle timeout).
    fn idle_timeouts(&mut self) {
        let now = self.now;
        let dead: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.cut_since.is_some_and(|t| now - t >= 1500 * MS))
            .map(|(k, _)| *k)
            .collect();
        for k in dead {
            self.close(k);
        }
    }

    fn close(&mut self, k: u64) {
        let Some(c) = self.conns.remove(&k) else { return };
        for e in [c.a, c.b] {
            if self.by_end.remove(&(e.node, e.conn)).is_some() && self.nodes[e.node].core.is_some() {
                self.at(self.now, Ev::Core(e.node, Event::Closed { conn: e.conn }));
            }
        }
    }

    fn core(&mut self, i: usize, ev: Event) {
        let now = self.now;
        let Some(core) = self.nodes[i].core.as_mut() else { return };
        if let Err(e) = core.handle(now, ev) {
            panic!("{}: protocol error in the simulation: {e}", REGIONS[i]);
        }
        let mut actions = Vec::new();
        while let Some(a) = core.poll_action() {
            actions.push(a);
        }
        for a in actions {
            self.apply(i, a);
        }
    }

    fn apply(&mut self, i: usize, a: Action) {
        match a {
            Action::Dial { peer } => {
                let to = REGIONS.iter().position(|r| *r == peer).unwrap();
                let t = self.now + RTT[i][to] * MS;
                self.at(t, Ev::Dialed { from: i, to });
            }
            Action::OpenStream { .. } => {}
            Action::Send { conn, stream, bytes, ack } => {
                self.send(i, conn, stream, Some(bytes));
                if ack {
                    let t = self.now;
                    self.at(t, Ev::Core(i, Event::Written { conn, stream }));
                }
            }
            Action::Finish { conn, stream } => self.send(i, conn, stream, None),
            Action::Close { conn, .. } => {
                if let Some(k) = self.by_end.get(&(i, conn)).copied() {
                    // Our side is gone now; the peer hears after the one-way delay.
                    let c = self.conns.remove(&k).unwrap();
                    let other = if c.a.node == i { c.b } else { c.a };
                    self.by_end.remove(&(i, conn));
                    self.by_end.remove(&(other.node, other.conn));
                    let t = self.now + RTT[i][other.node] * MS / 2;
                    self.at(t, Ev::Core(other.node, Event::Closed { conn: other.conn }));
                }
            }
            Action::Deliver { peer, src, frames, count, first_seq, last_seq, .. } => {
                let node = &self.nodes[i];
                let before = node.store.positions().into_iter().find(|(s, _)| *s == src).map(|x| x.1).unwrap_or(0);
                assert_eq!(
                    first_seq,
                    before + 1,
                    "{} accepted {src} from {peer} starting at {first_seq} while holding {before}: a duplicate or a gap",
                    REGIONS[i]
                );
                let mut n = 0;
                for r in frame::Frames::new(&frames) {
                    let r = r.unwrap();
                    assert!(
                        node.store.append(r.bytes()).unwrap(),
                        "{}: store refused {src} seq {}",
                        REGIONS[i],
                        r.seq()
                    );
                    n += 1;
                }
                assert_eq!(n, count);
                assert_eq!(node.store.positions().into_iter().find(|(s, _)| *s == src).unwrap().1, last_seq);
                self.stats.deliveries += 1;
                if let Some((a, b, c)) = self.watch {
                    if i == b && src == src_of(a) && peer == REGIONS[c] {
                        self.stats.relayed_while_cut += u64::from(count);
                    }
                }
                self.appended(i);
            }
        }
    }

    /// Schedules bytes (or the end of the stream) for the other end of `conn`.
    fn send(&mut self, i: usize, conn: ConnId, stream: StreamId, bytes: Option<Bytes>) {
        let Some(k) = self.by_end.get(&(i, conn)).copied() else { return };
        let (a, b) = (self.conns[&k].a, self.conns[&k].b);
        let (to, forward) = if a.node == i { (b, true) } else { (a, false) };
        let delay = self.one_way(i, to.node);
        let c = self.conns.get_mut(&k).unwrap();
        let last = c.last.entry((forward, stream)).or_insert(0);
        let t = (self.now + delay).max(*last);
        *last = t;
        // The dialer opens even streams; the acceptor sees them as the next odd id.
        let remote_stream = if forward { stream + 1 } else { stream - 1 };
        let ev = match bytes {
            Some(b) => Ev::Data(to.node, to.conn, remote_stream, b),
            None => Ev::End(to.node, to.conn, remote_stream),
        };
        self.at(t, ev);
    }

    /// Every region holds every source up to its origin's last seq (cheap check).
    fn converged(&self) -> bool {
        let want: BTreeMap<SourceId, u64> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (src_of(i), n.store.positions().into_iter().find(|(s, _)| *s == src_of(i)).map_or(0, |x| x.1))
            })
            .collect();
        self.nodes.iter().all(|n| n.store.positions().into_iter().collect::<BTreeMap<_, _>>() == want)
    }

    /// Every region holds every source, byte for byte the same.
    fn assert_converged(&self, label: &str) {
        let reference: BTreeMap<SourceId, u64> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (src_of(i), n.store.positions().into_iter().find(|(s, _)| *s == src_of(i)).map_or(0, |x| x.1))
            })
            .collect();
        for (i, n) in self.nodes.iter().enumerate() {
            let pos: BTreeMap<SourceId, u64> = n.store.positions().into_iter().collect();
            assert_eq!(
                pos, reference,
                "{label}: {} does not hold every source up to its origin's last seq",
                REGIONS[i]
            );
            for (src, last) in &reference {
                let mut mine = Vec::new();
                n.store.cursor(src, 0).unwrap().fill(&mut mine, usize::MAX).unwrap();
                let mut origin = Vec::new();
                let o = (0..self.nodes.len()).find(|o| src_of(*o) == *src).unwrap();
                self.nodes[o].store.cursor(src, 0).unwrap().fill(&mut origin, usize::MAX).unwrap();
                assert_eq!(mine.len(), origin.len(), "{label}: {} holds {src} with other bytes", REGIONS[i]);
                assert!(mine == origin, "{label}: {} holds {src} with other bytes", REGIONS[i]);
                assert!(*last > 0);
            }
            let core = n.core.as_ref().unwrap();
            for p in core.peers() {
                assert_eq!(p.stats.duplicates, 0, "{label}: {} received duplicates from {}", REGIONS[i], p.region);
                assert_eq!(p.stats.protocol_errors, 0, "{label}: protocol errors");
            }
        }
    }
}

#[test]
fn relay_around_a_cut_link_and_back() {
    let (a, b, c) = (0, 1, 2); // us-east-1, eu-west-1, ap-southeast-1
    let mut sim = Sim::new(3, 1, 0.0, 0.0);
    sim.run_until(T0 + 3_000 * MS);
    let us = src_of(a);
    assert_eq!(sim.nodes[b].core.as_ref().unwrap().upstream(&us), Some(REGIONS[a]), "direct path first");
    sim.op(Op::Cut(a, b));
    sim.watch = Some((a, b, c));
    let before = sim.nodes[b].store.positions().into_iter().find(|(s, _)| *s == us).unwrap().1;
    sim.run_until(T0 + 8_000 * MS);
    assert_eq!(sim.nodes[b].core.as_ref().unwrap().upstream(&us), Some(REGIONS[c]), "relayed through C while cut");
    let during = sim.nodes[b].store.positions().into_iter().find(|(s, _)| *s == us).unwrap().1;
    assert!(during > before + 300, "B kept receiving A's records while cut ({before} -> {during})");
    assert!(sim.stats.relayed_while_cut > 300, "records relayed by C: {}", sim.stats.relayed_while_cut);
    sim.watch = None;
    sim.op(Op::Heal(a, b));
    sim.run_until(T0 + 12_000 * MS);
    assert_eq!(sim.nodes[b].core.as_ref().unwrap().upstream(&us), Some(REGIONS[a]), "back on the direct path");
    sim.op(Op::StopProducing);
    sim.run_until(T0 + 20_000 * MS);
    sim.assert_converged("scripted");
    let audit = sim.audit.0.lock().unwrap();
    assert!(audit.iter().any(|t| t.from == REGIONS[c] && t.to == REGIONS[b] && t.src == us.as_str() && t.count > 0));
    assert!(audit.iter().all(|t| t.decision == Decision::Allow));
}

/// Region 0's source is PII: it may not leave region 0. `send` / `receive` choose which
/// side enforces it.
struct PiiStaysHome {
    send: bool,
    receive: bool,
}
impl TransferPolicy for PiiStaysHome {
    fn class_of(&self, src: &SourceId) -> DataClass {
        if *src == src_of(0) {
            DataClass::Pii
        } else {
            DataClass::MarketData
        }
    }
    fn check(&self, src: &SourceId, _from: &str, _to: &str, dir: Direction) -> Decision {
        let enforce = match dir {
            Direction::Send => self.send,
            Direction::Receive => self.receive,
        };
        if enforce && self.class_of(src) == DataClass::Pii {
            Decision::Deny("pii stays in its home region".into())
        } else {
            Decision::Allow
        }
    }
}

#[test]
fn pii_never_leaves_its_region_whichever_side_enforces() {
    for (send, receive) in [(true, false), (false, true)] {
        let mut sim = Sim::new(3, 3, 0.0, 0.0);
        // Only the origin enforces on send, or only the receivers on receive (a
        // misconfigured origin): either way the records stay home.
        sim.policies = vec![
            Arc::new(PiiStaysHome { send, receive: false }),
            Arc::new(PiiStaysHome { send: false, receive }),
            Arc::new(PiiStaysHome { send: false, receive }),
        ];
        for i in 0..3 {
            sim.nodes[i].core = None;
            sim.start_core(i);
        }
        sim.run_until(T0 + 4_000 * MS);
        for (i, node) in sim.nodes.iter().enumerate().skip(1) {
            let pos: BTreeMap<SourceId, u64> = node.store.positions().into_iter().collect();
            assert!(!pos.contains_key(&src_of(0)), "{}: a PII record left its region ({send}, {receive})", REGIONS[i]);
            assert!(pos.get(&src_of(1 + (i % 2))).is_some_and(|q| *q > 100), "market data still flows");
        }
        let audit = sim.audit.0.lock().unwrap();
        let denied: Vec<_> = audit.iter().filter(|t| !t.decision.is_allowed()).collect();
        assert!(!denied.is_empty(), "the refused attempts are audited");
        assert!(denied.iter().all(|t| t.src == src_of(0).as_str() && t.class == DataClass::Pii), "{denied:?}");
        let want = if send { Direction::Send } else { Direction::Receive };
        assert!(denied.iter().all(|t| t.dir == want), "{denied:?}");
        assert!(audit.iter().filter(|t| t.decision.is_allowed()).all(|t| t.src != src_of(0).as_str()));
        // Allowed transfers are aggregated: at most one entry per (from, to, source, side) a second.
        let mut per: BTreeMap<(String, String, String, bool), u64> = BTreeMap::new();
        for t in audit.iter().filter(|t| t.decision.is_allowed()) {
            *per.entry((t.from.clone(), t.to.clone(), t.src.clone(), t.dir == Direction::Send)).or_default() += 1;
        }
        assert!(per.values().all(|n| *n <= 5), "{per:?}");
    }
}

#[test]
fn kill_and_restart_catch_up_from_the_journal() {
    let mut sim = Sim::new(4, 7, 0.1, 0.01);
    sim.run_until(T0 + 2_000 * MS);
    sim.op(Op::Kill(1));
    sim.run_until(T0 + 5_000 * MS);
    let held = sim.nodes[1].store.positions().into_iter().find(|(s, _)| *s == src_of(0)).unwrap().1;
    sim.op(Op::Restart(1));
    sim.run_until(T0 + 8_000 * MS);
    let now = sim.nodes[1].store.positions().into_iter().find(|(s, _)| *s == src_of(0)).unwrap().1;
    assert!(now > held + 500, "the restarted region caught up ({held} -> {now})");
    sim.op(Op::StopProducing);
    sim.run_until(T0 + 15_000 * MS);
    sim.assert_converged("kill");
}

fn random_run(seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xA5A5);
    let n = rng.random_range(3..=6);
    let jitter = if rng.random_bool(0.5) { 0.2 } else { 0.0 };
    let loss = if rng.random_bool(0.5) { 0.02 } else { 0.0 };
    let mut sim = Sim::new(n, seed, jitter, loss);
    sim.per_produce = 1;
    let mut t = T0 + 500 * MS;
    let end = T0 + 6_000 * MS;
    loop {
        t += rng.random_range(200..1_500) * MS;
        if t >= end {
            break;
        }
        let op = match rng.random_range(0..10) {
            0..=3 => {
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                Op::Cut(a, b)
            }
            4..=6 => {
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                Op::Heal(a, b)
            }
            7 => Op::Kill(rng.random_range(0..n)),
            _ => Op::Restart(rng.random_range(0..n)),
        };
        sim.at(t, Ev::Op(op));
    }
    sim.run_until(end);
    sim.op(Op::StopProducing);
    sim.op(Op::HealAll);
    for i in 0..n {
        sim.op(Op::Restart(i));
    }
    let mut until = end;
    while until < end + 30_000 * MS && !sim.converged() {
        until += 1_000 * MS;
        sim.run_until(until);
    }
    sim.assert_converged(&format!("seed {seed} ({n} regions, jitter {jitter}, loss {loss})"));
}

/// Seeds `shard`, `shard + 4`, ... of `TICKMESH_SIM_SEEDS` (default 200), so the four
/// shards run on parallel test threads.
fn random_shard(shard: u64) {
    let seeds: u64 = std::env::var("TICKMESH_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    for seed in (shard..seeds).step_by(4) {
        random_run(seed);
    }
}

#[test]
fn random_cuts_kills_and_restarts_converge_0() {
    random_shard(0);
}
#[test]
fn random_cuts_kills_and_restarts_converge_1() {
    random_shard(1);
}
#[test]
fn random_cuts_kills_and_restarts_converge_2() {
    random_shard(2);
}
#[test]
fn random_cuts_kills_and_restarts_converge_3() {
    random_shard(3);
}
