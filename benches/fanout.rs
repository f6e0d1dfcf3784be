//! The gateway's fan-out loop: one record offered to N sessions' queues (the dispatcher's
//! inner loop on a `gw-core`), then the queues taken as the writers take them. Records
//! come from a fixed seed; the frames are built once (`Encoded`), outside the timing,
//! as the hub builds them once for every core.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;
use tickmesh_codec::{access_trusted, Body, InstrumentId, Meta, Px, Qty, Record, Seq, Side, SourceId, Symbol, Trade};
use tickmesh_gateway::bench_support::FanoutLoop;
use tickmesh_gateway::Encoded;

fn encoded(n: usize) -> Vec<Arc<Encoded>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7E5E_ED03);
    let src = SourceId::new("XNAS.ITCH").unwrap();
    let syms: Vec<Symbol> = ["AAPL", "MSFT", "NVDA"].iter().map(|s| Symbol::new(s).unwrap()).collect();
    let mut scratch = Vec::new();
    (0..n)
        .map(|i| {
            let meta = Meta {
                src,
                seq: Seq(i as u64 + 1),
                instrument: InstrumentId(1),
                sym: syms[rng.random_range(0..syms.len())],
                ts_event: 1_700_000_000_000_000_000 + i as u64,
                ts_ingest: 1_700_000_000_000_001_000 + i as u64,
            };
            let body = Body::Trade(Trade {
                px: Px(rng.random_range(1_000..1_000_000) * 10_000_000),
                qty: Qty::from_units(rng.random_range(1..1000)),
                side: Side::Buy,
                match_id: i as u64,
            });
            let bytes = Record::new(meta, body).to_bytes();
            // SAFETY: `bytes` was produced by `Record::to_bytes` just above.
            Arc::new(Encoded::new(&unsafe { access_trusted(&bytes) }, &mut scratch))
        })
        .collect()
}

fn fanout(c: &mut Criterion) {
    let recs = encoded(64);
    let mut g = c.benchmark_group("fanout");
    for sessions in [10usize, 100, 1000] {
        // Elements: record deliveries (records x sessions), the unit the gateway is sized in.
        g.throughput(Throughput::Elements((recs.len() * sessions) as u64));
        for (name, json) in [("json", true), ("binary", false)] {
            let mut fl = FanoutLoop::new(sessions, json);
            g.bench_with_input(BenchmarkId::new(name, sessions), &sessions, |b, _| {
                b.iter(|| {
                    let now = Instant::now();
                    let mut queued = 0;
                    for r in &recs {
                        queued += fl.offer(black_box(r), now);
                    }
                    black_box(queued + fl.drain())
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
