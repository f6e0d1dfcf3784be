//! The replicate crate's one error type.

use std::path::PathBuf;

/// What can go wrong in the mesh.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Certificates, keys, TLS configuration.
    #[error("mesh TLS: {0}")]
    Tls(String),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The UDP socket could not be bound.
    #[error("cannot bind the mesh on {addr}: {source}; pick a free port or set mesh.listen")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A peer sent something that is not the mesh protocol.
    #[error("peer {peer}: {what}")]
    Protocol {
        /// The peer region (or address).
        peer: String,
        /// What was wrong.
        what: String,
    },
    /// A record failed validation.
    #[error(transparent)]
    Codec(#[from] tickmesh_codec::Error),
    /// The record store failed.
    /// A setting the machine cannot honour (the message names it and what to do).
    #[error("{0}")]
    Config(String),

    #[error("record store: {0}")]
    Store(String),
    /// I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The audit log could not be opened, read or continued.
    #[error("audit log {path}: {reason}")]
    Audit {
        /// The log file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// The replicate crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
