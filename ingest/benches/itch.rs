//! ITCH 5.0 ingest throughput over the real 10,000-message capture
//! (`../shared/data/itch/locate-13-10k.bin`, read in place at run time):
//! * `itch/parse`: framing and message views only;
//! * `itch/parse_normalize_book`: framing, normalization and the order book, as a live feed
//!   runs (records built and handed off).
//!
//! `scripts/bench_itchcpp.py` measures itchcpp (C++) on the same bytes for comparison.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use tickmesh_ingest::itch::{bench_parse, bench_parse_normalize};

const CAPTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/itch/locate-13-10k.bin");

fn itch(c: &mut Criterion) {
    let bytes = match std::fs::read(CAPTURE) {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "note: {CAPTURE}: {e}; the ITCH bench reads the shared capture in place, so it measures nothing here"
            );
            return;
        }
    };
    let messages = match bench_parse(&bytes) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("note: {CAPTURE} does not parse ({e}); the ITCH bench measures nothing");
            return;
        }
    };
    let mut g = c.benchmark_group("itch");
    g.throughput(Throughput::Elements(messages));
    g.bench_function("parse", |b| b.iter(|| bench_parse(black_box(&bytes))));
    g.bench_function("parse_normalize_book", |b| b.iter(|| bench_parse_normalize(black_box(&bytes))));
    g.finish();
}

criterion_group!(benches, itch);
criterion_main!(benches);
