//! Per-core books for the `book` channel: snapshots and depth-limited deltas.
//!
//! Every core applies the `Level` records it dispatches to its own [`LevelBook`] per
//! (source, symbol), so a snapshot taken on the core is exactly consistent with the core's
//! position and the deltas that follow it. A client with depth `d` sees its top-`d` view
//! kept exact: a level entering it arrives with its quantity, a level leaving it with
//! quantity `"0"`. Deltas are computed and encoded once per distinct depth, not per client.
//!
//! Books start from the journal ([`warm_from_journal`]), so a restarted region serves the
//! same books as one that never stopped. A `resume` replays `book` deltas too: the session
//! rebuilds each book as of the client's position (undoing the core's recent changes, kept in
//! a bounded log per source, or reading the journal when they are older) and computes the
//! replayed deltas against it, so they are the deltas a client that never left received.

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use tickmesh_codec::book::LevelBook;
use tickmesh_codec::json::write_str;
use tickmesh_codec::{Level, Px, Qty, Side, SourceId, Symbol};

use crate::fanout::Encoded;
use crate::ws;

#[derive(Debug, Default, Clone)]
pub(crate) struct BookState {
    pub(crate) book: LevelBook,
    pub(crate) ts: u64,
}

/// Every book of a region, keyed by (source, symbol).
pub(crate) type BookMap = HashMap<(SourceId, Symbol), BookState>;

/// Level changes kept per source for rebuilding books as of a recent `seq`: at about 56
/// bytes each, 32 Ki changes are under 2 MiB per source and core, and cover the seconds a
/// failing-over client is behind; an older position is rebuilt from the journal instead.
const UNDO_PER_SOURCE: usize = 32 * 1024;

/// The state a level record replaced.
#[derive(Debug, Clone, Copy)]
struct Undo {
    seq: u64,
    sym: Symbol,
    side: Side,
    px: Px,
    qty: Qty,
    count: u32,
    ts: u64,
}

/// Recent changes of one source's books, oldest first.
#[derive(Debug, Default)]
struct UndoLog {
    entries: VecDeque<Undo>,
    /// Books can be rebuilt as of any `seq` at or above this one (the changes above it are
    /// all in `entries`).
    floor: u64,
}

/// The books of one core.
#[derive(Debug, Default)]
pub(crate) struct CoreBooks {
    books: BookMap,
    undo: HashMap<SourceId, UndoLog>,
    /// Whether level changes are logged for [`CoreBooks::at`] (a core's books; a session's
    /// replay books are never rewound).
    log_changes: bool,
}

fn top(book: &LevelBook, side: Side, d: usize) -> Vec<(Px, Qty)> {
    book.levels(side).take(d).map(|(p, q, _)| (p, q)).collect()
}

impl CoreBooks {
    /// A core's books, starting from `warm` (the books as of `positions`, read from the
    /// journal at start-up).
    pub(crate) fn for_core(warm: BookMap, positions: &std::collections::BTreeMap<SourceId, u64>) -> Self {
        let undo =
            positions.iter().map(|(src, seq)| (*src, UndoLog { entries: VecDeque::new(), floor: *seq })).collect();
        CoreBooks { books: warm, undo, log_changes: true }
    }

    /// Books that start as `books` (a session's replay books).
    pub(crate) fn from_map(books: BookMap) -> Self {
        CoreBooks { books, undo: HashMap::new(), log_changes: false }
    }

    /// The book of (`src`, `sym`) as of `seq`, from the current one and the change log;
    /// None when changes after `seq` are no longer logged (read the journal instead). An
    /// unknown book is empty.
    pub(crate) fn at(&self, src: SourceId, sym: Symbol, seq: u64) -> Option<BookState> {
        let log = self.undo.get(&src);
        if log.is_some_and(|l| l.floor > seq) {
            return None;
        }
        let mut st = self.books.get(&(src, sym)).cloned().unwrap_or_default();
        for u in log.iter().flat_map(|l| l.entries.iter().rev()).take_while(|u| u.seq > seq) {
            if u.sym == sym {
                st.book.set(u.side, u.px, u.qty, u.count);
                st.ts = u.ts;
            }
        }
        Some(st)
    }

    /// Applies a level record; returns, for each depth in `depths`, the JSON delta frame
    /// that keeps a client's top-`depth` view exact (None when that view did not change).
    pub(crate) fn apply(&mut self, enc: &Encoded, level: &Level, depths: &[u32]) -> Vec<(u32, Option<Bytes>)> {
        let st = self.books.entry((enc.src, enc.sym)).or_default();
        if self.log_changes {
            let (qty, count) = st.book.get(level.side, level.px).unwrap_or((Qty::ZERO, 0));
            let log = self.undo.entry(enc.src).or_default();
            if log.entries.len() >= UNDO_PER_SOURCE {
                if let Some(old) = log.entries.pop_front() {
                    log.floor = log.floor.max(old.seq);
                }
            }
            let sym = enc.sym;
            log.entries.push_back(Undo { seq: enc.seq, sym, side: level.side, px: level.px, qty, count, ts: st.ts });
        }
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

    pub(crate) fn snapshot_of(
        st: &BookState,
        src: SourceId,
        sym: Symbol,
        seq: u64,
        depth: u32,
        conflated: bool,
    ) -> Vec<u8> {
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

/// Applies every level record of `src` in `reader` with `seq <= upto` whose symbol `wanted`
/// accepts to `books`; returns how many records were read. Reads at most `max` records, so a
/// caller on a core can yield between calls.
pub(crate) fn apply_journal(
    reader: &mut tickmesh_journal::Reader,
    upto: u64,
    max: usize,
    books: &mut BookMap,
    mut wanted: impl FnMut(&str) -> bool,
) -> tickmesh_journal::Result<(usize, bool)> {
    let mut n = 0;
    while n < max {
        let Some(rec) = reader.next()? else { return Ok((n, true)) };
        n += 1;
        if rec.seq() > upto {
            return Ok((n, true));
        }
        if let Some(level) = crate::fanout::level_of(&rec) {
            let Ok(sym) = Symbol::from_bytes(rec.header().sym.padded()) else { continue };
            if wanted(sym.as_str()) {
                let st = books.entry((rec.source_id(), sym)).or_default();
                st.book.set(level.side, level.px, level.qty, level.count);
                st.ts = rec.ts_event();
            }
        }
    }
    Ok((n, false))
}

/// Every book as of the journal's end: what the cores start from, so that a restarted region
/// serves whole books (not only the levels changed since it started). Books hold only what
/// the journal still holds: levels set before its oldest retained record are missing until
/// the venue touches them again.
pub(crate) fn warm_from_journal(journal: &tickmesh_journal::Journal) -> tickmesh_journal::Result<BookMap> {
    let mut books = BookMap::new();
    for (src, last) in journal.positions() {
        let first = journal.first_seq(&src).unwrap_or(1);
        let mut reader = journal.reader(&src, first)?;
        while !apply_journal(&mut reader, last, usize::MAX, &mut books, |_| true)?.1 {}
    }
    Ok(books)
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

    fn enc_sym(seq: u64, sym: &str, side: Side, px: &str, qty: &str) -> (Encoded, Level) {
        let b = testing::level(seq, sym, side, px, qty).to_bytes();
        let r = access_untrusted(&b).unwrap();
        let e = Encoded::new(&r, &mut Vec::new());
        let l = e.level.unwrap();
        (e, l)
    }

    #[test]
    fn books_rewind_to_any_logged_seq_and_refuse_older_ones() {
        let mut b = CoreBooks::for_core(BookMap::new(), &std::collections::BTreeMap::new());
        // Two symbols interleaved, so rewinding one must skip the other's changes.
        let syms = ["AAPL", "MSFT"];
        let mut truth: Vec<(u64, usize, Vec<u8>)> = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let n = (UNDO_PER_SOURCE + 5_000) as u64;
        for seq in 1..=n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let side = if x & 1 == 0 { Side::Buy } else { Side::Sell };
            let px = format!("{}", 100 + (x >> 8) % 20);
            let qty = format!("{}", (x >> 20) % 4);
            let k = (seq % 2) as usize;
            let (e, l) = enc_sym(seq, syms[k], side, &px, &qty);
            b.apply(&e, &l, &[]);
            if seq % 997 == 0 {
                let snap = b.snapshot(e.src, e.sym, seq, 1000, false).unwrap();
                truth.push((seq, k, snap));
            }
        }
        let (e, _) = enc_sym(1, "AAPL", Side::Buy, "1", "1");
        let src = e.src;
        let mut rewound = 0;
        for (seq, k, snap) in &truth {
            let sym = Symbol::new(syms[*k]).unwrap();
            match b.at(src, sym, *seq) {
                Some(st) => {
                    assert_eq!(&CoreBooks::snapshot_of(&st, src, sym, *seq, 1000, false), snap, "book at seq {seq}");
                    rewound += 1;
                }
                None => assert!(*seq < n - UNDO_PER_SOURCE as u64, "seq {seq} is within the log but was refused"),
            }
        }
        assert!(rewound > 20 && rewound < truth.len(), "rewound {rewound} of {}", truth.len());
        // A core that started from warm books can rewind only to where it started.
        let started = std::collections::BTreeMap::from([(src, 500u64)]);
        let b = CoreBooks::for_core(BookMap::new(), &started);
        assert!(b.at(src, Symbol::new("AAPL").unwrap(), 499).is_none());
        assert!(b.at(src, Symbol::new("AAPL").unwrap(), 500).is_some());
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
