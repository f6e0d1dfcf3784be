//! The gateway crate's error type, and the client-facing error codes of the protocol.

/// Failures of the gateway as a server (start-up, sockets).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Binding or configuring the listening socket failed.
    #[error("cannot listen on {addr}: {source}; pick a free port or set gateway.listen")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A worker thread could not be started.
    #[error("cannot start gateway worker thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The configuration has problems.
    #[error("gateway configuration: {0}")]
    Config(String),
}

/// The gateway's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Error codes sent to clients in `error` replies. Their spelling is a contract
/// (PROTOCOL.md), so they are a separate, stable enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// Not JSON, no `op`, or fields of the wrong type.
    BadRequest,
    /// An `op` the server does not know.
    UnknownOp,
    /// A channel that does not exist.
    UnknownChannel,
    /// A plain symbol that no source knows.
    UnknownSymbol,
    /// Outside the token's entitlements.
    Forbidden,
    /// Over the subscription limit.
    TooManySubscriptions,
    /// Over the request rate.
    RateLimited,
    /// Over the message size.
    MessageTooLarge,
    /// `orders` asked for outside the user's home region.
    HomeRegionUnavailable,
}

impl ClientError {
    /// The protocol's code.
    pub const fn code(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::UnknownOp => "unknown_op",
            Self::UnknownChannel => "unknown_channel",
            Self::UnknownSymbol => "unknown_symbol",
            Self::Forbidden => "forbidden",
            Self::TooManySubscriptions => "too_many_subscriptions",
            Self::RateLimited => "rate_limited",
            Self::MessageTooLarge => "message_too_large",
            Self::HomeRegionUnavailable => "home_region_unavailable",
        }
    }
}
