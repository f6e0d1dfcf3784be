//! WAN emulation in user space: UDP relays that hold each datagram for the one-way delay of
//! the link (with jitter), drop a share of them, or drop everything while the link is cut.
//!
//! Kernel `netem` is not available on the machines this runs on, so `tickmesh demo --wan
//! real` puts one relay in front of every (dialer, peer) pair: the dialer sends to the
//! relay, the relay forwards to the peer from an upstream socket of its own, and answers
//! come back the same way, each direction delayed. QUIC (and the mesh's certificate
//! checks) do not care about the relay's addresses.
//!
//! [`LinkModel`] decides delay and loss without I/O (time and randomness passed in);
//! [`Relay`] is the thin tokio driver around it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// One direction of a link: delay, jitter and loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkModel {
    /// One-way delay (half the round-trip time).
    pub one_way: Duration,
    /// Uniform jitter added to the delay, 0 to this much.
    pub jitter: Duration,
    /// Share of datagrams dropped, 0.0 to 1.0.
    pub loss: f64,
}

impl LinkModel {
    /// The link of a measured round-trip time, without jitter or loss.
    pub fn from_rtt_ms(rtt_ms: u32) -> Self {
        LinkModel { one_way: Duration::from_micros(u64::from(rtt_ms) * 500), jitter: Duration::ZERO, loss: 0.0 }
    }

    /// When a datagram that arrived at `now` leaves, or None if it is lost. `r1` and `r2`
    /// are uniform random numbers in [0, 1) (the caller owns the generator, so runs replay).
    /// Delivery never overtakes an earlier datagram of the same direction (`last`), as on a
    /// real path without reordering.
    pub fn schedule(&self, now: Instant, last: Option<Instant>, r1: f64, r2: f64) -> Option<Instant> {
        if r1 < self.loss {
            return None;
        }
        let at = now + self.one_way + self.jitter.mul_f64(r2);
        Some(match last {
            Some(l) if l > at => l,
            _ => at,
        })
    }
}

/// A running relay for one (dialer, peer) pair.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Loss set at run time, parts per million (added to the model's by taking the larger).
    loss_ppm: Arc<AtomicU32>,
}

impl Relay {
    /// Starts a relay on 127.0.0.1 that forwards to `target` with `model` each way. Runs on
    /// the current tokio runtime.
    pub async fn start(target: SocketAddr, model: LinkModel, seed: u64) -> std::io::Result<Relay> {
        let bind = || -> std::io::Result<(Arc<UdpSocket>, std::net::UdpSocket)> {
            let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
            s.set_nonblocking(true)?;
            let sender = s.try_clone()?;
            Ok((Arc::new(UdpSocket::from_std(s)?), sender))
        };
        let (front, front_tx) = bind()?;
        let (back, back_tx) = bind()?;
        let addr = front.local_addr()?;
        // Datagrams wait in the relay's queue, not in the kernel: a relay thread that is not
        // scheduled for a while must not drop what the emulated link would have carried.
        crate::mesh::socket_buffers(&*front, addr);
        crate::mesh::socket_buffers(&*back, addr);
        let cut = Arc::new(AtomicBool::new(false));
        let loss_ppm = Arc::new(AtomicU32::new(0));
        // The dialer's address, learned from its first datagram (one dialer per relay).
        let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
        {
            let (front, cut, client) = (front.clone(), cut.clone(), client.clone());
            let loss = loss_ppm.clone();
            let out = deliver(back_tx, cut.clone())?;
            tokio::spawn(async move {
                pump(front, out, model, (cut, loss), seed, move |from| {
                    *client.lock().unwrap_or_else(|e| e.into_inner()) = Some(from);
                    Some(target)
                })
                .await
            });
        }
        {
            let (back, cut) = (back.clone(), cut.clone());
            let loss = loss_ppm.clone();
            let out = deliver(front_tx, cut.clone())?;
            tokio::spawn(async move {
                pump(back, out, model, (cut, loss), seed ^ 0x9E37_79B9, move |_| {
                    *client.lock().unwrap_or_else(|e| e.into_inner())
                })
                .await
            });
        }
        Ok(Relay { addr, cut, loss_ppm })
    }

    /// Where the dialer should send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts (true) or heals (false) the link, both directions.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }

    /// Drops this share (0.0 to 1.0) of the datagrams both ways from now on, on top of the
    /// model's loss (the larger applies); 0.0 goes back to the model's.
    pub fn set_loss(&self, share: f64) {
        let ppm = (share.clamp(0.0, 1.0) * 1e6).round() as u32;
        self.loss_ppm.store(ppm, Ordering::Relaxed);
    }
}

/// Receives on `rx`, holds each datagram per `model`, sends it on `tx` to `dest(from)`.
/// A datagram held by the relay: when to forward it, to whom.
type Held = (std::time::Instant, SocketAddr, Vec<u8>);

/// Starts the thread that forwards one direction's datagrams at their due time.
///
/// A thread of its own, sleeping with `std::thread::sleep` (high-resolution timers, tens of
/// µs late), because tokio's timer has 1 ms resolution and rounds deadlines up: it added
/// 0.5-1 ms to every datagram of the emulated link, which the mesh benchmark then counted
/// as latency added by the mesh.
fn deliver(sock: std::net::UdpSocket, cut: Arc<AtomicBool>) -> std::io::Result<std::sync::mpsc::Sender<Held>> {
    let (tx, rx) = std::sync::mpsc::channel::<Held>();
    std::thread::Builder::new().name("wan-relay-tx".into()).spawn(move || {
        // Ends when the receiving task (the sender of `rx`) is dropped with its runtime.
        while let Ok((at, to, d)) = rx.recv() {
            let now = std::time::Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if cut.load(Ordering::Relaxed) {
                continue;
            }
            // The socket is shared with tokio (non-blocking): a full send buffer is waited
            // out briefly rather than dropping what the link carried.
            for _ in 0..1000 {
                match sock.send_to(&d, to) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                    _ => break,
                }
            }
        }
    })?;
    Ok(tx)
}

async fn pump(
    rx: Arc<UdpSocket>,
    out: std::sync::mpsc::Sender<Held>,
    model: LinkModel,
    (cut, loss_ppm): (Arc<AtomicBool>, Arc<AtomicU32>),
    seed: u64,
    mut dest: impl FnMut(SocketAddr) -> Option<SocketAddr>,
) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut last: Option<Instant> = None;
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = rx.recv_from(&mut buf).await else { return };
        if cut.load(Ordering::Relaxed) {
            continue;
        }
        let Some(to) = dest(from) else { continue };
        let extra = f64::from(loss_ppm.load(Ordering::Relaxed)) / 1e6;
        let model = LinkModel { loss: model.loss.max(extra), ..model };
        if let Some(at) = model.schedule(Instant::now(), last, rng.random(), rng.random()) {
            last = Some(at);
            if out.send((at.into_std(), to, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_loss_and_order() {
        let m = LinkModel { one_way: Duration::from_millis(35), jitter: Duration::from_millis(10), loss: 0.25 };
        let t0 = Instant::now();
        assert_eq!(m.schedule(t0, None, 0.1, 0.0), None, "below the loss share: dropped");
        assert_eq!(m.schedule(t0, None, 0.5, 0.0), Some(t0 + Duration::from_millis(35)));
        assert_eq!(m.schedule(t0, None, 0.5, 0.5), Some(t0 + Duration::from_millis(40)));
        let late = t0 + Duration::from_millis(60);
        assert_eq!(m.schedule(t0, Some(late), 0.5, 0.0), Some(late), "never overtakes an earlier datagram");
        assert_eq!(LinkModel::from_rtt_ms(70).one_way, Duration::from_millis(35));
    }

    #[tokio::test]
    async fn a_relay_delays_both_ways_and_cuts() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay::start(server.local_addr().unwrap(), LinkModel::from_rtt_ms(100), 1).await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let t0 = std::time::Instant::now();
        client.send_to(b"ping", relay.addr()).await.unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = server.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping");
        server.send_to(b"pong", from).await.unwrap();
        let (n, _) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"pong");
        assert!(t0.elapsed() >= Duration::from_millis(100), "a round trip takes the link's RTT");
        relay.set_cut(true);
        client.send_to(b"lost", relay.addr()).await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(300), server.recv_from(&mut buf)).await;
        assert!(r.is_err(), "a cut link delivers nothing");
        relay.set_cut(false);
        relay.set_loss(1.0);
        client.send_to(b"lost", relay.addr()).await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(300), server.recv_from(&mut buf)).await;
        assert!(r.is_err(), "a link losing everything delivers nothing");
        relay.set_loss(0.0);
        client.send_to(b"back", relay.addr()).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), server.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], b"back", "loss set back to 0 delivers again");
    }
}
