//! The record: one fixed header followed by one fixed-size body per kind.
//!
//! Both parts are rkyv archives of plain structs, built with rkyv's `little_endian` and
//! `unaligned` formats, so the archived bytes are exactly the fields in declaration order
//! with no padding (FORMAT.md gives every offset, and `layout_tests` below pins them). A
//! record can be read in place from any byte slice: a network buffer, an mmap'ed journal
//! segment, a WebSocket frame. No alignment copy is needed.

use crate::error::{Error, Result};
use crate::fixed::{Px, Qty};
use crate::ids::{InstrumentId, Seq, SourceId, Symbol};
use rkyv::rancor;

/// Version of the byte layout, stored in every header.
pub const FORMAT_VERSION: u8 = 1;

/// The header every record starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Header {
    /// [`FORMAT_VERSION`].
    pub version: u8,
    /// [`RecordKind`] as its byte.
    pub kind: u8,
    /// Bit flags; bit 0 [`FLAG_CONFLATED`] is set only on gateway output. Others reserved, 0.
    pub flags: u16,
    /// Length of the body that follows the header.
    pub body_len: u16,
    /// Reserved, 0.
    pub reserved: u16,
    /// The source's numeric instrument id.
    pub instrument: InstrumentId,
    /// The source this record belongs to.
    pub src: SourceId,
    /// Position in the source's sequence, assigned once at ingestion.
    pub seq: Seq,
    /// Venue event time, ns since the Unix epoch.
    pub ts_event: u64,
    /// Wall-clock time the home region ingested the record, ns since the Unix epoch.
    pub ts_ingest: u64,
    /// The venue's symbol.
    pub sym: Symbol,
}

/// Header flag: the record was merged by a slow-consumer policy (gateway output only).
pub const FLAG_CONFLATED: u16 = 1;

/// Which side: the aggressor of a trade, or the side of the book an order or level rests on
/// (`Buy` = bid, `Sell` = ask). Byte values are part of the format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq))]
#[repr(u8)]
pub enum Side {
    /// Not known, or a cross.
    None = 0,
    /// Buyer (aggressor) / bid side.
    Buy = 1,
    /// Seller (aggressor) / ask side.
    Sell = 2,
}

impl Side {
    /// Protocol spelling for a trade's aggressor.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Buy => "buy",
            Self::Sell => "sell",
        }
    }
}

impl ArchivedSide {
    /// Native value.
    pub fn get(&self) -> Side {
        match self {
            Self::None => Side::None,
            Self::Buy => Side::Buy,
            Self::Sell => Side::Sell,
        }
    }
}

/// Trading state of an instrument (the protocol's `status.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq))]
#[repr(u8)]
pub enum TradingState {
    /// Not known.
    Unknown = 0,
    /// Before the open (orders may be entered, nothing trades).
    PreOpen = 1,
    /// Continuous trading.
    Trading = 2,
    /// Halted by the venue or a regulator.
    Halted = 3,
    /// Paused (e.g. a limit-up/limit-down pause).
    Paused = 4,
    /// Quotation only (orders and quotes, no trades).
    Quoting = 5,
    /// In an auction or cross.
    Auction = 6,
    /// Closed for the day.
    Closed = 7,
}

impl TradingState {
    /// Protocol spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::PreOpen => "pre_open",
            Self::Trading => "trading",
            Self::Halted => "halted",
            Self::Paused => "paused",
            Self::Quoting => "quoting",
            Self::Auction => "auction",
            Self::Closed => "closed",
        }
    }
}

impl ArchivedTradingState {
    /// Native value.
    pub fn get(&self) -> TradingState {
        match self {
            Self::Unknown => TradingState::Unknown,
            Self::PreOpen => TradingState::PreOpen,
            Self::Trading => TradingState::Trading,
            Self::Halted => TradingState::Halted,
            Self::Paused => TradingState::Paused,
            Self::Quoting => TradingState::Quoting,
            Self::Auction => TradingState::Auction,
            Self::Closed => TradingState::Closed,
        }
    }
}

/// What an instrument is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq))]
#[repr(u8)]
pub enum InstrumentKind {
    /// Not known.
    Other = 0,
    /// A share, ETF or other equity.
    Equity = 1,
    /// A future.
    Future = 2,
    /// An option.
    Option = 3,
    /// A spread or combination.
    Spread = 4,
    /// A spot currency or crypto pair.
    Spot = 5,
    /// A perpetual swap.
    Perpetual = 6,
}

impl InstrumentKind {
    /// Text spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Other => "other",
            Self::Equity => "equity",
            Self::Future => "future",
            Self::Option => "option",
            Self::Spread => "spread",
            Self::Spot => "spot",
            Self::Perpetual => "perpetual",
        }
    }
}

impl ArchivedInstrumentKind {
    /// Native value.
    pub fn get(&self) -> InstrumentKind {
        match self {
            Self::Other => InstrumentKind::Other,
            Self::Equity => InstrumentKind::Equity,
            Self::Future => InstrumentKind::Future,
            Self::Option => InstrumentKind::Option,
            Self::Spread => InstrumentKind::Spread,
            Self::Spot => InstrumentKind::Spot,
            Self::Perpetual => InstrumentKind::Perpetual,
        }
    }
}

macro_rules! body_struct {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
        #[rkyv(derive(Debug))]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
    };
}

body_struct!(
    /// A trade print.
    Trade {
        /// Price.
        px: Px,
        /// Quantity.
        qty: Qty,
        /// Aggressor side.
        side: Side,
        /// The venue's match or trade id (0 if none).
        match_id: u64,
    }
);
body_struct!(
    /// Best bid and offer. An empty side has price [`Px::NULL`] and quantity 0.
    Quote {
        /// Best bid price, or [`Px::NULL`].
        bid_px: Px,
        /// Quantity at the best bid.
        bid_qty: Qty,
        /// Best ask price, or [`Px::NULL`].
        ask_px: Px,
        /// Quantity at the best ask.
        ask_qty: Qty,
        /// Orders at the best bid (0 if not known).
        bid_count: u32,
        /// Orders at the best ask (0 if not known).
        ask_count: u32,
    }
);
body_struct!(
    /// One price level's new state (the `book` channel): quantity 0 removes the level.
    Level {
        /// `Buy` for bids, `Sell` for asks.
        side: Side,
        /// The level's price.
        px: Px,
        /// Total quantity now resting at the level.
        qty: Qty,
        /// Orders at the level (0 if not known).
        count: u32,
    }
);
body_struct!(
    /// A new resting order.
    OrderAdd {
        /// Venue order id.
        order_id: u64,
        /// Book side.
        side: Side,
        /// Limit price.
        px: Px,
        /// Quantity.
        qty: Qty,
    }
);
body_struct!(
    /// An order's price or quantity changed (it keeps its id).
    OrderModify {
        /// Venue order id.
        order_id: u64,
        /// Book side.
        side: Side,
        /// New price.
        px: Px,
        /// New quantity.
        qty: Qty,
    }
);
body_struct!(
    /// Quantity removed from an order by its owner; `remaining` 0 means deleted.
    OrderCancel {
        /// Venue order id.
        order_id: u64,
        /// Book side.
        side: Side,
        /// The order's price.
        px: Px,
        /// Quantity cancelled.
        cancelled: Qty,
        /// Quantity left on the book.
        remaining: Qty,
    }
);
body_struct!(
    /// A resting order traded.
    OrderExecute {
        /// Venue order id.
        order_id: u64,
        /// Book side of the resting order.
        side: Side,
        /// Execution price.
        px: Px,
        /// Quantity executed.
        qty: Qty,
        /// Quantity left on the book.
        remaining: Qty,
        /// The venue's match id (0 if none).
        match_id: u64,
    }
);
body_struct!(
    /// An order replaced by a new one (new id, price and quantity; ITCH `U`).
    OrderReplace {
        /// The replaced order.
        order_id: u64,
        /// The new order.
        new_order_id: u64,
        /// Book side.
        side: Side,
        /// New price.
        px: Px,
        /// New quantity.
        qty: Qty,
    }
);
body_struct!(
    /// The trading state of an instrument changed.
    Status {
        /// New state.
        state: TradingState,
        /// The venue's reason code, ASCII, zero-padded (ITCH's 4-character reason, etc.).
        reason: [u8; 8],
    }
);
body_struct!(
    /// An instrument's definition (ITCH stock directory, DBN definition, venue products).
    Instrument {
        /// What it is.
        kind: InstrumentKind,
        /// Currency of prices, ASCII, zero-padded.
        currency: [u8; 8],
        /// Smallest price increment ([`Px::NULL`] if not known).
        tick_size: Px,
        /// Trading lot (0 if not known).
        lot_size: Qty,
        /// Contract multiplier in 1e-9 units (0 if not applicable).
        multiplier: i64,
        /// Expiration, ns since the epoch (0 if none).
        expiration: u64,
        /// Strike price ([`Px::NULL`] if not an option).
        strike: Px,
        /// Underlying symbol (empty if none).
        underlying: [u8; 24],
    }
);
body_struct!(
    /// An OHLCV bar.
    Bar {
        /// Bar length in ns.
        interval_ns: u64,
        /// Open.
        open: Px,
        /// High.
        high: Px,
        /// Low.
        low: Px,
        /// Close.
        close: Px,
        /// Volume.
        volume: Qty,
    }
);
body_struct!(
    /// A venue statistic (settlement, open interest, session high, ...; DBN statistics).
    Statistic {
        /// The venue's statistic type code.
        stat_type: u16,
        /// Price value ([`Px::NULL`] if none).
        px: Px,
        /// Quantity value (`i64::MAX` raw if none).
        qty: Qty,
        /// 1 new, 2 delete (DBN `update_action`).
        action: u8,
    }
);
body_struct!(
    /// An auction imbalance (ITCH `I`, DBN imbalance).
    Imbalance {
        /// Side of the imbalance.
        side: Side,
        /// Shares paired at the reference price.
        paired_qty: Qty,
        /// Shares not paired.
        imbalance_qty: Qty,
        /// Reference price.
        ref_px: Px,
        /// Near indicative clearing price.
        near_px: Px,
        /// Far indicative clearing price.
        far_px: Px,
        /// The venue's cross type code (ASCII).
        cross_type: u8,
    }
);
body_struct!(
    /// An update of one user's own order (the private `orders` channel; trading tier).
    OrderUpdate {
        /// The order id, ASCII, zero-padded.
        order_id: [u8; 24],
        /// The owning user (token `sub`), ASCII, zero-padded.
        user: [u8; 24],
        /// 1 new, 2 partially filled, 3 filled, 4 cancelled, 5 rejected.
        status: u8,
        /// Buy or sell.
        side: Side,
        /// Limit price.
        px: Px,
        /// Order quantity.
        qty: Qty,
        /// Filled so far.
        filled_qty: Qty,
    }
);

macro_rules! kinds {
    ($( $variant:ident = $num:literal, $arch:ident, $len:ident, $channel:expr; )*) => {
        /// What a record's body holds. The numeric values are part of the format.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        #[non_exhaustive]
        pub enum RecordKind { $(
            #[doc = concat!("A [`", stringify!($variant), "`] body.")]
            $variant = $num,
        )* }

        impl RecordKind {
            /// Every kind, in numeric order.
            pub const ALL: &'static [RecordKind] = &[$(RecordKind::$variant),*];

            /// From the header byte.
            pub fn from_u8(v: u8) -> Result<Self> {
                match v {
                    $($num => Ok(Self::$variant),)*
                    other => Err(Error::UnknownKind(other)),
                }
            }
            /// Size of this kind's archived body in bytes.
            pub const fn body_len(self) -> usize {
                match self { $(Self::$variant => $len,)* }
            }
            /// The protocol channel that carries records of this kind, if any. Order-level
            /// records travel in the journal, the mesh and the binary encoding, but JSON
            /// clients see their effect through `book`, `quotes` and `trades`.
            pub const fn channel(self) -> Option<&'static str> {
                match self { $(Self::$variant => $channel,)* }
            }
        }

        $(
            #[doc = concat!("Archived size of a [`", stringify!($variant), "`] body.")]
            pub const $len: usize = std::mem::size_of::<$arch>();
        )*

        /// An owned body.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum Body { $(
            #[doc = concat!("A [`", stringify!($variant), "`].")]
            $variant($variant),
        )* }

        impl Body {
            /// The kind of this body.
            pub const fn kind(&self) -> RecordKind {
                match self { $(Body::$variant(_) => RecordKind::$variant,)* }
            }

            fn encode_into(&self, buf: Vec<u8>) -> Vec<u8> {
                match self { $(Body::$variant(b) => ok(rkyv::api::high::to_bytes_in::<_, rancor::Panic>(b, buf)),)* }
            }
        }

        /// A borrowed body.
        #[derive(Clone, Copy, Debug)]
        #[non_exhaustive]
        pub enum BodyRef<'a> { $(
            #[doc = concat!("A [`", stringify!($variant), "`].")]
            $variant(&'a $arch),
        )* }

        impl<'a> BodyRef<'a> {
            /// The kind.
            pub const fn kind(&self) -> RecordKind {
                match self { $(BodyRef::$variant(_) => RecordKind::$variant,)* }
            }

            fn checked(kind: RecordKind, b: &'a [u8]) -> Result<Self> {
                Ok(match kind { $(RecordKind::$variant => BodyRef::$variant(
                    rkyv::access::<$arch, rancor::Error>(b).map_err(|e| Error::Invalid(e.to_string()))?,
                ),)* })
            }

            /// # Safety
            /// `b` must be a valid archive of the body type of `kind`.
            unsafe fn unchecked(kind: RecordKind, b: &'a [u8]) -> Self {
                // SAFETY: forwarded from the caller.
                match kind { $(RecordKind::$variant => BodyRef::$variant(unsafe { rkyv::access_unchecked::<$arch>(b) }),)* }
            }

            /// An owned copy.
            pub fn to_owned(&self) -> Body {
                match self { $(BodyRef::$variant(b) => Body::$variant(
                    // Plain structs deserialize without allocation or failure.
                    ok(rkyv::deserialize::<$variant, rancor::Panic>(*b)),
                ),)* }
            }
        }
    };
}

kinds! {
    Trade = 1, ArchivedTrade, TRADE_LEN, Some("trades");
    Quote = 2, ArchivedQuote, QUOTE_LEN, Some("quotes");
    Level = 3, ArchivedLevel, LEVEL_LEN, Some("book");
    OrderAdd = 4, ArchivedOrderAdd, ORDER_ADD_LEN, None;
    OrderModify = 5, ArchivedOrderModify, ORDER_MODIFY_LEN, None;
    OrderCancel = 6, ArchivedOrderCancel, ORDER_CANCEL_LEN, None;
    OrderExecute = 7, ArchivedOrderExecute, ORDER_EXECUTE_LEN, None;
    OrderReplace = 8, ArchivedOrderReplace, ORDER_REPLACE_LEN, None;
    Status = 9, ArchivedStatus, STATUS_LEN, Some("status");
    Instrument = 10, ArchivedInstrument, INSTRUMENT_LEN, None;
    Bar = 11, ArchivedBar, BAR_LEN, None;
    Statistic = 12, ArchivedStatistic, STATISTIC_LEN, None;
    Imbalance = 13, ArchivedImbalance, IMBALANCE_LEN, None;
    OrderUpdate = 14, ArchivedOrderUpdate, ORDER_UPDATE_LEN, Some("orders");
}

/// Archived header size in bytes.
pub const HEADER_LEN: usize = std::mem::size_of::<ArchivedHeader>();

/// An owned record: what ingest builds and tests compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// The header; `version`, `kind` and `body_len` are set by [`Record::new`].
    pub header: Header,
    /// The body.
    pub body: Body,
}

/// The fields of a header that a producer chooses (the rest follow from the body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Source.
    pub src: SourceId,
    /// Sequence number (the sequencer sets it; producers may leave `Seq(0)`).
    pub seq: Seq,
    /// Instrument id within the source.
    pub instrument: InstrumentId,
    /// Symbol.
    pub sym: Symbol,
    /// Venue event time (ns).
    pub ts_event: u64,
    /// Ingest time (ns).
    pub ts_ingest: u64,
}

impl Record {
    /// A record with a consistent header for `body`.
    pub fn new(meta: Meta, body: Body) -> Self {
        let kind = body.kind();
        Record {
            header: Header {
                version: FORMAT_VERSION,
                kind: kind as u8,
                flags: 0,
                body_len: kind.body_len() as u16,
                reserved: 0,
                instrument: meta.instrument,
                src: meta.src,
                seq: meta.seq,
                ts_event: meta.ts_event,
                ts_ingest: meta.ts_ingest,
                sym: meta.sym,
            },
            body,
        }
    }

    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body.kind().body_len()
    }

    /// Appends the record's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let buf = std::mem::take(out);
        // Serializing plain structs into a Vec cannot fail: there is no allocation that can
        // be refused and no shared pointer to resolve.
        let buf = ok(rkyv::api::high::to_bytes_in::<_, rancor::Panic>(&self.header, buf));
        *out = self.body.encode_into(buf);
        debug_assert_eq!(out.len() - start, self.encoded_len());
    }

    /// The record's bytes in a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode(&mut v);
        v
    }

    /// Decodes and validates untrusted bytes into an owned record.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        Ok(access_untrusted(bytes)?.to_owned())
    }
}

/// A borrowed, validated view of one record's bytes.
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    bytes: &'a [u8],
    header: &'a ArchivedHeader,
    body: BodyRef<'a>,
}

impl<'a> RecordRef<'a> {
    /// The record's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// The archived header.
    pub fn header(&self) -> &'a ArchivedHeader {
        self.header
    }
    /// The archived body.
    pub fn body(&self) -> BodyRef<'a> {
        self.body
    }
    /// Record kind.
    pub fn kind(&self) -> RecordKind {
        self.body.kind()
    }
    /// Source id text.
    pub fn src(&self) -> &'a str {
        self.header.src.as_str()
    }
    /// Source id.
    pub fn source_id(&self) -> SourceId {
        // Validated on access, so the bytes form a valid id.
        SourceId::from_bytes(self.header.src.padded()).unwrap_or_else(|_| unreachable_id())
    }
    /// Sequence number.
    pub fn seq(&self) -> u64 {
        self.header.seq.0.to_native()
    }
    /// Symbol text.
    pub fn sym(&self) -> &'a str {
        self.header.sym.as_str()
    }
    /// Instrument id.
    pub fn instrument(&self) -> InstrumentId {
        InstrumentId(self.header.instrument.0.to_native())
    }
    /// Venue event time.
    pub fn ts_event(&self) -> u64 {
        self.header.ts_event.to_native()
    }
    /// Ingest time.
    pub fn ts_ingest(&self) -> u64 {
        self.header.ts_ingest.to_native()
    }
    /// Header flags.
    pub fn flags(&self) -> u16 {
        self.header.flags.to_native()
    }
    /// An owned copy.
    pub fn to_owned(&self) -> Record {
        let h = self.header;
        let header = Header {
            version: h.version,
            kind: h.kind,
            flags: h.flags.to_native(),
            body_len: h.body_len.to_native(),
            reserved: h.reserved.to_native(),
            instrument: self.instrument(),
            src: self.source_id(),
            seq: Seq(self.seq()),
            ts_event: self.ts_event(),
            ts_ingest: self.ts_ingest(),
            sym: Symbol::from_bytes(h.sym.padded()).unwrap_or_else(|_| unreachable_sym()),
        };
        let body = self.body.to_owned();
        Record { header, body }
    }
}

/// `rancor::Panic` has no values: serialization into a `Vec` reports no errors.
fn ok<T>(r: std::result::Result<T, rancor::Panic>) -> T {
    match r {
        Ok(v) => v,
        Err(never) => match never {},
    }
}

#[cold]
fn unreachable_id() -> SourceId {
    SourceId::new("invalid").expect("constant id is valid")
}
#[cold]
fn unreachable_sym() -> Symbol {
    Symbol::new("?").expect("constant symbol is valid")
}

/// Validates bytes from outside this process (a peer region, a client, a file someone may
/// have edited) and returns a view of them. Checks rkyv's structural validation (enum tags),
/// the version, the kind, the body length, and that the ids are well-formed text.
pub fn access_untrusted(bytes: &[u8]) -> Result<RecordRef<'_>> {
    if bytes.len() < HEADER_LEN {
        return Err(Error::Truncated { got: bytes.len(), need: HEADER_LEN });
    }
    let header = rkyv::access::<ArchivedHeader, rancor::Error>(&bytes[..HEADER_LEN])
        .map_err(|e| Error::Invalid(e.to_string()))?;
    if header.version != FORMAT_VERSION {
        return Err(Error::Version(header.version));
    }
    let kind = RecordKind::from_u8(header.kind)?;
    let body_len = usize::from(header.body_len.to_native());
    if body_len != kind.body_len() {
        return Err(Error::BodyLength { kind: header.kind, got: body_len, want: kind.body_len() });
    }
    if bytes.len() != HEADER_LEN + body_len {
        return Err(Error::Truncated { got: bytes.len(), need: HEADER_LEN + body_len });
    }
    SourceId::from_bytes(header.src.padded())?;
    Symbol::from_bytes(header.sym.padded())?;
    let body = BodyRef::checked(kind, &bytes[HEADER_LEN..])?;
    Ok(RecordRef { bytes, header, body })
}

/// Views bytes that this process validated or wrote itself, without validating again.
///
/// # Safety
/// `bytes` must be exactly one record that [`access_untrusted`] accepted, or that
/// [`Record::encode`] produced (in this process, or read back from our own journal after its
/// CRC check). Anything else is undefined behaviour (an invalid enum tag).
pub unsafe fn access_trusted(bytes: &[u8]) -> RecordRef<'_> {
    // SAFETY: the caller guarantees the bytes are a complete, valid record, so the header
    // and body ranges exist and hold valid archives; the unaligned format needs no alignment.
    let header = unsafe { rkyv::access_unchecked::<ArchivedHeader>(&bytes[..HEADER_LEN]) };
    // The encoder only writes known kinds; a journal CRC check or `access_untrusted`
    // already vouched for these bytes, so an unknown kind here is a caller bug.
    let kind = RecordKind::from_u8(header.kind).unwrap_or(RecordKind::Trade);
    // SAFETY: the caller guarantees the body is a valid archive of this kind's body type.
    let body = unsafe { BodyRef::unchecked(kind, &bytes[HEADER_LEN..]) };
    RecordRef { bytes, header, body }
}

#[cfg(test)]
mod layout_tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn header_layout_is_pinned() {
        assert_eq!(HEADER_LEN, 76);
        assert_eq!(offset_of!(ArchivedHeader, version), 0);
        assert_eq!(offset_of!(ArchivedHeader, kind), 1);
        assert_eq!(offset_of!(ArchivedHeader, flags), 2);
        assert_eq!(offset_of!(ArchivedHeader, body_len), 4);
        assert_eq!(offset_of!(ArchivedHeader, reserved), 6);
        assert_eq!(offset_of!(ArchivedHeader, instrument), 8);
        assert_eq!(offset_of!(ArchivedHeader, src), 12);
        assert_eq!(offset_of!(ArchivedHeader, seq), 28);
        assert_eq!(offset_of!(ArchivedHeader, ts_event), 36);
        assert_eq!(offset_of!(ArchivedHeader, ts_ingest), 44);
        assert_eq!(offset_of!(ArchivedHeader, sym), 52);
        assert_eq!(std::mem::align_of::<ArchivedHeader>(), 1);
    }

    #[test]
    fn body_layouts_are_pinned() {
        assert_eq!(TRADE_LEN, 25);
        assert_eq!(offset_of!(ArchivedTrade, px), 0);
        assert_eq!(offset_of!(ArchivedTrade, qty), 8);
        assert_eq!(offset_of!(ArchivedTrade, side), 16);
        assert_eq!(offset_of!(ArchivedTrade, match_id), 17);
        assert_eq!(QUOTE_LEN, 40);
        assert_eq!(offset_of!(ArchivedQuote, bid_px), 0);
        assert_eq!(offset_of!(ArchivedQuote, bid_qty), 8);
        assert_eq!(offset_of!(ArchivedQuote, ask_px), 16);
        assert_eq!(offset_of!(ArchivedQuote, ask_qty), 24);
        assert_eq!(offset_of!(ArchivedQuote, bid_count), 32);
        assert_eq!(offset_of!(ArchivedQuote, ask_count), 36);
        let sizes: Vec<(RecordKind, usize)> = RecordKind::ALL.iter().map(|k| (*k, k.body_len())).collect();
        assert_eq!(
            sizes,
            vec![
                (RecordKind::Trade, 25),
                (RecordKind::Quote, 40),
                (RecordKind::Level, 21),
                (RecordKind::OrderAdd, 25),
                (RecordKind::OrderModify, 25),
                (RecordKind::OrderCancel, 33),
                (RecordKind::OrderExecute, 41),
                (RecordKind::OrderReplace, 33),
                (RecordKind::Status, 9),
                (RecordKind::Instrument, 73),
                (RecordKind::Bar, 48),
                (RecordKind::Statistic, 19),
                (RecordKind::Imbalance, 42),
                (RecordKind::OrderUpdate, 74),
            ]
        );
    }

    #[test]
    fn bytes_are_little_endian_fields_in_order() {
        let rec = crate::testing::trade(7, "AAPL", "320.14", "100", Side::Buy);
        let b = rec.to_bytes();
        assert_eq!(b.len(), HEADER_LEN + TRADE_LEN);
        assert_eq!(b[0], FORMAT_VERSION);
        assert_eq!(b[1], RecordKind::Trade as u8);
        assert_eq!(u16::from_le_bytes([b[4], b[5]]) as usize, TRADE_LEN);
        assert_eq!(&b[12..21], b"TEST.SRC\0");
        assert_eq!(u64::from_le_bytes(b[28..36].try_into().unwrap()), 7);
        assert_eq!(&b[52..56], b"AAPL");
        assert_eq!(i64::from_le_bytes(b[76..84].try_into().unwrap()), 320_140_000_000);
        assert_eq!(b[92], Side::Buy as u8);
    }
}
