//! Order book update: a seeded stream of adds, partial cancels, deletes and replaces on
//! one `OrderBook`, the per-message work of every order-by-order feed (ITCH, DBN MBO).
//! The operations are generated before timing from a fixed seed, so runs compare.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use tickmesh_codec::{Px, Qty, Side};
use tickmesh_ingest::book::OrderBook;

/// splitmix64: a tiny seeded generator, enough to vary prices, sizes and order ids.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[derive(Clone, Copy)]
enum Op {
    Add(u64, Side, Px, Qty),
    Reduce(u64, Qty),
    Delete(u64),
    Replace(u64, u64, Px, Qty),
}

/// About 60% adds, 20% partial cancels, 15% deletes, 5% replaces over ~200 price levels
/// around 100.00, with a live set of a few thousand orders (a liquid equity's shape).
fn ops(n: usize) -> Vec<Op> {
    let mut rng = Rng(0x7E5E_ED02);
    let mut live: Vec<u64> = Vec::new();
    let mut next_id = 1u64;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let r = rng.next() % 100;
        let tick = (rng.next() % 100) as i64;
        let side = if rng.next().is_multiple_of(2) { Side::Buy } else { Side::Sell };
        let px = Px(match side {
            Side::Buy => 100_000_000_000 - tick * 10_000_000,
            _ => 100_010_000_000 + tick * 10_000_000,
        });
        let qty = Qty::from_units(100 * (1 + (rng.next() % 10) as i64));
        if r < 60 || live.len() < 100 {
            live.push(next_id);
            out.push(Op::Add(next_id, side, px, qty));
            next_id += 1;
        } else {
            let i = (rng.next() as usize) % live.len();
            let id = live[i];
            if r < 80 {
                out.push(Op::Reduce(id, Qty::from_units(1)));
            } else if r < 95 {
                live.swap_remove(i);
                out.push(Op::Delete(id));
            } else {
                live[i] = next_id;
                out.push(Op::Replace(id, next_id, px, qty));
                next_id += 1;
            }
        }
    }
    out
}

fn book(c: &mut Criterion) {
    let ops = ops(100_000);
    let mut g = c.benchmark_group("book");
    g.throughput(Throughput::Elements(ops.len() as u64));
    g.bench_function("update", |b| {
        b.iter_batched_ref(
            OrderBook::new,
            |book| {
                for op in &ops {
                    // Errors (a reduce below zero after earlier reduces) are part of the work.
                    let _ = black_box(match *op {
                        Op::Add(id, s, px, q) => book.add(id, s, px, q).map(|_| ()),
                        Op::Reduce(id, q) => book.reduce(id, q).map(|_| ()),
                        Op::Delete(id) => book.delete(id).map(|_| ()),
                        Op::Replace(id, new, px, q) => book.replace(id, new, px, q).map(|_| ()),
                    });
                }
                book.len()
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, book);
criterion_main!(benches);
