//! Subcommands of the binary that are more than a few lines.

pub mod admin;
pub mod admin_route;
pub mod audit;
pub mod bench;
pub mod bench_all;
pub mod bench_failover;
pub mod bench_fanout;
pub mod bench_ingest;
pub mod bench_mesh;
pub mod certs;
pub mod dr;
pub mod ingest;
pub mod plot;
pub mod router;
pub mod tap;
