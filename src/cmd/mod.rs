//! Subcommands of the binary that are more than a few lines.

pub mod admin;
pub mod bench;
pub mod bench_failover;
pub mod bench_ingest;
pub mod certs;
pub mod ingest;
