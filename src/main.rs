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
        /// After `restore` / `recover apply`: start the home feeds without waiting for a mesh
        /// peer to report how far it holds them (seqs the peers hold may then be reused).
        #[arg(long)]
        home_without_peers: bool,
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
        /// Also run the DNS router (`tickmesh router`) for the demo's regions.
        #[arg(long)]
        router: bool,
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
    /// Check or read a node's audit trail of cross-region transfers.
    Audit {
        #[command(subcommand)]
        cmd: tickmesh::cmd::audit::AuditCmd,
    },
    /// Back up a node's journal and audit log (full, then incremental).
    Backup(tickmesh::cmd::dr::BackupArgs),
    /// Restore a backup into an empty state directory, optionally to a point in time.
    Restore(tickmesh::cmd::dr::RestoreArgs),
    /// Recovery as a plan an operator approves: `plan`, then `apply`.
    Recover {
        #[command(subcommand)]
        cmd: tickmesh::cmd::dr::RecoverCmd,
    },
    /// Manage the mesh's private CA and region certificates.
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
    /// Read a region's records over the mesh (read-only, certificate `tap` from the mesh CA).
    Tap {
        /// Region to read.
        #[arg(long)]
        region: String,
        /// Its mesh address, host:port.
        #[arg(long)]
        mesh: String,
        /// Directory with ca.pem, tap.pem, tap.key (`tickmesh certs issue tap --dir DIR`).
        #[arg(long)]
        pki: PathBuf,
        /// Only this source.
        #[arg(long)]
        src: Option<String>,
        /// First seq of --src to print.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// jsonl or binary (length-prefixed records).
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// Stop after this many records (0: until interrupted).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
    /// Operate regions: drain, undrain, route weights.
    Admin {
        #[command(subcommand)]
        cmd: AdminCmd,
    },
    /// DNS server answering with the nearest healthy region (EDNS Client Subnet, weights).
    Router(tickmesh::cmd::router::RouterArgs),
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
    /// Added latency and records per second of one mesh link, next to plain TCP.
    Mesh {
        /// Records per second in the latency run.
        #[arg(long, default_value_t = 100_000)]
        rate: u32,
        /// Seconds of the latency run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Emulated round-trip time of the link, ms (0: plain loopback).
        #[arg(long, default_value_t = 70)]
        rtt_ms: u32,
        /// Records of the throughput runs.
        #[arg(long, default_value_t = 2_000_000)]
        records: u64,
        /// Scheduler slice of both endpoints' `replicate-io` threads, µs (`mesh.io_thread.slice_us`;
        /// 0: the kernel's default).
        #[arg(long, default_value_t = tickmesh_replicate::sched::DEFAULT_SLICE_US)]
        io_slice_us: u32,
        /// SCHED_FIFO priority of both `replicate-io` threads (`mesh.io_thread.realtime_priority`;
        /// needs CAP_SYS_NICE).
        #[arg(long)]
        realtime_priority: Option<u8>,
    },
    /// Decode rates next to third-party decoders (itchcpp, the dbn crate) and journal appends.
    Ingest {
        /// The shared data folder holding the captures.
        #[arg(long, default_value = "../shared/data")]
        data: PathBuf,
        /// Minimum seconds per case.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// SIGKILL the region a client is on, N times: time to the first resumed record, records lost and duplicated.
    Failover {
        /// Kills (each on a fresh demo).
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Regions; the client starts on the first, the reference client is on the last.
        #[arg(long, value_delimiter = ',', default_value = "us-east-1,eu-west-1,ap-southeast-1")]
        regions: Vec<String>,
        /// Records per second per region.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// WAN emulation: `real` (REGIONS.md round-trip times) or `off`.
        #[arg(long, default_value = "real")]
        wan: String,
        /// Seconds of reading before the kill.
        #[arg(long, default_value_t = 3)]
        warmup: u64,
        /// Seconds of reading after the kill.
        #[arg(long, default_value_t = 4)]
        after: u64,
        /// `kill` (SIGKILL: sockets are reset) or `freeze` (SIGSTOP: sockets stay open and silent).
        #[arg(long, default_value = "kill", value_parser = ["kill", "freeze"])]
        fault: String,
    },
    /// Latency of every hop through real region processes, against budgets.toml.
    E2e(tickmesh::cmd::bench_all::E2eArgs),
    /// Every bench that exists, in one report (e2e, ingest, fanout, mesh, failover).
    All(tickmesh::cmd::bench_all::AllArgs),
    /// One stream to 100, 1,000 and 10,000 clients: raw TCP, naive tokio-tungstenite, NATS, tickmesh.
    Fanout(tickmesh::cmd::bench_fanout::FanoutArgs),
    /// One server of `bench fanout`, run as its child process.
    #[command(hide = true)]
    FanoutServer(tickmesh::cmd::bench_fanout::ServerArgs),
}

#[derive(Subcommand, Debug)]
enum AdminCmd {
    /// Stop REGION taking connections, send its clients `reconnect`, close the rest (1012) after the grace.
    Drain {
        /// The region.
        region: String,
        /// Grace period in ms before the remaining clients are closed (server default 5000).
        #[arg(long)]
        grace_ms: Option<u64>,
        #[command(flatten)]
        at: AdminTarget,
    },
    /// Let REGION take connections again.
    Undrain {
        /// The region.
        region: String,
        #[command(flatten)]
        at: AdminTarget,
    },
    #[command(flatten)]
    Route(tickmesh::cmd::admin_route::AdminRouteCmd),
    /// Erase user ID's personal data in its home region and every cached view elsewhere.
    ForgetUser {
        /// The user id (the token subject).
        id: String,
        /// The user's home region (where the request goes; with --url, passed on there).
        #[arg(long)]
        home: Option<String>,
        /// Print the JSON report.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: AdminTarget,
    },
}

#[derive(clap::Args, Debug)]
struct AdminTarget {
    /// Any region's HTTP URL (it passes the request on to REGION).
    #[arg(long)]
    url: Option<String>,
    /// A node configuration listing the regions (REGION's http_url is used).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A demo's state directory (its configs, and its key to mint an admin token).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Admin token (else $TICKMESH_ADMIN_TOKEN).
    #[arg(long)]
    token: Option<String>,
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
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hickory_server=warn"));
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
        Cmd::Node { config, check_config, home_without_peers } => {
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
            let _telemetry = tickmesh::telemetry::init(Some(&cfg.region), &cfg.telemetry)?;
            if home_without_peers {
                tickmesh::dr::start_home_without_peers(&cfg.state_dir)?;
            }
            run_node(cfg)
        }
        Cmd::Demo { json, regions, port_base, state_dir, feed, rate, wan, pace, slow_bytes, router } => {
            let pace = match pace.as_str() {
                "recorded" => tickmesh::config::Pace::Recorded,
                "fast" => tickmesh::config::Pace::Fast,
                _ => tickmesh::config::Pace::Rate,
            };
            if wan != "off" && wan != "real" {
                anyhow::bail!("--wan {wan} is not known; use --wan real (REGIONS.md round-trip times) or --wan off");
            }
            init_tracing(None);
            demo::run(DemoOptions { json, regions, port_base, state_dir, rate, feed, wan, pace, slow_bytes, router })
        }
        Cmd::Ingest { file, format, emit, book, stats, source, date } => {
            if emit != "jsonl" {
                anyhow::bail!("--emit {emit} is not supported; use --emit jsonl");
            }
            tickmesh::cmd::ingest::run(tickmesh::cmd::ingest::IngestOptions { file, format, book, stats, source, date })
        }
        Cmd::Audit { cmd } => tickmesh::cmd::audit::run(cmd),
        Cmd::Backup(a) => tickmesh::cmd::dr::backup(a),
        Cmd::Restore(a) => tickmesh::cmd::dr::restore(a),
        Cmd::Recover { cmd } => tickmesh::cmd::dr::recover(cmd),
        Cmd::Certs { cmd: CertsCmd::Init { dir, name } } => tickmesh::cmd::certs::init(&dir, &name),
        Cmd::Certs { cmd: CertsCmd::Issue { region, dir, days } } => tickmesh::cmd::certs::issue(&dir, &region, days),
        Cmd::Tap { region, mesh, pki, src, from, format, count } => {
            tickmesh::cmd::tap::run(tickmesh::cmd::tap::TapOptions { region, mesh, pki, src, from, format, count })
        }
        Cmd::Bench { cmd: BenchCmd::Mesh { rate, seconds, rtt_ms, records, io_slice_us, realtime_priority } } => {
            tickmesh::cmd::bench_mesh::run(tickmesh::cmd::bench_mesh::MeshBenchOptions {
                rate,
                seconds,
                rtt_ms,
                records,
                io_thread: tickmesh_replicate::ThreadSched { slice_us: io_slice_us, realtime_priority },
            })
        }
        Cmd::Bench { cmd: BenchCmd::Ingest { data, seconds } } => {
            tickmesh::cmd::bench_ingest::run(tickmesh::cmd::bench_ingest::IngestBenchOptions { data, seconds })
        }
        Cmd::Bench { cmd: BenchCmd::Failover { runs, regions, rate, wan, warmup, after, fault } } => {
            use std::time::Duration;
            use tickmesh::cmd::bench_failover::Fault;
            let fault = if fault == "freeze" { Fault::Freeze } else { Fault::Kill };
            tickmesh::cmd::bench_failover::run(tickmesh::cmd::bench_failover::FailoverOptions {
                runs,
                regions,
                rate,
                wan,
                warmup: Duration::from_secs(warmup),
                after: Duration::from_secs(after),
                fault,
            })
        }
        Cmd::Bench { cmd: BenchCmd::E2e(a) } => tickmesh::cmd::bench::e2e(a.options()?),
        Cmd::Bench { cmd: BenchCmd::All(a) } => tickmesh::cmd::bench_all::run(a),
        Cmd::Admin { cmd: AdminCmd::Route(c) } => tickmesh::cmd::admin_route::run(c),
        Cmd::Admin { cmd: AdminCmd::ForgetUser { id, home, json, at } } => {
            let AdminTarget { url, config, state_dir, token } = at;
            let o = tickmesh::cmd::admin::ForgetOptions { user: id, home, url, config, state_dir, token, json };
            tickmesh::cmd::admin::forget_user(o)
        }
        Cmd::Admin { cmd } => {
            use tickmesh::cmd::admin::{run, Action, AdminOptions};
            let (action, region, grace_ms, at) = match cmd {
                AdminCmd::Drain { region, grace_ms, at } => (Action::Drain, region, grace_ms, at),
                AdminCmd::Undrain { region, at } => (Action::Undrain, region, None, at),
                AdminCmd::Route(_) | AdminCmd::ForgetUser { .. } => unreachable!("matched above"),
            };
            let AdminTarget { url, config, state_dir, token } = at;
            run(AdminOptions { action, region, url, config, state_dir, token, grace_ms })
        }
        Cmd::Router(args) => {
            init_tracing(None);
            tickmesh::cmd::router::run(args)
        }
        Cmd::Bench { cmd: BenchCmd::Fanout(args) } => tickmesh::cmd::bench_fanout::run(args.into_options()?),
        Cmd::Bench { cmd: BenchCmd::FanoutServer(args) } => tickmesh::cmd::bench_fanout::serve_args(args),
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
    let metrics = tickmesh::metrics::Metrics::install_for_region(&cfg.region);
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
