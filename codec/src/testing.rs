//! Small constructors for tests and benches (not for production paths).

use crate::fixed::{Px, Qty};
use crate::ids::{InstrumentId, Seq, SourceId, Symbol};
use crate::record::{Body, Level, Meta, Quote, Record, Side, Trade};

fn meta(seq: u64, sym: &str) -> Meta {
    Meta {
        src: SourceId::new("TEST.SRC").expect("valid"),
        seq: Seq(seq),
        instrument: InstrumentId(1),
        sym: Symbol::new(sym).expect("valid symbol"),
        ts_event: 1_700_000_000_000_000_000,
        ts_ingest: 1_700_000_000_000_001_000,
    }
}

/// A trade on source `TEST.SRC`.
pub fn trade(seq: u64, sym: &str, px: &str, qty: &str, side: Side) -> Record {
    Record::new(
        meta(seq, sym),
        Body::Trade(Trade { px: Px::parse(px).expect("price"), qty: Qty::parse(qty).expect("qty"), side, match_id: 0 }),
    )
}

/// A quote on source `TEST.SRC`; `None` is an empty side.
pub fn quote(seq: u64, sym: &str, bid: Option<(&str, &str)>, ask: Option<(&str, &str)>) -> Record {
    let side = |s: Option<(&str, &str)>| match s {
        Some((p, q)) => (Px::parse(p).expect("price"), Qty::parse(q).expect("qty")),
        None => (Px::NULL, Qty::ZERO),
    };
    let (bid_px, bid_qty) = side(bid);
    let (ask_px, ask_qty) = side(ask);
    Record::new(meta(seq, sym), Body::Quote(Quote { bid_px, bid_qty, ask_px, ask_qty, bid_count: 0, ask_count: 0 }))
}

/// A price level update on source `TEST.SRC`.
pub fn level(seq: u64, sym: &str, side: Side, px: &str, qty: &str) -> Record {
    Record::new(
        meta(seq, sym),
        Body::Level(Level { side, px: Px::parse(px).expect("price"), qty: Qty::parse(qty).expect("qty"), count: 1 }),
    )
}
