//! Databento DBN: files and streams of the `dbn` crate's binary encoding, plain or zstd.
//!
//! [`DbnDecoder`] is sans-I/O: bytes in (any chunking), codec records out. Around the `dbn`
//! crate's own sans-I/O state machine ([`DbnFsm`]) it adds what the crate leaves
//! to the caller: zstd detected by its magic number and decompressed as a stream straight
//! into the state machine's buffer (concatenated frames included), a clear refusal of inputs
//! that are not DBN streams (legacy DBZ, metadata-less fragments, anything else), the
//! symbology of the metadata header, and books.
//!
//! # Versions and the upgrade policy
//! DBN versions 1 to 3 are decoded with [`VersionUpgradePolicy::AsIs`]: each record is read
//! in the layout of its own version (`v1::InstrumentDefMsg`, `v1::StatMsg`, ...), exactly as
//! `databento-dbn` 0.72 reports it with `AS_IS`, which the golden test compares against.
//! Upgrading to v3 would change no field we map except sentinels (a v1 statistic's
//! `i32::MAX` quantity becomes `i64::MAX`), and the mapping below turns both into the same
//! "no value", so `AsIs` costs nothing and saves the per-record copy of an upgrade.
//! Version 4 streams are refused with an error that says so.
//!
//! # Symbols and source id
//! The source id is the metadata's dataset (`GLBX.MDP3`, `XNAS.ITCH`), cut to the 16
//! characters a [`SourceId`] holds; [`DbnDecoder::with_source`] overrides it. A record's
//! symbol is, in order: the `raw_symbol` of the latest definition record (or live symbol
//! mapping record) of its instrument id; the metadata mapping whose date interval holds the
//! record's UTC date (the interval that started last before it, or else the first, when none
//! holds it, as subsampled records can stamp the minute before the first interval); or the
//! instrument id in decimal when the stream has no symbology (`stype_in` instrument id).
//!
//! # Records
//! One DBN record gives one record of its own ([`DbnDecoder::with_books`]`(false)` stops
//! there, which the golden test uses), and with books on (the default) also the records
//! derived from the book it changes, in the order PROTOCOL.md's "Sequencing" gives: the
//! order-level record, a trade, the levels, then a quote if the best bid/offer changed.
//!
//! | DBN record | own record | derived (books on) |
//! |---|---|---|
//! | MBO `A` add | `OrderAdd` | `Level`, `Quote` |
//! | MBO `C` cancel (`size` = quantity cancelled) | `OrderCancel` | `Level`, `Quote` |
//! | MBO `M` modify | `OrderModify` | old-price `Level` if the price moved, new `Level`, `Quote` |
//! | MBO `R` clear book | none | a `Level` of quantity 0 per level, `Quote` |
//! | MBO `T` trade (aggressor side) | `Trade` | none |
//! | MBO `F` fill (resting order) | `OrderExecute` | none |
//! | MBO `N` none | none | none |
//! | MBP-1 / TBBO / CMBP-1 / TCBBO, action `T` | `Trade` | `Quote` before it, if changed |
//! | MBP-1 / CMBP-1, other actions | `Quote` | (deduplicated) |
//! | BBO-1s/1m, CBBO-1s/1m | `Quote` | (deduplicated) |
//! | MBP-10, action `T` | `Trade` | `Level`s that changed, `Quote` |
//! | MBP-10, `A`/`C`/`M` on side B/A | `Level` at the event's price | every changed `Level` of the top 10, `Quote` |
//! | trades | `Trade` | none |
//! | OHLCV-1s/1m/1h/1d/eod | `Bar` | none |
//! | definition | `Instrument` (and the symbol map) | none |
//! | statistics | `Statistic` | none |
//! | status | `Status` | none |
//! | imbalance | `Imbalance` | none |
//! | symbol mapping (live) | none (updates the symbol map) | none |
//! | system, error (live) | none (counted) | none |
//!
//! Databento's MBO semantics: `T` and `F` do not change the book; the venue's `C` (or `M`)
//! that follows a fill removes the filled quantity, so a fill never produces a second trade
//! print (the `T` is the print) nor a level change of its own. `OrderExecute.remaining` is
//! the order's open quantity less the fill. A record of one venue event may be split over
//! several MBO records; the `Quote` is emitted only at the record flagged `F_LAST`, so a
//! client never sees the intermediate, possibly crossed, state. An MBO event on an order id
//! the book does not hold (a capture that starts after the book's snapshot) is counted as
//! `unknown_order` and changes nothing (`remaining` 0); a modify of an unknown order adds
//! it; an add of an id already resting replaces it (`duplicate_order`). With
//! [`DbnDecoder::with_strict_books`] these become [`Error::Book`] instead. The MBO book is
//! kept in both modes so that `remaining` is right either way.
//!
//! Prices are DBN's own 1e-9 fixed point, so they are copied; `UNDEF_PRICE` is
//! [`Px::NULL`]. Sizes are whole units; a value beyond [`Qty`]'s range is an error.

use std::collections::HashMap;
use std::ffi::c_char;
use std::hash::BuildHasherDefault;

use dbn::decode::dbn::fsm::{DbnFsm, ProcessResult};
use dbn::{rtype, v1, v2, v3, RecordRef, SType, Schema, VersionUpgradePolicy, UNDEF_PRICE};
use tickmesh_codec::{
    Bar, Body, Imbalance, Instrument, InstrumentId, InstrumentKind, Level, Meta, OrderAdd, OrderCancel, OrderExecute,
    OrderModify, Px, Qty, Quote, Record, Seq, Side, SourceId, Statistic, Status, Symbol, Trade, TradingState, SCALE,
};
use zstd::stream::raw::{Decoder as ZstdDecoder, InBuffer, Operation, OutBuffer};

use crate::book::{BookError, LevelBook, OrderBook, QuoteTracker};
use crate::decoder::Decoder;
use crate::error::{Error, Result};

const FORMAT: &str = "dbn";
/// zstd frame magic, little-endian on the wire.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// The DBN prefix: `DBN` then the version byte.
const DBN_MAGIC: &[u8; 3] = b"DBN";
/// Highest DBN version this decoder reads (the `dbn` crate's v3 record header).
const MAX_VERSION: u8 = 3;
const NS_PER_DAY: u64 = 86_400_000_000_000;

/// The source id for a DBN dataset name: the dataset itself when it is a valid id (every
/// Databento dataset is, e.g. `GLBX.MDP3`), else its valid characters (others become `_`),
/// cut to 16 characters; `DBN` for an empty name.
pub fn source_id_for_dataset(dataset: &str) -> SourceId {
    let cleaned: String = dataset
        .chars()
        .take(SourceId::LEN)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect();
    SourceId::new(&cleaned).unwrap_or_else(|_| default_source())
}

fn default_source() -> SourceId {
    // A constant that satisfies SourceId's rules; `new` cannot refuse it.
    SourceId::new("DBN").unwrap_or_else(|_| unreachable!("constant source id is valid"))
}

/// How the raw input is being read.
enum Stage {
    /// Fewer than four bytes seen: cannot tell plain DBN from zstd yet.
    Detect,
    /// Plain DBN bytes.
    Plain,
    /// zstd frames; the last `run` hint (0 at a frame boundary).
    Zstd(Box<ZstdDecoder<'static>>, usize),
}

/// Per-instrument book state (created on an instrument's first book-relevant record).
#[derive(Default)]
struct InstrumentBook {
    /// MBO orders, aggregated into levels.
    orders: Option<OrderBook>,
    /// MBP-10's top ten levels as last reported.
    depth: Option<LevelBook>,
    /// Emits a quote only when the best bid/offer changed.
    tracker: QuoteTracker,
    /// Last quote emitted from MBP-1-style records (their own BBO, no book needed).
    last_quote: Option<Quote>,
}

/// One symbology interval of the metadata: `[start_day, end_day)` in days since the epoch.
#[derive(Debug, Clone, Copy)]
struct Interval {
    start_day: i64,
    end_day: i64,
    sym: Symbol,
}

/// Instrument ids are small integers the venue assigns: the books' multiply-shift hasher.
type IdMap<V> = HashMap<u32, V, BuildHasherDefault<crate::book::IdHasher>>;

/// Counters behind [`Decoder::message_counts`], kept as plain integers on the hot path.
#[derive(Debug, Clone)]
struct Counts {
    by_rtype: [u64; 256],
    mbo_actions: [u64; 8],
    unknown_order: u64,
    duplicate_order: u64,
    no_side: u64,
}

const MBO_ACTIONS: [u8; 8] = [b'A', b'C', b'M', b'R', b'T', b'F', b'N', b'?'];

impl Default for Counts {
    fn default() -> Self {
        Counts { by_rtype: [0; 256], mbo_actions: [0; 8], unknown_order: 0, duplicate_order: 0, no_side: 0 }
    }
}

/// Everything except the `dbn` state machine, so a record borrowed from the machine can be
/// mapped while this state is mutated.
struct Mapper {
    src: SourceId,
    src_fixed: bool,
    books: bool,
    strict: bool,
    version: u8,
    schema: Option<Schema>,
    dataset: Option<String>,
    /// Instrument id to symbol from definition and live symbol-mapping records.
    defs: IdMap<Symbol>,
    /// Instrument id to the metadata's date intervals.
    intervals: IdMap<Vec<Interval>>,
    instruments: IdMap<InstrumentBook>,
    /// The last symbol resolved: `(instrument id, UTC day, symbol)`. Records of one
    /// instrument come in runs, so this skips the map lookups of most records.
    last_sym: Option<(u32, u64, Symbol)>,
    counts: Counts,
    /// Byte offset in the (decompressed) DBN stream of the next record, for errors.
    offset: u64,
}

/// Largest DBN metadata header accepted (32 MiB): far above real files (a day of symbol
/// mappings for a whole venue is a few MiB), and a bound on what a corrupt length field can
/// make the decoder allocate.
const MAX_METADATA_LEN: usize = 32 << 20;

/// A sans-I/O DBN decoder (see the module docs for the mapping).
pub struct DbnDecoder {
    fsm: DbnFsm,
    stage: Stage,
    /// The first bytes of the DBN stream were checked (prefix, version).
    checked: bool,
    /// Records only, no metadata header.
    fragment: bool,
    /// Raw input seen, for errors before anything decodes.
    raw_len: u64,
    /// DBN bytes (after decompression) written into the state machine.
    written: u64,
    /// The first raw bytes, until there are enough to tell the input's kind.
    held: Vec<u8>,
    /// An earlier error stopped the decoder.
    failed: bool,
    /// The state machine's buffer starts at a record boundary (metadata done, or a
    /// fragment), so record lengths can be checked before it sees them.
    in_records: bool,
    m: Mapper,
}

impl std::fmt::Debug for DbnDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbnDecoder")
            .field("src", &self.m.src)
            .field("version", &self.m.version)
            .field("schema", &self.m.schema)
            .field("books", &self.m.books)
            .field("fragment", &self.fragment)
            .finish_non_exhaustive()
    }
}

impl Default for DbnDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl DbnDecoder {
    /// A decoder for a DBN stream that starts with its metadata header (a `.dbn` file, plain
    /// or zstd-compressed, or a live session's byte stream). Books on.
    pub fn new() -> Self {
        // `AsIs` with the default (v3) header accepts versions 1 to 3 and never upgrades.
        let fsm = DbnFsm::builder().upgrade_policy(VersionUpgradePolicy::AsIs).build();
        Self::with_fsm(fsm, false, default_source(), false, 0)
    }

    /// A decoder for a DBN *fragment*: records of DBN `version` (1 to 3) with no metadata
    /// header, as Databento's `.dbn.frag` files and the `dbn` crate's record-only streams
    /// are. A fragment names no dataset, so the source id is given; its symbols come from
    /// definition records only (else the instrument id).
    pub fn fragment(version: u8, source: SourceId) -> Result<Self> {
        if !(1..=MAX_VERSION).contains(&version) {
            return Err(Error::Config(format!(
                "DBN fragment version {version} is not supported; give the version the records were written in, 1 to {MAX_VERSION}"
            )));
        }
        let fsm = DbnFsm::builder()
            .upgrade_policy(VersionUpgradePolicy::AsIs)
            .skip_metadata(true)
            .input_dbn_version(Some(version))
            .and_then(|b| b.build());
        Ok(Self::with_fsm(fsm, true, source, true, version))
    }

    fn with_fsm(fsm: dbn::Result<DbnFsm>, fragment: bool, src: SourceId, src_fixed: bool, version: u8) -> Self {
        // Building fails only for a policy/version combination that the constructors above
        // never ask for; fall back to the default machine rather than panic.
        let fsm = fsm.unwrap_or_default();
        DbnDecoder {
            fsm,
            stage: Stage::Detect,
            checked: false,
            fragment,
            raw_len: 0,
            written: 0,
            held: Vec::with_capacity(4),
            failed: false,
            in_records: fragment,
            m: Mapper {
                src,
                src_fixed,
                books: true,
                strict: false,
                version,
                schema: None,
                dataset: None,
                defs: IdMap::default(),
                intervals: IdMap::default(),
                instruments: IdMap::default(),
                last_sym: None,
                counts: Counts::default(),
                offset: 0,
            },
        }
    }

    /// Books on (default): derived `Level`, `Quote` and `Trade` records follow each DBN
    /// record's own record. Off: exactly one record per DBN record that has one (see the
    /// module table), for comparison with other DBN parsers.
    pub fn with_books(mut self, on: bool) -> Self {
        self.m.books = on;
        self
    }

    /// Strict books: an MBO event on an unknown order id, or an add of an id already
    /// resting, is an [`Error::Book`] instead of being counted and tolerated.
    pub fn with_strict_books(mut self, on: bool) -> Self {
        self.m.strict = on;
        self
    }

    /// Uses `src` as the source id instead of the one derived from the dataset.
    pub fn with_source(mut self, src: SourceId) -> Self {
        self.m.src = src;
        self.m.src_fixed = true;
        self
    }

    /// The source id of the records (known once the metadata header has been decoded,
    /// or given).
    pub fn source(&self) -> SourceId {
        self.m.src
    }

    /// The DBN version of the input (0 until the metadata header has been decoded).
    pub fn version(&self) -> u8 {
        self.m.version
    }

    /// The metadata's dataset, once decoded.
    pub fn dataset(&self) -> Option<&str> {
        self.m.dataset.as_deref()
    }

    /// The metadata's schema, once decoded (`None` for mixed-schema streams).
    pub fn schema(&self) -> Option<Schema> {
        self.m.schema
    }

    fn parse_err(&self, what: String) -> Error {
        Error::Parse { format: FORMAT, offset: self.m.offset, what }
    }

    /// Classifies the first four bytes of the DBN stream before the state machine sees them,
    /// so that a wrong input gets an error that says what it is and what to do.
    fn check_prefix(&self, head: &[u8]) -> Result<()> {
        let is_dbn = &head[..3] == DBN_MAGIC;
        if self.fragment {
            if is_dbn {
                return Err(self.parse_err(
                    "this input starts with a DBN metadata header, not a fragment; decode it with DbnDecoder::new()"
                        .into(),
                ));
            }
            return Ok(());
        }
        if is_dbn {
            let v = head[3];
            if v == 0 || v > MAX_VERSION + 1 {
                return Err(self.parse_err(format!(
                    "DBN version byte is {v}; this is not a DBN stream this decoder knows (versions 1 to {MAX_VERSION})"
                )));
            }
            if v > MAX_VERSION {
                return Err(self.parse_err(format!(
                    "DBN version {v} is not supported yet (versions 1 to {MAX_VERSION}); convert it with `dbn --output-version {MAX_VERSION}` or ask for v{v} support"
                )));
            }
            return Ok(());
        }
        let words = usize::from(head[0]);
        if plausible_record(head[1], words * 4) {
            return Err(self.parse_err(format!(
                "no DBN metadata header: this looks like a fragment (records only, first record rtype 0x{:02x}, {} bytes); decode it in fragment mode (DbnDecoder::fragment, given the DBN version it was written in)",
                head[1],
                words * 4
            )));
        }
        Err(self.parse_err(format!(
            "not a DBN stream: starts with {:02x} {:02x} {:02x} {:02x}, expected \"DBN\" (or a zstd frame holding it)",
            head[0], head[1], head[2], head[3]
        )))
    }

    /// Writes decompressed DBN bytes into the state machine, decoding as it goes.
    fn push_plain(&mut self, mut data: &[u8], out: &mut Vec<Record>) -> Result<()> {
        while !data.is_empty() {
            let space = self.fsm.space();
            if space.is_empty() {
                // Only when a huge metadata header is still arriving: let it grow.
                self.fsm.write_all(data);
                self.written += data.len() as u64;
                return self.drain(out);
            }
            let n = space.len().min(data.len());
            space[..n].copy_from_slice(&data[..n]);
            self.fsm.fill(n);
            self.written += n as u64;
            data = &data[n..];
            self.drain(out)?;
        }
        Ok(())
    }

    /// Decompresses `data` straight into the state machine's buffer.
    fn push_zstd(&mut self, data: &[u8], out: &mut Vec<Record>) -> Result<()> {
        let mut input = InBuffer::around(data);
        loop {
            let Stage::Zstd(z, hint) = &mut self.stage else { return Ok(()) };
            let space = self.fsm.space();
            let cap = space.len();
            let mut output = OutBuffer::around(space);
            let consumed_before = input.pos();
            let res = z.run(&mut input, &mut output);
            let produced = output.pos();
            match res {
                // A call that moved nothing reports the *next* frame's header size even at a
                // frame boundary; only a call that made progress says where the stream is.
                Ok(h) if produced > 0 || input.pos() > consumed_before => *hint = h,
                Ok(_) => {}
                Err(e) => {
                    return Err(self.parse_err(format!(
                        "zstd data is corrupt ({e}) after {} compressed bytes; check the file was copied whole",
                        self.raw_len
                    )))
                }
            }
            self.fsm.fill(produced);
            self.written += produced as u64;
            self.drain(out)?;
            // All input consumed and the output not filled: zstd has nothing more to give.
            if input.pos() == data.len() && produced < cap {
                return Ok(());
            }
        }
    }

    /// Decodes every complete record buffered in the state machine.
    fn drain(&mut self, out: &mut Vec<Record>) -> Result<()> {
        if !self.checked {
            let head = self.fsm.data();
            if head.len() < 4 {
                return Ok(());
            }
            let mut h = [0u8; 4];
            h.copy_from_slice(&head[..4]);
            let declared = head.get(4..8).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            self.check_prefix(&h)?;
            if !self.fragment {
                // `dbn` sizes its buffer from the declared metadata length before any of it
                // arrives: refuse a length no real file has rather than allocate up to 4 GiB.
                let Some(declared) = declared else { return Ok(()) };
                if declared as usize > MAX_METADATA_LEN {
                    return Err(self.parse_err(format!(
                        "DBN metadata header declares {declared} bytes, over the {MAX_METADATA_LEN} this decoder accepts; the stream is corrupt or not DBN"
                    )));
                }
            }
            self.checked = true;
        }
        loop {
            if self.in_records {
                self.check_record_lengths()?;
            }
            match self.fsm.process_batch() {
                ProcessResult::ReadMore(_) => return Ok(()),
                ProcessResult::Metadata(md) => {
                    self.in_records = true;
                    self.m.on_metadata(md);
                    // The first record starts where the buffered, unprocessed bytes begin.
                    self.m.offset = self.written - self.fsm.data().len() as u64;
                }
                ProcessResult::Record(_) => {
                    while let Some(rec) = self.fsm.next_buffered_record() {
                        self.m.on_record(rec, out)?;
                    }
                }
                ProcessResult::Err(e) => {
                    self.m.offset = self.written.saturating_sub(self.fsm.data().len() as u64);
                    return Err(self.parse_err(format!("{e}; the stream is not valid DBN from here on")));
                }
            }
        }
    }

    /// Refuses a buffered record whose length byte is not a multiple of 8 bytes of at least
    /// a record header. Every DBN record is (they are `repr(C)` with 8-byte fields), and the
    /// `dbn` state machine takes the length on trust: the record after a bad one would start
    /// misaligned, which `dbn` asserts against in debug builds (a panic) and reads through a
    /// misaligned reference in release builds. Only the length bytes are read.
    fn check_record_lengths(&mut self) -> Result<()> {
        let data = self.fsm.data();
        let mut at = 0usize;
        while let Some(&words) = data.get(at) {
            let len = usize::from(words) * 4;
            if len < 16 || len % 8 != 0 {
                self.m.offset = self.written.saturating_sub((data.len() - at) as u64);
                return Err(self.parse_err(format!(
                    "DBN record declares a length of {len} bytes, which is not a multiple of 8 of at least 16; the stream is corrupt from here on"
                )));
            }
            at += len;
        }
        Ok(())
    }

    fn feed_inner(&mut self, input: &[u8], out: &mut Vec<Record>) -> Result<()> {
        self.raw_len += input.len() as u64;
        let mut input = input;
        if let Stage::Detect = self.stage {
            // Only the first four raw bytes decide between plain DBN, zstd and DBZ; they may
            // arrive one at a time, so they are held until there are four.
            let take = (4 - self.held.len()).min(input.len());
            self.held.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.held.len() < 4 {
                return Ok(());
            }
            let head = [self.held[0], self.held[1], self.held[2], self.held[3]];
            if head[1..4] == [0x2A, 0x4D, 0x18] && head[0] & 0xF0 == 0x50 {
                return Err(self.parse_err(
                    "this is Databento's legacy DBZ format (a zstd skippable frame of metadata, then zstd records), which is not supported; convert it to DBN with an older dbn CLI that still reads DBZ (`dbn FILE.dbz --dbn -o FILE.dbn`)".into(),
                ));
            }
            let held = std::mem::take(&mut self.held);
            if head == ZSTD_MAGIC {
                self.stage = Stage::Zstd(Box::new(self.new_zstd()?), 1);
                self.push_zstd(&held, out)?;
            } else {
                self.stage = Stage::Plain;
                self.push_plain(&held, out)?;
            }
        }
        match self.stage {
            Stage::Plain => self.push_plain(input, out),
            Stage::Zstd(..) => self.push_zstd(input, out),
            Stage::Detect => Ok(()),
        }
    }

    fn new_zstd(&self) -> Result<ZstdDecoder<'static>> {
        ZstdDecoder::new().map_err(|e| Error::Io { what: "creating a zstd decoder".into(), source: e })
    }
}

/// True when `len` bytes is the size of a record of type `rt` in some DBN version (with
/// or without the 8-byte `ts_out`): how a fragment (records with no metadata) is recognised.
fn plausible_record(rt: u8, len: usize) -> bool {
    let sizes: &[usize] = match rt {
        0x00 => &[48],                      // trades
        0x01 | 0xB1 | 0xC0..=0xC5 => &[80], // mbp-1, tbbo, cmbp-1, bbo, cbbo
        0x0A => &[368],                     // mbp-10
        0x11 | 0x20..=0x24 | 0xA0 => &[56], // ohlcv, mbo
        0x12 => &[40],                      // status
        0x13 => &[360, 400, 520],           // definition v1, v2, v3
        0x14 => &[112],                     // imbalance
        0x15 | 0x17 => &[80, 320],          // error, system
        0x16 => &[80, 176],                 // symbol mapping
        0x18 => &[64, 80],                  // statistics
        _ => &[],
    };
    sizes.iter().any(|s| *s == len || *s + 8 == len)
}

impl Decoder for DbnDecoder {
    fn feed(&mut self, input: &[u8], out: &mut Vec<Record>) -> Result<()> {
        if self.failed {
            return Err(self.parse_err(
                "the decoder stopped at an earlier error; start a new DbnDecoder at the beginning of a stream".into(),
            ));
        }
        let r = self.feed_inner(input, out);
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn finish(&mut self, out: &mut Vec<Record>) -> Result<()> {
        if self.failed {
            return Err(self.parse_err("the decoder stopped at an earlier error".into()));
        }
        let _ = out;
        if let Stage::Detect = self.stage {
            return Err(self.parse_err(if self.raw_len == 0 {
                "empty input: no DBN data; check the path and that the capture was written".into()
            } else {
                format!("input is only {} bytes: too short to be DBN or zstd", self.raw_len)
            }));
        }
        if let Stage::Zstd(_, hint) = &self.stage {
            if *hint != 0 {
                return Err(self.parse_err(format!(
                    "the zstd stream ends inside a frame ({hint} more bytes expected): the file is truncated; copy it again"
                )));
            }
        }
        let left = self.fsm.data().len();
        if !self.checked {
            return Err(self.parse_err(format!(
                "the stream ends after {left} bytes, before a DBN header could be read: the file is truncated"
            )));
        }
        if !self.fragment && !self.fsm.has_decoded_metadata() {
            return Err(self.parse_err(format!(
                "the stream ends inside the DBN metadata header ({left} bytes of it): the file is truncated"
            )));
        }
        if left > 0 {
            return Err(self.parse_err(format!(
                "the stream ends inside a record ({left} bytes of it left over): the file is truncated or was cut mid-record"
            )));
        }
        Ok(())
    }

    fn message_counts(&self) -> Vec<(String, u64)> {
        let c = &self.m.counts;
        let mut v = Vec::new();
        for (rt, n) in c.by_rtype.iter().enumerate() {
            if *n > 0 {
                let name = dbn::RType::try_from(rt as u8)
                    .map(|r| r.as_str().to_owned())
                    .unwrap_or(format!("rtype_0x{rt:02x}"));
                v.push((name, *n));
            }
        }
        for (i, n) in c.mbo_actions.iter().enumerate() {
            if *n > 0 {
                v.push((format!("mbo_{}", MBO_ACTIONS[i] as char), *n));
            }
        }
        for (name, n) in
            [("unknown_order", c.unknown_order), ("duplicate_order", c.duplicate_order), ("no_side", c.no_side)]
        {
            if n > 0 {
                v.push((name.to_owned(), n));
            }
        }
        v
    }
}

/// `UNDEF_PRICE` to [`Px::NULL`] (the same sentinel); other values are already 1e-9.
fn px(raw: i64) -> Px {
    if raw == UNDEF_PRICE {
        Px::NULL
    } else {
        Px(raw)
    }
}

fn side_of(c: c_char) -> Side {
    match c as u8 {
        b'B' => Side::Buy,
        b'A' => Side::Sell,
        _ => Side::None,
    }
}

/// Copies printable ASCII of a C string field (up to its NUL) into a zero-padded array.
fn ascii_field<const N: usize>(src: &[c_char]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut n = 0;
    for &c in src {
        let b = c as u8;
        if b == 0 || n == N {
            break;
        }
        if (0x20..=0x7e).contains(&b) {
            out[n] = b;
            n += 1;
        }
    }
    out
}

/// The text of a C string field, or `None` if it is not a valid [`Symbol`].
fn symbol_field(src: &[c_char]) -> Option<Symbol> {
    let bytes: Vec<u8> = src.iter().map(|c| *c as u8).take_while(|b| *b != 0).collect();
    let s = std::str::from_utf8(&bytes).ok()?;
    Symbol::new(s.trim_end()).ok()
}

fn instrument_kind(class: c_char) -> InstrumentKind {
    match class as u8 {
        b'K' => InstrumentKind::Equity,
        b'F' => InstrumentKind::Future,
        b'C' | b'P' => InstrumentKind::Option,
        b'M' | b'S' | b'T' => InstrumentKind::Spread,
        b'X' | b'Y' => InstrumentKind::Spot,
        _ => InstrumentKind::Other,
    }
}

/// Maps a DBN status action (and, for actions that name no state, the `is_trading` and
/// `is_quoting` flags) to the protocol's trading state.
fn trading_state(action: u16, is_trading: c_char, is_quoting: c_char) -> TradingState {
    match action {
        1 => TradingState::PreOpen,
        2 | 4 | 5 | 6 => TradingState::Auction, // pre-cross, cross, rotation, price indication
        3 => TradingState::Quoting,
        7 => TradingState::Trading,
        8 | 10 => TradingState::Halted, // halt, suspend
        9 => TradingState::Paused,
        12 | 13 | 15 => TradingState::Closed, // close, post-close, not available for trading
        // none, pre-close, SSR change: the state follows the flags.
        _ => match (is_trading as u8, is_quoting as u8) {
            (b'Y', _) => TradingState::Trading,
            (b'N', b'Y') => TradingState::Quoting,
            (b'N', b'N') => TradingState::Closed,
            _ => TradingState::Unknown,
        },
    }
}

fn interval_ns(rt: u8, schema: Option<Schema>) -> u64 {
    const S: u64 = 1_000_000_000;
    match rt {
        rtype::OHLCV_1S => S,
        rtype::OHLCV_1M => 60 * S,
        rtype::OHLCV_1H => 3_600 * S,
        rtype::OHLCV_1D | rtype::OHLCV_EOD => 86_400 * S,
        _ => match schema {
            Some(Schema::Ohlcv1S) => S,
            Some(Schema::Ohlcv1M) => 60 * S,
            Some(Schema::Ohlcv1H) => 3_600 * S,
            Some(Schema::Ohlcv1D) | Some(Schema::OhlcvEod) => 86_400 * S,
            _ => 0,
        },
    }
}

fn quote_of(p: &dbn::BidAskPair) -> Quote {
    Quote {
        bid_px: if p.bid_px == UNDEF_PRICE { Px::NULL } else { Px(p.bid_px) },
        bid_qty: if p.bid_px == UNDEF_PRICE { Qty::ZERO } else { Qty::from_units(i64::from(p.bid_sz)) },
        ask_px: if p.ask_px == UNDEF_PRICE { Px::NULL } else { Px(p.ask_px) },
        ask_qty: if p.ask_px == UNDEF_PRICE { Qty::ZERO } else { Qty::from_units(i64::from(p.ask_sz)) },
        bid_count: p.bid_ct,
        ask_count: p.ask_ct,
    }
}

fn cquote_of(p: &dbn::ConsolidatedBidAskPair) -> Quote {
    Quote {
        bid_px: if p.bid_px == UNDEF_PRICE { Px::NULL } else { Px(p.bid_px) },
        bid_qty: if p.bid_px == UNDEF_PRICE { Qty::ZERO } else { Qty::from_units(i64::from(p.bid_sz)) },
        ask_px: if p.ask_px == UNDEF_PRICE { Px::NULL } else { Px(p.ask_px) },
        ask_qty: if p.ask_px == UNDEF_PRICE { Qty::ZERO } else { Qty::from_units(i64::from(p.ask_sz)) },
        bid_count: 0,
        ask_count: 0,
    }
}

/// `u32` sizes always fit [`Qty`] (±9.2e9 units).
fn qty32(v: u32) -> Qty {
    Qty::from_units(i64::from(v))
}

/// Days since the Unix epoch of a `time::Date` (as the `dbn` crate's metadata holds dates).
fn epoch_day(julian: i32) -> i64 {
    // Julian day 2440588 is 1970-01-01.
    i64::from(julian) - 2_440_588
}

impl Mapper {
    fn err(&self, what: String) -> Error {
        Error::Parse { format: FORMAT, offset: self.offset, what }
    }

    fn on_metadata(&mut self, md: dbn::Metadata) {
        self.version = md.version;
        self.schema = md.schema;
        if !self.src_fixed {
            self.src = source_id_for_dataset(&md.dataset);
        }
        // Mappings pair a `stype_in` symbol with `stype_out` symbols by date; the numeric
        // side is the instrument id.
        let id_out = md.stype_out == SType::InstrumentId;
        let id_in = md.stype_in == Some(SType::InstrumentId);
        for mapping in &md.mappings {
            for iv in &mapping.intervals {
                let (id_text, sym_text) = if id_out {
                    (iv.symbol.as_str(), mapping.raw_symbol.as_str())
                } else if id_in {
                    (mapping.raw_symbol.as_str(), iv.symbol.as_str())
                } else {
                    continue;
                };
                let (Ok(id), Ok(sym)) = (id_text.parse::<u32>(), Symbol::new(sym_text)) else { continue };
                self.intervals.entry(id).or_default().push(Interval {
                    start_day: epoch_day(iv.start_date.to_julian_day()),
                    end_day: epoch_day(iv.end_date.to_julian_day()),
                    sym,
                });
            }
        }
        self.dataset = Some(md.dataset);
    }

    fn symbol(&mut self, id: u32, ts_event: u64) -> Symbol {
        let day = ts_event / NS_PER_DAY;
        if let Some((last_id, last_day, sym)) = self.last_sym {
            if last_id == id && last_day == day {
                return sym;
            }
        }
        let sym = self.resolve_symbol(id, ts_event);
        self.last_sym = Some((id, day, sym));
        sym
    }

    fn resolve_symbol(&self, id: u32, ts_event: u64) -> Symbol {
        if let Some(s) = self.defs.get(&id) {
            return *s;
        }
        if let Some(ivs) = self.intervals.get(&id) {
            let day = (ts_event / NS_PER_DAY) as i64;
            if let Some(iv) = ivs.iter().find(|iv| iv.start_day <= day && day < iv.end_day) {
                return iv.sym;
            }
            let before = ivs.iter().filter(|iv| iv.start_day <= day).max_by_key(|iv| iv.start_day);
            if let Some(iv) = before.or_else(|| ivs.iter().min_by_key(|iv| iv.start_day)) {
                return iv.sym;
            }
        }
        let mut buf = itoa_u32(id);
        Symbol::new(buf.as_str()).unwrap_or_else(|_| {
            buf = itoa_u32(0);
            Symbol::new(buf.as_str()).unwrap_or_else(|_| unreachable!("digits are a valid symbol"))
        })
    }

    fn units(&self, v: i64, what: &str) -> Result<Qty> {
        v.checked_mul(SCALE).map(Qty).ok_or_else(|| {
            self.err(format!("{what} {v} is beyond the codec's quantity range (±9223372036 units); this record cannot be represented"))
        })
    }

    fn push(&self, out: &mut Vec<Record>, id: u32, sym: Symbol, ts_event: u64, body: Body) {
        out.push(Record::new(
            Meta { src: self.src, seq: Seq(0), instrument: InstrumentId(id), sym, ts_event, ts_ingest: 0 },
            body,
        ));
    }

    fn book_error(&mut self, e: BookError) -> Result<()> {
        match e {
            BookError::DuplicateOrder(_) => self.counts.duplicate_order += 1,
            BookError::NoSide => self.counts.no_side += 1,
            _ => self.counts.unknown_order += 1,
        }
        if self.strict {
            Err(Error::Book(e))
        } else {
            Ok(())
        }
    }

    fn on_record(&mut self, rec: RecordRef<'_>, out: &mut Vec<Record>) -> Result<()> {
        let hd = rec.header();
        let rt = hd.rtype;
        let size = hd.record_size();
        self.counts.by_rtype[usize::from(rt)] += 1;
        let r = self.map_record(rec, rt, out);
        self.offset += size as u64;
        r
    }

    fn map_record(&mut self, rec: RecordRef<'_>, rt: u8, out: &mut Vec<Record>) -> Result<()> {
        let hd = rec.header();
        let (id, ts) = (hd.instrument_id, hd.ts_event);
        let short = |e: dbn::Error| self.err(format!("record of rtype 0x{rt:02x} is malformed: {e}"));
        match rt {
            rtype::MBO => {
                let m = rec.try_get::<dbn::MboMsg>().map_err(short)?;
                self.on_mbo(m, out)
            }
            rtype::MBP_0 => {
                let t = rec.try_get::<dbn::TradeMsg>().map_err(short)?;
                let sym = self.symbol(id, ts);
                let body =
                    Body::Trade(Trade { px: px(t.price), qty: qty32(t.size), side: side_of(t.side), match_id: 0 });
                self.push(out, id, sym, ts, body);
                Ok(())
            }
            rtype::MBP_1 | rtype::TBBO => {
                let m = rec.try_get::<dbn::Mbp1Msg>().map_err(short)?;
                let trade = (m.action as u8 == b'T').then(|| (px(m.price), qty32(m.size), side_of(m.side)));
                self.on_top(id, ts, quote_of(&m.levels[0]), trade, out);
                Ok(())
            }
            rtype::CMBP_1 | rtype::TCBBO => {
                let m = rec.try_get::<dbn::Cmbp1Msg>().map_err(short)?;
                let trade = (m.action as u8 == b'T').then(|| (px(m.price), qty32(m.size), side_of(m.side)));
                self.on_top(id, ts, cquote_of(&m.levels[0]), trade, out);
                Ok(())
            }
            rtype::BBO_1S | rtype::BBO_1M => {
                let m = rec.try_get::<dbn::BboMsg>().map_err(short)?;
                self.on_top(id, ts, quote_of(&m.levels[0]), None, out);
                Ok(())
            }
            rtype::CBBO_1S | rtype::CBBO_1M => {
                let m = rec.try_get::<dbn::CbboMsg>().map_err(short)?;
                self.on_top(id, ts, cquote_of(&m.levels[0]), None, out);
                Ok(())
            }
            rtype::MBP_10 => {
                let m = rec.try_get::<dbn::Mbp10Msg>().map_err(short)?;
                self.on_mbp10(m, out);
                Ok(())
            }
            rtype::OHLCV_1S
            | rtype::OHLCV_1M
            | rtype::OHLCV_1H
            | rtype::OHLCV_1D
            | rtype::OHLCV_EOD
            | rtype::OHLCV_DEPRECATED => {
                let b = rec.try_get::<dbn::OhlcvMsg>().map_err(short)?;
                let volume =
                    i64::try_from(b.volume).map_err(|_| ()).and_then(|v| self.units(v, "volume").map_err(|_| ()));
                let volume = volume.map_err(|()| {
                    self.err(format!(
                        "bar volume {} is beyond the codec's quantity range (±9223372036 units)",
                        b.volume
                    ))
                })?;
                let body = Body::Bar(Bar {
                    interval_ns: interval_ns(rt, self.schema),
                    open: px(b.open),
                    high: px(b.high),
                    low: px(b.low),
                    close: px(b.close),
                    volume,
                });
                let sym = self.symbol(id, ts);
                self.push(out, id, sym, ts, body);
                Ok(())
            }
            rtype::STATUS => {
                let s = rec.try_get::<dbn::StatusMsg>().map_err(short)?;
                let mut reason = [0u8; 8];
                if s.reason != 0 {
                    let digits = itoa_u32(u32::from(s.reason));
                    let d = digits.as_str().as_bytes();
                    reason[..d.len()].copy_from_slice(d);
                }
                let state = trading_state(s.action, s.is_trading, s.is_quoting);
                let sym = self.symbol(id, ts);
                self.push(out, id, sym, ts, Body::Status(Status { state, reason }));
                Ok(())
            }
            rtype::INSTRUMENT_DEF => {
                let (body, raw) = match self.version {
                    1 => def_body(rec.try_get::<v1::InstrumentDefMsg>().map_err(short)?.into()),
                    2 => def_body(rec.try_get::<v2::InstrumentDefMsg>().map_err(short)?.into()),
                    _ => def_body(rec.try_get::<v3::InstrumentDefMsg>().map_err(short)?.into()),
                };
                if let Some(sym) = raw {
                    self.defs.insert(id, sym);
                    self.last_sym = None;
                }
                let sym = self.symbol(id, ts);
                self.push(out, id, sym, ts, Body::Instrument(body));
                Ok(())
            }
            rtype::STATISTICS => {
                let (stat_type, price, qty, action) = if self.version < 3 {
                    let s = rec.try_get::<v1::StatMsg>().map_err(short)?;
                    let q = if s.quantity == v1::UNDEF_STAT_QUANTITY { None } else { Some(i64::from(s.quantity)) };
                    (s.stat_type, s.price, q, s.update_action)
                } else {
                    let s = rec.try_get::<v3::StatMsg>().map_err(short)?;
                    let q = if s.quantity == v3::UNDEF_STAT_QUANTITY { None } else { Some(s.quantity) };
                    (s.stat_type, s.price, q, s.update_action)
                };
                let qty = match qty {
                    None => Qty(i64::MAX),
                    Some(q) => self.units(q, "statistic quantity")?,
                };
                let sym = self.symbol(id, ts);
                self.push(out, id, sym, ts, Body::Statistic(Statistic { stat_type, px: px(price), qty, action }));
                Ok(())
            }
            rtype::IMBALANCE => {
                let m = rec.try_get::<dbn::ImbalanceMsg>().map_err(short)?;
                let size = |v: u32| if v == dbn::UNDEF_ORDER_SIZE { Qty::ZERO } else { qty32(v) };
                let body = Body::Imbalance(Imbalance {
                    side: side_of(m.side),
                    paired_qty: size(m.paired_qty),
                    imbalance_qty: size(m.total_imbalance_qty),
                    ref_px: px(m.ref_price),
                    near_px: px(m.cont_book_clr_price),
                    far_px: px(m.auct_interest_clr_price),
                    cross_type: m.auction_type as u8,
                });
                let sym = self.symbol(id, ts);
                self.push(out, id, sym, ts, body);
                Ok(())
            }
            rtype::SYMBOL_MAPPING => {
                let sym = if self.version == 1 {
                    symbol_field(&rec.try_get::<v1::SymbolMappingMsg>().map_err(short)?.stype_out_symbol)
                } else {
                    symbol_field(&rec.try_get::<v3::SymbolMappingMsg>().map_err(short)?.stype_out_symbol)
                };
                if let Some(sym) = sym {
                    self.defs.insert(id, sym);
                    self.last_sym = None;
                }
                Ok(())
            }
            // System and error messages of live sessions, and record types added after v3:
            // counted, nothing to publish.
            _ => Ok(()),
        }
    }

    fn inst(&mut self, id: u32) -> &mut InstrumentBook {
        self.instruments.entry(id).or_default()
    }

    /// MBP-1-style records: the record's own top of book, and a trade for action `T`.
    fn on_top(&mut self, id: u32, ts: u64, q: Quote, trade: Option<(Px, Qty, Side)>, out: &mut Vec<Record>) {
        let sym = self.symbol(id, ts);
        if self.books {
            // The BBO of a trade record is the one just before the trade: it goes first.
            let ib = self.inst(id);
            let changed = ib.last_quote != Some(q);
            ib.last_quote = Some(q);
            if changed {
                self.push(out, id, sym, ts, Body::Quote(q));
            }
            if let Some((p, n, side)) = trade {
                self.push(out, id, sym, ts, Body::Trade(Trade { px: p, qty: n, side, match_id: 0 }));
            }
        } else if let Some((p, n, side)) = trade {
            self.push(out, id, sym, ts, Body::Trade(Trade { px: p, qty: n, side, match_id: 0 }));
        } else {
            self.push(out, id, sym, ts, Body::Quote(q));
        }
    }

    fn on_mbp10(&mut self, m: &dbn::Mbp10Msg, out: &mut Vec<Record>) {
        let (id, ts) = (m.hd.instrument_id, m.hd.ts_event);
        let sym = self.symbol(id, ts);
        let action = m.action as u8;
        let side = side_of(m.side);
        if action == b'T' {
            let body = Body::Trade(Trade { px: px(m.price), qty: qty32(m.size), side, match_id: 0 });
            self.push(out, id, sym, ts, body);
        }
        if !self.books {
            if matches!(action, b'A' | b'C' | b'M') && side != Side::None {
                let (qty, count) = depth_level(&m.levels, side, m.price).unwrap_or((Qty::ZERO, 0));
                let body = Body::Level(Level { side, px: px(m.price), qty, count });
                self.push(out, id, sym, ts, body);
            }
            return;
        }
        // Books: the record's ten levels replace the previous ten; every difference is a
        // level record (removals first, then new states, each side best first).
        let (src, books) = (self.src, self.books);
        let ib = self.inst(id);
        let book = ib.depth.get_or_insert_with(LevelBook::new);
        let mut changes: Vec<Level> = Vec::new();
        for s in [Side::Buy, Side::Sell] {
            let new_levels: Vec<(Px, Qty, u32)> = m
                .levels
                .iter()
                .filter_map(|l| {
                    let (p, sz, ct) =
                        if s == Side::Buy { (l.bid_px, l.bid_sz, l.bid_ct) } else { (l.ask_px, l.ask_sz, l.ask_ct) };
                    (p != UNDEF_PRICE && sz > 0).then(|| (Px(p), qty32(sz), ct))
                })
                .collect();
            let gone: Vec<Px> = book.levels(s).map(|l| l.0).filter(|p| !new_levels.iter().any(|n| n.0 == *p)).collect();
            for p in gone {
                book.set(s, p, Qty::ZERO, 0);
                changes.push(Level { side: s, px: p, qty: Qty::ZERO, count: 0 });
            }
            for (p, q, c) in new_levels {
                if book.set(s, p, q, c) {
                    changes.push(Level { side: s, px: p, qty: q, count: c });
                }
            }
        }
        let quote = ib.tracker.update(book);
        debug_assert!(books);
        for l in changes {
            out.push(Record::new(
                Meta { src, seq: Seq(0), instrument: InstrumentId(id), sym, ts_event: ts, ts_ingest: 0 },
                Body::Level(l),
            ));
        }
        if let Some(q) = quote {
            self.push(out, id, sym, ts, Body::Quote(q));
        }
    }

    fn on_mbo(&mut self, m: &dbn::MboMsg, out: &mut Vec<Record>) -> Result<()> {
        let (id, ts) = (m.hd.instrument_id, m.hd.ts_event);
        let action = m.action as u8;
        let slot = MBO_ACTIONS.iter().position(|a| *a == action).unwrap_or(7);
        self.counts.mbo_actions[slot] += 1;
        let sym = self.symbol(id, ts);
        let (p, n, side, oid) = (px(m.price), qty32(m.size), side_of(m.side), m.order_id);
        let books = self.books;
        let mut levels: [Option<Level>; 2] = [None, None];
        let mut book_err = None;
        let mut body = None;
        let mut cleared: Vec<Level> = Vec::new();
        {
            let ib = self.instruments.entry(id).or_default();
            let ob = ib.orders.get_or_insert_with(OrderBook::new);
            match action {
                b'A' => {
                    body = Some(Body::OrderAdd(OrderAdd { order_id: oid, side, px: p, qty: n }));
                    match ob.add(oid, side, p, n) {
                        Ok(l) => levels[0] = Some(l),
                        Err(BookError::DuplicateOrder(_)) => {
                            book_err = Some(BookError::DuplicateOrder(oid));
                            if let Ok((_, new, old)) = ob.modify(oid, p, n) {
                                levels = [old, Some(new)];
                            }
                        }
                        Err(e) => book_err = Some(e),
                    }
                }
                b'C' => {
                    let (o_side, o_px, remaining) = match ob.reduce(oid, n) {
                        Ok((before, l)) => {
                            levels[0] = Some(l);
                            let left = Qty((before.qty.raw() - n.raw()).max(0));
                            (before.side, before.px, left)
                        }
                        Err(e) => {
                            book_err = Some(e);
                            (side, p, Qty::ZERO)
                        }
                    };
                    body = Some(Body::OrderCancel(OrderCancel {
                        order_id: oid,
                        side: o_side,
                        px: o_px,
                        cancelled: n,
                        remaining,
                    }));
                }
                b'M' => {
                    let o_side = match ob.modify(oid, p, n) {
                        Ok((old, new, old_level)) => {
                            levels = [old_level, Some(new)];
                            old.side
                        }
                        Err(e) => {
                            // A modify of an order not on the book (placed before the capture began) is taken as an add.
                            book_err = Some(e);
                            if let Ok(l) = ob.add(oid, side, p, n) {
                                levels[0] = Some(l);
                            }
                            side
                        }
                    };
                    body = Some(Body::OrderModify(OrderModify { order_id: oid, side: o_side, px: p, qty: n }));
                }
                b'R' => {
                    if books {
                        for s in [Side::Buy, Side::Sell] {
                            cleared.extend(ob.levels().levels(s).map(|(lp, _, _)| Level {
                                side: s,
                                px: lp,
                                qty: Qty::ZERO,
                                count: 0,
                            }));
                        }
                    }
                    ob.clear();
                }
                b'T' => {
                    body = Some(Body::Trade(Trade { px: p, qty: n, side, match_id: 0 }));
                }
                b'F' => {
                    let (o_side, remaining) = match ob.order(oid) {
                        Some(o) => (o.side, Qty((o.qty.raw() - n.raw()).max(0))),
                        None => {
                            book_err = Some(BookError::UnknownOrder(oid));
                            (side, Qty::ZERO)
                        }
                    };
                    body = Some(Body::OrderExecute(OrderExecute {
                        order_id: oid,
                        side: o_side,
                        px: p,
                        qty: n,
                        remaining,
                        match_id: 0,
                    }));
                }
                _ => {}
            }
        }
        if let Some(e) = book_err {
            self.book_error(e)?;
        }
        if let Some(b) = body {
            self.push(out, id, sym, ts, b);
        }
        if !books {
            return Ok(());
        }
        for l in cleared.into_iter().chain(levels.into_iter().flatten()) {
            self.push(out, id, sym, ts, Body::Level(l));
        }
        if m.flags.is_last() {
            let ib = self.inst(id);
            if let Some(ob) = ib.orders.as_ref() {
                if let Some(q) = ib.tracker.update(ob.levels()) {
                    self.push(out, id, sym, ts, Body::Quote(q));
                }
            }
        }
        Ok(())
    }
}

/// The level of `side` at raw price `price` among MBP-10's ten, if it is there.
fn depth_level(levels: &[dbn::BidAskPair; 10], side: Side, price: i64) -> Option<(Qty, u32)> {
    levels.iter().find_map(|l| match side {
        Side::Buy if l.bid_px == price && l.bid_sz > 0 => Some((qty32(l.bid_sz), l.bid_ct)),
        Side::Sell if l.ask_px == price && l.ask_sz > 0 => Some((qty32(l.ask_sz), l.ask_ct)),
        _ => None,
    })
}

/// The fields of a definition record that [`Instrument`] carries, from any DBN version.
struct DefFields<'a> {
    raw_symbol: &'a [c_char],
    instrument_class: c_char,
    currency: &'a [c_char],
    min_price_increment: i64,
    min_lot_size_round_lot: i32,
    unit_of_measure_qty: i64,
    expiration: u64,
    strike_price: i64,
    underlying: &'a [c_char],
}

macro_rules! def_fields_from {
    ($t:ty) => {
        impl<'a> From<&'a $t> for DefFields<'a> {
            fn from(d: &'a $t) -> Self {
                DefFields {
                    raw_symbol: &d.raw_symbol,
                    instrument_class: d.instrument_class,
                    currency: &d.currency,
                    min_price_increment: d.min_price_increment,
                    min_lot_size_round_lot: d.min_lot_size_round_lot,
                    unit_of_measure_qty: d.unit_of_measure_qty,
                    expiration: d.expiration,
                    strike_price: d.strike_price,
                    underlying: &d.underlying,
                }
            }
        }
    };
}
def_fields_from!(v1::InstrumentDefMsg);
def_fields_from!(v2::InstrumentDefMsg);
def_fields_from!(v3::InstrumentDefMsg);

fn def_body(d: DefFields<'_>) -> (Instrument, Option<Symbol>) {
    let lot = d.min_lot_size_round_lot;
    let body = Instrument {
        kind: instrument_kind(d.instrument_class),
        currency: ascii_field(d.currency),
        tick_size: px(d.min_price_increment),
        lot_size: if lot <= 0 || lot == i32::MAX { Qty::ZERO } else { Qty::from_units(i64::from(lot)) },
        multiplier: if d.unit_of_measure_qty == UNDEF_PRICE { 0 } else { d.unit_of_measure_qty },
        expiration: if d.expiration == dbn::UNDEF_TIMESTAMP { 0 } else { d.expiration },
        strike: px(d.strike_price),
        underlying: ascii_field(d.underlying),
    };
    (body, symbol_field(d.raw_symbol))
}

/// A small decimal rendering of a `u32` without allocation.
struct Digits {
    buf: [u8; 10],
    start: usize,
}

impl Digits {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[self.start..]).unwrap_or("0")
    }
}

fn itoa_u32(mut v: u32) -> Digits {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    Digits { buf, start: i }
}

/// Reads a DBN file (plain or zstd) and decodes it with books on; the thin I/O driver
/// around [`DbnDecoder`] for `tickmesh ingest FILE --format dbn`.
pub fn decode_file(path: &std::path::Path, dec: &mut DbnDecoder, out: &mut Vec<Record>) -> Result<()> {
    use std::io::Read;
    let io = |e| Error::Io { what: format!("reading DBN file {}", path.display()), source: e };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        dec.feed(&buf[..n], out)?;
    }
    dec.finish(out)
}

/// Entry points for `tickmesh bench ingest` and `benches/dbn.rs`: our decoder against the
/// `dbn` crate's own synchronous decoder over the same in-memory DBN bytes.
pub mod bench {
    use std::time::{Duration, Instant};

    use super::{DbnDecoder, VersionUpgradePolicy};
    use crate::decoder::Decoder;
    use crate::error::{Error, Result};

    /// The largest sample of `shared/data/dbn`, the nautilus MBO capture (13,796 records).
    pub const LARGEST_SAMPLE: &str =
        "dbn/nautilus/order_book_deltas_catalog/orderbooks_mbo_2024-05-08T00-00-00_2024-05-08T00-00-02.dbn.zst";

    /// Reads a DBN file and returns its DBN bytes, decompressed once when it is zstd, so
    /// that a benchmark measures decoding only.
    pub fn load(path: &std::path::Path) -> Result<Vec<u8>> {
        let raw =
            std::fs::read(path).map_err(|e| Error::Io { what: format!("reading {}", path.display()), source: e })?;
        if raw.starts_with(&super::ZSTD_MAGIC) {
            zstd::stream::decode_all(raw.as_slice())
                .map_err(|e| Error::Io { what: format!("decompressing {}", path.display()), source: e })
        } else {
            Ok(raw)
        }
    }

    /// Decodes `dbn` with [`DbnDecoder`] fed in 64 KiB chunks; returns the codec records made.
    pub fn ours(dbn: &[u8], books: bool) -> Result<usize> {
        let mut dec = DbnDecoder::new().with_books(books);
        let mut out = Vec::with_capacity(4096);
        let mut n = 0;
        for chunk in dbn.chunks(64 * 1024) {
            dec.feed(chunk, &mut out)?;
            n += out.len();
            out.clear();
        }
        dec.finish(&mut out)?;
        Ok(n + out.len())
    }

    /// Decodes `dbn` with the `dbn` crate's own `Decoder` (policy `AsIs`, as ours); returns
    /// the DBN records read. Each record's `ts_event` is summed so none is skipped.
    pub fn reference(dbn: &[u8]) -> Result<(usize, u64)> {
        let err = |e: dbn::Error| Error::Parse { format: "dbn", offset: 0, what: e.to_string() };
        let mut dec = dbn::decode::dbn::Decoder::with_upgrade_policy(dbn, VersionUpgradePolicy::AsIs).map_err(err)?;
        let (mut n, mut sum) = (0usize, 0u64);
        while let Some(rec) = dec.decode_ref().map_err(err)? {
            n += 1;
            sum = sum.wrapping_add(rec.header().ts_event);
        }
        Ok((n, sum))
    }

    /// Decode rates over the same bytes, in DBN records per second.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Report {
        /// DBN records in the input.
        pub dbn_records: usize,
        /// Our decoder with books on (order records, levels, quotes).
        pub ours_books_per_s: f64,
        /// Our decoder with books off (one record per DBN record).
        pub ours_plain_per_s: f64,
        /// The `dbn` crate's decoder (records only, no mapping).
        pub dbn_crate_per_s: f64,
    }

    /// Runs each decoder repeatedly for at least `min_time` and reports the rates.
    pub fn compare(dbn: &[u8], min_time: Duration) -> Result<Report> {
        let (dbn_records, _) = reference(dbn)?;
        let rate = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
            f()?; // warm-up
            let start = Instant::now();
            let mut runs = 0u64;
            while start.elapsed() < min_time || runs == 0 {
                f()?;
                runs += 1;
            }
            Ok(dbn_records as f64 * runs as f64 / start.elapsed().as_secs_f64())
        };
        Ok(Report {
            dbn_records,
            ours_books_per_s: rate(&mut || ours(dbn, true).map(drop))?,
            ours_plain_per_s: rate(&mut || ours(dbn, false).map(drop))?,
            dbn_crate_per_s: rate(&mut || reference(dbn).map(drop))?,
        })
    }
}
