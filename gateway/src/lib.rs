//! tickmesh-gateway: pinned-core WebSocket gateways that stream records to clients.
//!
//! # Layout
//! * [`fanout`]: [`Fanout`], encode each record once into shared frames and hand them to
//!   every core.
//! * [`hops`]: latency histograms per hop of the data path, for sampled records.
//! * `core`: one `gw-core-N` thread per core, pinned, with its own current-thread runtime,
//!   `SO_REUSEPORT` listener and sessions; the per-core dispatcher.
//! * [`pinning`]: `gateway.cores` are positions in the process's allowed CPU set.
//! * `session`: one connection: protocol state, outbound queue, vectored writes.
//! * `subindex`: per-core subscriber index, so a record touches only its subscribers.
//! * `uring` (feature `io-uring`): socket writes through one io_uring per core.
//! * [`protocol`]: requests and replies of PROTOCOL.md, no I/O.
//! * [`ws`]: WebSocket frames (RFC 6455), sans-I/O.
//! * [`auth`]: JWT verification (HS256, EdDSA) and entitlements.
//! * [`drain`]: [`drain::DrainPlan`], refuse new connections, `reconnect`, then 1012.
//! * `http`: `/v1/ws`, `/healthz`, `/metrics`, `/` on the same port.
//! * [`config`]: [`GatewayConfig`] and its `validate()`.
//!
//! # Threads
//! The node's hub thread calls [`Fanout::publish`]; each `gw-core-N` thread owns its
//! sessions outright, so nothing on the per-record path takes a lock.

pub mod auth;
#[doc(hidden)]
pub mod bench_support;
mod books;
pub mod config;
mod core;
pub mod drain;
pub mod error;
pub mod fanout;
pub mod hops;
mod http;
pub mod pinning;
pub mod protocol;
mod session;
pub mod shared;
mod subindex;
pub mod trace;
#[cfg(feature = "io-uring")]
mod uring;
pub mod ws;

pub use config::{GatewayConfig, SlowPolicy};
pub use error::{ClientError, Error, Result};
pub use fanout::{Encoded, Fanout};
pub use http::http_error;
pub use shared::{GatewayShared, RegionLink};

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use crate::fanout::CoreMsg;

/// True if this build has the io_uring backend and the kernel grants a ring.
pub(crate) fn io_uring_allowed() -> bool {
    #[cfg(feature = "io-uring")]
    return uring::probe().is_ok();
    #[cfg(not(feature = "io-uring"))]
    false
}

/// A running gateway: its worker threads and their channels.
#[derive(Debug)]
pub struct Gateway {
    local_addr: SocketAddr,
    cores: Vec<UnboundedSender<CoreMsg>>,
    threads: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Binds the listeners and starts one pinned worker per configured core. `extra` adds
    /// the node's own routes (readiness, regions, routing, admin) on the same port.
    pub fn start(cfg: GatewayConfig, shared: Arc<GatewayShared>, extra: axum::Router) -> Result<(Gateway, Fanout)> {
        let mut problems = Vec::new();
        cfg.validate(&mut problems);
        if !problems.is_empty() {
            return Err(Error::Config(problems.join("; ")));
        }
        let mut cfg = cfg;
        cfg.io_backend = cfg.resolved_io_backend().to_owned();
        #[cfg(feature = "io-uring")]
        if cfg.io_backend == "io_uring" {
            uring::probe().map_err(|e| {
                Error::Config(format!(
                    "gateway.io_backend = \"io_uring\" but the kernel refused io_uring ({e}); allow it (sysctl kernel.io_uring_disabled=0) or use \"epoll\""
                ))
            })?;
        }
        // Read before any worker pins itself: the set the process was started with.
        let allowed = pinning::allowed_cpus();
        let indexes = cfg.worker_core_indexes(allowed.len());
        let cores = pinning::map_cores(&indexes, &allowed).map_err(Error::Config)?;
        let mapping: Vec<String> = indexes.iter().zip(&cores).map(|(i, c)| format!("{i}->cpu{c}")).collect();
        tracing::info!(
            allowed = %pinning::cpu_list(&allowed),
            cores = %mapping.join(","),
            "gateway workers: core index -> CPU of the allowed set"
        );
        let listeners = core::bind_listeners(cfg.listen, cores.len())
            .map_err(|source| Error::Listen { addr: cfg.listen, source })?;
        let local_addr = listeners[0].local_addr().map_err(|source| Error::Listen { addr: cfg.listen, source })?;
        let router = http::router(shared.clone(), extra);
        let mut txs = Vec::new();
        let mut threads = Vec::new();
        for (n, (core_no, listener)) in cores.iter().copied().zip(listeners).enumerate() {
            let (tx, rx) = unbounded_channel();
            txs.push(tx);
            let cfg = cfg.clone();
            let shared = shared.clone();
            let router = router.clone();
            let pin = core_affinity::CoreId { id: core_no };
            let t = std::thread::Builder::new()
                .name(format!("gw-core-{n}"))
                .spawn(move || {
                    // Every log line of this thread carries its region (structured field).
                    let _root = tracing::info_span!("gw-core", region = shared.region(), core = n).entered();
                    if !core_affinity::set_for_current(pin) {
                        tracing::warn!(cpu = core_no, "gw-core-{n} not pinned; check the cpuset or gateway.cores");
                    }
                    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(rt) => rt,
                        Err(e) => {
                            tracing::error!(error = %e, "gw-core-{n} cannot build its runtime");
                            return;
                        }
                    };
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&rt, core::run_core(n, cfg, shared, listener, rx, router));
                })
                .map_err(Error::Thread)?;
            threads.push(t);
        }
        let fanout = Fanout::new(txs.clone(), shared);
        Ok((Gateway { local_addr, cores: txs, threads }, fanout))
    }

    /// The address clients connect to (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Closes every session and joins the worker threads. Sessions get 1012 if a drain (a
    /// graceful stop's `shutdown` drain included) is in force, else 1001.
    pub fn shutdown(self) {
        for c in &self.cores {
            let _ = c.send(CoreMsg::Shutdown);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}
