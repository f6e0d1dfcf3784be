//! Coinbase WebSocket adapters: the Exchange feed (`ws-feed.exchange.coinbase.com`, formerly
//! `ws-feed.pro.coinbase.com`) and the Advanced Trade feed (`advanced-trade-ws.coinbase.com`).
//!
//! Both decoders are sans-I/O ([`crate::Decoder`]): bytes of WebSocket text messages in, codec
//! records out. Input is split into JSON objects by brace counting, so one WebSocket message
//! per `feed`, several per call, or a message cut anywhere all give the same records. The
//! thin async driver [`run_live`] connects, subscribes, feeds the decoder, re-subscribes to
//! resynchronise a stale book and reconnects with backoff.
//!
//! # What becomes a record
//! * **Book snapshot** (Exchange `snapshot`, Advanced `l2_data` snapshot): the gateway builds a
//!   client's `book_snapshot` from `Level` records, so every level must reach it. The decoder
//!   therefore emits the *difference* between the book it held and the venue's snapshot: a
//!   `Level` with quantity 0 for every level that vanished and a `Level` for every level that
//!   is new or changed. On the first snapshot that is one `Level` per level (about 2,000 for a
//!   small Exchange product, 46,000 for BTC-USD on Advanced Trade); on a resync after a gap it
//!   is only what changed while we were blind. A `Quote` follows if the best bid/offer changed.
//! * **Book update** (`l2update`, `l2_data` update): one `Level` per level whose state changed,
//!   then a `Quote` if the best bid/offer changed (PROTOCOL.md "Sequencing").
//! * **Trade** (`match`, `market_trades` update): a `Trade`. Coinbase's `side` is the *maker*
//!   order's side (Exchange docs: "the side field indicates the maker order side"); the
//!   aggressor is the other side. The Advanced Trade docs do not say, but the capture settles
//!   it: every trade printed at the ask is labelled `SELL`, so it is the maker side there too.
//!   `last_match` (the trade before we subscribed, replayed at subscribe time) and the
//!   `market_trades` snapshot are history, not new events: they emit nothing and only seed the
//!   trade-id check.
//! * **Ticker**: emits nothing (our `Quote` comes from the book). Its best bid/ask is compared
//!   with our book as a cross-check whose counts [`CrossCheck`] reports.
//! * Candles, heartbeats, subscriptions: counted only ([`crate::Decoder::message_counts`]).
//!
//! # Gaps and resync
//! * Advanced Trade numbers every message of a connection (`sequence_num`); a skip is a gap.
//! * The Exchange `level2` channel carries no sequence number at all, and `sequence` on
//!   `ticker`/`match` counts every event of the product's full feed, so it is sparse here. What
//!   is contiguous is the per-product `trade_id` of `match` messages: a skip there means the
//!   connection lost messages. A sequence that goes backwards, or a book that crosses after an
//!   update, is treated the same way.
//!
//! A loss on a connection can hide messages of any product on it, so on a gap every book of
//! the connection goes stale: the decoder emits `Status { Unknown, "GAP" }` for each product,
//! reports a [`FeedEvent::Gap`] (holding [`Error::VenueGap`]; [`FeedEvent::Crossed`] when a
//! crossed book showed the loss) and a [`FeedEvent::NeedSnapshot`] per product, and ignores
//! book updates of a stale product until its next snapshot, after which it emits
//! `Status { Trading, "RESYNC" }`. Trades keep flowing during a resync. A connection that ends
//! makes every live book stale the same way, with `Status { Unknown, "DISCONN" }`
//! (`connection_reset`, called by the driver before it reconnects).
//!
//! The live driver re-subscribes the book channel of stale products and waits; it does not
//! yet retry a re-subscription the venue never answers (a reconnect does).
//!
//! # Time
//! `ts_event` is the venue's `time` / `event_time` (RFC 3339, UTC). An Exchange snapshot has no
//! time: it gets the receipt time the driver passed with [`ExchangeDecoder::set_receipt_time`],
//! or else the newest venue time seen on the connection.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tickmesh_codec::{
    Body, InstrumentId, Level, Meta, Px, Qty, Quote, Record, Seq, Side, SourceId, Status, Symbol, Trade, TradingState,
};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::book::{LevelBook, QuoteTracker};
use crate::error::{Error, Result};

// ---------------------------------------------------------------------------------------------
// Shared by the Coinbase and Binance adapters.
// ---------------------------------------------------------------------------------------------

/// Something a crypto decoder tells its driver besides records.
#[derive(Debug)]
#[non_exhaustive]
pub enum FeedEvent {
    /// The venue's own numbering skipped (or the book contradicted itself): messages were lost
    /// between the venue and us. `error` is an [`Error::VenueGap`]; `sym` is the product whose
    /// numbering showed it.
    Gap {
        /// The product whose sequence showed the gap.
        sym: String,
        /// The gap, as [`Error::VenueGap`].
        error: Error,
    },
    /// After an update the book of `sym` had its best bid at or above its best ask: a message
    /// was lost without a sequence number to show it. Handled like a gap.
    Crossed {
        /// The product whose book crossed.
        sym: String,
    },
    /// The book of `sym` is stale: the driver must obtain a venue snapshot (Coinbase:
    /// unsubscribe and subscribe `level2` again; Binance: the REST depth snapshot).
    NeedSnapshot {
        /// The product.
        sym: String,
    },
}

/// What a live adapter hands to its sink.
#[derive(Debug)]
#[non_exhaustive]
pub enum FeedItem {
    /// A record (seq 0, ts_ingest 0: the node's sequencer stamps it).
    Record(Record),
    /// A gap or resync request the adapter acted on (for logs and metrics).
    Event(FeedEvent),
    /// A message the decoder rejected; the feed goes on.
    DecodeError(Error),
    /// A connection was opened (and the subscriptions sent).
    Connected {
        /// The URL.
        url: String,
    },
    /// A connection ended; the adapter reconnects unless its connection budget is spent.
    Disconnected {
        /// Why.
        reason: String,
    },
}

/// Counts of a venue cross-check: venue top-of-book messages (Coinbase `ticker`, Binance
/// `bookTicker`) compared with the book the decoder keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrossCheck {
    /// Messages that could be compared.
    pub checked: u64,
    /// Of those, how many disagreed with our book.
    pub mismatched: u64,
}

/// Largest JSON message accepted (a full Advanced Trade BTC-USD snapshot is about 5 MB).
pub(crate) const MAX_MESSAGE: usize = 64 << 20;

/// Splits a byte stream into top-level JSON objects by counting braces outside strings, so a
/// decoder's output does not depend on how its input was cut.
#[derive(Debug, Default)]
pub(crate) struct JsonFramer {
    buf: Vec<u8>,
    pos: usize,
    start: usize,
    depth: u32,
    in_str: bool,
    esc: bool,
    /// Bytes dropped from the front of `buf` so far (for error offsets).
    base: u64,
}

/// One framing step.
pub(crate) enum Frame {
    /// A complete object at `buf[start..end]`.
    Object(usize, usize),
    /// A byte that cannot start a JSON object, at this stream offset.
    Stray(u64, u8),
    /// A message larger than [`MAX_MESSAGE`] starting at this offset was dropped.
    TooLarge(u64),
}

impl JsonFramer {
    pub(crate) fn push(&mut self, input: &[u8]) {
        self.buf.extend_from_slice(input);
    }

    /// The bytes of a frame returned by [`Self::next`].
    pub(crate) fn get(&self, start: usize, end: usize) -> &[u8] {
        &self.buf[start..end]
    }

    /// Stream offset of `buf[i]`.
    pub(crate) fn offset(&self, i: usize) -> u64 {
        self.base + i as u64
    }

    /// The next frame, or `None` when the buffered bytes hold no complete object.
    pub(crate) fn next(&mut self) -> Option<Frame> {
        while self.pos < self.buf.len() {
            let c = self.buf[self.pos];
            self.pos += 1;
            if self.depth == 0 {
                match c {
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    b'{' => {
                        self.start = self.pos - 1;
                        self.depth = 1;
                    }
                    _ => {
                        // Skip the whole run of garbage up to the next possible object, so
                        // that junk costs one error, not one per byte.
                        let at = self.offset(self.pos - 1);
                        while self.pos < self.buf.len() && self.buf[self.pos] != b'{' {
                            self.pos += 1;
                        }
                        return Some(Frame::Stray(at, c));
                    }
                }
                continue;
            }
            if self.in_str {
                if self.esc {
                    self.esc = false;
                } else if c == b'\\' {
                    self.esc = true;
                } else if c == b'"' {
                    self.in_str = false;
                }
                continue;
            }
            match c {
                b'"' => self.in_str = true,
                b'{' | b'[' => self.depth = self.depth.saturating_add(1),
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return Some(Frame::Object(self.start, self.pos));
                    }
                }
                _ => {}
            }
        }
        if self.depth > 0 && self.buf.len() - self.start > MAX_MESSAGE {
            let at = self.offset(self.start);
            self.reset_partial();
            return Some(Frame::TooLarge(at));
        }
        None
    }

    /// Drops bytes that no future frame needs. Call after the frames returned so far have been
    /// processed.
    pub(crate) fn compact(&mut self) {
        let keep_from = if self.depth > 0 { self.start } else { self.pos };
        if keep_from > 0 {
            self.buf.drain(..keep_from);
            self.base += keep_from as u64;
            self.pos -= keep_from;
            self.start = self.start.saturating_sub(keep_from);
        }
    }

    /// True while part of an object is buffered.
    pub(crate) fn in_message(&self) -> bool {
        self.depth > 0
    }

    /// Forgets a partial object (end of input, or a connection that was replaced).
    pub(crate) fn reset_partial(&mut self) {
        self.base += self.buf.len() as u64;
        self.buf.clear();
        self.pos = 0;
        self.start = 0;
        self.depth = 0;
        self.in_str = false;
        self.esc = false;
    }
}

impl JsonFramer {
    /// Buffers `input` and runs every complete message through `on_message` (see
    /// [`drain_frames`]).
    pub(crate) fn feed(
        &mut self,
        format: &'static str,
        input: &[u8],
        on_message: impl FnMut(&[u8], u64) -> Result<()>,
    ) -> Result<()> {
        self.push(input);
        drain_frames(format, self, on_message)
    }

    /// End of input: an error if it stopped inside a message (the partial bytes are dropped).
    pub(crate) fn finish(&mut self, format: &'static str) -> Result<()> {
        if !self.in_message() {
            return Ok(());
        }
        let offset = self.offset(0);
        self.reset_partial();
        Err(Error::Parse {
            format,
            offset,
            what: "input ends inside a JSON message; the capture or connection was cut short".into(),
        })
    }
}

/// Runs every complete frame of `framer` through `on_message`, keeping the first error and
/// going on with the rest, so one bad message never costs the good ones around it.
pub(crate) fn drain_frames(
    format: &'static str,
    framer: &mut JsonFramer,
    mut on_message: impl FnMut(&[u8], u64) -> Result<()>,
) -> Result<()> {
    let mut first: Option<Error> = None;
    let mut more = 0u64;
    let mut note = |e: Error, first: &mut Option<Error>| {
        if first.is_none() {
            *first = Some(e);
        } else {
            more += 1;
        }
    };
    while let Some(frame) = framer.next() {
        match frame {
            Frame::Object(s, e) => {
                let at = framer.offset(s);
                if let Err(err) = on_message(framer.get(s, e), at) {
                    note(err, &mut first);
                }
            }
            Frame::Stray(at, byte) => note(
                Error::Parse {
                    format,
                    offset: at,
                    what: format!(
                        "byte {byte:#04x} outside any JSON object; the feed must carry one JSON object per message \
                         (the bytes up to the next '{{' were skipped)"
                    ),
                },
                &mut first,
            ),
            Frame::TooLarge(at) => note(
                Error::Parse {
                    format,
                    offset: at,
                    what: format!(
                        "JSON message longer than {MAX_MESSAGE} bytes was dropped; is this really a {format} feed?"
                    ),
                },
                &mut first,
            ),
        }
    }
    framer.compact();
    match first {
        None => Ok(()),
        Some(Error::Parse { format, offset, what }) if more > 0 => {
            Err(Error::Parse { format, offset, what: format!("{what} ({more} more bad messages in this input)") })
        }
        Some(e) => Err(e),
    }
}

/// Parses RFC 3339 UTC text (`2021-04-17T16:43:37.075687Z`, up to 9 fraction digits, `Z` or
/// `+00:00`) into ns since the Unix epoch.
pub(crate) fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in &b[r] {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    let (y, mo, d, h, mi, se) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac = 0u64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let mut digits = 0;
        while i < b.len() && b[i].is_ascii_digit() {
            if digits < 9 {
                frac = frac * 10 + u64::from(b[i] - b'0');
                digits += 1;
            }
            i += 1;
        }
        if digits == 0 {
            return None;
        }
        frac *= 10u64.pow(9 - digits);
    }
    match &b[i..] {
        b"Z" | b"z" | b"+00:00" | b"-00:00" => {}
        _ => return None,
    }
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3_600 + mi * 60 + se;
    u64::try_from(secs).ok().map(|s| s * 1_000_000_000 + frac)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Counts by venue message type without allocating for a type already seen.
#[derive(Debug, Default)]
pub(crate) struct Counts(Vec<(String, u64)>);

impl Counts {
    pub(crate) fn bump(&mut self, name: &str) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, c)) => *c += 1,
            None => self.0.push((name.chars().take(40).collect(), 1)),
        }
    }
    pub(crate) fn to_vec(&self) -> Vec<(String, u64)> {
        let mut v = self.0.clone();
        v.sort();
        v
    }
}

/// A fixed-point value from venue text; the error names the field and the message.
pub(crate) fn fixed<T>(
    format: &'static str,
    at: u64,
    field: &str,
    text: &str,
    parse: fn(&str) -> std::result::Result<T, tickmesh_codec::Error>,
) -> Result<T> {
    parse(text).map_err(|e| Error::Parse {
        format,
        offset: at,
        what: format!("field {field} = {:?} is not a decimal we can hold exactly: {e}", truncate(text)),
    })
}

pub(crate) fn px(format: &'static str, at: u64, field: &str, text: &str) -> Result<Px> {
    let v = fixed(format, at, field, text, Px::parse)?;
    non_negative(format, at, field, text, v.raw())?;
    Ok(v)
}

pub(crate) fn qty(format: &'static str, at: u64, field: &str, text: &str) -> Result<Qty> {
    let v = fixed(format, at, field, text, Qty::parse)?;
    non_negative(format, at, field, text, v.raw())?;
    Ok(v)
}

/// Spot prices and sizes are never negative; one that is means the input is not what we think.
fn non_negative(format: &'static str, at: u64, field: &str, text: &str, raw: i64) -> Result<()> {
    if raw < 0 {
        return Err(Error::Parse {
            format,
            offset: at,
            what: format!("field {field} = {:?} is negative; spot prices and sizes never are", truncate(text)),
        });
    }
    Ok(())
}

/// Most products one decoder tracks: a feed naming more is not a venue feed we understand, and
/// the cap keeps garbage input from growing memory without bound.
pub(crate) const MAX_PRODUCTS: usize = 100_000;

pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

/// One product's book state inside a decoder.
#[derive(Debug)]
pub(crate) struct ProductBook {
    pub(crate) sym: Symbol,
    pub(crate) id: InstrumentId,
    pub(crate) book: LevelBook,
    pub(crate) quotes: QuoteTracker,
    /// False until a snapshot arrived, and again from a gap until the next snapshot.
    pub(crate) live: bool,
    /// A gap made the book stale (so the next snapshot is a resync).
    pub(crate) after_gap: bool,
    /// The book holds only some of the venue's levels (Binance without a full snapshot): its
    /// best bid/offer is not the venue's, so no `Quote` is derived from it.
    pub(crate) partial: bool,
}

impl ProductBook {
    pub(crate) fn new(sym: Symbol, id: InstrumentId) -> Self {
        ProductBook {
            sym,
            id,
            book: LevelBook::new(),
            quotes: QuoteTracker::new(),
            live: false,
            after_gap: false,
            partial: false,
        }
    }

    pub(crate) fn meta(&self, src: SourceId, ts_event: u64) -> Meta {
        Meta { src, seq: Seq(0), instrument: self.id, sym: self.sym, ts_event, ts_ingest: 0 }
    }

    /// Sets one level and emits its new state if it changed.
    pub(crate) fn set_level(&mut self, src: SourceId, ts: u64, side: Side, px: Px, qty: Qty, out: &mut Vec<Record>) {
        if self.book.set(side, px, qty, 0) {
            out.push(Record::new(self.meta(src, ts), Body::Level(Level { side, px, qty, count: 0 })));
        }
    }

    /// Emits a quote if the best bid/offer changed.
    pub(crate) fn emit_quote(&mut self, src: SourceId, ts: u64, out: &mut Vec<Record>) {
        if self.partial {
            return;
        }
        if let Some(q) = self.quotes.update(&self.book) {
            out.push(Record::new(self.meta(src, ts), Body::Quote(q)));
        }
    }

    pub(crate) fn status(&self, src: SourceId, ts: u64, state: TradingState, reason: &str) -> Record {
        let mut r = [0u8; 8];
        for (d, s) in r.iter_mut().zip(reason.bytes()) {
            *d = s;
        }
        Record::new(self.meta(src, ts), Body::Status(Status { state, reason: r }))
    }

    /// Replaces the book with a venue snapshot, emitting only the difference (see the module
    /// docs). `levels` may be in any order; a later entry for the same price wins.
    pub(crate) fn apply_snapshot(
        &mut self,
        src: SourceId,
        ts: u64,
        levels: &mut [(Side, Px, Qty)],
        out: &mut Vec<Record>,
    ) {
        // Last entry per (side, px) wins: sort stably by key, keep the last of each run.
        levels.sort_by_key(|&(s, p, _)| (s as u8, p));
        let mut dedup: Vec<(Side, Px, Qty)> = Vec::with_capacity(levels.len());
        for &l in levels.iter() {
            match dedup.last_mut() {
                Some(last) if last.0 == l.0 && last.1 == l.1 => *last = l,
                _ => dedup.push(l),
            }
        }
        let mut removed = Vec::new();
        for side in [Side::Buy, Side::Sell] {
            for (p, _, _) in self.book.levels(side) {
                let present = dedup.binary_search_by_key(&(side as u8, p), |&(s, p, _)| (s as u8, p)).is_ok();
                if !present {
                    removed.push((side, p));
                }
            }
        }
        for (side, p) in removed {
            self.set_level(src, ts, side, p, Qty::ZERO, out);
        }
        // The book keeps each side sorted with the best level last: bids go in ascending and
        // asks in descending price order so that every insert is an append.
        let split = dedup.partition_point(|l| l.0 == Side::Buy);
        let (bids, asks) = dedup.split_at(split);
        for &(side, p, q) in bids.iter().chain(asks.iter().rev()) {
            // A zero in a snapshot means "no level" (Advanced Trade never sends one; be safe).
            self.set_level(src, ts, side, p, q, out);
        }
        let was_after_gap = self.after_gap;
        self.live = true;
        self.after_gap = false;
        if was_after_gap {
            out.push(self.status(src, ts, TradingState::Trading, "RESYNC"));
        }
        self.emit_quote(src, ts, out);
    }
}

/// The products of a decoder, by venue symbol, with instrument ids in order of appearance.
#[derive(Debug, Default)]
pub(crate) struct Products {
    pub(crate) list: Vec<ProductBook>,
    index: HashMap<String, usize>,
}

impl Products {
    pub(crate) fn with(names: &[String]) -> Result<Self> {
        let mut p = Products::default();
        for n in names {
            p.get_or_add(n)?;
        }
        Ok(p)
    }

    pub(crate) fn get_or_add(&mut self, name: &str) -> Result<usize> {
        if let Some(&i) = self.index.get(name) {
            return Ok(i);
        }
        if self.list.len() >= MAX_PRODUCTS {
            return Err(Error::Config(format!(
                "more than {MAX_PRODUCTS} products on one feed (new one {:?}); split the feed into several sources",
                truncate(name)
            )));
        }
        let sym = Symbol::new(name).map_err(Error::Codec)?;
        let i = self.list.len();
        let id = u32::try_from(i).map_err(|_| Error::Config("more than 4 billion products".into()))?;
        self.list.push(ProductBook::new(sym, InstrumentId(id)));
        self.index.insert(name.to_owned(), i);
        Ok(i)
    }

    pub(crate) fn find(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The connection is gone: every live book is stale from here, and its clients are told
    /// with `Status { Unknown, "DISCONN" }`; the next snapshot brings `RESYNC`.
    pub(crate) fn connection_lost(&mut self, src: SourceId, ts: u64, out: &mut Vec<Record>) {
        for p in &mut self.list {
            if p.live {
                out.push(p.status(src, ts, TradingState::Unknown, "DISCONN"));
                p.after_gap = true;
                p.live = false;
            }
        }
    }
}

fn opposite(side: Side) -> Side {
    match side {
        Side::Buy => Side::Sell,
        Side::Sell => Side::Buy,
        Side::None => Side::None,
    }
}

fn maker_side(text: &str) -> Side {
    match text {
        "buy" | "BUY" | "Buy" => Side::Buy,
        "sell" | "SELL" | "Sell" => Side::Sell,
        _ => Side::None,
    }
}

fn book_side(text: &str) -> Option<Side> {
    match text {
        "buy" | "bid" | "BUY" | "BID" => Some(Side::Buy),
        "sell" | "offer" | "ask" | "SELL" | "OFFER" | "ASK" => Some(Side::Sell),
        _ => None,
    }
}

const FORMAT: &str = "coinbase";

fn bad(at: u64, what: impl Into<String>) -> Error {
    Error::Parse { format: FORMAT, offset: at, what: what.into() }
}

/// Marks every product stale after a loss on the connection and tells the driver. `gap` is
/// the (expected, got) venue sequence, or `None` when a crossed book showed the loss.
fn connection_gap(
    src: SourceId,
    products: &mut Products,
    events: &mut Vec<FeedEvent>,
    sym: &str,
    gap: Option<(u64, u64)>,
    ts: u64,
    out: &mut Vec<Record>,
) {
    events.push(match gap {
        Some((expected, got)) => {
            FeedEvent::Gap { sym: sym.to_owned(), error: Error::VenueGap { format: FORMAT, expected, got } }
        }
        None => FeedEvent::Crossed { sym: sym.to_owned() },
    });
    for p in &mut products.list {
        if p.live {
            out.push(p.status(src, ts, TradingState::Unknown, "GAP"));
            p.live = false;
            p.after_gap = true;
            events.push(FeedEvent::NeedSnapshot { sym: p.sym.as_str().to_owned() });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Coinbase Exchange.
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ExchangeMsg<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow, default)]
    product_id: Option<&'a str>,
    #[serde(borrow, default)]
    changes: Vec<(&'a str, &'a str, &'a str)>,
    #[serde(borrow, default)]
    bids: Vec<Vec<&'a str>>,
    #[serde(borrow, default)]
    asks: Vec<Vec<&'a str>>,
    #[serde(borrow, default)]
    time: Option<&'a str>,
    #[serde(default)]
    sequence: Option<u64>,
    #[serde(default)]
    trade_id: Option<u64>,
    #[serde(borrow, default)]
    side: Option<&'a str>,
    #[serde(borrow, default)]
    size: Option<&'a str>,
    #[serde(borrow, default)]
    price: Option<&'a str>,
    #[serde(borrow, default)]
    best_bid: Option<&'a str>,
    #[serde(borrow, default)]
    best_ask: Option<&'a str>,
    #[serde(borrow, default)]
    message: Option<&'a str>,
    #[serde(borrow, default)]
    reason: Option<&'a str>,
}

#[derive(Debug, Default)]
struct ExchangeProduct {
    last_trade_id: Option<u64>,
    last_sequence: Option<u64>,
    /// Venue time of the newest book update applied (ticker cross-check reference).
    book_time: u64,
}

/// Decoder for the Coinbase Exchange WebSocket feed (`level2`/`level2_batch`, `matches`,
/// `ticker`). See the module docs for what each message becomes.
#[derive(Debug)]
pub struct ExchangeDecoder {
    src: SourceId,
    framer: JsonFramer,
    products: Products,
    extra: Vec<ExchangeProduct>,
    events: Vec<FeedEvent>,
    counts: Counts,
    check: CrossCheck,
    receipt_ns: u64,
    last_venue_ns: u64,
    scratch: Vec<(Side, Px, Qty)>,
}

impl ExchangeDecoder {
    /// A decoder for source `src` (e.g. `COINBASE`). `products` fixes the instrument ids
    /// (their index); products seen later get the next ids in order of appearance.
    pub fn new(src: SourceId, products: &[String]) -> Result<Self> {
        let products = Products::with(products)?;
        let extra = products.list.iter().map(|_| ExchangeProduct::default()).collect();
        Ok(ExchangeDecoder {
            src,
            framer: JsonFramer::default(),
            products,
            extra,
            events: Vec::new(),
            counts: Counts::default(),
            check: CrossCheck::default(),
            receipt_ns: 0,
            last_venue_ns: 0,
            scratch: Vec::new(),
        })
    }

    /// The wall-clock time the next message was received (ns since the epoch). Used only as
    /// `ts_event` of messages that carry no venue time (snapshots).
    pub fn set_receipt_time(&mut self, ns: u64) {
        self.receipt_ns = ns;
    }

    /// The next gap or resync request, oldest first.
    pub fn poll_event(&mut self) -> Option<FeedEvent> {
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }

    /// Ticker cross-check counts (see the module docs).
    pub fn cross_check(&self) -> CrossCheck {
        self.check
    }

    /// The book of `sym`, if the decoder knows the product.
    pub fn book(&self, sym: &str) -> Option<&LevelBook> {
        self.products.find(sym).map(|i| &self.products.list[i].book)
    }

    /// True when `sym`'s book is synchronised (a snapshot arrived and no gap since).
    pub fn is_live(&self, sym: &str) -> bool {
        self.products.find(sym).is_some_and(|i| self.products.list[i].live)
    }

    /// Products known so far, in instrument-id order.
    pub fn products(&self) -> Vec<String> {
        self.products.list.iter().map(|p| p.sym.as_str().to_owned()).collect()
    }

    /// The connection ended (call before reconnecting): every live book becomes stale and gets
    /// `Status { Unknown, "DISCONN" }` (at the receipt time last set), trade-id continuity
    /// starts afresh, and a partial message of the old connection is dropped.
    pub fn connection_reset(&mut self, out: &mut Vec<Record>) {
        self.framer.reset_partial();
        let ts = if self.receipt_ns != 0 { self.receipt_ns } else { self.last_venue_ns };
        self.products.connection_lost(self.src, ts, out);
        for e in &mut self.extra {
            *e = ExchangeProduct::default();
        }
    }

    fn product(&mut self, name: Option<&str>, at: u64) -> Result<usize> {
        let name = name.ok_or_else(|| bad(at, "message has no product_id"))?;
        let i = self.products.get_or_add(name)?;
        while self.extra.len() < self.products.list.len() {
            self.extra.push(ExchangeProduct::default());
        }
        Ok(i)
    }

    fn on_message(&mut self, bytes: &[u8], at: u64, out: &mut Vec<Record>) -> Result<()> {
        let m: ExchangeMsg<'_> = serde_json::from_slice(bytes).map_err(|e| {
            bad(at, format!("not a Coinbase Exchange message ({e}); expected a JSON object with a \"type\""))
        })?;
        self.counts.bump(m.kind);
        let time = match m.time {
            Some(t) => {
                let ns =
                    parse_rfc3339(t).ok_or_else(|| bad(at, format!("time {:?} is not RFC 3339 UTC", truncate(t))))?;
                self.last_venue_ns = self.last_venue_ns.max(ns);
                Some(ns)
            }
            None => None,
        };
        let fallback = if self.receipt_ns != 0 { self.receipt_ns } else { self.last_venue_ns };
        let ts = time.unwrap_or(fallback);
        let src = self.src;
        match m.kind {
            "snapshot" => {
                let i = self.product(m.product_id, at)?;
                let mut levels = std::mem::take(&mut self.scratch);
                levels.clear();
                let res = (|| {
                    for (side, list) in [(Side::Buy, &m.bids), (Side::Sell, &m.asks)] {
                        for l in list {
                            let [p, q, ..] = l.as_slice() else {
                                return Err(bad(at, "snapshot level is not [price, size]"));
                            };
                            levels.push((side, px(FORMAT, at, "price", p)?, qty(FORMAT, at, "size", q)?));
                        }
                    }
                    Ok(())
                })();
                if res.is_ok() {
                    self.products.list[i].apply_snapshot(src, ts, &mut levels, out);
                    self.extra[i].book_time = 0;
                }
                self.scratch = levels;
                res
            }
            "l2update" => {
                let i = self.product(m.product_id, at)?;
                if !self.products.list[i].live {
                    return Ok(()); // stale: wait for the snapshot
                }
                // Parse everything first so a bad change leaves the book untouched.
                let mut changes = std::mem::take(&mut self.scratch);
                changes.clear();
                let mut res = Ok(());
                for (s, p, q) in &m.changes {
                    let Some(side) = book_side(s) else {
                        res = Err(bad(at, format!("l2update side {:?} is neither buy nor sell", truncate(s))));
                        break;
                    };
                    match (px(FORMAT, at, "price", p), qty(FORMAT, at, "size", q)) {
                        (Ok(p), Ok(q)) => changes.push((side, p, q)),
                        (Err(e), _) | (_, Err(e)) => {
                            res = Err(e);
                            break;
                        }
                    }
                }
                if res.is_ok() {
                    let pb = &mut self.products.list[i];
                    for &(side, p, q) in &changes {
                        pb.set_level(src, ts, side, p, q, out);
                    }
                    self.extra[i].book_time = ts;
                    if pb.book.is_crossed() {
                        let name = pb.sym.as_str().to_owned();
                        connection_gap(src, &mut self.products, &mut self.events, &name, None, ts, out);
                    } else {
                        pb.emit_quote(src, ts, out);
                    }
                }
                self.scratch = changes;
                res
            }
            "match" | "last_match" => {
                let i = self.product(m.product_id, at)?;
                let trade_id = m.trade_id.ok_or_else(|| bad(at, "match without trade_id"))?;
                let x = &mut self.extra[i];
                let mut gap = None;
                if let Some(last) = x.last_trade_id {
                    if trade_id > last + 1 {
                        gap = Some((last + 1, trade_id));
                    }
                }
                if let (Some(last), Some(s)) = (x.last_sequence, m.sequence) {
                    if s < last && gap.is_none() {
                        gap = Some((last + 1, s));
                    }
                }
                x.last_trade_id = Some(x.last_trade_id.map_or(trade_id, |l| l.max(trade_id)));
                if let Some(s) = m.sequence {
                    x.last_sequence = Some(x.last_sequence.map_or(s, |l| l.max(s)));
                }
                if let Some((expected, got)) = gap {
                    let name = self.products.list[i].sym.as_str().to_owned();
                    connection_gap(src, &mut self.products, &mut self.events, &name, Some((expected, got)), ts, out);
                }
                if m.kind == "match" {
                    let price = px(FORMAT, at, "price", m.price.ok_or_else(|| bad(at, "match without price"))?)?;
                    let size = qty(FORMAT, at, "size", m.size.ok_or_else(|| bad(at, "match without size"))?)?;
                    let side = opposite(maker_side(m.side.unwrap_or("")));
                    let pb = &self.products.list[i];
                    out.push(Record::new(
                        pb.meta(src, ts),
                        Body::Trade(Trade { px: price, qty: size, side, match_id: trade_id }),
                    ));
                }
                Ok(())
            }
            "ticker" => {
                let Some(name) = m.product_id else { return Ok(()) };
                let Some(i) = self.products.find(name) else { return Ok(()) };
                if let Some(s) = m.sequence {
                    let x = &mut self.extra[i];
                    x.last_sequence = Some(x.last_sequence.map_or(s, |l| l.max(s)));
                }
                let pb = &self.products.list[i];
                let fresh = time.is_some_and(|t| self.extra[i].book_time != 0 && t >= self.extra[i].book_time);
                if pb.live && fresh {
                    if let (Some(b), Some(a)) = (m.best_bid, m.best_ask) {
                        let q = pb.book.quote();
                        self.check.checked += 1;
                        if Px::parse(b).ok() != Some(q.bid_px) || Px::parse(a).ok() != Some(q.ask_px) {
                            self.check.mismatched += 1;
                        }
                    }
                }
                Ok(())
            }
            "error" => Err(Error::Config(format!(
                "coinbase refused a request: {} ({}); check the product ids and channel names of the subscription",
                m.message.unwrap_or("no message"),
                m.reason.unwrap_or("no reason")
            ))),
            // subscriptions, heartbeat, status, received/open/done/change (full channel): counted.
            _ => Ok(()),
        }
    }
}

impl crate::Decoder for ExchangeDecoder {
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
// Coinbase Advanced Trade.
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct AdvancedMsg<'a> {
    #[serde(borrow, default)]
    channel: Option<&'a str>,
    #[serde(borrow, default)]
    timestamp: Option<&'a str>,
    #[serde(default)]
    sequence_num: Option<u64>,
    #[serde(borrow, default)]
    events: Vec<AdvancedEvent<'a>>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a str>,
    #[serde(borrow, default)]
    message: Option<&'a str>,
}

#[derive(Deserialize)]
struct AdvancedEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a str>,
    #[serde(borrow, default)]
    product_id: Option<&'a str>,
    #[serde(borrow, default)]
    updates: Vec<L2Update<'a>>,
    #[serde(borrow, default)]
    trades: Vec<AdvancedTrade<'a>>,
    #[serde(borrow, default)]
    tickers: Vec<AdvancedTicker<'a>>,
}

#[derive(Deserialize)]
struct L2Update<'a> {
    #[serde(borrow)]
    side: &'a str,
    #[serde(borrow, default)]
    event_time: Option<&'a str>,
    #[serde(borrow)]
    price_level: &'a str,
    #[serde(borrow)]
    new_quantity: &'a str,
}

#[derive(Deserialize)]
struct AdvancedTrade<'a> {
    #[serde(borrow)]
    product_id: &'a str,
    #[serde(borrow)]
    trade_id: &'a str,
    #[serde(borrow)]
    price: &'a str,
    #[serde(borrow)]
    size: &'a str,
    #[serde(borrow, default)]
    time: Option<&'a str>,
    #[serde(borrow)]
    side: &'a str,
}

#[derive(Deserialize)]
struct AdvancedTicker<'a> {
    #[serde(borrow)]
    product_id: &'a str,
    #[serde(borrow, default)]
    best_bid: Option<&'a str>,
    #[serde(borrow, default)]
    best_ask: Option<&'a str>,
    #[serde(borrow, default)]
    best_bid_quantity: Option<&'a str>,
    #[serde(borrow, default)]
    best_ask_quantity: Option<&'a str>,
}

/// Decoder for the Coinbase Advanced Trade market-data WebSocket (`level2` → `l2_data`,
/// `market_trades`, `ticker`, `heartbeats`, `candles`). See the module docs.
#[derive(Debug)]
pub struct AdvancedDecoder {
    src: SourceId,
    framer: JsonFramer,
    products: Products,
    events: Vec<FeedEvent>,
    counts: Counts,
    check: CrossCheck,
    last_seq: Option<u64>,
    receipt_ns: u64,
    last_venue_ns: u64,
    scratch: Vec<(Side, Px, Qty)>,
}

impl AdvancedDecoder {
    /// A decoder for source `src`; `products` fixes the instrument ids (see
    /// [`ExchangeDecoder::new`]).
    pub fn new(src: SourceId, products: &[String]) -> Result<Self> {
        Ok(AdvancedDecoder {
            src,
            framer: JsonFramer::default(),
            products: Products::with(products)?,
            events: Vec::new(),
            counts: Counts::default(),
            check: CrossCheck::default(),
            last_seq: None,
            receipt_ns: 0,
            last_venue_ns: 0,
            scratch: Vec::new(),
        })
    }

    /// The wall-clock receipt time of the next message (used when a message has no venue time).
    pub fn set_receipt_time(&mut self, ns: u64) {
        self.receipt_ns = ns;
    }

    /// The next gap or resync request, oldest first.
    pub fn poll_event(&mut self) -> Option<FeedEvent> {
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }

    /// Ticker cross-check counts: a ticker counts as checked when its product's book is live,
    /// and as mismatched when its best bid/ask prices and sizes differ from our book at the
    /// moment it arrives (Advanced Trade's ticker is not in lockstep with `l2_data`, so some
    /// mismatches are expected; the golden test measures how close they are).
    pub fn cross_check(&self) -> CrossCheck {
        self.check
    }

    /// The book of `sym`.
    pub fn book(&self, sym: &str) -> Option<&LevelBook> {
        self.products.find(sym).map(|i| &self.products.list[i].book)
    }

    /// True when `sym`'s book is synchronised.
    pub fn is_live(&self, sym: &str) -> bool {
        self.products.find(sym).is_some_and(|i| self.products.list[i].live)
    }

    /// Products known so far, in instrument-id order.
    pub fn products(&self) -> Vec<String> {
        self.products.list.iter().map(|p| p.sym.as_str().to_owned()).collect()
    }

    /// The last `sequence_num` seen on this connection.
    pub fn last_sequence(&self) -> Option<u64> {
        self.last_seq
    }

    /// The connection ended (call before reconnecting): `sequence_num` starts again at 0 on the
    /// next one, and every live book becomes stale with `Status { Unknown, "DISCONN" }` until
    /// its snapshot arrives.
    pub fn connection_reset(&mut self, out: &mut Vec<Record>) {
        self.framer.reset_partial();
        self.last_seq = None;
        let ts = if self.receipt_ns != 0 { self.receipt_ns } else { self.last_venue_ns };
        self.products.connection_lost(self.src, ts, out);
    }

    fn on_message(&mut self, bytes: &[u8], at: u64, out: &mut Vec<Record>) -> Result<()> {
        let m: AdvancedMsg<'_> = serde_json::from_slice(bytes).map_err(|e| {
            bad(at, format!("not a Coinbase Advanced Trade message ({e}); expected a JSON object with \"channel\" and \"events\""))
        })?;
        if m.kind == Some("error") {
            return Err(Error::Config(format!(
                "coinbase advanced trade refused a request: {}; check the product ids and channel names",
                m.message.unwrap_or("no message")
            )));
        }
        let channel = m.channel.ok_or_else(|| bad(at, "message has no \"channel\""))?;
        self.counts.bump(channel);
        let msg_ts = match m.timestamp {
            Some(t) => {
                parse_rfc3339(t).ok_or_else(|| bad(at, format!("timestamp {:?} is not RFC 3339 UTC", truncate(t))))?
            }
            None => {
                if self.receipt_ns != 0 {
                    self.receipt_ns
                } else {
                    self.last_venue_ns
                }
            }
        };
        self.last_venue_ns = self.last_venue_ns.max(msg_ts);
        let src = self.src;
        if let Some(s) = m.sequence_num {
            if let Some(last) = self.last_seq {
                if s != last + 1 {
                    connection_gap(
                        src,
                        &mut self.products,
                        &mut self.events,
                        channel,
                        Some((last + 1, s)),
                        msg_ts,
                        out,
                    );
                }
            }
            self.last_seq = Some(s);
        }
        let mut first_err = None;
        for ev in &m.events {
            let r = match channel {
                "l2_data" => self.on_l2(ev, msg_ts, at, out),
                "market_trades" if ev.kind == Some("update") => self.on_trades(ev, msg_ts, at, out),
                "ticker" => {
                    self.on_tickers(ev);
                    Ok(())
                }
                _ => Ok(()),
            };
            if let (Err(e), None) = (r, &first_err) {
                first_err = Some(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn on_l2(&mut self, ev: &AdvancedEvent<'_>, msg_ts: u64, at: u64, out: &mut Vec<Record>) -> Result<()> {
        let name = ev.product_id.ok_or_else(|| bad(at, "l2_data event without product_id"))?;
        let i = self.products.get_or_add(name)?;
        let snapshot = match ev.kind {
            Some("snapshot") => true,
            Some("update") => false,
            other => return Err(bad(at, format!("l2_data event type {other:?} is neither snapshot nor update"))),
        };
        if !snapshot && !self.products.list[i].live {
            return Ok(());
        }
        let mut levels = std::mem::take(&mut self.scratch);
        levels.clear();
        let mut ts = msg_ts;
        let mut res = Ok(());
        for u in &ev.updates {
            let Some(side) = book_side(u.side) else {
                res = Err(bad(at, format!("l2_data side {:?} is neither bid nor offer", truncate(u.side))));
                break;
            };
            if let Some(t) = u.event_time.and_then(parse_rfc3339) {
                ts = t;
            }
            match (px(FORMAT, at, "price_level", u.price_level), qty(FORMAT, at, "new_quantity", u.new_quantity)) {
                (Ok(p), Ok(q)) => levels.push((side, p, q)),
                (Err(e), _) | (_, Err(e)) => {
                    res = Err(e);
                    break;
                }
            }
        }
        if res.is_ok() {
            let src = self.src;
            let pb = &mut self.products.list[i];
            if snapshot {
                levels.retain(|l| l.2 != Qty::ZERO);
                pb.apply_snapshot(src, ts, &mut levels, out);
            } else {
                for &(side, p, q) in &levels {
                    pb.set_level(src, ts, side, p, q, out);
                }
                if pb.book.is_crossed() {
                    let name = pb.sym.as_str().to_owned();
                    connection_gap(src, &mut self.products, &mut self.events, &name, None, ts, out);
                } else {
                    pb.emit_quote(src, ts, out);
                }
            }
        }
        self.scratch = levels;
        res
    }

    fn on_trades(&mut self, ev: &AdvancedEvent<'_>, msg_ts: u64, at: u64, out: &mut Vec<Record>) -> Result<()> {
        // Coinbase lists a batch newest first; records go out in venue order (oldest first).
        for t in ev.trades.iter().rev() {
            let i = self.products.get_or_add(t.product_id)?;
            let match_id = t
                .trade_id
                .parse::<u64>()
                .map_err(|_| bad(at, format!("trade_id {:?} is not an unsigned integer", truncate(t.trade_id))))?;
            let price = px(FORMAT, at, "price", t.price)?;
            let size = qty(FORMAT, at, "size", t.size)?;
            let ts = t.time.and_then(parse_rfc3339).unwrap_or(msg_ts);
            let side = opposite(maker_side(t.side));
            let pb = &self.products.list[i];
            out.push(Record::new(pb.meta(self.src, ts), Body::Trade(Trade { px: price, qty: size, side, match_id })));
        }
        Ok(())
    }

    fn on_tickers(&mut self, ev: &AdvancedEvent<'_>) {
        for t in &ev.tickers {
            let Some(i) = self.products.find(t.product_id) else { continue };
            let pb = &self.products.list[i];
            if !pb.live {
                continue;
            }
            let q: Quote = pb.book.quote();
            let parse_px = |s: Option<&str>| s.and_then(|s| Px::parse(s).ok());
            let parse_qty = |s: Option<&str>| s.and_then(|s| Qty::parse(s).ok());
            self.check.checked += 1;
            let same = parse_px(t.best_bid) == Some(q.bid_px)
                && parse_px(t.best_ask) == Some(q.ask_px)
                && parse_qty(t.best_bid_quantity) == Some(q.bid_qty)
                && parse_qty(t.best_ask_quantity) == Some(q.ask_qty);
            if !same {
                self.check.mismatched += 1;
            }
        }
    }
}

impl crate::Decoder for AdvancedDecoder {
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

/// Which Coinbase WebSocket API a feed speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Coinbase Exchange (`wss://ws-feed.exchange.coinbase.com`).
    Exchange,
    /// Coinbase Advanced Trade (`wss://advanced-trade-ws.coinbase.com`).
    Advanced,
}

/// Settings of [`run_live_with`].
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// WebSocket URL. Only `ws://` works in this build: tokio-tungstenite is compiled without a
    /// TLS backend, so production (`wss://`) needs its `rustls-tls-webpki-roots` feature
    /// enabled in the workspace; nothing else changes.
    pub url: String,
    /// Products to subscribe (`BTC-USD`, ...).
    pub products: Vec<String>,
    /// Which API.
    pub api: Api,
    /// Source id of the records. Default `COINBASE`.
    pub source: String,
    /// Book channel name. Default `level2` (Exchange now wants authentication for `level2`;
    /// its unauthenticated twin is `level2_batch`, same messages batched every 50 ms).
    pub book_channel: String,
    /// First reconnect delay; doubles up to [`Self::max_backoff`]. Default 250 ms.
    pub backoff: Duration,
    /// Longest reconnect delay. Default 30 s.
    pub max_backoff: Duration,
    /// Stop after this many connections (tests: 1). Default `None`: reconnect forever.
    pub max_connections: Option<u32>,
}

impl LiveOptions {
    /// Defaults for `url`, `products` and `api`.
    pub fn new(url: &str, products: &[String], api: Api) -> Self {
        LiveOptions {
            url: url.to_owned(),
            products: products.to_vec(),
            api,
            source: "COINBASE".into(),
            book_channel: "level2".into(),
            backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            max_connections: None,
        }
    }
}

/// Runs a Coinbase feed with default [`LiveOptions`] until `sink` is closed.
pub async fn run_live(url: &str, products: &[String], api: Api, sink: mpsc::Sender<FeedItem>) -> Result<()> {
    run_live_with(LiveOptions::new(url, products, api), sink).await
}

enum Either {
    Exchange(ExchangeDecoder),
    Advanced(AdvancedDecoder),
}

impl Either {
    fn feed(&mut self, text: &[u8], now: u64, out: &mut Vec<Record>) -> Result<()> {
        use crate::Decoder;
        match self {
            Either::Exchange(d) => {
                d.set_receipt_time(now);
                d.feed(text, out)
            }
            Either::Advanced(d) => {
                d.set_receipt_time(now);
                d.feed(text, out)
            }
        }
    }
    fn poll_event(&mut self) -> Option<FeedEvent> {
        match self {
            Either::Exchange(d) => d.poll_event(),
            Either::Advanced(d) => d.poll_event(),
        }
    }
    fn reset(&mut self, now: u64, out: &mut Vec<Record>) {
        match self {
            Either::Exchange(d) => {
                d.set_receipt_time(now);
                d.connection_reset(out)
            }
            Either::Advanced(d) => {
                d.set_receipt_time(now);
                d.connection_reset(out)
            }
        }
    }
}

/// The subscribe (or unsubscribe) messages for `products`.
pub fn subscribe_messages(api: Api, op: &str, products: &[String], book_channel: &str, book_only: bool) -> Vec<String> {
    let ids = serde_json::to_string(products).unwrap_or_else(|_| "[]".into());
    match api {
        Api::Exchange => {
            let channels = if book_only {
                format!("[\"{book_channel}\"]")
            } else {
                format!("[\"{book_channel}\",\"matches\",\"ticker\",\"heartbeat\"]")
            };
            vec![format!("{{\"type\":\"{op}\",\"product_ids\":{ids},\"channels\":{channels}}}")]
        }
        Api::Advanced => {
            let chans: &[&str] =
                if book_only { &[book_channel] } else { &[book_channel, "market_trades", "ticker", "heartbeats"] };
            chans.iter().map(|c| format!("{{\"type\":\"{op}\",\"product_ids\":{ids},\"channel\":\"{c}\"}}")).collect()
        }
    }
}

/// Runs a Coinbase feed: connect, subscribe, decode, re-subscribe the book channel of products
/// whose book went stale, reconnect with exponential backoff. Returns when `sink` is closed or
/// the connection budget is spent.
pub async fn run_live_with(opts: LiveOptions, sink: mpsc::Sender<FeedItem>) -> Result<()> {
    let src = SourceId::new(&opts.source).map_err(Error::Codec)?;
    let mut dec = match opts.api {
        Api::Exchange => Either::Exchange(ExchangeDecoder::new(src, &opts.products)?),
        Api::Advanced => Either::Advanced(AdvancedDecoder::new(src, &opts.products)?),
    };
    let ws_err = |what: String| Error::Ws { url: opts.url.clone(), what };
    let mut delay = opts.backoff;
    let mut connections = 0u32;
    let mut out = Vec::new();
    loop {
        if opts.max_connections.is_some_and(|m| connections >= m) {
            return Ok(());
        }
        connections += 1;
        let conn = tokio_tungstenite::connect_async(opts.url.as_str()).await;
        let mut ws = match conn {
            Ok((ws, _)) => ws,
            Err(e) => {
                if sink.send(FeedItem::Disconnected { reason: format!("connect failed: {e}") }).await.is_err() {
                    return Ok(());
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(opts.max_backoff);
                continue;
            }
        };
        let mut ok = true;
        for m in subscribe_messages(opts.api, "subscribe", &opts.products, &opts.book_channel, false) {
            if let Err(e) = ws.send(Message::text(m)).await {
                ok = false;
                let _ = sink.send(FeedItem::Disconnected { reason: format!("subscribe failed: {e}") }).await;
                break;
            }
        }
        if !ok {
            continue;
        }
        if sink.send(FeedItem::Connected { url: opts.url.clone() }).await.is_err() {
            return Ok(());
        }
        let reason = loop {
            let msg = match ws.next().await {
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
            out.clear();
            let res = dec.feed(text, tickmesh_codec::now_ns(), &mut out);
            for r in out.drain(..) {
                if sink.send(FeedItem::Record(r)).await.is_err() {
                    return Ok(());
                }
            }
            if let Err(e) = res {
                if let Error::Config(_) = e {
                    return Err(ws_err(e.to_string()));
                }
                tracing::warn!(url = %opts.url, error = %e, "coinbase message rejected");
                if sink.send(FeedItem::DecodeError(e)).await.is_err() {
                    return Ok(());
                }
            }
            let mut stale = Vec::new();
            while let Some(ev) = dec.poll_event() {
                if let FeedEvent::NeedSnapshot { sym } = &ev {
                    stale.push(sym.clone());
                }
                if let FeedEvent::Gap { error, .. } = &ev {
                    tracing::warn!(url = %opts.url, error = %error, "coinbase gap; resubscribing stale books");
                }
                if sink.send(FeedItem::Event(ev)).await.is_err() {
                    return Ok(());
                }
            }
            if !stale.is_empty() {
                let mut msgs = subscribe_messages(opts.api, "unsubscribe", &stale, &opts.book_channel, true);
                msgs.extend(subscribe_messages(opts.api, "subscribe", &stale, &opts.book_channel, true));
                for m in msgs {
                    if let Err(e) = ws.send(Message::text(m)).await {
                        tracing::warn!(url = %opts.url, error = %e, "resubscribe failed");
                    }
                }
            }
        };
        out.clear();
        dec.reset(tickmesh_codec::now_ns(), &mut out);
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
        delay = (delay * 2).min(opts.max_backoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Decoder;

    fn src() -> SourceId {
        SourceId::new("COINBASE").unwrap()
    }

    #[test]
    fn rfc3339_parses_micro_and_nano() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2021-04-17T16:43:37.075687Z"), Some(1_618_677_817_075_687_000));
        assert_eq!(parse_rfc3339("2026-08-09T21:05:48.228568804Z"), Some(1_786_309_548_228_568_804));
        assert_eq!(parse_rfc3339("2021-04-17 16:43:37Z"), Some(1_618_677_817_000_000_000));
        assert_eq!(parse_rfc3339("2021-04-17T16:43:37+01:00"), None);
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    #[test]
    fn framer_is_split_independent() {
        let msgs = br#"{"a":"}{"} {"b":[1,{"c":"\""}]}
{"d":1}"#;
        for cut in 0..msgs.len() {
            let mut f = JsonFramer::default();
            let mut got = Vec::new();
            for part in [&msgs[..cut], &msgs[cut..]] {
                f.push(part);
                while let Some(Frame::Object(s, e)) = f.next() {
                    got.push(f.get(s, e).to_vec());
                }
                f.compact();
            }
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(got[0], br#"{"a":"}{"}"#);
        }
    }

    #[test]
    fn exchange_book_trade_and_gap() {
        let mut d = ExchangeDecoder::new(src(), &["BTC-USD".into()]).unwrap();
        let mut out = Vec::new();
        d.feed(
            br#"{"type":"l2update","product_id":"BTC-USD","changes":[["buy","1","1"]],"time":"2021-01-01T00:00:00Z"}"#,
            &mut out,
        )
        .unwrap();
        assert!(out.is_empty(), "updates before the snapshot are ignored");
        d.feed(
            br#"{"type":"snapshot","product_id":"BTC-USD","bids":[["10","1"],["9","2"]],"asks":[["11","3"]]}"#,
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 4, "three levels and a quote: {out:?}");
        out.clear();
        d.feed(
            br#"{"type":"l2update","product_id":"BTC-USD","changes":[["sell","11","0"],["sell","12","1"]],"time":"2021-01-01T00:00:01Z"}"#,
            &mut out,
        )
        .unwrap();
        let kinds: Vec<_> = out.iter().map(|r| r.body.kind()).collect();
        use tickmesh_codec::RecordKind as K;
        assert_eq!(kinds, vec![K::Level, K::Level, K::Quote]);
        out.clear();
        let m = |id: u64| {
            format!(
                r#"{{"type":"match","trade_id":{id},"side":"sell","size":"1","price":"12","product_id":"BTC-USD","sequence":{id},"time":"2021-01-01T00:00:02Z"}}"#
            )
        };
        d.feed(m(5).as_bytes(), &mut out).unwrap();
        match out[0].body {
            Body::Trade(t) => assert_eq!((t.side, t.match_id), (Side::Buy, 5), "maker sold, so the taker bought"),
            other => panic!("{other:?}"),
        }
        out.clear();
        d.feed(m(7).as_bytes(), &mut out).unwrap();
        assert!(matches!(out[0].body, Body::Status(s) if s.state == TradingState::Unknown && &s.reason[..3] == b"GAP"));
        assert!(matches!(
            d.poll_event(),
            Some(FeedEvent::Gap { error: Error::VenueGap { expected: 6, got: 7, .. }, .. })
        ));
        assert!(matches!(d.poll_event(), Some(FeedEvent::NeedSnapshot { .. })));
        assert!(!d.is_live("BTC-USD"));
        out.clear();
        d.feed(br#"{"type":"snapshot","product_id":"BTC-USD","bids":[["10","1"]],"asks":[["12","1"]]}"#, &mut out)
            .unwrap();
        // Level 9 removed, then RESYNC status, then the quote.
        assert!(out.iter().any(|r| matches!(r.body, Body::Status(s) if &s.reason[..6] == b"RESYNC")));
        assert!(d.is_live("BTC-USD"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut d = ExchangeDecoder::new(src(), &[]).unwrap();
        let mut out = Vec::new();
        assert!(d.feed(b"hello {\"type\":1}", &mut out).is_err());
        assert!(d.feed(b"{\"type\":\"snapshot\"}", &mut out).is_err());
        assert!(d.feed(b"{\"type\":\"l2update\"", &mut out).is_ok());
        assert!(d.finish(&mut out).is_err());
        let mut a = AdvancedDecoder::new(src(), &[]).unwrap();
        assert!(a.feed(b"{\"channel\":\"l2_data\",\"events\":[{\"type\":\"x\"}]}", &mut out).is_err());
    }
}
