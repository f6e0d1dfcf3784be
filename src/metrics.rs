//! `/metrics`: the Prometheus recorder for every `metrics::` call in the node, plus
//! process metrics read from `/proc` (all names start `tickmesh_`).

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::fmt::Write;

/// Renders the node's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    handle: Option<PrometheusHandle>,
    region: Option<String>,
}

impl Metrics {
    /// Installs the global recorder (once per process; later calls render nothing of their
    /// own but still give process metrics).
    pub fn install() -> Metrics {
        Metrics::install_with(None)
    }

    /// Like [`Metrics::install`], with a `region` label on every series: the alert rules
    /// and the Grafana dashboard group by it, and it stays right however the node is
    /// scraped (per-region Prometheus, federation, remote write).
    pub fn install_for_region(region: &str) -> Metrics {
        Metrics::install_with(Some(region))
    }

    fn install_with(region: Option<&str>) -> Metrics {
        let mut builder = PrometheusBuilder::new();
        if let Some(r) = region {
            builder = builder.add_global_label("region", r);
        }
        let handle = builder
            .set_buckets(&[
                0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 0.5, 1.0,
            ])
            .ok()
            .and_then(|b| b.install_recorder().ok());
        Metrics { handle, region: region.map(str::to_owned) }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = self.handle.as_ref().map(PrometheusHandle::render).unwrap_or_default();
        let labels = self.region.as_deref().map(|r| format!("{{region=\"{r}\"}}")).unwrap_or_default();
        process_metrics(&mut out, &labels);
        out
    }
}

fn process_metrics(out: &mut String, labels: &str) {
    let page = 4096.0;
    let ticks = 100.0;
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        if let Some(rss) = statm.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()) {
            let _ = writeln!(out, "# TYPE tickmesh_process_resident_memory_bytes gauge");
            let _ = writeln!(out, "tickmesh_process_resident_memory_bytes{labels} {}", rss * page);
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the parenthesised command name: utime is the 12th, stime the 13th.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if let (Some(u), Some(s)) =
                (f.get(11).and_then(|v| v.parse::<f64>().ok()), f.get(12).and_then(|v| v.parse::<f64>().ok()))
            {
                let _ = writeln!(out, "# TYPE tickmesh_process_cpu_seconds_total counter");
                let _ = writeln!(out, "tickmesh_process_cpu_seconds_total{labels} {}", (u + s) / ticks);
            }
            if let Some(threads) = f.get(17) {
                let _ = writeln!(out, "# TYPE tickmesh_process_threads gauge");
                let _ = writeln!(out, "tickmesh_process_threads{labels} {threads}");
            }
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(out, "# TYPE tickmesh_process_open_fds gauge");
        let _ = writeln!(out, "tickmesh_process_open_fds{labels} {}", fds.count());
    }
}
