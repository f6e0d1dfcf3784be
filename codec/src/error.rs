//! The codec's one error type.

/// Everything that can be wrong with bytes or values handed to the codec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A decimal string that cannot be held exactly in 1e-9 units.
    #[error(
        "decimal '{text}' is not usable: {why}; send a plain decimal such as \"320.14\" with at most 9 decimal places"
    )]
    BadDecimal {
        /// The text (cut at 40 characters).
        text: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A source id that is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    #[error("source id '{0}' is not valid; use 1 to 16 characters of A-Z a-z 0-9 . _ -")]
    BadSourceId(String),
    /// A symbol that is empty, too long or not printable ASCII.
    #[error("symbol '{0}' is not valid; use 1 to 24 printable ASCII characters")]
    BadSymbol(String),
    /// Fewer bytes than the header, or than the header says the body has.
    #[error("record is truncated: {got} bytes, need {need}")]
    Truncated {
        /// Bytes present.
        got: usize,
        /// Bytes required.
        need: usize,
    },
    /// A format version this build does not read.
    #[error("record format version {0} is not supported (this build reads version {v}); upgrade this node", v = crate::FORMAT_VERSION)]
    Version(u8),
    /// A record kind this build does not know.
    #[error("record kind {0} is not known to this build; upgrade this node")]
    UnknownKind(u8),
    /// `body_len` disagrees with the body size of the kind.
    #[error("record of kind {kind} has body length {got}, expected {want}")]
    BodyLength {
        /// Kind byte.
        kind: u8,
        /// Length in the header.
        got: usize,
        /// Length the kind requires.
        want: usize,
    },
    /// rkyv's checked access rejected the bytes.
    #[error("record bytes failed validation: {0}")]
    Invalid(String),
}

/// The codec's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
