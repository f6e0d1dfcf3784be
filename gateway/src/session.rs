//! One client connection: protocol state, the outbound queue, and its I/O task.
//!
//! The state ([`SessionState`]) is shared between the core's dispatcher (which appends
//! pre-built frames) and the connection's task (which reads requests and writes the queue).
//! Both run on the same pinned thread, so it is an `Rc<RefCell<_>>` and never a lock.

use bytes::Bytes;
use serde_json::Value;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::io::IoSlice;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::auth::Claims;
use crate::config::{GatewayConfig, SlowPolicy};
use crate::core::Core;
use crate::error::ClientError;
use crate::fanout::Encoded;
use crate::protocol::{self, Refusal, Request, Subscriptions};
use crate::ws;

/// Wire encoding chosen at connect (`encoding=` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// JSON text frames.
    Json,
    /// Data as binary frames of codec records; control messages stay JSON.
    Binary,
}

/// Connection parameters from the upgrade request.
#[derive(Debug, Clone)]
pub(crate) struct ConnectParams {
    /// Encoding.
    pub(crate) encoding: Encoding,
    /// `batch=1`: several JSON messages per text frame, newline-separated.
    pub(crate) batch: bool,
    /// The verified token's claims.
    pub(crate) claims: Claims,
}

/// What the dispatcher and the task share about one connection.
#[derive(Debug)]
pub(crate) struct SessionState {
    pub(crate) id: u64,
    pub(crate) params: ConnectParams,
    pub(crate) subs: Subscriptions,
    /// Frames (or, with `batch`, JSON payloads) waiting to be written.
    out: VecDeque<Out>,
    out_bytes: usize,
    /// Per source: deliver only records above this `seq` (resume from a region ahead).
    floors: BTreeMap<tickmesh_codec::SourceId, u64>,
    slow: SlowPolicy,
    /// Records dropped for slowness, per source, not yet reported by `gap`.
    dropped: BTreeMap<tickmesh_codec::SourceId, (u64, u64)>,
    /// Set when the connection is to be closed after the queue drains.
    closing: bool,
    next_heartbeat: Instant,
    /// Token bucket for inbound requests.
    tokens: f64,
    tokens_at: Instant,
}

#[derive(Debug)]
enum Out {
    /// A complete frame.
    Frame(Bytes),
    /// A data message for a batching JSON client: JSON text without frame header.
    Line(Bytes),
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Frame(b) | Out::Line(b) => b.len(),
        }
    }
}

/// A session as the core holds it.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    pub(crate) state: RefCell<SessionState>,
    pub(crate) wake: Notify,
}

impl SessionHandle {
    pub(crate) fn new(id: u64, params: ConnectParams, cfg: &GatewayConfig, now: Instant) -> Self {
        SessionHandle {
            state: RefCell::new(SessionState {
                id,
                params,
                subs: Subscriptions::default(),
                out: VecDeque::with_capacity(64),
                out_bytes: 0,
                floors: BTreeMap::new(),
                slow: SlowPolicy::default(),
                dropped: BTreeMap::new(),
                closing: false,
                next_heartbeat: now + Duration::from_millis(cfg.heartbeat_ms),
                tokens: f64::from(cfg.max_requests_per_sec),
                tokens_at: now,
            }),
            wake: Notify::new(),
        }
    }
}

impl SessionState {
    /// Queues a control message (always a JSON text frame).
    pub(crate) fn push_control(&mut self, json: &[u8]) {
        let f = ws::text_frame(json);
        self.out_bytes += f.len();
        self.out.push_back(Out::Frame(f));
    }

    /// Queues a close frame; the task closes after writing it.
    pub(crate) fn push_close(&mut self, code: u16, reason: &str) {
        if self.closing {
            return;
        }
        let f = ws::close_frame(code, reason);
        self.out_bytes += f.len();
        self.out.push_back(Out::Frame(f));
        self.closing = true;
    }

    /// Offers a record; returns true if something was queued.
    pub(crate) fn offer(&mut self, enc: &Encoded, slow_bytes: usize) -> bool {
        let Some(channel) = enc.kind.channel() else { return false };
        if self.closing || !self.subs.matches(channel, enc.sym.as_str()) {
            return false;
        }
        if let Some(floor) = self.floors.get(&enc.src) {
            if enc.seq <= *floor {
                return false;
            }
        }
        if self.out_bytes > slow_bytes {
            match self.slow {
                SlowPolicy::Disconnect => {
                    // Drop what is queued: the client will not read it anyway, and the
                    // close must not wait behind megabytes.
                    self.out.clear();
                    self.out_bytes = 0;
                    metrics::counter!("tickmesh_gateway_slow_consumer_events_total", "reason" => "disconnect")
                        .increment(1);
                    self.push_close(4008, "slow consumer");
                    return true;
                }
                SlowPolicy::Drop | SlowPolicy::Conflate => {
                    let e = self.dropped.entry(enc.src).or_insert((enc.seq, enc.seq));
                    e.1 = enc.seq;
                    metrics::counter!("tickmesh_gateway_slow_consumer_events_total", "reason" => "drop").increment(1);
                    return false;
                }
            }
        }
        self.flush_gaps();
        let item = match (self.params.encoding, self.params.batch) {
            (Encoding::Json, true) => Out::Line(enc.json_payload()),
            (Encoding::Json, false) => Out::Frame(enc.json_frame.clone()),
            (Encoding::Binary, _) => Out::Frame(enc.binary_frame.clone()),
        };
        self.out_bytes += item.len();
        self.out.push_back(item);
        true
    }

    fn flush_gaps(&mut self) {
        while let Some((src, (from, to))) = self.dropped.pop_first() {
            let g = protocol::gap(src.as_str(), from, to, "slow_consumer");
            self.push_control(&g);
        }
    }

    /// Charges one request to the token bucket: Ok, refuse (error reply), or close (4029).
    fn charge(&mut self, now: Instant, rate: u32) -> RateVerdict {
        let rate = f64::from(rate);
        let dt = now.duration_since(self.tokens_at).as_secs_f64();
        self.tokens_at = now;
        self.tokens = (self.tokens + dt * rate).min(rate);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            RateVerdict::Ok
        } else if self.tokens >= -rate {
            RateVerdict::Refuse
        } else {
            RateVerdict::Close
        }
    }

    /// Handles one text request; `now_ns` for `pong`.
    pub(crate) fn handle_text(&mut self, core: &Core, text: &str, now: Instant, now_ns: u64) {
        match self.charge(now, core.cfg.max_requests_per_sec) {
            RateVerdict::Ok => {}
            RateVerdict::Refuse => {
                let id = serde_json::from_str::<Value>(text).ok().and_then(|v| v.get("id").cloned());
                let msg = format!(
                    "more than {} requests per second; wait before sending more, or the connection is closed with 4029",
                    core.cfg.max_requests_per_sec
                );
                self.push_control(&protocol::error_reply(&id, ClientError::RateLimited, &msg));
                return;
            }
            RateVerdict::Close => {
                metrics::counter!("tickmesh_gateway_rate_limited_total").increment(1);
                self.push_close(4029, "rate limited");
                return;
            }
        }
        match protocol::parse_request(text) {
            Err(r) => self.refuse(&r),
            Ok(Request::Ping { id }) => self.push_control(&protocol::pong(&id, now_ns)),
            Ok(Request::Unsubscribe { id, channels, symbols, channel_list, symbol_list }) => {
                self.subs.remove(&channel_list, &symbol_list);
                self.push_control(&protocol::ack("unsubscribed", &id, &channels, &symbols));
            }
            Ok(Request::Subscribe(s)) => self.subscribe(core, s),
        }
    }

    fn refuse(&mut self, r: &Refusal) {
        self.push_control(&protocol::error_reply(&r.id, r.code, &r.message));
    }

    fn subscribe(&mut self, core: &Core, s: protocol::Subscribe) {
        let claims = &self.params.claims;
        for c in &s.channel_list {
            if *c == "orders" && claims.home.as_deref() != Some(core.shared.region()) {
                {
                    let home = claims.home.as_deref().unwrap_or("(none in token)");
                    return self.refuse(&Refusal {
                        id: s.id.clone(),
                        code: ClientError::HomeRegionUnavailable,
                        message: format!(
                            "orders are served only in your home region {home}; this is {}, so connect there for orders",
                            core.shared.region()
                        ),
                    });
                }
            }
            if !claims.allows_channel(c) {
                return self.refuse(&Refusal {
                    id: s.id.clone(),
                    code: ClientError::Forbidden,
                    message: format!("your token does not grant channel '{c}'; nothing of this request was subscribed"),
                });
            }
        }
        for sym in &s.symbol_list {
            if !claims.allows_symbol(sym) {
                return self.refuse(&Refusal {
                    id: s.id.clone(),
                    code: ClientError::Forbidden,
                    message: format!(
                        "your token does not grant symbol '{sym}'; nothing of this request was subscribed"
                    ),
                });
            }
            if !protocol::is_pattern(sym) && !core.shared.knows_symbol(sym) {
                return self.refuse(&Refusal {
                    id: s.id.clone(),
                    code: ClientError::UnknownSymbol,
                    message: format!("no source of this region carries symbol '{sym}'; check the spelling or use a pattern like \"{sym}*\""),
                });
            }
        }
        let after = self.subs.len_after_add(&s.channel_list, &s.symbol_list);
        if after > core.cfg.max_subscriptions {
            return self.refuse(&Refusal {
                id: s.id.clone(),
                code: ClientError::TooManySubscriptions,
                message: format!(
                    "this would hold {after} subscriptions, over the limit of {}; unsubscribe some or use patterns",
                    core.cfg.max_subscriptions
                ),
            });
        }
        if let Some(p) = s.slow {
            self.slow = p;
        }
        let positions = core.positions.borrow();
        let mut gaps = Vec::new();
        for (src, last) in &s.resume {
            let Ok(src) = tickmesh_codec::SourceId::new(src) else { continue };
            // Records at or before the client's position are never delivered again.
            self.floors.insert(src, *last);
            let here = positions.get(&src).copied().unwrap_or(0);
            if *last < here {
                // Replay from the journal arrives with the gateway issue; until then the
                // missing range is reported, never silently skipped.
                gaps.push((src, *last + 1, here));
            }
        }
        drop(positions);
        self.subs.add(&s.channel_list, &s.symbol_list);
        self.push_control(&protocol::ack("subscribed", &s.id, &s.channels, &s.symbols));
        for (src, from, to) in gaps {
            self.push_control(&protocol::gap(src.as_str(), from, to, "journal_unavailable"));
        }
    }

    /// Queues a heartbeat if due; returns true if one was queued.
    pub(crate) fn heartbeat_if_due(&mut self, core: &Core, now: Instant, now_ns: u64) -> bool {
        if now < self.next_heartbeat || self.closing {
            return false;
        }
        let interval = Duration::from_millis(core.cfg.heartbeat_ms);
        self.next_heartbeat += interval;
        if self.next_heartbeat < now {
            self.next_heartbeat = now + interval;
        }
        let positions = core.positions.borrow();
        let hb = protocol::heartbeat(now_ns, positions.iter().map(|(s, q)| (s.as_str(), *q)));
        drop(positions);
        self.push_control(&hb);
        true
    }

    /// Moves up to `max` queued items into `batch` as frames ready to write.
    fn take_batch(&mut self, batch: &mut Vec<Bytes>, max: usize) {
        let mut lines: Vec<Bytes> = Vec::new();
        while batch.len() < max {
            let Some(item) = self.out.pop_front() else { break };
            self.out_bytes -= item.len();
            match item {
                Out::Line(l) => lines.push(l),
                Out::Frame(f) => {
                    if !lines.is_empty() {
                        batch.push(join_lines(&mut lines));
                    }
                    batch.push(f);
                }
            }
        }
        if !lines.is_empty() {
            batch.push(join_lines(&mut lines));
        }
    }
}

enum RateVerdict {
    Ok,
    Refuse,
    Close,
}

/// One text frame holding newline-separated JSON messages (`batch=1`).
fn join_lines(lines: &mut Vec<Bytes>) -> Bytes {
    let len: usize = lines.iter().map(|l| l.len() + 1).sum::<usize>() - 1;
    let mut f = Vec::with_capacity(len + 10);
    ws::frame_header(ws::OpCode::Text, len, &mut f);
    for (i, l) in lines.drain(..).enumerate() {
        if i > 0 {
            f.push(b'\n');
        }
        f.extend_from_slice(&l);
    }
    Bytes::from(f)
}

/// Runs one upgraded connection until it closes.
pub(crate) async fn run(core: Rc<Core>, stream: TcpStream, already_read: Bytes, handle: Rc<SessionHandle>) {
    let (mut rd, mut wr) = stream.into_split();
    let reader = {
        let core = core.clone();
        let handle = handle.clone();
        async move {
            let mut dec = ws::Decoder::new(core.cfg.max_message_bytes);
            dec.feed(&already_read);
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                loop {
                    match dec.next_message() {
                        Ok(Some(msg)) => {
                            if !on_message(&core, &handle, msg) {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let mut st = handle.state.borrow_mut();
                            if e.close_code() == 1009 {
                                let msg = format!(
                                    "message over the {}-byte limit; send smaller requests",
                                    core.cfg.max_message_bytes
                                );
                                st.push_control(&protocol::error_reply(&None, ClientError::MessageTooLarge, &msg));
                            }
                            st.push_close(e.close_code(), &e.to_string());
                            drop(st);
                            handle.wake.notify_one();
                            return;
                        }
                    }
                }
                handle.wake.notify_one();
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => dec.feed(&buf[..n]),
                }
            }
        }
    };
    let writer = {
        let handle = handle.clone();
        async move {
            let mut batch: Vec<Bytes> = Vec::with_capacity(256);
            loop {
                handle.wake.notified().await;
                loop {
                    let closing = {
                        let mut st = handle.state.borrow_mut();
                        st.take_batch(&mut batch, 256);
                        st.closing && st.out.is_empty()
                    };
                    if batch.is_empty() {
                        if closing {
                            let _ = wr.shutdown().await;
                            return;
                        }
                        break;
                    }
                    let n_msgs = batch.len() as u64;
                    match write_batch(&mut wr, &mut batch).await {
                        Ok(bytes) => {
                            metrics::counter!("tickmesh_gateway_frames_sent_total").increment(n_msgs);
                            metrics::counter!("tickmesh_gateway_bytes_sent_total").increment(bytes as u64);
                        }
                        Err(_) => return,
                    }
                }
            }
        }
    };
    tokio::pin!(reader);
    tokio::pin!(writer);
    tokio::select! {
        () = &mut reader => {
            // The client went away, closed, or broke the protocol: let the queued frames
            // (a close frame among them) out, bounded so a dead peer cannot hold the task.
            handle.state.borrow_mut().closing = true;
            handle.wake.notify_one();
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
        }
        () = &mut writer => {}
    }
    core.remove_session(handle.state.borrow().id);
}

/// Writes every buffer with vectored writes; returns bytes written.
async fn write_batch(wr: &mut tokio::net::tcp::OwnedWriteHalf, batch: &mut Vec<Bytes>) -> std::io::Result<usize> {
    let total: usize = batch.iter().map(Bytes::len).sum();
    let mut idx = 0;
    let mut off = 0;
    while idx < batch.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&batch[idx][off..]))
            .chain(batch[idx + 1..].iter().take(63).map(|b| IoSlice::new(b)))
            .collect();
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let left = batch[idx].len() - off;
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
    batch.clear();
    Ok(total)
}

/// Handles one decoded message; false ends the reader.
fn on_message(core: &Core, handle: &SessionHandle, msg: ws::Message) -> bool {
    let mut st = handle.state.borrow_mut();
    match msg {
        ws::Message::Text(t) => {
            let now = Instant::now();
            st.handle_text(core, &t, now, tickmesh_codec::now_ns());
            !st.closing
        }
        ws::Message::Binary(_) => {
            st.push_control(&protocol::error_reply(
                &None,
                ClientError::BadRequest,
                "requests are JSON text frames; binary frames from clients are not accepted",
            ));
            true
        }
        ws::Message::Ping(p) => {
            let f = ws::pong_frame(&p);
            st.out_bytes += f.len();
            st.out.push_back(Out::Frame(f));
            true
        }
        ws::Message::Pong(_) => true,
        ws::Message::Close(c) => {
            let code = match c {
                Some((code, _)) => code,
                None => 1000,
            };
            st.push_close(code, "");
            false
        }
    }
}
