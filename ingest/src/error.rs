//! The ingest crate's one error type.

/// What can go wrong while ingesting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value the codec refused.
    #[error(transparent)]
    Codec(#[from] tickmesh_codec::Error),
    /// A feed configuration problem.
    #[error("{0}")]
    Config(String),
    /// Venue input that cannot be decoded. `offset` is a byte offset into the input (or a
    /// line number for line formats, as `what` says).
    #[error("{format} input at {offset}: {what}")]
    Parse {
        /// The format (`itch`, `moldudp64`, `pcap`, `dbn`, `coinbase`, `binance`, `lobster`).
        format: &'static str,
        /// Byte offset or line number.
        offset: u64,
        /// What is wrong and what to do.
        what: String,
    },
    /// The venue's own sequence numbers skipped (the decoder resynchronizes).
    #[error("{format} sequence gap: expected {expected}, got {got}")]
    VenueGap {
        /// The format.
        format: &'static str,
        /// Expected venue sequence number.
        expected: u64,
        /// Received venue sequence number.
        got: u64,
    },
    /// A book operation that contradicts the book (unknown or duplicate order id).
    #[error("book: {0}")]
    Book(#[from] crate::book::BookError),
    /// Reading or connecting failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done (names the path or address).
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A WebSocket feed failed.
    #[error("websocket feed {url}: {what}")]
    Ws {
        /// The feed URL.
        url: String,
        /// What went wrong.
        what: String,
    },
}

/// The ingest crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
