//! Latency per hop of the data path, for sampled records.
//!
//! Every part of the node records the hops it owns (the hub: sequence and journal; the
//! mesh: peer send to receive; the gateway cores: record in to frame written; the whole
//! path: ingest to frame written) into one [`Hops`], shared through `GatewayShared`. Each
//! hop is an hdrhistogram behind a mutex: callers sample (for example one record in 64),
//! so the lock is taken rarely and never contended on the per-record path.

use std::sync::Mutex;

/// A hop of the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hop {
    /// Venue bytes read to record produced by the decoder.
    Decode,
    /// Record produced to sequenced and appended to the journal.
    Journal,
    /// Mesh: the peer wrote the batch to receipt here (includes the link delay; the bench
    /// subtracts the emulated delay).
    Mesh,
    /// Gateway: record handed to the fan-out to its frame written to the client socket.
    Gateway,
    /// Ingest time (`ts_ingest`, home region) to frame written here: what the dashboard
    /// shows as ingest-to-send latency.
    IngestToSend,
}

impl Hop {
    /// Every hop, in data-path order.
    pub const ALL: [Hop; 5] = [Hop::Decode, Hop::Journal, Hop::Mesh, Hop::Gateway, Hop::IngestToSend];

    /// The hop's name in metrics, JSON and budgets.toml.
    pub fn as_str(self) -> &'static str {
        match self {
            Hop::Decode => "decode",
            Hop::Journal => "journal",
            Hop::Mesh => "mesh",
            Hop::Gateway => "gateway",
            Hop::IngestToSend => "ingest_to_send",
        }
    }
}

/// Percentiles of one hop, in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct HopStats {
    /// Samples recorded since start.
    pub count: u64,
    /// Median.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Largest sample.
    pub max_ns: u64,
}

/// One histogram per hop.
#[derive(Debug)]
pub struct Hops {
    hists: [Mutex<hdrhistogram::Histogram<u64>>; 5],
}

impl Default for Hops {
    fn default() -> Self {
        Hops::new()
    }
}

impl Hops {
    /// Empty histograms: 1 ns to 60 s, 3 significant digits.
    pub fn new() -> Hops {
        let h = || {
            Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3)
                    .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid")),
            )
        };
        Hops { hists: [h(), h(), h(), h(), h()] }
    }

    fn slot(&self, hop: Hop) -> &Mutex<hdrhistogram::Histogram<u64>> {
        &self.hists[hop as usize]
    }

    /// Records one sample; values outside the histogram's range are clamped.
    pub fn record(&self, hop: Hop, ns: u64) {
        let mut h = self.slot(hop).lock().unwrap_or_else(|e| e.into_inner());
        h.saturating_record(ns.max(1));
    }

    /// The hop's percentiles now.
    pub fn stats(&self, hop: Hop) -> HopStats {
        let h = self.slot(hop).lock().unwrap_or_else(|e| e.into_inner());
        HopStats {
            count: h.len(),
            p50_ns: h.value_at_quantile(0.50),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
        }
    }

    /// A copy of the hop's histogram (to merge across processes or write a plot).
    pub fn histogram(&self, hop: Hop) -> hdrhistogram::Histogram<u64> {
        self.slot(hop).lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every hop's percentiles.
    pub fn snapshot(&self) -> Vec<(Hop, HopStats)> {
        Hop::ALL.iter().map(|&h| (h, self.stats(h))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_keep_separate_histograms() {
        let hops = Hops::new();
        for i in 1..=1000u64 {
            hops.record(Hop::Gateway, i * 1000);
        }
        hops.record(Hop::Journal, 5);
        let g = hops.stats(Hop::Gateway);
        assert_eq!(g.count, 1000);
        assert!((499_000..=501_000).contains(&g.p50_ns), "{g:?}");
        assert!(g.p99_ns >= 989_000 && g.max_ns >= 999_000, "{g:?}");
        assert_eq!(hops.stats(Hop::Journal).count, 1);
        assert_eq!(hops.stats(Hop::Mesh), HopStats::default());
    }
}
