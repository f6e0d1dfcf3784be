//! Per-core books for the `book` channel: snapshots and depth-limited deltas.
//!
//! Every core applies the `Level` records it dispatches to its own [`LevelBook`] per
//! (source, symbol), so a snapshot taken on the core is exactly consistent with the core's
//! position and the deltas that follow it. A client with depth `d` sees its top-`d` view
//! kept exact: a level entering it arrives with its quantity, a level leaving it with
//! quantity `"0"`. Deltas are computed and encoded once per distinct depth, not per client.

use bytes::Bytes;
use std::collections::HashMap;
use tickmesh_codec::book::LevelBook;
use tickmesh_codec::json::write_str;
use tickmesh_codec::{Level, Px, Qty, Side, SourceId, Symbol};

use crate::fanout::Encoded;
use crate::ws;

#[derive(Debug, Default)]
pub(crate) struct BookState {
    pub(crate) book: LevelBook,
    pub(crate) ts: u64,
}

/// The books of one core.
#[derive(Debug, Default)]
pub(crate) struct CoreBooks {
    books: HashMap<(SourceId, Symbol), BookState>,
}

fn top(book: &LevelBook, side: Side, d: usize) -> Vec<(Px, Qty)> {
    book.levels(side).take(d).map(|(p, q, _)| (p, q)).collect()
}

impl CoreBooks {
    /// Applies a level record; returns, for each depth in `depths`, the JSON delta frame
    /// that keeps a client's top-`depth` view exact (None when that view did not change).
    pub(crate) fn apply(&mut self, enc: &Encoded, level: &Level, depths: &[u32]) -> Vec<(u32, Option<Bytes>)> {
        let st = self.books.entry((enc.src, enc.sym)).or_default();
        let before: Vec<Vec<(Px, Qty)>> = depths.iter().map(|d| top(&st.book, level.side, *d as usize)).collect();
        st.book.set(level.side, level.px, level.qty, level.count);
        st.ts = enc.ts_event;
        depths
            .iter()
            .zip(before)
            .map(|(d, before)| {
                let after = top(&st.book, level.side, *d as usize);
                let mut changes: Vec<(Px, Qty)> = Vec::new();
                for (p, q) in &after {
                    if !before.iter().any(|(bp, bq)| bp == p && bq == q) {
                        changes.push((*p, *q));
                    }
                }
                for (p, _) in &before {
                    if !after.iter().any(|(ap, _)| ap == p) {
                        changes.push((*p, Qty::ZERO));
                    }
                }
                if changes.is_empty() {
                    return (*d, None);
                }
                let (bids, asks) = if level.side == Side::Buy { (changes, Vec::new()) } else { (Vec::new(), changes) };
                let json = book_json(
                    "book",
                    enc.src,
                    enc.sym,
                    enc.seq,
                    enc.ts_event,
                    Some(enc.ts_ingest),
                    &bids,
                    &asks,
                    false,
                );
                (*d, Some(ws::text_frame(&json)))
            })
            .collect()
    }

    /// The `book_snapshot` JSON of one book at position `seq`, or None if the core has no
    /// book for it.
    pub(crate) fn snapshot(
        &self,
        src: SourceId,
        sym: Symbol,
        seq: u64,
        depth: u32,
        conflated: bool,
    ) -> Option<Vec<u8>> {
        let st = self.books.get(&(src, sym))?;
        Some(Self::snapshot_of(st, src, sym, seq, depth, conflated))
    }

    /// Like [`Self::snapshot`], but an empty book when the core has none yet (a symbol
    /// its source knows but has not quoted).
    pub(crate) fn snapshot_or_empty(&self, src: SourceId, sym: Symbol, seq: u64, depth: u32) -> Vec<u8> {
        match self.books.get(&(src, sym)) {
            Some(st) => Self::snapshot_of(st, src, sym, seq, depth, false),
            None => book_json("book_snapshot", src, sym, seq, 0, None, &[], &[], false),
        }
    }

    fn snapshot_of(st: &BookState, src: SourceId, sym: Symbol, seq: u64, depth: u32, conflated: bool) -> Vec<u8> {
        let bids = top(&st.book, Side::Buy, depth as usize);
        let asks = top(&st.book, Side::Sell, depth as usize);
        book_json("book_snapshot", src, sym, seq, st.ts, None, &bids, &asks, conflated)
    }

    /// Books whose symbol `matches`.
    pub(crate) fn keys(&self, mut matches: impl FnMut(&str) -> bool) -> Vec<(SourceId, Symbol)> {
        let mut v: Vec<(SourceId, Symbol)> = self.books.keys().filter(|(_, s)| matches(s.as_str())).copied().collect();
        v.sort();
        v
    }

    /// Sources with a book for `sym`.
    pub(crate) fn sources_of(&self, sym: &str) -> Vec<SourceId> {
        let mut v: Vec<SourceId> = self.books.keys().filter(|(_, s)| s.as_str() == sym).map(|(src, _)| *src).collect();
        v.sort();
        v
    }
}

/// `book` / `book_snapshot` JSON.
#[allow(clippy::too_many_arguments)]
pub(crate) fn book_json(
    ty: &str,
    src: SourceId,
    sym: Symbol,
    seq: u64,
    ts: u64,
    ts_ingest: Option<u64>,
    bids: &[(Px, Qty)],
    asks: &[(Px, Qty)],
    conflated: bool,
) -> Vec<u8> {
    let mut n = itoa::Buffer::new();
    let mut out = Vec::with_capacity(96 + 40 * (bids.len() + asks.len()));
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(ty.as_bytes());
    out.extend_from_slice(b"\",\"src\":");
    write_str(src.as_str(), &mut out);
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(n.format(seq).as_bytes());
    out.extend_from_slice(b",\"sym\":");
    write_str(sym.as_str(), &mut out);
    out.extend_from_slice(b",\"ts\":");
    out.extend_from_slice(n.format(ts).as_bytes());
    if let Some(t) = ts_ingest {
        out.extend_from_slice(b",\"ts_ingest\":");
        out.extend_from_slice(n.format(t).as_bytes());
    }
    out.extend_from_slice(b",\"bids\":");
    tickmesh_codec::json::write_levels(bids.iter().copied(), &mut out);
    out.extend_from_slice(b",\"asks\":");
    tickmesh_codec::json::write_levels(asks.iter().copied(), &mut out);
    if conflated {
        out.extend_from_slice(b",\"conflated\":true");
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickmesh_codec::{access_untrusted, testing};

    fn enc(seq: u64, side: Side, px: &str, qty: &str) -> (Encoded, Level) {
        let b = testing::level(seq, "AAPL", side, px, qty).to_bytes();
        let r = access_untrusted(&b).unwrap();
        let e = Encoded::new(&r, &mut Vec::new());
        let l = e.level.unwrap();
        (e, l)
    }

    fn delta(frame: &Bytes) -> serde_json::Value {
        // Skip the 2-byte (or 4-byte) frame header.
        let start = if frame[1] == 126 { 4 } else { 2 };
        serde_json::from_slice(&frame[start..]).unwrap()
    }

    #[test]
    fn deltas_keep_the_top_depth_view_exact() {
        let mut b = CoreBooks::default();
        for (i, p) in ["10", "9", "8"].iter().enumerate() {
            let (e, l) = enc(i as u64 + 1, Side::Buy, p, "1");
            b.apply(&e, &l, &[2]);
        }
        // Removing the best bid: depth 2 sees 10 leave and 8 enter; depth 5 sees only 10 leave.
        let (e, l) = enc(4, Side::Buy, "10", "0");
        let out = b.apply(&e, &l, &[2, 5]);
        let d2 = delta(out[0].1.as_ref().unwrap());
        assert_eq!(d2["bids"], serde_json::json!([["8", "1"], ["10", "0"]]));
        assert_eq!(d2["asks"], serde_json::json!([]));
        let d5 = delta(out[1].1.as_ref().unwrap());
        assert_eq!(d5["bids"], serde_json::json!([["10", "0"]]));
        // A change below depth 1 is invisible to a depth-1 client.
        let (e, l) = enc(5, Side::Buy, "8", "3");
        let out = b.apply(&e, &l, &[1]);
        assert!(out[0].1.is_none());
        let snap: serde_json::Value = serde_json::from_slice(&b.snapshot(e.src, e.sym, 5, 10, false).unwrap()).unwrap();
        assert_eq!(snap["type"], "book_snapshot");
        assert_eq!(snap["bids"], serde_json::json!([["9", "1"], ["8", "3"]]));
        assert_eq!(snap["seq"], 5);
    }
}
