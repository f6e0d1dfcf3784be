//! tickmesh-ingest: turns venue feeds into sequenced codec records.
//!
//! # Layout
//! * [`decoder`]: [`Decoder`], the shape of every venue decoder (bytes in, records out).
//! * [`itch`]: NASDAQ TotalView-ITCH 5.0: zero-copy message views, the length-prefixed
//!   file parser, the normalizer with per-locate order books and US/Eastern dates.
//! * [`moldudp64`]: MoldUDP64 sessions with gap and duplicate detection, a UDP source.
//! * [`pcap`]: classic pcap captures of MoldUDP64/ITCH.
//! * [`dbn_feed`]: Databento DBN (plain and zstd, versions 1-3) through the `dbn` crate.
//! * [`lobster`]: LOBSTER message files, reconciled with their orderbook files.
//! * [`coinbase`], [`binance`]: WebSocket JSON adapters with snapshot/diff
//!   synchronisation, gap detection and resync; live drivers around them.
//! * [`replay`]: a local WebSocket/REST server that plays real captures to the adapters.
//! * [`book`]: [`book::OrderBook`] built into the codec's `LevelBook`, [`book::QuoteTracker`].
//! * [`synthetic`]: the deterministic synthetic feed (seed, symbols, rate).
//! * [`sequencer`]: [`Sequencer`], the one place a record's `seq` is assigned.
//! * [`pacer`]: [`Pacer`], records due at `now` for a target rate (no clock inside).
//!
//! Decoders are sans-I/O: they take bytes (or `now`) and return records; the node's thread
//! `ingest-<source>` drives them, appends to the journal and publishes.
//!
//! ```
//! use tickmesh_ingest::{synthetic::{SyntheticConfig, SyntheticFeed}, Sequencer};
//! use tickmesh_codec::Seq;
//! let mut feed = SyntheticFeed::new(&SyntheticConfig::default()).unwrap();
//! let mut seq = Sequencer::new(feed.source(), Seq(0));
//! let mut rec = feed.next_record(1);
//! assert_eq!(seq.stamp(&mut rec, 2), Seq(1));
//! ```

pub mod binance;
pub mod book;
pub mod coinbase;
pub mod dbn_feed;
pub mod decoder;
pub mod error;
pub mod itch;
pub mod lobster;
pub mod moldudp64;
pub mod pacer;
pub mod pcap;
pub mod replay;
pub mod sequencer;
pub mod synthetic;

pub use decoder::Decoder;
pub use error::{Error, Result};
pub use pacer::Pacer;
pub use sequencer::Sequencer;
