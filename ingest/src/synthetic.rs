//! A deterministic synthetic feed: the same seed and symbols give the same records (up to
//! their timestamps, which are wall-clock by protocol), so tests can compare regions.
//!
//! Each symbol random-walks a mid price in ticks; each event is a quote change or, one time
//! in four, a trade at the touch followed by the quote it leaves behind.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tickmesh_codec::{Body, InstrumentId, Meta, Px, Qty, Quote, Record, Seq, Side, SourceId, Symbol, Trade};

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
    pending_quote: bool,
}

/// The generator. Produces records with `seq` 0; the [`crate::Sequencer`] stamps them.
pub struct SyntheticFeed {
    src: SourceId,
    rng: ChaCha8Rng,
    instruments: Vec<Instrument>,
    pending: Option<usize>,
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
                Ok(Instrument {
                    sym: Symbol::new(s).map_err(Error::Codec)?,
                    mid_ticks: rng.random_range(2_000..50_000),
                    pending_quote: false,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SyntheticFeed { src, rng, instruments, pending: None })
    }

    /// The source id.
    pub fn source(&self) -> SourceId {
        self.src
    }

    /// The next record, with `ts_event` = `now_ns` and `seq` unset.
    pub fn next_record(&mut self, now_ns: u64) -> Record {
        // A trade is followed by the quote it leaves behind, as a venue would publish it.
        let (idx, body) = if let Some(i) = self.pending.take() {
            self.instruments[i].pending_quote = false;
            (i, self.quote(i))
        } else {
            let i = self.rng.random_range(0..self.instruments.len());
            if self.rng.random_ratio(1, 4) {
                self.pending = Some(i);
                self.instruments[i].pending_quote = true;
                (i, self.trade(i))
            } else {
                let step = self.rng.random_range(-2i64..=2);
                let ins = &mut self.instruments[i];
                ins.mid_ticks = (ins.mid_ticks + step).max(100);
                (i, self.quote(i))
            }
        };
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

    fn quote(&mut self, i: usize) -> Body {
        let mid = self.instruments[i].mid_ticks;
        let bid_qty = self.rng.random_range(1..=50) * 100;
        let ask_qty = self.rng.random_range(1..=50) * 100;
        Body::Quote(Quote {
            bid_px: Px((mid - 1) * TICK),
            bid_qty: Qty::from_units(bid_qty),
            ask_px: Px((mid + 1) * TICK),
            ask_qty: Qty::from_units(ask_qty),
            bid_count: 1,
            ask_count: 1,
        })
    }

    fn trade(&mut self, i: usize) -> Body {
        let buy = self.rng.random_bool(0.5);
        let mid = self.instruments[i].mid_ticks;
        let px = if buy { mid + 1 } else { mid - 1 };
        let qty = self.rng.random_range(1..=20) * 10;
        self.instruments[i].mid_ticks = px;
        Body::Trade(Trade {
            px: Px(px * TICK),
            qty: Qty::from_units(qty),
            side: if buy { Side::Buy } else { Side::Sell },
            match_id: 0,
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
    fn quotes_never_cross_and_trades_are_followed_by_quotes() {
        let mut f = SyntheticFeed::new(&SyntheticConfig::default()).unwrap();
        let mut last_trade = None;
        for i in 0..10_000 {
            let r = f.next_record(i);
            match r.body {
                Body::Quote(q) => {
                    assert!(q.bid_px < q.ask_px);
                    if let Some(sym) = last_trade.take() {
                        assert_eq!(sym, r.header.sym);
                    }
                }
                Body::Trade(_) => {
                    assert!(last_trade.is_none(), "two trades in a row");
                    last_trade = Some(r.header.sym);
                }
                _ => unreachable!(),
            }
        }
    }
}
