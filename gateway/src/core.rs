//! Pinned worker cores: one thread per core, each with its own current-thread runtime,
//! its own `SO_REUSEPORT` listener, and its own sessions.
//!
//! Records arrive from the fan-out over an unbounded tokio channel per core (lock-free
//! linked blocks, one wake per batch). The dispatcher drains everything pending, offers each
//! record to the sessions subscribed to its (channel, symbol) only (the [`SubIndex`], with
//! the resolved session list cached per key), then wakes the sessions that got something:
//! one write per socket per wake-up however many records arrived.

use bytes::Bytes;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tickmesh_codec::{SourceId, Symbol};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::config::GatewayConfig;
use crate::fanout::{CoreMsg, Encoded};
use crate::session::{self, ConnectParams, SessionHandle};
use crate::shared::GatewayShared;
use crate::subindex::SubIndex;

/// Most records sent to a session as one concatenated frame buffer.
const MAX_RUN: usize = 256;

/// Subscribers of one (channel, symbol), resolved to their handles; channel None means any
/// channel (venue gaps).
type Subscribers = Rc<[Rc<SessionHandle>]>;

/// What one core owns.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) index: usize,
    pub(crate) cfg: GatewayConfig,
    pub(crate) shared: Arc<GatewayShared>,
    pub(crate) sessions: RefCell<BTreeMap<u64, Rc<SessionHandle>>>,
    /// Who takes what: a record touches only its subscribers.
    subindex: RefCell<SubIndex>,
    /// `index` lookups resolved to handles, per (channel, symbol); cleared whenever a
    /// session's subscriptions change or a session leaves.
    subscribers: RefCell<HashMap<(Option<&'static str>, Symbol), Subscribers>>,
    /// This core's progress through a drain (see `drain.rs`).
    pub(crate) drain: RefCell<crate::drain::CoreDrain>,
    /// Highest `seq` per source dispatched on this core: what heartbeats report.
    pub(crate) positions: RefCell<BTreeMap<SourceId, u64>>,
    /// Books of the `book` channel, at this core's position.
    pub(crate) books: RefCell<crate::books::CoreBooks>,
    next_id: std::cell::Cell<u64>,
    /// The core's ring when `gateway.io_backend = "io_uring"`.
    #[cfg(feature = "io-uring")]
    pub(crate) uring: Option<Rc<crate::uring::Uring>>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
}

impl Core {
    /// Registers an upgraded connection and runs it on this core.
    pub(crate) fn start_session(self: &Rc<Self>, stream: TcpStream, already_read: Bytes, params: ConnectParams) {
        let n = self.next_id.get() + 1;
        self.next_id.set(n);
        // Session ids are unique per process: core index in the top bits.
        let id = ((self.index as u64) << 48) | n;
        let now = Instant::now();
        let handle = Rc::new(SessionHandle::new(id, params, &self.cfg, now));
        {
            let mut st = handle.state.borrow_mut();
            st.push_control(&self.hello(id));
        }
        handle.wake.notify_one();
        self.sessions.borrow_mut().insert(id, handle.clone());
        self.shared.session_opened();
        metrics::gauge!("tickmesh_gateway_connections", "core" => self.index.to_string()).increment(1.0);
        tokio::task::spawn_local(session::run(self.clone(), stream, already_read, handle));
    }

    /// Starts replaying `(source, from)` pairs from the journal for session `id`.
    pub(crate) fn start_replay(self: &Rc<Self>, id: u64, replays: Vec<(SourceId, u64)>) {
        // Called from inside the session's state borrow: look the handle up and spawn; the
        // task borrows the state only once it runs.
        let Some(handle) = self.sessions.borrow().get(&id).cloned() else { return };
        let core = self.clone();
        // A child of the request's span (subscribe / resume), so a trace shows the catch-up.
        let span = tracing::info_span!("gateway.catch_up", region = self.shared.region(), sources = replays.len());
        tokio::task::spawn_local(tracing::Instrument::instrument(
            async move {
                for (src, from) in replays {
                    session::replay(core.clone(), handle.clone(), src, from).await;
                }
            },
            span,
        ));
    }

    /// Re-indexes session `id` after its subscriptions changed.
    pub(crate) fn reindex(&self, id: u64, subs: &crate::protocol::Subscriptions) {
        self.subindex.borrow_mut().set(id, subs);
        self.subscribers.borrow_mut().clear();
    }

    /// The sessions subscribed to `sym` on `channel` (any channel when None).
    fn subscribers_of(&self, channel: Option<&'static str>, sym: Symbol) -> Subscribers {
        if let Some(s) = self.subscribers.borrow().get(&(channel, sym)) {
            return s.clone();
        }
        let ids = self.subindex.borrow().subscribers(channel, sym.as_str());
        let sessions = self.sessions.borrow();
        let list: Subscribers = ids.iter().filter_map(|id| sessions.get(id).cloned()).collect();
        self.subscribers.borrow_mut().insert((channel, sym), list.clone());
        list
    }

    pub(crate) fn remove_session(&self, id: u64) {
        self.subindex.borrow_mut().remove(id);
        self.subscribers.borrow_mut().clear();
        if self.sessions.borrow_mut().remove(&id).is_some() {
            self.shared.session_closed();
            metrics::gauge!("tickmesh_gateway_connections", "core" => self.index.to_string()).decrement(1.0);
        }
    }

    fn hello(&self, id: u64) -> Vec<u8> {
        let regions = self.shared.regions();
        serde_json::to_vec(&serde_json::json!({
            "type": "hello",
            "protocol": 1,
            "region": self.shared.region(),
            "session": format!("{}-{id:x}", self.shared.region()),
            "heartbeat_ms": self.cfg.heartbeat_ms,
            "regions": regions,
        }))
        .unwrap_or_default()
    }

    fn dispatch(&self, batch: &[CoreMsg], dirty: &mut Vec<Rc<SessionHandle>>) -> bool {
        let now = Instant::now();
        let mut stop = false;
        let mut run: Vec<&Arc<Encoded>> = Vec::new();
        let mut i = 0;
        while i < batch.len() {
            let enc = match &batch[i] {
                CoreMsg::Record(enc) => enc,
                CoreMsg::Shutdown => {
                    stop = true;
                    i += 1;
                    continue;
                }
            };
            // Consecutive plain records of one (channel, symbol) share their subscribers:
            // they go out as one concatenation of their frames, one queue entry per session.
            if let (Some(c), None, false) = (enc.kind.channel(), &enc.level, enc.venue_gap) {
                run.clear();
                run.push(enc);
                while let Some(CoreMsg::Record(next)) = batch.get(i + run.len()) {
                    let same = next.kind.channel() == Some(c)
                        && next.sym == enc.sym
                        && next.level.is_none()
                        && !next.venue_gap;
                    if !same || run.len() >= MAX_RUN {
                        break;
                    }
                    run.push(next);
                }
                if run.len() > 1 {
                    let subs = self.subscribers_of(Some(c), enc.sym);
                    self.dispatch_run(&run, &subs, now, dirty);
                    i += run.len();
                    continue;
                }
            }
            self.dispatch_one(enc, now, dirty);
            i += 1;
        }
        stop
    }

    fn note_position(&self, enc: &Encoded) {
        let mut p = self.positions.borrow_mut();
        let e = p.entry(enc.src).or_insert(0);
        *e = (*e).max(enc.seq);
    }

    fn note_dispatched(enc: &Encoded) {
        let lat = tickmesh_codec::now_ns().saturating_sub(enc.ts_ingest);
        metrics::histogram!("tickmesh_gateway_ingest_to_dispatch_seconds").record(lat as f64 / 1e9);
    }

    /// Offers a run of records of one (channel, symbol). A session in the plain state
    /// (not slow, not resuming, not batching, no pending gap) takes the run as one frame
    /// buffer; any other session gets the records one by one through the full policy.
    fn dispatch_run(
        &self,
        run: &[&Arc<Encoded>],
        subs: &[Rc<SessionHandle>],
        now: Instant,
        dirty: &mut Vec<Rc<SessionHandle>>,
    ) {
        for enc in run {
            self.note_position(enc);
        }
        let concat = |f: fn(&Encoded) -> &Bytes| {
            let mut v = Vec::with_capacity(run.iter().map(|e| f(e).len()).sum());
            for e in run {
                v.extend_from_slice(f(e));
            }
            Bytes::from(v)
        };
        let mut json: Option<Bytes> = None;
        let mut binary: Option<Bytes> = None;
        for s in subs {
            let mut st = s.state.borrow_mut();
            let (slot, pick): (&mut Option<Bytes>, fn(&Encoded) -> &Bytes) = match st.params.encoding {
                crate::session::Encoding::Json => (&mut json, |e| &e.json_frame),
                crate::session::Encoding::Binary => (&mut binary, |e| &e.binary_frame),
            };
            let len = run.iter().map(|e| pick(e).len()).sum();
            let queued = if st.takes_run_whole(run, len, self.cfg.slow_bytes, now) {
                st.push_frames(slot.get_or_insert_with(|| concat(pick)).clone(), run.len());
                true
            } else {
                let mut any = false;
                for enc in run {
                    any |= st.offer(enc, None, self.cfg.slow_bytes, now);
                }
                any
            };
            if queued && !s.marked.replace(true) {
                dirty.push(s.clone());
            }
        }
        for enc in run {
            Self::note_dispatched(enc);
        }
    }

    fn dispatch_one(&self, enc: &Arc<Encoded>, now: Instant, dirty: &mut Vec<Rc<SessionHandle>>) {
        self.note_position(enc);
        let channel = enc.kind.channel();
        // A venue gap reaches subscribers of the symbol on any channel.
        let subs = match (enc.venue_gap, channel) {
            (true, _) => Some(self.subscribers_of(None, enc.sym)),
            (false, Some(c)) => Some(self.subscribers_of(Some(c), enc.sym)),
            (false, None) => None,
        };
        let subs: &[Rc<SessionHandle>] = subs.as_deref().unwrap_or(&[]);
        // Books are kept whoever subscribes: snapshots need them later.
        let frames = match &enc.level {
            Some(level) => {
                let mut depths: Vec<u32> = Vec::new();
                for s in subs {
                    let st = s.state.borrow();
                    if st.wants_json_book(enc) && !depths.contains(&st.book_depth) {
                        depths.push(st.book_depth);
                    }
                }
                self.books.borrow_mut().apply(enc, level, &depths)
            }
            None => Vec::new(),
        };
        for s in subs {
            let mut st = s.state.borrow_mut();
            let frame = frames.iter().find(|(d, _)| *d == st.book_depth).and_then(|(_, f)| f.as_ref());
            if st.offer(enc, frame, self.cfg.slow_bytes, now) && !s.marked.replace(true) {
                dirty.push(s.clone());
            }
        }
        Self::note_dispatched(enc);
    }

    fn heartbeats(&self) {
        let now = Instant::now();
        let now_ns = tickmesh_codec::now_ns();
        for s in self.sessions.borrow().values() {
            if s.state.borrow_mut().heartbeat_if_due(self, now, now_ns) {
                s.wake.notify_one();
            }
        }
    }

    fn close_all(&self, code: u16, reason: &str) {
        for s in self.sessions.borrow().values() {
            s.state.borrow_mut().push_close(code, reason);
            s.wake.notify_one();
        }
    }
}

/// Runs on the current core's thread: calls `f` with this core, if inside a core.
pub(crate) fn with_current<R>(f: impl FnOnce(&Rc<Core>) -> R) -> Option<R> {
    CURRENT.with(|c| c.borrow().as_ref().map(f))
}

/// Binds the listeners: the first decides the port (if 0), the rest share it.
pub(crate) fn bind_listeners(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n {
        let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        sock.set_reuse_address(true)?;
        sock.set_reuse_port(true)?;
        sock.set_nonblocking(true)?;
        sock.bind(&addr.into())?;
        sock.listen(1024)?;
        let l: std::net::TcpListener = sock.into();
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// Body of one `gw-core-N` thread.
pub(crate) async fn run_core(
    index: usize,
    cfg: GatewayConfig,
    shared: Arc<GatewayShared>,
    listener: std::net::TcpListener,
    mut rx: UnboundedReceiver<CoreMsg>,
    router: axum::Router,
) {
    let (warm, at) = shared.warm();
    let core = Rc::new(Core {
        index,
        cfg: cfg.clone(),
        positions: RefCell::new(shared.positions()),
        books: RefCell::new(crate::books::CoreBooks::for_core(warm, &at)),
        shared,
        sessions: RefCell::new(BTreeMap::new()),
        subindex: RefCell::new(SubIndex::default()),
        subscribers: RefCell::new(HashMap::new()),
        drain: RefCell::new(crate::drain::CoreDrain::default()),
        next_id: std::cell::Cell::new(0),
        #[cfg(feature = "io-uring")]
        uring: if cfg.io_backend == "io_uring" {
            match crate::uring::Uring::start() {
                Ok(u) => Some(u),
                Err(e) => {
                    // Gateway::start probed the kernel; a failure here is resource exhaustion.
                    tracing::error!(core = index, error = %e, "gw-core cannot create its io_uring; stopping this core");
                    return;
                }
            }
        } else {
            None
        },
    });
    CURRENT.with(|c| *c.borrow_mut() = Some(core.clone()));
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(core = index, error = %e, "gw-core cannot register its listener");
            return;
        }
    };
    let accept = tokio::task::spawn_local(async move {
        let cfg = cfg;
        loop {
            match listener.accept().await {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    if cfg.socket_send_buffer > 0 {
                        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(cfg.socket_send_buffer);
                    }
                    let timeout = Duration::from_millis(cfg.handshake_timeout_ms);
                    tokio::task::spawn_local(crate::http::serve_connection(stream, router.clone(), timeout));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(core = index, error = %e, "accept failed; retrying in 50 ms");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    let hb_core = core.clone();
    let heartbeats = tokio::task::spawn_local(async move {
        let mut tick = tokio::time::interval(Duration::from_millis((hb_core.cfg.heartbeat_ms / 10).clamp(5, 100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            hb_core.heartbeats();
            crate::drain::CoreDrain::tick(&hb_core, Instant::now());
        }
    });
    // The dispatcher is a task like the sessions, not the LocalSet's main future: the main
    // future is polled between every few dozen tasks, so a dispatcher there starves
    // thousands of writers under load (their queues fill, and the slow policy drops data
    // that the socket could have taken). As a task it yields after each round, and the
    // LocalSet's FIFO run queue runs every writer it woke before the next round.
    let dcore = core.clone();
    let dispatcher = tokio::task::spawn_local(async move {
        let mut batch = Vec::with_capacity(1024);
        let mut dirty = Vec::with_capacity(1024);
        loop {
            batch.clear();
            if rx.recv_many(&mut batch, 1024).await == 0 {
                break;
            }
            let stop = dcore.dispatch(&batch, &mut dirty);
            let woke = !dirty.is_empty();
            for s in dirty.drain(..) {
                s.marked.set(false);
                s.wake.notify_one();
            }
            if stop {
                break;
            }
            if woke {
                tokio::task::yield_now().await;
            }
        }
    });
    let _ = dispatcher.await;
    accept.abort();
    heartbeats.abort();
    // After a graceful stop (a drain with reason `shutdown`) the clients still here were
    // told where to go: they get the drain's 1012. A stop without one is 1001 (going away).
    match core.shared.drain_plan() {
        Some(_) => core.close_all(1012, "region shutting down"),
        None => core.close_all(1001, "server shutting down"),
    }
    // Give sessions a moment to write their close frames.
    tokio::time::sleep(Duration::from_millis(100)).await;
    CURRENT.with(|c| *c.borrow_mut() = None);
}
