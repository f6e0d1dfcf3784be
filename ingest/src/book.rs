//! Books: price levels with best bid/offer ([`LevelBook`]) and order-level books built into
//! them ([`OrderBook`]). Being written; see the module plan in lib.rs.
