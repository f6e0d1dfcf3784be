//! The plug-in points behind the market data: the trading tier (an in-process API to read
//! records and publish a user's order updates) and the user-data tier (profiles,
//! entitlements and preferences, stored in the user's home region).
//!
//! Both carry personal data. Order updates are records of the region's own `orders`
//! source (class `pii` in the residency policy), delivered only to their owner and only in
//! the home region; user profiles live in the home region's store, and other regions hold a
//! cached view without the personal fields.

pub mod http;
pub mod trading;
pub mod userdata;

/// What can go wrong in the tiers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TierError {
    /// A caller passed something the tier cannot accept; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// The node is stopping (or stopped): nothing more is accepted.
    #[error("the node is shutting down; the order update was not accepted")]
    Stopped,
    /// The trading tier is not configured on this node.
    #[error("the trading tier is off on this node; add a [trading] section with its orders source")]
    NotEnabled,
    /// The user store failed.
    #[error("user store: {0}")]
    Store(String),
    /// The user is not homed in this region.
    #[error("user {user} is homed in {home}, not in {here}; send the request to {home}")]
    NotHome {
        /// The user.
        user: String,
        /// Their home region.
        home: String,
        /// This region.
        here: String,
    },
    /// No such user.
    #[error("user {0} is not known in this region (no profile stored and no erasure on record); check the id, and send the request to the user's home region")]
    UnknownUser(String),
    /// The residency policy refused a user-data message.
    #[error("refused by the residency policy: {0}")]
    Refused(String),
    /// Another region could not be reached over the mesh.
    #[error("region {region} could not be reached: {reason}")]
    Unreachable {
        /// The region.
        region: String,
        /// What happened, and what to do.
        reason: String,
    },
}
