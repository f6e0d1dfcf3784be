//! Latency per hop of the data path, for sampled records.
//!
//! Every part of the node records the hops it owns (the hub: sequence and journal; the
//! mesh: peer send to receive; the gateway cores: record in to frame written; the whole
//! path: ingest to frame written) into one [`Hops`], shared through `GatewayShared`. Each
//! hop is an hdrhistogram behind a mutex: callers sample (for example one record in 64),
//! so the lock is taken rarely and never contended on the per-record path.
//!
//! Sampling is by `seq` ([`sampled`]): every process samples the same records, so the
//! hops of one record can be followed from its home region to every client.
//! [`Hops::report`] serializes every histogram (hdrhistogram V2, base64) for
//! `GET /v1/latency`, so a bench can merge several processes without losing precision.

use base64::Engine as _;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// One record in this many is timed at every hop (by `seq`, see [`sampled`]).
///
/// 64 keeps the cost of the clock reads and the histogram lock negligible at a million
/// records per second while still giving thousands of samples a minute at demo rates.
pub const SAMPLE_EVERY: u64 = 64;

/// True if the record with this `seq` is timed at every hop.
#[inline]
pub fn sampled(seq: u64) -> bool {
    seq.is_multiple_of(SAMPLE_EVERY)
}

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

/// One hop in a [`LatencyReport`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HopReport {
    /// The hop's name ([`Hop::as_str`]).
    pub hop: String,
    /// Samples recorded since start.
    pub count: u64,
    /// Median (ns).
    pub p50_ns: u64,
    /// 99th percentile (ns).
    pub p99_ns: u64,
    /// 99.9th percentile (ns).
    pub p999_ns: u64,
    /// Largest sample (ns).
    pub max_ns: u64,
    /// The histogram, hdrhistogram V2 serialization, base64 (standard alphabet).
    pub histogram: String,
}

/// What `GET /v1/latency` returns: every hop of this process.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatencyReport {
    /// The node's region.
    pub region: String,
    /// One record in this many is sampled ([`SAMPLE_EVERY`]).
    pub sample_every: u64,
    /// Every hop, in data-path order.
    pub hops: Vec<HopReport>,
    /// The mesh hop split by the record's source (whose home region says which link it
    /// took), so a bench can subtract each link's emulated delay.
    pub mesh_by_source: BTreeMap<String, HopReport>,
}

/// Encodes a histogram as base64 of its V2 serialization.
pub fn encode_histogram(h: &hdrhistogram::Histogram<u64>) -> String {
    let mut buf = Vec::new();
    use hdrhistogram::serialization::Serializer as _;
    match hdrhistogram::serialization::V2Serializer::new().serialize(h, &mut buf) {
        Ok(_) => base64::engine::general_purpose::STANDARD.encode(&buf),
        // Only a histogram with a count overflow can fail; report it as empty.
        Err(_) => String::new(),
    }
}

/// Decodes what [`encode_histogram`] wrote.
pub fn decode_histogram(b64: &str) -> Result<hdrhistogram::Histogram<u64>, String> {
    if b64.is_empty() {
        return hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("histogram is not valid base64 ({e}); expected the `histogram` field of /v1/latency"))?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| format!("histogram is not an hdrhistogram V2 serialization ({e:?})"))
}

fn hop_report(name: &str, h: &hdrhistogram::Histogram<u64>) -> HopReport {
    HopReport {
        hop: name.to_owned(),
        count: h.len(),
        p50_ns: h.value_at_quantile(0.50),
        p99_ns: h.value_at_quantile(0.99),
        p999_ns: h.value_at_quantile(0.999),
        max_ns: h.max(),
        histogram: encode_histogram(h),
    }
}

fn new_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3)
        .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"))
}

/// Sampled records queued on one session and not yet written: the gateway hop ends when
/// the write that carries them completes.
///
/// The session takes these only when its queue is empty after taking a batch, so every
/// sample handed to [`Hops::written`] is in a write that has completed. Under a backlog
/// (more than one batch queued) a sample may be attributed to a later write than its
/// own, which over-states the hop slightly: an upper bound, never an under-estimate.
#[derive(Debug, Default)]
pub struct WriteSamples {
    queued: Vec<(u64, u64)>,
}

impl WriteSamples {
    /// Notes `enc` if it is a sampled record (called where the session queues a record).
    #[inline]
    pub fn queued(&mut self, enc: &crate::Encoded) {
        if enc.published_ns != 0 && self.queued.len() < 4096 {
            self.queued.push((enc.published_ns, enc.ts_ingest));
        }
    }

    /// Takes every noted sample (the queue was just emptied into the write in progress).
    pub fn take(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.queued)
    }
}

/// One histogram per hop.
#[derive(Debug)]
pub struct Hops {
    hists: [Mutex<hdrhistogram::Histogram<u64>>; 5],
    mesh_by_source: Mutex<BTreeMap<String, hdrhistogram::Histogram<u64>>>,
}

impl Default for Hops {
    fn default() -> Self {
        Hops::new()
    }
}

impl Hops {
    /// Empty histograms: 1 ns to 60 s, 3 significant digits.
    pub fn new() -> Hops {
        let h = || Mutex::new(new_histogram());
        Hops { hists: [h(), h(), h(), h(), h()], mesh_by_source: Mutex::new(BTreeMap::new()) }
    }

    fn slot(&self, hop: Hop) -> &Mutex<hdrhistogram::Histogram<u64>> {
        &self.hists[hop as usize]
    }

    /// Records one sample; values outside the histogram's range are clamped.
    pub fn record(&self, hop: Hop, ns: u64) {
        let mut h = self.slot(hop).lock().unwrap_or_else(|e| e.into_inner());
        h.saturating_record(ns.max(1));
    }

    /// Records `n` samples of the same value (a batch's average cost per record).
    pub fn record_n(&self, hop: Hop, ns: u64, n: u64) {
        let mut h = self.slot(hop).lock().unwrap_or_else(|e| e.into_inner());
        let high = h.high();
        let _ = h.record_n(ns.clamp(1, high), n);
    }

    /// Records a mesh sample of a record of `source` (also in the [`Hop::Mesh`] total).
    pub fn record_mesh(&self, source: &str, ns: u64) {
        self.record(Hop::Mesh, ns);
        let mut m = self.mesh_by_source.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(source.to_owned()).or_insert_with(new_histogram).saturating_record(ns.max(1));
    }

    /// Records the gateway and ingest-to-send hops of `samples` (publish time, ts_ingest)
    /// whose write completed at `now_ns`.
    pub fn written(&self, samples: &[(u64, u64)], now_ns: u64) {
        if samples.is_empty() {
            return;
        }
        {
            let mut g = self.slot(Hop::Gateway).lock().unwrap_or_else(|e| e.into_inner());
            for &(published, _) in samples {
                g.saturating_record(now_ns.saturating_sub(published).max(1));
            }
        }
        let mut t = self.slot(Hop::IngestToSend).lock().unwrap_or_else(|e| e.into_inner());
        for &(_, ts_ingest) in samples {
            t.saturating_record(now_ns.saturating_sub(ts_ingest).max(1));
        }
    }

    /// Every hop with its serialized histogram, for `GET /v1/latency`.
    pub fn report(&self, region: &str) -> LatencyReport {
        let hops = Hop::ALL.iter().map(|&h| hop_report(h.as_str(), &self.histogram(h))).collect();
        let mesh_by_source = self
            .mesh_by_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(s, h)| (s.clone(), hop_report("mesh", h)))
            .collect();
        LatencyReport { region: region.to_owned(), sample_every: SAMPLE_EVERY, hops, mesh_by_source }
    }

    /// Prometheus text: `tickmesh_hop_latency_seconds{hop, quantile}` as a summary.
    pub fn prometheus_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP tickmesh_hop_latency_seconds Latency per hop of sampled records (1 in {SAMPLE_EVERY} by seq)."
        );
        let _ = writeln!(out, "# TYPE tickmesh_hop_latency_seconds summary");
        for hop in Hop::ALL {
            let h = self.histogram(hop);
            let name = hop.as_str();
            for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
                let v = if q >= 1.0 { h.max() } else { h.value_at_quantile(q) };
                let _ =
                    writeln!(out, "tickmesh_hop_latency_seconds{{hop=\"{name}\",quantile=\"{q}\"}} {}", v as f64 / 1e9);
            }
            let sum = h.mean() * h.len() as f64 / 1e9;
            let _ = writeln!(out, "tickmesh_hop_latency_seconds_sum{{hop=\"{name}\"}} {sum}");
            let _ = writeln!(out, "tickmesh_hop_latency_seconds_count{{hop=\"{name}\"}} {}", h.len());
        }
        out
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

    #[test]
    fn report_round_trips_histograms_and_splits_mesh_by_source() {
        let hops = Hops::new();
        for i in 1..=100u64 {
            hops.record_mesh("SYN.EUW1", 35_000_000 + i);
        }
        hops.record_mesh("SYN.APS1", 106_000_000);
        hops.written(&[(1_000, 500), (2_000, 1_500)], 3_000);
        let r = hops.report("us-east-1");
        assert_eq!(r.sample_every, SAMPLE_EVERY);
        assert_eq!(r.hops.len(), Hop::ALL.len());
        let mesh = r.hops.iter().find(|h| h.hop == "mesh").unwrap();
        assert_eq!(mesh.count, 101);
        let back = decode_histogram(&mesh.histogram).unwrap();
        assert_eq!(back.len(), 101);
        assert_eq!(back.max(), hops.histogram(Hop::Mesh).max());
        assert_eq!(r.mesh_by_source["SYN.EUW1"].count, 100);
        assert_eq!(r.mesh_by_source["SYN.APS1"].count, 1);
        let gw = hops.stats(Hop::Gateway);
        assert_eq!((gw.count, gw.max_ns / 10), (2, 200));
        assert_eq!(hops.stats(Hop::IngestToSend).count, 2);
        let text = hops.prometheus_text();
        assert!(text.contains("tickmesh_hop_latency_seconds_count{hop=\"mesh\"} 101"), "{text}");
        assert!(text.contains("tickmesh_hop_latency_seconds{hop=\"gateway\",quantile=\"0.5\"}"), "{text}");
        assert!(decode_histogram("not base64!").unwrap_err().contains("base64"));
    }

    #[test]
    fn sampling_is_by_seq() {
        assert!(sampled(0) && sampled(SAMPLE_EVERY) && !sampled(1) && !sampled(SAMPLE_EVERY + 1));
    }
}
