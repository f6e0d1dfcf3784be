//! `tickmesh bench fanout`: one stream of trades to 100, 1,000 and 10,000 clients through
//! four servers, side by side in one run.
//!
//! * `raw`: the loopback TCP write limit. Each batch of messages is encoded once into one
//!   shared `Bytes`, every client gets the same bytes with batched writes, no WebSocket.
//! * `naive`: the usual Rust stack. A multi-thread tokio runtime, a tokio broadcast channel of
//!   trade structs, and per client per message: serialize with serde_json, frame with
//!   tokio-tungstenite, send and flush. A lagging receiver loses messages silently.
//! * `nats`: nats-server (Debian package) with its WebSocket listener, a publisher on the raw
//!   NATS protocol, clients speaking the NATS text protocol over WebSocket.
//! * `tickmesh`: the real gateway ([`tickmesh_gateway::Gateway::start`]) fed through
//!   [`tickmesh_gateway::Fanout::publish`], clients subscribing per PROTOCOL.md.
//!
//! Every server except nats-server runs as a child process of this command (the hidden
//! `tickmesh bench fanout-server --system ...`), so its RSS is its own: memory per
//! connection is (RSS with the clients connected − RSS before) / clients, once idle and once
//! under load. The clients live in this process: raw TCP sockets on one current-thread
//! runtime, a minimal frame parser, and the latency of every message (receive time minus the
//! `ts_ingest` the publisher stamped into it) in one hdrhistogram. The offered rate is per
//! client: every client subscribes to the one stream of `--rate` messages per second.
//!
//! The messages are the protocol's `trade` data message (~150 bytes of JSON), rendered by
//! the codec for raw, nats and tickmesh, and by serde_json from a struct of the same fields
//! for naive.

use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use std::cell::{Cell, RefCell};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tickmesh_codec::{Body, InstrumentId, Meta, Px, Qty, Record, Seq, Side, SourceId, Symbol, Trade};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The source and symbol of the benchmark stream.
const SRC: &str = "XNAS.ITCH";
const SYM: &str = "AAPL";

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// Loopback TCP, one encode, batched shared writes, no WebSocket.
    Raw,
    /// tokio-tungstenite broadcast server.
    Naive,
    /// nats-server with its WebSocket listener.
    Nats,
    /// The tickmesh gateway.
    Tickmesh,
}

impl System {
    /// Parses a `--systems` item.
    pub fn parse(s: &str) -> anyhow::Result<System> {
        Ok(match s {
            "raw" => System::Raw,
            "naive" => System::Naive,
            "nats" => System::Nats,
            "tickmesh" => System::Tickmesh,
            other => bail!("--systems {other} is not known; use raw, naive, nats, tickmesh (comma-separated)"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            System::Raw => "raw",
            System::Naive => "naive",
            System::Nats => "nats",
            System::Tickmesh => "tickmesh",
        }
    }

    fn label(self) -> &'static str {
        match self {
            System::Raw => "raw TCP (limit)",
            System::Naive => "naive tokio-tungstenite",
            System::Nats => "nats-server WebSocket",
            System::Tickmesh => "tickmesh",
        }
    }
}

/// Options of `bench fanout`.
#[derive(Debug, Clone)]
pub struct FanoutOptions {
    /// Client counts.
    pub clients: Vec<usize>,
    /// Messages per second offered to every client.
    pub rate: u32,
    /// Measurement window per case.
    pub seconds: u64,
    /// Systems to run, in order.
    pub systems: Vec<System>,
    /// Write results as JSON here.
    pub json: Option<PathBuf>,
    /// `gateway.io_backend` values to run the tickmesh server with, one row each (empty:
    /// its default).
    pub io_backends: Vec<String>,
}

/// Command line of `tickmesh bench fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Client counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    pub clients: Vec<usize>,
    /// Messages per second offered to every client (one stream, every client subscribed).
    #[arg(long, default_value_t = 20_000)]
    pub rate: u32,
    /// Measurement window per case, seconds (after connecting and one second of warm-up).
    #[arg(long, default_value_t = 4)]
    pub seconds: u64,
    /// Systems, comma-separated: raw, naive, nats, tickmesh.
    #[arg(long, value_delimiter = ',', default_value = "raw,naive,nats,tickmesh")]
    pub systems: Vec<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// `gateway.io_backend` of the tickmesh server, comma-separated for one row each:
    /// epoll, io_uring (default: the gateway's default).
    #[arg(long, value_delimiter = ',')]
    pub io_backend: Vec<String>,
}

impl FanoutArgs {
    /// Checks the arguments.
    pub fn into_options(self) -> anyhow::Result<FanoutOptions> {
        let systems = self.systems.iter().map(|s| System::parse(s.trim())).collect::<anyhow::Result<Vec<_>>>()?;
        Ok(FanoutOptions {
            clients: self.clients,
            rate: self.rate,
            seconds: self.seconds,
            systems,
            json: self.json,
            io_backends: self.io_backend,
        })
    }
}

/// Command line of the hidden `tickmesh bench fanout-server`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// raw, naive or tickmesh.
    #[arg(long)]
    pub system: String,
    /// Messages per second to publish once told to start.
    #[arg(long)]
    pub rate: u32,
    /// `gateway.io_backend` (tickmesh only).
    #[arg(long)]
    pub io_backend: Option<String>,
}

/// Runs the hidden server subcommand.
pub fn serve_args(args: ServerArgs) -> anyhow::Result<()> {
    serve(System::parse(&args.system)?, args.rate, args.io_backend)
}

/// One measured case.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaseResult {
    /// Server.
    pub system: System,
    /// The tickmesh server's `gateway.io_backend`, when given.
    pub io_backend: Option<String>,
    /// Clients connected.
    pub clients: usize,
    /// Messages offered per second, all clients together.
    pub offered_per_sec: f64,
    /// Messages delivered per second, all clients together.
    pub delivered_per_sec: f64,
    /// Latency percentiles, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Server RSS growth per connection with idle subscribed clients, bytes.
    pub mem_per_conn_idle: f64,
    /// Server RSS growth per connection under load, bytes.
    pub mem_per_conn_load: f64,
    /// Why the case could not run, if it could not.
    pub skipped: Option<String>,
}

impl CaseResult {
    fn label(&self) -> String {
        match &self.io_backend {
            Some(b) => format!("{} ({b})", self.system.label()),
            None => self.system.label().to_owned(),
        }
    }

    fn skipped(system: System, clients: usize, why: String) -> Self {
        CaseResult {
            system,
            io_backend: None,
            clients,
            offered_per_sec: 0.0,
            delivered_per_sec: 0.0,
            p50_us: 0.0,
            p99_us: 0.0,
            p999_us: 0.0,
            mem_per_conn_idle: 0.0,
            mem_per_conn_load: 0.0,
            skipped: Some(why),
        }
    }
}

/// Raises `RLIMIT_NOFILE` to its hard limit; fails if that is below `need`.
pub fn raise_fd_limit(need: u64) -> anyhow::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!("cannot read the open-file limit: {}", std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            bail!("cannot raise the open-file limit to {}: {}", lim.rlim_max, std::io::Error::last_os_error());
        }
    }
    if lim.rlim_cur < need {
        bail!(
            "the open-file limit is {} but this run needs {need}; raise the hard limit (as root: `ulimit -n {}`) or use fewer --clients",
            lim.rlim_cur,
            need.max(1024) * 2
        );
    }
    Ok(lim.rlim_cur)
}

/// A trade record stamped with `ts_ingest = now`.
fn trade_record(seq: u64) -> Vec<u8> {
    let now = tickmesh_codec::now_ns();
    Record::new(
        Meta {
            src: SourceId::new(SRC).expect("constant source id is valid"),
            seq: Seq(seq),
            instrument: InstrumentId(1),
            sym: Symbol::new(SYM).expect("constant symbol is valid"),
            ts_event: now,
            ts_ingest: now,
        },
        Body::Trade(Trade {
            px: Px(320_140_000_000 + (seq % 100) as i64 * 10_000_000),
            qty: Qty(100 * 1_000_000_000),
            side: if seq.is_multiple_of(2) { Side::Buy } else { Side::Sell },
            match_id: seq,
        }),
    )
    .to_bytes()
}

/// The protocol's JSON `trade` message of a fresh trade.
fn trade_json(seq: u64, out: &mut Vec<u8>) {
    let b = trade_record(seq);
    if let Ok(rec) = tickmesh_codec::access_untrusted(&b) {
        tickmesh_codec::json::write_json(&rec, out);
    }
}

/// The same message as the naive server's struct (serialised per client).
#[derive(Debug, Clone, serde::Serialize)]
struct NaiveTrade {
    #[serde(rename = "type")]
    kind: &'static str,
    src: &'static str,
    seq: u64,
    sym: &'static str,
    ts: u64,
    ts_ingest: u64,
    px: String,
    qty: String,
    side: &'static str,
}

/// Paces a stream at `rate` per second: how many messages are due now.
struct Pacer {
    start: Instant,
    rate: f64,
    sent: u64,
}

impl Pacer {
    fn new(rate: u32) -> Self {
        Pacer { start: Instant::now(), rate: f64::from(rate), sent: 0 }
    }

    /// Messages due since the last call, capped at 100 ms worth so a stalled publisher does
    /// not burst its backlog all at once.
    fn due(&mut self) -> u64 {
        let want = (self.start.elapsed().as_secs_f64() * self.rate) as u64;
        let cap = (self.rate / 10.0).max(1.0) as u64;
        if want > self.sent + cap {
            self.sent = want - cap;
        }
        let n = want - self.sent.min(want);
        self.sent += n;
        n
    }
}

// ---------------------------------------------------------------------------------------
// Servers (the hidden `bench fanout-server` subcommand)
// ---------------------------------------------------------------------------------------

/// Runs one server until stdin closes: prints `{"port":P,"token":T}`, waits for a `start`
/// line on stdin, then publishes `rate` messages per second.
pub fn serve(system: System, rate: u32, io_backend: Option<String>) -> anyhow::Result<()> {
    raise_fd_limit(1024)?;
    let start = Arc::new(AtomicBool::new(false));
    let started = {
        let start = start.clone();
        move || start.load(Ordering::Acquire)
    };
    let stdin_watch = move |port: u16, token: &str| -> anyhow::Result<()> {
        println!("{}", serde_json::json!({"port": port, "token": token}));
        std::io::stdout().flush()?;
        std::thread::Builder::new().name("bench-stdin".into()).spawn(move || {
            for line in std::io::stdin().lines() {
                match line {
                    Ok(l) if l.trim() == "start" => start.store(true, Ordering::Release),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            // The parent is gone or done with us.
            std::process::exit(0);
        })?;
        Ok(())
    };
    match system {
        System::Raw => serve_raw(rate, stdin_watch, started),
        System::Naive => serve_naive(rate, stdin_watch, started),
        System::Tickmesh => serve_tickmesh(rate, io_backend, stdin_watch, started),
        System::Nats => bail!("nats is served by nats-server itself, not by fanout-server"),
    }
}

fn serve_raw(
    rate: u32,
    announce: impl FnOnce(u16, &str) -> anyhow::Result<()>,
    started: impl Fn() -> bool + 'static,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        announce(listener.local_addr()?.port(), "")?;
        let (tx, _) = tokio::sync::broadcast::channel::<Bytes>(4096);
        let ptx = tx.clone();
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            while !started() {
                tick.tick().await;
            }
            let mut pacer = Pacer::new(rate);
            let mut seq = 0u64;
            let mut buf = Vec::with_capacity(64 * 1024);
            loop {
                tick.tick().await;
                let n = pacer.due();
                if n == 0 {
                    continue;
                }
                buf.clear();
                for _ in 0..n {
                    seq += 1;
                    trade_json(seq, &mut buf);
                    buf.push(b'\n');
                }
                let _ = ptx.send(Bytes::copy_from_slice(&buf));
            }
        });
        loop {
            let (mut stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let mut rx = tx.subscribe();
            tokio::task::spawn_local(async move {
                let mut batch: Vec<Bytes> = Vec::with_capacity(64);
                loop {
                    match rx.recv().await {
                        Ok(b) => batch.push(b),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    }
                    while batch.len() < 64 {
                        match rx.try_recv() {
                            Ok(b) => batch.push(b),
                            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => continue,
                            Err(_) => break,
                        }
                    }
                    if write_all_vectored(&mut stream, &batch).await.is_err() {
                        return;
                    }
                    batch.clear();
                }
            });
        }
    })
}

async fn write_all_vectored(stream: &mut TcpStream, bufs: &[Bytes]) -> std::io::Result<()> {
    let mut idx = 0;
    let mut off = 0;
    while idx < bufs.len() {
        let slices: Vec<std::io::IoSlice<'_>> = std::iter::once(std::io::IoSlice::new(&bufs[idx][off..]))
            .chain(bufs[idx + 1..].iter().map(|b| std::io::IoSlice::new(b)))
            .collect();
        let mut n = stream.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && idx < bufs.len() {
            let left = bufs[idx].len() - off;
            if n >= left {
                n -= left;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

fn serve_naive(
    rate: u32,
    announce: impl FnOnce(u16, &str) -> anyhow::Result<()>,
    started: impl Fn() -> bool + Send + 'static,
) -> anyhow::Result<()> {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    // The usual stack: the multi-thread runtime with its defaults.
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        announce(listener.local_addr()?.port(), "")?;
        let (tx, _) = tokio::sync::broadcast::channel::<NaiveTrade>(4096);
        let ptx = tx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            while !started() {
                tick.tick().await;
            }
            let mut pacer = Pacer::new(rate);
            let mut seq = 0u64;
            loop {
                tick.tick().await;
                for _ in 0..pacer.due() {
                    seq += 1;
                    let now = tickmesh_codec::now_ns();
                    let _ = ptx.send(NaiveTrade {
                        kind: "trade",
                        src: SRC,
                        seq,
                        sym: SYM,
                        ts: now,
                        ts_ingest: now,
                        px: Px(320_140_000_000 + (seq % 100) as i64 * 10_000_000).to_string(),
                        qty: "100".into(),
                        side: if seq.is_multiple_of(2) { "buy" } else { "sell" },
                    });
                }
            }
        });
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let mut rx = tx.subscribe();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                loop {
                    let t = match rx.recv().await {
                        Ok(t) => t,
                        // Lost silently, as a broadcast channel does.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    };
                    let Ok(text) = serde_json::to_string(&t) else { continue };
                    if ws.send(Message::text(text)).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}

fn serve_tickmesh(
    rate: u32,
    io_backend: Option<String>,
    announce: impl FnOnce(u16, &str) -> anyhow::Result<()>,
    started: impl Fn() -> bool,
) -> anyhow::Result<()> {
    use tickmesh_gateway::auth::{mint_hs256, Claims, Grant, Verifier};
    let secret: [u8; 32] = rand::random();
    let mut verifier = Verifier::new();
    verifier.add_hs256(&secret);
    let shared = Arc::new(tickmesh_gateway::GatewayShared::new("bench", verifier, Box::new(String::new)));
    let mut cfg =
        tickmesh_gateway::GatewayConfig { listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..Default::default() };
    if let Some(b) = io_backend {
        cfg.io_backend = b;
    }
    let (gw, mut fanout) = tickmesh_gateway::Gateway::start(cfg, shared, axum::Router::new())?;
    let claims = Claims {
        sub: "bench".into(),
        exp: tickmesh_codec::now_ns() / 1_000_000_000 + 86_400,
        home: None,
        channels: Grant::All,
        symbols: Grant::All,
        roles: vec![],
    };
    let token = mint_hs256(&secret, &claims)?;
    // One record before any client, so the symbol is known and plain subscribes succeed.
    let mut seq = 1u64;
    let b = trade_record(seq);
    fanout.publish(&tickmesh_codec::access_untrusted(&b)?);
    announce(gw.local_addr().port(), &token)?;
    while !started() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut pacer = Pacer::new(rate);
    loop {
        std::thread::sleep(Duration::from_millis(1));
        for _ in 0..pacer.due() {
            seq += 1;
            let b = trade_record(seq);
            fanout.publish(&tickmesh_codec::access_untrusted(&b)?);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

/// What all clients of one case share (one thread, so cells).
struct Stats {
    measuring: Cell<bool>,
    delivered: Cell<u64>,
    ready: Cell<usize>,
    failed: Cell<usize>,
    first_error: RefCell<Option<String>>,
    hist: RefCell<Histogram<u64>>,
}

impl Stats {
    fn new() -> anyhow::Result<Rc<Stats>> {
        Ok(Rc::new(Stats {
            measuring: Cell::new(false),
            delivered: Cell::new(0),
            ready: Cell::new(0),
            failed: Cell::new(0),
            first_error: RefCell::new(None),
            hist: RefCell::new(Histogram::new_with_bounds(1, 600_000_000_000, 3)?),
        }))
    }

    /// One data message carrying `"ts_ingest":N` arrived in a read that returned at `now`.
    fn message(&self, payload: &[u8], now: u64) {
        if !self.measuring.get() {
            return;
        }
        self.delivered.set(self.delivered.get() + 1);
        if let Some(ts) = ts_ingest(payload) {
            self.hist.borrow_mut().saturating_record(now.saturating_sub(ts).max(1));
        }
    }

    fn fail(&self, e: impl std::fmt::Display) {
        self.failed.set(self.failed.get() + 1);
        let mut f = self.first_error.borrow_mut();
        if f.is_none() {
            *f = Some(e.to_string());
        }
    }
}

/// The number after `"ts_ingest":` in a JSON message. Its `_` is the first in the message
/// (type, source and symbol have none), so one byte scan finds it.
fn ts_ingest(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"ts_ingest\":";
    let at = match payload.iter().position(|b| *b == b'_') {
        Some(u) if u >= 3 && payload[u - 3..].starts_with(KEY) => u - 3 + KEY.len(),
        _ => payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len(),
    };
    let mut v = 0u64;
    let mut any = false;
    for &b in &payload[at..] {
        if !b.is_ascii_digit() {
            break;
        }
        v = v * 10 + u64::from(b - b'0');
        any = true;
    }
    any.then_some(v)
}

/// What a client speaks once connected.
#[derive(Clone)]
enum ClientKind {
    /// Newline-separated JSON over TCP.
    Raw,
    /// WebSocket, JSON text frames; `subscribe` is sent first when given.
    Ws { path: String, subscribe: Option<String> },
    /// WebSocket carrying the NATS text protocol.
    Nats { path: String },
}

/// A masked client frame (clients must mask; the key does not matter here).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x11u8, 0x22, 0x33, 0x44];
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x80 | opcode);
    if payload.len() <= 125 {
        f.push(0x80 | payload.len() as u8);
    } else if payload.len() <= 65535 {
        f.push(0x80 | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// The protocol state of one client connection, sans-I/O: bytes in, replies out.
#[derive(Default)]
struct Conn {
    raw: bool,
    nats: bool,
    /// NATS protocol bytes carried over between WebSocket frames.
    nats_buf: Vec<u8>,
    /// Bytes to send back (pongs).
    replies: Vec<u8>,
    ready: bool,
    closed: bool,
    error: Option<String>,
}

impl Conn {
    /// Consumes complete messages from `data`; returns how many bytes were used.
    fn consume(&mut self, data: &[u8], now: u64, stats: &Stats) -> usize {
        if self.raw {
            let mut start = 0;
            while let Some(nl) = data[start..].iter().position(|b| *b == b'\n') {
                stats.message(&data[start..start + nl], now);
                start += nl + 1;
            }
            return start;
        }
        let mut pos = 0;
        loop {
            let b = &data[pos..];
            if b.len() < 2 {
                break;
            }
            let op = b[0] & 0x0f;
            let (len, hl) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
                127 if b.len() >= 10 => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&b[2..10]);
                    (u64::from_be_bytes(a) as usize, 10)
                }
                126 | 127 => break,
                l => (usize::from(l), 2),
            };
            if b.len() < hl + len {
                break;
            }
            let payload = &b[hl..hl + len];
            match op {
                0..=2 if self.nats => {
                    self.nats_buf.extend_from_slice(payload);
                    let (used, ping, pong) = parse_nats(&self.nats_buf, now, stats);
                    self.nats_buf.drain(..used);
                    self.ready |= pong;
                    if ping {
                        self.replies.extend_from_slice(&client_frame(2, b"PONG\r\n"));
                    }
                }
                1 | 2 => {
                    if payload.starts_with(b"{\"type\":\"trade\"") {
                        stats.message(payload, now);
                    } else if payload.starts_with(b"{\"type\":\"subscribed\"") {
                        self.ready = true;
                    } else if payload.starts_with(b"{\"type\":\"error\"") {
                        self.error = Some(format!("server error: {}", String::from_utf8_lossy(payload)));
                    }
                }
                8 => self.closed = true,
                9 => self.replies.extend_from_slice(&client_frame(10, payload)),
                _ => {}
            }
            pos += hl + len;
        }
        pos
    }
}

thread_local! {
    /// One read buffer for every client of the thread: a socket is read into it and its
    /// complete messages are parsed in place, so 10,000 clients do not hold 10,000 buffers.
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; 256 * 1024]);
}

/// Reads what the socket has, hands complete messages to `conn`, and keeps only an
/// incomplete tail in `carry`. Ok(false) at end of stream.
async fn read_round(s: &TcpStream, carry: &mut Vec<u8>, conn: &mut Conn, stats: &Stats) -> std::io::Result<bool> {
    loop {
        s.readable().await?;
        let r: std::io::Result<bool> = READ_BUF.with(|rb| {
            let mut rb = rb.borrow_mut();
            let n = s.try_read(&mut rb[..])?;
            if n == 0 {
                return Ok(false);
            }
            let now = tickmesh_codec::now_ns();
            if carry.is_empty() {
                let used = conn.consume(&rb[..n], now, stats);
                carry.extend_from_slice(&rb[used..n]);
            } else {
                carry.extend_from_slice(&rb[..n]);
                let used = conn.consume(carry, now, stats);
                carry.drain(..used);
                if carry.capacity() > 64 * 1024 && carry.len() < 16 * 1024 {
                    carry.shrink_to(16 * 1024);
                }
            }
            Ok(true)
        });
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

async fn client(addr: SocketAddr, kind: ClientKind, stats: Rc<Stats>, permit: tokio::sync::OwnedSemaphorePermit) {
    if let Err(e) = client_inner(addr, kind, &stats, Some(permit)).await {
        stats.fail(e);
    }
}

async fn client_inner(
    addr: SocketAddr,
    kind: ClientKind,
    stats: &Stats,
    mut permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).await.context("connect")?;
    s.set_nodelay(true)?;
    let mut carry: Vec<u8> = Vec::new();
    let mut conn = Conn::default();
    match &kind {
        ClientKind::Raw => {
            conn.raw = true;
            conn.ready = true;
        }
        ClientKind::Ws { path, .. } | ClientKind::Nats { path } => {
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await?;
            let mut head = Vec::new();
            let mut rd = [0u8; 1024];
            loop {
                let n = s.read(&mut rd).await?;
                if n == 0 {
                    bail!("server closed during the upgrade");
                }
                head.extend_from_slice(&rd[..n]);
                if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    if !head.starts_with(b"HTTP/1.1 101") {
                        bail!("upgrade refused: {}", String::from_utf8_lossy(&head[..end.min(300)]));
                    }
                    carry.extend_from_slice(&head[end + 4..]);
                    break;
                }
                if head.len() > 16 * 1024 {
                    bail!("upgrade response too long");
                }
            }
            match &kind {
                ClientKind::Ws { subscribe: Some(sub), .. } => s.write_all(&client_frame(1, sub.as_bytes())).await?,
                ClientKind::Nats { .. } => {
                    conn.nats = true;
                    let hello =
                        b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\nSUB trades 1\r\nPING\r\n";
                    s.write_all(&client_frame(2, hello)).await?;
                }
                _ => conn.ready = true,
            }
            if !carry.is_empty() {
                let used = conn.consume(&carry, tickmesh_codec::now_ns(), stats);
                carry.drain(..used);
            }
        }
    }
    loop {
        if conn.ready && permit.take().is_some() {
            stats.ready.set(stats.ready.get() + 1);
        }
        if let Some(e) = conn.error.take() {
            bail!(e);
        }
        if !conn.replies.is_empty() {
            let r = std::mem::take(&mut conn.replies);
            s.write_all(&r).await?;
        }
        if conn.closed || !read_round(&s, &mut carry, &mut conn, stats).await? {
            return Ok(());
        }
    }
}

/// Parses NATS server protocol lines; returns (bytes consumed, a PING to answer, a PONG seen).
fn parse_nats(buf: &[u8], now: u64, stats: &Stats) -> (usize, bool, bool) {
    let mut pos = 0;
    let mut ping = false;
    let mut pong = false;
    while let Some(eol) = buf[pos..].windows(2).position(|w| w == b"\r\n") {
        let line = &buf[pos..pos + eol];
        if let Some(rest) = line.strip_prefix(b"MSG ") {
            let size: usize = rest
                .rsplit(|b| *b == b' ')
                .next()
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let body = pos + eol + 2;
            if buf.len() < body + size + 2 {
                break;
            }
            stats.message(&buf[body..body + size], now);
            pos = body + size + 2;
            continue;
        }
        if line == b"PING" {
            ping = true;
        } else if line == b"PONG" {
            pong = true;
        } else if line.starts_with(b"-ERR") {
            stats.fail(String::from_utf8_lossy(line));
        }
        pos += eol + 2;
    }
    (pos, ping, pong)
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A server child of one case.
struct Server {
    child: Child,
    addr: SocketAddr,
    token: String,
    /// For nats: the client (publisher) port, and the publisher's stop flag.
    nats_port: Option<u16>,
    stop: Arc<AtomicBool>,
    /// For nats: its config directory, removed on drop.
    dir: Option<PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_server(system: System, rate: u32, io_backend: Option<&str>) -> anyhow::Result<Server> {
    if system == System::Nats {
        return start_nats();
    }
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "fanout-server", "--system", system.name(), "--rate", &rate.to_string()]);
    if let Some(b) = io_backend {
        cmd.args(["--io-backend", b]);
    }
    let mut child = cmd
        .env("TICKMESH_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting `tickmesh bench fanout-server`")?;
    let stdout = child.stdout.take().context("server stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let v: serde_json::Value = match serde_json::from_str(&line) {
        Ok(v) => v,
        Err(_) => {
            let _ = child.kill();
            bail!("the {} server did not start (printed {line:?})", system.name());
        }
    };
    let port = v["port"].as_u64().context("server port")? as u16;
    Ok(Server {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        token: v["token"].as_str().unwrap_or_default().to_owned(),
        nats_port: None,
        stop: Arc::new(AtomicBool::new(false)),
        dir: None,
    })
}

fn start_nats() -> anyhow::Result<Server> {
    let dir = std::env::temp_dir().join(format!("tickmesh-bench-nats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let port = free_port()?;
    let ws_port = free_port()?;
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: \"127.0.0.1:{port}\"\nmax_payload: 1048576\nwebsocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n  compression: false\n}}\n"
        ),
    )?;
    let child = match Command::new("nats-server")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("nats: not installed (apt-get install nats-server)")
        }
        Err(e) => return Err(e).context("starting nats-server"),
    };
    let server = Server {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], ws_port)),
        token: String::new(),
        nats_port: Some(port),
        stop: Arc::new(AtomicBool::new(false)),
        dir: Some(dir),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    for p in [port, ws_port] {
        while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not listen on 127.0.0.1:{p} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(server)
}

/// Publishes the stream to nats-server over the raw NATS protocol until `stop`.
fn nats_publisher(port: u16, rate: u32, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    let mut r = s.try_clone()?;
    let mut w = s.try_clone()?;
    // Answer the server's PINGs so it keeps the publisher.
    std::thread::Builder::new().name("nats-pub-rd".into()).spawn(move || {
        let mut b = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut r, &mut b) {
            if n == 0 {
                break;
            }
            if b[..n].windows(4).any(|x| x == b"PING") && w.write_all(b"PONG\r\n").is_err() {
                break;
            }
        }
    })?;
    s.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")?;
    let mut pacer = Pacer::new(rate);
    let mut seq = 0u64;
    let mut out = Vec::with_capacity(64 * 1024);
    let mut json = Vec::with_capacity(256);
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(1));
        out.clear();
        for _ in 0..pacer.due() {
            seq += 1;
            json.clear();
            trade_json(seq, &mut json);
            out.extend_from_slice(format!("PUB trades {}\r\n", json.len()).as_bytes());
            out.extend_from_slice(&json);
            out.extend_from_slice(b"\r\n");
        }
        if !out.is_empty() {
            s.write_all(&out)?;
        }
    }
    Ok(())
}

fn start_publishing(server: &mut Server, rate: u32) -> anyhow::Result<()> {
    if let Some(port) = server.nats_port {
        let stop = server.stop.clone();
        std::thread::Builder::new().name("nats-pub".into()).spawn(move || {
            if let Err(e) = nats_publisher(port, rate, stop.clone()) {
                // A reset once the case is over is nats-server being stopped.
                if !stop.load(Ordering::Acquire) {
                    eprintln!("nats publisher: {e}");
                }
            }
        })?;
        return Ok(());
    }
    let stdin = server.child.stdin.as_mut().context("server stdin")?;
    stdin.write_all(b"start\n")?;
    stdin.flush()?;
    Ok(())
}

async fn run_case(
    system: System,
    io_backend: Option<&str>,
    clients: usize,
    opts: &FanoutOptions,
) -> anyhow::Result<CaseResult> {
    let mut server = start_server(system, opts.rate, io_backend)?;
    let pid = server.child.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = rss_bytes(pid);
    let stats = Stats::new()?;
    let kind = match system {
        System::Raw => ClientKind::Raw,
        System::Naive => ClientKind::Ws { path: "/".into(), subscribe: None },
        System::Nats => ClientKind::Nats { path: "/".into() },
        System::Tickmesh => ClientKind::Ws {
            path: format!("/v1/ws?token={}", server.token),
            subscribe: Some(format!(r#"{{"op":"subscribe","id":1,"channels":["trades"],"symbols":["{SYM}"]}}"#)),
        },
    };
    // At most 256 clients between connect and ready, so listen backlogs do not overflow.
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(clients);
    let connect_deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..clients {
        let permit = gate.clone().acquire_owned().await?;
        tasks.push(tokio::task::spawn_local(client(server.addr, kind.clone(), stats.clone(), permit)));
        if stats.failed.get() > 0 || Instant::now() > connect_deadline {
            break;
        }
    }
    while stats.ready.get() < clients && stats.failed.get() == 0 && Instant::now() < connect_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let abort = |tasks: Vec<tokio::task::JoinHandle<()>>| {
        for t in tasks {
            t.abort();
        }
    };
    if stats.ready.get() < clients {
        abort(tasks);
        let why = stats.first_error.borrow().clone().unwrap_or_else(|| "timed out".into());
        bail!("only {} of {clients} {} clients got ready: {why}", stats.ready.get(), system.name());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_bytes(pid);
    start_publishing(&mut server, opts.rate)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stats.hist.borrow_mut().reset();
    stats.delivered.set(0);
    stats.measuring.set(true);
    let t0 = Instant::now();
    let window = Duration::from_secs(opts.seconds.max(1));
    tokio::time::sleep(window / 2).await;
    let load = rss_bytes(pid);
    tokio::time::sleep(window.saturating_sub(t0.elapsed())).await;
    stats.measuring.set(false);
    let secs = t0.elapsed().as_secs_f64();
    drop(server);
    abort(tasks);
    // Let the aborted sockets close before the next case.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let h = stats.hist.borrow();
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let per_conn = |rss: u64| rss.saturating_sub(base) as f64 / clients as f64;
    Ok(CaseResult {
        system,
        io_backend: io_backend.map(str::to_owned),
        clients,
        offered_per_sec: f64::from(opts.rate) * clients as f64,
        delivered_per_sec: stats.delivered.get() as f64 / secs,
        p50_us: us(0.5),
        p99_us: us(0.99),
        p999_us: us(0.999),
        mem_per_conn_idle: per_conn(idle),
        mem_per_conn_load: per_conn(load),
        skipped: None,
    })
}

fn human_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn human_us(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} ms", v / 1e3)
    } else {
        format!("{v:.0} µs")
    }
}

fn human_bytes(v: f64) -> String {
    if v >= 1024.0 {
        format!("{:.1} KiB", v / 1024.0)
    } else {
        format!("{v:.0} B")
    }
}

/// Renders the results as a Markdown table plus ratio rows.
pub fn table(results: &[CaseResult], rate: u32) -> String {
    let mut t = String::new();
    t.push_str(&format!("fan-out, {rate} msg/s offered to every client, one stream of ~150-byte trade JSON\n\n"));
    t.push_str(
        "| system | clients | delivered msg/s | of offered | p50 | p99 | p99.9 | mem/conn idle | mem/conn load |\n",
    );
    t.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for r in results {
        if let Some(why) = &r.skipped {
            t.push_str(&format!("| {} | {} | {why} | | | | | | |\n", r.label(), r.clients));
            continue;
        }
        t.push_str(&format!(
            "| {} | {} | {} | {:.0}% | {} | {} | {} | {} | {} |\n",
            r.label(),
            r.clients,
            human_rate(r.delivered_per_sec),
            100.0 * r.delivered_per_sec / r.offered_per_sec.max(1.0),
            human_us(r.p50_us),
            human_us(r.p99_us),
            human_us(r.p999_us),
            human_bytes(r.mem_per_conn_idle),
            human_bytes(r.mem_per_conn_load),
        ));
    }
    let find = |s: System, n: usize| results.iter().find(|r| r.system == s && r.clients == n && r.skipped.is_none());
    let mut counts: Vec<usize> = results.iter().map(|r| r.clients).collect();
    counts.dedup();
    let mut ratios = String::new();
    for n in counts {
        let tms = results.iter().filter(|r| r.system == System::Tickmesh && r.clients == n && r.skipped.is_none());
        for tm in tms {
            for other in [System::Naive, System::Nats, System::Raw] {
                let Some(o) = find(other, n) else { continue };
                ratios.push_str(&format!(
                    "| {} / {} | {n} | {:.2}x | | | | | {:.2}x | |\n",
                    tm.label(),
                    other.name(),
                    tm.delivered_per_sec / o.delivered_per_sec.max(1.0),
                    tm.mem_per_conn_idle / o.mem_per_conn_idle.max(1.0),
                ));
            }
        }
    }
    if !ratios.is_empty() {
        t.push_str(&ratios);
    }
    t
}

/// Runs every case and prints the table.
pub fn run(opts: FanoutOptions) -> anyhow::Result<()> {
    let most = opts.clients.iter().copied().max().unwrap_or(0) as u64;
    raise_fd_limit(most + 512)?;
    if opts.clients.is_empty() || opts.systems.is_empty() {
        bail!("nothing to run; give --clients and --systems at least one value each");
    }
    if opts.rate == 0 {
        bail!("--rate 0 offers nothing; use e.g. --rate 20000");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let results = local.block_on(&rt, async {
        let mut results = Vec::new();
        for &n in &opts.clients {
            for &system in &opts.systems {
                let backends: Vec<Option<&str>> = if system == System::Tickmesh && !opts.io_backends.is_empty() {
                    opts.io_backends.iter().map(|b| Some(b.as_str())).collect()
                } else {
                    vec![None]
                };
                for backend in backends {
                    eprintln!("bench fanout: {} {} with {n} clients", system.name(), backend.unwrap_or(""));
                    let r = match run_case(system, backend, n, &opts).await {
                        Ok(r) => r,
                        Err(e) => {
                            eprintln!("bench fanout: {} with {n} clients: {e:#}", system.name());
                            let msg = format!("{e:#}");
                            let msg =
                                if msg.starts_with("nats: not installed") { msg } else { format!("failed: {msg}") };
                            let mut r = CaseResult::skipped(system, n, msg);
                            r.io_backend = backend.map(str::to_owned);
                            r
                        }
                    };
                    results.push(r);
                }
            }
        }
        results
    });
    print!("{}", table(&results, opts.rate));
    if let Some(path) = &opts.json {
        let v = serde_json::json!({"rate": opts.rate, "seconds": opts.seconds, "io_backends": opts.io_backends, "results": results});
        std::fs::write(path, serde_json::to_vec_pretty(&v)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trade_json_is_the_protocol_message_with_a_timestamp() {
        let mut out = Vec::new();
        trade_json(7, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "trade");
        assert_eq!(v["sym"], SYM);
        assert!((120..=170).contains(&out.len()), "{} bytes: {}", out.len(), String::from_utf8_lossy(&out));
        assert_eq!(ts_ingest(&out), v["ts_ingest"].as_u64());
    }

    #[test]
    fn nats_messages_are_parsed_across_chunks() {
        let stats = Stats::new().unwrap();
        stats.measuring.set(true);
        let msg = b"INFO {}\r\nMSG trades 1 15\r\n{\"ts_ingest\":1}\r\nPING\r\nMSG trades 1 5\r\nab";
        let (used, ping, pong) = parse_nats(msg, 1, &stats);
        assert!(ping && !pong);
        assert_eq!(stats.delivered.get(), 1);
        assert_eq!(&msg[used..], b"MSG trades 1 5\r\nab");
    }

    #[test]
    fn pacer_never_bursts_more_than_a_tenth_of_a_second() {
        let mut p = Pacer::new(1000);
        p.start -= Duration::from_secs(10);
        assert!(p.due() <= 100);
        assert_eq!(p.due(), 0);
    }
}
