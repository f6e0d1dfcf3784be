//! A price-level book ([`LevelBook`]): both sides of one instrument, best first.
//!
//! It lives in the codec because every tier keeps one: ingest derives `Level` records from
//! order books, the gateway keeps per-core books for snapshots and depth-limited deltas,
//! and clients rebuild books from `Level` records.
//!
//! Each side is a `Vec` kept sorted so that the best level is the *last* element: venue
//! activity clusters at the top of the book, so inserts and removals there move few
//! elements, and the best price is one index away. Capacity is kept when levels come and
//! go, so a warmed-up book does not allocate.

use crate::fixed::{Px, Qty};
use crate::record::{Level, Quote, Side};

/// One side's levels, best last.
#[derive(Debug, Clone, Default)]
struct SideLevels {
    /// `(px, qty, count)`; bids ascending, asks descending, so the best is last.
    v: Vec<(Px, Qty, u32)>,
    bids: bool,
}

impl SideLevels {
    /// Index of `px`, or where it would go.
    fn find(&self, px: Px) -> Result<usize, usize> {
        if self.bids {
            self.v.binary_search_by(|(p, _, _)| p.cmp(&px))
        } else {
            self.v.binary_search_by(|(p, _, _)| px.cmp(p))
        }
    }
}

/// One instrument's price levels, both sides.
#[derive(Debug, Clone)]
pub struct LevelBook {
    bids: SideLevels,
    asks: SideLevels,
}

impl Default for LevelBook {
    fn default() -> Self {
        Self::new()
    }
}

impl LevelBook {
    /// An empty book.
    pub fn new() -> Self {
        LevelBook {
            bids: SideLevels { v: Vec::with_capacity(64), bids: true },
            asks: SideLevels { v: Vec::with_capacity(64), bids: false },
        }
    }

    fn side(&self, side: Side) -> Option<&SideLevels> {
        match side {
            Side::Buy => Some(&self.bids),
            Side::Sell => Some(&self.asks),
            Side::None => None,
        }
    }

    fn side_mut(&mut self, side: Side) -> Option<&mut SideLevels> {
        match side {
            Side::Buy => Some(&mut self.bids),
            Side::Sell => Some(&mut self.asks),
            Side::None => None,
        }
    }

    /// Sets a level; quantity 0 (or less) removes it. True if anything changed.
    pub fn set(&mut self, side: Side, px: Px, qty: Qty, count: u32) -> bool {
        let Some(s) = self.side_mut(side) else { return false };
        match s.find(px) {
            Ok(i) => {
                if qty.raw() <= 0 {
                    s.v.remove(i);
                    true
                } else if s.v[i].1 != qty || s.v[i].2 != count {
                    s.v[i] = (px, qty, count);
                    true
                } else {
                    false
                }
            }
            Err(i) => {
                if qty.raw() <= 0 {
                    false
                } else {
                    s.v.insert(i, (px, qty, count));
                    true
                }
            }
        }
    }

    /// Adds `dq` (may be negative) and `dc` orders to a level; returns the level's new state
    /// (quantity 0 when the level is gone).
    pub fn adjust(&mut self, side: Side, px: Px, dq: i64, dc: i32) -> Level {
        let Some(s) = self.side_mut(side) else {
            return Level { side, px, qty: Qty::ZERO, count: 0 };
        };
        match s.find(px) {
            Ok(i) => {
                let (_, q, c) = s.v[i];
                let nq = q.raw().saturating_add(dq);
                let nc = (c as i64 + i64::from(dc)).max(0) as u32;
                if nq <= 0 {
                    s.v.remove(i);
                    Level { side, px, qty: Qty::ZERO, count: 0 }
                } else {
                    s.v[i] = (px, Qty(nq), nc);
                    Level { side, px, qty: Qty(nq), count: nc }
                }
            }
            Err(i) => {
                if dq <= 0 {
                    Level { side, px, qty: Qty::ZERO, count: 0 }
                } else {
                    let nc = dc.max(0) as u32;
                    s.v.insert(i, (px, Qty(dq), nc));
                    Level { side, px, qty: Qty(dq), count: nc }
                }
            }
        }
    }

    /// The level at `px`, if any.
    pub fn get(&self, side: Side, px: Px) -> Option<(Qty, u32)> {
        let s = self.side(side)?;
        s.find(px).ok().map(|i| (s.v[i].1, s.v[i].2))
    }

    /// The best level of a side.
    pub fn best(&self, side: Side) -> Option<(Px, Qty, u32)> {
        self.side(side)?.v.last().copied()
    }

    /// The best bid and offer as a codec quote (an empty side is `Px::NULL`, quantity 0).
    pub fn quote(&self) -> Quote {
        let (bid_px, bid_qty, bid_count) = self.best(Side::Buy).unwrap_or((Px::NULL, Qty::ZERO, 0));
        let (ask_px, ask_qty, ask_count) = self.best(Side::Sell).unwrap_or((Px::NULL, Qty::ZERO, 0));
        Quote { bid_px, bid_qty, ask_px, ask_qty, bid_count, ask_count }
    }

    /// Levels of a side, best first.
    pub fn levels(&self, side: Side) -> impl Iterator<Item = (Px, Qty, u32)> + '_ {
        self.side(side).map(|s| s.v.as_slice()).unwrap_or(&[]).iter().rev().copied()
    }

    /// Number of levels on a side.
    pub fn len(&self, side: Side) -> usize {
        self.side(side).map_or(0, |s| s.v.len())
    }

    /// True when both sides are empty.
    pub fn is_empty(&self) -> bool {
        self.bids.v.is_empty() && self.asks.v.is_empty()
    }

    /// Best bid at or above best ask.
    pub fn is_crossed(&self) -> bool {
        match (self.best(Side::Buy), self.best(Side::Sell)) {
            (Some((b, _, _)), Some((a, _, _))) => b >= a,
            _ => false,
        }
    }

    /// Removes every level (keeps capacity).
    pub fn clear(&mut self) {
        self.bids.v.clear();
        self.asks.v.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn px(v: i64) -> Px {
        Px::from_units(v)
    }

    #[test]
    fn levels_sort_best_first_and_remove_at_zero() {
        let mut b = LevelBook::new();
        assert!(b.set(Side::Buy, px(100), Qty(5), 1));
        assert!(b.set(Side::Buy, px(101), Qty(3), 1));
        assert!(b.set(Side::Sell, px(103), Qty(2), 1));
        assert!(b.set(Side::Sell, px(102), Qty(4), 2));
        assert!(!b.set(Side::Sell, px(102), Qty(4), 2), "no change");
        assert_eq!(b.levels(Side::Buy).map(|l| l.0).collect::<Vec<_>>(), vec![px(101), px(100)]);
        assert_eq!(b.levels(Side::Sell).map(|l| l.0).collect::<Vec<_>>(), vec![px(102), px(103)]);
        let q = b.quote();
        assert_eq!((q.bid_px, q.bid_qty, q.ask_px, q.ask_qty, q.ask_count), (px(101), Qty(3), px(102), Qty(4), 2));
        assert!(b.set(Side::Buy, px(101), Qty::ZERO, 0));
        assert_eq!(b.best(Side::Buy), Some((px(100), Qty(5), 1)));
        assert!(!b.is_crossed());
        b.set(Side::Buy, px(102), Qty(1), 1);
        assert!(b.is_crossed());
        b.clear();
        assert_eq!(b.quote().bid_px, Px::NULL);
    }
}
