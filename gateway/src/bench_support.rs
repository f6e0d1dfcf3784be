//! The dispatcher's per-record loop without sockets, for `benches/` (criterion).
//!
//! Not part of the API (`#[doc(hidden)]`): it exists so the fan-out loop, one record
//! offered to every session's queue, is measured with the real session code rather than a
//! copy of it that could drift.

use std::sync::Arc;
use std::time::Instant;

use crate::auth::{Claims, Grant};
use crate::config::GatewayConfig;
use crate::fanout::Encoded;
use crate::session::{ConnectParams, Encoding, SessionHandle};

/// `n` sessions subscribed to trades and quotes of every symbol, as one core holds them.
#[derive(Debug)]
pub struct FanoutLoop {
    sessions: Vec<SessionHandle>,
    batch: Vec<bytes::Bytes>,
    slow_bytes: usize,
}

impl FanoutLoop {
    /// `n` sessions, JSON or binary encoding.
    pub fn new(n: usize, json: bool) -> FanoutLoop {
        let cfg = GatewayConfig::default();
        let sessions = (0..n as u64)
            .map(|id| {
                let claims = Claims {
                    sub: format!("bench-{id}"),
                    exp: u64::MAX,
                    home: None,
                    channels: Grant::All,
                    symbols: Grant::All,
                    roles: vec![],
                };
                let encoding = if json { Encoding::Json } else { Encoding::Binary };
                let h = SessionHandle::new(id, ConnectParams { encoding, batch: false, claims }, &cfg, Instant::now());
                h.state.borrow_mut().subs.add(&["trades", "quotes"], &["*".into()]);
                h
            })
            .collect();
        FanoutLoop { sessions, batch: Vec::with_capacity(256), slow_bytes: cfg.slow_bytes }
    }

    /// Offers `enc` to every session (the dispatcher's inner loop); returns how many queued it.
    pub fn offer(&mut self, enc: &Arc<Encoded>, now: Instant) -> usize {
        let mut queued = 0;
        for s in &self.sessions {
            if s.state.borrow_mut().offer(enc, None, self.slow_bytes, now) {
                queued += 1;
            }
        }
        queued
    }

    /// Empties every queue the way the writer takes it (frames ready for a vectored write).
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        for s in &self.sessions {
            self.batch.clear();
            s.state.borrow_mut().take_batch(&mut self.batch, usize::MAX);
            n += self.batch.len();
        }
        n
    }
}
