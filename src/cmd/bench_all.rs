//! Command-line arguments of `tickmesh bench e2e` and `tickmesh bench all`, and `all`
//! itself: every bench that exists as a subcommand of this binary, in one report.
//!
//! `all` runs `bench e2e`, then each of `ingest`, `fanout`, `mesh` and `failover` that
//! this binary has (asked with `bench <name> --help`), as child processes with their
//! default arguments, and gathers their Markdown output into `report.md`. A bench this
//! build lacks shows "not built yet", so the report names what is missing.

use anyhow::Context;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `tickmesh bench e2e` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct E2eArgs {
    /// Regions: a count (the first N of REGIONS.md, primaries first) or names, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "3")]
    pub regions: Vec<String>,
    /// Records per second per region.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Clients in total, spread over the regions (at least one per region).
    #[arg(long, default_value_t = 6)]
    pub clients: usize,
    /// Measurement window in seconds.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// WAN emulation: `real` (REGIONS.md round-trip times) or `off`.
    #[arg(long, default_value = "real", value_parser = ["real", "off"])]
    pub wan: String,
    /// Report directory (default `target/bench/<unix time>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The budgets file.
    #[arg(long, default_value = "budgets.toml")]
    pub budgets: PathBuf,
}

impl E2eArgs {
    /// Checked options.
    pub fn options(&self) -> anyhow::Result<crate::cmd::bench::E2eOptions> {
        Ok(crate::cmd::bench::E2eOptions {
            regions: crate::cmd::bench::parse_regions(&self.regions)?,
            rate: self.rate,
            clients: self.clients,
            duration: Duration::from_secs(self.duration),
            wan: self.wan.clone(),
            out: self.out.clone(),
            budgets: self.budgets.clone(),
        })
    }
}

/// `tickmesh bench all` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct AllArgs {
    /// The end-to-end part (its --out is the whole report's directory).
    #[command(flatten)]
    pub e2e: E2eArgs,
    /// Seconds allowed to each other bench before it is stopped.
    #[arg(long, default_value_t = 120)]
    pub bench_timeout: u64,
}

/// The other benches `all` gathers, in report order.
pub const OTHERS: [&str; 4] = ["ingest", "fanout", "mesh", "failover"];

/// Runs every bench and writes `report.md` in the output directory.
pub fn run(args: AllArgs) -> anyhow::Result<()> {
    let mut e2e = args.e2e.options()?;
    let out = e2e.out.clone().unwrap_or_else(|| PathBuf::from("target/bench").join(unix_secs().to_string()));
    let e2e_dir = out.join("e2e");
    e2e.out = Some(e2e_dir.clone());
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let started = Instant::now();
    let mut md = String::from("# tickmesh benchmarks\n\n");
    md.push_str(&format!("`tickmesh bench all`, {} (Unix time {}).\n\n", env!("CARGO_PKG_VERSION"), unix_secs()));
    md.push_str("## e2e: latency per hop against budgets.toml\n\n");
    match crate::cmd::bench::e2e(e2e) {
        Ok(()) => {
            let r = std::fs::read_to_string(e2e_dir.join("report.md")).unwrap_or_default();
            // Demote the sub-report's title and point its plot into e2e/.
            let body = r.lines().skip(1).collect::<Vec<_>>().join("\n").replace("(latency.svg)", "(e2e/latency.svg)");
            md.push_str(body.trim_start());
            md.push('\n');
        }
        Err(e) => md.push_str(&format!("failed: {e:#}\n")),
    }
    let exe = std::env::current_exe()?;
    for name in OTHERS {
        md.push_str(&format!("\n## {name}\n\n"));
        let exists = Command::new(&exe)
            .args(["bench", name, "--help"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !exists {
            println!("bench {name}: not built yet");
            md.push_str("not built yet (this binary has no `tickmesh bench ");
            md.push_str(name);
            md.push_str("`)\n");
            continue;
        }
        println!("bench {name}: running");
        match run_child(&exe, name, Duration::from_secs(args.bench_timeout)) {
            Ok(text) => {
                print!("{text}");
                md.push_str(&text);
            }
            Err(e) => md.push_str(&format!("failed: {e:#}\n")),
        }
    }
    md.push_str(&format!("\nWhole run: {:.0} s.\n", started.elapsed().as_secs_f64()));
    std::fs::write(out.join("report.md"), md)
        .with_context(|| format!("writing {}", out.join("report.md").display()))?;
    println!("report: {}", out.join("report.md").display());
    Ok(())
}

fn unix_secs() -> u64 {
    tickmesh_codec::now_ns() / 1_000_000_000
}

/// Runs `tickmesh bench <name>` with its defaults; its standard output, or an error after
/// `limit` (the child is killed).
fn run_child(exe: &std::path::Path, name: &str, limit: Duration) -> anyhow::Result<String> {
    let mut child = Command::new(exe)
        .args(["bench", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting bench {name}"))?;
    let mut stdout = child.stdout.take().context("child stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("bench {name} ran over {} s and was stopped; raise --bench-timeout", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = reader.join().unwrap_or_default();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        anyhow::bail!("bench {name} exited with {status}: {}", err.trim());
    }
    Ok(text)
}
