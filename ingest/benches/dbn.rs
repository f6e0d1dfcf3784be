//! Decode rate of our `DbnDecoder` against the `dbn` crate's own decoder, over the same DBN
//! bytes: the largest shared sample (the nautilus MBO capture), decompressed once.
//!
//! `cargo bench -p tickmesh-ingest --bench dbn`; `cargo test --benches` runs each once.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tickmesh_ingest::dbn_feed::bench;

fn sample() -> Vec<u8> {
    let path =
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data")).join(bench::LARGEST_SAMPLE);
    bench::load(&path).unwrap_or_else(|e| panic!("{e}: the bench reads the shared captures beside the repo"))
}

fn decode(c: &mut Criterion) {
    let dbn = sample();
    let (records, _) = bench::reference(&dbn).expect("the sample decodes");
    let mut g = c.benchmark_group("dbn_decode");
    g.throughput(Throughput::Elements(records as u64));
    g.bench_function("tickmesh_books", |b| b.iter(|| bench::ours(&dbn, true).expect("decodes")));
    g.bench_function("tickmesh_plain", |b| b.iter(|| bench::ours(&dbn, false).expect("decodes")));
    g.bench_function("dbn_crate", |b| b.iter(|| bench::reference(&dbn).expect("decodes")));
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
