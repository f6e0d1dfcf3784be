//! Per-symbol traded volume and VWAP across every source this region holds.
//!
//! Every region journals every source, so each region computes the same global figures
//! from the `Trade` records passing its hub; no region has to ask another. Sums are exact:
//! a price and a quantity are `i64` counts of 1e-9, their product is kept in `i128` at
//! 1e-18, and the VWAP is rounded once, half away from zero, back to 1e-9 when it is
//! rendered. Decimal strings exist only in the JSON rows.

use std::collections::BTreeMap;
use tickmesh_codec::{Px, SourceId, Symbol, SCALE};

/// Symbols kept at most; trades of further symbols are counted in
/// [`VwapBook::dropped_trades`] and otherwise ignored, so a feed that invents symbols
/// cannot grow the node's memory without bound.
pub const MAX_SYMBOLS: usize = 100_000;

/// Running sums of one (symbol, source).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leg {
    /// Sum of price × quantity, in units of 1e-18.
    pub notional: i128,
    /// Sum of quantities, in units of 1e-9.
    pub volume: i128,
    /// Trades counted.
    pub trades: u64,
}

impl Leg {
    fn add(&mut self, other: &Leg) {
        self.notional += other.notional;
        self.volume += other.volume;
        self.trades += other.trades;
    }

    /// The volume-weighted average price, rounded half away from zero to 1e-9; `None`
    /// with no volume.
    pub fn vwap(&self) -> Option<Px> {
        if self.volume == 0 {
            return None;
        }
        let q = self.notional / self.volume;
        let r = self.notional % self.volume;
        // |r| * 2 >= |volume| rounds away from zero; the sign follows the quotient's.
        let away = r.unsigned_abs() * 2 >= self.volume.unsigned_abs();
        let neg = (self.notional < 0) != (self.volume < 0);
        let v = if away {
            if neg {
                q - 1
            } else {
                q + 1
            }
        } else {
            q
        };
        Some(Px(v.clamp(i64::MIN as i128, i64::MAX as i128 - 1) as i64))
    }
}

/// One symbol's row of `GET /v1/vwap`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VwapRow {
    /// Symbol.
    pub symbol: String,
    /// Traded volume across all sources (decimal string).
    pub volume: String,
    /// VWAP across all sources (decimal string).
    pub vwap: String,
    /// Trades counted.
    pub trades: u64,
    /// Sources that traded the symbol.
    pub sources: Vec<String>,
    /// The same figures per source.
    pub by_source: Vec<SourceVwap>,
}

/// One source's share of a [`VwapRow`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SourceVwap {
    /// Source id.
    pub src: String,
    /// Traded volume on this source.
    pub volume: String,
    /// VWAP on this source.
    pub vwap: String,
    /// Trades counted.
    pub trades: u64,
}

/// Volume and VWAP per symbol and source since the node started.
#[derive(Debug, Default)]
pub struct VwapBook {
    legs: BTreeMap<Symbol, BTreeMap<SourceId, Leg>>,
    dropped: u64,
}

impl VwapBook {
    /// An empty book.
    pub fn new() -> VwapBook {
        VwapBook::default()
    }

    /// Counts one trade. A null price or a quantity that is not positive is not a trade
    /// that moves volume, and is ignored.
    pub fn add_trade(&mut self, sym: Symbol, src: SourceId, px: Px, qty: i64) {
        if px.is_null() || qty <= 0 {
            return;
        }
        let leg = Leg { notional: px.raw() as i128 * qty as i128, volume: qty as i128, trades: 1 };
        self.add_leg(sym, src, &leg);
    }

    /// Adds partial sums (what the hub gathered in one batch).
    pub fn add_leg(&mut self, sym: Symbol, src: SourceId, leg: &Leg) {
        if !self.legs.contains_key(&sym) && self.legs.len() >= MAX_SYMBOLS {
            self.dropped += leg.trades;
            return;
        }
        self.legs.entry(sym).or_default().entry(src).or_default().add(leg);
    }

    /// Trades ignored because [`MAX_SYMBOLS`] symbols were already known.
    pub fn dropped_trades(&self) -> u64 {
        self.dropped
    }

    /// Symbols with at least one trade.
    pub fn len(&self) -> usize {
        self.legs.len()
    }

    /// True before the first trade.
    pub fn is_empty(&self) -> bool {
        self.legs.is_empty()
    }

    /// The row of `sym`, if it traded.
    pub fn row(&self, sym: &str) -> Option<VwapRow> {
        let sym = Symbol::new(sym).ok()?;
        self.legs.get(&sym).map(|by_src| make_row(sym, by_src))
    }

    /// Every symbol's row, largest volume first (ties by symbol); at most `limit` rows.
    pub fn rows(&self, limit: usize) -> Vec<VwapRow> {
        let mut totals: Vec<(i128, Symbol)> =
            self.legs.iter().map(|(s, by_src)| (by_src.values().map(|l| l.volume).sum::<i128>(), *s)).collect();
        totals.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        totals.into_iter().take(limit).filter_map(|(_, s)| self.legs.get(&s).map(|m| make_row(s, m))).collect()
    }
}

fn make_row(sym: Symbol, by_src: &BTreeMap<SourceId, Leg>) -> VwapRow {
    let mut total = Leg::default();
    for l in by_src.values() {
        total.add(l);
    }
    VwapRow {
        symbol: sym.as_str().to_owned(),
        volume: fixed_i128(total.volume),
        vwap: total.vwap().map(|p| p.to_string()).unwrap_or_default(),
        trades: total.trades,
        sources: by_src.keys().map(|s| s.as_str().to_owned()).collect(),
        by_source: by_src
            .iter()
            .map(|(s, l)| SourceVwap {
                src: s.as_str().to_owned(),
                volume: fixed_i128(l.volume),
                vwap: l.vwap().map(|p| p.to_string()).unwrap_or_default(),
                trades: l.trades,
            })
            .collect(),
    }
}

/// Decimal text of a count of 1e-9 that may exceed `i64` (a day's volume of a busy
/// symbol can), in the codec's style: no exponent, no trailing zeros.
pub fn fixed_i128(v: i128) -> String {
    let scale = SCALE as u128;
    let a = v.unsigned_abs();
    let (int, frac) = (a / scale, a % scale);
    let sign = if v < 0 { "-" } else { "" };
    if frac == 0 {
        return format!("{sign}{int}");
    }
    let f = format!("{frac:09}");
    format!("{sign}{int}.{}", f.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickmesh_codec::Qty;

    fn sym(s: &str) -> Symbol {
        Symbol::new(s).unwrap()
    }
    fn src(s: &str) -> SourceId {
        SourceId::new(s).unwrap()
    }
    fn px(s: &str) -> Px {
        Px::parse(s).unwrap()
    }
    fn qty(s: &str) -> i64 {
        Qty::parse(s).unwrap().raw()
    }

    #[test]
    fn vwap_of_two_sources_is_exact() {
        let mut b = VwapBook::new();
        // (320.14 * 100 + 320.20 * 50 + 320.10 * 25) / 175 = 56026.5 / 175 = 320.151428571|428..
        b.add_trade(sym("AAPL"), src("XNAS.ITCH"), px("320.14"), qty("100"));
        b.add_trade(sym("AAPL"), src("XNAS.ITCH"), px("320.20"), qty("50"));
        b.add_trade(sym("AAPL"), src("DBN.XNAS"), px("320.10"), qty("25"));
        let r = b.row("AAPL").unwrap();
        assert_eq!(r.volume, "175");
        assert_eq!(r.vwap, "320.151428571");
        assert_eq!(r.trades, 3);
        assert_eq!(r.sources, ["DBN.XNAS", "XNAS.ITCH"]);
        assert_eq!(r.by_source[1].vwap, "320.16"); // (32014 + 16010) / 150
        assert_eq!(r.by_source[1].volume, "150");
        assert_eq!(r.by_source[0].vwap, "320.1");
    }

    #[test]
    fn rounding_is_half_away_from_zero_at_one_nano() {
        // 1 * 1e-9 + 2 * 2e-9 over 3e-9... in raw units: (1*1 + 2*2) / 3 = 5/3 = 1.666.. -> 2
        let mut l = Leg { notional: 5, volume: 3, trades: 2 };
        assert_eq!(l.vwap(), Some(Px(2)));
        l.notional = 3; // 1.5 -> 2
        l.volume = 2;
        assert_eq!(l.vwap(), Some(Px(2)));
        l.notional = -3; // -1.5 -> -2
        assert_eq!(l.vwap(), Some(Px(-2)));
        l.notional = 4; // 1.333 -> 1
        l.volume = 3;
        assert_eq!(l.vwap(), Some(Px(1)));
        l.notional = -4;
        assert_eq!(l.vwap(), Some(Px(-1)));
        assert_eq!(Leg::default().vwap(), None);
    }

    #[test]
    fn fractional_crypto_sizes() {
        let mut b = VwapBook::new();
        // 0.0025 BTC at 64000.5 and 0.0075 BTC at 64001.7:
        // (160.00125 + 480.01275) / 0.01 = 64001.4
        b.add_trade(sym("BTC-USD"), src("COINBASE"), px("64000.5"), qty("0.0025"));
        b.add_trade(sym("BTC-USD"), src("COINBASE"), px("64001.7"), qty("0.0075"));
        let r = b.row("BTC-USD").unwrap();
        assert_eq!((r.volume.as_str(), r.vwap.as_str(), r.trades), ("0.01", "64001.4", 2));
    }

    #[test]
    fn sums_beyond_i64_stay_exact() {
        let mut b = VwapBook::new();
        // 9e9 units * 1000 trades: the volume (9e12 units = 9e21 raw) overflows i64.
        for _ in 0..1000 {
            b.add_trade(sym("BIG"), src("S1"), px("123.456789"), qty("9000000000"));
        }
        let r = b.row("BIG").unwrap();
        assert_eq!(r.volume, "9000000000000");
        assert_eq!(r.vwap, "123.456789");
    }

    #[test]
    fn bad_trades_are_ignored_and_rows_sort_by_volume() {
        let mut b = VwapBook::new();
        b.add_trade(sym("A"), src("S1"), Px::NULL, qty("5"));
        b.add_trade(sym("A"), src("S1"), px("1"), 0);
        b.add_trade(sym("A"), src("S1"), px("1"), -5);
        assert!(b.is_empty());
        b.add_trade(sym("A"), src("S1"), px("10"), qty("1"));
        b.add_trade(sym("B"), src("S1"), px("10"), qty("3"));
        b.add_trade(sym("C"), src("S1"), px("10"), qty("3"));
        let rows: Vec<String> = b.rows(10).into_iter().map(|r| r.symbol).collect();
        assert_eq!(rows, ["B", "C", "A"]);
        assert_eq!(b.rows(1).len(), 1);
        assert!(b.row("Z").is_none());
        assert!(b.row("not a valid symbol because it is far too long").is_none());
    }

    #[test]
    fn decimal_text_matches_the_codec() {
        for v in [0i64, 1, -1, 1_000_000_000, 320_140_000_000, -2_500_000, i64::MAX, i64::MIN + 1] {
            assert_eq!(fixed_i128(v as i128), Qty(v).to_string(), "{v}");
        }
        assert_eq!(fixed_i128(i64::MAX as i128 * 10), "92233720368.54775807");
    }
}
