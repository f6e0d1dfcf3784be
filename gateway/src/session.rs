//! One client connection: protocol state, the outbound queue, and its I/O task.
//!
//! The state ([`SessionState`]) is shared between the core's dispatcher (which appends
//! pre-built frames) and the connection's task (which reads requests and writes the queue).
//! Both run on the same pinned thread, so it is an `Rc<RefCell<_>>` and never a lock.
//!
//! # Why the write path is hand-written
//! tokio-tungstenite's sink takes an owned `Message` per connection and frames it into that
//! connection's buffer, so N subscribers cost N frame builds and N copies of every record,
//! and each `send` flushes. It cannot send a frame that was built once and is shared. Here the
//! queue holds the fan-out's prebuilt frames (`Bytes`, reference-counted), and the writer
//! hands a whole wake-up's worth of them to one vectored write (`writev`, or one io_uring
//! `sendmsg` with the `io-uring` backend). `tickmesh bench fanout` measures the difference
//! against the usual tokio-tungstenite broadcast server.

use bytes::Bytes;
use serde_json::Value;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::io::IoSlice;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::auth::Claims;
use crate::config::{GatewayConfig, SlowPolicy};
use crate::core::Core;
use crate::error::ClientError;
use crate::fanout::Encoded;
use crate::protocol::{self, Refusal, Request, Subscriptions};
use crate::ws;
use std::collections::BTreeSet;
use std::sync::Arc;
use tickmesh_codec::{RecordKind, SourceId, Symbol};

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
    pub(crate) closing: bool,
    /// Depth of this connection's `book` view (the last `subscribe` with `book` sets it).
    pub(crate) book_depth: u32,
    /// Sources being replayed from the journal: live records of them are skipped (the
    /// replay reads them from the journal, which holds every record a core dispatched).
    replaying: BTreeSet<SourceId>,
    /// Per source being replayed to a JSON client: its books as of the replayed position,
    /// so replayed `book` deltas are exactly those a client that never left received.
    replay_books: BTreeMap<SourceId, crate::books::CoreBooks>,
    /// When the write in progress started (None when the writer is idle).
    pub(crate) write_started: Option<Instant>,
    /// A write that has not finished after this long makes the client slow.
    slow_after: Duration,
    /// Over the slow bound with policy `conflate`: newer state replaces older below.
    conflating: bool,
    /// Newest quote / status per (source, symbol) waiting while conflating.
    pending: BTreeMap<(SourceId, Symbol, RecordKind), Arc<Encoded>>,
    /// Books that get a fresh `book_snapshot` when conflation ends.
    pending_books: BTreeSet<(SourceId, Symbol)>,
    next_heartbeat: Instant,
    /// Set when `subs` changed: the core re-indexes the session.
    pub(crate) subs_changed: bool,
    /// Token bucket for inbound requests.
    tokens: f64,
    tokens_at: Instant,
    /// Sampled records queued and not yet written (the gateway hop, `hops`).
    hop_samples: crate::hops::WriteSamples,
}

#[derive(Debug)]
enum Out {
    /// A complete frame.
    Frame(Bytes),
    /// A data message for a batching JSON client: JSON text without frame header.
    Line(Bytes),
    /// Several complete frames back to back (a run of records), and how many.
    Frames(Bytes, u32),
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Frame(b) | Out::Line(b) | Out::Frames(b, _) => b.len(),
        }
    }
}

/// A session as the core holds it.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    pub(crate) state: RefCell<SessionState>,
    pub(crate) wake: Notify,
    /// Already in the dispatcher's list of sessions to wake this round.
    pub(crate) marked: std::cell::Cell<bool>,
}

impl SessionHandle {
    pub(crate) fn new(id: u64, params: ConnectParams, cfg: &GatewayConfig, now: Instant) -> Self {
        SessionHandle {
            state: RefCell::new(SessionState {
                id,
                params,
                subs: Subscriptions::default(),
                // Grows with the first records; an idle connection holds a few control frames.
                out: VecDeque::new(),
                out_bytes: 0,
                floors: BTreeMap::new(),
                slow: SlowPolicy::default(),
                dropped: BTreeMap::new(),
                closing: false,
                book_depth: 10,
                write_started: None,
                slow_after: Duration::from_millis(cfg.slow_ms),
                replaying: BTreeSet::new(),
                replay_books: BTreeMap::new(),
                conflating: false,
                pending: BTreeMap::new(),
                pending_books: BTreeSet::new(),
                next_heartbeat: now + Duration::from_millis(cfg.heartbeat_ms),
                subs_changed: false,
                tokens: f64::from(cfg.max_requests_per_sec),
                tokens_at: now,
                hop_samples: Default::default(),
            }),
            wake: Notify::new(),
            marked: std::cell::Cell::new(false),
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

    /// True if this connection takes `book` deltas of `enc` as depth-limited JSON.
    pub(crate) fn wants_json_book(&self, enc: &Encoded) -> bool {
        self.params.encoding == Encoding::Json && !self.closing && self.subs.matches("book", enc.sym.as_str())
    }

    /// Offers a record; `book_frame` is the depth-limited JSON delta for `Level` records
    /// (None when this connection's top-`depth` view did not change). Returns true if
    /// something was queued.
    pub(crate) fn offer(
        &mut self,
        enc: &Arc<Encoded>,
        book_frame: Option<&Bytes>,
        slow_bytes: usize,
        now: Instant,
    ) -> bool {
        if enc.venue_gap && !self.closing && self.subs.matches_any(enc.sym.as_str()) {
            // The venue lost data for this symbol (its own sequence skipped): whatever the
            // client subscribed to, it learns that the state it holds may be stale until the
            // source resynchronises. `from`/`to` name the status record that marks it.
            let g = protocol::venue_gap(enc.src.as_str(), enc.sym.as_str(), enc.seq);
            self.push_control(&g);
        }
        let Some(channel) = enc.kind.channel() else { return false };
        if self.closing
            || !self.subs.matches(channel, enc.sym.as_str())
            || self.replaying.contains(&enc.src)
            || !enc.visible_to(&self.params.claims.sub)
        {
            return false;
        }
        if let Some(floor) = self.floors.get(&enc.src) {
            if enc.seq <= *floor {
                return false;
            }
        }
        let json = self.params.encoding == Encoding::Json;
        let is_book = enc.kind == RecordKind::Level;
        if is_book && json && book_frame.is_none() {
            return false;
        }
        let stuck = self.write_started.is_some_and(|t| now.duration_since(t) > self.slow_after);
        if self.conflating || self.out_bytes > slow_bytes || stuck {
            return self.overflow(enc, json);
        }
        self.flush_gaps();
        let item = match (json, self.params.batch, book_frame) {
            (true, true, Some(f)) if is_book => Out::Line(frame_payload(f)),
            (true, false, Some(f)) if is_book => Out::Frame(f.clone()),
            (true, true, _) => Out::Line(enc.json_payload()),
            (true, false, _) => Out::Frame(enc.json_frame.clone()),
            (false, _, _) => Out::Frame(enc.binary_frame.clone()),
        };
        self.out_bytes += item.len();
        self.out.push_back(item);
        self.hop_samples.queued(enc);
        true
    }

    /// True if this session can take `run` (records it is subscribed to, `len` bytes of
    /// frames) as one buffer: exactly what [`SessionState::offer`] would queue record by
    /// record, because none of its per-record rules applies now.
    pub(crate) fn takes_run_whole(&self, run: &[&Arc<Encoded>], len: usize, slow_bytes: usize, now: Instant) -> bool {
        if self.closing || self.conflating || self.params.batch || !self.dropped.is_empty() {
            return false;
        }
        if self.out_bytes + len > slow_bytes
            || self.write_started.is_some_and(|t| now.duration_since(t) > self.slow_after)
        {
            return false;
        }
        run.iter().all(|e| {
            !self.replaying.contains(&e.src)
                && self.floors.get(&e.src).is_none_or(|f| e.seq > *f)
                && e.visible_to(&self.params.claims.sub)
        })
    }

    /// Queues `count` prebuilt data frames in one buffer (see [`SessionState::takes_run_whole`]).
    pub(crate) fn push_frames(&mut self, f: Bytes, count: usize) {
        self.out_bytes += f.len();
        self.out.push_back(Out::Frames(f, count as u32));
    }

    /// The client is over its bound: apply its slow-consumer policy.
    fn overflow(&mut self, enc: &Arc<Encoded>, json: bool) -> bool {
        match self.slow {
            SlowPolicy::Disconnect => {
                // Drop what is queued: the client will not read it anyway, and the close
                // must not wait behind megabytes.
                self.out.clear();
                self.out_bytes = 0;
                metrics::counter!("tickmesh_gateway_slow_consumer_events_total", "reason" => "disconnect").increment(1);
                self.push_close(4008, "slow consumer");
                true
            }
            SlowPolicy::Conflate if json && matches!(enc.kind, RecordKind::Quote | RecordKind::Status) => {
                self.start_conflating();
                self.pending.insert((enc.src, enc.sym, enc.kind), enc.clone());
                false
            }
            SlowPolicy::Conflate if json && enc.kind == RecordKind::Level => {
                self.start_conflating();
                self.pending_books.insert((enc.src, enc.sym));
                false
            }
            SlowPolicy::Conflate | SlowPolicy::Drop => {
                // Trades are never merged: they are dropped and named by a `gap`.
                if self.slow == SlowPolicy::Conflate {
                    self.start_conflating();
                }
                let e = self.dropped.entry(enc.src).or_insert((enc.seq, enc.seq));
                e.1 = enc.seq;
                metrics::counter!("tickmesh_gateway_slow_consumer_events_total", "reason" => "drop").increment(1);
                false
            }
        }
    }

    fn start_conflating(&mut self) {
        if !self.conflating {
            self.conflating = true;
            metrics::counter!("tickmesh_gateway_slow_consumer_events_total", "reason" => "conflate").increment(1);
        }
    }

    /// Ends conflation once the queue has drained below half the bound: gaps first, then
    /// the merged state in `seq` order (books as fresh snapshots at the core's position).
    pub(crate) fn maybe_end_conflation(&mut self, core: &Core) {
        if !self.conflating || self.out_bytes > core.cfg.slow_bytes / 2 {
            return;
        }
        self.conflating = false;
        self.flush_gaps();
        let mut items: Vec<(u64, Vec<u8>)> = Vec::new();
        for (_, enc) in std::mem::take(&mut self.pending) {
            items.push((enc.seq, enc.conflated_json()));
        }
        let positions = core.positions.borrow();
        let books = core.books.borrow();
        for (src, sym) in std::mem::take(&mut self.pending_books) {
            let pos = positions.get(&src).copied().unwrap_or(0);
            if let Some(j) = books.snapshot(src, sym, pos, self.book_depth, true) {
                items.push((pos, j));
            }
        }
        drop(books);
        drop(positions);
        items.sort_by_key(|(seq, _)| *seq);
        for (_, j) in items {
            self.push_control(&j);
        }
    }

    /// Offers a record read back from the journal during `resume`.
    fn offer_replayed(&mut self, rec: &tickmesh_codec::RecordRef<'_>, scratch: &mut Vec<u8>) {
        let src = rec.source_id();
        let floor = self.floors.entry(src).or_insert(0);
        if rec.seq() <= *floor {
            return;
        }
        *floor = rec.seq();
        let Some(channel) = rec.kind().channel() else { return };
        if !self.subs.matches(channel, rec.sym()) {
            return;
        }
        // JSON clients get depth-limited deltas computed against the books rebuilt as of
        // their position (without them, a snapshot when the replay ends); binary clients get
        // every level record.
        if self.params.encoding == Encoding::Json && rec.kind() == RecordKind::Level {
            let Some(books) = self.replay_books.get_mut(&src) else { return };
            let enc = Encoded::new(rec, scratch);
            let Some(level) = enc.level else { return };
            let delta = books.apply(&enc, &level, &[self.book_depth]).pop().and_then(|(_, f)| f);
            if let Some(f) = delta {
                let item = if self.params.batch { Out::Line(frame_payload(&f)) } else { Out::Frame(f) };
                self.out_bytes += item.len();
                self.out.push_back(item);
            }
            return;
        }
        if crate::fanout::record_owner(rec).is_some_and(|o| !crate::fanout::owner_is(&o, &self.params.claims.sub)) {
            return;
        }
        let enc = Encoded::new(rec, scratch);
        let item = match (self.params.encoding, self.params.batch) {
            (Encoding::Json, true) => Out::Line(enc.json_payload()),
            (Encoding::Json, false) => Out::Frame(enc.json_frame.clone()),
            (Encoding::Binary, _) => Out::Frame(enc.binary_frame.clone()),
        };
        self.out_bytes += item.len();
        self.out.push_back(item);
    }

    /// The position to report for `src` in heartbeats.
    pub(crate) fn position(&self, src: &SourceId, core_pos: u64) -> u64 {
        match self.floors.get(src) {
            Some(f) if self.replaying.contains(src) => *f,
            Some(f) => (*f).max(core_pos),
            None => core_pos,
        }
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
    pub(crate) fn handle_text(&mut self, core: &Rc<Core>, text: &str, now: Instant, now_ns: u64) {
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
                self.subs_changed = true;
                self.push_control(&protocol::ack("unsubscribed", &id, &channels, &symbols));
            }
            Ok(Request::Subscribe(s)) => self.subscribe(core, s),
        }
    }

    fn refuse(&mut self, r: &Refusal) {
        self.push_control(&protocol::error_reply(&r.id, r.code, &r.message));
    }

    fn subscribe(&mut self, core: &Rc<Core>, s: protocol::Subscribe) {
        let span =
            crate::trace::subscribe_span(core.shared.region(), self.id, s.resume.len(), s.traceparent.as_deref());
        let _in_span = span.enter();
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
        if s.channel_list.contains(&"book") {
            self.book_depth = s.depth;
        }
        let mut replays = Vec::new();
        let mut gaps = Vec::new();
        {
            let positions = core.positions.borrow();
            for (src, last) in &s.resume {
                let Ok(src) = SourceId::new(src) else { continue };
                // Records at or before the client's position are never delivered again.
                self.floors.insert(src, *last);
                let here = positions.get(&src).copied().unwrap_or(0);
                if *last < here {
                    if core.shared.journal().is_some() {
                        self.replaying.insert(src);
                        replays.push((src, *last + 1));
                    } else {
                        gaps.push((src, *last + 1, here));
                    }
                }
            }
        }
        self.subs.add(&s.channel_list, &s.symbol_list);
        self.subs_changed = true;
        self.push_control(&protocol::ack("subscribed", &s.id, &s.channels, &s.symbols));
        for (src, from, to) in gaps {
            self.push_control(&protocol::gap(src.as_str(), from, to, "journal_unavailable"));
        }
        if s.channel_list.contains(&"book") {
            let mut wanted = protocol::SymbolSet::default();
            for sym in &s.symbol_list {
                wanted.add(sym);
            }
            let positions = core.positions.borrow();
            let books = core.books.borrow();
            // Every book of a pattern the core holds, and every source of a plain symbol
            // (empty if it has not quoted yet), so the client always has a baseline.
            let mut keys = books.keys(|sym| wanted.matches(sym));
            for sym in s.symbol_list.iter().filter(|s| !protocol::is_pattern(s)) {
                let Ok(symbol) = Symbol::new(sym) else { continue };
                for src in core.shared.sources_of(sym) {
                    if !keys.contains(&(src, symbol)) {
                        keys.push((src, symbol));
                    }
                }
            }
            keys.sort();
            for (src, sym) in keys {
                if self.replaying.contains(&src) {
                    // Sent when the replay of this source ends, after the replayed records.
                    continue;
                }
                let pos = positions.get(&src).copied().unwrap_or(0);
                let j = books.snapshot_or_empty(src, sym, pos, self.book_depth);
                self.push_control(&j);
            }
        }
        if !replays.is_empty() {
            core.start_replay(self.id, replays);
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
        let hb = protocol::heartbeat(now_ns, positions.iter().map(|(s, q)| (s.as_str(), self.position(s, *q))));
        drop(positions);
        self.push_control(&hb);
        true
    }

    /// Gives back queue memory a burst left behind once the queue is empty.
    fn shrink_idle(&mut self) {
        if self.out.is_empty() && self.out.capacity() > 16 {
            self.out = VecDeque::new();
        }
    }

    /// Moves up to `max` queued items into `batch` as frames ready to write; returns how
    /// many WebSocket frames they hold.
    pub(crate) fn take_batch(&mut self, batch: &mut Vec<Bytes>, max: usize) -> u64 {
        let mut lines: Vec<Bytes> = Vec::new();
        let mut frames = 0u64;
        while batch.len() < max {
            let Some(item) = self.out.pop_front() else { break };
            self.out_bytes -= item.len();
            let (f, n) = match item {
                Out::Line(l) => {
                    lines.push(l);
                    continue;
                }
                Out::Frame(f) => (f, 1),
                Out::Frames(f, n) => (f, u64::from(n)),
            };
            if !lines.is_empty() {
                batch.push(join_lines(&mut lines));
                frames += 1;
            }
            batch.push(f);
            frames += n;
        }
        if !lines.is_empty() {
            batch.push(join_lines(&mut lines));
            frames += 1;
        }
        frames
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
    let (rd, mut wr) = stream.into_split();
    let reader = {
        let core = core.clone();
        let handle = handle.clone();
        async move {
            let mut dec = ws::Decoder::new(core.cfg.max_message_bytes);
            dec.feed(&already_read);
            // It may be a slice of hyper's whole read buffer: let that go now.
            drop(already_read);
            'session: loop {
                loop {
                    match dec.next_message() {
                        Ok(Some(msg)) => {
                            if !on_message(&core, &handle, msg) {
                                break 'session;
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
                            break 'session;
                        }
                    }
                }
                handle.wake.notify_one();
                match read_shared(&rd, |b| dec.feed(b)).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
            // A close frame is queued. Keep reading (and discarding) until the client
            // closes: closing a socket with unread input sends a reset, and a reset can
            // destroy the close frame before the client reads it.
            handle.state.borrow_mut().closing = true;
            handle.wake.notify_one();
            while let Ok(n) = read_shared(&rd, |_| {}).await {
                if n == 0 {
                    break;
                }
            }
        }
    };
    let writer = {
        let handle = handle.clone();
        let wcore = core.clone();
        async move {
            let mut batch: Vec<Bytes> = Vec::new();
            loop {
                if batch.capacity() > 64 {
                    // A burst is over: an idle connection keeps no large buffers.
                    batch = Vec::new();
                    handle.state.borrow_mut().shrink_idle();
                }
                handle.wake.notified().await;
                loop {
                    let (closing, n_msgs, samples) = {
                        let mut st = handle.state.borrow_mut();
                        let n = st.take_batch(&mut batch, 256);
                        let samples = if st.out.is_empty() { st.hop_samples.take() } else { Vec::new() };
                        (st.closing && st.out.is_empty(), n, samples)
                    };
                    if batch.is_empty() {
                        if closing {
                            let _ = wr.shutdown().await;
                            return;
                        }
                        break;
                    }
                    handle.state.borrow_mut().write_started = Some(Instant::now());
                    #[cfg(feature = "io-uring")]
                    let result = match &wcore.uring {
                        Some(ring) => {
                            let (r, back) = crate::uring::write_all(ring, &wr, std::mem::take(&mut batch)).await;
                            batch = back;
                            r
                        }
                        None => write_batch(&mut wr, &mut batch).await,
                    };
                    #[cfg(not(feature = "io-uring"))]
                    let result = write_batch(&mut wr, &mut batch).await;
                    {
                        let mut st = handle.state.borrow_mut();
                        st.write_started = None;
                        st.maybe_end_conflation(&wcore);
                    }
                    match result {
                        Ok(bytes) => {
                            wcore.shared.hops().written(&samples, tickmesh_codec::now_ns());
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
        () = &mut writer => {
            // Our close frame is out (or the socket failed): give the client a moment to
            // answer it, reading whatever it still sends.
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut reader).await;
        }
    }
    core.remove_session(handle.state.borrow().id);
}

thread_local! {
    /// One read buffer per core, shared by all its connections: clients send a few small
    /// requests, so a buffer per connection would be almost all of an idle connection's
    /// memory. Bytes are handed to the connection's decoder as soon as they are read.
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; 64 * 1024].into_boxed_slice());
}

/// Waits until the socket is readable, reads what it has into the core's buffer and hands
/// it to `f`. Returns the bytes read (0 at end of stream).
async fn read_shared(rd: &tokio::net::tcp::OwnedReadHalf, mut f: impl FnMut(&[u8])) -> std::io::Result<usize> {
    loop {
        rd.readable().await?;
        let r = READ_BUF.with(|b| {
            let mut b = b.borrow_mut();
            let n = rd.try_read(&mut b[..])?;
            f(&b[..n]);
            Ok::<usize, std::io::Error>(n)
        });
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
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
fn on_message(core: &Rc<Core>, handle: &SessionHandle, msg: ws::Message) -> bool {
    let mut st = handle.state.borrow_mut();
    match msg {
        ws::Message::Text(t) => {
            let now = Instant::now();
            st.handle_text(core, &t, now, tickmesh_codec::now_ns());
            if std::mem::take(&mut st.subs_changed) {
                core.reindex(st.id, &st.subs);
            }
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

/// The payload of a complete server text frame (after its 2, 4 or 10-byte header).
fn frame_payload(f: &Bytes) -> Bytes {
    let start = match f.get(1).copied().unwrap_or(0) & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    f.slice(start.min(f.len())..)
}

/// Reads `src` from `from` out of the journal into the session's queue until the replay
/// has caught up with what the core has dispatched, then hands the source to live
/// dispatch. Runs on the core's thread; reads in chunks and waits while the client's
/// queue is over half its bound, so a long replay neither blocks the core nor floods
/// memory.
pub(crate) async fn replay(core: Rc<Core>, handle: Rc<SessionHandle>, src: SourceId, from: u64) {
    let Some(journal) = core.shared.journal().cloned() else { return };
    let finish = |st: &mut SessionState| {
        st.replaying.remove(&src);
        // With rebuilt books the client's book followed the replay delta by delta and is
        // now the core's; without them it gets the book as it is now.
        if st.replay_books.remove(&src).is_none() && st.params.encoding == Encoding::Json {
            // Book state as of the end of the replay, before any live delta.
            let pos = core.positions.borrow().get(&src).copied().unwrap_or(0);
            let books = core.books.borrow();
            for (s, sym) in books.keys(|sym| st.subs.matches("book", sym)) {
                if s == src {
                    if let Some(j) = books.snapshot(src, sym, pos, st.book_depth, false) {
                        st.push_control(&j);
                    }
                }
            }
        }
    };
    let mut retention_gap = false;
    if let Some(first) = journal.first_seq(&src) {
        if first > from {
            let mut st = handle.state.borrow_mut();
            st.push_control(&protocol::gap(src.as_str(), from, first - 1, "journal_retention"));
            st.floors.insert(src, first - 1);
            retention_gap = true;
        }
    }
    let start = handle.state.borrow().floors.get(&src).copied().unwrap_or(0) + 1;
    let mut reader = match journal.reader(&src, start.max(from)) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(source = %src, error = %e, "resume: journal read failed");
            let here = core.positions.borrow().get(&src).copied().unwrap_or(0);
            let mut st = handle.state.borrow_mut();
            st.push_control(&protocol::gap(src.as_str(), from, here, "journal_unavailable"));
            st.floors.insert(src, here);
            finish(&mut st);
            return;
        }
    };
    if !retention_gap && !rebuild_books(&core, &handle, &journal, src, start - 1).await {
        return;
    }
    let mut scratch = Vec::with_capacity(512);
    loop {
        loop {
            let (closing, over) = {
                let st = handle.state.borrow();
                (st.closing, st.out_bytes > core.cfg.slow_bytes / 2)
            };
            if closing {
                return;
            }
            if !over {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut n = 0;
        {
            let mut st = handle.state.borrow_mut();
            while n < 512 {
                match reader.next() {
                    Ok(Some(rec)) => {
                        n += 1;
                        st.offer_replayed(&rec, &mut scratch);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(source = %src, error = %e, "resume: journal read failed");
                        break;
                    }
                }
            }
            if n < 512 {
                let here = core.positions.borrow().get(&src).copied().unwrap_or(0);
                if st.floors.get(&src).copied().unwrap_or(0) >= here {
                    finish(&mut st);
                    drop(st);
                    handle.wake.notify_one();
                    return;
                }
            }
        }
        handle.wake.notify_one();
        tokio::task::yield_now().await;
    }
}

/// For a JSON session subscribed to `book`: rebuilds `src`'s books as of `base` (the
/// client's position) into the session and sends each as a `book_snapshot` at `base`, so the
/// replayed deltas that follow apply to exactly the book the client holds. Uses the core's
/// change log, or reads the journal up to `base` when the log no longer reaches back that far
/// (in chunks, yielding between them). False if the session closed meanwhile.
async fn rebuild_books(
    core: &Rc<Core>,
    handle: &Rc<SessionHandle>,
    journal: &tickmesh_journal::Journal,
    src: SourceId,
    base: u64,
) -> bool {
    let logged: Option<crate::books::BookMap> = {
        let st = handle.state.borrow();
        if st.params.encoding != Encoding::Json {
            return true;
        }
        let books = core.books.borrow();
        books
            .keys(|sym| st.subs.matches("book", sym))
            .into_iter()
            .filter(|(s, _)| *s == src)
            .map(|key| books.at(src, key.1, base).map(|b| (key, b)))
            .collect()
    };
    let map = match logged {
        Some(map) => map,
        None => {
            let mut map = crate::books::BookMap::new();
            let first = journal.first_seq(&src).unwrap_or(1);
            let mut reader = match journal.reader(&src, first) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(source = %src, error = %e, "resume: cannot read the journal to rebuild books");
                    return true;
                }
            };
            loop {
                let step = {
                    let st = handle.state.borrow();
                    if st.closing {
                        return false;
                    }
                    crate::books::apply_journal(&mut reader, base, 4096, &mut map, |sym| st.subs.matches("book", sym))
                };
                match step {
                    Ok((_, true)) => break,
                    Ok((_, false)) => tokio::task::yield_now().await,
                    Err(e) => {
                        // The replay then ends with a snapshot of the current book.
                        tracing::warn!(source = %src, error = %e, "resume: cannot read the journal to rebuild books");
                        return true;
                    }
                }
            }
            map
        }
    };
    let mut st = handle.state.borrow_mut();
    if st.closing {
        return false;
    }
    let mut keys: Vec<_> = map.keys().copied().collect();
    keys.sort();
    for (s, sym) in keys {
        if let Some(b) = map.get(&(s, sym)) {
            let j = crate::books::CoreBooks::snapshot_of(b, s, sym, base, st.book_depth, false);
            st.push_control(&j);
        }
    }
    st.replay_books.insert(src, crate::books::CoreBooks::from_map(map));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Grant;
    use tickmesh_codec::{access_untrusted, Body, InstrumentId, Meta, Seq, Status, TradingState};

    fn state() -> SessionState {
        let claims = Claims {
            sub: "t".into(),
            exp: u64::MAX,
            home: None,
            channels: Grant::All,
            symbols: Grant::All,
            roles: vec![],
        };
        let params = ConnectParams { encoding: Encoding::Json, batch: false, claims };
        SessionHandle::new(1, params, &GatewayConfig::default(), Instant::now()).state.into_inner()
    }

    fn status(seq: u64, reason: &[u8]) -> Arc<Encoded> {
        let mut r = [0u8; 8];
        r[..reason.len()].copy_from_slice(reason);
        let rec = tickmesh_codec::Record::new(
            Meta {
                src: SourceId::new("COINBASE").unwrap(),
                seq: Seq(seq),
                instrument: InstrumentId(1),
                sym: Symbol::new("BTC-USD").unwrap(),
                ts_event: 1,
                ts_ingest: 2,
            },
            Body::Status(Status { state: TradingState::Unknown, reason: r }),
        );
        let b = rec.to_bytes();
        Arc::new(Encoded::new(&access_untrusted(&b).unwrap(), &mut Vec::new()))
    }

    fn trade(seq: u64) -> Arc<Encoded> {
        let rec = tickmesh_codec::Record::new(
            Meta {
                src: SourceId::new("COINBASE").unwrap(),
                seq: Seq(seq),
                instrument: InstrumentId(1),
                sym: Symbol::new("BTC-USD").unwrap(),
                ts_event: 1,
                ts_ingest: 2,
            },
            Body::Trade(tickmesh_codec::Trade {
                px: tickmesh_codec::Px(1),
                qty: tickmesh_codec::Qty(1),
                side: tickmesh_codec::Side::Buy,
                match_id: seq,
            }),
        );
        let b = rec.to_bytes();
        Arc::new(Encoded::new(&access_untrusted(&b).unwrap(), &mut Vec::new()))
    }

    #[test]
    fn a_run_is_taken_whole_only_when_no_per_record_rule_applies() {
        let mut st = state();
        st.subs.add(&["trades"], &["BTC-USD".into()]);
        let run: Vec<Arc<Encoded>> = (5..=7).map(trade).collect();
        let refs: Vec<&Arc<Encoded>> = run.iter().collect();
        let len: usize = run.iter().map(|e| e.json_frame.len()).sum();
        let now = Instant::now();
        let src = SourceId::new("COINBASE").unwrap();
        assert!(st.takes_run_whole(&refs, len, 1 << 20, now));
        assert!(!st.takes_run_whole(&refs, len, len - 1, now), "over the slow bound");
        st.floors.insert(src, 6);
        assert!(!st.takes_run_whole(&refs, len, 1 << 20, now), "a record at or below the resume floor");
        st.floors.insert(src, 4);
        assert!(st.takes_run_whole(&refs, len, 1 << 20, now), "all above the floor");
        st.replaying.insert(src);
        assert!(!st.takes_run_whole(&refs, len, 1 << 20, now), "source being replayed");
        st.replaying.clear();
        st.conflating = true;
        assert!(!st.takes_run_whole(&refs, len, 1 << 20, now), "conflating");
        st.conflating = false;
        st.dropped.insert(src, (1, 2));
        assert!(!st.takes_run_whole(&refs, len, 1 << 20, now), "a gap must go out first");
        st.dropped.clear();
        st.params.batch = true;
        assert!(!st.takes_run_whole(&refs, len, 1 << 20, now), "batch=1 joins lines instead");
        st.params.batch = false;
        st.write_started = Some(now);
        assert!(!st.takes_run_whole(&refs, len, 1 << 20, now + Duration::from_secs(60)), "stuck writer");
    }

    fn texts(st: &mut SessionState) -> Vec<String> {
        let mut batch = Vec::new();
        st.take_batch(&mut batch, 100);
        batch.iter().map(|f| String::from_utf8_lossy(&frame_payload(f)).into_owned()).collect()
    }

    #[test]
    fn a_venue_gap_reaches_every_subscriber_of_the_symbol() {
        let mut st = state();
        st.subs.add(&["trades"], &["BTC-*".into()]);
        st.offer(&status(7, b"GAP"), None, 1 << 20, Instant::now());
        let out = texts(&mut st);
        assert_eq!(out.len(), 1, "{out:?}");
        let v: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"gap","src":"COINBASE","from":7,"to":7,"reason":"venue_gap","sym":"BTC-USD"})
        );
        // A status that is not a gap reaches only `status` subscribers, and no gap is sent.
        st.offer(&status(8, b"RESYNC"), None, 1 << 20, Instant::now());
        assert!(texts(&mut st).is_empty());
        st.subs.add(&["status"], &["*".into()]);
        st.offer(&status(9, b"RESYNC"), None, 1 << 20, Instant::now());
        let out = texts(&mut st);
        assert_eq!(out.len(), 1);
        assert!(out[0].contains("\"type\":\"status\""), "{out:?}");
    }
}
