//! ITCH messages to codec records, with one order book per stock locate.
//!
//! # What each message becomes
//!
//! One message gives its records consecutively, in this order (PROTOCOL.md "Sequencing"):
//! the order-level record, a `Trade` for executions, the `Level`(s) it changed with their
//! new state, then a `Quote` if the best bid or offer changed.
//!
//! | ITCH | records |
//! |---|---|
//! | `A`, `F` add | `OrderAdd`, `Level`, `Quote`? |
//! | `E` executed | `OrderExecute` (at the order's price), `Trade`, `Level`, `Quote`? |
//! | `C` executed with price | `OrderExecute` (at the execution price), `Trade` only if printable `Y`, `Level`, `Quote`? |
//! | `X` cancel | `OrderCancel` (shares cancelled, shares left), `Level`, `Quote`? |
//! | `D` delete | `OrderCancel` (everything left, 0 left), `Level`, `Quote`? |
//! | `U` replace | `OrderReplace`, `Level` at the old price (if it moved), `Level` at the new price, `Quote`? |
//! | `P` trade, non-displayed | `Trade` with side `None` |
//! | `Q` cross | `Trade` with side `None` (none when the cross printed 0 shares) |
//! | `H` trading action | `Status`: `T` trading, `H` halted, `P` paused, `Q` quoting (others: unknown); `reason` = the 4-character code |
//! | `h` operational halt, market `Q` | `Status` halted (`OPHALT`), or on resumption the state the last `H` gave (`OPRESUME`) |
//! | `R` stock directory | `Instrument` (equity, USD, lot = round lot) |
//! | `I` imbalance | `Imbalance` |
//! | `S`, `Y`, `L`, `V`, `W`, `K`, `J`, `N`, `O`, `B`, `h` for BX/PSX | no record |
//!
//! Trade sides are the aggressor's: an execution of a resting buy order is a sale. `P`
//! carries the side of the *non-displayed* order, but since 2014-07-14 NASDAQ sets it to `B`
//! for every trade, so it says nothing about the aggressor and the trade's side is `None`.
//! A non-printable `C` (its volume is reported by a cross's `Q`) changes the book but prints
//! no trade, so volume is not counted twice.
//!
//! System events (`S`) are market-wide. They give no record: the per-security state they
//! imply arrives as `H` messages for every security (NASDAQ sends them at the start of the
//! day and at each change), so a `Status` for every known instrument on each `S` would only
//! repeat those, and a pseudo-instrument would put a symbol into the feed that is not the
//! venue's. The last event code is kept ([`Normalizer::last_system_event`]). The other
//! message types listed without records have no codec kind that fits them (short-sale
//! restrictions, market-maker positions, circuit-breaker levels, IPO and direct-listing
//! price discovery, retail interest, LULD collars, broken trades); every message is still
//! counted in [`Normalizer::message_counts`].
//!
//! # Ids and symbols
//!
//! The instrument id is the stock locate; the symbol is the stock field without its
//! padding, learnt from `R` and from every message that carries a stock field. Messages
//! without one (`E`, `C`, `X`, `D`, `U`) act on orders that an `A`/`F` put on the book, whose
//! stock is known.
//!
//! # Orders the book does not hold
//!
//! A feed joined mid-session (a live join, a short capture) references orders added before
//! it started. With `strict_book` off (the default) such messages are counted under
//! `unknown_order` and skipped; with it on (for files that start at the beginning of the
//! day) they are an error, since they mean the file or the book is wrong.

use tickmesh_codec::{
    Body, Imbalance, Instrument, InstrumentId, InstrumentKind, Level, Meta, OrderAdd, OrderCancel, OrderExecute,
    OrderReplace, Px, Qty, Record, Seq, Side, SourceId, Status, Symbol, Trade, TradingState,
};

use crate::book::{BookError, OrderBook, QuoteTracker};
use crate::error::{Error, Result};
use crate::itch::message::{self, px4, trim_alpha, Message, MESSAGE_TYPES};
use crate::itch::time::EasternDate;

const FORMAT: &str = "itch";

/// Settings of a [`Normalizer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizerConfig {
    /// Source id of the records. Default `XNAS.ITCH`.
    pub source: SourceId,
    /// Trading date: ITCH timestamps count from its midnight US/Eastern. Default none; it
    /// must then be set ([`Normalizer::set_date`]) before the first message that gives a
    /// record, or that message is an error.
    pub date: Option<EasternDate>,
    /// Treat a message about an order the book does not hold (or an add of one it holds)
    /// as an error rather than counting and skipping it. Default false (see the module
    /// docs): turn it on for files that start at the beginning of the day.
    pub strict_book: bool,
}

impl Default for NormalizerConfig {
    fn default() -> Self {
        NormalizerConfig { source: default_source(), date: None, strict_book: false }
    }
}

/// `XNAS.ITCH`, the default source id.
pub fn default_source() -> SourceId {
    // A constant that satisfies SourceId's rules (checked by the tests below).
    SourceId::new("XNAS.ITCH").unwrap_or_else(|_| unreachable!("XNAS.ITCH is a valid source id"))
}

/// One security's state.
#[derive(Debug)]
struct Security {
    stock: [u8; 8],
    sym: Symbol,
    book: OrderBook,
    quotes: QuoteTracker,
    /// The state the last `H` set (for resuming after an operational halt).
    state: TradingState,
}

/// Securities indexed by stock locate.
#[derive(Debug, Default)]
struct Securities(Vec<Option<Box<Security>>>);

impl Securities {
    fn get(&mut self, locate: u16) -> Option<&mut Security> {
        self.0.get_mut(usize::from(locate)).and_then(|s| s.as_deref_mut())
    }

    /// The security of `locate`, created or renamed from `stock` as needed.
    fn with_stock(&mut self, locate: u16, stock: [u8; 8], offset: u64) -> Result<&mut Security> {
        let i = usize::from(locate);
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || None);
        }
        let slot = &mut self.0[i];
        match slot {
            Some(s) if s.stock == stock => {}
            Some(s) => {
                s.sym = symbol(&stock, offset)?;
                s.stock = stock;
            }
            None => {
                *slot = Some(Box::new(Security {
                    stock,
                    sym: symbol(&stock, offset)?,
                    book: OrderBook::new(),
                    quotes: QuoteTracker::new(),
                    state: TradingState::Unknown,
                }));
            }
        }
        match slot {
            Some(s) => Ok(s),
            None => unreachable!("the slot was filled above"),
        }
    }
}

fn symbol(stock: &[u8; 8], offset: u64) -> Result<Symbol> {
    let t = trim_alpha(stock);
    std::str::from_utf8(t).ok().and_then(|s| Symbol::new(s).ok()).ok_or_else(|| Error::Parse {
        format: FORMAT,
        offset,
        what: format!(
            "stock field {:?} is not a symbol (blank or not printable ASCII); the message is corrupt",
            String::from_utf8_lossy(stock)
        ),
    })
}

fn side(b: u8, offset: u64) -> Result<Side> {
    match b {
        b'B' => Ok(Side::Buy),
        b'S' => Ok(Side::Sell),
        other => Err(Error::Parse {
            format: FORMAT,
            offset,
            what: format!("buy/sell indicator {:?} is neither 'B' nor 'S'; the message is corrupt", other as char),
        }),
    }
}

fn opposite(s: Side) -> Side {
    match s {
        Side::Buy => Side::Sell,
        Side::Sell => Side::Buy,
        Side::None => Side::None,
    }
}

fn units(n: u32) -> Qty {
    Qty::from_units(i64::from(n))
}

/// What to do about messages the book contradicts.
#[derive(Debug)]
struct Policy {
    strict: bool,
    unknown_orders: u64,
}

impl Policy {
    /// Errs in strict mode; otherwise counts and lets the caller skip the message.
    fn conflict(&mut self, msg: &Message<'_>, offset: u64, e: BookError) -> Result<()> {
        if self.strict {
            return Err(Error::Parse {
                format: FORMAT,
                offset,
                what: format!(
                    "{} message contradicts the book ({e}); with strict_book the input must start at the beginning \
                     of the trading day and hold every message of the security; turn strict_book off for captures \
                     that join mid-session",
                    msg.name()
                ),
            });
        }
        self.unknown_orders += 1;
        Ok(())
    }
}

/// Turns ITCH messages into codec records, keeping a book per stock locate. Sans-I/O: the
/// framing layers ([`crate::itch::Parser`], [`crate::moldudp64`]) hand it messages.
#[derive(Debug)]
pub struct Normalizer {
    src: SourceId,
    date: Option<EasternDate>,
    midnight: Option<u64>,
    securities: Securities,
    policy: Policy,
    counts: [u64; 256],
    last_system_event: Option<u8>,
}

impl Normalizer {
    /// A normalizer with empty books.
    pub fn new(config: NormalizerConfig) -> Self {
        Normalizer {
            src: config.source,
            date: config.date,
            midnight: config.date.map(|d| d.midnight_unix_ns()),
            securities: Securities::default(),
            policy: Policy { strict: config.strict_book, unknown_orders: 0 },
            counts: [0; 256],
            last_system_event: None,
        }
    }

    /// Sets the trading date (timestamps of later messages count from its midnight).
    pub fn set_date(&mut self, date: EasternDate) {
        self.date = Some(date);
        self.midnight = Some(date.midnight_unix_ns());
    }

    /// The trading date, if known.
    pub fn date(&self) -> Option<EasternDate> {
        self.date
    }

    /// The source id.
    pub fn source(&self) -> SourceId {
        self.src
    }

    /// The book of a stock locate, if the security has been seen.
    pub fn book(&self, locate: u16) -> Option<&OrderBook> {
        self.securities.0.get(usize::from(locate)).and_then(|s| s.as_deref()).map(|s| &s.book)
    }

    /// The symbol of a stock locate, if known.
    pub fn symbol(&self, locate: u16) -> Option<Symbol> {
        self.securities.0.get(usize::from(locate)).and_then(|s| s.as_deref()).map(|s| s.sym)
    }

    /// Every known security: (stock locate, symbol, book).
    pub fn securities(&self) -> impl Iterator<Item = (u16, Symbol, &OrderBook)> + '_ {
        self.securities.0.iter().enumerate().filter_map(|(i, s)| s.as_deref().map(|s| (i as u16, s.sym, &s.book)))
    }

    /// The code of the last system event (`S`), if any.
    pub fn last_system_event(&self) -> Option<u8> {
        self.last_system_event
    }

    /// Messages skipped because they contradicted the book (see the module docs).
    pub fn unknown_orders(&self) -> u64 {
        self.policy.unknown_orders
    }

    /// Messages seen of one type.
    pub fn count(&self, msg_type: u8) -> u64 {
        self.counts[usize::from(msg_type)]
    }

    /// Messages seen by type (`"A"`, `"D"`, ...; only types seen), then `unknown_order` if
    /// any message was skipped for contradicting the book.
    pub fn message_counts(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = MESSAGE_TYPES
            .iter()
            .filter(|(t, _, _)| self.counts[usize::from(*t)] > 0)
            .map(|(t, _, _)| ((*t as char).to_string(), self.counts[usize::from(*t)]))
            .collect();
        if self.policy.unknown_orders > 0 {
            v.push(("unknown_order".into(), self.policy.unknown_orders));
        }
        v
    }

    /// Empties every book (a new session); symbols and counts stay.
    pub fn clear_books(&mut self) {
        for s in self.securities.0.iter_mut().flatten() {
            s.book.clear();
            s.quotes.reset();
        }
    }

    #[inline]
    fn ts(&self, ts: u64, offset: u64) -> Result<u64> {
        match self.midnight {
            Some(m) => Ok(m.saturating_add(ts)),
            None => Err(Error::Config(format!(
                "ITCH message at {offset}: timestamps count from midnight US/Eastern of the trading day, and no date \
                 was given; pass the trading date (NormalizerConfig::date, `--date YYYY-MM-DD`)"
            ))),
        }
    }

    /// Applies one message: updates the books and appends its records to `out`. `offset`
    /// locates the message in its input, for error messages. On error nothing is appended.
    #[inline]
    pub fn apply(&mut self, msg: &Message<'_>, offset: u64, out: &mut Vec<Record>) -> Result<()> {
        self.counts[usize::from(msg.msg_type())] += 1;
        let locate = msg.stock_locate();
        let src = self.src;
        let meta = |sym: Symbol, ts_event: u64| mk_meta(src, locate, sym, ts_event);
        match msg {
            Message::AddOrder(m) => self.add(
                locate,
                offset,
                m.timestamp(),
                m.stock(),
                m.order_ref(),
                m.side(),
                m.shares(),
                m.price(),
                msg,
                out,
            ),
            Message::AddOrderMpid(m) => self.add(
                locate,
                offset,
                m.timestamp(),
                m.stock(),
                m.order_ref(),
                m.side(),
                m.shares(),
                m.price(),
                msg,
                out,
            ),
            Message::OrderExecuted(m) => self.execute(
                locate,
                offset,
                m.timestamp(),
                m.order_ref(),
                m.executed_shares(),
                m.match_number(),
                None,
                true,
                msg,
                out,
            ),
            Message::OrderExecutedWithPrice(m) => self.execute(
                locate,
                offset,
                m.timestamp(),
                m.order_ref(),
                m.executed_shares(),
                m.match_number(),
                Some(px4(m.execution_price())),
                m.printable() == b'Y',
                msg,
                out,
            ),
            Message::OrderCancel(m) => {
                self.cancel(locate, offset, m.timestamp(), m.order_ref(), Some(m.cancelled_shares()), msg, out)
            }
            Message::OrderDelete(m) => self.cancel(locate, offset, m.timestamp(), m.order_ref(), None, msg, out),
            Message::OrderReplace(m) => {
                let ts = self.ts(m.timestamp(), offset)?;
                let Some(s) = self.securities.get(locate) else {
                    return self.policy.conflict(msg, offset, BookError::UnknownOrder(m.original_order_ref()));
                };
                let (old_ref, new_ref, px, qty) =
                    (m.original_order_ref(), m.new_order_ref(), px4(m.price()), units(m.shares()));
                match s.book.replace(old_ref, new_ref, px, qty) {
                    Ok((old, old_level, new_level)) => {
                        let mt = meta(s.sym, ts);
                        let body = OrderReplace { order_id: old_ref, new_order_id: new_ref, side: old.side, px, qty };
                        out.push(Record::new(mt, Body::OrderReplace(body)));
                        if old.px != px {
                            out.push(Record::new(mt, Body::Level(old_level)));
                        }
                        out.push(Record::new(mt, Body::Level(new_level)));
                        if let Some(q) = s.quotes.update(s.book.levels()) {
                            out.push(Record::new(mt, Body::Quote(q)));
                        }
                        Ok(())
                    }
                    Err(e) => self.policy.conflict(msg, offset, e),
                }
            }
            Message::Trade(m) => {
                let ts = self.ts(m.timestamp(), offset)?;
                let s = self.securities.with_stock(locate, m.stock(), offset)?;
                let body =
                    Trade { px: px4(m.price()), qty: units(m.shares()), side: Side::None, match_id: m.match_number() };
                out.push(Record::new(meta(s.sym, ts), Body::Trade(body)));
                Ok(())
            }
            Message::CrossTrade(m) => {
                let ts = self.ts(m.timestamp(), offset)?;
                let qty = message::shares(m.shares()).ok_or_else(|| too_many_shares(offset, m.shares()))?;
                let s = self.securities.with_stock(locate, m.stock(), offset)?;
                if m.shares() > 0 {
                    let body = Trade { px: px4(m.cross_price()), qty, side: Side::None, match_id: m.match_number() };
                    out.push(Record::new(meta(s.sym, ts), Body::Trade(body)));
                }
                Ok(())
            }
            Message::StockTradingAction(m) => {
                let ts = self.ts(m.timestamp(), offset)?;
                let s = self.securities.with_stock(locate, m.stock(), offset)?;
                let state = match m.trading_state() {
                    b'T' => TradingState::Trading,
                    b'H' => TradingState::Halted,
                    b'P' => TradingState::Paused,
                    b'Q' => TradingState::Quoting,
                    _ => TradingState::Unknown,
                };
                s.state = state;
                let body = Status { state, reason: reason(trim_alpha(&m.reason())) };
                out.push(Record::new(meta(s.sym, ts), Body::Status(body)));
                Ok(())
            }
            Message::OperationalHalt(m) => {
                if m.market_code() != b'Q' {
                    return Ok(());
                }
                let ts = self.ts(m.timestamp(), offset)?;
                let s = self.securities.with_stock(locate, m.stock(), offset)?;
                let body = match m.operational_halt_action() {
                    b'H' => Status { state: TradingState::Halted, reason: reason(b"OPHALT") },
                    b'T' => {
                        let state = if s.state == TradingState::Unknown { TradingState::Trading } else { s.state };
                        Status { state, reason: reason(b"OPRESUME") }
                    }
                    _ => return Ok(()),
                };
                out.push(Record::new(meta(s.sym, ts), Body::Status(body)));
                Ok(())
            }
            Message::StockDirectory(m) => {
                let ts = self.ts(m.timestamp(), offset)?;
                let s = self.securities.with_stock(locate, m.stock(), offset)?;
                let mut currency = [0u8; 8];
                currency[..3].copy_from_slice(b"USD");
                let body = Instrument {
                    kind: InstrumentKind::Equity,
                    currency,
                    tick_size: Px::NULL,
                    lot_size: units(m.round_lot_size()),
                    multiplier: 0,
                    expiration: 0,
                    strike: Px::NULL,
                    underlying: [0; 24],
                };
                out.push(Record::new(meta(s.sym, ts), Body::Instrument(body)));
                Ok(())
            }
            Message::Noii(m) => {
                let ts = self.ts(m.timestamp(), offset)?;
                let paired =
                    message::shares(m.paired_shares()).ok_or_else(|| too_many_shares(offset, m.paired_shares()))?;
                let imb = message::shares(m.imbalance_shares())
                    .ok_or_else(|| too_many_shares(offset, m.imbalance_shares()))?;
                let s = self.securities.with_stock(locate, m.stock(), offset)?;
                let side = match m.imbalance_direction() {
                    b'B' => Side::Buy,
                    b'S' => Side::Sell,
                    _ => Side::None,
                };
                let body = Imbalance {
                    side,
                    paired_qty: paired,
                    imbalance_qty: imb,
                    ref_px: px4(m.current_reference_price()),
                    near_px: px4(m.near_price()),
                    far_px: px4(m.far_price()),
                    cross_type: m.cross_type(),
                };
                out.push(Record::new(meta(s.sym, ts), Body::Imbalance(body)));
                Ok(())
            }
            Message::SystemEvent(m) => {
                self.last_system_event = Some(m.event_code());
                Ok(())
            }
            Message::RegShoRestriction(_)
            | Message::MarketParticipantPosition(_)
            | Message::MwcbDeclineLevel(_)
            | Message::MwcbStatus(_)
            | Message::IpoQuotingPeriodUpdate(_)
            | Message::LuldAuctionCollar(_)
            | Message::BrokenTrade(_)
            | Message::RetailPriceImprovement(_)
            | Message::DirectListing(_) => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)] // the fields of A and F, which share this path
    #[inline]
    fn add(
        &mut self,
        locate: u16,
        offset: u64,
        ts: u64,
        stock: [u8; 8],
        order_ref: u64,
        side_b: u8,
        shares: u32,
        price: u32,
        msg: &Message<'_>,
        out: &mut Vec<Record>,
    ) -> Result<()> {
        let ts = self.ts(ts, offset)?;
        let side = side(side_b, offset)?;
        let s = self.securities.with_stock(locate, stock, offset)?;
        let (px, qty) = (px4(price), units(shares));
        match s.book.add(order_ref, side, px, qty) {
            Ok(level) => {
                let mt = mk_meta(self.src, locate, s.sym, ts);
                out.push(Record::new(mt, Body::OrderAdd(OrderAdd { order_id: order_ref, side, px, qty })));
                push_level_and_quote(out, mt, level, &s.book, &mut s.quotes);
                Ok(())
            }
            Err(e) => self.policy.conflict(msg, offset, e),
        }
    }

    #[allow(clippy::too_many_arguments)] // the fields of E and C, which share this path
    #[inline]
    fn execute(
        &mut self,
        locate: u16,
        offset: u64,
        ts: u64,
        order_ref: u64,
        executed: u32,
        match_id: u64,
        exec_px: Option<Px>,
        printable: bool,
        msg: &Message<'_>,
        out: &mut Vec<Record>,
    ) -> Result<()> {
        let ts = self.ts(ts, offset)?;
        let Some(s) = self.securities.get(locate) else {
            return self.policy.conflict(msg, offset, BookError::UnknownOrder(order_ref));
        };
        let qty = units(executed);
        // Strict mode refuses an execution larger than the order before touching the book;
        // otherwise the book clamps it (and an unknown order is reported by `reduce`), which
        // saves a lookup on the hot path.
        if self.policy.strict {
            if let Some(o) = s.book.order(order_ref).filter(|o| o.qty < qty) {
                return Err(overdraw(msg, offset, order_ref, executed, o.qty));
            }
        }
        match s.book.reduce(order_ref, qty) {
            Ok((before, level)) => {
                let mt = mk_meta(self.src, locate, s.sym, ts);
                let px = exec_px.unwrap_or(before.px);
                let remaining = Qty((before.qty.raw() - qty.raw()).max(0));
                let body = OrderExecute { order_id: order_ref, side: before.side, px, qty, remaining, match_id };
                out.push(Record::new(mt, Body::OrderExecute(body)));
                if printable {
                    let trade = Trade { px, qty, side: opposite(before.side), match_id };
                    out.push(Record::new(mt, Body::Trade(trade)));
                }
                push_level_and_quote(out, mt, level, &s.book, &mut s.quotes);
                Ok(())
            }
            Err(e) => self.policy.conflict(msg, offset, e),
        }
    }

    /// `X` (with the shares cancelled) and `D` (`None`: the whole order).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn cancel(
        &mut self,
        locate: u16,
        offset: u64,
        ts: u64,
        order_ref: u64,
        cancelled: Option<u32>,
        msg: &Message<'_>,
        out: &mut Vec<Record>,
    ) -> Result<()> {
        let ts = self.ts(ts, offset)?;
        let Some(s) = self.securities.get(locate) else {
            return self.policy.conflict(msg, offset, BookError::UnknownOrder(order_ref));
        };
        let r = match cancelled {
            Some(n) => {
                let qty = units(n);
                if self.policy.strict {
                    if let Some(o) = s.book.order(order_ref).filter(|o| o.qty < qty) {
                        return Err(overdraw(msg, offset, order_ref, n, o.qty));
                    }
                }
                s.book.reduce(order_ref, qty).map(|(o, l)| (o, l, qty.min(o.qty)))
            }
            None => s.book.delete(order_ref).map(|(o, l)| (o, l, o.qty)),
        };
        match r {
            Ok((before, level, gone)) => {
                let mt = mk_meta(self.src, locate, s.sym, ts);
                let remaining = Qty(before.qty.raw() - gone.raw());
                let body =
                    OrderCancel { order_id: order_ref, side: before.side, px: before.px, cancelled: gone, remaining };
                out.push(Record::new(mt, Body::OrderCancel(body)));
                push_level_and_quote(out, mt, level, &s.book, &mut s.quotes);
                Ok(())
            }
            Err(e) => self.policy.conflict(msg, offset, e),
        }
    }
}

#[inline]
fn mk_meta(src: SourceId, locate: u16, sym: Symbol, ts_event: u64) -> Meta {
    Meta { src, seq: Seq(0), instrument: InstrumentId(u32::from(locate)), sym, ts_event, ts_ingest: 0 }
}

#[inline]
fn push_level_and_quote(out: &mut Vec<Record>, mt: Meta, level: Level, book: &OrderBook, quotes: &mut QuoteTracker) {
    out.push(Record::new(mt, Body::Level(level)));
    if let Some(q) = quotes.update(book.levels()) {
        out.push(Record::new(mt, Body::Quote(q)));
    }
}

fn overdraw(msg: &Message<'_>, offset: u64, order_ref: u64, n: u32, open: Qty) -> Error {
    Error::Parse {
        format: FORMAT,
        offset,
        what: format!(
            "{} message takes {n} shares from order {order_ref}, which has only {open} open; the input is missing \
             messages of this security (or turn strict_book off to clamp)",
            msg.name()
        ),
    }
}

fn too_many_shares(offset: u64, n: u64) -> Error {
    Error::Parse {
        format: FORMAT,
        offset,
        what: format!("share count {n} is beyond what a quantity can hold (9.2e9); the message is corrupt"),
    }
}

/// A reason code as the record's zero-padded ASCII (non-printable bytes become `?`).
fn reason(b: &[u8]) -> [u8; 8] {
    let mut r = [0u8; 8];
    for (d, s) in r.iter_mut().zip(b) {
        *d = if s.is_ascii_graphic() || *s == b' ' { *s } else { b'?' };
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_source_is_valid() {
        assert_eq!(default_source().as_str(), "XNAS.ITCH");
    }
}
