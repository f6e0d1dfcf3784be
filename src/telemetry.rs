//! Logs and traces of a node: structured logs (text or JSON lines) on standard error, and
//! spans of control paths exported over OTLP/HTTP (JSON) when an endpoint is configured.
//!
//! Every thread's root span carries `region` (and `source` on ingest threads), so every
//! log line says where it came from. Only the control-path spans (`gateway.subscribe`,
//! `gateway.resume`, `gateway.catch_up`, `node.*`) are exported: per-record work never
//! makes a span. Each region exports as service `tickmesh-<region>`; a client's W3C
//! `traceparent` on `subscribe` becomes the remote parent of the request's span (see
//! docs/tracing.md), so a failover that resumes in a second region lands in the same trace.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig as _};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// `[telemetry]` in the node configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP collector base URL (`http://host:4318`); spans go to `<url>/v1/traces` as
    /// JSON. Unset: the standard `OTEL_EXPORTER_OTLP_ENDPOINT` variable if set, else no export.
    pub otlp_endpoint: Option<String>,
    /// Log format on standard error: `text` (default) or `json` (one object per line).
    pub log_format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, with span fields as a prefix.
    #[default]
    Text,
    /// One JSON object per line, with the current span and its fields.
    Json,
}

impl TelemetryConfig {
    /// Adds a line to `p` for every problem.
    pub fn validate(&self, p: &mut Vec<String>) {
        if let Some(e) = &self.otlp_endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) || e.parse::<http_uri::Check>().is_err() {
                p.push(format!(
                    "telemetry.otlp_endpoint \"{e}\" is not an http(s) URL; use the collector's OTLP/HTTP address, e.g. http://127.0.0.1:4318"
                ));
            }
        }
    }

    /// The endpoint to export to: the setting, else `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> Option<String> {
        self.otlp_endpoint
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .filter(|s| !s.trim().is_empty())
    }
}

mod http_uri {
    /// A light check that a URL has a host after the scheme.
    pub(super) struct Check;
    impl std::str::FromStr for Check {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let rest = s.split_once("://").map(|(_, r)| r).ok_or(())?;
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            if host.is_empty() || host.contains(' ') {
                Err(())
            } else {
                Ok(Check)
            }
        }
    }
}

/// Flushes and stops the exporter when dropped (at the end of `main`).
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.force_flush();
            let _ = p.shutdown_with_timeout(Duration::from_secs(2));
        }
    }
}

/// `<base>/v1/traces` unless `base` already names the traces path.
fn traces_url(base: &str) -> String {
    let b = base.trim_end_matches('/');
    if b.ends_with("/v1/traces") {
        b.to_owned()
    } else {
        format!("{b}/v1/traces")
    }
}

/// Spans worth exporting: control paths, never thread roots or per-record work.
fn exported(meta: &tracing::Metadata<'_>) -> bool {
    !meta.is_span() || meta.name().starts_with("gateway.") || meta.name().starts_with("node.")
}

/// Attaches a client's `traceparent` as the remote parent of `span` (the gateway's hook).
fn adopt_traceparent(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::propagation::TextMapPropagator as _;
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(cx);
}

/// Installs logging (and, with an endpoint, trace export) for `region`; `TICKMESH_LOG`
/// filters as `RUST_LOG` does (default `info`).
pub fn init(region: Option<&str>, cfg: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("TICKMESH_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    // No internal-error reporting: when the log's disk is full, tracing-subscriber would
    // report the failed write with `eprintln!`, which panics and kills the logging thread
    // (tests/hostile_disk.rs).
    let fmt = match cfg.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .log_internal_errors(false)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .log_internal_errors(false)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    let mut telemetry = Telemetry::default();
    let otel = match (region, cfg.endpoint()) {
        (Some(region), Some(endpoint)) => {
            let url = traces_url(&endpoint);
            // The exporter's HTTP client is reqwest, whose rustls takes the process-wide
            // provider (the tree builds ring only); an error means one is installed already.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpJson)
                .with_endpoint(url.clone())
                .with_timeout(Duration::from_secs(5))
                .with_headers(Default::default())
                .build()
                .map_err(|e| anyhow::anyhow!("telemetry.otlp_endpoint {endpoint}: cannot build the exporter ({e})"))?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(format!("tickmesh-{region}"))
                .with_attribute(KeyValue::new("cloud.region", region.to_owned()))
                .build();
            // Short batches: control-path spans are few, and a trace should be visible in
            // the collector about a second after the request.
            let batch = opentelemetry_sdk::trace::BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_millis(500))
                .build();
            let processor =
                opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_span_processor(processor)
                .with_resource(resource)
                .build();
            let tracer = provider.tracer("tickmesh");
            telemetry.provider = Some(provider);
            tickmesh_gateway::trace::set_remote_parent_hook(adopt_traceparent);
            Some((
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(tracing_subscriber::filter::filter_fn(exported)),
                url,
            ))
        }
        _ => None,
    };
    let (otel_layer, url) = match otel {
        Some((l, u)) => (Some(l), Some(u)),
        None => (None, None),
    };
    let _ = tracing_subscriber::registry().with(filter()).with(fmt).with(otel_layer).try_init();
    if let Some(r) = region {
        tracing::info!(region = r, otlp = url.as_deref().unwrap_or("off"), "tickmesh {}", env!("CARGO_PKG_VERSION"));
    }
    Ok(telemetry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_is_checked_and_gets_the_traces_path() {
        let mut p = Vec::new();
        TelemetryConfig { otlp_endpoint: Some("localhost:4318".into()), ..Default::default() }.validate(&mut p);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("is not an http(s) URL; use the collector's OTLP/HTTP address"), "{p:?}");
        p.clear();
        TelemetryConfig { otlp_endpoint: Some("http://127.0.0.1:4318".into()), ..Default::default() }.validate(&mut p);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
        let cfg: TelemetryConfig = toml::from_str("log_format = \"json\"").unwrap();
        assert_eq!(cfg.log_format, LogFormat::Json);
        let e = toml::from_str::<TelemetryConfig>("log_format = \"xml\"").unwrap_err().to_string();
        assert!(e.contains("unknown variant") && e.contains("json"), "{e}");
    }
}
