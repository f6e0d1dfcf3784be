//! A scripted peer around one [`MeshCore`], without I/O: the node under test is
//! `us-east-1` (home to `SYN.USE1`, records 1 to 5 in its store), its configured peers
//! `eu-west-1` (home to `SYN.EUW1`) and `ap-southeast-1` (home to `SYN.APS1`). The test
//! plays the peers' side of the wire by building messages itself (the format of
//! `replicate/src/link.rs`'s module docs), so a mistake in the core's own encoder cannot
//! hide one in its decoder. Shared by `fuzz_mesh.rs` and `hostile_peer.rs`.

#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use std::sync::Arc;
use tickmesh_codec::{frame, Body, InstrumentId, Meta, Px, Qty, Record, Seq, Side, SourceId, Symbol, Trade};
use tickmesh_replicate::link::{
    Action, ConnDir, ConnId, CoreConfig, Event, Heartbeat, Held, Hello, LinkStats, MeshCore, Role, StreamId, Subscribe,
    VERSION,
};
use tickmesh_replicate::{AllowAll, Error, MemoryStore, NoAudit, RecordStore};

pub const HELLO: u8 = 1;
pub const HEARTBEAT: u8 = 2;
pub const SUBSCRIBE: u8 = 3;
pub const UNSUBSCRIBE: u8 = 4;
pub const REFUSED: u8 = 5;
pub const BATCH: u8 = 6;

/// The node under test.
pub const A: &str = "us-east-1";
/// A peer (the one that misbehaves).
pub const B: &str = "eu-west-1";
/// Another peer.
pub const C: &str = "ap-southeast-1";
pub const SRC_A: &str = "SYN.USE1";
pub const SRC_B: &str = "SYN.EUW1";
pub const SRC_C: &str = "SYN.APS1";

pub fn sid(s: &str) -> SourceId {
    SourceId::new(s).unwrap()
}

/// A valid trade record of `src`.
pub fn record(src: &str, seq: u64) -> Vec<u8> {
    let meta = Meta {
        src: sid(src),
        seq: Seq(seq),
        instrument: InstrumentId(1),
        sym: Symbol::new("AAPL").unwrap(),
        ts_event: 1_700_000_000_000_000_000 + seq,
        ts_ingest: 1_700_000_000_000_000_000 + seq,
    };
    let body = Body::Trade(Trade {
        px: Px::parse("100.25").unwrap(),
        qty: Qty::parse("3").unwrap(),
        side: Side::Buy,
        match_id: seq,
    });
    Record::new(meta, body).to_bytes()
}

pub fn records(src: &str, seqs: std::ops::RangeInclusive<u64>) -> Vec<Vec<u8>> {
    seqs.map(|q| record(src, q)).collect()
}

/// `u32` LE length (type + body), `u8` type, body.
pub fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(5 + body.len());
    b.extend_from_slice(&(body.len() as u32 + 1).to_le_bytes());
    b.push(kind);
    b.extend_from_slice(body);
    b
}

pub fn json<T: serde::Serialize>(kind: u8, v: &T) -> Vec<u8> {
    message(kind, &serde_json::to_vec(v).unwrap())
}

pub fn hello(region: &str, home: &[&str]) -> Vec<u8> {
    json(
        HELLO,
        &Hello {
            version: VERSION,
            region: region.into(),
            role: Role::All,
            home: home.iter().map(|s| s.to_string()).collect(),
        },
    )
}

/// A heartbeat listing `(source, seq, origin)`.
pub fn heartbeat(t: u64, sources: &[(&str, u64, &str)]) -> Vec<u8> {
    json(
        HEARTBEAT,
        &Heartbeat {
            t,
            echo: 0,
            hold: 0,
            sources: sources
                .iter()
                .map(|(s, q, o)| Held { src: s.to_string(), seq: *q, origin: o.to_string() })
                .collect(),
            links: vec![],
            draining: false,
        },
    )
}

pub fn subscribe(src: &str, after: u64) -> Vec<u8> {
    json(SUBSCRIBE, &Subscribe { src: src.into(), after_seq: after })
}

/// A `BATCH` whose header names `name`, carrying `recs`.
pub fn batch(name: &str, recs: &[Vec<u8>]) -> Vec<u8> {
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(&1_700_000_000_000_000_000u64.to_le_bytes());
    for r in recs {
        frame::put_frame(r, &mut body);
    }
    message(BATCH, &body)
}

/// One delivery to the node's journal.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    pub peer: String,
    pub src: SourceId,
    pub frames: Bytes,
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: u32,
}

/// The node under test and everything it asked the driver to do.
pub struct Node {
    pub core: MeshCore,
    pub now: u64,
    pub store: Arc<MemoryStore>,
    pub actions: Vec<Action>,
    next_conn: ConnId,
}

impl Node {
    pub fn new() -> Node {
        let store = Arc::new(MemoryStore::default());
        for r in records(SRC_A, 1..=5) {
            store.append(&r).unwrap();
        }
        let dyn_store: Arc<dyn RecordStore> = Arc::new(store.clone());
        let cfg = CoreConfig::new(A, vec![sid(SRC_A)], vec![B.into(), C.into()]);
        let now = 1_700_000_000_000_000_000;
        let core = MeshCore::new(cfg, dyn_store, Arc::new(AllowAll), Arc::new(NoAudit), now);
        Node { core, now, store, actions: Vec::new(), next_conn: 1 }
    }

    /// Handles one event 1 ms after the last; returns the core's answer.
    pub fn handle(&mut self, ev: Event) -> Result<(), Error> {
        self.now += 1_000_000;
        let r = self.core.handle(self.now, ev);
        while let Some(a) = self.core.poll_action() {
            self.actions.push(a);
        }
        r
    }

    pub fn tick(&mut self) {
        self.handle(Event::Tick).unwrap();
    }

    pub fn data(&mut self, conn: ConnId, stream: StreamId, bytes: &[u8]) -> Result<(), Error> {
        self.handle(Event::Data { conn, stream, bytes: Bytes::copy_from_slice(bytes) })
    }

    /// Actions since the last call.
    pub fn take(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Our dialed connection to `peer` is up and the peer said hello, claiming `home`.
    pub fn dialed(&mut self, peer: &str, home: &[&str]) -> ConnId {
        self.tick();
        let conn = self.next_conn;
        self.next_conn += 1;
        self.handle(Event::Connected { conn, peer: peer.into(), dir: ConnDir::Dialed }).unwrap();
        self.data(conn, 0, &hello(peer, home)).unwrap();
        conn
    }

    /// `peer` dialed us (no message yet).
    pub fn accepted(&mut self, peer: &str) -> ConnId {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.handle(Event::Connected { conn, peer: peer.into(), dir: ConnDir::Accepted }).unwrap();
        conn
    }

    /// The stream on which we subscribed `src` on `conn` (the last such subscription).
    pub fn sub_stream(&self, conn: ConnId, src: &str) -> Option<StreamId> {
        self.actions.iter().rev().find_map(|a| match a {
            Action::Send { conn: c, stream, bytes, .. } if *c == conn && bytes.len() > 5 && bytes[4] == SUBSCRIBE => {
                let s: Subscribe = serde_json::from_slice(&bytes[5..]).ok()?;
                (s.src == src).then_some(*stream)
            }
            _ => None,
        })
    }

    /// `peer` (home to `src`) connected, said hello, reported `seq` of `src`, and we
    /// subscribed to it: the connection and the subscription stream.
    pub fn upstream(&mut self, peer: &str, src: &str, seq: u64) -> (ConnId, StreamId) {
        let conn = self.dialed(peer, &[src]);
        self.data(conn, 0, &heartbeat(self.now, &[(src, seq, peer)])).unwrap();
        self.tick();
        let stream = self.sub_stream(conn, src).expect("subscribed to the peer's home source");
        (conn, stream)
    }

    pub fn delivered(&self) -> Vec<Delivered> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Deliver { peer, src, frames, count, first_seq, last_seq, .. } => Some(Delivered {
                    peer: peer.clone(),
                    src: *src,
                    frames: frames.clone(),
                    first_seq: *first_seq,
                    last_seq: *last_seq,
                    count: *count,
                }),
                _ => None,
            })
            .collect()
    }

    pub fn closed(&self, conn: ConnId) -> Option<String> {
        self.actions.iter().find_map(|a| match a {
            Action::Close { conn: c, reason } if *c == conn => Some(reason.clone()),
            _ => None,
        })
    }

    pub fn stats(&self, peer: &str) -> LinkStats {
        self.core.peers().into_iter().find(|p| p.region == peer).map(|p| p.stats).unwrap_or_default()
    }

    /// The node still serves: a fresh connection from `peer` says hello and subscribes
    /// to our home source, and gets a batch of it.
    pub fn still_serves(&mut self, peer: &str) -> bool {
        let conn = self.accepted(peer);
        self.take();
        let ok = self.data(conn, 1, &hello(peer, &[])).is_ok() && self.data(conn, 3, &subscribe(SRC_A, 0)).is_ok();
        ok && self.take().iter().any(
            |a| matches!(a, Action::Send { conn: c, stream: 3, bytes, ack: true } if *c == conn && bytes[4] == BATCH),
        )
    }
}
