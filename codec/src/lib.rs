//! tickmesh-codec: the record format shared by ingest, the journal, the mesh, the gateway
//! and the client library.
//!
//! # Layout
//! * [`record`]: [`Header`] plus one body per [`RecordKind`], as rkyv archives in the
//!   little-endian, unaligned format; [`access_untrusted`] validates bytes from outside,
//!   [`access_trusted`] reads our own without checking again.
//! * [`fixed`]: [`Px`] and [`Qty`], fixed-point `i64` at 1e-9, decimal text at the edges.
//! * [`ids`]: [`SourceId`], [`Symbol`], [`InstrumentId`], [`Seq`].
//! * [`json`]: the protocol's JSON data messages, rendered once per record.
//! * [`frame`]: `u32`-length-prefixed record streams (binary WebSocket, mesh, tap).
//!
//! The byte layout is specified in `codec/FORMAT.md`; this crate depends on no other crate
//! of the workspace.
//!
//! ```
//! use tickmesh_codec::{access_untrusted, json, testing, Side};
//! let bytes = testing::trade(1, "AAPL", "320.14", "100", Side::Buy).to_bytes();
//! let rec = access_untrusted(&bytes).unwrap();
//! assert_eq!(rec.sym(), "AAPL");
//! assert!(json::to_json(&rec).contains(r#""px":"320.14""#));
//! ```

pub mod error;
pub mod fixed;
pub mod frame;
pub mod ids;
pub mod json;
pub mod record;
pub mod testing;

pub use error::{Error, Result};
pub use fixed::{Px, Qty, SCALE};
pub use ids::{InstrumentId, Seq, SourceId, Symbol};
pub use record::{
    access_trusted, access_untrusted, Body, BodyRef, Header, Meta, Quote, Record, RecordKind, RecordRef, Side, Trade,
    FLAG_CONFLATED, FORMAT_VERSION, HEADER_LEN,
};

/// Wall-clock now in ns since the Unix epoch (for `ts_ingest` and the synthetic feed).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

#[cfg(test)]
mod roundtrip {
    use super::*;
    use proptest::prelude::*;

    fn any_record() -> impl Strategy<Value = Record> {
        (any::<u64>(), any::<u64>(), any::<i64>(), any::<i64>(), 0u8..3, any::<bool>(), any::<u32>()).prop_map(
            |(seq, ts, px, qty, side, is_trade, inst)| {
                let meta = Meta {
                    src: SourceId::new("XNAS.ITCH").unwrap(),
                    seq: Seq(seq),
                    instrument: InstrumentId(inst),
                    sym: Symbol::new("AAPL").unwrap(),
                    ts_event: ts,
                    ts_ingest: ts.wrapping_add(1),
                };
                let side = [Side::None, Side::Buy, Side::Sell][side as usize];
                let body = if is_trade {
                    Body::Trade(Trade { px: Px(px), qty: Qty(qty), side })
                } else {
                    Body::Quote(Quote { bid_px: Px(px), bid_qty: Qty(qty), ask_px: Px(qty), ask_qty: Qty(px) })
                };
                Record::new(meta, body)
            },
        )
    }

    proptest! {
        #[test]
        fn encode_then_validate_round_trips(rec in any_record()) {
            let b = rec.to_bytes();
            prop_assert_eq!(Record::decode(&b).unwrap(), rec);
            // SAFETY: `b` was produced by `Record::encode` just above.
            let trusted = unsafe { access_trusted(&b) }.to_owned();
            prop_assert_eq!(trusted, rec);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = access_untrusted(&b);
            let _ = frame::Frames::new(&b).count();
        }

        #[test]
        fn corrupt_side_tag_is_rejected(rec in any_record(), tag in 3u8..) {
            let mut b = rec.to_bytes();
            if rec.header.kind == RecordKind::Trade as u8 {
                b[HEADER_LEN + 16] = tag;
                prop_assert!(access_untrusted(&b).is_err());
            }
        }
    }
}
