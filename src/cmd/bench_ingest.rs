//! `tickmesh bench ingest`: decode rates side by side with third-party decoders on the same
//! bytes, in one run (so the ratios hold on a noisy machine), and journal append rates.
//!
//! * ITCH 5.0: our parse, and parse + normalize + books, against itchcpp (C++, from PyPI,
//!   run by the test venv's Python) on the same file.
//! * DBN: our decoder against the `dbn` crate's own decoder over the same bytes.
//! * Journal: appends per second with fsync `never`, `group` (group commit) and `always`.

use anyhow::Context;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tickmesh_codec::{Body, InstrumentId, Meta, Px, Qty, Record, Seq, Side, SourceId, Symbol, Trade};
use tickmesh_journal::{FsyncPolicy, Journal, JournalConfig};

/// Options of `bench ingest`.
#[derive(Debug, Clone)]
pub struct IngestBenchOptions {
    /// The shared data folder.
    pub data: PathBuf,
    /// Minimum measuring time per case.
    pub seconds: f64,
}

fn rate(min: Duration, units: u64, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    let start = Instant::now();
    let mut runs = 0u64;
    while start.elapsed() < min || runs == 0 {
        f()?;
        runs += 1;
    }
    Ok(units as f64 * runs as f64 / start.elapsed().as_secs_f64())
}

fn m(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M/s", v / 1e6)
    } else {
        format!("{:.1} k/s", v / 1e3)
    }
}

/// Runs every case and prints a Markdown table.
pub fn run(opts: IngestBenchOptions) -> anyhow::Result<()> {
    let min = Duration::from_secs_f64(opts.seconds);
    println!("| case | ours | reference | reference tool |");
    println!("|---|---|---|---|");
    // ITCH.
    let itch_path = opts.data.join("itch/locate-13-10k.bin");
    let itch = std::fs::read(&itch_path).with_context(|| format!("reading {}", itch_path.display()))?;
    let msgs = tickmesh_ingest::itch::bench_parse(&itch)?;
    let ours_parse = rate(min, msgs, || Ok(tickmesh_ingest::itch::bench_parse(&itch).map(drop)?))?;
    let ours_norm = rate(min, msgs, || Ok(tickmesh_ingest::itch::bench_parse_normalize(&itch).map(drop)?))?;
    let py = std::env::var("TICKMESH_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into());
    let itchcpp = std::process::Command::new(&py)
        .args(["scripts/bench_itchcpp.py"])
        .arg(&itch_path)
        .args(["--seconds", &opts.seconds.to_string(), "--json"])
        .output();
    let (cpp_parse, cpp_book, cpp_tool) = match itchcpp {
        Ok(o) if o.status.success() => {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            let r = &v["results"];
            (
                r["parse_messages"]["median_per_s"].as_f64().map(m).unwrap_or_else(|| "-".into()),
                r["book"]["median_per_s"].as_f64().map(m).unwrap_or_else(|| "-".into()),
                format!("itchcpp {}", v["version"].as_str().unwrap_or("?")),
            )
        }
        _ => (
            "-".into(),
            "-".into(),
            format!("itchcpp not run ({py} scripts/bench_itchcpp.py failed; run scripts/install-deps.sh)"),
        ),
    };
    println!(
        "| ITCH 5.0 parse ({msgs} messages) | {} | {cpp_parse} | {cpp_tool} (parse, callback per message) |",
        m(ours_parse)
    );
    println!("| ITCH 5.0 parse + normalize + book | {} | {cpp_book} | {cpp_tool} (BookManager) |", m(ours_norm));
    // DBN.
    let dbn_path = opts.data.join(tickmesh_ingest::dbn_feed::bench::LARGEST_SAMPLE);
    let dbn = tickmesh_ingest::dbn_feed::bench::load(&dbn_path)?;
    let r = tickmesh_ingest::dbn_feed::bench::compare(&dbn, min)?;
    println!(
        "| DBN decode, one record per DBN record ({} records) | {} | {} | dbn crate decoder |",
        r.dbn_records,
        m(r.ours_plain_per_s),
        m(r.dbn_crate_per_s)
    );
    println!("| DBN decode + books (MBO) | {} | | |", m(r.ours_books_per_s));
    // Journal.
    for (name, fsync, n) in [
        ("never", FsyncPolicy::Never, 200_000u64),
        ("group", FsyncPolicy::Group, 200_000),
        ("always", FsyncPolicy::Always, 2_000),
    ] {
        let dir = tempdir()?;
        let cfg = JournalConfig { fsync, ..Default::default() };
        let (j, _) = Journal::open(&dir, cfg)?;
        let recs = records(n);
        let start = Instant::now();
        for r in &recs {
            j.append(r)?;
        }
        j.sync()?;
        let per_s = n as f64 / start.elapsed().as_secs_f64();
        drop(j);
        let _ = std::fs::remove_dir_all(&dir);
        println!("| journal append, fsync {name} ({n} records) | {} | | |", m(per_s));
    }
    Ok(())
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "tickmesh-bench-journal-{}-{}",
        std::process::id(),
        tickmesh_codec::now_ns()
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn records(n: u64) -> Vec<Vec<u8>> {
    let src = SourceId::new("BENCH").unwrap_or_else(|_| unreachable!());
    let sym = Symbol::new("AAPL").unwrap_or_else(|_| unreachable!());
    (1..=n)
        .map(|i| {
            Record::new(
                Meta { src, seq: Seq(i), instrument: InstrumentId(1), sym, ts_event: i, ts_ingest: i },
                Body::Trade(Trade { px: Px(i as i64), qty: Qty(100), side: Side::Buy, match_id: i }),
            )
            .to_bytes()
        })
        .collect()
}
