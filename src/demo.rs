//! `tickmesh demo`: one OS process per region on this machine, wired into a mesh.
//!
//! The demo makes a state directory (a private CA and one certificate per region, an
//! HS256 token key, one node configuration per region), starts `tickmesh node` for each
//! region, waits until every region serves and every mesh link carries records, and prints
//! the PROTOCOL.md start-up lines. It never restarts a region that dies (a test may have
//! killed it on purpose). Ctrl-C or SIGTERM stops every region cleanly.

use anyhow::{bail, Context};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tickmesh_gateway::auth::{self, Claims, Grant};
use tickmesh_ingest::synthetic::SyntheticConfig;
use tickmesh_replicate::tls::{self, TlsFiles};
use tickmesh_replicate::{MeshConfig, PeerConfig};

use crate::config::{AuthConfig, FeedConfig, NodeConfig, RegionEntry};
use crate::http_get;

/// Demo options (the CLI's `demo` arguments).
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Print JSON lines instead of words.
    pub json: bool,
    /// Regions to run.
    pub regions: Vec<String>,
    /// First port; 0 picks free ports.
    pub port_base: u16,
    /// State directory; a fresh temporary one when absent.
    pub state_dir: Option<PathBuf>,
    /// Records per second per region.
    pub rate: u32,
    /// Feed selection: `default` (a real capture per region when present), `synthetic`, or
    /// `FORMAT:FILE` (region one replays it).
    pub feed: String,
    /// `real`: the measured round-trip times of REGIONS.md on every mesh link (user-space
    /// relays); `off`: plain loopback.
    pub wan: String,
    /// How captures are replayed.
    pub pace: crate::config::Pace,
    /// Gateway slow-consumer bound in bytes (None: the gateway default, 4 MiB).
    pub slow_bytes: Option<usize>,
    /// Also run `tickmesh router` (DNS) in the demo's process, answering [`DEMO_DNS_NAME`].
    pub router: bool,
}

/// The name the demo's DNS router answers.
pub const DEMO_DNS_NAME: &str = "md.tickmesh.test.";

/// Client subnets of the demo's DNS router: loopback sub-ranges (a client can bind one
/// with `dig -b`, or name one in EDNS Client Subnet) and two documentation ranges.
pub const DEMO_SUBNETS: [(&str, &str); 8] = [
    ("127.1.0.0/16", "US"),
    ("127.2.0.0/16", "DE"),
    ("127.3.0.0/16", "SG"),
    ("127.4.0.0/16", "BR"),
    ("127.5.0.0/16", "AU"),
    ("127.6.0.0/16", "AE"),
    ("198.51.100.0/24", "GB"),
    ("203.0.113.0/24", "JP"),
];

/// The loopback address of the demo's `i`-th region: 127.0.0.1, 127.0.0.2, ... Linux
/// routes all of 127/8 to `lo`, so each region gets its own address and DNS answers differ.
pub fn region_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, u8::try_from(i + 1).unwrap_or(254))
}

struct Region {
    name: String,
    ws: SocketAddr,
    mesh: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
}

/// Applies `<state-dir>/wan.ctl` to the WAN relays every 100 ms: one link per line,
/// `REGION REGION` (both directions of the pair) cuts it, `REGION REGION loss SHARE` drops
/// that share (0.0 to 1.0) of its datagrams; `*` names every region. A link not listed (or
/// no file) is up without extra loss. Tests and operators cut, heal and degrade links by
/// rewriting the file.
fn wan_control(
    ctl: &Path,
    relays: &std::collections::BTreeMap<(String, String), tickmesh_replicate::wan::Relay>,
    stop: &AtomicBool,
) {
    let mut last = String::new();
    while !stop.load(Ordering::Relaxed) {
        let text = std::fs::read_to_string(ctl).unwrap_or_default();
        if text != last {
            // (a, b, None: cut / Some(share): loss)
            let rules: Vec<(String, String, Option<f64>)> = text
                .lines()
                .filter_map(|l| {
                    let mut w = l.split_whitespace();
                    let (a, b) = (w.next()?.to_owned(), w.next()?.to_owned());
                    match (w.next(), w.next().map(str::parse::<f64>)) {
                        (None, _) | (Some("cut"), _) => Some((a, b, None)),
                        (Some("loss"), Some(Ok(share))) => Some((a, b, Some(share))),
                        _ => {
                            eprintln!("wan: ignoring {l:?} in {}: write `A B` or `A B loss 0.05`", ctl.display());
                            None
                        }
                    }
                })
                .collect();
            let on = |x: &str, a: &str| x == "*" || x == a;
            for ((a, b), relay) in relays {
                let (mut cut, mut loss) = (false, 0.0f64);
                for (_, _, r) in rules.iter().filter(|(x, y, _)| (on(x, a) && on(y, b)) || (on(x, b) && on(y, a))) {
                    match r {
                        None => cut = true,
                        Some(share) => loss = loss.max(*share),
                    }
                }
                relay.set_cut(cut);
                relay.set_loss(loss);
            }
            eprintln!("wan: links now {rules:?} (None: cut, Some: loss share)");
            last = text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Synthetic symbols per region: each region is the home of its own instruments.
fn symbols_for(i: usize) -> Vec<String> {
    let sets: [&[&str]; 6] = [
        &["AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META"],
        &["SAP", "ASML", "NESN", "SHEL", "HSBA", "SIE"],
        &["BTC-USD", "ETH-USD", "SOL-USD", "D05", "7203", "0700"],
        &["PETR4", "VALE3", "ITUB4"],
        &["BHP", "CBA", "CSL"],
        &["2222", "EMAAR", "QNBK"],
    ];
    sets[i % sets.len()].iter().map(|s| s.to_string()).collect()
}

/// Captures the demo replays by default, one per region, when `../shared/data` holds them.
const DEFAULT_CAPTURES: [(&str, &str); 3] = [
    ("itch", "../shared/data/itch/locate-13-10k.bin"),
    ("coinbase", "../shared/data/crypto/COINBASE.ws.28.0"),
    ("lobster", "../shared/data/lobster/AMZN_2012-06-21_34200000_57600000_message_1.csv"),
];

/// Source-id stem of a capture format.
fn format_tag(format: &str) -> &'static str {
    match format {
        "itch" | "moldudp64-pcap" => "ITCH",
        "dbn" => "DBN",
        "coinbase" => "CB",
        "binance" => "BN",
        "lobster" => "LOB",
        _ => "CAP",
    }
}

/// The feed of region `i`: `--feed synthetic`, `--feed FORMAT:FILE` (region 0 replays it,
/// the others run synthetic feeds), or by default a different real capture per region
/// when present (synthetic otherwise).
fn feed_for(i: usize, region: &str, opts: &DemoOptions) -> anyhow::Result<FeedConfig> {
    let code = crate::regions::short_code(region);
    let synthetic = || {
        FeedConfig::Synthetic(SyntheticConfig {
            source: format!("SYN.{code}"),
            seed: 1000 + i as u64,
            symbols: symbols_for(i),
            rate: opts.rate,
        })
    };
    let capture = |format: &str, path: &Path| -> anyhow::Result<FeedConfig> {
        let path = path.canonicalize().with_context(|| format!("capture {} not found", path.display()))?;
        let dated = tickmesh_ingest::itch::EasternDate::from_file_name(&path.to_string_lossy()).is_some();
        Ok(FeedConfig::Capture(crate::config::CaptureFeed {
            source: format!("{}.{code}", format_tag(format)),
            format: format.to_owned(),
            path,
            rate: opts.rate,
            pace: opts.pace,
            // A capture whose name carries no trading date (the ITCH sample) is replayed
            // as today's session.
            date: (format == "itch" && !dated).then(today_eastern),
        }))
    };
    match opts.feed.as_str() {
        "synthetic" => Ok(synthetic()),
        "default" => match DEFAULT_CAPTURES.get(i) {
            Some((format, path)) if Path::new(path).exists() => capture(format, Path::new(path)),
            _ => Ok(synthetic()),
        },
        spec => {
            let Some((format, path)) = spec.split_once(':') else {
                bail!("--feed {spec} is not synthetic or FORMAT:FILE (formats: {})", crate::cmd::ingest::FORMATS);
            };
            if !crate::cmd::ingest::FORMATS.split(", ").any(|f| f == format) {
                bail!("--feed format {format} is not one of {}", crate::cmd::ingest::FORMATS);
            }
            if i == 0 {
                capture(format, Path::new(path))
            } else {
                Ok(synthetic())
            }
        }
    }
}

/// Today's date in US/Eastern, `YYYY-MM-DD`.
fn today_eastern() -> String {
    let d = tickmesh_ingest::itch::EasternDate::from_unix_ns(tickmesh_codec::now_ns());
    d.to_string()
}

fn free_port_tcp(ip: Ipv4Addr) -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))
        .with_context(|| format!("binding {ip}; this host must route 127.0.0.0/8 to lo (Linux does)"))?
        .local_addr()?
        .port())
}
fn free_port_udp(ip: Ipv4Addr) -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind((ip, 0))?.local_addr()?.port())
}

fn write(path: &Path, contents: impl AsRef<[u8]>) -> anyhow::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Runs the demo until Ctrl-C / SIGTERM.
pub fn run(opts: DemoOptions) -> anyhow::Result<()> {
    for r in &opts.regions {
        if !crate::regions::is_known(r) {
            bail!("region '{r}' is not one of {}; pick regions from REGIONS.md", crate::regions::REGIONS.join(", "));
        }
    }
    if opts.regions.is_empty() {
        bail!("--regions is empty; name at least one region");
    }
    let state = match &opts.state_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("tickmesh-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&state).with_context(|| format!("creating state directory {}", state.display()))?;
    let state = state.canonicalize()?;

    // Credentials: a private CA, a certificate per region, the token key.
    let pki = state.join("pki");
    let ca = tls::generate_ca("tickmesh demo CA")?;
    write(&pki.join("ca.pem"), &ca.cert)?;
    // Kept so a region can be issued a certificate later and join the running demo.
    write(&pki.join("ca.key"), &ca.key)?;
    let key_file = pki.join("jwt-hs256.key");
    let secret: [u8; 32] = rand::random();
    let secret_hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    write(&key_file, &secret_hex)?;

    let mut regions = Vec::new();
    for (i, name) in opts.regions.iter().enumerate() {
        let (ws_port, mesh_port) = if opts.port_base == 0 {
            (free_port_tcp(region_ip(i))?, free_port_udp(region_ip(i))?)
        } else {
            let base = opts.port_base + (i as u16) * 10;
            (base, base + 1)
        };
        let leaf = tls::issue(&ca, name, 30)?;
        let dir = state.join(name);
        write(&pki.join(format!("{name}.pem")), &leaf.cert)?;
        write(&pki.join(format!("{name}.key")), &leaf.key)?;
        regions.push(Region {
            name: name.clone(),
            ws: SocketAddr::new(IpAddr::V4(region_ip(i)), ws_port),
            mesh: SocketAddr::new(IpAddr::V4(region_ip(i)), mesh_port),
            dir,
            child: None,
        });
    }
    let entries: Vec<RegionEntry> = regions
        .iter()
        .map(|r| RegionEntry {
            region: r.name.clone(),
            ws_url: format!("ws://{}/v1/ws", r.ws),
            http_url: format!("http://{}", r.ws),
        })
        .collect();
    // With `--wan real`, every (dialer, peer) pair talks through a relay that holds each
    // datagram for half the pair's measured round-trip time.
    let mut relays = std::collections::BTreeMap::new();
    if opts.wan == "real" {
        for a in &regions {
            for b in regions.iter().filter(|b| b.name != a.name) {
                let rtt = crate::regions::rtt_ms(&a.name, &b.name).unwrap_or(100);
                let model = tickmesh_replicate::wan::LinkModel::from_rtt_ms(rtt);
                let relay = tickmesh_replicate::wan::Relay::start(b.mesh, model, rtt.into())
                    .with_context(|| format!("starting the WAN relay {} -> {}", a.name, b.name))?;
                relays.insert((a.name.clone(), b.name.clone()), relay);
            }
        }
    }
    for (i, r) in regions.iter().enumerate() {
        let cfg = NodeConfig {
            region: r.name.clone(),
            state_dir: r.dir.clone(),
            role: Default::default(),
            gateway: tickmesh_gateway::GatewayConfig {
                listen: r.ws,
                slow_bytes: opts.slow_bytes.unwrap_or(tickmesh_gateway::GatewayConfig::default().slow_bytes),
                ..Default::default()
            },
            journal: Default::default(),
            mesh: Some(MeshConfig {
                listen: r.mesh,
                peers: regions
                    .iter()
                    .filter(|p| p.name != r.name)
                    .map(|p| PeerConfig {
                        region: p.name.clone(),
                        addr: relays
                            .get(&(r.name.clone(), p.name.clone()))
                            .map(|relay| relay.addr())
                            .unwrap_or(p.mesh)
                            .to_string(),
                    })
                    .collect(),
                tls: TlsFiles {
                    ca_cert: pki.join("ca.pem"),
                    cert: pki.join(format!("{}.pem", r.name)),
                    key: pki.join(format!("{}.key", r.name)),
                },
                reconnect_ms: 100,
                upstream: None,
                io_thread: Default::default(),
            }),
            auth: AuthConfig { hs256_key_files: vec![key_file.clone()], eddsa_public_key_files: vec![] },
            feeds: vec![feed_for(i, &r.name, &opts)?],
            regions: entries.clone(),
            ready: Default::default(),
            trading: Some(crate::tiers::trading::TradingConfig {
                source: format!("ORD.{}", crate::regions::short_code(&r.name)),
            }),
            userdata: Some(crate::tiers::userdata::UserDataConfig {
                backend: crate::tiers::userdata::Backend::Redb,
                postgres_url: None,
                cache_ttl_s: 60,
            }),
            residency: tickmesh_replicate::ResidencyConfig::regions_md(),
            telemetry: Default::default(),
        };
        write(&r.dir.join("node.toml"), toml::to_string_pretty(&cfg)?)?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        signal_flag(sig, stop.clone())?;
    }
    let relays = Arc::new(relays);
    if !relays.is_empty() {
        let (relays, stop, ctl) = (relays.clone(), stop.clone(), state.join("wan.ctl"));
        std::thread::Builder::new()
            .name("wan-control".into())
            .spawn(move || wan_control(&ctl, &relays, &stop))
            .context("starting the wan-control thread")?;
    }
    let exe = std::env::current_exe().context("finding the tickmesh binary")?;
    let result = start_and_wait(&exe, &mut regions, &opts, &secret_hex, &key_file, &stop);
    drop(relays);
    // Stop every region that is still running, whatever happened.
    for r in &mut regions {
        if let Some(c) = r.child.as_mut() {
            // SAFETY: plain syscall on a pid we own.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for r in &mut regions {
        if let Some(mut c) = r.child.take() {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !matches!(c.try_wait(), Ok(Some(_))) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    if !opts.json {
        println!("stopped; state kept in {}", state.display());
    }
    result
}

fn start_and_wait(
    exe: &Path,
    regions: &mut [Region],
    opts: &DemoOptions,
    secret_hex: &str,
    key_file: &Path,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    for r in regions.iter_mut() {
        let log = std::fs::File::create(r.dir.join("node.log"))?;
        let mut cmd = Command::new(exe);
        cmd.arg("node").arg("--config").arg(r.dir.join("node.toml"));
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        cmd.env("TICKMESH_LOG", std::env::var("TICKMESH_LOG").unwrap_or_else(|_| "info".into()));
        // SAFETY: prctl is async-signal-safe; it only makes the child die with the demo, so
        // a killed demo never leaves regions running.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting region {}", r.name))?;
        r.child = Some(child);
    }
    for r in regions.iter_mut() {
        let log = r.dir.join("node.log");
        let mut exited = None;
        let up = wait_until(Duration::from_secs(30), stop, || {
            if let Some(Ok(Some(status))) = r.child.as_mut().map(Child::try_wait) {
                exited = Some(status);
                return true;
            }
            matches!(http_get::get(r.ws, "/healthz", Duration::from_millis(500)), Ok((200, _)))
        });
        if let Some(status) = exited {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim_start().starts_with(|c: char| c.is_ascii_digit()) || l.contains("Error"))
                .take(12)
                .collect();
            bail!(
                "region {} exited during start-up ({status}); its log {} says:\n{}",
                r.name,
                log.display(),
                tail.join("\n")
            );
        }
        up.with_context(|| format!("region {} did not come up; see {}", r.name, log.display()))?;
        let pid = r.child.as_ref().map(|c| c.id()).unwrap_or(0);
        if opts.json {
            println!(
                "{}",
                serde_json::json!({"event":"region_up","region":r.name,"pid":pid,
                    "ws_url":format!("ws://{}/v1/ws", r.ws),"http_url":format!("http://{}", r.ws)})
            );
        } else {
            println!(
                "region {:<15} up: ws://{}/v1/ws (pid {pid}, log {})",
                r.name,
                r.ws,
                r.dir.join("node.log").display()
            );
        }
    }
    let now = tickmesh_codec::now_ns() / 1_000_000_000;
    let user = Claims {
        sub: "demo-user".into(),
        exp: now + 86_400,
        home: Some(regions[0].name.clone()),
        channels: Grant::List(["trades", "quotes", "book", "status", "orders"].map(String::from).to_vec()),
        symbols: Grant::All,
        roles: vec![],
    };
    let admin = Claims { sub: "demo-admin".into(), roles: vec!["admin".into()], ..user.clone() };
    let user_token = auth::mint_hs256(secret_hex.as_bytes(), &user)?;
    let admin_token = auth::mint_hs256(secret_hex.as_bytes(), &admin)?;
    // Ready once every region receives from every peer and every peer receives from it.
    let n = regions.len();
    wait_until(Duration::from_secs(30), stop, || {
        regions.iter().all(|r| match http_get::get(r.ws, "/readyz", Duration::from_millis(500)) {
            Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| {
                let peers = v["peers"].as_object().cloned().unwrap_or_default();
                peers.len() == n - 1 && peers.values().all(|p| p["receiving"] == true && p["sending"] == true)
            }),
            _ => false,
        })
    })
    .context("the mesh did not connect every pair of regions in 30 s; see the node.log files")?;
    let _router = if opts.router {
        let router = start_router(regions, opts)?;
        if opts.json {
            println!(
                "{}",
                serde_json::json!({"event":"router_up","dns_addr":router.local_addr().to_string(),"name":router.name()})
            );
        } else {
            println!(
                "DNS router: {} on {} (UDP and TCP), e.g. dig @{} -p {} {} +subnet=127.2.0.0/24",
                router.name(),
                router.local_addr(),
                router.local_addr().ip(),
                router.local_addr().port(),
                router.name()
            );
        }
        Some(router)
    } else {
        None
    };
    if opts.json {
        println!(
            "{}",
            serde_json::json!({"event":"tokens","user":user_token,"admin":admin_token,"jwt_key_file":key_file})
        );
        println!("{}", serde_json::json!({"event":"ready"}));
    } else {
        println!("\nall {n} regions are meshed and streaming.");
        println!("dashboard: http://{}/?token={user_token}", regions[0].ws);
        for r in regions.iter().skip(1) {
            println!("           http://{}/?token={user_token}", r.ws);
        }
        println!("user token:  {user_token}\nadmin token: {admin_token}\nJWT key file: {}", key_file.display());
        println!("press Ctrl-C to stop");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    while !stop.load(Ordering::Relaxed) {
        for r in regions.iter_mut() {
            if let Some(c) = r.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    if !opts.json {
                        println!("region {} exited ({status}); not restarting it", r.name);
                    }
                    r.child = None;
                }
            }
        }
        if regions.iter().all(|r| r.child.is_none()) {
            bail!("every region has exited");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Starts the DNS router for the demo's regions, on 127.0.0.1 (port base + 10 per region,
/// or a free port), and writes its configuration next to the regions' for reference.
fn start_router(regions: &[Region], opts: &DemoOptions) -> anyhow::Result<crate::cmd::router::Router> {
    use crate::cmd::router::{Router, RouterConfig, RouterRegion, SubnetRule};
    let port = if opts.port_base == 0 { 0 } else { opts.port_base + 10 * regions.len() as u16 };
    let cfg = RouterConfig {
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        name: DEMO_DNS_NAME.into(),
        ttl_s: 5,
        poll_ms: 1000,
        down_after: 2,
        default_country: None,
        regions: regions
            .iter()
            .map(|r| RouterRegion {
                region: r.name.clone(),
                http_url: format!("http://{}", r.ws),
                address: Some(r.ws.ip()),
            })
            .collect(),
        subnets: DEMO_SUBNETS
            .iter()
            .filter_map(|(cidr, cc)| {
                Some(SubnetRule { cidr: cidr.parse().ok()?, country: Some((*cc).into()), region: None })
            })
            .collect(),
        weights: Default::default(),
    };
    if let Some(state) = regions.first().and_then(|r| r.dir.parent()) {
        write(&state.join("router.toml"), toml::to_string_pretty(&cfg)?)?;
    }
    Router::start(cfg).context("starting the demo's DNS router")
}

fn wait_until(limit: Duration, stop: &AtomicBool, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {limit:?}")
}

static FLAGS: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

extern "C" fn on_signal(_: libc::c_int) {
    if let Some(f) = FLAGS.get() {
        f.store(true, Ordering::Relaxed);
    }
}

/// Sets `flag` when `sig` arrives (async-signal-safe: one atomic store).
pub(crate) fn signal_flag(sig: libc::c_int, flag: Arc<AtomicBool>) -> anyhow::Result<()> {
    let _ = FLAGS.set(flag);
    // SAFETY: installing a handler that only performs an atomic store.
    let r = unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    if r == libc::SIG_ERR {
        bail!("cannot install the handler for signal {sig}");
    }
    Ok(())
}
