//! Codec hot functions: encode, validate (untrusted), trusted access, JSON render, and the
//! gateway's once-per-record frame build. Inputs come from a fixed seed.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use tickmesh_codec::{
    access_trusted, access_untrusted, json, Body, InstrumentId, Meta, Px, Qty, Quote, Record, Seq, Side, SourceId,
    Symbol, Trade,
};

fn records(n: usize) -> Vec<Record> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7E5E_ED01);
    let src = SourceId::new("XNAS.ITCH").unwrap();
    let syms: Vec<Symbol> = ["AAPL", "MSFT", "NVDA", "BTC-USD"].iter().map(|s| Symbol::new(s).unwrap()).collect();
    (0..n)
        .map(|i| {
            let meta = Meta {
                src,
                seq: Seq(i as u64 + 1),
                instrument: InstrumentId(rng.random_range(1..5)),
                sym: syms[rng.random_range(0..syms.len())],
                ts_event: 1_700_000_000_000_000_000 + i as u64,
                ts_ingest: 1_700_000_000_000_001_000 + i as u64,
            };
            let px = Px(rng.random_range(1_000..1_000_000) * 10_000_000);
            let body = if rng.random_ratio(1, 4) {
                Body::Trade(Trade {
                    px,
                    qty: Qty::from_units(rng.random_range(1..1000)),
                    side: Side::Buy,
                    match_id: i as u64,
                })
            } else {
                Body::Quote(Quote {
                    bid_px: px,
                    bid_qty: Qty::from_units(300),
                    ask_px: Px(px.0 + 10_000_000),
                    ask_qty: Qty::from_units(200),
                    bid_count: 1,
                    ask_count: 1,
                })
            };
            Record::new(meta, body)
        })
        .collect()
}

fn codec(c: &mut Criterion) {
    let recs = records(10_000);
    let bytes: Vec<Vec<u8>> = recs.iter().map(Record::to_bytes).collect();
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(recs.len() as u64));
    g.bench_function("encode", |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(recs.len() * 128),
            |out| {
                for r in &recs {
                    r.encode(out);
                }
                black_box(out.len())
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("access_untrusted", |b| {
        b.iter(|| {
            for x in &bytes {
                black_box(access_untrusted(black_box(x)).unwrap());
            }
        })
    });
    g.bench_function("access_trusted", |b| {
        b.iter(|| {
            for x in &bytes {
                // SAFETY: every buffer was produced by `Record::encode` above.
                black_box(unsafe { access_trusted(black_box(x)) }.seq());
            }
        })
    });
    g.bench_function("json_render", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            for x in &bytes {
                out.clear();
                // SAFETY: as above.
                json::write_json(&unsafe { access_trusted(x) }, &mut out);
                black_box(out.len());
            }
        })
    });
    g.bench_function("frame_build", |b| {
        let mut scratch = Vec::with_capacity(256);
        b.iter(|| {
            for x in &bytes {
                // SAFETY: as above.
                black_box(tickmesh_gateway::Encoded::new(&unsafe { access_trusted(x) }, &mut scratch));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
