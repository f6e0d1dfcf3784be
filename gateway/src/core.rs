//! Pinned worker cores: one thread per core, each with its own current-thread runtime,
//! its own `SO_REUSEPORT` listener, and its own sessions.
//!
//! Records arrive from the fan-out over an unbounded tokio channel per core (lock-free
//! linked blocks, one wake per batch). The dispatcher drains everything pending, offers each
//! record to each session, then wakes the sessions that got something: one write per
//! socket per wake-up however many records arrived.

use bytes::Bytes;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tickmesh_codec::SourceId;
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::config::GatewayConfig;
use crate::fanout::CoreMsg;
use crate::session::{self, ConnectParams, SessionHandle};
use crate::shared::GatewayShared;

/// What one core owns.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) index: usize,
    pub(crate) cfg: GatewayConfig,
    pub(crate) shared: Arc<GatewayShared>,
    sessions: RefCell<BTreeMap<u64, Rc<SessionHandle>>>,
    /// Highest `seq` per source dispatched on this core: what heartbeats report.
    pub(crate) positions: RefCell<BTreeMap<SourceId, u64>>,
    /// Books of the `book` channel, at this core's position.
    pub(crate) books: RefCell<crate::books::CoreBooks>,
    next_id: std::cell::Cell<u64>,
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
        metrics::gauge!("tickmesh_gateway_connections", "core" => self.index.to_string()).increment(1.0);
        tokio::task::spawn_local(session::run(self.clone(), stream, already_read, handle));
    }

    /// Starts replaying `(source, from)` pairs from the journal for session `id`.
    pub(crate) fn start_replay(self: &Rc<Self>, id: u64, replays: Vec<(SourceId, u64)>) {
        // Called from inside the session's state borrow: look the handle up and spawn; the
        // task borrows the state only once it runs.
        let Some(handle) = self.sessions.borrow().get(&id).cloned() else { return };
        let core = self.clone();
        tokio::task::spawn_local(async move {
            for (src, from) in replays {
                session::replay(core.clone(), handle.clone(), src, from).await;
            }
        });
    }

    pub(crate) fn remove_session(&self, id: u64) {
        if self.sessions.borrow_mut().remove(&id).is_some() {
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
        let sessions = self.sessions.borrow();
        let now = Instant::now();
        let mut stop = false;
        let mut marks: BTreeMap<u64, ()> = BTreeMap::new();
        for msg in batch {
            match msg {
                CoreMsg::Record(enc) => {
                    {
                        let mut p = self.positions.borrow_mut();
                        let e = p.entry(enc.src).or_insert(0);
                        *e = (*e).max(enc.seq);
                    }
                    let frames = match &enc.level {
                        Some(level) => {
                            let mut depths: Vec<u32> = Vec::new();
                            for s in sessions.values() {
                                let st = s.state.borrow();
                                if st.wants_json_book(enc) && !depths.contains(&st.book_depth) {
                                    depths.push(st.book_depth);
                                }
                            }
                            self.books.borrow_mut().apply(enc, level, &depths)
                        }
                        None => Vec::new(),
                    };
                    for (id, s) in sessions.iter() {
                        let mut st = s.state.borrow_mut();
                        let frame = frames.iter().find(|(d, _)| *d == st.book_depth).and_then(|(_, f)| f.as_ref());
                        if st.offer(enc, frame, self.cfg.slow_bytes, now) && marks.insert(*id, ()).is_none() {
                            dirty.push(s.clone());
                        }
                    }
                    let lat = tickmesh_codec::now_ns().saturating_sub(enc.ts_ingest);
                    metrics::histogram!("tickmesh_gateway_ingest_to_dispatch_seconds").record(lat as f64 / 1e9);
                }
                CoreMsg::Shutdown => stop = true,
            }
        }
        stop
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
    let core = Rc::new(Core {
        index,
        cfg: cfg.clone(),
        positions: RefCell::new(shared.positions()),
        books: RefCell::new(crate::books::CoreBooks::default()),
        shared,
        sessions: RefCell::new(BTreeMap::new()),
        next_id: std::cell::Cell::new(0),
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
        }
    });
    let mut batch = Vec::with_capacity(1024);
    let mut dirty = Vec::with_capacity(1024);
    loop {
        batch.clear();
        if rx.recv_many(&mut batch, 1024).await == 0 {
            break;
        }
        let stop = core.dispatch(&batch, &mut dirty);
        for s in dirty.drain(..) {
            s.wake.notify_one();
        }
        if stop {
            break;
        }
    }
    accept.abort();
    heartbeats.abort();
    core.close_all(1001, "server shutting down");
    // Give sessions a moment to write their close frames.
    tokio::time::sleep(Duration::from_millis(100)).await;
    CURRENT.with(|c| *c.borrow_mut() = None);
}
