//! tickmesh-codec: the record format shared by ingest, the journal, the mesh, the gateway
//! and the client library.
//!
//! # Layout
//! * [`record`]: [`Header`] plus one body per [`RecordKind`], as rkyv archives in the
//!   little-endian, unaligned format; [`access_untrusted`] validates bytes from outside,
//!   [`access_trusted`] reads our own without checking again.
//! * [`book`]: [`book::LevelBook`], price levels of one instrument, best first.
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

pub mod book;
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
    access_trusted, access_untrusted, Bar, Body, BodyRef, Header, Imbalance, Instrument, InstrumentKind, Level, Meta,
    OrderAdd, OrderCancel, OrderExecute, OrderModify, OrderReplace, OrderUpdate, Quote, Record, RecordKind, RecordRef,
    Side, Statistic, Status, Trade, TradingState, FLAG_CONFLATED, FORMAT_VERSION, HEADER_LEN,
};

/// Wall-clock now in ns since the Unix epoch (for `ts_ingest`, heartbeats, readiness and
/// the synthetic feed): the one place a node reads the wall clock, so the clock-skew test
/// hook below applies everywhere at once.
///
/// **Test hook:** `TICKMESH_CLOCK_OFFSET_MS` (a signed integer, read once per process) is
/// added to the system clock. The fault tests run one region 2 s ahead or behind the others
/// to show that nothing depends on clocks agreeing across regions. Never set it in
/// production; a node that runs with it logs a warning at start-up (see [`clock_offset_ms`]).
pub fn now_ns() -> u64 {
    let sys =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    match clock_offset_ms() {
        0 => sys,
        ms => sys.saturating_add_signed(ms.saturating_mul(1_000_000)),
    }
}

/// The test offset `now_ns` adds to the system clock, in ms (0: none). Parsed once from
/// `TICKMESH_CLOCK_OFFSET_MS`; a value that is not an integer in ±1 day is ignored (0).
pub fn clock_offset_ms() -> i64 {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::env::var("TICKMESH_CLOCK_OFFSET_MS")
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|ms| ms.abs() <= 86_400_000)
            .unwrap_or(0)
    })
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
                    Body::Trade(Trade { px: Px(px), qty: Qty(qty), side, match_id: seq })
                } else {
                    Body::Quote(Quote {
                        bid_px: Px(px),
                        bid_qty: Qty(qty),
                        ask_px: Px(qty),
                        ask_qty: Qty(px),
                        bid_count: inst,
                        ask_count: 1,
                    })
                };
                Record::new(meta, body)
            },
        )
    }

    fn any_side() -> impl Strategy<Value = Side> {
        prop_oneof![Just(Side::None), Just(Side::Buy), Just(Side::Sell)]
    }

    fn ascii<const N: usize>() -> impl Strategy<Value = [u8; N]> {
        proptest::collection::vec(b'A'..=b'Z', 0..N).prop_map(|v| {
            let mut a = [0u8; N];
            a[..v.len()].copy_from_slice(&v);
            a
        })
    }

    /// One body of every kind, with arbitrary field values.
    fn any_body() -> impl Strategy<Value = Body> {
        let (p, q, u) = (any::<i64>().prop_map(Px), any::<i64>().prop_map(Qty), any::<u64>());
        prop_oneof![
            (p.clone(), q.clone(), any_side(), u).prop_map(|(px, qty, side, match_id)| Body::Trade(Trade {
                px,
                qty,
                side,
                match_id
            })),
            (p.clone(), q.clone(), any::<u32>()).prop_map(|(px, qty, c)| Body::Quote(Quote {
                bid_px: px,
                bid_qty: qty,
                ask_px: px,
                ask_qty: qty,
                bid_count: c,
                ask_count: c
            })),
            (any_side(), p.clone(), q.clone(), any::<u32>()).prop_map(|(side, px, qty, count)| Body::Level(Level {
                side,
                px,
                qty,
                count
            })),
            (u, any_side(), p.clone(), q.clone()).prop_map(|(order_id, side, px, qty)| Body::OrderAdd(OrderAdd {
                order_id,
                side,
                px,
                qty
            })),
            (u, any_side(), p.clone(), q.clone())
                .prop_map(|(order_id, side, px, qty)| Body::OrderModify(OrderModify { order_id, side, px, qty })),
            (u, any_side(), p.clone(), q.clone()).prop_map(|(order_id, side, px, cancelled)| Body::OrderCancel(
                OrderCancel { order_id, side, px, cancelled, remaining: cancelled }
            )),
            (u, any_side(), p.clone(), q.clone()).prop_map(|(order_id, side, px, qty)| Body::OrderExecute(
                OrderExecute { order_id, side, px, qty, remaining: qty, match_id: order_id }
            )),
            (u, any_side(), p.clone(), q.clone()).prop_map(|(order_id, side, px, qty)| Body::OrderReplace(
                OrderReplace { order_id, new_order_id: order_id ^ 1, side, px, qty }
            )),
            (0u8..8, ascii::<8>()).prop_map(|(st, reason)| Body::Status(Status {
                state: [
                    TradingState::Unknown,
                    TradingState::PreOpen,
                    TradingState::Trading,
                    TradingState::Halted,
                    TradingState::Paused,
                    TradingState::Quoting,
                    TradingState::Auction,
                    TradingState::Closed
                ][st as usize],
                reason
            })),
            (ascii::<8>(), p.clone(), q.clone(), ascii::<24>()).prop_map(
                |(currency, tick_size, lot_size, underlying)| Body::Instrument(Instrument {
                    kind: InstrumentKind::Future,
                    currency,
                    tick_size,
                    lot_size,
                    multiplier: 5,
                    expiration: 7,
                    strike: Px::NULL,
                    underlying
                })
            ),
            (u, p.clone(), q.clone()).prop_map(|(interval_ns, px, volume)| Body::Bar(Bar {
                interval_ns,
                open: px,
                high: px,
                low: px,
                close: px,
                volume
            })),
            (any::<u16>(), p.clone(), q.clone(), any::<u8>())
                .prop_map(|(stat_type, px, qty, action)| Body::Statistic(Statistic { stat_type, px, qty, action })),
            (any_side(), q.clone(), p.clone(), any::<u8>()).prop_map(|(side, qty, px, cross_type)| Body::Imbalance(
                Imbalance {
                    side,
                    paired_qty: qty,
                    imbalance_qty: qty,
                    ref_px: px,
                    near_px: px,
                    far_px: px,
                    cross_type
                }
            )),
            (ascii::<24>(), ascii::<24>(), 1u8..6, any_side(), p, q).prop_map(
                |(order_id, user, status, side, px, qty)| Body::OrderUpdate(OrderUpdate {
                    order_id,
                    user,
                    status,
                    side,
                    px,
                    qty,
                    filled_qty: qty
                })
            ),
        ]
    }

    proptest! {
        #[test]
        fn every_kind_round_trips_and_renders(body in any_body(), seq in any::<u64>()) {
            let meta = Meta {
                src: SourceId::new("GLBX.MDP3").unwrap(),
                seq: Seq(seq),
                instrument: InstrumentId(42),
                sym: Symbol::new("ESH4").unwrap(),
                ts_event: 1,
                ts_ingest: 2,
            };
            let rec = Record::new(meta, body);
            let b = rec.to_bytes();
            prop_assert_eq!(b.len(), HEADER_LEN + body.kind().body_len());
            let r = access_untrusted(&b).unwrap();
            prop_assert_eq!(r.to_owned(), rec);
            let text = json::to_json(&r);
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(v["type"].as_str().unwrap(), json::type_name(body.kind()));
            prop_assert_eq!(v["seq"].as_u64().unwrap(), seq);
        }

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
