//! tickmesh: the node that wires ingest, the journal, the QUIC mesh and the WebSocket
//! gateway together, the `tickmesh` binary's commands, and the Rust client library.
//!
//! # Layout
//! * [`node`]: [`node::Node`], one region node: the hub thread, ingest threads, the mesh,
//!   the gateway, and the node's own HTTP routes (`/readyz`, `/v1/regions`).
//! * [`config`]: [`config::NodeConfig`], the TOML file of `tickmesh node --config`.
//! * [`dr`]: backup, point-in-time restore and recovery plans of a node's journal and audit log.
//! * [`demo`]: `tickmesh demo`, one process per region on this machine.
//! * [`regions`]: REGIONS.md's round-trip matrix and failover order.
//! * [`route`]: routing decisions (country map, health, weights, affinity) for `/v1/route` and the DNS router.
//! * [`route_http`]: `GET /v1/route`, `POST /v1/admin/weights` and the region health poller.
//! * [`metrics`]: the Prometheus recorder and process metrics.
//! * [`cmd`]: subcommands (`certs`, `audit`).
//! * [`audit_http`]: `GET /v1/audit`, the audit trail for admins.
//! * [`admin_api`]: `POST /v1/admin/drain` and `/v1/admin/undrain` on every node.
//! * [`client`]: [`client::Client`], the Rust client library: failover with `resume`,
//!   every record exactly once.
//! * [`budgets`]: `budgets.toml`, the latency budget of each hop.
//! * [`telemetry`]: structured logs and OTLP trace export (`[telemetry]`).
//! * [`cmd`]: subcommands (`certs`).
//! * [`http_get`]: a small blocking GET for loopback health checks.
//! * [`stats`]: live figures (`/v1/stats`, `/v1/stats/global`), the global VWAP
//!   (`/v1/vwap`) and the gauges the alert rules read.
//!
//! See ARCHITECTURE.md for the data path and who owns each step.

pub mod admin_api;
pub mod audit_http;
pub mod budgets;
pub mod client;
pub mod cmd;
pub mod config;
pub mod demo;
pub mod dr;
pub mod http_get;
pub mod metrics;
pub mod node;
pub mod regions;
pub mod route;
pub mod route_http;
pub mod stats;
pub mod telemetry;
pub mod tiers;
