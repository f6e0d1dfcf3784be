//! `tickmesh::client`: a Rust client that hands the application every record exactly once,
//! across region failures, drains and reconnects.
//!
//! What it does, following PROTOCOL.md:
//! * connects to the first reachable region of a list (given, or from `GET /v1/route`),
//!   and subscribes;
//! * tracks a position per source from the records it delivers and from heartbeats that
//!   arrive after the subscription (a heartbeat's positions prove that everything matching
//!   up to them has been sent on this connection);
//! * notices loss at once on a close, a TCP reset or any read error, and after three
//!   heartbeat intervals (from `hello`) of silence otherwise;
//! * reconnects to the next region of the failover list of the latest `hello` (or of the
//!   list it was given), subscribes with `resume` set to its positions, and drops (and
//!   counts) any record at or below a position it already delivered;
//! * follows a server's `reconnect` message (drain, shutdown, rebalance) the same way.
//!
//! The client has no background task: [`Client::next`] reads, detects loss and reconnects
//! inside the call, so an application that stops calling it applies back-pressure to the
//! server (which then applies its slow-consumer policy) instead of growing a buffer here.
//!
//! ```no_run
//! # async fn run() -> Result<(), tickmesh::client::ClientError> {
//! use tickmesh::client::{Client, Encoding, Event};
//! let mut client = Client::builder()
//!     .regions(["ws://127.0.0.1:8080/v1/ws", "ws://127.0.0.1:8090/v1/ws"])
//!     .token("eyJ...")
//!     .subscribe(["trades", "quotes"], ["AAPL", "BTC-*"])
//!     .encoding(Encoding::Json)
//!     .build()?
//!     .connect()
//!     .await?;
//! loop {
//!     match client.next().await? {
//!         Event::Record(r) => println!("{} {} {:?} {}", r.src, r.seq, r.kind, r.msg),
//!         Event::Gap(g) => eprintln!("lost {}..={} of {}: {}", g.from, g.to, g.src, g.reason),
//!         Event::Connected(c) => eprintln!("on {} (resumed: {})", c.region, c.resumed),
//!         _ => {}
//!     }
//! }
//! # }
//! ```

mod http;
mod tracker;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use tracker::{Control, Tracker};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Everything that can go wrong for the client. Transient failures (a region down, a
/// drain) are handled inside; these are what the application must act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The builder was given something unusable.
    #[error("client configuration: {0}")]
    Config(String),
    /// `GET /v1/route` failed.
    #[error("route {url}: {reason}; check the URL or give the regions with .regions([...])")]
    Route {
        /// The route URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// No region could be reached (for the first connection: in one pass over the list;
    /// afterwards: within the reconnect timeout).
    #[error("no region could be reached ({0}); check that the regions run and the URLs are right")]
    Unreachable(String),
    /// The token was refused (HTTP 401): retrying elsewhere would not help.
    #[error("{region} refused the token: {message}; get a fresh token")]
    Unauthorized {
        /// Which region refused.
        region: String,
        /// The server's message.
        message: String,
    },
    /// The subscription was refused (forbidden, unknown channel or symbol...).
    #[error("{region} refused the subscription: {code}: {message}")]
    Refused {
        /// Which region refused.
        region: String,
        /// The protocol's error code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// One entry of a failover list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionLink {
    /// Region name (the URL itself until a `hello` names it).
    pub region: String,
    /// WebSocket URL, `ws://host:port/v1/ws`.
    pub ws_url: String,
}

/// Wire encoding of data messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// JSON text frames.
    #[default]
    Json,
    /// Binary codec records; the client renders them to the same JSON shapes.
    Binary,
}

/// What the server does when this client cannot keep up (PROTOCOL.md `slow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slow {
    /// Merge quotes and book updates (the server default).
    Conflate,
    /// Drop and send `gap`.
    Drop,
    /// Close with 4008.
    Disconnect,
}

/// The kind of a data message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `trade`.
    Trade,
    /// `quote`.
    Quote,
    /// `book` (delta).
    Book,
    /// `book_snapshot` (state, not a record).
    BookSnapshot,
    /// `status`.
    Status,
    /// `order` (private order updates).
    Order,
    /// Any other type a newer server sends.
    Other(String),
}

impl Kind {
    fn from_type(t: &str) -> Kind {
        match t {
            "trade" => Kind::Trade,
            "quote" => Kind::Quote,
            "book" => Kind::Book,
            "book_snapshot" => Kind::BookSnapshot,
            "status" => Kind::Status,
            "order" => Kind::Order,
            other => Kind::Other(other.to_owned()),
        }
    }
}

/// A data message handed to the application.
#[derive(Debug, Clone)]
pub struct Record {
    /// Source id.
    pub src: String,
    /// The source's sequence number.
    pub seq: u64,
    /// Kind.
    pub kind: Kind,
    /// The region that delivered it.
    pub region: Arc<str>,
    /// The whole message, in PROTOCOL.md's JSON shape (binary records are rendered to it).
    pub msg: Value,
}

/// Records the server says it did not deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// Source id.
    pub src: String,
    /// First missing `seq` (inclusive).
    pub from: u64,
    /// Last missing `seq` (inclusive).
    pub to: u64,
    /// Why (`slow_consumer`, `journal_retention`, ...).
    pub reason: String,
}

/// A connection is established and subscribed.
#[derive(Debug, Clone)]
pub struct Connected {
    /// Region name from `hello`.
    pub region: String,
    /// The URL connected to.
    pub ws_url: String,
    /// Session id from `hello`.
    pub session: String,
    /// True if the subscription carried `resume` positions.
    pub resumed: bool,
    /// True for every connection after the first.
    pub reconnect: bool,
}

/// Why a connection was given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LossCause {
    /// The server closed (with this close code, if any; 1012 after a drain).
    Closed(Option<u16>),
    /// A read failed (TCP reset, broken pipe...).
    Error(String),
    /// Nothing arrived for three heartbeat intervals.
    Silent(Duration),
    /// The server sent `reconnect`.
    Reconnect {
        /// `drain`, `shutdown` or `rebalance`.
        reason: String,
        /// The region it sent us to.
        region: String,
    },
    /// The server sent something unreadable.
    Protocol(String),
}

/// A connection was lost; the client reconnects on the next call to [`Client::next`].
#[derive(Debug, Clone)]
pub struct Disconnected {
    /// The region that was lost.
    pub region: String,
    /// Why.
    pub cause: LossCause,
}

/// What [`Client::next`] yields.
#[derive(Debug, Clone)]
pub enum Event {
    /// A record, delivered exactly once.
    Record(Record),
    /// A `book_snapshot`: the book state at its `seq` (not deduplicated: it is not a record).
    Snapshot(Record),
    /// Records the server could not deliver.
    Gap(Gap),
    /// Connected and subscribed (first connection or after a failover).
    Connected(Connected),
    /// The current connection was lost.
    Disconnected(Disconnected),
    /// An `error` reply that did not end the stream (e.g. to a later request).
    ServerError {
        /// The request id, if any.
        id: Option<Value>,
        /// Protocol error code.
        code: String,
        /// The server's message.
        message: String,
    },
}

/// Counters since the client was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records handed to the application.
    pub records: u64,
    /// Records dropped because they were at or below a delivered position.
    pub duplicates_dropped: u64,
    /// Successful reconnections after the first connection.
    pub reconnects: u64,
    /// `gap` messages received.
    pub gaps: u64,
    /// Heartbeats received.
    pub heartbeats: u64,
}

/// Builds a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    regions: Vec<String>,
    route_url: Option<String>,
    token: Option<String>,
    channels: Vec<String>,
    symbols: Vec<String>,
    encoding: Encoding,
    batch: bool,
    depth: Option<u32>,
    slow: Option<Slow>,
    resume: BTreeMap<String, u64>,
    connect_timeout: Duration,
    reconnect_timeout: Duration,
}

impl ClientBuilder {
    /// The regions' WebSocket URLs in failover order (the first is tried first). Once
    /// connected, the `hello` failover list replaces this one.
    pub fn regions<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.regions = urls.into_iter().map(Into::into).collect();
        self
    }

    /// Ask `GET` this URL (a region's `/v1/route`, with `geo=` or `region=`) which region
    /// to use; its `alternates` become the failover list.
    pub fn route_url(mut self, url: impl Into<String>) -> Self {
        self.route_url = Some(url.into());
        self
    }

    /// The JWT (sent as `Authorization: Bearer`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Channels and symbols (or prefix patterns, or `"*"`) to subscribe to.
    pub fn subscribe<C, S>(mut self, channels: C, symbols: S) -> Self
    where
        C: IntoIterator,
        C::Item: Into<String>,
        S: IntoIterator,
        S::Item: Into<String>,
    {
        self.channels = channels.into_iter().map(Into::into).collect();
        self.symbols = symbols.into_iter().map(Into::into).collect();
        self
    }

    /// JSON (default) or binary data frames.
    pub fn encoding(mut self, e: Encoding) -> Self {
        self.encoding = e;
        self
    }

    /// With JSON, ask for `batch=1` (several messages per frame).
    pub fn batch(mut self, on: bool) -> Self {
        self.batch = on;
        self
    }

    /// Book depth for the `book` channel.
    pub fn depth(mut self, depth: u32) -> Self {
        self.depth = Some(depth);
        self
    }

    /// Slow-consumer policy.
    pub fn slow(mut self, slow: Slow) -> Self {
        self.slow = Some(slow);
        self
    }

    /// Start from these positions (source id to last processed `seq`), e.g. after a
    /// restart of the application.
    pub fn resume(mut self, positions: BTreeMap<String, u64>) -> Self {
        self.resume = positions;
        self
    }

    /// Limit for one connection attempt (TCP, upgrade, `hello`, `subscribed`); default 3 s.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// How long to keep trying every region after a loss before giving up; default 60 s.
    pub fn reconnect_timeout(mut self, t: Duration) -> Self {
        self.reconnect_timeout = t;
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<Client, ClientError> {
        if self.regions.is_empty() && self.route_url.is_none() {
            return Err(ClientError::Config(
                "no region to connect to; give .regions([\"ws://host:port/v1/ws\", ...]) or .route_url(...)".into(),
            ));
        }
        for u in &self.regions {
            if !u.starts_with("ws://") {
                return Err(ClientError::Config(format!(
                    "region URL {u:?} is not a ws:// URL; use the ws_url of /v1/regions (wss:// is not built into this client)"
                )));
            }
        }
        if self.channels.is_empty() || self.symbols.is_empty() {
            return Err(ClientError::Config(
                "nothing to subscribe to; call .subscribe([\"trades\", ...], [\"AAPL\", \"BTC-*\" or \"*\"])".into(),
            ));
        }
        let now = Instant::now();
        let regions = self.regions.iter().map(|u| RegionLink { region: u.clone(), ws_url: u.clone() }).collect();
        Ok(Client {
            tracker: Tracker::new(now, self.resume.clone()),
            cfg: self,
            ws: None,
            current: None,
            regions,
            redirect: None,
            pending: VecDeque::new(),
            next_id: 0,
            connections: 0,
        })
    }
}

/// A market-data client; see the module docs.
#[derive(Debug)]
pub struct Client {
    cfg: ClientBuilder,
    tracker: Tracker,
    ws: Option<Ws>,
    current: Option<RegionLink>,
    /// The failover list (from the latest `hello`, else as given).
    regions: Vec<RegionLink>,
    /// Where a server `reconnect` sent us.
    redirect: Option<RegionLink>,
    pending: VecDeque<Event>,
    next_id: u64,
    connections: u64,
}

/// Why one connection attempt failed.
enum Attempt {
    /// Try the next region.
    Transient(String),
    /// Give up: the application must act.
    Fatal(ClientError),
}

impl Client {
    /// Starts a builder.
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            regions: Vec::new(),
            route_url: None,
            token: None,
            channels: Vec::new(),
            symbols: Vec::new(),
            encoding: Encoding::Json,
            batch: false,
            depth: None,
            slow: None,
            resume: BTreeMap::new(),
            connect_timeout: Duration::from_secs(3),
            reconnect_timeout: Duration::from_secs(60),
        }
    }

    /// Connects to the first region that answers and subscribes. The [`Event::Connected`]
    /// is the first event [`Client::next`] returns.
    pub async fn connect(mut self) -> Result<Client, ClientError> {
        if let Some(url) = self.cfg.route_url.clone() {
            let mut routed = http::route(&url, Duration::from_secs(5)).await?;
            // Regions given explicitly stay as further fallbacks.
            for r in std::mem::take(&mut self.regions) {
                if !routed.iter().any(|x| x.ws_url == r.ws_url) {
                    routed.push(r);
                }
            }
            self.regions = routed;
        }
        self.establish(true).await?;
        Ok(self)
    }

    /// The next event. Loss and reconnection happen inside this call; it returns an error
    /// only when the application must act (token refused, subscription refused, no region
    /// reachable within the reconnect timeout).
    pub async fn next(&mut self) -> Result<Event, ClientError> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            let Some(ws) = self.ws.as_mut() else {
                self.establish(false).await?;
                continue;
            };
            let deadline = self.tracker.deadline();
            let msg = tokio::time::timeout_at(deadline.into(), ws.next()).await;
            let now = Instant::now();
            match msg {
                Err(_) => self.lose(LossCause::Silent(self.tracker.silence_limit())).await,
                Ok(None) => self.lose(LossCause::Closed(None)).await,
                Ok(Some(Err(e))) => self.lose(LossCause::Error(e.to_string())).await,
                Ok(Some(Ok(m))) => self.on_message(now, m).await,
            }
        }
    }

    /// Positions per source: the last `seq` delivered (or proven complete by a heartbeat).
    /// Store them to resume after an application restart ([`ClientBuilder::resume`]).
    pub fn positions(&self) -> &BTreeMap<String, u64> {
        self.tracker.positions()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.tracker.stats
    }

    /// The region connected to now, if any.
    pub fn region(&self) -> Option<&str> {
        self.current.as_ref().map(|r| r.region.as_str())
    }

    /// How long the connection may stay silent before it counts as lost: three heartbeat
    /// intervals of the latest `hello`.
    pub fn silence_limit(&self) -> Duration {
        self.tracker.silence_limit()
    }

    /// The failover list in use.
    pub fn failover_list(&self) -> &[RegionLink] {
        &self.regions
    }

    /// Closes the connection (close code 1000).
    pub async fn close(mut self) {
        if let Some(mut ws) = self.ws.take() {
            let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
        }
    }

    async fn on_message(&mut self, now: Instant, m: Message) {
        match m {
            Message::Text(t) => match self.tracker.on_text(now, t.as_str(), &mut self.pending) {
                Ok(controls) => {
                    for c in controls {
                        match c {
                            Control::Reconnect { region, ws_url, reason } => {
                                if !ws_url.is_empty() {
                                    self.redirect = Some(RegionLink { region: region.clone(), ws_url });
                                }
                                self.lose(LossCause::Reconnect { reason, region }).await;
                                return;
                            }
                            Control::Error { id, code, message } => {
                                self.pending.push_back(Event::ServerError { id, code, message })
                            }
                            Control::Hello(_) | Control::Subscribed(_) | Control::None => {}
                        }
                    }
                }
                Err(e) => self.lose(LossCause::Protocol(e.to_string())).await,
            },
            Message::Binary(b) => {
                if let Err(e) = self.tracker.on_binary(now, &b, &mut self.pending) {
                    self.lose(LossCause::Protocol(e.to_string())).await;
                }
            }
            Message::Close(f) => self.lose(LossCause::Closed(f.map(|f| u16::from(f.code)))).await,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => self.tracker.on_activity(now),
        }
    }

    /// Gives the current connection up and reports it.
    async fn lose(&mut self, cause: LossCause) {
        if let Some(mut ws) = self.ws.take() {
            if matches!(cause, LossCause::Reconnect { .. }) {
                // A polite goodbye to a draining region; never wait long for it.
                let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
            }
        }
        let region = self.current.as_ref().map(|r| r.region.clone()).unwrap_or_default();
        self.pending.push_back(Event::Disconnected(Disconnected { region, cause }));
    }

    /// Regions to try, in order: a server's redirect first, then the regions after the
    /// current one in the failover list, the current one last.
    fn candidates(&self) -> Vec<RegionLink> {
        let mut out = Vec::new();
        if let Some(r) = &self.redirect {
            out.push(r.clone());
        }
        let list = &self.regions;
        let at =
            self.current.as_ref().and_then(|c| list.iter().position(|r| r.ws_url == c.ws_url || r.region == c.region));
        let ordered: Vec<&RegionLink> = match at {
            Some(i) => list[i + 1..].iter().chain(list[..=i].iter()).collect(),
            None => list.iter().collect(),
        };
        for r in ordered {
            if !out.iter().any(|x: &RegionLink| x.ws_url == r.ws_url) {
                out.push(r.clone());
            }
        }
        out
    }

    async fn establish(&mut self, first: bool) -> Result<(), ClientError> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            let mut failures = Vec::new();
            for cand in self.candidates() {
                match self.attempt(&cand).await {
                    Ok(()) => {
                        self.redirect = None;
                        return Ok(());
                    }
                    Err(Attempt::Fatal(e)) => return Err(e),
                    Err(Attempt::Transient(why)) => {
                        tracing::debug!(region = %cand.region, url = %cand.ws_url, %why, "connection attempt failed");
                        failures.push(format!("{}: {why}", cand.ws_url));
                    }
                }
            }
            // A redirect that failed is not tried again.
            self.redirect = None;
            if first || started.elapsed() >= self.cfg.reconnect_timeout {
                return Err(ClientError::Unreachable(failures.join("; ")));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    fn url_for(&self, ws_url: &str) -> String {
        let mut q = Vec::new();
        if self.cfg.encoding == Encoding::Binary {
            q.push("encoding=binary");
        }
        if self.cfg.batch {
            q.push("batch=1");
        }
        if q.is_empty() {
            ws_url.to_owned()
        } else {
            let sep = if ws_url.contains('?') { '&' } else { '?' };
            format!("{ws_url}{sep}{}", q.join("&"))
        }
    }

    fn subscribe_request(&mut self) -> (Value, bool) {
        self.next_id += 1;
        let list = |v: &[String]| if v.len() == 1 && v[0] == "*" { json!("*") } else { json!(v) };
        let mut req = json!({
            "op": "subscribe",
            "id": self.next_id,
            "channels": list(&self.cfg.channels),
            "symbols": list(&self.cfg.symbols),
        });
        let positions = self.tracker.positions();
        let resumed = !positions.is_empty();
        if resumed {
            req["resume"] = json!(positions);
        }
        if let Some(d) = self.cfg.depth {
            req["depth"] = json!(d);
        }
        if let Some(s) = self.cfg.slow {
            req["slow"] = json!(match s {
                Slow::Conflate => "conflate",
                Slow::Drop => "drop",
                Slow::Disconnect => "disconnect",
            });
        }
        (req, resumed)
    }

    /// One connection attempt: upgrade, `hello`, `subscribe` with `resume`, `subscribed`.
    async fn attempt(&mut self, cand: &RegionLink) -> Result<(), Attempt> {
        let limit = self.cfg.connect_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let url = self.url_for(&cand.ws_url);
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| Attempt::Fatal(ClientError::Config(format!("{url}: {e}"))))?;
        if let Some(t) = &self.cfg.token {
            let v = format!("Bearer {t}").parse().map_err(|_| {
                Attempt::Fatal(ClientError::Config("the token holds characters not allowed in a header".into()))
            })?;
            req.headers_mut().insert("authorization", v);
        }
        let (mut ws, _) = match tokio::time::timeout_at(deadline, tokio_tungstenite::connect_async(req)).await {
            Err(_) => return Err(Attempt::Transient(format!("no answer within {limit:?}"))),
            Ok(Err(tungstenite::Error::Http(resp))) => {
                let status = resp.status().as_u16();
                let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
                if status == 401 {
                    let message = serde_json::from_str::<Value>(&body)
                        .ok()
                        .and_then(|v| v["error"]["message"].as_str().map(String::from))
                        .unwrap_or(body);
                    return Err(Attempt::Fatal(ClientError::Unauthorized { region: cand.region.clone(), message }));
                }
                return Err(Attempt::Transient(format!("HTTP {status}: {body:.200}")));
            }
            Ok(Err(e)) => return Err(Attempt::Transient(e.to_string())),
            Ok(Ok(x)) => x,
        };
        self.tracker.on_connect(Instant::now(), &cand.region);
        let mut hello = None;
        let mut sub_id = None;
        let mut resumed = false;
        loop {
            let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => return Err(Attempt::Transient(format!("no hello and subscribed within {limit:?}"))),
                Ok(None) => return Err(Attempt::Transient("closed during the handshake".into())),
                Ok(Some(Err(e))) => return Err(Attempt::Transient(e.to_string())),
                Ok(Some(Ok(m))) => m,
            };
            let now = Instant::now();
            let controls = match msg {
                Message::Text(t) => self
                    .tracker
                    .on_text(now, t.as_str(), &mut self.pending)
                    .map_err(|e| Attempt::Transient(e.to_string()))?,
                Message::Binary(b) => {
                    self.tracker
                        .on_binary(now, &b, &mut self.pending)
                        .map_err(|e| Attempt::Transient(e.to_string()))?;
                    Vec::new()
                }
                Message::Close(f) => {
                    return Err(Attempt::Transient(format!("closed during the handshake ({:?})", f.map(|f| f.code))))
                }
                _ => Vec::new(),
            };
            for c in controls {
                match c {
                    Control::Hello(h) => {
                        if !h.regions.is_empty() {
                            self.regions = h.regions.clone();
                        }
                        let (req, r) = self.subscribe_request();
                        resumed = r;
                        sub_id = req.get("id").cloned();
                        ws.send(Message::Text(req.to_string().into()))
                            .await
                            .map_err(|e| Attempt::Transient(format!("sending subscribe: {e}")))?;
                        hello = Some(h);
                    }
                    Control::Subscribed(id) if id.is_some() && id == sub_id => {
                        let Some(h) = hello.take() else {
                            return Err(Attempt::Transient("subscribed before hello".into()));
                        };
                        self.tracker.on_subscribed();
                        self.connections += 1;
                        let reconnect = self.connections > 1;
                        if reconnect {
                            self.tracker.stats.reconnects += 1;
                        }
                        self.current = Some(RegionLink { region: h.region.clone(), ws_url: cand.ws_url.clone() });
                        // Events read during the handshake (heartbeats cannot, replayed
                        // records can) come after Connected.
                        self.pending.push_front(Event::Connected(Connected {
                            region: h.region,
                            ws_url: cand.ws_url.clone(),
                            session: h.session,
                            resumed,
                            reconnect,
                        }));
                        self.ws = Some(ws);
                        return Ok(());
                    }
                    Control::Error { id, code, message } if id.is_some() && id == sub_id => {
                        let region = hello.as_ref().map(|h| h.region.clone()).unwrap_or_else(|| cand.region.clone());
                        return Err(Attempt::Fatal(ClientError::Refused { region, code, message }));
                    }
                    Control::Reconnect { region, ws_url, .. } => {
                        return Err(Attempt::Transient(format!("sent on to {region} ({ws_url}) during the handshake")))
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
