//! NASDAQ TotalView-ITCH 5.0.
//!
//! Three sans-I/O layers, each usable alone:
//! * [`message`]: [`Message::parse`] views one raw message (type byte first) without
//!   copying; every message type of the specification, with its fields as accessors.
//! * [`parser`]: [`Parser`] splits NASDAQ's length-prefixed binary files (2-byte big-endian
//!   length, then the message) into messages, from input cut anywhere. MoldUDP64
//!   ([`crate::moldudp64`]) is the other framing.
//! * [`normalize`]: [`Normalizer`] keeps one order book per stock locate and turns messages
//!   into codec records (the table of what each message gives is in its docs).
//!
//! [`FileDecoder`] puts the first two together as a [`Decoder`] for files, and
//! [`time::EasternDate`] turns ITCH's "ns since midnight US/Eastern" into Unix time.
//!
//! ```
//! use tickmesh_ingest::{itch, Decoder};
//! let date = itch::EasternDate::parse("2020-01-30").unwrap();
//! let mut dec = itch::FileDecoder::new(itch::NormalizerConfig { date: Some(date), ..Default::default() });
//! // One `S` (start of messages) message, length-prefixed.
//! let mut bytes = vec![0, 12, b'S', 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, b'O'];
//! let mut out = Vec::new();
//! dec.feed(&bytes[..5], &mut out).unwrap();
//! dec.feed(&bytes[5..], &mut out).unwrap();
//! dec.finish(&mut out).unwrap();
//! assert!(out.is_empty(), "system events give no records");
//! assert_eq!(dec.message_counts(), vec![("S".to_string(), 1)]);
//! ```

pub mod message;
pub mod normalize;
pub mod parser;
pub mod time;

pub use message::{Message, MessageError, MESSAGE_TYPES};
pub use normalize::{Normalizer, NormalizerConfig};
pub use parser::Parser;
pub use time::EasternDate;

use tickmesh_codec::Record;

use crate::decoder::Decoder;
use crate::error::Result;

/// A [`Decoder`] for NASDAQ's length-prefixed ITCH 5.0 files (`MMDDYYYY.NASDAQ_ITCH50`,
/// uncompressed): [`Parser`] then [`Normalizer`].
#[derive(Debug)]
pub struct FileDecoder {
    parser: Parser,
    norm: Normalizer,
}

impl FileDecoder {
    /// A decoder at the start of a file.
    pub fn new(config: NormalizerConfig) -> Self {
        FileDecoder { parser: Parser::new(), norm: Normalizer::new(config) }
    }

    /// A decoder for the file at `path`, taking the trading date from its name (NASDAQ's
    /// `MMDDYYYY.NASDAQ_ITCH50`, or a `YYYY-MM-DD`/`YYYYMMDD` in the name or its directory)
    /// unless `config.date` is set. No date anywhere is an error that says how to give one.
    pub fn for_path(path: &str, mut config: NormalizerConfig) -> Result<Self> {
        if config.date.is_none() {
            config.date = EasternDate::from_file_name(path);
        }
        if config.date.is_none() {
            return Err(crate::Error::Config(format!(
                "{path}: ITCH timestamps count from midnight US/Eastern of the trading day, and the file name has no \
                 date (NASDAQ names files MMDDYYYY.NASDAQ_ITCH50); give the date (`--date YYYY-MM-DD`)"
            )));
        }
        Ok(Self::new(config))
    }

    /// The normalizer (books, symbols, counts).
    pub fn normalizer(&self) -> &Normalizer {
        &self.norm
    }

    /// The framing parser (offsets).
    pub fn parser(&self) -> &Parser {
        &self.parser
    }
}

impl Decoder for FileDecoder {
    fn feed(&mut self, input: &[u8], out: &mut Vec<Record>) -> Result<()> {
        let norm = &mut self.norm;
        self.parser.feed(input, |at, m| norm.apply(&m, at, out))
    }

    fn finish(&mut self, out: &mut Vec<Record>) -> Result<()> {
        // Input kept after an error is processed now; then anything left is a cut message.
        self.feed(&[], out)?;
        self.parser.finish()
    }

    fn message_counts(&self) -> Vec<(String, u64)> {
        self.norm.message_counts()
    }
}

/// Parses every message of a length-prefixed ITCH buffer without normalizing; returns the
/// number of messages. For `tickmesh bench ingest` and the criterion bench.
pub fn bench_parse(bytes: &[u8]) -> Result<u64> {
    let mut n = 0u64;
    for m in parser::messages(bytes) {
        let (_, m) = m?;
        // Touch the fields a normalizer reads first, so the parse is not optimized away.
        std::hint::black_box((m.msg_type(), m.stock_locate(), m.timestamp()));
        n += 1;
    }
    Ok(n)
}

/// Parses and normalizes a length-prefixed ITCH buffer, books included, as a live feed
/// would (64 KiB reads, records handed off and the buffer reused); returns (messages,
/// records). For `tickmesh bench ingest` and the criterion bench.
pub fn bench_parse_normalize(bytes: &[u8]) -> Result<(u64, u64)> {
    let date = EasternDate::new(2020, 1, 30)?;
    let mut dec = FileDecoder::new(NormalizerConfig { date: Some(date), ..Default::default() });
    let mut out = Vec::with_capacity(8192);
    let mut records = 0u64;
    for piece in bytes.chunks(64 * 1024) {
        dec.feed(piece, &mut out)?;
        records += out.len() as u64;
        std::hint::black_box(&out);
        out.clear();
    }
    dec.finish(&mut out)?;
    records += out.len() as u64;
    Ok((dec.parser().messages(), records))
}
