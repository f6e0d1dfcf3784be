//! Gateway configuration: every field documented with its default.

use std::net::SocketAddr;

/// What to do with a client that cannot keep up (PROTOCOL.md `slow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SlowPolicy {
    /// Merge pending quotes per symbol into the newest; trades are dropped with a `gap`.
    #[default]
    Conflate,
    /// Drop what does not fit and send `gap`.
    Drop,
    /// Close with 4008.
    Disconnect,
}

impl SlowPolicy {
    /// Parses the protocol spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "conflate" => Some(Self::Conflate),
            "drop" => Some(Self::Drop),
            "disconnect" => Some(Self::Disconnect),
            _ => None,
        }
    }
}

/// The `[gateway]` section of a node's configuration.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address for WebSocket and HTTP. Default `127.0.0.1:8080`. Port 0 picks a free port
    /// (every core then binds the same one with `SO_REUSEPORT`).
    pub listen: SocketAddr,
    /// Cores to pin one worker each to, as positions in the CPUs this process may run on
    /// (`sched_getaffinity`, ascending): `0` is the first allowed CPU, whatever its id, so
    /// the same list works inside any cpuset the static CPU manager hands out (see
    /// [`crate::pinning`] and docs/gateway.md "Pinned cores"). Default: every allowed CPU
    /// but the first (which is left to ingest, the hub and the mesh); with one usable CPU,
    /// that one. Empty list means the default.
    pub cores: Vec<usize>,
    /// Interval of `heartbeat` messages. Default 1000 ms (PROTOCOL.md).
    pub heartbeat_ms: u64,
    /// Largest client message; a bigger one closes the connection with 1009. Default 65,536.
    pub max_message_bytes: usize,
    /// Most (channel, symbol-or-pattern) pairs one connection may hold. Default 10,000.
    pub max_subscriptions: usize,
    /// Unsent output above which a client is slow. Default 4 MiB (PROTOCOL.md).
    pub slow_bytes: usize,
    /// A client whose socket has not accepted a write for this long is slow, whatever its
    /// queue holds. Default 5,000 ms (PROTOCOL.md).
    pub slow_ms: u64,
    /// Kernel send buffer per client socket (`SO_SNDBUF`), bytes; 0 leaves the OS default
    /// (which autotunes up to several MiB). Default 262,144: the kernel's share of a slow
    /// client's memory stays bounded, and slowness is noticed while it still matters.
    pub socket_send_buffer: usize,
    /// Client requests per second allowed (burst of the same size); above it the
    /// connection is closed with 4029. Default 50.
    pub max_requests_per_sec: u32,
    /// How sessions write to their sockets: `epoll` (tokio, one `writev` per socket per
    /// wake-up), `io_uring` (one submission per core per dispatch round; needs the
    /// `io-uring` cargo feature and a kernel that allows io_uring, else start-up fails), or
    /// `auto`: io_uring where the build has it and the kernel allows it, epoll otherwise.
    /// Default `auto`: io_uring was the faster in docs/gateway.md.
    pub io_backend: String,
    /// A connection must send its whole HTTP request head (the WebSocket upgrade included)
    /// within this many milliseconds of connecting, or it is closed: a slow-loris client
    /// cannot hold a socket open by trickling bytes. Default 10,000.
    pub handshake_timeout_ms: u64,
    /// On a graceful stop (SIGTERM, `Node::shutdown`) clients are sent `reconnect` with
    /// reason `shutdown` and the next region, and the process waits up to this long for
    /// them to leave before closing the rest with 1012. Default 1,500 ms: enough for a
    /// client to open its next connection, and well inside a Kubernetes
    /// `terminationGracePeriodSeconds` of 30 s (keep it under that period minus a few
    /// seconds for the journal sync). 0 closes at once (still with `reconnect` first).
    pub shutdown_grace_ms: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            cores: Vec::new(),
            heartbeat_ms: 1000,
            max_message_bytes: 64 * 1024,
            max_subscriptions: 10_000,
            slow_bytes: 4 << 20,
            slow_ms: 5_000,
            socket_send_buffer: 256 * 1024,
            max_requests_per_sec: 50,
            io_backend: "auto".into(),
            handshake_timeout_ms: 10_000,
            shutdown_grace_ms: 1_500,
        }
    }
}

impl GatewayConfig {
    /// Collects every problem, each prefixed with its TOML path.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if !self.cores.is_empty() {
            if let Err(e) = crate::pinning::map_cores(&self.cores, &crate::pinning::allowed_cpus()) {
                problems.push(e);
            }
        }
        if self.shutdown_grace_ms > 25_000 {
            problems.push(format!(
                "gateway.shutdown_grace_ms = {} is too long; use 0 to 25000 (default 1500) so a stop fits a 30 s termination grace period",
                self.shutdown_grace_ms
            ));
        }
        if !(50..=60_000).contains(&self.heartbeat_ms) {
            problems.push(format!(
                "gateway.heartbeat_ms = {} is out of range; use 50 to 60000 (default 1000)",
                self.heartbeat_ms
            ));
        }
        if self.max_message_bytes < 1024 {
            problems.push(format!(
                "gateway.max_message_bytes = {} is too small; use at least 1024 (default 65536)",
                self.max_message_bytes
            ));
        }
        if self.slow_bytes < 64 * 1024 {
            problems.push(format!(
                "gateway.slow_bytes = {} is too small; use at least 65536 (default 4194304)",
                self.slow_bytes
            ));
        }
        if !(100..=600_000).contains(&self.slow_ms) {
            problems
                .push(format!("gateway.slow_ms = {} is out of range; use 100 to 600000 (default 5000)", self.slow_ms));
        }
        if self.socket_send_buffer != 0 && self.socket_send_buffer < 4096 {
            problems.push(format!(
                "gateway.socket_send_buffer = {} is too small; use 0 (OS default) or at least 4096 (default 262144)",
                self.socket_send_buffer
            ));
        }
        match self.io_backend.as_str() {
            "epoll" | "auto" => {}
            "io_uring" if cfg!(feature = "io-uring") => {}
            "io_uring" => problems.push(
                "gateway.io_backend = \"io_uring\" but this build has no io_uring support; rebuild with `--features io-uring` or use \"epoll\"".into(),
            ),
            other => problems.push(format!("gateway.io_backend = {other:?} is not known; use \"auto\", \"epoll\" or \"io_uring\"")),
        }
        if self.handshake_timeout_ms == 0 {
            problems.push("gateway.handshake_timeout_ms is 0; use at least 1 (default 10000)".into());
        }
        if self.max_requests_per_sec == 0 {
            problems.push("gateway.max_requests_per_sec is 0; use at least 1 (default 50)".into());
        }
    }

    /// The backend `io_backend` selects on this build and kernel: `auto` resolved.
    pub fn resolved_io_backend(&self) -> &str {
        match self.io_backend.as_str() {
            "auto" if cfg!(feature = "io-uring") && crate::io_uring_allowed() => "io_uring",
            "auto" => "epoll",
            other => other,
        }
    }

    /// The workers' core indexes: positions in the allowed CPU set, `allowed` CPUs of which
    /// exist (map them with [`crate::pinning::map_cores`]). A CPU quota below the set's size
    /// (`available_parallelism`) caps the default.
    pub fn worker_core_indexes(&self, allowed: usize) -> Vec<usize> {
        if !self.cores.is_empty() {
            return self.cores.clone();
        }
        let quota = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        crate::pinning::default_indexes(allowed.min(quota))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(io_backend: &str) -> Vec<String> {
        let mut p = Vec::new();
        GatewayConfig { io_backend: io_backend.into(), ..Default::default() }.validate(&mut p);
        p
    }

    #[test]
    fn io_backend_is_checked_against_the_build() {
        assert!(problems("epoll").is_empty());
        assert!(problems("auto").is_empty());
        let p = problems("io_uring");
        if cfg!(feature = "io-uring") {
            assert!(p.is_empty(), "{p:?}");
        } else {
            assert!(p.len() == 1 && p[0].contains("--features io-uring"), "{p:?}");
        }
        let p = problems("uring");
        assert!(p.len() == 1 && p[0].contains("\"auto\", \"epoll\" or \"io_uring\""), "{p:?}");
        // auto never names a backend this build lacks.
        let auto = GatewayConfig::default();
        let resolved = auto.resolved_io_backend();
        assert!(resolved == "epoll" || (cfg!(feature = "io-uring") && resolved == "io_uring"), "{resolved}");
        assert_eq!(GatewayConfig { io_backend: "epoll".into(), ..Default::default() }.resolved_io_backend(), "epoll");
    }

    #[test]
    fn shutdown_grace_must_fit_a_termination_grace_period() {
        let check = |ms| {
            let mut p = Vec::new();
            GatewayConfig { shutdown_grace_ms: ms, ..Default::default() }.validate(&mut p);
            p
        };
        assert_eq!(GatewayConfig::default().shutdown_grace_ms, 1_500);
        assert!(check(0).is_empty() && check(25_000).is_empty());
        let p = check(60_000);
        assert!(p.len() == 1 && p[0].contains("gateway.shutdown_grace_ms") && p[0].contains("0 to 25000"), "{p:?}");
    }
}
