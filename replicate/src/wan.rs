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
//! [`Relay`] is the thin driver around it: one thread per direction.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

    /// Whether a datagram is lost; `r` is uniform in [0, 1) (the caller owns the
    /// generator, so runs replay).
    pub fn lost(&self, r: f64) -> bool {
        r < self.loss
    }

    /// When a datagram (or a GSO batch of them, which arrived together) that arrived at
    /// `now` and was not lost leaves; `r` is uniform in [0, 1) for the jitter. Delivery
    /// never overtakes an earlier datagram of the same direction (`last`), as on a real
    /// path without reordering.
    pub fn due(&self, now: Instant, last: Option<Instant>, r: f64) -> Instant {
        let at = now + self.one_way + self.jitter.mul_f64(r);
        match last {
            Some(l) if l > at => l,
            _ => at,
        }
    }
}

/// A running relay for one (dialer, peer) pair: one thread per direction. Dropping it
/// stops both threads.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Loss set at run time, parts per million (added to the model's by taking the larger).
    loss_ppm: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    late: Arc<std::sync::Mutex<hdrhistogram::Histogram<u64>>>,
}

impl Relay {
    /// Starts a relay on 127.0.0.1 that forwards to `target` with `model` each way.
    pub fn start(target: SocketAddr, model: LinkModel, seed: u64) -> std::io::Result<Relay> {
        let bind = || -> std::io::Result<Socket> {
            let sock = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0")?);
            // GRO on: a sender's GSO batch (quinn sends up to 64 datagrams per syscall)
            // arrives as one buffer and leaves as one, instead of 2 syscalls per datagram.
            let state = Arc::new(quinn_udp::UdpSocketState::new(quinn_udp::UdpSockRef::from(&*sock))?);
            // Datagrams wait in the relay's queue, not in the kernel: a relay thread that
            // is not scheduled for a while must not drop what the emulated link carried.
            crate::mesh::socket_buffers(&*sock, sock.local_addr()?);
            Ok(Socket { sock, state })
        };
        let (front, back) = (bind()?, bind()?);
        let addr = front.sock.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let loss_ppm = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let late = Arc::new(std::sync::Mutex::new(
            hdrhistogram::Histogram::new(2).map_err(|e| std::io::Error::other(e.to_string()))?,
        ));
        // The dialer's address, learned from its first datagram (one dialer per relay).
        let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
        let shared =
            Shared { model, cut: cut.clone(), loss_ppm: loss_ppm.clone(), stop: stop.clone(), late: late.clone() };
        let learn = client.clone();
        let out = Direction {
            rx: front.clone(),
            tx: back.clone(),
            shared: shared.clone(),
            seed,
            dest: Box::new(move |from| {
                *learn.lock().unwrap_or_else(|e| e.into_inner()) = Some(from);
                Some(target)
            }),
        };
        let back_dir = Direction {
            rx: back,
            tx: front,
            shared,
            seed: seed ^ 0x9E37_79B9,
            dest: Box::new(move |_| *client.lock().unwrap_or_else(|e| e.into_inner())),
        };
        let mut threads = Vec::new();
        for (name, d) in [("wan-relay-out", out), ("wan-relay-back", back_dir)] {
            threads.push(std::thread::Builder::new().name(name.into()).spawn(move || d.run())?);
        }
        Ok(Relay { addr, cut, loss_ppm, stop, threads, late })
    }

    /// Where the dialer should send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts (true) or heals (false) the link, both directions.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }

    /// How late the relay forwarded datagrams after their due time, µs, both ways since it
    /// started (or since the last call, which resets it): the emulator's own error, which
    /// a benchmark would otherwise count as latency of what it measures.
    pub fn take_lateness(&self) -> hdrhistogram::Histogram<u64> {
        let mut h = self.late.lock().unwrap_or_else(|e| e.into_inner());
        let out = h.clone();
        h.reset();
        out
    }

    /// Drops this share (0.0 to 1.0) of the datagrams both ways from now on, on top of the
    /// model's loss (the larger applies); 0.0 goes back to the model's.
    pub fn set_loss(&self, share: f64) {
        let ppm = (share.clamp(0.0, 1.0) * 1e6).round() as u32;
        self.loss_ppm.store(ppm, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Longest a relay thread waits without looking at `stop`.
const IDLE_WAIT: Duration = Duration::from_millis(20);

/// Receive buffer per GRO batch: 64 datagrams of up to 1,500 bytes.
const GRO_BUF: usize = 64 * 1500;

#[derive(Clone)]
struct Socket {
    sock: Arc<std::net::UdpSocket>,
    state: Arc<quinn_udp::UdpSocketState>,
}

#[derive(Clone)]
struct Shared {
    model: LinkModel,
    cut: Arc<AtomicBool>,
    loss_ppm: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    late: Arc<std::sync::Mutex<hdrhistogram::Histogram<u64>>>,
}

/// Datagrams held by the relay until `at`: one buffer of equal-size datagrams (the last
/// may be shorter), forwarded with one GSO send.
struct Held {
    at: Instant,
    to: SocketAddr,
    ecn: Option<quinn_udp::EcnCodepoint>,
    stride: usize,
    data: Vec<u8>,
}

/// One direction of a relay: receives on `rx`, holds, sends on `tx` to `dest(from)`.
struct Direction {
    rx: Socket,
    tx: Socket,
    shared: Shared,
    seed: u64,
    dest: Box<dyn FnMut(SocketAddr) -> Option<SocketAddr> + Send>,
}

impl Direction {
    /// Forwards until the relay is dropped.
    ///
    /// One thread does both halves, so a datagram crosses no thread hand-off: it waits in
    /// `ppoll` with a nanosecond timeout (the next datagram's due time, aimed early by
    /// [`Early`]) and precise timers. tokio's timer (1 ms resolution, deadlines rounded
    /// up) added 0.5-1 ms to every datagram of the emulated link, and a plain sleep ~50 µs
    /// at p50, all of which the mesh benchmark counted as mesh latency. Datagrams now
    /// leave at their due time on average (at most 200 µs early), and
    /// [`Relay::take_lateness`] reports what is left.
    fn run(mut self) {
        crate::sched::precise_timers();
        let _ = crate::sched::set_slice(u64::from(crate::sched::DEFAULT_SLICE_US) * 1000);
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
        let mut queue: std::collections::VecDeque<Held> = std::collections::VecDeque::new();
        let mut spare: Vec<Vec<u8>> = Vec::new();
        let mut bufs = vec![vec![0u8; GRO_BUF]; quinn_udp::BATCH_SIZE];
        let mut meta = vec![quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE];
        let mut last: Option<Instant> = None;
        let mut early = Early::default();
        let s = self.shared.clone();
        while !s.stop.load(Ordering::Relaxed) {
            let blocked = self.send_due(&mut queue, &mut spare, &mut early);
            let now = Instant::now();
            let wait = match queue.front() {
                // A full send buffer: retry shortly rather than drop what the link carried.
                Some(_) if blocked => Duration::from_micros(50),
                Some(h) => h.at.saturating_duration_since(now + early.by()).min(IDLE_WAIT),
                None => IDLE_WAIT,
            };
            if !wait.is_zero() && !readable(&self.rx.sock, wait) {
                continue;
            }
            loop {
                let n = {
                    let mut iov: Vec<std::io::IoSliceMut<'_>> =
                        bufs.iter_mut().map(|b| std::io::IoSliceMut::new(b)).collect();
                    match self.rx.state.recv(quinn_udp::UdpSockRef::from(&*self.rx.sock), &mut iov, &mut meta) {
                        Ok(n) => n,
                        Err(_) => break,
                    }
                };
                let now = Instant::now();
                let extra = f64::from(s.loss_ppm.load(Ordering::Relaxed)) / 1e6;
                let model = LinkModel { loss: s.model.loss.max(extra), ..s.model };
                for (m, buf) in meta.iter().zip(&bufs).take(n) {
                    if s.cut.load(Ordering::Relaxed) {
                        continue;
                    }
                    let Some(to) = (self.dest)(m.addr) else { continue };
                    let stride = if m.stride == 0 { m.len } else { m.stride };
                    let mut data = spare.pop().unwrap_or_default();
                    data.clear();
                    for seg in buf[..m.len].chunks(stride.max(1)) {
                        if model.loss > 0.0 && model.lost(rng.random()) {
                            continue;
                        }
                        data.extend_from_slice(seg);
                    }
                    if data.is_empty() {
                        spare.push(data);
                        continue;
                    }
                    let at = model.due(now, last, rng.random());
                    last = Some(at);
                    queue.push_back(Held { at, to, ecn: m.ecn, stride, data });
                }
                // A steady inflow must not hold back what is due to leave.
                if queue.front().is_some_and(|h| h.at <= Instant::now() + early.by()) {
                    break;
                }
            }
        }
    }

    /// Sends every held buffer that is due; true when the socket's send buffer is full.
    fn send_due(
        &self,
        queue: &mut std::collections::VecDeque<Held>,
        spare: &mut Vec<Vec<u8>>,
        early: &mut Early,
    ) -> bool {
        let now = Instant::now();
        while let Some(h) = queue.front() {
            if h.at > now + early.by() {
                return false;
            }
            if !self.shared.cut.load(Ordering::Relaxed) {
                let segments = h.data.len().div_ceil(h.stride.max(1));
                let gso = segments > 1 && segments <= self.tx.state.max_gso_segments();
                let chunks: Vec<&[u8]> =
                    if gso || segments <= 1 { vec![&h.data[..]] } else { h.data.chunks(h.stride).collect() };
                let whole = chunks.len() == 1;
                for c in chunks {
                    let t = quinn_udp::Transmit {
                        destination: h.to,
                        ecn: h.ecn,
                        contents: c,
                        segment_size: if gso { Some(h.stride) } else { None },
                        src_ip: None,
                    };
                    // Other errors are logged by quinn-udp and count as loss on the link.
                    if let Err(e) = self.tx.state.send(quinn_udp::UdpSockRef::from(&*self.tx.sock), &t) {
                        // A full send buffer: the buffer stays queued and is retried, unless
                        // part of it already left one datagram at a time (kernels without
                        // GSO), where the rest is lost as on a congested link.
                        if e.kind() == std::io::ErrorKind::WouldBlock && whole {
                            return true;
                        }
                    }
                }
            }
            if let Some(h) = queue.pop_front() {
                early.sent(now, h.at);
                let late = now.saturating_duration_since(h.at).as_micros() as u64;
                let _ = self.shared.late.lock().unwrap_or_else(|e| e.into_inner()).record(late);
                spare.push(h.data);
            }
        }
        false
    }
}

/// How early a relay thread aims its wake-ups, so that datagrams leave at their due time
/// on average: a sleeping thread wakes tens of µs after its timer (more on a busy or
/// virtual machine), and that lateness would add to every datagram's emulated delay. It
/// follows the measured error of each send (late: aim earlier; early: aim later),
/// bounded to [0, 200 µs].
#[derive(Debug, Default)]
pub struct Early {
    ns: i64,
}

impl Early {
    const MAX_NS: i64 = 200_000;

    /// How long before a due time to wake.
    pub fn by(&self) -> Duration {
        Duration::from_nanos(self.ns as u64)
    }

    /// What was due at `due` left at `now`.
    pub fn sent(&mut self, now: Instant, due: Instant) {
        let err = if now >= due { (now - due).as_nanos() as i64 } else { -((due - now).as_nanos() as i64) };
        self.ns = (self.ns + err.clamp(-Self::MAX_NS, Self::MAX_NS) / 16).clamp(0, Self::MAX_NS);
    }
}

/// Waits until `sock` has a datagram or `wait` passed (nanosecond timeout, unlike
/// `poll`'s milliseconds).
fn readable(sock: &std::net::UdpSocket, wait: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ts = libc::timespec { tv_sec: wait.as_secs() as libc::time_t, tv_nsec: wait.subsec_nanos() as libc::c_long };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    let r = unsafe { libc::ppoll(&mut fd, 1, &ts, std::ptr::null()) };
    r > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_loss_and_order() {
        let m = LinkModel { one_way: Duration::from_millis(35), jitter: Duration::from_millis(10), loss: 0.25 };
        let t0 = Instant::now();
        assert!(m.lost(0.1), "below the loss share: dropped");
        assert!(!m.lost(0.5));
        assert_eq!(m.due(t0, None, 0.0), t0 + Duration::from_millis(35));
        assert_eq!(m.due(t0, None, 0.5), t0 + Duration::from_millis(40));
        let late = t0 + Duration::from_millis(60);
        assert_eq!(m.due(t0, Some(late), 0.0), late, "never overtakes an earlier datagram");
        assert_eq!(LinkModel::from_rtt_ms(70).one_way, Duration::from_millis(35));
    }

    #[test]
    fn wake_ups_aim_early_by_the_measured_lateness_and_no_more() {
        let mut e = Early::default();
        let t0 = Instant::now();
        for _ in 0..200 {
            // Always woken 60 µs after the aim: the aim moves ~60 µs ahead of due.
            let aim = t0 - e.by();
            e.sent(aim + Duration::from_micros(60), t0);
        }
        let by = e.by().as_micros();
        assert!((50..=70).contains(&by), "converges on the lateness: {by} µs");
        for _ in 0..200 {
            e.sent(t0 + Duration::from_millis(5), t0);
        }
        assert_eq!(e.by(), Duration::from_micros(200), "bounded, however late the wake-ups");
        for _ in 0..200 {
            e.sent(t0, t0 + Duration::from_millis(5));
        }
        assert_eq!(e.by(), Duration::ZERO, "never aims later than due");
    }

    #[tokio::test]
    async fn a_relay_delays_both_ways_and_cuts() {
        use tokio::net::UdpSocket;
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay::start(server.local_addr().unwrap(), LinkModel::from_rtt_ms(100), 1).unwrap();
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
        let t = std::time::Instant::now();
        drop(relay);
        assert!(t.elapsed() < Duration::from_secs(2), "dropping a relay stops its threads");
    }

    /// Sends `count` datagrams of `size` bytes (byte i of datagram k is k) as one GSO batch.
    fn send_gso(to: SocketAddr, count: u8, size: usize) -> std::net::UdpSocket {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let state = quinn_udp::UdpSocketState::new(quinn_udp::UdpSockRef::from(&sock)).unwrap();
        let data: Vec<u8> = (0..count).flat_map(|k| std::iter::repeat_n(k, size)).collect();
        let gso = state.max_gso_segments() >= usize::from(count);
        let chunks: Vec<&[u8]> = if gso { vec![&data[..]] } else { data.chunks(size).collect() };
        for c in chunks {
            let t = quinn_udp::Transmit {
                destination: to,
                ecn: None,
                contents: c,
                segment_size: if gso { Some(size) } else { None },
                src_ip: None,
            };
            state.send(quinn_udp::UdpSockRef::from(&sock), &t).unwrap();
        }
        sock
    }

    /// Datagrams received until nothing came for `quiet`.
    fn drain(sock: &std::net::UdpSocket, quiet: Duration) -> Vec<Vec<u8>> {
        sock.set_read_timeout(Some(quiet)).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = sock.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got
    }

    #[test]
    fn a_gso_batch_crosses_as_the_same_datagrams_and_loss_drops_whole_ones() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let relay = Relay::start(server.local_addr().unwrap(), LinkModel::from_rtt_ms(10), 7).unwrap();
        let _client = send_gso(relay.addr(), 20, 1200);
        let got = drain(&server, Duration::from_millis(300));
        let want: Vec<Vec<u8>> = (0..20u8).map(|k| vec![k; 1200]).collect();
        assert_eq!(got, want, "every datagram, whole and in order");

        relay.set_loss(0.5);
        let _client = send_gso(relay.addr(), 40, 1000);
        let got = drain(&server, Duration::from_millis(300));
        assert!(!got.is_empty() && got.len() < 40, "about half of 40 arrive: {}", got.len());
        let mut prev = None;
        for d in &got {
            assert_eq!(d.len(), 1000, "a datagram is lost whole or arrives whole");
            assert!(d.iter().all(|b| *b == d[0]), "no datagram is a mix of two");
            assert!(prev < Some(d[0]), "order kept");
            prev = Some(d[0]);
        }
    }
}
