//! Books: price levels with best bid/offer ([`LevelBook`]) and order-level books built into
//! them ([`OrderBook`]).

/// A book operation that contradicts the book.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BookError {
    /// An order id the book does not hold.
    #[error("order {0} is not on the book")]
    UnknownOrder(u64),
    /// An order id already on the book.
    #[error("order {0} is already on the book")]
    DuplicateOrder(u64),
    /// Side `None` for a resting order or level.
    #[error("a resting order or level needs side bid or ask")]
    NoSide,
}
