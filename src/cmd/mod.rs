//! Subcommands of the binary that are more than a few lines.

pub mod bench;
pub mod bench_ingest;
pub mod bench_mesh;
pub mod certs;
pub mod ingest;
pub mod tap;
