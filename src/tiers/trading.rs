//! The trading tier: an in-process API for a trading service running inside a node.
//!
//! A service gets a [`TradingTier`] from [`crate::node::Node::trading`]. It can
//! * [`TradingTier::subscribe`] to the records the node journals (every source, local and
//!   replicated, in per-source `seq` order), through a bounded queue: a service that falls
//!   behind loses records and sees [`Subscription::lagged`] grow, it never slows the node;
//! * [`TradingTier::publish`] a user's order update: it becomes an `OrderUpdate` record of
//!   the region's orders source, sequenced and journaled like any record, and delivered on
//!   the private `orders` channel to that user's connections in this region only.
//!
//! Order updates are personal data: the orders source should be classed `pii` in the
//! node's residency policy, so the mesh never sends it to another region.

use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tickmesh_codec::{Body, InstrumentId, Meta, OrderUpdate, Px, Qty, Record, Seq, Side, SourceId, Symbol};

use super::TierError;

/// The `[trading]` section of a node's configuration: present means on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TradingConfig {
    /// The region's orders source (for example `ORD.USE1`); class it `pii` in `[residency]`.
    pub source: String,
}

impl TradingConfig {
    /// Collects every problem, prefixed with its TOML path.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if let Err(e) = SourceId::new(&self.source) {
            problems.push(format!("trading.source: {e}"));
        }
    }
}

/// An order's state, as the `orders` channel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum OrderStatus {
    /// Accepted, nothing filled.
    New = 1,
    /// Partly filled.
    PartiallyFilled = 2,
    /// Completely filled.
    Filled = 3,
    /// Cancelled.
    Cancelled = 4,
    /// Rejected.
    Rejected = 5,
}

/// One update of a user's order, as a trading service publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderUpdateMsg {
    /// The order id (ASCII, at most 24 bytes).
    pub order_id: String,
    /// The owning user: the token `sub` of the connections that may see it (ASCII, ≤ 24).
    pub user: String,
    /// The instrument's symbol.
    pub symbol: String,
    /// The order's state after this update.
    pub status: OrderStatus,
    /// Buy or sell.
    pub side: Side,
    /// Limit price.
    pub px: Px,
    /// Order quantity.
    pub qty: Qty,
    /// Filled so far.
    pub filled_qty: Qty,
    /// When it happened (ns since the Unix epoch); 0 means now.
    pub ts_event: u64,
}

fn padded_ascii(what: &str, s: &str) -> Result<[u8; 24], TierError> {
    if s.is_empty() || s.len() > 24 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TierError::Invalid(format!(
            "{what} {s:?} must be 1 to 24 printable ASCII characters without spaces"
        )));
    }
    let mut out = [0u8; 24];
    out[..s.len()].copy_from_slice(s.as_bytes());
    Ok(out)
}

impl OrderUpdateMsg {
    /// Checks the update and builds its record (not yet sequenced).
    pub fn to_record(&self, src: SourceId, now_ns: u64) -> Result<Record, TierError> {
        let order_id = padded_ascii("order_id", &self.order_id)?;
        let user = padded_ascii("user", &self.user)?;
        let sym = Symbol::new(&self.symbol).map_err(|e| TierError::Invalid(format!("symbol: {e}")))?;
        if self.qty.raw() <= 0 {
            return Err(TierError::Invalid(format!("order {}: qty must be positive", self.order_id)));
        }
        if self.filled_qty.raw() < 0 || self.filled_qty.raw() > self.qty.raw() {
            return Err(TierError::Invalid(format!(
                "order {}: filled_qty must be between 0 and qty ({})",
                self.order_id, self.qty
            )));
        }
        if self.status == OrderStatus::Filled && self.filled_qty != self.qty {
            return Err(TierError::Invalid(format!(
                "order {}: status filled needs filled_qty equal to qty",
                self.order_id
            )));
        }
        let meta = Meta {
            src,
            seq: Seq(0),
            instrument: InstrumentId(0),
            sym,
            ts_event: if self.ts_event == 0 { now_ns } else { self.ts_event },
            ts_ingest: 0,
        };
        Ok(Record::new(
            meta,
            Body::OrderUpdate(OrderUpdate {
                order_id,
                user,
                status: self.status as u8,
                side: self.side,
                px: self.px,
                qty: self.qty,
                filled_qty: self.filled_qty,
            }),
        ))
    }
}

/// Which records a subscription takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TapFilter {
    /// Only these sources (empty: every source).
    pub sources: Vec<SourceId>,
    /// Only these symbols (empty: every symbol).
    pub symbols: Vec<String>,
}

impl TapFilter {
    fn matches(&self, rec: &tickmesh_codec::RecordRef<'_>) -> bool {
        (self.sources.is_empty() || self.sources.contains(&rec.source_id()))
            && (self.symbols.is_empty() || self.symbols.iter().any(|s| s == rec.sym()))
    }
}

struct Tap {
    filter: TapFilter,
    tx: Sender<Record>,
    lagged: Arc<AtomicU64>,
}

/// The node's list of in-process subscribers; the hub offers it every journaled record.
#[derive(Default)]
pub struct Taps {
    taps: Mutex<Vec<Tap>>,
    /// Read without the lock on every record: no subscriber, no cost.
    count: AtomicUsize,
}

impl std::fmt::Debug for Taps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taps").field("count", &self.count.load(Ordering::Relaxed)).finish()
    }
}

impl Taps {
    /// Offers one journaled record to every subscriber whose filter takes it. A full queue
    /// loses the record for that subscriber (counted in its `lagged`); a dropped
    /// subscription is removed.
    pub fn offer(&self, bytes: &[u8]) {
        if self.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Ok(rec) = tickmesh_codec::access_untrusted(bytes) else { return };
        let mut taps = self.taps.lock().unwrap_or_else(|e| e.into_inner());
        taps.retain(|t| {
            if !t.filter.matches(&rec) {
                // A dropped subscription is found, and removed, at its next matching record.
                return true;
            }
            match t.tx.try_send(rec.to_owned()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    t.lagged.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
        self.count.store(taps.len(), Ordering::Relaxed);
    }

    fn add(&self, tap: Tap) {
        let mut taps = self.taps.lock().unwrap_or_else(|e| e.into_inner());
        taps.push(tap);
        self.count.store(taps.len(), Ordering::Relaxed);
    }
}

/// A subscription's end: records arrive on `records`.
#[derive(Debug)]
pub struct Subscription {
    /// The records, in journal order per source.
    pub records: Receiver<Record>,
    lagged: Arc<AtomicU64>,
}

impl Subscription {
    /// Records lost because the queue was full.
    pub fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }
}

/// Hands a record to the node's hub to be sequenced and journaled; false once the node stops.
pub type Submit = Arc<dyn Fn(Record) -> bool + Send + Sync>;

/// The trading tier of one node.
#[derive(Clone)]
pub struct TradingTier {
    region: String,
    source: Option<SourceId>,
    submit: Submit,
    taps: Arc<Taps>,
}

impl std::fmt::Debug for TradingTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TradingTier").field("region", &self.region).field("source", &self.source).finish()
    }
}

impl TradingTier {
    /// A tier for `region` publishing on `source` (None: publishing is off).
    pub fn new(region: impl Into<String>, source: Option<SourceId>, submit: Submit, taps: Arc<Taps>) -> TradingTier {
        TradingTier { region: region.into(), source, submit, taps }
    }

    /// The region this tier runs in.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The orders source, if publishing is on.
    pub fn orders_source(&self) -> Option<SourceId> {
        self.source
    }

    /// Subscribes to journaled records matching `filter`, with a queue of `capacity`.
    pub fn subscribe(&self, filter: TapFilter, capacity: usize) -> Subscription {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let lagged = Arc::new(AtomicU64::new(0));
        self.taps.add(Tap { filter, tx, lagged: lagged.clone() });
        Subscription { records: rx, lagged }
    }

    /// Publishes a user's order update on the region's orders source. Returns once the hub
    /// has it; it is journaled and sent to the user's connections in journal order.
    pub fn publish(&self, update: &OrderUpdateMsg) -> Result<(), TierError> {
        let src = self.source.ok_or(TierError::NotEnabled)?;
        let rec = update.to_record(src, tickmesh_codec::now_ns())?;
        if (self.submit)(rec) {
            Ok(())
        } else {
            Err(TierError::Stopped)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update() -> OrderUpdateMsg {
        OrderUpdateMsg {
            order_id: "O-1".into(),
            user: "alice".into(),
            symbol: "AAPL".into(),
            status: OrderStatus::New,
            side: Side::Buy,
            px: "189.5".parse().unwrap(),
            qty: "100".parse().unwrap(),
            filled_qty: Qty::ZERO,
            ts_event: 7,
        }
    }

    #[test]
    fn an_update_becomes_an_order_update_record() {
        let src = SourceId::new("ORD.USE1").unwrap();
        let rec = update().to_record(src, 99).unwrap();
        assert_eq!(rec.header.src, src);
        assert_eq!(rec.header.ts_event, 7);
        let Body::OrderUpdate(u) = rec.body else { panic!("{rec:?}") };
        assert_eq!(&u.user[..5], b"alice");
        assert!(u.user[5..].iter().all(|&b| b == 0));
        assert_eq!(u.status, 1);
    }

    #[test]
    fn bad_updates_say_what_to_change() {
        let src = SourceId::new("ORD.USE1").unwrap();
        let cases: Vec<(OrderUpdateMsg, &str)> = vec![
            (OrderUpdateMsg { user: String::new(), ..update() }, "user \"\" must be 1 to 24"),
            (OrderUpdateMsg { user: "a".repeat(25), ..update() }, "must be 1 to 24"),
            (OrderUpdateMsg { order_id: "has space".into(), ..update() }, "order_id"),
            (OrderUpdateMsg { qty: Qty::ZERO, ..update() }, "qty must be positive"),
            (OrderUpdateMsg { filled_qty: "101".parse().unwrap(), ..update() }, "filled_qty must be between"),
            (OrderUpdateMsg { status: OrderStatus::Filled, ..update() }, "status filled needs"),
        ];
        for (u, want) in cases {
            let e = u.to_record(src, 1).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }

    #[test]
    fn taps_filter_and_count_what_they_lose() {
        let taps = Arc::new(Taps::default());
        let submit: Submit = Arc::new(|_| true);
        let tier = TradingTier::new("us-east-1", SourceId::new("ORD.USE1").ok(), submit, taps.clone());
        let all = tier.subscribe(TapFilter::default(), 2);
        let aapl = tier.subscribe(TapFilter { symbols: vec!["AAPL".into()], ..Default::default() }, 10);
        let src = SourceId::new("ORD.USE1").unwrap();
        for (i, sym) in ["AAPL", "MSFT", "AAPL"].iter().enumerate() {
            let mut rec = OrderUpdateMsg { symbol: (*sym).into(), ..update() }.to_record(src, 1).unwrap();
            rec.header.seq = Seq(i as u64 + 1);
            taps.offer(&rec.to_bytes());
        }
        assert_eq!(all.records.len(), 2);
        assert_eq!(all.lagged(), 1);
        let got: Vec<u64> = aapl.records.try_iter().map(|r| r.header.seq.0).collect();
        assert_eq!(got, vec![1, 3]);
        drop(all);
        drop(aapl);
        let mut rec = update().to_record(src, 1).unwrap();
        rec.header.seq = Seq(4);
        taps.offer(&rec.to_bytes());
        assert_eq!(taps.count.load(Ordering::Relaxed), 0, "dropped subscriptions are removed");
    }

    #[test]
    fn publishing_needs_the_tier_on_and_the_node_running() {
        let taps = Arc::new(Taps::default());
        let off = TradingTier::new("us-east-1", None, Arc::new(|_| true), taps.clone());
        assert!(matches!(off.publish(&update()), Err(TierError::NotEnabled)));
        let stopped = TradingTier::new("us-east-1", SourceId::new("ORD.USE1").ok(), Arc::new(|_| false), taps);
        assert!(matches!(stopped.publish(&update()), Err(TierError::Stopped)));
    }
}
