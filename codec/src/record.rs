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

/// What a record's body holds. The numeric values are part of the format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum RecordKind {
    /// A trade print ([`Trade`]).
    Trade = 1,
    /// A best bid and offer ([`Quote`]).
    Quote = 2,
}

impl RecordKind {
    /// From the header byte.
    pub fn from_u8(v: u8) -> Result<Self> {
        match v {
            1 => Ok(Self::Trade),
            2 => Ok(Self::Quote),
            other => Err(Error::UnknownKind(other)),
        }
    }
    /// Size of this kind's archived body in bytes.
    pub const fn body_len(self) -> usize {
        match self {
            Self::Trade => TRADE_LEN,
            Self::Quote => QUOTE_LEN,
        }
    }
    /// The protocol's channel for records of this kind.
    pub const fn channel(self) -> &'static str {
        match self {
            Self::Trade => "trades",
            Self::Quote => "quotes",
        }
    }
}

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

/// Which side was the aggressor of a trade. Byte values are part of the format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq))]
#[repr(u8)]
pub enum Side {
    /// Not known, or a cross.
    None = 0,
    /// The buyer took liquidity.
    Buy = 1,
    /// The seller took liquidity.
    Sell = 2,
}

impl Side {
    /// Protocol spelling.
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

/// A trade print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Trade {
    /// Price.
    pub px: Px,
    /// Quantity.
    pub qty: Qty,
    /// Aggressor side.
    pub side: Side,
}

/// Best bid and offer. An empty side has price [`Px::NULL`] and quantity 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Quote {
    /// Best bid price, or [`Px::NULL`].
    pub bid_px: Px,
    /// Quantity at the best bid.
    pub bid_qty: Qty,
    /// Best ask price, or [`Px::NULL`].
    pub ask_px: Px,
    /// Quantity at the best ask.
    pub ask_qty: Qty,
}

/// Archived header size in bytes.
pub const HEADER_LEN: usize = std::mem::size_of::<ArchivedHeader>();
/// Archived trade body size.
pub const TRADE_LEN: usize = std::mem::size_of::<ArchivedTrade>();
/// Archived quote body size.
pub const QUOTE_LEN: usize = std::mem::size_of::<ArchivedQuote>();

/// An owned record: what ingest builds and tests compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// The header; `version`, `kind` and `body_len` are set by [`Record::new`].
    pub header: Header,
    /// The body.
    pub body: Body,
}

/// An owned body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Body {
    /// A trade.
    Trade(Trade),
    /// A quote.
    Quote(Quote),
}

impl Body {
    /// The kind of this body.
    pub const fn kind(&self) -> RecordKind {
        match self {
            Body::Trade(_) => RecordKind::Trade,
            Body::Quote(_) => RecordKind::Quote,
        }
    }
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
        let buf = match &self.body {
            Body::Trade(t) => ok(rkyv::api::high::to_bytes_in::<_, rancor::Panic>(t, buf)),
            Body::Quote(q) => ok(rkyv::api::high::to_bytes_in::<_, rancor::Panic>(q, buf)),
        };
        *out = buf;
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

/// A borrowed body.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum BodyRef<'a> {
    /// A trade.
    Trade(&'a ArchivedTrade),
    /// A quote.
    Quote(&'a ArchivedQuote),
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
        match self.body {
            BodyRef::Trade(_) => RecordKind::Trade,
            BodyRef::Quote(_) => RecordKind::Quote,
        }
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
        let body = match self.body {
            BodyRef::Trade(t) => Body::Trade(Trade { px: t.px.get(), qty: t.qty.get(), side: t.side.get() }),
            BodyRef::Quote(q) => Body::Quote(Quote {
                bid_px: q.bid_px.get(),
                bid_qty: q.bid_qty.get(),
                ask_px: q.ask_px.get(),
                ask_qty: q.ask_qty.get(),
            }),
        };
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
    let body_bytes = &bytes[HEADER_LEN..];
    let body = match kind {
        RecordKind::Trade => BodyRef::Trade(
            rkyv::access::<ArchivedTrade, rancor::Error>(body_bytes).map_err(|e| Error::Invalid(e.to_string()))?,
        ),
        RecordKind::Quote => BodyRef::Quote(
            rkyv::access::<ArchivedQuote, rancor::Error>(body_bytes).map_err(|e| Error::Invalid(e.to_string()))?,
        ),
    };
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
    let body_bytes = &bytes[HEADER_LEN..];
    let body = match header.kind {
        // SAFETY: as above; the kind byte selects the body type the encoder wrote.
        1 => BodyRef::Trade(unsafe { rkyv::access_unchecked::<ArchivedTrade>(body_bytes) }),
        // SAFETY: as above.
        _ => BodyRef::Quote(unsafe { rkyv::access_unchecked::<ArchivedQuote>(body_bytes) }),
    };
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
        assert_eq!(TRADE_LEN, 17);
        assert_eq!(offset_of!(ArchivedTrade, px), 0);
        assert_eq!(offset_of!(ArchivedTrade, qty), 8);
        assert_eq!(offset_of!(ArchivedTrade, side), 16);
        assert_eq!(QUOTE_LEN, 32);
        assert_eq!(offset_of!(ArchivedQuote, bid_px), 0);
        assert_eq!(offset_of!(ArchivedQuote, bid_qty), 8);
        assert_eq!(offset_of!(ArchivedQuote, ask_px), 16);
        assert_eq!(offset_of!(ArchivedQuote, ask_qty), 24);
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
