//! The `tickmesh` binary: `node`, `demo`, `token`, `certs`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tickmesh::config::NodeConfig;
use tickmesh::demo::{self, DemoOptions};
use tickmesh_gateway::auth::{self, Claims, Grant};

#[derive(Parser, Debug)]
#[command(name = "tickmesh", version, about = "Multi-region market-data fan-out")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run one region node.
    Node {
        /// Node configuration (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Only check the configuration, print every problem, and exit.
        #[arg(long)]
        check_config: bool,
    },
    /// Run several regions on this machine, one process each.
    Demo {
        /// Print the machine-readable start-up lines of PROTOCOL.md.
        #[arg(long)]
        json: bool,
        /// Regions to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "us-east-1,eu-west-1,ap-southeast-1")]
        regions: Vec<String>,
        /// First port (each region takes base+10*i for WebSocket/HTTP and +1 for the mesh); 0 picks free ports.
        #[arg(long, default_value_t = 8080)]
        port_base: u16,
        /// State directory (journals, certificates, configs); a new temporary one by default.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Feed: `default` (a different real capture per region from ../shared/data when
        /// present, synthetic otherwise), `synthetic`, or FORMAT:FILE (the first region
        /// replays that capture; formats as for `tickmesh ingest`).
        #[arg(long, default_value = "default")]
        feed: String,
        /// Records per second per region (synthetic feeds and capture replays).
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// WAN emulation between regions: `real` (REGIONS.md round-trip times on every
        /// mesh link, emulated in user space) or `off` (plain loopback).
        #[arg(long, default_value = "off")]
        wan: String,
        /// Capture replay pace: `rate` (--rate records per second), `recorded` (the
        /// capture's own timing) or `fast` (as fast as possible).
        #[arg(long, default_value = "rate", value_parser = ["rate", "recorded", "fast"])]
        pace: String,
        /// Unsent output (bytes) above which a client is slow (gateway.slow_bytes; default 4 MiB).
        #[arg(long)]
        slow_bytes: Option<usize>,
    },
    /// Decode a capture and print its normalized records as JSON lines.
    Ingest {
        /// The capture file.
        file: PathBuf,
        /// Its format: itch, moldudp64-pcap, dbn, coinbase, binance, lobster.
        #[arg(long)]
        format: String,
        /// Output: `jsonl` (one data message per line).
        #[arg(long, default_value = "jsonl")]
        emit: String,
        /// Also print the book state after each record that changes a book.
        #[arg(long)]
        book: bool,
        /// Print counts per record kind and the decode rate to standard error.
        #[arg(long)]
        stats: bool,
        /// Source id of the records (default per format, e.g. XNAS.ITCH).
        #[arg(long)]
        source: Option<String>,
        /// Trading date YYYY-MM-DD, for formats whose times count from midnight (ITCH, LOBSTER).
        #[arg(long)]
        date: Option<String>,
    },
    /// Manage the mesh's private CA and region certificates.
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
    /// Print a signed client token.
    Token {
        /// HS256 key file (as the regions trust it).
        #[arg(long)]
        key: PathBuf,
        /// User id.
        #[arg(long)]
        sub: String,
        /// Home region.
        #[arg(long)]
        home: Option<String>,
        /// Channels, comma-separated, or `*`.
        #[arg(long, default_value = "*")]
        channels: String,
        /// Symbols or prefix patterns, comma-separated, or `*`.
        #[arg(long, default_value = "*")]
        symbols: String,
        /// Roles, comma-separated.
        #[arg(long, default_value = "")]
        roles: String,
        /// Lifetime such as 30m, 1h, 7d.
        #[arg(long, default_value = "1h", conflicts_with = "exp")]
        ttl: String,
        /// Absolute expiry, Unix seconds.
        #[arg(long)]
        exp: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Decode rates next to third-party decoders (itchcpp, the dbn crate) and journal appends.
    Ingest {
        /// The shared data folder holding the captures.
        #[arg(long, default_value = "../shared/data")]
        data: PathBuf,
        /// Minimum seconds per case.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// Ingest-to-client latency through real region processes on this machine.
    E2e {
        /// Regions to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "us-east-1,eu-west-1,ap-southeast-1")]
        regions: Vec<String>,
        /// Records per second per region.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Measurement window in seconds.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// WAN emulation: `real` (REGIONS.md round-trip times) or `off`.
        #[arg(long, default_value = "off")]
        wan: String,
    },
}

#[derive(Subcommand, Debug)]
enum CertsCmd {
    /// Create a new CA (ca.pem, ca.key) in --dir.
    Init {
        /// Directory for the CA files.
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// CA common name.
        #[arg(long, default_value = "tickmesh mesh CA")]
        name: String,
    },
    /// Issue REGION.pem and REGION.key, signed by the CA in --dir.
    Issue {
        /// Region name (the certificate names it; peers check it).
        region: String,
        /// Directory holding ca.pem and ca.key.
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 90)]
        days: u32,
    },
}

fn grant(s: &str) -> Grant {
    if s.trim() == "*" {
        Grant::All
    } else {
        Grant::List(s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(String::from).collect())
    }
}

fn parse_ttl(s: &str) -> anyhow::Result<u64> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 =
        num.parse().with_context(|| format!("--ttl {s} is not a duration; use a number and s, m, h or d, e.g. 1h"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => anyhow::bail!("--ttl unit '{other}' is not known; use s, m, h or d"),
    };
    Ok(n * mult)
}

fn init_tracing(region: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TICKMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // No internal-error reporting: when the log's disk is full, tracing-subscriber would
    // report the failed write with `eprintln!`, which panics and kills the logging thread.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .log_internal_errors(false)
        .try_init();
    if let Some(r) = region {
        tracing::info!(region = r, "tickmesh {}", env!("CARGO_PKG_VERSION"));
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Node { config, check_config } => {
            let cfg = NodeConfig::load(&config)?;
            let problems = cfg.problems();
            if check_config {
                if problems.is_empty() {
                    println!("{}: ok", config.display());
                    return Ok(());
                }
                for p in &problems {
                    eprintln!("{}: {p}", config.display());
                }
                anyhow::bail!("{} problem(s) in {}", problems.len(), config.display());
            }
            init_tracing(Some(&cfg.region));
            run_node(cfg)
        }
        Cmd::Demo { json, regions, port_base, state_dir, feed, rate, wan, pace, slow_bytes } => {
            let pace = match pace.as_str() {
                "recorded" => tickmesh::config::Pace::Recorded,
                "fast" => tickmesh::config::Pace::Fast,
                _ => tickmesh::config::Pace::Rate,
            };
            if wan != "off" && wan != "real" {
                anyhow::bail!("--wan {wan} is not known; use --wan real (REGIONS.md round-trip times) or --wan off");
            }
            init_tracing(None);
            demo::run(DemoOptions { json, regions, port_base, state_dir, rate, feed, wan, pace, slow_bytes })
        }
        Cmd::Ingest { file, format, emit, book, stats, source, date } => {
            if emit != "jsonl" {
                anyhow::bail!("--emit {emit} is not supported; use --emit jsonl");
            }
            tickmesh::cmd::ingest::run(tickmesh::cmd::ingest::IngestOptions { file, format, book, stats, source, date })
        }
        Cmd::Certs { cmd: CertsCmd::Init { dir, name } } => tickmesh::cmd::certs::init(&dir, &name),
        Cmd::Certs { cmd: CertsCmd::Issue { region, dir, days } } => tickmesh::cmd::certs::issue(&dir, &region, days),
        Cmd::Bench { cmd: BenchCmd::Ingest { data, seconds } } => {
            tickmesh::cmd::bench_ingest::run(tickmesh::cmd::bench_ingest::IngestBenchOptions { data, seconds })
        }
        Cmd::Bench { cmd: BenchCmd::E2e { regions, rate, duration, wan } } => {
            tickmesh::cmd::bench::e2e(tickmesh::cmd::bench::E2eOptions {
                regions,
                rate,
                duration: std::time::Duration::from_secs(duration),
                wan,
            })
        }
        Cmd::Token { key, sub, home, channels, symbols, roles, ttl, exp } => {
            let secret = std::fs::read(&key).with_context(|| format!("reading the key file {}", key.display()))?;
            let secret = String::from_utf8_lossy(&secret).trim_end().as_bytes().to_vec();
            let now = tickmesh_codec::now_ns() / 1_000_000_000;
            let exp = match exp {
                Some(e) => e,
                None => now + parse_ttl(&ttl)?,
            };
            let claims = Claims {
                sub,
                exp,
                home,
                channels: grant(&channels),
                symbols: grant(&symbols),
                roles: roles.split(',').map(str::trim).filter(|r| !r.is_empty()).map(String::from).collect(),
            };
            println!("{}", auth::mint_hs256(&secret, &claims)?);
            Ok(())
        }
    }
}

fn run_node(cfg: NodeConfig) -> anyhow::Result<()> {
    let metrics = tickmesh::metrics::Metrics::install();
    let node = tickmesh::node::Node::start(cfg, metrics)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_num::INT, signal_num::TERM] {
        install(sig, stop.clone())?;
    }
    println!(
        "{}",
        serde_json::json!({"event":"node_up","region":node.region(),"pid":std::process::id(),
            "ws_addr":node.gateway_addr().map(|a| a.to_string()),"mesh_addr":node.mesh_addr().map(|a| a.to_string())})
    );
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    tracing::info!("stopping");
    node.shutdown();
    Ok(())
}

mod signal_num {
    pub(crate) const INT: i32 = libc::SIGINT;
    pub(crate) const TERM: i32 = libc::SIGTERM;
}

static STOP: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> = std::sync::OnceLock::new();

extern "C" fn on_signal(_: libc::c_int) {
    if let Some(f) = STOP.get() {
        f.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn install(sig: i32, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> anyhow::Result<()> {
    let _ = STOP.set(flag);
    // SAFETY: the handler only performs an atomic store.
    let r = unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    if r == libc::SIG_ERR {
        anyhow::bail!("cannot install the handler for signal {sig}");
    }
    Ok(())
}
