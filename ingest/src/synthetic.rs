//! A deterministic synthetic feed: the same seed and symbols give the same records (up to
//! their timestamps, which are wall-clock by protocol), so tests can compare regions.
//!
//! Each symbol random-walks a mid price in ticks; each event is a quote change or, one time
//! in four, a trade at the touch followed by the quote it leaves behind.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tickmesh_codec::{
    Body, InstrumentId, Level, Meta, Px, Qty, Quote, Record, Seq, Side, SourceId, Status, Symbol, Trade, TradingState,
};

use crate::error::{Error, Result};

/// Settings of one synthetic source.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Source id. Default `SYN`; the demo uses `SYN.<region>` so each region homes one source.
    pub source: String,
    /// PRNG seed; the same seed gives the same record contents. Default 1.
    pub seed: u64,
    /// Symbols to generate. Default eight US-equity-like tickers.
    pub symbols: Vec<String>,
    /// Records per second. Default 1,000 (as the protocol's demo defaults).
    pub rate: u32,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            source: "SYN".into(),
            seed: 1,
            symbols: ["AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "AMD"].map(String::from).to_vec(),
            rate: 1_000,
        }
    }
}

impl SyntheticConfig {
    /// Collects every problem with this section, prefixed by `path`.
    pub fn validate(&self, path: &str, problems: &mut Vec<String>) {
        if let Err(e) = SourceId::new(&self.source) {
            problems.push(format!("{path}.source: {e}"));
        }
        if self.symbols.is_empty() {
            problems.push(format!("{path}.symbols is empty; list at least one symbol"));
        }
        for s in &self.symbols {
            if let Err(e) = Symbol::new(s) {
                problems.push(format!("{path}.symbols: {e}"));
            }
        }
        if self.rate == 0 || self.rate > 5_000_000 {
            problems.push(format!("{path}.rate = {} is out of range; use 1 to 5000000 records per second", self.rate));
        }
    }
}

struct Instrument {
    sym: Symbol,
    mid_ticks: i64,
    /// Quantity (whole units) at levels 0..DEPTH from the touch, per side.
    bids: [i64; DEPTH],
    asks: [i64; DEPTH],
    announced: bool,
}

/// Levels kept per side.
const DEPTH: usize = 5;

/// The generator. Produces records with `seq` 0; the [`crate::Sequencer`] stamps them.
///
/// Each symbol has five price levels a side around a mid price. An event is a level
/// change (with a quote when the touch changed), a trade at the touch (trade, the touch
/// level's new state, the quote), or, rarely, a move of the mid (every level re-quoted).
/// A symbol's first record is a `status` of `trading`.
pub struct SyntheticFeed {
    src: SourceId,
    rng: ChaCha8Rng,
    instruments: Vec<Instrument>,
    queue: std::collections::VecDeque<(usize, Body)>,
}

impl std::fmt::Debug for SyntheticFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyntheticFeed").field("src", &self.src).field("symbols", &self.instruments.len()).finish()
    }
}

/// One cent, in 1e-9 units.
const TICK: i64 = 10_000_000;

impl SyntheticFeed {
    /// A feed for `cfg` (validated).
    pub fn new(cfg: &SyntheticConfig) -> Result<Self> {
        let src = SourceId::new(&cfg.source).map_err(Error::Codec)?;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        if cfg.symbols.is_empty() {
            return Err(Error::Config("synthetic feed has no symbols; list at least one".into()));
        }
        let instruments = cfg
            .symbols
            .iter()
            .map(|s| {
                let mut lv = || std::array::from_fn(|_| rng.random_range(1..=50) * 100);
                Ok(Instrument {
                    sym: Symbol::new(s).map_err(Error::Codec)?,
                    mid_ticks: 0,
                    bids: lv(),
                    asks: lv(),
                    announced: false,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut f = SyntheticFeed { src, rng, instruments, queue: std::collections::VecDeque::new() };
        for i in 0..f.instruments.len() {
            f.instruments[i].mid_ticks = f.rng.random_range(2_000..50_000);
        }
        Ok(f)
    }

    /// The source id.
    pub fn source(&self) -> SourceId {
        self.src
    }

    /// The symbols, in instrument-id order (instrument id = index + 1).
    pub fn symbols(&self) -> impl Iterator<Item = Symbol> + '_ {
        self.instruments.iter().map(|i| i.sym)
    }

    /// The next record, with `ts_event` = `now_ns` and `seq` unset.
    pub fn next_record(&mut self, now_ns: u64) -> Record {
        if self.queue.is_empty() {
            self.event();
        }
        let (idx, body) = self.queue.pop_front().unwrap_or_else(|| (0, self.quote(0)));
        let ins = &self.instruments[idx];
        Record::new(
            Meta {
                src: self.src,
                seq: Seq(0),
                instrument: InstrumentId(idx as u32 + 1),
                sym: ins.sym,
                ts_event: now_ns,
                ts_ingest: now_ns,
            },
            body,
        )
    }

    fn px(&self, i: usize, side: Side, k: usize) -> Px {
        let mid = self.instruments[i].mid_ticks;
        let t = if side == Side::Buy { mid - 1 - k as i64 } else { mid + 1 + k as i64 };
        Px(t * TICK)
    }

    fn level(&self, i: usize, side: Side, k: usize) -> Body {
        let ins = &self.instruments[i];
        let qty = if side == Side::Buy { ins.bids[k] } else { ins.asks[k] };
        Body::Level(Level { side, px: self.px(i, side, k), qty: Qty::from_units(qty), count: 1 })
    }

    /// Generates one venue event into the queue.
    fn event(&mut self) {
        let i = self.rng.random_range(0..self.instruments.len());
        if !self.instruments[i].announced {
            self.instruments[i].announced = true;
            self.queue.push_back((i, Body::Status(Status { state: TradingState::Trading, reason: [0; 8] })));
            for k in 0..DEPTH {
                for side in [Side::Buy, Side::Sell] {
                    let l = self.level(i, side, k);
                    self.queue.push_back((i, l));
                }
            }
            let q = self.quote(i);
            self.queue.push_back((i, q));
            return;
        }
        let roll = self.rng.random_range(0..100);
        if roll < 60 {
            let side = if self.rng.random_bool(0.5) { Side::Buy } else { Side::Sell };
            let k = self.rng.random_range(0..DEPTH);
            let qty = self.rng.random_range(1..=50) * 100;
            let ins = &mut self.instruments[i];
            if side == Side::Buy {
                ins.bids[k] = qty
            } else {
                ins.asks[k] = qty
            }
            let l = self.level(i, side, k);
            self.queue.push_back((i, l));
            if k == 0 {
                let q = self.quote(i);
                self.queue.push_back((i, q));
            }
        } else if roll < 97 {
            let buy = self.rng.random_bool(0.5);
            let (side, rest) = if buy { (Side::Buy, Side::Sell) } else { (Side::Sell, Side::Buy) };
            let touch = self.px(i, rest, 0);
            let qty = self.rng.random_range(1..=20) * 10;
            let ins = &mut self.instruments[i];
            let lvl = if rest == Side::Buy { &mut ins.bids[0] } else { &mut ins.asks[0] };
            *lvl -= qty;
            if *lvl <= 0 {
                // The venue refills the touch: a fresh order arrives at the same price.
                *lvl = 100;
            }
            self.queue.push_back((i, Body::Trade(Trade { px: touch, qty: Qty::from_units(qty), side, match_id: 0 })));
            let l = self.level(i, rest, 0);
            self.queue.push_back((i, l));
            let q = self.quote(i);
            self.queue.push_back((i, q));
        } else {
            // The mid moves a tick: the old levels leave, the new ones arrive.
            for k in 0..DEPTH {
                for side in [Side::Buy, Side::Sell] {
                    let px = self.px(i, side, k);
                    self.queue.push_back((i, Body::Level(Level { side, px, qty: Qty::ZERO, count: 0 })));
                }
            }
            let step = if self.rng.random_bool(0.5) { 1 } else { -1 };
            let ins = &mut self.instruments[i];
            ins.mid_ticks = (ins.mid_ticks + step).max(100);
            for k in 0..DEPTH {
                for side in [Side::Buy, Side::Sell] {
                    let l = self.level(i, side, k);
                    self.queue.push_back((i, l));
                }
            }
            let q = self.quote(i);
            self.queue.push_back((i, q));
        }
    }

    fn quote(&self, i: usize) -> Body {
        let ins = &self.instruments[i];
        Body::Quote(Quote {
            bid_px: self.px(i, Side::Buy, 0),
            bid_qty: Qty::from_units(ins.bids[0]),
            ask_px: self.px(i, Side::Sell, 0),
            ask_qty: Qty::from_units(ins.asks[0]),
            bid_count: 1,
            ask_count: 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_contents() {
        let cfg = SyntheticConfig::default();
        let mut a = SyntheticFeed::new(&cfg).unwrap();
        let mut b = SyntheticFeed::new(&cfg).unwrap();
        for i in 0..1000 {
            assert_eq!(a.next_record(i).body, b.next_record(i).body);
        }
        let mut c = SyntheticFeed::new(&SyntheticConfig { seed: 2, ..cfg }).unwrap();
        let differs = (0..100).any(|i| c.next_record(i).body != a.next_record(i).body);
        assert!(differs, "a different seed must give different records");
    }

    #[test]
    fn books_never_cross_and_quotes_follow_the_touch() {
        let mut f = SyntheticFeed::new(&SyntheticConfig::default()).unwrap();
        let mut books: std::collections::HashMap<Symbol, tickmesh_codec::book::LevelBook> = Default::default();
        let mut kinds = std::collections::BTreeMap::new();
        for i in 0..20_000 {
            let r = f.next_record(i);
            *kinds.entry(r.body.kind()).or_insert(0) += 1;
            let book = books.entry(r.header.sym).or_default();
            match r.body {
                Body::Level(l) => {
                    book.set(l.side, l.px, l.qty, l.count);
                }
                Body::Quote(q) => {
                    assert!(q.bid_px < q.ask_px);
                    let b = book.quote();
                    assert_eq!((b.bid_px, b.bid_qty, b.ask_px, b.ask_qty), (q.bid_px, q.bid_qty, q.ask_px, q.ask_qty));
                }
                Body::Trade(t) => {
                    let touch = if t.side == Side::Buy { book.best(Side::Sell) } else { book.best(Side::Buy) };
                    assert_eq!(touch.map(|l| l.0), Some(t.px), "trades print at the touch");
                }
                Body::Status(_) => {}
                other => panic!("unexpected body {other:?}"),
            }
            assert!(!book.is_crossed());
        }
        assert!(kinds.len() == 4, "{kinds:?}");
    }
}
