//! The journal's one error type.
//!
//! Every variant carries what an operator or a caller needs to act: the file and byte
//! offset, the source id, the seqs involved. Messages follow STYLE.md habit 17: what is
//! wrong, the offending value, and the next step.

use std::path::PathBuf;
use tickmesh_codec::SourceId;

/// Everything that can go wrong in the journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// [`crate::JournalConfig::validate`] found problems; [`crate::Journal::open`] refuses
    /// to start with them.
    #[error("journal config has {} problem(s): {}", problems.len(), problems.join("; "))]
    Config {
        /// Every problem, each saying what to change.
        problems: Vec<String>,
    },

    /// A file-system call failed.
    #[error("{op} {path}: {source}; check that the disk is mounted, writable and not full")]
    Io {
        /// What the journal was doing ("writing segment", "opening directory", ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// Another process (or another `Journal` in this one) has the directory open.
    #[error(
        "journal directory {path} is in use by another journal (lock file held); stop the other \
         tickmesh node or point it at another directory"
    )]
    Locked {
        /// The directory.
        path: PathBuf,
    },

    /// Bytes that must be intact are not: a sealed (non-last) segment, or a record a reader
    /// reached. Nothing is deleted or rewritten when this is returned.
    #[error(
        "journal segment {path} is corrupt at byte {offset}: {reason}; every record before that \
         byte is intact: to keep them, stop the node, truncate the file to {offset} bytes \
         (`truncate -s {offset} <file>`) and move the later segments of this source aside, then \
         restart and let mesh catch-up re-fetch the rest from a peer region"
    )]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the first bad frame.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },

    /// The record's seq is not above the last seq journaled for its source. Nothing was
    /// written. Callers that receive records more than once (mesh resends, gap fills) use
    /// this to drop duplicates.
    #[error(
        "record of source {source_id} has seq {got}, not above the journal's last seq {last}; \
         it is a duplicate or out of order and was not written"
    )]
    OutOfOrder {
        /// The record's source.
        source_id: SourceId,
        /// Last seq in the journal for that source.
        last: u64,
        /// The rejected record's seq.
        got: u64,
    },

    /// The record has seq 0, which means "not sequenced yet" (`codec::Seq`).
    #[error(
        "record of source {source_id} has seq 0 (not sequenced); the sequencer must assign seq >= 1 before journaling"
    )]
    Unsequenced {
        /// The record's source.
        source_id: SourceId,
    },

    /// The bytes are not a valid codec record. Nothing was written.
    #[error("record {index} of the append is not a valid record: {source}; nothing was written")]
    InvalidRecord {
        /// Position in the batch (0 for [`crate::Journal::append`]).
        index: usize,
        /// What the codec rejected.
        #[source]
        source: tickmesh_codec::Error,
    },

    /// A source id that is valid for the codec but cannot name a directory.
    #[error("source id '{source_id}' cannot be used as a journal directory name ('.' and '..' are reserved); rename the source")]
    ReservedSourceId {
        /// The id.
        source_id: SourceId,
    },

    /// Retention deleted segments this reader had not read yet (a lapped reader, STYLE.md
    /// habit 14). Not fatal: the reader is now positioned at `resume_at`, and the next
    /// [`crate::Reader::next`] continues there.
    #[error(
        "reader of source {source_id} was lapped by retention: records after seq {after} were \
         deleted before it read them and it continues at seq {resume_at}; treat the records \
         between as missed (re-fetch them from a peer region) or raise journal.retain_bytes / \
         journal.retain_age_secs"
    )]
    Lapped {
        /// The source.
        source_id: SourceId,
        /// Last seq of the segment the reader finished.
        after: u64,
        /// First seq it will return next (the first seq still held).
        resume_at: u64,
    },

    /// An fsync failed earlier. After a failed fsync the kernel may have dropped the dirty
    /// pages, so later fsyncs could succeed without the data: the source refuses appends
    /// until the node restarts and [`crate::Journal::open`] re-checks the tail.
    #[error(
        "journal for source {source_id} stopped accepting appends after an fsync failure on \
         {path} ({reason}); records since the last good fsync may be lost: fix the disk and \
         restart the node"
    )]
    Failed {
        /// The source.
        source_id: SourceId,
        /// The segment whose fsync failed.
        path: PathBuf,
        /// The OS error text.
        reason: String,
    },
}

/// The journal's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { op, path: path.into(), source }
    }
}

/// Adds the operation and path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}
