//! Appends per second under each fsync policy, single records and batches of 64.
//!
//! Records are trades from `tickmesh_codec::testing::trade` with prices, sizes and sides
//! drawn from a fixed seed, so runs compare. They are generated outside the timed part
//! (`iter_custom`). The journal lives in `$TICKMESH_BENCH_DIR` (default: the system temp
//! directory); fsync numbers only mean something on a real disk, not tmpfs.
//!
//! `cargo bench -p tickmesh-journal --bench append`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::{Duration, Instant};
use tickmesh_codec::{testing, Side};
use tickmesh_journal::{FsyncPolicy, Journal, JournalConfig};

/// splitmix64: a tiny seeded generator, enough to vary the record bytes.
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

/// `n` trades with seqs `first..first + n`.
fn trades(rng: &mut Rng, first: u64, n: u64) -> Vec<Vec<u8>> {
    const SYMS: [&str; 4] = ["AAPL", "MSFT", "NVDA", "SPY"];
    (first..first + n)
        .map(|seq| {
            let r = rng.next();
            let px = format!("{}.{:02}", 100 + r % 400, (r >> 16) % 100);
            let qty = format!("{}", 1 + (r >> 24) % 500);
            let side = if r & 1 == 0 { Side::Buy } else { Side::Sell };
            testing::trade(seq, SYMS[(r >> 40) as usize % SYMS.len()], &px, &qty, side).to_bytes()
        })
        .collect()
}

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("TICKMESH_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    tempfile::tempdir_in(base).expect("bench directory")
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("journal/append");
    g.throughput(Throughput::Elements(1));
    for (name, fsync) in [("never", FsyncPolicy::Never), ("group", FsyncPolicy::Group), ("always", FsyncPolicy::Always)]
    {
        if fsync == FsyncPolicy::Always {
            g.sample_size(10);
        }
        let dir = bench_dir();
        let (j, _) = Journal::open(dir.path(), JournalConfig { fsync, ..JournalConfig::default() }).expect("open");
        let mut rng = Rng(0x7E5E_ED01);
        let mut next_seq = 1;
        g.bench_function(BenchmarkId::new("single", name), |b| {
            b.iter_custom(|iters| {
                let recs = trades(&mut rng, next_seq, iters);
                next_seq += iters;
                let t = Instant::now();
                for r in &recs {
                    j.append(r).expect("append");
                }
                t.elapsed()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("journal/append_batch64");
    g.throughput(Throughput::Elements(64));
    for (name, fsync) in [("never", FsyncPolicy::Never), ("group", FsyncPolicy::Group), ("always", FsyncPolicy::Always)]
    {
        let dir = bench_dir();
        let (j, _) = Journal::open(dir.path(), JournalConfig { fsync, ..JournalConfig::default() }).expect("open");
        let mut rng = Rng(0x7E5E_ED02);
        let mut next_seq = 1;
        g.bench_function(BenchmarkId::new("batch", name), |b| {
            b.iter_custom(|iters| {
                let recs = trades(&mut rng, next_seq, iters * 64);
                next_seq += iters * 64;
                let t = Instant::now();
                for chunk in recs.chunks(64) {
                    j.append_batch(chunk.iter().map(|r| &r[..])).expect("append_batch");
                }
                t.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = append
}
criterion_main!(benches);
