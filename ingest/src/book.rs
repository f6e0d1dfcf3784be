//! Books: order-level books ([`OrderBook`]) built into price levels ([`LevelBook`], from the
//! codec, re-exported here) with best bid/offer tracking ([`QuoteTracker`]).
//!
//! Orders live in a `HashMap` keyed by
//! venue order id with a multiply-shift hasher: ids are integers the venue assigns, SipHash's
//! protection against chosen keys buys nothing here and costs a third of an update.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
pub use tickmesh_codec::book::LevelBook;
use tickmesh_codec::{Level, Px, Qty, Quote, Side};

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

/// A resting order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Order {
    /// Book side.
    pub side: Side,
    /// Limit price.
    pub px: Px,
    /// Open quantity.
    pub qty: Qty,
}

/// Multiply-shift hashing of venue-assigned integer ids (order ids, instrument ids): see
/// the module docs.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = u64::from(v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Orders by id, aggregated into a [`LevelBook`].
#[derive(Debug, Clone)]
pub struct OrderBook {
    orders: HashMap<u64, Order, BuildHasherDefault<IdHasher>>,
    levels: LevelBook,
}

impl Default for OrderBook {
    fn default() -> Self {
        Self::new()
    }
}

impl OrderBook {
    /// An empty book.
    pub fn new() -> Self {
        OrderBook { orders: HashMap::with_capacity_and_hasher(1024, Default::default()), levels: LevelBook::new() }
    }

    /// Adds a resting order; returns its level's new state.
    pub fn add(&mut self, id: u64, side: Side, px: Px, qty: Qty) -> Result<Level, BookError> {
        if side == Side::None {
            return Err(BookError::NoSide);
        }
        match self.orders.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => return Err(BookError::DuplicateOrder(id)),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Order { side, px, qty });
            }
        }
        Ok(self.levels.adjust(side, px, qty.raw(), 1))
    }

    /// Removes `qty` from an order (cancel or execution); the order leaves the book at 0.
    /// Returns the order as it was and its level's new state.
    pub fn reduce(&mut self, id: u64, qty: Qty) -> Result<(Order, Level), BookError> {
        let o = self.orders.get_mut(&id).ok_or(BookError::UnknownOrder(id))?;
        let before = *o;
        let take = qty.raw().clamp(0, o.qty.raw());
        o.qty = Qty(o.qty.raw() - take);
        let gone = o.qty.raw() == 0;
        if gone {
            self.orders.remove(&id);
        }
        let level = self.levels.adjust(before.side, before.px, -take, if gone { -1 } else { 0 });
        Ok((before, level))
    }

    /// Removes an order.
    pub fn delete(&mut self, id: u64) -> Result<(Order, Level), BookError> {
        let o = self.orders.remove(&id).ok_or(BookError::UnknownOrder(id))?;
        let level = self.levels.adjust(o.side, o.px, -o.qty.raw(), -1);
        Ok((o, level))
    }

    /// Changes an order's price and quantity in place. Returns the old order, the level at
    /// the new price, and the level at the old price when the price moved.
    pub fn modify(&mut self, id: u64, px: Px, qty: Qty) -> Result<(Order, Level, Option<Level>), BookError> {
        let o = self.orders.get_mut(&id).ok_or(BookError::UnknownOrder(id))?;
        let old = *o;
        o.px = px;
        o.qty = qty;
        if px == old.px {
            let level = self.levels.adjust(old.side, px, qty.raw() - old.qty.raw(), 0);
            Ok((old, level, None))
        } else {
            let old_level = self.levels.adjust(old.side, old.px, -old.qty.raw(), -1);
            let new_level = self.levels.adjust(old.side, px, qty.raw(), 1);
            Ok((old, new_level, Some(old_level)))
        }
    }

    /// Replaces an order by a new one on the same side (new id, price, quantity). Returns
    /// the old order, the old price's level after removal, the new price's level after add.
    pub fn replace(&mut self, id: u64, new_id: u64, px: Px, qty: Qty) -> Result<(Order, Level, Level), BookError> {
        if new_id != id && self.orders.contains_key(&new_id) {
            return Err(BookError::DuplicateOrder(new_id));
        }
        let (old, old_level) = self.delete(id)?;
        let new_level = self.add(new_id, old.side, px, qty)?;
        // When both prices are the same level, the removal's state is stale: report the
        // level as it is now for both.
        let old_level = if old.px == px { new_level } else { old_level };
        Ok((old, old_level, new_level))
    }

    /// The order with `id`.
    pub fn order(&self, id: u64) -> Option<Order> {
        self.orders.get(&id).copied()
    }

    /// The aggregated levels.
    pub fn levels(&self) -> &LevelBook {
        &self.levels
    }

    /// Orders on the book.
    pub fn len(&self) -> usize {
        self.orders.len()
    }

    /// True when no order rests.
    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }

    /// Removes every order (keeps capacity).
    pub fn clear(&mut self) {
        self.orders.clear();
        self.levels.clear();
    }
}

/// Emits a quote only when the best bid or offer changed (price, quantity or order count).
#[derive(Debug, Clone, Default)]
pub struct QuoteTracker {
    last: Option<Quote>,
}

impl QuoteTracker {
    /// A tracker that emits on the first update.
    pub fn new() -> Self {
        QuoteTracker { last: None }
    }

    /// The new best bid and offer of `book`, if it differs from the last one emitted.
    pub fn update(&mut self, book: &LevelBook) -> Option<Quote> {
        let q = book.quote();
        if self.last == Some(q) {
            return None;
        }
        self.last = Some(q);
        Some(q)
    }

    /// Forget the last quote (after a resync): the next update emits.
    pub fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn px(v: i64) -> Px {
        Px::from_units(v)
    }

    #[test]
    fn orders_aggregate_into_levels() {
        let mut b = OrderBook::new();
        assert_eq!(
            b.add(1, Side::Buy, px(10), Qty(100)).unwrap(),
            Level { side: Side::Buy, px: px(10), qty: Qty(100), count: 1 }
        );
        assert_eq!(b.add(2, Side::Buy, px(10), Qty(50)).unwrap().qty, Qty(150));
        assert_eq!(b.add(2, Side::Buy, px(10), Qty(50)), Err(BookError::DuplicateOrder(2)));
        let (o, l) = b.reduce(1, Qty(30)).unwrap();
        assert_eq!((o.qty, l.qty, l.count), (Qty(100), Qty(120), 2));
        let (_, l) = b.reduce(1, Qty(70)).unwrap();
        assert_eq!((l.qty, l.count), (Qty(50), 1));
        assert_eq!(b.order(1), None);
        let (old, new_l, old_l) = b.replace(2, 3, px(11), Qty(10)).map(|(o, a, n)| (o, n, a)).unwrap();
        assert_eq!((old.qty, new_l.qty, old_l.qty), (Qty(50), Qty(10), Qty::ZERO));
        let (_, l, moved) = b.modify(3, px(12), Qty(20)).unwrap();
        assert_eq!((l.px, l.qty, moved.unwrap().qty), (px(12), Qty(20), Qty::ZERO));
        let (_, l) = b.delete(3).unwrap();
        assert_eq!(l.qty, Qty::ZERO);
        assert!(b.is_empty() && b.levels().is_empty());
        assert_eq!(b.delete(3), Err(BookError::UnknownOrder(3)));
        assert_eq!(b.add(9, Side::None, px(1), Qty(1)), Err(BookError::NoSide));
    }

    #[test]
    fn quote_tracker_emits_on_change_only() {
        let mut b = LevelBook::new();
        let mut t = QuoteTracker::new();
        b.set(Side::Buy, px(1), Qty(1), 1);
        assert!(t.update(&b).is_some());
        assert!(t.update(&b).is_none());
        b.set(Side::Buy, px(0), Qty(1), 1);
        assert!(t.update(&b).is_none(), "a level behind the best changes nothing");
        b.set(Side::Buy, px(1), Qty(2), 1);
        assert!(t.update(&b).is_some());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(u64, bool, i64, i64),
        Reduce(u64, i64),
        Delete(u64),
        Modify(u64, i64, i64),
        Replace(u64, u64, i64, i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let id = 0u64..40;
        prop_oneof![
            (id.clone(), any::<bool>(), 95i64..105, 1i64..500).prop_map(|(i, b, p, q)| Op::Add(i, b, p, q)),
            (id.clone(), 1i64..300).prop_map(|(i, q)| Op::Reduce(i, q)),
            id.clone().prop_map(Op::Delete),
            (id.clone(), 95i64..105, 1i64..500).prop_map(|(i, p, q)| Op::Modify(i, p, q)),
            (id.clone(), id, 95i64..105, 1i64..500).prop_map(|(i, n, p, q)| Op::Replace(i, n, p, q)),
        ]
    }

    proptest! {
        /// The aggregated levels always equal the sum of the live orders.
        #[test]
        fn levels_equal_the_sum_of_orders(ops in proptest::collection::vec(op(), 1..300)) {
            let mut b = OrderBook::new();
            let mut model: BTreeMap<u64, Order> = BTreeMap::new();
            for o in ops {
                match o {
                    Op::Add(i, buy, p, q) => {
                        let side = if buy { Side::Buy } else { Side::Sell };
                        let r = b.add(i, side, px(p), Qty(q));
                        prop_assert_eq!(r.is_ok(), !model.contains_key(&i));
                        model.entry(i).or_insert(Order { side, px: px(p), qty: Qty(q) });
                    }
                    Op::Reduce(i, q) => {
                        let r = b.reduce(i, Qty(q));
                        prop_assert_eq!(r.is_ok(), model.contains_key(&i));
                        if let Some(m) = model.get_mut(&i) {
                            m.qty = Qty((m.qty.raw() - q).max(0));
                            if m.qty.raw() == 0 { model.remove(&i); }
                        }
                    }
                    Op::Delete(i) => {
                        prop_assert_eq!(b.delete(i).is_ok(), model.remove(&i).is_some());
                    }
                    Op::Modify(i, p, q) => {
                        prop_assert_eq!(b.modify(i, px(p), Qty(q)).is_ok(), model.contains_key(&i));
                        if let Some(m) = model.get_mut(&i) { m.px = px(p); m.qty = Qty(q); }
                    }
                    Op::Replace(i, n, p, q) => {
                        let ok = model.contains_key(&i) && (n == i || !model.contains_key(&n));
                        prop_assert_eq!(b.replace(i, n, px(p), Qty(q)).is_ok(), ok);
                        if ok {
                            let old = model.remove(&i).unwrap();
                            model.insert(n, Order { side: old.side, px: px(p), qty: Qty(q) });
                        }
                    }
                }
                for side in [Side::Buy, Side::Sell] {
                    let mut want: BTreeMap<Px, (i64, u32)> = BTreeMap::new();
                    for o in model.values().filter(|o| o.side == side) {
                        let e = want.entry(o.px).or_default();
                        e.0 += o.qty.raw();
                        e.1 += 1;
                    }
                    let mut got: Vec<(Px, i64, u32)> = b.levels().levels(side).map(|(p, q, c)| (p, q.raw(), c)).collect();
                    got.sort();
                    let want: Vec<(Px, i64, u32)> = want.into_iter().map(|(p, (q, c))| (p, q, c)).collect();
                    prop_assert_eq!(got, want);
                }
                prop_assert_eq!(b.len(), model.len());
            }
        }
    }
}
