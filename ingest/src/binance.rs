//! Binance spot WebSocket adapter: `depth@100ms` diffs kept as a local book by Binance's
//! documented procedure, `aggTrade`/`trade` as trades, closed `kline`s as bars, `bookTicker`
//! as a cross-check (or as the quote source when the book is known to be partial).
//!
//! # Local book synchronisation ("How to manage a local order book correctly")
//! In [`SyncMode::Snapshot`] (the live mode) each symbol starts *waiting*: diff events are
//! buffered and the decoder asks its driver for the REST snapshot
//! ([`FeedEvent::NeedSnapshot`]). [`Decoder::apply_snapshot`] then drops buffered events with
//! `u <= lastUpdateId`; the first event applied must have `U <= lastUpdateId + 1 <= u`
//! (otherwise the snapshot is older than the buffer and another is requested); every later
//! event must have `U` = previous `u` + 1. A break in that chain is a gap: the decoder emits
//! `Status { Unknown, "GAP" }`, reports [`FeedEvent::Gap`] (an [`Error::VenueGap`]) and goes
//! back to waiting, and the next snapshot brings `Status { Trading, "RESYNC" }`. Binance sends
//! absolute quantities per level, so only the levels an event names change.
//!
//! # Captures without a REST snapshot
//! The captures we hold (cryptofeed's) start mid-stream with diffs and no snapshot, and nobody
//! can fetch a 2021 snapshot today. Two honest ways to use them:
//! * [`SyncMode::DiffOnly`] (`tickmesh ingest --format binance`): the book starts empty and
//!   takes every diff from the first one on, checking the `U`/`u` chain all the same. Each
//!   level a diff names is then exact, but levels the capture never touched are unknown, so
//!   the decoder emits `Status { Unknown, "DIFFONLY" }` per symbol, never derives a `Quote`
//!   from that partial book, and instead passes the venue's own `bookTicker` through as the
//!   `Quote`.
//! * The replay server ([`crate::replay`]) answers `GET /api/v3/depth` with the book *it*
//!   rebuilt from the diffs it has streamed so far, and marks it `"x_tickmesh_partial": true`.
//!   The live decoder runs the full procedure above against it, and on a partial snapshot emits
//!   `Status { Unknown, "PARTIAL" }` and behaves as in diff-only mode.
//!
//! What can be verified against the venue: `bookTicker` is real time while the diffs come in
//! 100 ms batches, so a ticker is usually ahead of the book. It is held until the diff whose
//! final id `u` equals the ticker's update id is applied (or dropped if no diff ends there),
//! and then the venue's best bid/ask must agree with our book: exactly for a full book; for a
//! partial one, the venue's best level, if known to us, has the venue's size, and no known
//! level is better. [`Decoder::cross_check`] counts those checks (26 in the capture, all
//! passing; the golden test requires that).
//!
//! # Time
//! `ts_event` is the event time `E` (ms) of depth and kline events, and the trade time `T` of
//! trades. A REST snapshot has no time: it gets the driver's receipt time.

use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use tickmesh_codec::{Bar, Body, Px, Qty, Quote, Record, Side, SourceId, Trade, TradingState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::coinbase::{px, qty, truncate, Counts, JsonFramer, Products};
pub use crate::coinbase::{CrossCheck, FeedEvent, FeedItem};
use crate::error::{Error, Result};

const FORMAT: &str = "binance";

fn bad(at: u64, what: impl Into<String>) -> Error {
    Error::Parse { format: FORMAT, offset: at, what: what.into() }
}

/// How the decoder starts a symbol's book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Buffer diffs and wait for a REST snapshot (Binance's procedure; live feeds).
    Snapshot,
    /// Start from an empty book and apply every diff (captures without a snapshot).
    DiffOnly,
}

#[derive(Debug)]
struct Diff {
    first: u64,
    last: u64,
    ts: u64,
    levels: Vec<(Side, Px, Qty)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    Waiting,
    Synced { last_u: u64, first: bool },
    DiffOnly { last_u: Option<u64> },
}

#[derive(Debug)]
struct SymState {
    sync: Sync,
    buffer: Vec<Diff>,
    requested: bool,
    /// The book holds only levels seen since an arbitrary start (diff-only or partial snapshot).
    partial: bool,
    /// `u` of the last applied diff (for the bookTicker check).
    applied_u: Option<u64>,
    /// bookTickers ahead of the book, checked when the diff ending at their update id is
    /// applied: (u, bid, bid qty, ask, ask qty).
    pending: Vec<(u64, Px, Qty, Px, Qty)>,
}

impl SymState {
    fn new(mode: SyncMode) -> Self {
        SymState {
            sync: match mode {
                SyncMode::Snapshot => Sync::Waiting,
                SyncMode::DiffOnly => Sync::DiffOnly { last_u: None },
            },
            buffer: Vec::new(),
            requested: false,
            partial: mode == SyncMode::DiffOnly,
            applied_u: None,
            pending: Vec::new(),
        }
    }
}

/// Diff events buffered per symbol while waiting for a snapshot, at most (about 80 minutes of
/// `depth@100ms`); past that the oldest are dropped and the next snapshot decides.
const MAX_BUFFER: usize = 50_000;

/// A field Binance reuses across event types (`a`: asks, aggregate trade id or ask price).
#[derive(Deserialize)]
#[serde(untagged)]
enum Field<'a> {
    Levels(Vec<(&'a str, &'a str)>),
    #[serde(borrow)]
    Text(&'a str),
    Int(u64),
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct Kline<'a> {
    t: u64,
    T: u64,
    #[serde(borrow)]
    o: &'a str,
    #[serde(borrow)]
    h: &'a str,
    #[serde(borrow)]
    l: &'a str,
    #[serde(borrow)]
    c: &'a str,
    #[serde(borrow)]
    v: &'a str,
    x: bool,
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct Event<'a> {
    #[serde(borrow, default)]
    stream: Option<&'a str>,
    #[serde(borrow, default)]
    data: Option<Box<Event<'a>>>,
    #[serde(borrow, default)]
    e: Option<&'a str>,
    #[serde(default)]
    E: Option<u64>,
    #[serde(default)]
    T: Option<u64>,
    #[serde(borrow, default)]
    s: Option<&'a str>,
    #[serde(default)]
    U: Option<u64>,
    #[serde(default)]
    u: Option<u64>,
    #[serde(borrow, default)]
    b: Option<Field<'a>>,
    #[serde(borrow, default)]
    a: Option<Field<'a>>,
    #[serde(borrow, default)]
    B: Option<&'a str>,
    #[serde(borrow, default)]
    A: Option<&'a str>,
    #[serde(borrow, default)]
    p: Option<&'a str>,
    #[serde(borrow, default)]
    q: Option<&'a str>,
    #[serde(default)]
    t: Option<u64>,
    #[serde(default)]
    m: Option<bool>,
    #[serde(borrow, default)]
    k: Option<Kline<'a>>,
    #[serde(borrow, default)]
    msg: Option<&'a str>,
    #[serde(default)]
    code: Option<i64>,
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct RestDepth<'a> {
    lastUpdateId: u64,
    #[serde(borrow)]
    bids: Vec<(&'a str, &'a str)>,
    #[serde(borrow)]
    asks: Vec<(&'a str, &'a str)>,
    #[serde(default)]
    x_tickmesh_partial: bool,
}

#[derive(Deserialize)]
struct RestError<'a> {
    code: i64,
    #[serde(borrow)]
    msg: &'a str,
}

/// The Binance decoder (sans-I/O). Feed it WebSocket text messages (combined-stream
/// `{"stream","data"}` envelopes or raw events), hand it REST snapshots when it asks.
#[derive(Debug)]
pub struct Decoder {
    src: SourceId,
    mode: SyncMode,
    framer: JsonFramer,
    products: Products,
    syms: Vec<SymState>,
    events: Vec<FeedEvent>,
    counts: Counts,
    check: CrossCheck,
    receipt_ns: u64,
    last_venue_ns: u64,
}

impl Decoder {
    /// A decoder for source `src` (e.g. `BINANCE`) and `symbols` (upper case, as in events;
    /// their order fixes the instrument ids, later symbols get the next ids).
    pub fn new(src: SourceId, symbols: &[String], mode: SyncMode) -> Result<Self> {
        let upper: Vec<String> = symbols.iter().map(|s| s.to_ascii_uppercase()).collect();
        let products = Products::with(&upper)?;
        let syms = products.list.iter().map(|_| SymState::new(mode)).collect();
        Ok(Decoder {
            src,
            mode,
            framer: JsonFramer::default(),
            products,
            syms,
            events: Vec::new(),
            counts: Counts::default(),
            check: CrossCheck::default(),
            receipt_ns: 0,
            last_venue_ns: 0,
        })
    }

    /// Receipt time of the next input (ns), used for records without a venue time.
    pub fn set_receipt_time(&mut self, ns: u64) {
        self.receipt_ns = ns;
    }

    /// The next gap or snapshot request, oldest first.
    pub fn poll_event(&mut self) -> Option<FeedEvent> {
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }

    /// bookTicker cross-check counts (see the module docs).
    pub fn cross_check(&self) -> CrossCheck {
        self.check
    }

    /// The book of `sym`.
    pub fn book(&self, sym: &str) -> Option<&crate::book::LevelBook> {
        self.products.find(sym).map(|i| &self.products.list[i].book)
    }

    /// True when `sym`'s book is applying diffs (synchronised, or diff-only).
    pub fn is_live(&self, sym: &str) -> bool {
        self.products.find(sym).is_some_and(|i| self.products.list[i].live)
    }

    /// True when `sym`'s book is known to hold only part of the venue's levels.
    pub fn is_partial(&self, sym: &str) -> bool {
        self.products.find(sym).is_some_and(|i| self.syms[i].partial)
    }

    /// `u` of the last diff applied to `sym`'s book.
    pub fn last_update_id(&self, sym: &str) -> Option<u64> {
        self.products.find(sym).and_then(|i| self.syms[i].applied_u)
    }

    /// Symbols known so far, in instrument-id order.
    pub fn symbols(&self) -> Vec<String> {
        self.products.list.iter().map(|p| p.sym.as_str().to_owned()).collect()
    }

    /// The connection ended (call before reconnecting): buffered diffs are dropped, every
    /// live book gets `Status { Unknown, "DISCONN" }` and waits for a snapshot again.
    pub fn connection_reset(&mut self, out: &mut Vec<Record>) {
        self.framer.reset_partial();
        let ts = self.fallback_ts();
        self.products.connection_lost(self.src, ts, out);
        let mode = self.mode;
        for s in &mut self.syms {
            *s = SymState::new(mode);
        }
    }

    fn sym_index(&mut self, name: &str) -> Result<usize> {
        let i = self.products.get_or_add(name)?;
        while self.syms.len() < self.products.list.len() {
            self.syms.push(SymState::new(self.mode));
        }
        Ok(i)
    }

    fn fallback_ts(&self) -> u64 {
        if self.receipt_ns != 0 {
            self.receipt_ns
        } else {
            self.last_venue_ns
        }
    }

    /// Applies a REST depth snapshot (`GET /api/v3/depth` body) for `sym`. Ignored unless the
    /// symbol is waiting for one. A snapshot older than the buffered diffs makes the decoder
    /// ask for another.
    pub fn apply_snapshot(&mut self, sym: &str, body: &[u8], out: &mut Vec<Record>) -> Result<()> {
        let depth: RestDepth<'_> = match serde_json::from_slice(body) {
            Ok(d) => d,
            Err(e) => {
                if let Ok(err) = serde_json::from_slice::<RestError<'_>>(body) {
                    return Err(Error::Config(format!(
                        "binance refused the depth snapshot of {sym}: {} (code {}); check the symbol",
                        err.msg, err.code
                    )));
                }
                return Err(bad(0, format!("depth snapshot of {sym} is not a Binance depth response ({e})")));
            }
        };
        let i = self.sym_index(&sym.to_ascii_uppercase())?;
        if self.syms[i].sync != Sync::Waiting {
            return Ok(());
        }
        let mut levels = Vec::with_capacity(depth.bids.len() + depth.asks.len());
        for (side, list) in [(Side::Buy, &depth.bids), (Side::Sell, &depth.asks)] {
            for (p, q) in list {
                let q = qty(FORMAT, 0, "snapshot size", q)?;
                if q != Qty::ZERO {
                    levels.push((side, px(FORMAT, 0, "snapshot price", p)?, q));
                }
            }
        }
        let last_id = depth.lastUpdateId;
        let ts = self.fallback_ts();
        let st = &mut self.syms[i];
        st.requested = false;
        st.buffer.retain(|d| d.last > last_id);
        if st.buffer.first().is_some_and(|d| d.first > last_id + 1) {
            st.requested = true;
            let name = self.products.list[i].sym.as_str().to_owned();
            self.events.push(FeedEvent::NeedSnapshot { sym: name });
            return Ok(());
        }
        let src = self.src;
        st.partial = depth.x_tickmesh_partial;
        let pb = &mut self.products.list[i];
        pb.partial = depth.x_tickmesh_partial;
        if pb.partial {
            pb.after_gap = false;
        }
        pb.apply_snapshot(src, ts, &mut levels, out);
        if pb.partial {
            out.push(pb.status(src, ts, TradingState::Unknown, "PARTIAL"));
        }
        st.sync = Sync::Synced { last_u: last_id, first: true };
        st.applied_u = Some(last_id);
        let buffered = std::mem::take(&mut st.buffer);
        for d in buffered {
            self.on_diff(i, d, out);
        }
        Ok(())
    }

    /// `gap`: the (expected, got) update ids, or `None` for a book that crossed.
    fn gap(&mut self, i: usize, gap: Option<(u64, u64)>, ts: u64, out: &mut Vec<Record>) {
        let src = self.src;
        let pb = &mut self.products.list[i];
        let sym = pb.sym.as_str().to_owned();
        self.events.push(match gap {
            Some((expected, got)) => FeedEvent::Gap { sym, error: Error::VenueGap { format: FORMAT, expected, got } },
            None => FeedEvent::Crossed { sym },
        });
        if pb.live {
            out.push(pb.status(src, ts, TradingState::Unknown, "GAP"));
        }
        pb.live = false;
        pb.after_gap = true;
    }

    fn apply(&mut self, i: usize, d: &Diff, out: &mut Vec<Record>) {
        let src = self.src;
        let pb = &mut self.products.list[i];
        for &(side, p, q) in &d.levels {
            pb.set_level(src, d.ts, side, p, q, out);
        }
        let st = &mut self.syms[i];
        st.applied_u = Some(d.last);
        let mut k = 0;
        while k < st.pending.len() {
            let t = st.pending[k];
            if t.0 > d.last {
                k += 1;
                continue;
            }
            st.pending.swap_remove(k);
            if t.0 == d.last {
                self.check.checked += 1;
                if !ticker_agrees(&pb.book, st.partial, t) {
                    self.check.mismatched += 1;
                }
            }
        }
        if pb.book.is_crossed() {
            self.gap(i, None, d.ts, out);
            self.enter_waiting(i, None);
        } else {
            pb.emit_quote(src, d.ts, out);
        }
    }

    fn enter_waiting(&mut self, i: usize, keep: Option<Diff>) {
        let st = &mut self.syms[i];
        match self.mode {
            SyncMode::Snapshot => {
                st.sync = Sync::Waiting;
                st.buffer.clear();
                st.buffer.extend(keep);
                if !st.requested {
                    st.requested = true;
                    let name = self.products.list[i].sym.as_str().to_owned();
                    self.events.push(FeedEvent::NeedSnapshot { sym: name });
                }
            }
            SyncMode::DiffOnly => {
                st.sync = Sync::DiffOnly { last_u: None };
                st.buffer.clear();
            }
        }
    }

    fn on_diff(&mut self, i: usize, d: Diff, out: &mut Vec<Record>) {
        let src = self.src;
        match self.syms[i].sync {
            Sync::Waiting => {
                let st = &mut self.syms[i];
                if st.buffer.len() >= MAX_BUFFER {
                    st.buffer.remove(0);
                }
                st.buffer.push(d);
                if !st.requested {
                    st.requested = true;
                    let name = self.products.list[i].sym.as_str().to_owned();
                    self.events.push(FeedEvent::NeedSnapshot { sym: name });
                }
            }
            Sync::Synced { last_u, first } => {
                if d.last <= last_u {
                    return; // older than the book
                }
                let fits = if first { d.first <= last_u + 1 } else { d.first == last_u + 1 };
                if !fits {
                    self.gap(i, Some((last_u + 1, d.first)), d.ts, out);
                    self.enter_waiting(i, Some(d));
                    return;
                }
                self.syms[i].sync = Sync::Synced { last_u: d.last, first: false };
                self.products.list[i].live = true;
                self.apply(i, &d, out);
            }
            Sync::DiffOnly { last_u } => {
                if let Some(l) = last_u {
                    if d.last <= l {
                        return;
                    }
                    if d.first != l + 1 {
                        // Levels we knew may have changed unseen: forget them and start again.
                        self.gap(i, Some((l + 1, d.first)), d.ts, out);
                        let pb = &mut self.products.list[i];
                        let mut none = Vec::new();
                        pb.apply_snapshot(src, d.ts, &mut none, out);
                        pb.after_gap = false;
                        pb.live = false;
                    }
                }
                let pb = &mut self.products.list[i];
                pb.partial = true;
                if !pb.live {
                    pb.live = true;
                    pb.after_gap = false;
                    out.push(pb.status(src, d.ts, TradingState::Unknown, "DIFFONLY"));
                }
                self.syms[i].sync = Sync::DiffOnly { last_u: Some(d.last) };
                self.apply(i, &d, out);
            }
        }
    }

    fn levels_of(field: &Option<Field<'_>>, side: Side, at: u64, into: &mut Vec<(Side, Px, Qty)>) -> Result<()> {
        match field {
            None => Ok(()),
            Some(Field::Levels(list)) => {
                for (p, q) in list {
                    into.push((side, px(FORMAT, at, "price", p)?, qty(FORMAT, at, "quantity", q)?));
                }
                Ok(())
            }
            Some(_) => Err(bad(at, "depthUpdate b/a is not a list of [price, quantity]")),
        }
    }

    fn on_message(&mut self, bytes: &[u8], at: u64, out: &mut Vec<Record>) -> Result<()> {
        let outer: Event<'_> = serde_json::from_slice(bytes).map_err(|e| {
            bad(at, format!("not a Binance stream message ({e}); expected {{\"stream\",\"data\"}} or an event"))
        })?;
        if let (Some(code), Some(msg)) = (outer.code, outer.msg) {
            return Err(Error::Config(format!(
                "binance refused a request: {msg} (code {code}); check the stream names"
            )));
        }
        let stream = outer.stream;
        let ev = match outer.data {
            Some(inner) => *inner,
            None => outer,
        };
        let kind = match (ev.e, stream) {
            (Some(e), _) => e,
            (None, Some(s)) if s.ends_with("@bookTicker") => "bookTicker",
            (None, _) if ev.u.is_some() && ev.B.is_some() => "bookTicker",
            (None, _) => {
                self.counts.bump("other");
                return Ok(());
            }
        };
        self.counts.bump(kind);
        if let Some(e) = ev.E {
            self.last_venue_ns = self.last_venue_ns.max(e.saturating_mul(1_000_000));
        }
        let sym = match ev.s {
            Some(s) => s,
            None if kind == "depthUpdate" || kind == "aggTrade" || kind == "trade" || kind == "bookTicker" => {
                return Err(bad(at, format!("{kind} event without symbol \"s\"")))
            }
            None => return Ok(()),
        };
        match kind {
            "depthUpdate" => {
                let (Some(first), Some(last)) = (ev.U, ev.u) else {
                    return Err(bad(at, "depthUpdate without U/u update ids"));
                };
                if first > last {
                    return Err(bad(at, format!("depthUpdate with U {first} > u {last}")));
                }
                let mut levels = Vec::new();
                Self::levels_of(&ev.b, Side::Buy, at, &mut levels)?;
                Self::levels_of(&ev.a, Side::Sell, at, &mut levels)?;
                let ts = ev.E.map_or(self.fallback_ts(), |e| e.saturating_mul(1_000_000));
                let i = self.sym_index(sym)?;
                self.on_diff(i, Diff { first, last, ts, levels }, out);
                Ok(())
            }
            "aggTrade" | "trade" => {
                let id = match (kind, &ev.a, ev.t) {
                    ("aggTrade", Some(Field::Int(a)), _) => *a,
                    (_, _, Some(t)) => t,
                    _ => return Err(bad(at, format!("{kind} without a trade id"))),
                };
                let price = px(FORMAT, at, "p", ev.p.ok_or_else(|| bad(at, "trade without price p"))?)?;
                let size = qty(FORMAT, at, "q", ev.q.ok_or_else(|| bad(at, "trade without quantity q"))?)?;
                // m: the buyer is the market maker, so the seller was the aggressor.
                let side = match ev.m {
                    Some(true) => Side::Sell,
                    Some(false) => Side::Buy,
                    None => Side::None,
                };
                let ts = ev.T.or(ev.E).map_or(self.fallback_ts(), |t| t.saturating_mul(1_000_000));
                let i = self.sym_index(sym)?;
                let pb = &self.products.list[i];
                out.push(Record::new(
                    pb.meta(self.src, ts),
                    Body::Trade(Trade { px: price, qty: size, side, match_id: id }),
                ));
                Ok(())
            }
            "bookTicker" => self.on_book_ticker(sym, &ev, at, out),
            "kline" => {
                let Some(k) = &ev.k else { return Err(bad(at, "kline event without k")) };
                if !k.x {
                    return Ok(()); // an unfinished bar is revised until it closes
                }
                let bar = Bar {
                    interval_ns: (k.T.saturating_sub(k.t) + 1).saturating_mul(1_000_000),
                    open: px(FORMAT, at, "o", k.o)?,
                    high: px(FORMAT, at, "h", k.h)?,
                    low: px(FORMAT, at, "l", k.l)?,
                    close: px(FORMAT, at, "c", k.c)?,
                    volume: qty(FORMAT, at, "v", k.v)?,
                };
                let i = self.sym_index(sym)?;
                let pb = &self.products.list[i];
                out.push(Record::new(pb.meta(self.src, k.t.saturating_mul(1_000_000)), Body::Bar(bar)));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn on_book_ticker(&mut self, sym: &str, ev: &Event<'_>, at: u64, out: &mut Vec<Record>) -> Result<()> {
        fn text<'a>(f: &Option<Field<'a>>, at: u64) -> Result<&'a str> {
            match f {
                Some(Field::Text(t)) => Ok(t),
                _ => Err(bad(at, "bookTicker b/a is not a price string")),
            }
        }
        let bid = px(FORMAT, at, "b", text(&ev.b, at)?)?;
        let ask = px(FORMAT, at, "a", text(&ev.a, at)?)?;
        let bid_q = qty(FORMAT, at, "B", ev.B.ok_or_else(|| bad(at, "bookTicker without B"))?)?;
        let ask_q = qty(FORMAT, at, "A", ev.A.ok_or_else(|| bad(at, "bookTicker without A"))?)?;
        let i = self.sym_index(sym)?;
        let st = &mut self.syms[i];
        let pb = &self.products.list[i];
        if let Some(u) = ev.u {
            let t = (u, bid, bid_q, ask, ask_q);
            if pb.live && Some(u) == st.applied_u {
                self.check.checked += 1;
                if !ticker_agrees(&pb.book, st.partial, t) {
                    self.check.mismatched += 1;
                }
            } else if st.applied_u.is_none_or(|a| u > a) {
                if st.pending.len() >= 256 {
                    st.pending.remove(0);
                }
                st.pending.push(t);
            }
        }
        if st.partial && pb.live {
            // The partial book cannot say what the best bid/offer is; the venue can.
            let q = Quote { bid_px: bid, bid_qty: bid_q, ask_px: ask, ask_qty: ask_q, bid_count: 0, ask_count: 0 };
            let ts = self.last_venue_ns.max(self.fallback_ts());
            out.push(Record::new(pb.meta(self.src, ts), Body::Quote(q)));
        }
        Ok(())
    }
}

/// Does a venue top of book (u, bid, bid qty, ask, ask qty) agree with our book at the same
/// update id? A full book must match exactly; a partial one must not contradict it: the venue's
/// best level, if we know it, has the venue's size, and no level we know is better.
fn ticker_agrees(book: &crate::book::LevelBook, partial: bool, t: (u64, Px, Qty, Px, Qty)) -> bool {
    let (_, bid, bid_q, ask, ask_q) = t;
    if partial {
        let side_ok = |side: Side, best: Px, best_q: Qty, better: fn(Px, Px) -> bool| {
            book.get(side, best).is_none_or(|(q, _)| q == best_q)
                && book.best(side).is_none_or(|(p, _, _)| !better(p, best))
        };
        side_ok(Side::Buy, bid, bid_q, |p, b| p > b) && side_ok(Side::Sell, ask, ask_q, |p, a| p < a)
    } else {
        let q = book.quote();
        (q.bid_px, q.bid_qty, q.ask_px, q.ask_qty) == (bid, bid_q, ask, ask_q)
    }
}

impl crate::Decoder for Decoder {
    fn feed(&mut self, input: &[u8], out: &mut Vec<Record>) -> Result<()> {
        // The framer leaves `self` for the drain, so `on_message` may borrow `self` whole.
        let mut framer = std::mem::take(&mut self.framer);
        let r = framer.feed(FORMAT, input, |b, at| self.on_message(b, at, out));
        self.framer = framer;
        r
    }

    fn finish(&mut self, _out: &mut Vec<Record>) -> Result<()> {
        self.framer.finish(FORMAT)
    }

    fn message_counts(&self) -> Vec<(String, u64)> {
        self.counts.to_vec()
    }
}

// ---------------------------------------------------------------------------------------------
// Live adapter.
// ---------------------------------------------------------------------------------------------

/// Settings of [`run_live_with`].
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// WebSocket base URL (`ws://127.0.0.1:9000`; production `wss://stream.binance.com:9443`,
    /// which needs a TLS-enabled tokio-tungstenite build). `/stream?streams=...` is appended.
    pub ws_url: String,
    /// REST base URL (`http://127.0.0.1:9000`; production `https://api.binance.com`, which
    /// needs a TLS client: [`http_get`] speaks plain HTTP/1.1 only).
    pub rest_url: String,
    /// Symbols (`BTCUSDT`; case does not matter).
    pub symbols: Vec<String>,
    /// Source id. Default `BINANCE`.
    pub source: String,
    /// Depth of the REST snapshot. Default 5000 (Binance's maximum).
    pub snapshot_limit: u32,
    /// First reconnect delay, doubling up to 30 s. Default 250 ms.
    pub backoff: Duration,
    /// Stop after this many connections (tests: 1). Default `None`.
    pub max_connections: Option<u32>,
}

impl LiveOptions {
    /// Defaults for the given endpoints and symbols.
    pub fn new(ws_url: &str, rest_url: &str, symbols: &[String]) -> Self {
        LiveOptions {
            ws_url: ws_url.trim_end_matches('/').to_owned(),
            rest_url: rest_url.trim_end_matches('/').to_owned(),
            symbols: symbols.to_vec(),
            source: "BINANCE".into(),
            snapshot_limit: 5000,
            backoff: Duration::from_millis(250),
            max_connections: None,
        }
    }

    /// The combined-stream URL for the symbols.
    pub fn stream_url(&self) -> String {
        let streams: Vec<String> = self
            .symbols
            .iter()
            .flat_map(|s| {
                let s = s.to_ascii_lowercase();
                [
                    format!("{s}@depth@100ms"),
                    format!("{s}@aggTrade"),
                    format!("{s}@bookTicker"),
                    format!("{s}@kline_1m"),
                ]
            })
            .collect();
        format!("{}/stream?streams={}", self.ws_url, streams.join("/"))
    }
}

/// Runs a Binance feed with default [`LiveOptions`] until `sink` is closed.
pub async fn run_live(ws_url: &str, rest_url: &str, symbols: &[String], sink: mpsc::Sender<FeedItem>) -> Result<()> {
    run_live_with(LiveOptions::new(ws_url, rest_url, symbols), sink).await
}

/// Runs a Binance feed: connect to the combined stream, keep each book by Binance's procedure
/// (REST snapshots fetched concurrently while diffs buffer), reconnect with backoff.
pub async fn run_live_with(opts: LiveOptions, sink: mpsc::Sender<FeedItem>) -> Result<()> {
    let src = SourceId::new(&opts.source).map_err(Error::Codec)?;
    let mut dec = Decoder::new(src, &opts.symbols, SyncMode::Snapshot)?;
    let url = opts.stream_url();
    let mut delay = opts.backoff;
    let mut connections = 0u32;
    let mut out = Vec::new();
    loop {
        if opts.max_connections.is_some_and(|m| connections >= m) {
            return Ok(());
        }
        connections += 1;
        let mut ws = match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((ws, _)) => ws,
            Err(e) => {
                if sink.send(FeedItem::Disconnected { reason: format!("connect failed: {e}") }).await.is_err() {
                    return Ok(());
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        if sink.send(FeedItem::Connected { url: url.clone() }).await.is_err() {
            return Ok(());
        }
        // Snapshots arrive here from fetch tasks; a response for an old connection is ignored
        // by the decoder unless that symbol is waiting.
        let (snap_tx, mut snap_rx) = mpsc::channel::<(String, Result<Vec<u8>>)>(16);
        let reason = loop {
            out.clear();
            tokio::select! {
                msg = ws.next() => {
                    let msg = match msg {
                        None => break "connection closed".to_string(),
                        Some(Err(e)) => break format!("read failed: {e}"),
                        Some(Ok(m)) => m,
                    };
                    let text: &[u8] = match &msg {
                        Message::Text(t) => t.as_bytes(),
                        Message::Binary(b) => b,
                        Message::Close(f) => break format!("closed by venue: {f:?}"),
                        _ => continue,
                    };
                    delay = opts.backoff;
                    dec.set_receipt_time(tickmesh_codec::now_ns());
                    let res = crate::Decoder::feed(&mut dec, text, &mut out);
                    if let Err(e) = res {
                        if let Error::Config(_) = e {
                            return Err(Error::Ws { url: url.clone(), what: e.to_string() });
                        }
                        tracing::warn!(url = %url, error = %e, "binance message rejected");
                        if sink.send(FeedItem::DecodeError(e)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                Some((sym, body)) = snap_rx.recv() => {
                    dec.set_receipt_time(tickmesh_codec::now_ns());
                    let res = body.and_then(|b| dec.apply_snapshot(&sym, &b, &mut out));
                    if let Err(e) = res {
                        tracing::warn!(symbol = %sym, error = %e, "binance depth snapshot failed; retrying");
                        spawn_fetch(&opts, &sym, snap_tx.clone(), delay);
                        if sink.send(FeedItem::DecodeError(e)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
            for r in out.drain(..) {
                if sink.send(FeedItem::Record(r)).await.is_err() {
                    return Ok(());
                }
            }
            while let Some(ev) = dec.poll_event() {
                if let FeedEvent::NeedSnapshot { sym } = &ev {
                    spawn_fetch(&opts, sym, snap_tx.clone(), Duration::ZERO);
                }
                if sink.send(FeedItem::Event(ev)).await.is_err() {
                    return Ok(());
                }
            }
        };
        out.clear();
        dec.set_receipt_time(tickmesh_codec::now_ns());
        dec.connection_reset(&mut out);
        for r in out.drain(..) {
            if sink.send(FeedItem::Record(r)).await.is_err() {
                return Ok(());
            }
        }
        if sink.send(FeedItem::Disconnected { reason }).await.is_err() {
            return Ok(());
        }
        if opts.max_connections.is_some_and(|m| connections >= m) {
            return Ok(());
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

fn spawn_fetch(opts: &LiveOptions, sym: &str, tx: mpsc::Sender<(String, Result<Vec<u8>>)>, after: Duration) {
    let url =
        format!("{}/api/v3/depth?symbol={}&limit={}", opts.rest_url, sym.to_ascii_uppercase(), opts.snapshot_limit);
    let sym = sym.to_owned();
    tokio::spawn(async move {
        if !after.is_zero() {
            tokio::time::sleep(after).await;
        }
        let body = http_get(&url).await;
        let _ = tx.send((sym, body)).await;
    });
}

/// A minimal HTTP/1.1 GET over plain TCP (`http://host:port/path?query`), enough for a REST
/// snapshot from the replay server or a local proxy. It sends `Connection: close`, reads to
/// EOF, and understands `Content-Length` and chunked bodies. `https://` is refused: this crate
/// carries no TLS client (production would use hyper with rustls).
pub async fn http_get(url: &str) -> Result<Vec<u8>> {
    let io = |what: String| move |source: std::io::Error| Error::Io { what, source };
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        Error::Config(format!("{url}: only plain http:// URLs are supported by this client; use a local endpoint"))
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:80") };
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await.map_err(io(format!("connecting to {addr}")))?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.map_err(io(format!("sending GET {url}")))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(io(format!("reading GET {url}")))?;
        Ok::<_, Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| Error::Ws { url: url.to_owned(), what: "no HTTP response within 10 s".into() })??;
    parse_http_response(url, &buf)
}

fn parse_http_response(url: &str, buf: &[u8]) -> Result<Vec<u8>> {
    let fail = |what: String| Error::Ws { url: url.to_owned(), what };
    let end =
        buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| fail("HTTP response has no header end".into()))?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| fail("HTTP response head is not text".into()))?;
    let body = &buf[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code: u16 = status
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| fail(format!("bad status line {status:?}")))?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { continue };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if k == "content-length" {
            length = v.parse::<usize>().ok();
        }
    }
    let body = if chunked {
        let mut outb = Vec::new();
        let mut rest = body;
        loop {
            let e = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(|| fail("bad chunked body".into()))?;
            let size_txt =
                std::str::from_utf8(&rest[..e]).unwrap_or("").split(';').next().unwrap_or("").trim().to_owned();
            let size =
                usize::from_str_radix(&size_txt, 16).map_err(|_| fail(format!("bad chunk size {size_txt:?}")))?;
            rest = &rest[e + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size {
                return Err(fail("chunked body ends early".into()));
            }
            outb.extend_from_slice(&rest[..size]);
            rest = rest.get(size + 2..).unwrap_or(&[]);
        }
        outb
    } else {
        match length {
            Some(n) if body.len() >= n => body[..n].to_vec(),
            Some(_) => return Err(fail("HTTP body shorter than its Content-Length".into())),
            None => body.to_vec(),
        }
    };
    if code != 200 {
        let snippet = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(fail(format!("HTTP {code}: {}", truncate(&snippet))));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Decoder as _;
    use tickmesh_codec::RecordKind as K;

    fn diff(first: u64, last: u64, bid: &str) -> String {
        format!(
            r#"{{"stream":"x@depth@100ms","data":{{"e":"depthUpdate","E":1633998512068,"s":"XUSDT","U":{first},"u":{last},"b":[["{bid}","1"]],"a":[]}}}}"#
        )
    }

    #[test]
    fn documented_sync_procedure() {
        let mut d = Decoder::new(SourceId::new("BINANCE").unwrap(), &["xusdt".into()], SyncMode::Snapshot).unwrap();
        let mut out = Vec::new();
        d.feed(diff(10, 12, "1").as_bytes(), &mut out).unwrap();
        d.feed(diff(13, 15, "2").as_bytes(), &mut out).unwrap();
        assert!(out.is_empty());
        assert!(matches!(d.poll_event(), Some(FeedEvent::NeedSnapshot { .. })));
        assert!(d.poll_event().is_none(), "asked once");
        // Too old: the first buffered event starts after lastUpdateId + 1.
        d.apply_snapshot("XUSDT", br#"{"lastUpdateId":5,"bids":[],"asks":[]}"#, &mut out).unwrap();
        assert!(matches!(d.poll_event(), Some(FeedEvent::NeedSnapshot { .. })));
        d.apply_snapshot("XUSDT", br#"{"lastUpdateId":11,"bids":[["0.5","3"]],"asks":[["9","1"]]}"#, &mut out).unwrap();
        assert!(d.is_live("XUSDT"));
        assert_eq!(d.last_update_id("XUSDT"), Some(15));
        assert_eq!(d.book("XUSDT").unwrap().len(Side::Buy), 3);
        out.clear();
        d.feed(diff(17, 18, "3").as_bytes(), &mut out).unwrap();
        assert!(matches!(out[0].body, Body::Status(s) if &s.reason[..3] == b"GAP"));
        assert!(matches!(
            d.poll_event(),
            Some(FeedEvent::Gap { error: Error::VenueGap { expected: 16, got: 17, .. }, .. })
        ));
        assert!(matches!(d.poll_event(), Some(FeedEvent::NeedSnapshot { .. })));
        out.clear();
        d.apply_snapshot("XUSDT", br#"{"lastUpdateId":17,"bids":[["0.5","3"]],"asks":[["9","1"]]}"#, &mut out).unwrap();
        let kinds: Vec<_> = out.iter().map(|r| r.body.kind()).collect();
        assert!(kinds.contains(&K::Status));
        assert_eq!(d.book("XUSDT").unwrap().len(Side::Buy), 2, "0.5 from the snapshot and 3 from the buffered diff");
    }

    #[test]
    fn trades_take_the_aggressor_from_m() {
        let mut d = Decoder::new(SourceId::new("BINANCE").unwrap(), &[], SyncMode::DiffOnly).unwrap();
        let mut out = Vec::new();
        d.feed(
            br#"{"stream":"x@aggTrade","data":{"e":"aggTrade","E":1,"s":"XUSDT","a":7,"p":"1.5","q":"2","f":1,"l":2,"T":3,"m":true,"M":true}}"#,
            &mut out,
        )
        .unwrap();
        assert!(matches!(out[0].body, Body::Trade(t) if t.side == Side::Sell && t.match_id == 7));
        assert_eq!(out[0].header.ts_event, 3_000_000);
    }

    #[test]
    fn http_response_parsing() {
        let r = parse_http_response(
            "u",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        );
        assert_eq!(r.unwrap(), b"abcde");
        let r = parse_http_response("u", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
        assert_eq!(r.unwrap(), b"hi");
        assert!(parse_http_response("u", b"HTTP/1.1 400 Bad\r\n\r\n{\"code\":-1}").is_err());
        assert!(parse_http_response("u", b"garbage").is_err());
    }
}
