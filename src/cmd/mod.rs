//! Subcommands of the binary that are more than a few lines.

pub mod bench;
pub mod bench_all;
pub mod bench_ingest;
pub mod certs;
pub mod ingest;
pub mod plot;
