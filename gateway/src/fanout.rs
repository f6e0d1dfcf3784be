//! Encode once, fan out by reference.
//!
//! The node's hub thread hands every record (in per-source `seq` order) to [`Fanout::publish`].
//! Each record becomes its complete WebSocket frames once here: a JSON text frame and a
//! binary frame (`u32` length + codec bytes). The frames are `Bytes`, so every core and
//! every subscribed client's queue holds a reference-counted handle, never a copy.
//!
//! Why not tokio-tungstenite on the hot path: its `Message` owns its payload and its sink
//! frames (and would mask or copy) per connection, so sending one record to N clients costs
//! N serializations and N frame builds. We use it nowhere in the server; the handshake is
//! done by hyper's upgrade and the frames by [`crate::ws`].

use bytes::Bytes;
use std::collections::HashSet;
use std::sync::Arc;
use tickmesh_codec::{json, RecordKind, RecordRef, SourceId, Symbol};
use tokio::sync::mpsc::UnboundedSender;

use crate::shared::GatewayShared;
use crate::ws;

/// One record, encoded once for all clients of this gateway.
#[derive(Debug)]
pub struct Encoded {
    /// Source.
    pub src: SourceId,
    /// Sequence number.
    pub seq: u64,
    /// Kind (selects the channel).
    pub kind: RecordKind,
    /// Symbol.
    pub sym: Symbol,
    /// Venue event time (ns).
    pub ts_event: u64,
    /// Ingest time (ns), for latency metrics.
    pub ts_ingest: u64,
    /// The level, for `Level` records (the `book` channel keeps per-core books).
    pub level: Option<tickmesh_codec::Level>,
    /// True for a `Status` record that marks a gap in the venue's own feed (reason `GAP`):
    /// clients of the symbol get a `gap` naming it, whatever channel they take.
    pub venue_gap: bool,
    /// For an `OrderUpdate` (the private `orders` channel), the owning user as the record
    /// holds it (ASCII, zero-padded): only a session whose token `sub` equals it gets it.
    pub owner: Option<[u8; 24]>,
    /// When the fan-out published a sampled record (ns; 0 for records not sampled, see
    /// `hops::sampled`): the start of the gateway hop, which ends when a session's write of
    /// it completes.
    pub published_ns: u64,
    /// Complete text frame holding the JSON message.
    pub json_frame: Bytes,
    /// Length of the frame header at the front of `json_frame` (the rest is the JSON).
    pub json_header_len: usize,
    /// Complete binary frame: `u32` LE length, then the codec record.
    pub binary_frame: Bytes,
    /// Length of the frame header at the front of `binary_frame`.
    pub binary_header_len: usize,
}

impl Encoded {
    /// Encodes `rec` into its frames.
    pub fn new(rec: &RecordRef<'_>, scratch: &mut Vec<u8>) -> Encoded {
        scratch.clear();
        json::write_json(rec, scratch);
        let mut jf = Vec::with_capacity(scratch.len() + 4);
        ws::frame_header(ws::OpCode::Text, scratch.len(), &mut jf);
        let json_header_len = jf.len();
        jf.extend_from_slice(scratch);

        let bytes = rec.bytes();
        let mut bf = Vec::with_capacity(bytes.len() + 8);
        ws::frame_header(ws::OpCode::Binary, bytes.len() + 4, &mut bf);
        let binary_header_len = bf.len();
        tickmesh_codec::frame::put_frame(bytes, &mut bf);

        let h = rec.header();
        Encoded {
            src: rec.source_id(),
            seq: rec.seq(),
            kind: rec.kind(),
            sym: tickmesh_codec::Symbol::from_bytes(h.sym.padded()).unwrap_or_else(|_| unknown_symbol()),
            ts_event: rec.ts_event(),
            ts_ingest: rec.ts_ingest(),
            level: level_of(rec),
            published_ns: if crate::hops::sampled(rec.seq()) { tickmesh_codec::now_ns() } else { 0 },
            venue_gap: matches!(rec.body(), tickmesh_codec::BodyRef::Status(st) if st.reason.starts_with(b"GAP\0")),
            owner: record_owner(rec),
            json_frame: Bytes::from(jf),
            json_header_len,
            binary_frame: Bytes::from(bf),
            binary_header_len,
        }
    }

    /// Whether a session whose token `sub` is `sub` may receive this record: every record
    /// of a public channel, and an `OrderUpdate` only by its owner.
    pub fn visible_to(&self, sub: &str) -> bool {
        self.owner.is_none_or(|o| owner_is(&o, sub))
    }

    /// The JSON text without its frame header (for `batch=1` frames).
    pub fn json_payload(&self) -> Bytes {
        self.json_frame.slice(self.json_header_len..)
    }

    /// The length-prefixed record without its frame header (for multi-record binary frames).
    pub fn binary_payload(&self) -> Bytes {
        self.binary_frame.slice(self.binary_header_len..)
    }

    /// The JSON message marked `"conflated":true` (a slow client's merged state).
    pub fn conflated_json(&self) -> Vec<u8> {
        let j = &self.json_frame[self.json_header_len..];
        let mut v = Vec::with_capacity(j.len() + 18);
        v.extend_from_slice(&j[..j.len() - 1]);
        v.extend_from_slice(b",\"conflated\":true}");
        v
    }
}

#[cold]
fn unknown_symbol() -> Symbol {
    Symbol::new("?").expect("constant symbol is valid")
}

/// Message from the fan-out to a core.
#[derive(Debug)]
pub(crate) enum CoreMsg {
    /// A record to deliver.
    Record(Arc<Encoded>),
    /// Stop: send `reconnect` (reason `shutdown`) and close every session.
    Shutdown,
}

/// The writing side of the gateway: owned by the node's hub thread.
#[derive(Debug)]
pub struct Fanout {
    cores: Vec<UnboundedSender<CoreMsg>>,
    shared: Arc<GatewayShared>,
    known: HashSet<(SourceId, Symbol)>,
    scratch: Vec<u8>,
}

impl Fanout {
    pub(crate) fn new(cores: Vec<UnboundedSender<CoreMsg>>, shared: Arc<GatewayShared>) -> Self {
        Fanout { cores, shared, known: HashSet::new(), scratch: Vec::with_capacity(512) }
    }

    /// Encodes `rec` once and hands it to every core. Records of one source must be
    /// published in `seq` order (the hub guarantees it).
    pub fn publish(&mut self, rec: &RecordRef<'_>) {
        let enc = Arc::new(Encoded::new(rec, &mut self.scratch));
        if self.known.insert((enc.src, enc.sym)) {
            self.shared.learn_symbol(enc.sym.as_str(), enc.src);
        }
        self.shared.note_position(enc.src, enc.seq);
        for c in &self.cores {
            // A core that has stopped is shutting down; nothing to deliver to.
            let _ = c.send(CoreMsg::Record(enc.clone()));
        }
    }
}

/// The level a `Level` record sets (None for other kinds).
pub(crate) fn level_of(rec: &RecordRef<'_>) -> Option<tickmesh_codec::Level> {
    match rec.body() {
        tickmesh_codec::BodyRef::Level(l) => Some(tickmesh_codec::Level {
            side: l.side.get(),
            px: l.px.get(),
            qty: l.qty.get(),
            count: l.count.to_native(),
        }),
        _ => None,
    }
}

/// The owning user of a private record (an `OrderUpdate`), `None` for public records.
pub(crate) fn record_owner(rec: &RecordRef<'_>) -> Option<[u8; 24]> {
    match rec.body() {
        tickmesh_codec::BodyRef::OrderUpdate(u) => Some(u.user),
        _ => None,
    }
}

/// Whether a zero-padded user field names `sub` exactly (an empty `sub` owns nothing).
pub(crate) fn owner_is(owner: &[u8; 24], sub: &str) -> bool {
    let len = owner.iter().position(|&b| b == 0).unwrap_or(owner.len());
    !sub.is_empty() && &owner[..len] == sub.as_bytes()
}

#[cfg(test)]
mod owner_tests {
    use super::*;

    #[test]
    fn private_records_are_visible_only_to_their_owner() {
        let mut alice = [0u8; 24];
        alice[..5].copy_from_slice(b"alice");
        assert!(owner_is(&alice, "alice"));
        assert!(!owner_is(&alice, "alic"));
        assert!(!owner_is(&alice, "alice2"));
        assert!(!owner_is(&alice, ""));
        assert!(!owner_is(&[0u8; 24], ""), "an empty sub owns nothing");
        let full = [b'x'; 24];
        assert!(owner_is(&full, &"x".repeat(24)));
    }
}
