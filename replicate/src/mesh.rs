//! The mesh driver: one quinn endpoint per node, a dialer per peer that pulls the peer's
//! home sources, and an acceptor that serves this region's home sources.
//!
//! Pull, not push: a region asks each peer for its sources *after the positions it
//! already holds*, and the peer serves them from its store. Catch-up after a restart and
//! the live stream are the same code path, and duplicates cannot arise from a reconnect
//! (the receiver's store also refuses any `seq` at or below what it holds).
//!
//! Runs on its own thread, `replicate-io`, with a current-thread runtime.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tickmesh_codec::{frame, SourceId};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::store::RecordStore;
use crate::tls::Credentials;

/// One peer region.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Region name (must match the name in its certificate).
    pub region: String,
    /// Its mesh endpoint, `host:port` (a DNS name is resolved at every dial, so a peer
    /// that moves keeps being found).
    pub addr: String,
}

/// The `[mesh]` section of a node's configuration.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// UDP address of this region's endpoint. Default `127.0.0.1:4433`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Peer regions. Default none (a single-region node).
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Certificate files.
    pub tls: crate::tls::TlsFiles,
    /// First delay before redialing a lost peer; doubles up to 2 s. Default 100 ms.
    #[serde(default = "default_reconnect")]
    pub reconnect_ms: u64,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4433))
}
fn default_reconnect() -> u64 {
    100
}

impl MeshConfig {
    /// Collects every problem, prefixed with its TOML path.
    pub fn validate(&self, region: &str, problems: &mut Vec<String>) {
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            if p.region == region {
                problems.push(format!(
                    "mesh.peers[{i}].region is this node's own region {region}; list only other regions"
                ));
            }
            if !p.addr.rsplit_once(':').is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok()) {
                problems.push(format!(
                    "mesh.peers[{i}].addr {:?} is not host:port; write it like \"eu-west-1.mesh.example.com:4433\"",
                    p.addr
                ));
            }
            if !seen.insert(&p.region) {
                problems.push(format!("mesh.peers[{i}].region {} is listed twice; list each peer once", p.region));
            }
        }
        if !(10..=60_000).contains(&self.reconnect_ms) {
            problems.push(format!(
                "mesh.reconnect_ms = {} is out of range; use 10 to 60000 (default 100)",
                self.reconnect_ms
            ));
        }
    }
}

/// What one peer link looks like right now.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct PeerState {
    /// Peer region.
    pub region: String,
    /// We are receiving its sources.
    pub receiving: bool,
    /// It is receiving ours.
    pub sending: bool,
    /// Smoothed round-trip time, ms (0 until known).
    pub rtt_ms: f64,
    /// Records received from it since start.
    pub records_in: u64,
    /// Records sent to it since start.
    pub records_out: u64,
}

#[derive(Debug, Default)]
struct PeerCounters {
    receiving: AtomicBool,
    sending: AtomicU64,
    rtt_us: AtomicU64,
    records_in: AtomicU64,
    records_out: AtomicU64,
}

/// Shared status of the mesh, read by `/readyz`, `/v1/regions` and metrics.
#[derive(Debug, Default)]
pub struct MeshStatus {
    peers: Mutex<BTreeMap<String, Arc<PeerCounters>>>,
}

impl MeshStatus {
    fn peer(&self, region: &str) -> Arc<PeerCounters> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).entry(region.to_owned()).or_default().clone()
    }

    /// Every known peer.
    pub fn peers(&self) -> Vec<PeerState> {
        let m = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        m.iter()
            .map(|(r, c)| PeerState {
                region: r.clone(),
                receiving: c.receiving.load(Ordering::Relaxed),
                sending: c.sending.load(Ordering::Relaxed) > 0,
                rtt_ms: c.rtt_us.load(Ordering::Relaxed) as f64 / 1000.0,
                records_in: c.records_in.load(Ordering::Relaxed),
                records_out: c.records_out.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// Receives validated records from peers: a batch of length-prefixed frames.
pub type Inbound = Arc<dyn Fn(Bytes) + Send + Sync>;

/// A running mesh.
#[derive(Debug)]
pub struct Mesh {
    status: Arc<MeshStatus>,
    local_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Everything the mesh needs to start.
pub struct MeshParams {
    /// This region.
    pub region: String,
    /// Configuration.
    pub cfg: MeshConfig,
    /// Credentials.
    pub creds: Credentials,
    /// The region's store.
    pub store: Arc<dyn RecordStore>,
    /// The sources this region is home to (served to peers).
    pub home: Vec<SourceId>,
    /// Bumped by the node after every append, so senders wake.
    pub appended: watch::Receiver<u64>,
    /// Where received records go.
    pub inbound: Inbound,
}

impl std::fmt::Debug for MeshParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshParams").field("region", &self.region).field("home", &self.home).finish_non_exhaustive()
    }
}

/// Largest batch of records per stream write.
const BATCH_BYTES: usize = 64 * 1024;

impl Mesh {
    /// Binds the endpoint and starts the `replicate-io` thread.
    pub fn start(p: MeshParams) -> Result<Mesh> {
        let server = p.creds.server_config()?;
        let client = p.creds.client_config()?;
        let listen = p.cfg.listen;
        let sock = std::net::UdpSocket::bind(listen).map_err(|source| Error::Bind { addr: listen, source })?;
        let local_addr = sock.local_addr()?;
        let status = Arc::new(MeshStatus::default());
        for peer in &p.cfg.peers {
            status.peer(&peer.region);
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let st = status.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("replicate-io".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::Io(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    let endpoint = match quinn::Endpoint::new(
                        quinn::EndpointConfig::default(),
                        Some(server),
                        sock,
                        Arc::new(quinn::TokioRuntime),
                    ) {
                        Ok(mut e) => {
                            e.set_default_client_config(client);
                            e
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(Error::Io(e)));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    run(endpoint, p, st, stop_rx).await;
                });
            })
            .map_err(Error::Io)?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Error::Tls("replicate-io thread ended during start-up".into())),
        }
        Ok(Mesh { status, local_addr, stop: Some(stop_tx), thread: Some(thread) })
    }

    /// Link status.
    pub fn status(&self) -> Arc<MeshStatus> {
        self.status.clone()
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Closes every connection and joins the thread.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.stop_now();
    }
}

async fn run(
    endpoint: quinn::Endpoint,
    p: MeshParams,
    status: Arc<MeshStatus>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let p = Arc::new(p);
    for peer in p.cfg.peers.clone() {
        tokio::spawn(dial_loop(endpoint.clone(), p.clone(), status.clone(), peer));
    }
    let acceptor = {
        let endpoint = endpoint.clone();
        let p = p.clone();
        let status = status.clone();
        async move {
            while let Some(incoming) = endpoint.accept().await {
                let p = p.clone();
                let status = status.clone();
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(conn) => serve_connection(conn, p, status).await,
                        Err(e) => tracing::warn!(error = %e, "mesh handshake refused"),
                    }
                });
            }
        }
    };
    tokio::select! {
        () = acceptor => {}
        _ = stop => {}
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
    let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
}

/// The request a dialer sends on a new stream: who it is and what it already holds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PullRequest {
    region: String,
    positions: BTreeMap<String, u64>,
}

async fn dial_loop(endpoint: quinn::Endpoint, p: Arc<MeshParams>, status: Arc<MeshStatus>, peer: PeerConfig) {
    let counters = status.peer(&peer.region);
    let mut backoff = Duration::from_millis(p.cfg.reconnect_ms);
    loop {
        match pull_once(&endpoint, &p, &peer, &counters).await {
            Ok(()) => tracing::info!(peer = %peer.region, "mesh link closed; redialing"),
            Err(e) => tracing::debug!(peer = %peer.region, error = %e, "mesh link to peer failed; redialing"),
        }
        counters.receiving.store(false, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
        if counters.records_in.load(Ordering::Relaxed) > 0 {
            backoff = backoff.min(Duration::from_millis(500));
        }
    }
}

async fn pull_once(
    endpoint: &quinn::Endpoint,
    p: &MeshParams,
    peer: &PeerConfig,
    counters: &PeerCounters,
) -> Result<()> {
    let perr = |what: String| Error::Protocol { peer: peer.region.clone(), what };
    let addr = tokio::net::lookup_host(peer.addr.as_str())
        .await
        .map_err(|e| {
            perr(format!("mesh.peers addr {:?} did not resolve ({e}); check the name or use an IP address", peer.addr))
        })?
        .next()
        .ok_or_else(|| perr(format!("mesh.peers addr {:?} resolved to no address", peer.addr)))?;
    let conn = endpoint
        .connect(addr, &peer.region)
        .map_err(|e| perr(format!("connect: {e}")))?
        .await
        .map_err(|e| perr(format!("handshake: {e}")))?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| perr(format!("open stream: {e}")))?;
    let req = PullRequest {
        region: p.region.clone(),
        positions: p.store.positions().into_iter().map(|(s, q)| (s.as_str().to_owned(), q)).collect(),
    };
    let body = serde_json::to_vec(&req).map_err(|e| perr(e.to_string()))?;
    let mut msg = (body.len() as u32).to_le_bytes().to_vec();
    msg.extend_from_slice(&body);
    send.write_all(&msg).await.map_err(|e| perr(format!("send request: {e}")))?;
    counters.receiving.store(true, Ordering::Relaxed);
    tracing::info!(peer = %peer.region, "receiving from peer");
    let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
    let mut chunk = vec![0u8; 128 * 1024];
    loop {
        counters.rtt_us.store(conn.rtt().as_micros() as u64, Ordering::Relaxed);
        let n = match recv.read(&mut chunk).await.map_err(|e| perr(format!("read: {e}")))? {
            Some(n) => n,
            None => return Ok(()),
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut rest: &[u8] = &buf;
        let mut count = 0u64;
        loop {
            match frame::split_frame(rest) {
                Ok(Some((rec, tail))) => {
                    // Every record from a peer is validated before anything else sees it.
                    if let Err(e) = tickmesh_codec::access_untrusted(rec) {
                        metrics::counter!("tickmesh_replicate_frames_rejected_total", "peer" => peer.region.clone())
                            .increment(1);
                        return Err(perr(format!("sent an invalid record: {e}")));
                    }
                    count += 1;
                    rest = tail;
                }
                Ok(None) => break,
                Err(e) => return Err(perr(format!("corrupt stream: {e}"))),
            }
        }
        let used = buf.len() - rest.len();
        if used > 0 {
            let batch = Bytes::copy_from_slice(&buf[..used]);
            buf.drain(..used);
            counters.records_in.fetch_add(count, Ordering::Relaxed);
            metrics::counter!("tickmesh_replicate_records_received_total", "peer" => peer.region.clone())
                .increment(count);
            (p.inbound)(batch);
        }
    }
}

/// The region a peer's certificate names (its first DNS subject alternative name). The
/// TLS layer already checked that the certificate chains to our CA.
fn certificate_region(conn: &quinn::Connection) -> Option<String> {
    let certs = conn.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
        _ => None,
    })
}

async fn serve_connection(conn: quinn::Connection, p: Arc<MeshParams>, status: Arc<MeshStatus>) {
    // Only a certificate from our CA that names a configured peer region is accepted.
    let named = certificate_region(&conn);
    let Some(cert_region) = named.filter(|r| p.cfg.peers.iter().any(|peer| &peer.region == r)) else {
        tracing::warn!(
            remote = %conn.remote_address(),
            "mesh peer refused: its certificate names no configured region; issue it with `tickmesh certs issue REGION` and list the region in mesh.peers"
        );
        metrics::counter!("tickmesh_replicate_peers_refused_total", "reason" => "certificate").increment(1);
        conn.close(quinn::VarInt::from_u32(1), b"certificate names no configured region");
        return;
    };
    loop {
        let (send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let p = p.clone();
        let status = status.clone();
        let conn = conn.clone();
        let cert_region = cert_region.clone();
        tokio::spawn(async move {
            let mut len = [0u8; 4];
            if recv.read_exact(&mut len).await.is_err() {
                return;
            }
            let n = u32::from_le_bytes(len) as usize;
            if n > 1 << 20 {
                tracing::warn!(remote = %conn.remote_address(), "mesh request of {n} bytes refused");
                return;
            }
            let mut body = vec![0u8; n];
            if recv.read_exact(&mut body).await.is_err() {
                return;
            }
            let req: PullRequest = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(remote = %conn.remote_address(), error = %e, "mesh request is not valid; closing");
                    return;
                }
            };
            if req.region != cert_region {
                tracing::warn!(peer = %cert_region, claimed = %req.region, "mesh peer refused: it claims another region than its certificate names");
                metrics::counter!("tickmesh_replicate_peers_refused_total", "reason" => "region").increment(1);
                conn.close(quinn::VarInt::from_u32(2), b"region does not match certificate");
                return;
            }
            let counters = status.peer(&req.region);
            counters.sending.fetch_add(1, Ordering::Relaxed);
            tracing::info!(peer = %req.region, "serving home sources to peer");
            let r = serve_pull(send, &p, &req, &counters, &conn).await;
            counters.sending.fetch_sub(1, Ordering::Relaxed);
            if let Err(e) = r {
                tracing::debug!(peer = %req.region, error = %e, "stopped serving peer");
            }
        });
    }
}

async fn serve_pull(
    mut send: quinn::SendStream,
    p: &MeshParams,
    req: &PullRequest,
    counters: &PeerCounters,
    conn: &quinn::Connection,
) -> Result<()> {
    let mut cursors = Vec::new();
    for src in &p.home {
        let after = req.positions.get(src.as_str()).copied().unwrap_or(0);
        cursors.push(p.store.cursor(src, after)?);
    }
    let mut appended = p.appended.clone();
    let mut buf = Vec::with_capacity(BATCH_BYTES + 4096);
    loop {
        // Mark the current version seen before reading, so an append between the read and
        // the wait still wakes us.
        appended.borrow_and_update();
        let mut n = 0;
        for c in cursors.iter_mut() {
            n += c.fill(&mut buf, BATCH_BYTES)?;
        }
        if n > 0 {
            send.write_all(&buf)
                .await
                .map_err(|e| Error::Protocol { peer: req.region.clone(), what: format!("write: {e}") })?;
            counters.records_out.fetch_add(n as u64, Ordering::Relaxed);
            counters.rtt_us.store(conn.rtt().as_micros() as u64, Ordering::Relaxed);
            buf.clear();
            continue;
        }
        tokio::select! {
            r = appended.changed() => if r.is_err() { return Ok(()) },
            _ = conn.closed() => return Ok(()),
        }
    }
}
