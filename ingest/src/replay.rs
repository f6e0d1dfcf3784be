//! Crypto captures: reading them ([`load_capture`]), decoding them whole ([`decode_capture`],
//! for `tickmesh ingest FILE --format coinbase|binance`) and serving them as a local venue
//! ([`ReplayServer`]) so the live adapters can be tested end to end, and the demo can feed a
//! region from a real capture (`tickmesh demo --feed coinbase:FILE`).
//!
//! # Capture formats (cryptofeed's)
//! * "master" text (`COINBASE.ws.28.0`, `BINANCE.ws.1.0`): `<url> <-> <ts>` a connect,
//!   `<url> <- <ts>: <payload>` a message we sent, `<ts>: <payload>` a message received; `ts`
//!   is Unix seconds with a fraction.
//! * v3 JSON lines, zstd-compressed (`COINBASE.jsonl.zst`): one object per line with `t` =
//!   `header`, `http`, `connect`, `send` or `recv`; `recv` carries `data` and `ts`.
//!
//! # The replay server plays the venue
//! It listens on 127.0.0.1:0 and runs **one venue timeline**: playback starts when the first
//! client subscribes (Coinbase) or connects (Binance), and every connected client gets the
//! received messages in capture order, as fast as possible or at the recorded pace scaled by a
//! factor. While it plays it keeps the venue's book per product from the capture's own
//! snapshots and updates, including messages it was told to drop, because a venue's book
//! moves on whatever a client loses. That book answers resync requests:
//! * Coinbase: a `subscribe` to the book channel for a product whose book the venue knows,
//!   after playback started, is answered with a snapshot of that book at the current position
//!   (Exchange `snapshot`, Advanced `l2_data` snapshot). Advanced Trade messages are renumbered
//!   per connection (`sequence_num`), and dropped messages use up their numbers, so a gap shows.
//! * Binance: `GET /api/v3/depth?symbol=S` answers `lastUpdateId` = the last `u` streamed for
//!   `S` and the levels rebuilt from the diffs so far. The capture has no REST snapshot, so
//!   this book holds only levels the capture touched; the response says so with
//!   `"x_tickmesh_partial": true` (see [`crate::binance`] for what the decoder does with it).
//!
//! Gaps: [`ReplayOptions::gaps`] drops given ranges of the capture's received messages, and
//! [`ReplayHandle::drop_next`] drops the next N while playing.
//!
//! At the end of the capture the server lingers ([`ReplayOptions::linger`]) so that a client
//! resynchronising a late gap gets its snapshot, then closes every WebSocket with code 1000
//! ("end of capture"); the REST endpoint keeps answering until the server is shut down. A capture is played once: the
//! venue's update ids cannot go backwards, so there is no looping.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tickmesh_codec::Px;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::error::{Error, Result};

/// Which venue API a capture holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureFormat {
    /// Coinbase Exchange (`ws-feed.pro.coinbase.com`, `ws-feed.exchange.coinbase.com`).
    CoinbaseExchange,
    /// Coinbase Advanced Trade (`advanced-trade-ws.coinbase.com`).
    CoinbaseAdvanced,
    /// Binance spot combined streams.
    Binance,
}

impl CaptureFormat {
    /// From a name: `coinbase` / `coinbase-exchange`, `coinbase-advanced`, `binance`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "coinbase" | "coinbase-exchange" => Ok(Self::CoinbaseExchange),
            "coinbase-advanced" => Ok(Self::CoinbaseAdvanced),
            "binance" => Ok(Self::Binance),
            other => Err(Error::Config(format!(
                "capture format {other:?} is not known; use coinbase, coinbase-exchange, coinbase-advanced or binance"
            ))),
        }
    }

    fn from_url(url: &str) -> Option<Self> {
        if url.contains("advanced-trade") {
            Some(Self::CoinbaseAdvanced)
        } else if url.contains("coinbase") {
            Some(Self::CoinbaseExchange)
        } else if url.contains("binance") {
            Some(Self::Binance)
        } else {
            None
        }
    }
}

/// One received message of a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// Receipt time, ns since the Unix epoch.
    pub ts_ns: u64,
    /// The WebSocket text message.
    pub payload: String,
}

/// A capture: the venue URL and every message received, in order.
#[derive(Debug, Clone)]
pub struct Capture {
    /// Which API.
    pub format: CaptureFormat,
    /// The WebSocket URL the capture was taken from.
    pub url: String,
    /// Received messages.
    pub received: Vec<Captured>,
    /// Messages the recorder sent (subscriptions), for information.
    pub sent: Vec<String>,
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// Parses `1618677817.0618958` into ns exactly (no float rounding).
fn parse_ts(text: &str) -> Option<u64> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if int.is_empty() || !int.bytes().all(|c| c.is_ascii_digit()) || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = int.parse().ok()?;
    let mut ns = 0u64;
    for (i, c) in frac.bytes().take(9).enumerate() {
        ns += u64::from(c - b'0') * 10u64.pow(8 - i as u32);
    }
    secs.checked_mul(1_000_000_000)?.checked_add(ns)
}

/// Reads a capture file in either cryptofeed format (detected from its first bytes).
pub fn load_capture(path: &Path) -> Result<Capture> {
    let mut raw = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut raw))
        .map_err(io_err(format!("reading capture {}", path.display())))?;
    if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let mut text = Vec::new();
        zstd::stream::read::Decoder::new(&raw[..])
            .and_then(|mut d| d.read_to_end(&mut text))
            .map_err(io_err(format!("decompressing capture {} (zstd)", path.display())))?;
        parse_jsonl(path, &text)
    } else {
        parse_master(path, &raw)
    }
}

fn parse_master(path: &Path, raw: &[u8]) -> Result<Capture> {
    let text = std::str::from_utf8(raw).map_err(|e| Error::Parse {
        format: "capture",
        offset: e.valid_up_to() as u64,
        what: format!("{} is not UTF-8 text; is it a cryptofeed capture?", path.display()),
    })?;
    let mut url = None;
    let mut received = Vec::new();
    let mut sent = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |what: &str| Error::Parse {
            format: "capture",
            offset: n as u64 + 1,
            what: format!("{}: line {}: {what}", path.display(), n + 1),
        };
        if line.trim().is_empty() {
            continue;
        }
        if line.as_bytes()[0].is_ascii_digit() {
            let (ts, payload) = line.split_once(": ").ok_or_else(|| bad("received line without \"<ts>: \""))?;
            let ts_ns = parse_ts(ts).ok_or_else(|| bad("bad timestamp"))?;
            received.push(Captured { ts_ns, payload: payload.to_owned() });
        } else if let Some((u, _)) = line.split_once(" <-> ") {
            url.get_or_insert_with(|| u.to_owned());
        } else if let Some((_, rest)) = line.split_once(" <- ") {
            let (_, payload) = rest.split_once(": ").ok_or_else(|| bad("sent line without payload"))?;
            sent.push(payload.to_owned());
        } else {
            return Err(bad(
                "neither a connect, a sent nor a received line; is this a cryptofeed master-format capture?",
            ));
        }
    }
    let url = url.ok_or_else(|| Error::Parse {
        format: "capture",
        offset: 0,
        what: format!("{} has no connect line (\"<url> <-> <ts>\")", path.display()),
    })?;
    let format = CaptureFormat::from_url(&url)
        .ok_or_else(|| Error::Config(format!("{}: venue of {url} is not Coinbase or Binance", path.display())))?;
    Ok(Capture { format, url, received, sent })
}

fn parse_jsonl(path: &Path, text: &[u8]) -> Result<Capture> {
    let mut url = None;
    let mut received = Vec::new();
    let mut sent = Vec::new();
    for (n, line) in text.split(|c| *c == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let bad = |what: String| Error::Parse {
            format: "capture",
            offset: n as u64 + 1,
            what: format!("{}: line {}: {what}", path.display(), n + 1),
        };
        let v: Value = serde_json::from_slice(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        match v.get("t").and_then(Value::as_str) {
            Some("connect") => {
                if let Some(a) = v.get("addr").and_then(Value::as_str) {
                    url.get_or_insert_with(|| a.to_owned());
                }
            }
            Some("send") => sent.push(v.get("data").and_then(Value::as_str).unwrap_or("").to_owned()),
            Some("recv") => {
                let data = v.get("data").and_then(Value::as_str).ok_or_else(|| bad("recv without data".into()))?;
                let ts = v.get("ts").and_then(Value::as_f64).ok_or_else(|| bad("recv without ts".into()))?;
                received.push(Captured { ts_ns: (ts * 1e9).round() as u64, payload: data.to_owned() });
            }
            _ => {}
        }
    }
    let url = url.ok_or_else(|| Error::Parse {
        format: "capture",
        offset: 0,
        what: format!("{} has no connect line", path.display()),
    })?;
    let format = CaptureFormat::from_url(&url)
        .ok_or_else(|| Error::Config(format!("{}: venue of {url} is not Coinbase or Binance", path.display())))?;
    Ok(Capture { format, url, received, sent })
}

/// What [`decode_capture`] did.
#[derive(Debug, Default)]
pub struct CaptureSummary {
    /// The capture's format.
    pub format: Option<CaptureFormat>,
    /// Received messages fed to the decoder.
    pub messages: usize,
    /// Records emitted.
    pub records: usize,
    /// Messages the decoder rejected: (index of the received message, error). Decoding goes
    /// on after a bad message, as a live feed would.
    pub errors: Vec<(usize, Error)>,
    /// Venue message counts by type.
    pub counts: Vec<(String, u64)>,
}

enum AnyDecoder {
    Exchange(crate::coinbase::ExchangeDecoder),
    Advanced(crate::coinbase::AdvancedDecoder),
    Binance(crate::binance::Decoder),
}

/// Decodes a whole capture (for `tickmesh ingest FILE --format coinbase|binance`): picks the
/// decoder from the capture itself (Coinbase Exchange or Advanced Trade; Binance in
/// [`crate::binance::SyncMode::DiffOnly`], as a capture has no REST snapshot), feeds every
/// received message with its recorded receipt time, and hands each record to `on_record`.
pub fn decode_capture(
    path: &Path,
    src: tickmesh_codec::SourceId,
    mut on_record: impl FnMut(&tickmesh_codec::Record),
) -> Result<CaptureSummary> {
    use crate::Decoder as _;
    let cap = load_capture(path)?;
    let mut sum = CaptureSummary { format: Some(cap.format), ..CaptureSummary::default() };
    let mut dec = match cap.format {
        CaptureFormat::CoinbaseExchange => AnyDecoder::Exchange(crate::coinbase::ExchangeDecoder::new(src, &[])?),
        CaptureFormat::CoinbaseAdvanced => AnyDecoder::Advanced(crate::coinbase::AdvancedDecoder::new(src, &[])?),
        CaptureFormat::Binance => {
            AnyDecoder::Binance(crate::binance::Decoder::new(src, &[], crate::binance::SyncMode::DiffOnly)?)
        }
    };
    let mut out = Vec::new();
    for (i, m) in cap.received.iter().enumerate() {
        out.clear();
        let d: &mut dyn crate::Decoder = match &mut dec {
            AnyDecoder::Exchange(d) => {
                d.set_receipt_time(m.ts_ns);
                d
            }
            AnyDecoder::Advanced(d) => {
                d.set_receipt_time(m.ts_ns);
                d
            }
            AnyDecoder::Binance(d) => {
                d.set_receipt_time(m.ts_ns);
                d
            }
        };
        if let Err(e) = d.feed(m.payload.as_bytes(), &mut out) {
            sum.errors.push((i, e));
        }
        sum.messages += 1;
        sum.records += out.len();
        out.iter().for_each(&mut on_record);
    }
    sum.counts = match &dec {
        AnyDecoder::Exchange(d) => d.message_counts(),
        AnyDecoder::Advanced(d) => d.message_counts(),
        AnyDecoder::Binance(d) => d.message_counts(),
    };
    Ok(sum)
}

// ---------------------------------------------------------------------------------------------
// The venue's books.
// ---------------------------------------------------------------------------------------------

/// One product's levels as the venue holds them: keyed by price, keeping the venue's text.
#[derive(Debug, Default, Clone)]
struct VenueBook {
    bids: BTreeMap<Px, (String, String)>,
    asks: BTreeMap<Px, (String, String)>,
    known: bool,
    last_u: u64,
}

impl VenueBook {
    fn set(&mut self, bid: bool, p: &str, q: &str) {
        let Ok(key) = Px::parse(p) else { return };
        let side = if bid { &mut self.bids } else { &mut self.asks };
        if tickmesh_codec::Qty::parse(q).is_ok_and(|q| q.raw() == 0) {
            side.remove(&key);
        } else {
            side.insert(key, (p.to_owned(), q.to_owned()));
        }
    }

    fn bids_best_first(&self) -> impl Iterator<Item = &(String, String)> {
        self.bids.values().rev()
    }

    fn asks_best_first(&self) -> impl Iterator<Item = &(String, String)> {
        self.asks.values()
    }
}

#[derive(Debug, Default)]
struct Venue {
    books: HashMap<String, VenueBook>,
}

fn str_pair(v: &Value) -> Option<(&str, &str)> {
    Some((v.get(0)?.as_str()?, v.get(1)?.as_str()?))
}

impl Venue {
    /// Applies a received message to the venue's books.
    fn observe(&mut self, format: CaptureFormat, m: &Value) {
        match format {
            CaptureFormat::CoinbaseExchange => {
                let Some(p) = m.get("product_id").and_then(Value::as_str) else { return };
                match m.get("type").and_then(Value::as_str) {
                    Some("snapshot") => {
                        let b = self.books.entry(p.to_owned()).or_default();
                        *b = VenueBook { known: true, ..VenueBook::default() };
                        for (key, bid) in [("bids", true), ("asks", false)] {
                            for l in m.get(key).and_then(Value::as_array).into_iter().flatten() {
                                if let Some((px, q)) = str_pair(l) {
                                    b.set(bid, px, q);
                                }
                            }
                        }
                    }
                    Some("l2update") => {
                        let b = self.books.entry(p.to_owned()).or_default();
                        for c in m.get("changes").and_then(Value::as_array).into_iter().flatten() {
                            if let (Some(s), Some(px), Some(q)) = (
                                c.get(0).and_then(Value::as_str),
                                c.get(1).and_then(Value::as_str),
                                c.get(2).and_then(Value::as_str),
                            ) {
                                b.set(s == "buy", px, q);
                            }
                        }
                    }
                    _ => {}
                }
            }
            CaptureFormat::CoinbaseAdvanced => {
                if m.get("channel").and_then(Value::as_str) != Some("l2_data") {
                    return;
                }
                for e in m.get("events").and_then(Value::as_array).into_iter().flatten() {
                    let Some(p) = e.get("product_id").and_then(Value::as_str) else { continue };
                    let b = self.books.entry(p.to_owned()).or_default();
                    if e.get("type").and_then(Value::as_str) == Some("snapshot") {
                        *b = VenueBook { known: true, ..VenueBook::default() };
                    }
                    for u in e.get("updates").and_then(Value::as_array).into_iter().flatten() {
                        if let (Some(s), Some(px), Some(q)) = (
                            u.get("side").and_then(Value::as_str),
                            u.get("price_level").and_then(Value::as_str),
                            u.get("new_quantity").and_then(Value::as_str),
                        ) {
                            b.set(s == "bid", px, q);
                        }
                    }
                }
            }
            CaptureFormat::Binance => {
                let d = m.get("data").unwrap_or(m);
                if d.get("e").and_then(Value::as_str) != Some("depthUpdate") {
                    return;
                }
                let (Some(s), Some(u)) = (d.get("s").and_then(Value::as_str), d.get("u").and_then(Value::as_u64))
                else {
                    return;
                };
                let b = self.books.entry(s.to_owned()).or_default();
                b.known = true;
                b.last_u = u;
                for (key, bid) in [("b", true), ("a", false)] {
                    for l in d.get(key).and_then(Value::as_array).into_iter().flatten() {
                        if let Some((px, q)) = str_pair(l) {
                            b.set(bid, px, q);
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server.
// ---------------------------------------------------------------------------------------------

/// How fast the capture is played.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// As fast as the clients take the messages.
    Fast,
    /// At the recorded pace divided by this factor (2.0 plays twice as fast).
    Recorded(f64),
}

/// Settings of [`ReplayServer::start_with`].
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Playback speed.
    pub pace: Pace,
    /// Ranges of the capture's received messages (indices into [`Capture::received`]) that
    /// are not delivered: the venue sends them, the network loses them.
    pub gaps: Vec<Range<usize>>,
    /// After the last message, connections stay open (answering resync requests) until every
    /// client has been sent everything and nothing was asked for this long. Default 1 s. A
    /// client still resynchronising a gap near the end needs it; a real venue never ends.
    pub linger: Duration,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions { pace: Pace::Fast, gaps: Vec::new(), linger: Duration::from_secs(1) }
    }
}

enum Ctl {
    Open { id: u64, tx: mpsc::Sender<String>, streams: Option<HashSet<String>> },
    Text { id: u64, text: String },
    Closed { id: u64 },
    Depth { symbol: String, reply: oneshot::Sender<(u16, String)> },
    DropNext(usize),
}

/// Serves a capture as a local venue (see the module docs).
#[derive(Debug)]
pub struct ReplayServer;

/// Controls a running [`ReplayServer`]; dropping it stops the server.
#[derive(Debug)]
pub struct ReplayHandle {
    addr: SocketAddr,
    format: CaptureFormat,
    ctl: mpsc::Sender<Ctl>,
    progress: watch::Receiver<Progress>,
    tasks: Vec<JoinHandle<()>>,
}

/// How far playback got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Received messages of the capture played so far (delivered or dropped).
    pub played: usize,
    /// Of those, dropped to simulate loss.
    pub dropped: usize,
    /// True once the whole capture was played.
    pub done: bool,
}

impl ReplayServer {
    /// Loads `path`, checks it is a `format` capture and serves it at `pace` on 127.0.0.1:0.
    pub async fn start(
        path: impl AsRef<Path>,
        format: CaptureFormat,
        pace: Pace,
    ) -> Result<(SocketAddr, ReplayHandle)> {
        Self::start_with(path, format, ReplayOptions { pace, ..ReplayOptions::default() }).await
    }

    /// As [`Self::start`], with gaps.
    pub async fn start_with(
        path: impl AsRef<Path>,
        format: CaptureFormat,
        opts: ReplayOptions,
    ) -> Result<(SocketAddr, ReplayHandle)> {
        let path: PathBuf = path.as_ref().to_owned();
        let capture = tokio::task::spawn_blocking(move || load_capture(&path))
            .await
            .map_err(|e| Error::Config(format!("capture loader failed: {e}")))??;
        if capture.format != format {
            return Err(Error::Config(format!(
                "capture of {} is {:?}, not {format:?}; pass the matching format",
                capture.url, capture.format
            )));
        }
        Self::serve(capture, opts).await
    }

    /// Serves an already loaded capture.
    pub async fn serve(capture: Capture, opts: ReplayOptions) -> Result<(SocketAddr, ReplayHandle)> {
        if let Pace::Recorded(f) = opts.pace {
            if !(f.is_finite() && f > 0.0) {
                return Err(Error::Config(format!("replay pace factor {f} must be a positive number, e.g. 1.0")));
            }
        }
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io_err("binding the replay server on 127.0.0.1:0".into()))?;
        let addr = listener.local_addr().map_err(io_err("reading the replay server address".into()))?;
        let (ctl_tx, ctl_rx) = mpsc::channel(1024);
        let (prog_tx, prog_rx) = watch::channel(Progress::default());
        let format = capture.format;
        let venue = tokio::spawn(venue_task(Arc::new(capture), opts, ctl_rx, prog_tx));
        let accept_ctl = ctl_tx.clone();
        let accept = tokio::spawn(async move {
            let mut next_id = 0u64;
            while let Ok((tcp, _)) = listener.accept().await {
                next_id += 1;
                tokio::spawn(serve_conn(tcp, next_id, accept_ctl.clone()));
            }
        });
        Ok((addr, ReplayHandle { addr, format, ctl: ctl_tx, progress: prog_rx, tasks: vec![venue, accept] }))
    }
}

impl ReplayHandle {
    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The WebSocket URL: `ws://ADDR/` (Binance clients append `stream?streams=...`).
    pub fn ws_url(&self) -> String {
        match self.format {
            CaptureFormat::Binance => format!("ws://{}", self.addr),
            _ => format!("ws://{}/", self.addr),
        }
    }

    /// The REST base URL (Binance depth snapshots): `http://ADDR`.
    pub fn rest_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops the next `n` messages of the capture (the venue's books still take them).
    pub async fn drop_next(&self, n: usize) {
        let _ = self.ctl.send(Ctl::DropNext(n)).await;
    }

    /// Playback progress so far.
    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    /// Waits until the whole capture was played.
    pub async fn finished(&mut self) -> Progress {
        let _ = self.progress.wait_for(|p| p.done).await;
        *self.progress.borrow()
    }

    /// Stops the server and closes every connection.
    pub fn shutdown(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for ReplayHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Conn {
    id: u64,
    tx: mpsc::Sender<String>,
    /// Binance: the streams named in the URL (None: all).
    streams: Option<HashSet<String>>,
    /// Coinbase: (channel, product) pairs subscribed.
    subs: HashSet<(String, String)>,
    /// Advanced Trade: this connection's next `sequence_num`.
    seq: u64,
}

/// What a message is, for routing: (channel, product).
fn route(format: CaptureFormat, m: &Value) -> (String, Option<String>) {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    match format {
        CaptureFormat::CoinbaseExchange => {
            let channel = match m.get("type").and_then(Value::as_str) {
                Some("snapshot" | "l2update") => "level2",
                Some("match" | "last_match") => "matches",
                Some("ticker") => "ticker",
                Some("heartbeat") => "heartbeat",
                _ => "",
            };
            (channel.to_owned(), s(m.get("product_id")))
        }
        CaptureFormat::CoinbaseAdvanced => {
            let channel = match m.get("channel").and_then(Value::as_str) {
                Some("l2_data") => "level2",
                Some(c @ ("market_trades" | "ticker" | "heartbeats" | "candles")) => c,
                _ => "",
            };
            let ev = m.get("events").and_then(|e| e.get(0));
            let product = ev.and_then(|e| {
                s(e.get("product_id"))
                    .or_else(|| s(e.get("trades").and_then(|t| t.get(0)).and_then(|t| t.get("product_id"))))
                    .or_else(|| s(e.get("tickers").and_then(|t| t.get(0)).and_then(|t| t.get("product_id"))))
                    .or_else(|| s(e.get("candles").and_then(|t| t.get(0)).and_then(|t| t.get("product_id"))))
            });
            (channel.to_owned(), product)
        }
        CaptureFormat::Binance => (s(m.get("stream")).unwrap_or_default(), None),
    }
}

fn wants(conn: &Conn, format: CaptureFormat, channel: &str, product: &Option<String>) -> bool {
    match format {
        CaptureFormat::Binance => conn.streams.as_ref().is_none_or(|s| s.contains(channel)),
        _ => match (channel, product) {
            ("", _) | ("heartbeats", None) => true,
            (c, Some(p)) => conn.subs.contains(&(c.to_owned(), p.clone())),
            (_, None) => false,
        },
    }
}

async fn venue_task(
    capture: Arc<Capture>,
    opts: ReplayOptions,
    mut ctl: mpsc::Receiver<Ctl>,
    progress: watch::Sender<Progress>,
) {
    let format = capture.format;
    let mut venue = Venue::default();
    // Binance: before its first diff, a symbol's snapshot point is just before that diff.
    let mut first_u: HashMap<String, u64> = HashMap::new();
    if format == CaptureFormat::Binance {
        for c in &capture.received {
            if let Ok(v) = serde_json::from_str::<Value>(&c.payload) {
                let d = v.get("data").unwrap_or(&v);
                if let (Some(s), Some(u)) = (d.get("s").and_then(Value::as_str), d.get("U").and_then(Value::as_u64)) {
                    if d.get("e").and_then(Value::as_str) == Some("depthUpdate") {
                        first_u.entry(s.to_owned()).or_insert(u.saturating_sub(1));
                    }
                }
            }
        }
    }
    let mut conns: Vec<Conn> = Vec::new();
    let mut started = false;
    let mut pos = 0usize;
    let mut drop_next = 0usize;
    let mut dropped = 0usize;
    let mut closed = false;
    let mut clock: Option<(tokio::time::Instant, u64)> = None;
    let mut last_ts_text = String::new();
    let mut linger_since: Option<tokio::time::Instant> = None;
    loop {
        let playing = started && pos < capture.received.len();
        if started && !playing && !closed && linger_since.is_none() {
            linger_since = Some(tokio::time::Instant::now());
            progress.send_replace(Progress { played: pos, dropped, done: true });
        }
        let cmd = if playing {
            let due = match opts.pace {
                Pace::Fast => None,
                Pace::Recorded(f) => {
                    let ts = capture.received[pos].ts_ns;
                    let (t0, ts0) = *clock.get_or_insert((tokio::time::Instant::now(), ts));
                    Some(t0 + Duration::from_nanos((ts.saturating_sub(ts0) as f64 / f) as u64))
                }
            };
            match due {
                None => match ctl.try_recv() {
                    Ok(c) => Some(c),
                    Err(mpsc::error::TryRecvError::Empty) => None,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                },
                Some(due) => tokio::select! {
                    biased;
                    c = ctl.recv() => match c { Some(c) => Some(c), None => return },
                    _ = tokio::time::sleep_until(due) => None,
                },
            }
        } else if linger_since.is_some() && !closed {
            // Everything was queued; wait until the clients have it and went quiet.
            let drained = conns.iter().all(|c| c.tx.capacity() == c.tx.max_capacity());
            let overdue = linger_since.is_some_and(|t| t.elapsed() > Duration::from_secs(30));
            let wait = if drained || overdue { opts.linger } else { Duration::from_millis(50) };
            match tokio::time::timeout(wait, ctl.recv()).await {
                Ok(Some(c)) => Some(c),
                Ok(None) => return,
                Err(_) => {
                    if drained || overdue {
                        closed = true;
                        conns.clear(); // dropping the senders closes every WebSocket
                    }
                    None
                }
            }
        } else {
            match ctl.recv().await {
                Some(c) => Some(c),
                None => return,
            }
        };
        match cmd {
            Some(Ctl::Open { id, tx, streams }) => {
                if closed {
                    continue; // the capture is over: the connection closes at once
                }
                conns.push(Conn { id, tx, streams, subs: HashSet::new(), seq: 0 });
                if format == CaptureFormat::Binance {
                    started = true;
                }
            }
            Some(Ctl::Closed { id }) => conns.retain(|c| c.id != id),
            Some(Ctl::DropNext(n)) => drop_next += n,
            Some(Ctl::Depth { symbol, reply }) => {
                let answer = match venue.books.get(&symbol) {
                    Some(b) if b.known => {
                        let levels = |it: &mut dyn Iterator<Item = &(String, String)>| -> Vec<Value> {
                            it.take(5000).map(|(p, q)| json!([p, q])).collect()
                        };
                        let body = json!({
                            "lastUpdateId": b.last_u,
                            "bids": levels(&mut b.bids_best_first()),
                            "asks": levels(&mut b.asks_best_first()),
                            "x_tickmesh_partial": true,
                        });
                        (200, body.to_string())
                    }
                    _ => match first_u.get(&symbol) {
                        Some(u) => (
                            200,
                            json!({"lastUpdateId": u, "bids": [], "asks": [], "x_tickmesh_partial": true}).to_string(),
                        ),
                        None => (400, json!({"code": -1121, "msg": "Invalid symbol."}).to_string()),
                    },
                };
                let _ = reply.send(answer);
            }
            Some(Ctl::Text { id, text }) => {
                let Some(ci) = conns.iter().position(|c| c.id == id) else { continue };
                let Ok(req) = serde_json::from_str::<Value>(&text) else { continue };
                let op = req.get("type").and_then(Value::as_str).unwrap_or("");
                if op != "subscribe" && op != "unsubscribe" {
                    continue;
                }
                let products: Vec<String> = req
                    .get("product_ids")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                let mut channels: Vec<String> = Vec::new();
                if let Some(c) = req.get("channel").and_then(Value::as_str) {
                    channels.push(c.to_owned());
                }
                for c in req.get("channels").and_then(Value::as_array).into_iter().flatten() {
                    if let Some(c) = c.as_str().or_else(|| c.get("name").and_then(Value::as_str)) {
                        channels.push(c.to_owned());
                    }
                }
                let mut snapshots = Vec::new();
                for c in &channels {
                    let c = if c == "level2_batch" { "level2" } else { c.as_str() };
                    for p in &products {
                        let key = (c.to_owned(), p.clone());
                        if op == "subscribe" {
                            conns[ci].subs.insert(key);
                            if c == "level2" && started && venue.books.get(p).is_some_and(|b| b.known) {
                                snapshots.push(p.clone());
                            }
                        } else {
                            conns[ci].subs.remove(&key);
                        }
                    }
                }
                if op == "subscribe" {
                    started = true;
                }
                for p in snapshots {
                    let Some(b) = venue.books.get(&p) else { continue };
                    let conn = &mut conns[ci];
                    let msg = match format {
                        CaptureFormat::CoinbaseExchange => {
                            let l = |it: &mut dyn Iterator<Item = &(String, String)>| -> Vec<Value> {
                                it.map(|(p, q)| json!([p, q])).collect()
                            };
                            json!({"type": "snapshot", "product_id": p, "bids": l(&mut b.bids_best_first()),
                                   "asks": l(&mut b.asks_best_first())})
                        }
                        _ => {
                            let ts = last_ts_text.clone();
                            let mut updates: Vec<Value> = b
                                .bids_best_first()
                                .map(|(px, q)| json!({"side": "bid", "event_time": ts, "price_level": px, "new_quantity": q}))
                                .collect();
                            updates.extend(b.asks_best_first().map(
                                |(px, q)| json!({"side": "offer", "event_time": ts, "price_level": px, "new_quantity": q}),
                            ));
                            let seq = conn.seq;
                            conn.seq += 1;
                            json!({"channel": "l2_data", "client_id": "", "timestamp": ts, "sequence_num": seq,
                                   "events": [{"type": "snapshot", "product_id": p, "updates": updates}]})
                        }
                    };
                    let _ = conn.tx.send(msg.to_string()).await;
                }
            }
            None if playing => {
                let msg = &capture.received[pos];
                let gap = drop_next > 0 || opts.gaps.iter().any(|g| g.contains(&pos));
                drop_next = drop_next.saturating_sub(1);
                pos += 1;
                let Ok(mut v) = serde_json::from_str::<Value>(&msg.payload) else {
                    // Not JSON: pass it through untouched (the decoders must cope).
                    if !gap {
                        for c in &conns {
                            let _ = c.tx.send(msg.payload.clone()).await;
                        }
                    }
                    continue;
                };
                venue.observe(format, &v);
                if let Some(t) = v.get("timestamp").and_then(Value::as_str) {
                    last_ts_text = t.to_owned();
                }
                let (channel, product) = route(format, &v);
                let mut gone = Vec::new();
                for c in conns.iter_mut() {
                    if !wants(c, format, &channel, &product) {
                        continue;
                    }
                    let text = if format == CaptureFormat::CoinbaseAdvanced {
                        let seq = c.seq;
                        c.seq += 1;
                        if gap {
                            continue;
                        }
                        if let Some(obj) = v.as_object_mut() {
                            obj.insert("sequence_num".into(), json!(seq));
                        }
                        v.to_string()
                    } else if gap {
                        continue;
                    } else {
                        msg.payload.clone()
                    };
                    if c.tx.send(text).await.is_err() {
                        gone.push(c.id);
                    }
                }
                conns.retain(|c| !gone.contains(&c.id));
                if gap {
                    dropped += 1;
                }
                progress.send_replace(Progress { played: pos, dropped, done: false });
            }
            None => {}
        }
    }
}

async fn read_head(tcp: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > 16 * 1024 {
            return None;
        }
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

fn query_param<'a>(target: &'a str, key: &str) -> Option<&'a str> {
    let q = target.split_once('?')?.1;
    q.split('&').find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

async fn respond(tcp: &mut TcpStream, code: u16, body: &str) {
    let reason = if code == 200 { "OK" } else { "Error" };
    let resp = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write_all(resp.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

async fn serve_conn(mut tcp: TcpStream, id: u64, ctl: mpsc::Sender<Ctl>) {
    let Some(head) = read_head(&mut tcp).await else { return };
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or("");
    let target = request.split(' ').nth(1).unwrap_or("/").to_owned();
    let mut ws_key = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("sec-websocket-key") {
                ws_key = Some(v.trim().to_owned());
            }
        }
    }
    if target.starts_with("/api/v3/depth") {
        let Some(symbol) = query_param(&target, "symbol") else {
            respond(&mut tcp, 400, r#"{"code":-1102,"msg":"Mandatory parameter 'symbol' was not sent."}"#).await;
            return;
        };
        let (tx, rx) = oneshot::channel();
        let _ = ctl.send(Ctl::Depth { symbol: symbol.to_ascii_uppercase(), reply: tx }).await;
        match rx.await {
            Ok((code, body)) => respond(&mut tcp, code, &body).await,
            Err(_) => respond(&mut tcp, 503, r#"{"code":-1,"msg":"replay server stopping"}"#).await,
        }
        return;
    }
    let Some(key) = ws_key else {
        respond(&mut tcp, 404, r#"{"error":"not found; use a WebSocket upgrade or GET /api/v3/depth"}"#).await;
        return;
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if tcp.write_all(resp.as_bytes()).await.is_err() {
        return;
    }
    let mut ws = WebSocketStream::from_raw_socket(tcp, Role::Server, None).await;
    let streams = query_param(&target, "streams").map(|s| s.split('/').map(str::to_owned).collect());
    let (tx, mut rx) = mpsc::channel::<String>(1024);
    if ctl.send(Ctl::Open { id, tx, streams }).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(text) => {
                    if ws.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                None => {
                    let frame = CloseFrame { code: CloseCode::Normal, reason: "end of capture".into() };
                    let _ = ws.send(Message::Close(Some(frame))).await;
                    // Let the client see the close before the socket goes.
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Some(Ok(m)) = ws.next().await {
                            if m.is_close() {
                                break;
                            }
                        }
                    })
                    .await;
                    break;
                }
            },
            inbound = ws.next() => match inbound {
                Some(Ok(Message::Text(t))) => {
                    if ctl.send(Ctl::Text { id, text: t.as_str().to_owned() }).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = ctl.send(Ctl::Closed { id }).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_exact() {
        assert_eq!(parse_ts("1618677817.0618958"), Some(1_618_677_817_061_895_800));
        assert_eq!(parse_ts("1618677816"), Some(1_618_677_816_000_000_000));
        assert_eq!(parse_ts("x1"), None);
    }

    #[test]
    fn master_format_lines() {
        let text = "wss://ws-feed.pro.coinbase.com <-> 1.5\nwss://ws-feed.pro.coinbase.com <- 1.6: {\"type\":\"subscribe\"}\n2.25: {\"a\":1}\n\n";
        let c = parse_master(Path::new("t"), text.as_bytes()).unwrap();
        assert_eq!(c.format, CaptureFormat::CoinbaseExchange);
        assert_eq!(c.received, vec![Captured { ts_ns: 2_250_000_000, payload: "{\"a\":1}".into() }]);
        assert_eq!(c.sent.len(), 1);
        assert!(parse_master(Path::new("t"), b"what is this").is_err());
    }
}
