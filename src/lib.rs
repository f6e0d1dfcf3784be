//! tickmesh: the node that wires ingest, the journal, the QUIC mesh and the WebSocket
//! gateway together, the `tickmesh` binary's commands, and the Rust client library.
//!
//! # Layout
//! * [`node`]: [`node::Node`], one region node: the hub thread, ingest threads, the mesh,
//!   the gateway, and the node's own HTTP routes (`/readyz`, `/v1/regions`).
//! * [`config`]: [`config::NodeConfig`], the TOML file of `tickmesh node --config`.
//! * [`demo`]: `tickmesh demo`, one process per region on this machine.
//! * [`regions`]: REGIONS.md's round-trip matrix and failover order.
//! * [`metrics`]: the Prometheus recorder and process metrics.
//! * [`budgets`]: `budgets.toml`, the latency budget of each hop.
//! * [`telemetry`]: structured logs and OTLP trace export (`[telemetry]`).
//! * [`cmd`]: subcommands (`certs`).
//! * [`http_get`]: a small blocking GET for loopback health checks.
//!
//! See ARCHITECTURE.md for the data path and who owns each step.

pub mod budgets;
pub mod cmd;
pub mod config;
pub mod demo;
pub mod http_get;
pub mod metrics;
pub mod node;
pub mod regions;
pub mod telemetry;
