//! LOBSTER message files (lobsterdata.com's reconstruction of Nasdaq TotalView-ITCH).
//!
//! A LOBSTER request gives two CSV files per symbol and day: `..._message_N.csv`, one event
//! a line (`time,type,order_id,size,price,direction`), and `..._orderbook_N.csv`, the top
//! `N` levels after each event (`ask_px,ask_sz,bid_px,bid_sz` per level). [`LobsterDecoder`]
//! is sans-I/O: message bytes go to [`Decoder::feed`], orderbook bytes (optional) to
//! [`LobsterDecoder::feed_orderbook`], in any chunking; [`decode_files`] is the thin file
//! driver.
//!
//! # Why the orderbook file is needed for an exact book
//! The message file holds only the events inside the requested depth: a level-1 file has
//! no event below the best bid or above the best ask (in the AMZN sample every add is at or
//! better than the touch, every cancel and execution at the touch). So when the best level
//! empties, the level that becomes best was built by events the file never shows, and
//! orders placed before 09:30 are cancelled or executed without ever having been added.
//! No seeding from the first book row fixes this: in the AMZN level-1 sample, a price-keyed
//! book built from the messages alone differs from the orderbook file on 8,169 of 115,030
//! side-updates, each time on a level that was outside the visible depth before the event.
//!
//! So the decoder keeps two things. An [`OrderBook`] of the orders it has seen added gives
//! the order-level records their `remaining` quantity; an event on an order it never saw
//! (placed before the window, or while outside the depth) is counted as `unknown_order`,
//! still applied to the level by the message's own size and price (LOBSTER gives both), and
//! reports `remaining` 0 for a delete or an unknown remainder. A [`LevelBook`] keyed by
//! price is changed by every message's size and direction; when the orderbook file is
//! fed, each event's row then reconciles the visible depth: a level the row shows is set to
//! the row's size, a level inside the visible range that the row does not show is removed.
//! A reconciled level that was already visible in the previous row would mean the two files
//! disagree; such levels are counted as `book_contradictions` (zero on the AMZN sample), the
//! others as `book_levels_exposed`. Without the orderbook file the book is message-only and
//! its quotes can be wrong after the best level empties; the order and trade records are the
//! same either way.
//!
//! # Records per event
//! | type | records |
//! |---|---|
//! | 1 new limit order | `OrderAdd`, `Level`, `Quote` if the best changed |
//! | 2 partial cancel | `OrderCancel` (remaining from the book), `Level`, `Quote`? |
//! | 3 delete | `OrderCancel` (remaining 0), `Level`, `Quote`? |
//! | 4 visible execution | `OrderExecute`, `Trade` (aggressor opposite the order), `Level`, `Quote`? |
//! | 5 hidden execution | `Trade` only (aggressor opposite the hidden order) |
//! | 6 cross trade | `Trade`, side none |
//! | 7 halt indicator | `Status`: price -1 halted, 0 quoting, 1 trading |
//!
//! Level records carry order count 0 (LOBSTER gives none).
//!
//! # Time
//! Times are seconds after midnight, US/Eastern, of the file's date, with up to nine
//! decimals; `ts_event` is exact ns since the Unix epoch ([`eastern_to_utc_ns`]), EST or EDT
//! by the US rules in force that year (since 2007: second Sunday of March to first Sunday of
//! November; 1987-2006: first Sunday of April to last Sunday of October; before that, last
//! Sunday of April to last Sunday of October; the switch at 02:00 local, and the repeated
//! hour of the November switch read as EDT).

use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};

use tickmesh_codec::{
    Body, InstrumentId, Level, Meta, OrderAdd, OrderCancel, OrderExecute, Px, Qty, Record, Seq, Side, SourceId, Status,
    Symbol, Trade, TradingState, SCALE,
};

use crate::book::{BookError, LevelBook, OrderBook, QuoteTracker};
use crate::decoder::Decoder;
use crate::error::{Error, Result};

const FORMAT: &str = "lobster";
/// LOBSTER's dummy prices for levels that do not exist.
const DUMMY_ASK: i64 = 9_999_999_999;
const DUMMY_BID: i64 = -9_999_999_999;
/// Longest line accepted; a longer one is not LOBSTER CSV.
const MAX_LINE: usize = 64 * 1024;

/// A calendar date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date {
    /// Year, e.g. 2012.
    pub year: i32,
    /// Month, 1 to 12.
    pub month: u32,
    /// Day of the month, 1 to 31.
    pub day: u32,
}

impl Date {
    /// Parses `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Result<Date> {
        let bad = || Error::Config(format!("date {s:?} is not YYYY-MM-DD; give the capture date, e.g. 2012-06-21"));
        let mut it = s.split('-');
        let (Some(y), Some(m), Some(d), None) = (it.next(), it.next(), it.next(), it.next()) else { return Err(bad()) };
        if y.len() != 4 || m.len() != 2 || d.len() != 2 {
            return Err(bad());
        }
        let date = Date {
            year: y.parse().map_err(|_| bad())?,
            month: m.parse().map_err(|_| bad())?,
            day: d.parse().map_err(|_| bad())?,
        };
        if !(1..=12).contains(&date.month) || date.day == 0 || date.day > days_in_month(date.year, date.month) {
            return Err(bad());
        }
        Ok(date)
    }

    /// Days since 1970-01-01.
    pub fn days_since_epoch(self) -> i64 {
        days_from_civil(self.year, self.month, self.day)
    }
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Day of the week, 0 = Sunday.
fn weekday(days: i64) -> i64 {
    (days + 4).rem_euclid(7)
}

/// Day of the month of the `n`th (1-based) Sunday, or the last Sunday for `n == 0`.
fn sunday(y: i32, m: u32, n: u32) -> u32 {
    if n == 0 {
        let last = days_in_month(y, m);
        last - weekday(days_from_civil(y, m, last)) as u32
    } else {
        let w = weekday(days_from_civil(y, m, 1)) as u32;
        1 + (7 - w) % 7 + 7 * (n - 1)
    }
}

/// US Eastern offset from UTC in hours (5 for EST, 4 for EDT) at `ns_after_midnight` local
/// time of `date`.
pub fn eastern_offset_hours(date: Date, ns_after_midnight: u64) -> u64 {
    let (y, m, d) = (date.year, date.month, date.day);
    let (start, end) = if y >= 2007 {
        ((3, sunday(y, 3, 2)), (11, sunday(y, 11, 1)))
    } else if y >= 1987 {
        ((4, sunday(y, 4, 1)), (10, sunday(y, 10, 0)))
    } else {
        ((4, sunday(y, 4, 0)), (10, sunday(y, 10, 0)))
    };
    let two_am = 2 * 3_600 * 1_000_000_000;
    let after_start = (m, d) > start || ((m, d) == start && ns_after_midnight >= two_am);
    let before_end = (m, d) < end || ((m, d) == end && ns_after_midnight < two_am);
    if after_start && before_end {
        4
    } else {
        5
    }
}

/// Converts a US/Eastern local time (ns after midnight of `date`) to ns since the epoch.
pub fn eastern_to_utc_ns(date: Date, ns_after_midnight: u64) -> u64 {
    let midnight_utc = date.days_since_epoch() * 86_400 * 1_000_000_000;
    let offset = eastern_offset_hours(date, ns_after_midnight) * 3_600 * 1_000_000_000;
    (midnight_utc as u64).wrapping_add(ns_after_midnight).wrapping_add(offset)
}

/// What a LOBSTER file name says: `TICKER_YYYY-MM-DD_START_END_message_LEVEL.csv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName {
    /// The ticker.
    pub symbol: String,
    /// The trading day.
    pub date: Date,
    /// Levels of the orderbook file.
    pub levels: usize,
}

impl FileName {
    /// Parses a message or orderbook file name (directories are ignored).
    pub fn parse(path: &Path) -> Result<FileName> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let bad = || {
            Error::Config(format!(
                "{name:?} is not a LOBSTER file name (TICKER_YYYY-MM-DD_START_END_message_LEVEL.csv); rename it or give symbol, date and levels to LobsterDecoder::new"
            ))
        };
        let stem = name.strip_suffix(".csv").ok_or_else(bad)?;
        let parts: Vec<&str> = stem.split('_').collect();
        if parts.len() < 6 || !matches!(parts[parts.len() - 2], "message" | "orderbook") {
            return Err(bad());
        }
        let n = parts.len();
        let levels: usize = parts[n - 1].parse().map_err(|_| bad())?;
        let date = Date::parse(parts[n - 5]).map_err(|_| bad())?;
        Ok(FileName { symbol: parts[..n - 5].join("_"), date, levels })
    }
}

/// The orderbook file that pairs with a message file (`_message_` becomes `_orderbook_`).
pub fn orderbook_path_for(message: &Path) -> Option<PathBuf> {
    let name = message.file_name()?.to_str()?;
    let idx = name.rfind("_message_")?;
    let paired = format!("{}_orderbook_{}", &name[..idx], &name[idx + "_message_".len()..]);
    Some(message.with_file_name(paired))
}

/// One parsed message line.
#[derive(Debug, Clone, Copy)]
struct Msg {
    line: u64,
    ts: u64,
    kind: u8,
    order_id: u64,
    size: Qty,
    raw_price: i64,
    side: Side,
}

/// A line splitter that keeps a partial last line between chunks.
#[derive(Debug, Default)]
struct Lines {
    partial: Vec<u8>,
    line: u64,
}

impl Lines {
    /// Calls `f(line_number, text)` for every complete line of `input`.
    fn feed(&mut self, input: &[u8], mut f: impl FnMut(u64, &str) -> Result<()>, what: &'static str) -> Result<()> {
        let mut rest = input;
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            let (head, tail) = rest.split_at(nl);
            rest = &tail[1..];
            self.line += 1;
            if self.partial.is_empty() {
                f(self.line, line_text(head, self.line, what)?)?;
            } else {
                let mut l = std::mem::take(&mut self.partial);
                l.extend_from_slice(head);
                let r = f(self.line, line_text(&l, self.line, what)?);
                l.clear();
                self.partial = l;
                r?;
            }
        }
        if self.partial.len() + rest.len() > MAX_LINE {
            return Err(Error::Parse {
                format: FORMAT,
                offset: self.line + 1,
                what: format!("{what} line {} is over {MAX_LINE} bytes: this is not a LOBSTER CSV file", self.line + 1),
            });
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    /// The last line when the input did not end with a newline.
    fn finish(&mut self, f: impl FnOnce(u64, &str) -> Result<()>, what: &'static str) -> Result<()> {
        if self.partial.is_empty() {
            return Ok(());
        }
        let l = std::mem::take(&mut self.partial);
        self.line += 1;
        f(self.line, line_text(&l, self.line, what)?)
    }
}

fn line_text<'a>(b: &'a [u8], line: u64, what: &'static str) -> Result<&'a str> {
    let b = b.strip_suffix(b"\r").unwrap_or(b);
    std::str::from_utf8(b).map_err(|_| Error::Parse {
        format: FORMAT,
        offset: line,
        what: format!("{what} line {line} is not text: this is not a LOBSTER CSV file"),
    })
}

fn bad_line(what: &str, line: u64, text: &str, why: &str) -> Error {
    Error::Parse {
        format: FORMAT,
        offset: line,
        what: format!(
            "{what} line {line} ({:?}): {why}; LOBSTER message lines are time,type,order_id,size,price,direction",
            text.chars().take(80).collect::<String>()
        ),
    }
}

/// Seconds after midnight with up to nine decimals, exactly, as ns.
fn parse_time(s: &str) -> Option<u64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || frac.len() > 9
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: u64 = int.parse().ok()?;
    if secs > 48 * 3_600 {
        return None;
    }
    let mut ns: u64 = if frac.is_empty() { 0 } else { frac.parse().ok()? };
    for _ in frac.len()..9 {
        ns *= 10;
    }
    Some(secs * 1_000_000_000 + ns)
}

/// Counters behind [`Decoder::message_counts`].
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    by_type: [u64; 8],
    unknown_order: u64,
    duplicate_order: u64,
    exposed: u64,
    contradictions: u64,
}

/// A sans-I/O LOBSTER decoder (see the module docs).
#[derive(Debug)]
pub struct LobsterDecoder {
    src: SourceId,
    sym: Symbol,
    instrument: InstrumentId,
    date: Date,
    /// Levels per orderbook row; 0 when no orderbook file is fed.
    levels: usize,
    msg_lines: Lines,
    book_lines: Lines,
    /// Parsed messages waiting for their orderbook row.
    msgs: VecDeque<Msg>,
    /// Parsed orderbook rows (bid levels then ask levels, best first) waiting for their message.
    rows: VecDeque<Vec<(Side, Px, Qty)>>,
    /// The previous row, to tell levels newly exposed from contradictions.
    prev_row: Vec<(Side, Px, Qty)>,
    orders: OrderBook,
    book: LevelBook,
    tracker: QuoteTracker,
    /// Levels touched by the current event and their state before it.
    touched: Vec<(Side, Px, Qty)>,
    counts: Counts,
    header_checked: bool,
}

impl LobsterDecoder {
    /// A decoder for `symbol`'s messages of `date` (`YYYY-MM-DD`, the US/Eastern trading
    /// day); `levels` is the depth of the orderbook file that will be fed alongside
    /// (0 for messages only). Source id `LOBSTER`, instrument id 1.
    pub fn new(symbol: &str, date: &str, levels: usize) -> Result<Self> {
        let sym = Symbol::new(symbol).map_err(|e| Error::Config(format!("LOBSTER symbol: {e}")))?;
        let date = Date::parse(date)?;
        if levels > 1_000 {
            return Err(Error::Config(format!(
                "LOBSTER orderbook depth {levels} is too deep; LOBSTER files have at most a few hundred levels"
            )));
        }
        Ok(LobsterDecoder {
            src: SourceId::new("LOBSTER").map_err(Error::Codec)?,
            sym,
            instrument: InstrumentId(1),
            date,
            levels,
            msg_lines: Lines::default(),
            book_lines: Lines::default(),
            msgs: VecDeque::new(),
            rows: VecDeque::new(),
            prev_row: Vec::new(),
            orders: OrderBook::new(),
            book: LevelBook::new(),
            tracker: QuoteTracker::new(),
            touched: Vec::with_capacity(16),
            counts: Counts::default(),
            header_checked: false,
        })
    }

    /// A decoder whose symbol, date and depth come from a LOBSTER file name
    /// (`AMZN_2012-06-21_34200000_57600000_message_1.csv`). With `with_orderbook` false the
    /// depth is 0 (messages only).
    pub fn from_file_name(path: &Path, with_orderbook: bool) -> Result<Self> {
        let f = FileName::parse(path)?;
        let d = &f.date;
        Self::new(
            &f.symbol,
            &format!("{:04}-{:02}-{:02}", d.year, d.month, d.day),
            if with_orderbook { f.levels } else { 0 },
        )
    }

    /// Uses `src` as the source id.
    pub fn with_source(mut self, src: SourceId) -> Self {
        self.src = src;
        self
    }

    /// Uses `id` as the instrument id of every record.
    pub fn with_instrument(mut self, id: InstrumentId) -> Self {
        self.instrument = id;
        self
    }

    /// The current price levels.
    pub fn book(&self) -> &LevelBook {
        &self.book
    }

    /// Messages parsed but still waiting for their orderbook row.
    pub fn pending_messages(&self) -> usize {
        self.msgs.len()
    }

    /// Feeds bytes of the orderbook file (only when constructed with `levels > 0`).
    pub fn feed_orderbook(&mut self, input: &[u8], out: &mut Vec<Record>) -> Result<()> {
        if self.levels == 0 {
            return Err(Error::Config(
                "this LOBSTER decoder was made for messages only (levels 0); give the orderbook depth to feed the orderbook file".into(),
            ));
        }
        let levels = self.levels;
        let rows = &mut self.rows;
        self.book_lines.feed(input, |line, text| push_row(rows, levels, line, text), "orderbook")?;
        self.pump(out)
    }

    fn pump(&mut self, out: &mut Vec<Record>) -> Result<()> {
        while let Some(m) = self.msgs.front().copied() {
            let row = if self.levels > 0 {
                match self.rows.pop_front() {
                    Some(r) => Some(r),
                    None => return Ok(()),
                }
            } else {
                None
            };
            self.msgs.pop_front();
            self.event(m, row, out)?;
        }
        Ok(())
    }

    fn parse_msg(&mut self, line: u64, text: &str) -> Result<Option<Msg>> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let f: Vec<&str> = text.split(',').map(str::trim).collect();
        if !self.header_checked {
            self.header_checked = true;
            // Some re-saved copies carry a header row; the original files do not.
            if f.first().is_some_and(|t| t.chars().any(|c| c.is_ascii_alphabetic())) {
                return Ok(None);
            }
        }
        if f.len() != 6 {
            return Err(bad_line("message", line, text, &format!("{} fields, expected 6", f.len())));
        }
        let ns = parse_time(f[0]).ok_or_else(|| {
            bad_line("message", line, text, "time is not seconds after midnight with up to 9 decimals")
        })?;
        let kind: u8 = f[1].parse().ok().filter(|k| (1..=7).contains(k)).ok_or_else(|| {
            bad_line(
                "message",
                line,
                text,
                "type is not 1 to 7 (1 add, 2 cancel, 3 delete, 4/5 execution, 6 cross, 7 halt)",
            )
        })?;
        let order_id: u64 =
            f[2].parse().map_err(|_| bad_line("message", line, text, "order id is not a whole number"))?;
        let size: i64 = f[3].parse().map_err(|_| bad_line("message", line, text, "size is not a whole number"))?;
        let size = size
            .checked_mul(SCALE)
            .filter(|_| size >= 0)
            .map(Qty)
            .ok_or_else(|| bad_line("message", line, text, "size is negative or too large"))?;
        let raw_price: i64 =
            f[4].parse().map_err(|_| bad_line("message", line, text, "price is not a whole number"))?;
        if raw_price.checked_mul(100_000).is_none() {
            return Err(bad_line("message", line, text, "price is out of range"));
        }
        let side = match f[5] {
            "1" => Side::Buy,
            "-1" => Side::Sell,
            _ => return Err(bad_line("message", line, text, "direction is not 1 (buy) or -1 (sell)")),
        };
        let ts = eastern_to_utc_ns(self.date, ns);
        Ok(Some(Msg { line, ts, kind, order_id, size, raw_price, side }))
    }

    fn push(&self, out: &mut Vec<Record>, ts: u64, body: Body) {
        let meta =
            Meta { src: self.src, seq: Seq(0), instrument: self.instrument, sym: self.sym, ts_event: ts, ts_ingest: 0 };
        out.push(Record::new(meta, body));
    }

    /// Changes the level at `(side, px)` by `delta`, remembering its state before the event.
    fn adjust(&mut self, side: Side, px: Px, delta: i64) {
        let before = self.book.get(side, px).map_or(Qty::ZERO, |l| l.0);
        self.touch(side, px, before);
        let after = (before.raw().saturating_add(delta)).max(0);
        self.book.set(side, px, Qty(after), 0);
    }

    fn touch(&mut self, side: Side, px: Px, before: Qty) {
        if !self.touched.iter().any(|t| t.0 == side && t.1 == px) {
            self.touched.push((side, px, before));
        }
    }

    fn book_error(&mut self, e: BookError) {
        match e {
            BookError::DuplicateOrder(_) => self.counts.duplicate_order += 1,
            _ => self.counts.unknown_order += 1,
        }
    }

    fn event(&mut self, m: Msg, row: Option<Vec<(Side, Px, Qty)>>, out: &mut Vec<Record>) -> Result<()> {
        self.counts.by_type[usize::from(m.kind)] += 1;
        self.touched.clear();
        let px = Px(m.raw_price * 100_000);
        let aggressor = if m.side == Side::Buy { Side::Sell } else { Side::Buy };
        match m.kind {
            1 => {
                if let Err(e) = self.orders.add(m.order_id, m.side, px, m.size) {
                    self.book_error(e);
                }
                self.push(out, m.ts, Body::OrderAdd(OrderAdd { order_id: m.order_id, side: m.side, px, qty: m.size }));
                self.adjust(m.side, px, m.size.raw());
            }
            2 | 3 => {
                let remaining = if m.kind == 3 {
                    if let Err(e) = self.orders.delete(m.order_id) {
                        self.book_error(e);
                    }
                    Qty::ZERO
                } else {
                    match self.orders.reduce(m.order_id, m.size) {
                        Ok((before, _)) => Qty((before.qty.raw() - m.size.raw()).max(0)),
                        Err(e) => {
                            self.book_error(e);
                            Qty::ZERO
                        }
                    }
                };
                let body = OrderCancel { order_id: m.order_id, side: m.side, px, cancelled: m.size, remaining };
                self.push(out, m.ts, Body::OrderCancel(body));
                self.adjust(m.side, px, -m.size.raw());
            }
            4 => {
                let remaining = match self.orders.reduce(m.order_id, m.size) {
                    Ok((before, _)) => Qty((before.qty.raw() - m.size.raw()).max(0)),
                    Err(e) => {
                        self.book_error(e);
                        Qty::ZERO
                    }
                };
                let exec = OrderExecute { order_id: m.order_id, side: m.side, px, qty: m.size, remaining, match_id: 0 };
                self.push(out, m.ts, Body::OrderExecute(exec));
                self.push(out, m.ts, Body::Trade(Trade { px, qty: m.size, side: aggressor, match_id: 0 }));
                self.adjust(m.side, px, -m.size.raw());
            }
            5 => self.push(out, m.ts, Body::Trade(Trade { px, qty: m.size, side: aggressor, match_id: 0 })),
            6 => self.push(out, m.ts, Body::Trade(Trade { px, qty: m.size, side: Side::None, match_id: 0 })),
            _ => {
                let state = match m.raw_price {
                    -1 => TradingState::Halted,
                    0 => TradingState::Quoting,
                    1 => TradingState::Trading,
                    p => {
                        return Err(Error::Parse {
                            format: FORMAT,
                            offset: m.line,
                            what: format!("message line {}: halt indicator (type 7) with price {p}; LOBSTER uses -1 halt, 0 quoting, 1 resume", m.line),
                        })
                    }
                };
                self.push(out, m.ts, Body::Status(Status { state, reason: [0; 8] }));
            }
        }
        if let Some(row) = row {
            self.reconcile(row);
        }
        for i in 0..self.touched.len() {
            let (side, lpx, before) = self.touched[i];
            let now = self.book.get(side, lpx).map_or(Qty::ZERO, |l| l.0);
            if now != before {
                self.push(out, m.ts, Body::Level(Level { side, px: lpx, qty: now, count: 0 }));
            }
        }
        if let Some(q) = self.tracker.update(&self.book) {
            self.push(out, m.ts, Body::Quote(q));
        }
        Ok(())
    }

    /// Makes the visible depth equal to the orderbook row (see the module docs).
    fn reconcile(&mut self, row: Vec<(Side, Px, Qty)>) {
        for side in [Side::Buy, Side::Sell] {
            let shown: Vec<(Px, Qty)> = row.iter().filter(|l| l.0 == side).map(|l| (l.1, l.2)).collect();
            // With fewer real levels than the depth, the row shows the whole side.
            let whole_side = shown.len() < self.levels;
            let worst = shown.last().map(|l| l.0);
            let in_range = |p: Px| match (whole_side, worst) {
                (true, _) => true,
                (false, Some(w)) => {
                    if side == Side::Buy {
                        p >= w
                    } else {
                        p <= w
                    }
                }
                (false, None) => false,
            };
            let stale: Vec<(Px, Qty)> = self
                .book
                .levels(side)
                .filter(|l| in_range(l.0) && !shown.iter().any(|s| s.0 == l.0))
                .map(|l| (l.0, l.1))
                .collect();
            for (p, q) in stale {
                self.classify(side, p);
                self.touch(side, p, q);
                self.book.set(side, p, Qty::ZERO, 0);
            }
            for (p, q) in shown {
                let have = self.book.get(side, p).map_or(Qty::ZERO, |l| l.0);
                if have != q {
                    self.classify(side, p);
                    self.touch(side, p, have);
                    self.book.set(side, p, q, 0);
                }
            }
        }
        self.prev_row = row;
    }

    fn classify(&mut self, side: Side, px: Px) {
        if self.prev_row.iter().any(|l| l.0 == side && l.1 == px) {
            self.counts.contradictions += 1;
        } else {
            self.counts.exposed += 1;
        }
    }
}

/// Parses one orderbook row (`ask_px,ask_sz,bid_px,bid_sz` per level) into real levels.
fn push_row(rows: &mut VecDeque<Vec<(Side, Px, Qty)>>, levels: usize, line: u64, text: &str) -> Result<()> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(());
    }
    let bad = |why: String| Error::Parse {
        format: FORMAT,
        offset: line,
        what: format!(
            "orderbook line {line} ({:?}): {why}; LOBSTER orderbook lines are ask_px,ask_sz,bid_px,bid_sz per level",
            text.chars().take(80).collect::<String>()
        ),
    };
    let f: Vec<&str> = text.split(',').map(str::trim).collect();
    if f.first().is_some_and(|t| t.chars().any(|c| c.is_ascii_alphabetic())) && line == 1 {
        return Ok(()); // a header row of a re-saved copy
    }
    if f.len() != 4 * levels {
        return Err(bad(format!("{} fields, expected {} for {levels} levels", f.len(), 4 * levels)));
    }
    let mut v = Vec::with_capacity(2 * levels);
    let mut bids = Vec::with_capacity(levels);
    for l in 0..levels {
        let num = |i: usize| {
            f[4 * l + i].parse::<i64>().map_err(|_| bad(format!("field {} is not a whole number", 4 * l + i + 1)))
        };
        let (ap, asz, bp, bsz) = (num(0)?, num(1)?, num(2)?, num(3)?);
        for (side, p, s, dummy) in [(Side::Sell, ap, asz, DUMMY_ASK), (Side::Buy, bp, bsz, DUMMY_BID)] {
            if p == dummy || s <= 0 {
                continue;
            }
            let px = p.checked_mul(100_000).map(Px).ok_or_else(|| bad(format!("price {p} is out of range")))?;
            let q = s.checked_mul(SCALE).map(Qty).ok_or_else(|| bad(format!("size {s} is out of range")))?;
            if side == Side::Buy {
                bids.push((side, px, q));
            } else {
                v.push((side, px, q));
            }
        }
    }
    v.extend(bids);
    rows.push_back(v);
    Ok(())
}

impl Decoder for LobsterDecoder {
    fn feed(&mut self, input: &[u8], out: &mut Vec<Record>) -> Result<()> {
        let mut parsed = Vec::new();
        let mut lines = std::mem::take(&mut self.msg_lines);
        let r = lines.feed(
            input,
            |line, text| {
                if let Some(m) = self.parse_msg(line, text)? {
                    parsed.push(m);
                }
                Ok(())
            },
            "message",
        );
        self.msg_lines = lines;
        self.msgs.extend(parsed);
        r?;
        self.pump(out)
    }

    fn finish(&mut self, out: &mut Vec<Record>) -> Result<()> {
        let mut lines = std::mem::take(&mut self.msg_lines);
        let mut parsed = None;
        let r = lines.finish(
            |line, text| {
                parsed = self.parse_msg(line, text)?;
                Ok(())
            },
            "message",
        );
        self.msg_lines = lines;
        self.msgs.extend(parsed);
        r?;
        if self.levels > 0 {
            let levels = self.levels;
            let rows = &mut self.rows;
            self.book_lines.finish(|line, text| push_row(rows, levels, line, text), "orderbook")?;
        }
        self.pump(out)?;
        if !self.msgs.is_empty() || !self.rows.is_empty() {
            return Err(Error::Parse {
                format: FORMAT,
                offset: self.msg_lines.line,
                what: format!(
                    "the message file has {} more events than the orderbook file has rows ({} rows left over); feed the orderbook file of the same LOBSTER request",
                    self.msgs.len(),
                    self.rows.len()
                ),
            });
        }
        Ok(())
    }

    fn message_counts(&self) -> Vec<(String, u64)> {
        let names = ["", "add", "cancel", "delete", "execute_visible", "execute_hidden", "cross", "halt"];
        let c = &self.counts;
        let mut v: Vec<(String, u64)> =
            (1..8).filter(|k| c.by_type[*k] > 0).map(|k| (names[k].to_owned(), c.by_type[k])).collect();
        for (n, x) in [
            ("unknown_order", c.unknown_order),
            ("duplicate_order", c.duplicate_order),
            ("book_levels_exposed", c.exposed),
            ("book_contradictions", c.contradictions),
        ] {
            if x > 0 {
                v.push((n.to_owned(), x));
            }
        }
        v
    }
}

/// Decodes a LOBSTER message file, with its orderbook file when `orderbook` is given (see
/// [`orderbook_path_for`]), reading both in chunks so that memory stays bounded. Symbol,
/// date and depth come from the message file's name.
pub fn decode_files(message: &Path, orderbook: Option<&Path>, out: &mut Vec<Record>) -> Result<LobsterDecoder> {
    let mut dec = LobsterDecoder::from_file_name(message, orderbook.is_some())?;
    let open = |p: &Path| {
        std::fs::File::open(p)
            .map_err(|e| Error::Io { what: format!("opening LOBSTER file {}", p.display()), source: e })
    };
    let read = |f: &mut std::fs::File, buf: &mut [u8], p: &Path| {
        f.read(buf).map_err(|e| Error::Io { what: format!("reading LOBSTER file {}", p.display()), source: e })
    };
    let mut msgs = open(message)?;
    let mut book = orderbook.map(|p| open(p).map(|f| (f, p))).transpose()?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut book_eof = book.is_none();
    loop {
        let n = read(&mut msgs, &mut buf, message)?;
        if n == 0 {
            break;
        }
        dec.feed(&buf[..n], out)?;
        while dec.pending_messages() > 0 && !book_eof {
            if let Some((f, p)) = book.as_mut() {
                let n = read(f, &mut buf, p)?;
                if n == 0 {
                    book_eof = true;
                } else {
                    dec.feed_orderbook(&buf[..n], out)?;
                }
            }
        }
    }
    while !book_eof {
        if let Some((f, p)) = book.as_mut() {
            let n = read(f, &mut buf, p)?;
            if n == 0 {
                book_eof = true;
            } else {
                dec.feed_orderbook(&buf[..n], out)?;
            }
        }
    }
    dec.finish(out)?;
    Ok(dec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Date {
        Date::parse(s).unwrap()
    }

    #[test]
    fn eastern_time_follows_the_us_rules() {
        const H: u64 = 3_600_000_000_000;
        // 2012-06-21 is EDT: local midnight is 04:00 UTC (1340251200).
        assert_eq!(eastern_to_utc_ns(d("2012-06-21"), 0), 1_340_251_200 * 1_000_000_000);
        // 2012-01-03 is EST: local midnight is 05:00 UTC (1325566800).
        assert_eq!(eastern_to_utc_ns(d("2012-01-03"), 0), 1_325_566_800 * 1_000_000_000);
        // 2012 switched on March 11 and November 4, at 02:00 local.
        assert_eq!(eastern_offset_hours(d("2012-03-10"), 12 * H), 5);
        assert_eq!(eastern_offset_hours(d("2012-03-11"), H), 5);
        assert_eq!(eastern_offset_hours(d("2012-03-11"), 3 * H), 4);
        assert_eq!(eastern_offset_hours(d("2012-11-04"), H + H / 2), 4, "the repeated hour reads as EDT");
        assert_eq!(eastern_offset_hours(d("2012-11-04"), 2 * H), 5);
        assert_eq!(eastern_offset_hours(d("2012-11-03"), 23 * H), 4);
        // 2006 rules: first Sunday of April (Apr 2) to last Sunday of October (Oct 29).
        assert_eq!(eastern_offset_hours(d("2006-04-01"), 12 * H), 5);
        assert_eq!(eastern_offset_hours(d("2006-04-02"), 12 * H), 4);
        assert_eq!(eastern_offset_hours(d("2006-10-29"), 12 * H), 5);
        assert_eq!(eastern_offset_hours(d("2006-10-28"), 12 * H), 4);
        assert_eq!(d("2000-02-29").days_since_epoch(), 11_016);
        assert!(Date::parse("2001-02-29").is_err());
    }

    #[test]
    fn times_are_exact() {
        assert_eq!(parse_time("34200.017459617"), Some(34_200_017_459_617));
        assert_eq!(parse_time("34200.5"), Some(34_200_500_000_000));
        assert_eq!(parse_time("34200"), Some(34_200_000_000_000));
        assert_eq!(parse_time("34200.0174596171"), None);
        assert_eq!(parse_time("-1"), None);
        assert_eq!(parse_time("1e3"), None);
    }

    #[test]
    fn file_names_give_symbol_date_and_depth() {
        let f = FileName::parse(Path::new("/x/AMZN_2012-06-21_34200000_57600000_message_10.csv")).unwrap();
        assert_eq!((f.symbol.as_str(), f.date, f.levels), ("AMZN", d("2012-06-21"), 10));
        assert!(FileName::parse(Path::new("amzn.csv")).is_err());
        assert_eq!(
            orderbook_path_for(Path::new("/x/AMZN_2012-06-21_34200000_57600000_message_1.csv")).unwrap(),
            PathBuf::from("/x/AMZN_2012-06-21_34200000_57600000_orderbook_1.csv")
        );
    }

    fn run(msgs: &str, book: Option<&str>) -> Result<(Vec<Record>, LobsterDecoder)> {
        let mut dec = LobsterDecoder::new("TEST", "2012-06-21", if book.is_some() { 1 } else { 0 })?;
        let mut out = Vec::new();
        if let Some(b) = book {
            dec.feed_orderbook(b.as_bytes(), &mut out)?;
        }
        dec.feed(msgs.as_bytes(), &mut out)?;
        dec.finish(&mut out)?;
        Ok((out, dec))
    }

    #[test]
    fn events_give_records_in_protocol_order() {
        let msgs = "34200.1,1,7,100,1000000,1\n34200.2,1,8,50,1001000,-1\n34200.3,4,7,40,1000000,1\n34200.4,5,0,10,1000500,-1\n34200.5,3,7,60,1000000,1\n36000,7,0,0,-1,-1\n";
        let (out, dec) = run(msgs, None).unwrap();
        let kinds: Vec<&str> = out.iter().map(|r| tickmesh_codec::json::type_name(r.body.kind())).collect();
        assert_eq!(
            kinds,
            [
                "order_add",
                "book",
                "quote", // add bid
                "order_add",
                "book",
                "quote", // add ask
                "order_execute",
                "trade",
                "book",
                "quote", // visible execution
                "trade", // hidden
                "order_cancel",
                "book",
                "quote", // delete
                "status"
            ]
        );
        let Body::Trade(t) = out[7].body else { panic!() };
        assert_eq!(
            (t.side, t.px, t.qty),
            (Side::Sell, Px::parse("100").unwrap(), Qty::from_units(40)),
            "a buy order executed is a sell trade"
        );
        let Body::OrderExecute(e) = out[6].body else { panic!() };
        assert_eq!(e.remaining, Qty::from_units(60));
        let Body::Status(s) = out[14].body else { panic!() };
        assert_eq!(s.state, TradingState::Halted);
        assert_eq!(out[0].header.ts_event, (1_340_251_200 + 34_200) * 1_000_000_000 + 100_000_000);
        assert!(dec.book().best(Side::Buy).is_none());
    }

    #[test]
    fn orderbook_rows_reconcile_unknown_orders() {
        // An order resting before the window is executed: the row shows what is left.
        let msgs = "34200.1,4,99,30,1000000,1\n34200.2,1,7,10,1000100,1\n";
        let book = "1001000,50,1000000,70\n1001000,50,1000100,10\n";
        let (out, dec) = run(msgs, Some(book)).unwrap();
        let quotes: Vec<_> =
            out.iter().filter_map(|r| if let Body::Quote(q) = r.body { Some(q) } else { None }).collect();
        assert_eq!(quotes[0].bid_qty, Qty::from_units(70));
        assert_eq!(quotes[1].bid_px, Px::parse("100.01").unwrap());
        let counts: std::collections::BTreeMap<_, _> = dec.message_counts().into_iter().collect();
        assert_eq!(counts.get("unknown_order"), Some(&1));
        assert_eq!(counts.get("book_contradictions"), None);
        // The level at 100.00 is still known (level 2), not visible, and kept.
        assert_eq!(dec.book().get(Side::Buy, Px::parse("100").unwrap()), Some((Qty::from_units(70), 0)));
    }

    #[test]
    fn bad_input_says_what_is_wrong() {
        let e = run("34200.1,9,1,1,1,1\n", None).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("type"), "{e}");
        let e = run("34200.1,1,1,1,1\n", None).unwrap_err().to_string();
        assert!(e.contains("5 fields"), "{e}");
        let e = run("34200.1,1,1,1,1,0\n", None).unwrap_err().to_string();
        assert!(e.contains("direction"), "{e}");
        let e = run("34200.1,1,1,1,100,1\n34200.2,1,2,1,100,1\n", Some("200,1,100,1\n")).unwrap_err().to_string();
        assert!(e.contains("orderbook file"), "{e}");
        let e = run("34200.1,1,1,1,100,1\n", Some("200,1\n")).unwrap_err().to_string();
        assert!(e.contains("orderbook line 1"), "{e}");
        assert!(LobsterDecoder::new("AMZN", "21/06/2012", 1).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(msgs in proptest::collection::vec(any::<u8>(), 0..400), book in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut dec = LobsterDecoder::new("X", "2012-06-21", 1).unwrap();
            let mut out = Vec::new();
            let _ = dec.feed_orderbook(&book, &mut out);
            let _ = dec.feed(&msgs, &mut out);
            let _ = dec.finish(&mut out);
        }

        #[test]
        fn arbitrary_lines_never_panic(lines in proptest::collection::vec((any::<u32>(), 0u8..9, any::<u16>(), -5i64..5000, -3i64..3_000_000, -2i8..3), 0..60)) {
            let text: String = lines.iter().map(|(t, k, id, s, p, d)| format!("{}.{},{k},{id},{s},{p},{d}\n", t % 60_000, t % 1000)).collect();
            let mut dec = LobsterDecoder::new("X", "2012-06-21", 0).unwrap();
            let mut out = Vec::new();
            let _ = dec.feed(text.as_bytes(), &mut out);
            let _ = dec.finish(&mut out);
        }
    }
}
