//! tickmesh-journal: per-source, append-only, segmented log of codec records on local disk.
//!
//! Ingest appends its own sources and the mesh receiver appends other regions' sources;
//! mesh catch-up, gateway resume and backups read them back from a seq or a time. Records
//! are stored byte for byte as `codec::Record::encode` made them, so a reader hands them on
//! without re-encoding.
//!
//! # Layout
//! * [`journal`]: [`Journal`] (open, append, positions, readers, retention) and the
//!   `journal-sync` thread that does group commit.
//! * [`source`]: one source's segments and writer; [`Appended`], [`SourceStats`].
//! * [`segment`]: the file format: frames, the sparse index and its `.idx` sidecar.
//! * [`reader`]: [`Reader`], which follows a source from a seq or a time into the live tail.
//! * [`recovery`]: what `open` checks and repairs; [`RecoveryReport`].
//! * [`config`]: [`JournalConfig`] and [`FsyncPolicy`].
//! * [`error`]: [`Error`] and [`Result`].
//!
//! # On disk
//! ```text
//! <dir>/LOCK                                  held (flock) while a Journal is open
//! <dir>/<source-id>/<first seq, 20 digits>.seg  frames: u32 LE len, u32 LE CRC32C, record
//! <dir>/<source-id>/<first seq, 20 digits>.idx  sparse index of a sealed segment (a cache)
//! <dir>/<source-id>/<first seq>.<offset>.cut    bytes recovery cut that held intact records
//! ```
//!
//! # Design in brief
//! * **Index.** Every `index_every` records (4096) and at each segment start the writer
//!   notes (seq, running max of `ts_ingest`, offset) in memory. When a segment is sealed
//!   the list goes to its `.idx` sidecar, so `open` reads only the last segment of each
//!   source; a missing or stale sidecar is rebuilt by scanning. Seeking by seq or by time
//!   is a binary search plus at most `index_every` records read.
//! * **Durability.** `fsync = "always"` fsyncs before `append` returns; `"group"` leaves it
//!   to the `journal-sync` thread, which fsyncs through a shared handle without blocking
//!   appends and advances [`Journal::durable_seq`]; `"never"` leaves it to the OS. Sealed
//!   segments are fsynced under every policy, so only a source's last segment can be torn.
//! * **Recovery.** `open` cuts a torn or garbled tail of the last segment (reported in
//!   [`RecoveryReport`]) and refuses, with [`Error::Corrupt`], damage in a sealed segment.
//!
//! ```
//! use tickmesh_codec::{testing, Side, SourceId};
//! use tickmesh_journal::{Journal, JournalConfig};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let (journal, report) = Journal::open(dir.path(), JournalConfig::default()).unwrap();
//! assert!(report.is_clean());
//! for seq in [1, 2, 5] {
//!     journal.append(&testing::trade(seq, "AAPL", "320.14", "100", Side::Buy).to_bytes()).unwrap();
//! }
//! let src = SourceId::new("TEST.SRC").unwrap();
//! assert_eq!(journal.positions(), vec![(src, 5)]);
//! assert!(matches!(
//!     journal.append(&testing::trade(5, "AAPL", "1", "1", Side::Sell).to_bytes()),
//!     Err(tickmesh_journal::Error::OutOfOrder { last: 5, got: 5, .. })
//! ));
//!
//! let mut reader = journal.reader(&src, 2).unwrap();
//! assert_eq!(reader.next().unwrap().unwrap().seq(), 2);
//! assert_eq!(reader.next().unwrap().unwrap().seq(), 5);
//! assert!(reader.next().unwrap().is_none()); // nothing more *now*
//! journal.append(&testing::trade(6, "AAPL", "320.15", "10", Side::Sell).to_bytes()).unwrap();
//! assert_eq!(reader.next().unwrap().unwrap().seq(), 6);
//! ```

pub mod config;
pub mod error;
pub mod journal;
pub mod reader;
pub mod recovery;
pub mod segment;
pub mod source;

pub use config::{FsyncPolicy, JournalConfig};
pub use error::{Error, Result};
pub use journal::{BatchAppended, Journal, RetentionReport};
pub use reader::Reader;
pub use recovery::{RecoveryReport, SourceRecovery, TailCut};
pub use source::{Appended, SourceRetention, SourceStats};
