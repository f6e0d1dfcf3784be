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
}

/// The ingest crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
