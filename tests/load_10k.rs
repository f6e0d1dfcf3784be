//! 10,000 concurrent WebSocket connections on one node.
//!
//! One region runs (`tickmesh demo --regions us-east-1`, synthetic feed). The test opens
//! 10,000 authenticated connections and checks, on the node process itself:
//! * memory per idle connection: every client subscribed (to `status`, which is quiet
//!   after start-up), RSS growth / connections, printed and held to 16 KiB;
//! * every connection receives data once they all subscribe to `trades`;
//! * a bounded soak (60 s, `TICKMESH_SOAK_SECS` to change) with every client reading:
//!   no connection is dropped, and RSS stays flat after warm-up (growth below 20%);
//! * once the clients leave, the node's open file count returns to where it started.
//!
//! Behaviour, not speed: deadlines are generous and every wait polls for its condition.
//! `TICKMESH_LOAD_CLIENTS` changes the connection count (for a quick local run).

mod support;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Raises the open-file limit to its hard limit; panics with what to do if that is too low.
fn raise_fd_limit(need: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into a struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0, "getrlimit");
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads a struct we own.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0, "setrlimit");
    assert!(
        lim.rlim_cur >= need,
        "the open-file hard limit is {} but this test needs {need} (10,000 client sockets here and 10,000 in the node); \
         raise it before running the test, e.g. `ulimit -n {}` as root",
        lim.rlim_cur,
        need * 2
    );
}

fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("node /proc status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("node /proc fd").count()
}

/// A minimal WebSocket client: raw TCP, masked text frames out, unmasked frames in.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: &str, token: &str) -> std::io::Result<Client> {
        let mut s = TcpStream::connect(addr).await?;
        let req = format!(
            "GET /v1/ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        let mut rd = [0u8; 1024];
        loop {
            let n = s.read(&mut rd).await?;
            if n == 0 {
                return Err(std::io::Error::other("closed during the upgrade"));
            }
            buf.extend_from_slice(&rd[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                if !buf.starts_with(b"HTTP/1.1 101") {
                    return Err(std::io::Error::other(String::from_utf8_lossy(&buf[..end]).into_owned()));
                }
                buf.drain(..end + 4);
                return Ok(Client { s, buf });
            }
        }
    }

    async fn send(&mut self, text: &str) -> std::io::Result<()> {
        let key = [7u8, 1, 2, 9];
        let p = text.as_bytes();
        assert!(p.len() < 126);
        let mut f = vec![0x81, 0x80 | p.len() as u8];
        f.extend_from_slice(&key);
        f.extend(p.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.s.write_all(&f).await
    }

    /// The next text message; None when the server closes.
    async fn next_text(&mut self) -> std::io::Result<Option<String>> {
        loop {
            if self.buf.len() >= 2 {
                let (len, hl) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => (usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])), 4),
                    127 if self.buf.len() >= 10 => {
                        (u64::from_be_bytes(self.buf[2..10].try_into().expect("8 bytes")) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    l => (usize::from(l), 2),
                };
                if len != usize::MAX && self.buf.len() >= hl + len {
                    let op = self.buf[0] & 0x0f;
                    let payload: Vec<u8> = self.buf.drain(..hl + len).skip(hl).collect();
                    match op {
                        1 => return Ok(Some(String::from_utf8(payload).expect("utf-8 text"))),
                        8 => return Ok(None),
                        _ => continue,
                    }
                }
            }
            let mut rd = [0u8; 2048];
            let n = self.s.read(&mut rd).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&rd[..n]);
        }
    }

    /// Reads until a message starting with `prefix`.
    async fn until(&mut self, prefix: &str) -> std::io::Result<String> {
        loop {
            match self.next_text().await? {
                Some(t) if t.starts_with(prefix) => return Ok(t),
                Some(t) if t.starts_with("{\"type\":\"error\"") => return Err(std::io::Error::other(t)),
                Some(_) => continue,
                None => return Err(std::io::Error::other(format!("closed while waiting for {prefix}"))),
            }
        }
    }
}

#[derive(Default)]
struct Counts {
    subscribed: Cell<usize>,
    got_trade: Cell<usize>,
    messages: Cell<u64>,
    lost: Cell<usize>,
    failed: Cell<usize>,
}

#[tokio::test]
async fn ten_thousand_connections_memory_and_soak() {
    let clients: usize = std::env::var("TICKMESH_LOAD_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let soak = Duration::from_secs(std::env::var("TICKMESH_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60));
    raise_fd_limit(clients as u64 + 1024);
    let demo = support::Demo::start(&["--regions", "us-east-1", "--rate", "200"]);
    let region = demo.regions[0].clone();
    let pid = region.pid;
    let addr = region.ws_url.trim_start_matches("ws://").split('/').next().expect("host:port").to_owned();
    let token = demo.user_token.clone();

    // Let the node settle (feed started, books built) before the baseline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fd_base = fds(pid);
    let rss_base = rss(pid);

    let counts = Rc::new(Counts::default());
    let (phase_tx, phase_rx) = watch::channel(0u8); // 1: subscribe trades, 2: leave
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(200));
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            for _ in 0..clients {
                let permit = gate.clone().acquire_owned().await.expect("semaphore");
                let (addr, token, counts, mut phase) = (addr.clone(), token.clone(), counts.clone(), phase_rx.clone());
                tokio::task::spawn_local(async move {
                    let r: std::io::Result<()> = async {
                        let mut c = Client::connect(&addr, &token).await?;
                        c.until("{\"type\":\"hello\"").await?;
                        c.send(r#"{"op":"subscribe","id":1,"channels":["status"],"symbols":["AAPL"]}"#).await?;
                        c.until("{\"type\":\"subscribed\"").await?;
                        counts.subscribed.set(counts.subscribed.get() + 1);
                        drop(permit);
                        // Idle (heartbeats only) until phase 1.
                        loop {
                            tokio::select! {
                                r = phase.wait_for(|p| *p >= 1) => { r.map_err(std::io::Error::other)?; break; }
                                m = c.next_text() => if m?.is_none() { return Err(std::io::Error::other("closed while idle")) },
                            }
                        }
                        c.send(r#"{"op":"subscribe","id":2,"channels":["trades"],"symbols":["AAPL"]}"#).await?;
                        c.until("{\"type\":\"trade\"").await?;
                        counts.got_trade.set(counts.got_trade.get() + 1);
                        loop {
                            tokio::select! {
                                _ = phase.wait_for(|p| *p >= 2) => return Ok(()),
                                m = c.next_text() => match m? {
                                    Some(_) => counts.messages.set(counts.messages.get() + 1),
                                    None => { counts.lost.set(counts.lost.get() + 1); return Ok(()) }
                                },
                            }
                        }
                    }
                    .await;
                    if let Err(e) = r {
                        if counts.failed.get() == 0 {
                            eprintln!("first client failure: {e}");
                        }
                        counts.failed.set(counts.failed.get() + 1);
                    }
                });
            }
            let poll = |what: &'static str, limit: Duration, done: Box<dyn Fn() -> bool>| {
                let counts = counts.clone();
                async move {
                    let deadline = Instant::now() + limit;
                    while !done() {
                        assert_eq!(counts.failed.get(), 0, "a client failed while waiting for {what}");
                        assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            };
            let c = counts.clone();
            poll("every client subscribed", Duration::from_secs(300), Box::new(move || c.subscribed.get() == clients))
                .await;
            assert!(fds(pid) >= fd_base + clients, "the node holds a socket per client");

            // Idle memory: every connection authenticated and subscribed, nothing flowing but
            // heartbeats.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let rss_idle = rss(pid);
            let per_conn = rss_idle.saturating_sub(rss_base) as f64 / clients as f64;
            println!(
                "idle: {clients} connections, node RSS {:.1} MiB -> {:.1} MiB, {:.0} bytes ({:.1} KiB) per connection",
                rss_base as f64 / 1048576.0,
                rss_idle as f64 / 1048576.0,
                per_conn,
                per_conn / 1024.0
            );
            assert!(per_conn <= 16.0 * 1024.0, "{per_conn:.0} bytes per idle connection; the budget is 16 KiB");

            // Data to every connection.
            phase_tx.send(1).expect("phase");
            let c = counts.clone();
            poll("every client received a trade", Duration::from_secs(300), Box::new(move || c.got_trade.get() == clients))
                .await;

            // Soak: RSS flat after warm-up, no connection lost, data keeps flowing.
            let warm = (soak / 5).max(Duration::from_secs(5));
            tokio::time::sleep(warm).await;
            let rss_warm = rss(pid);
            let mut peak = rss_warm;
            let end = Instant::now() + soak.saturating_sub(warm);
            let mut last_msgs = counts.messages.get();
            while Instant::now() < end {
                tokio::time::sleep(Duration::from_secs(5).min(end.saturating_duration_since(Instant::now()))).await;
                let now_rss = rss(pid);
                peak = peak.max(now_rss);
                let msgs = counts.messages.get();
                println!(
                    "soak: node RSS {:.1} MiB, fds {}, client messages +{}",
                    now_rss as f64 / 1048576.0,
                    fds(pid),
                    msgs - last_msgs
                );
                assert!(msgs > last_msgs, "data stopped flowing during the soak");
                last_msgs = msgs;
                assert_eq!(counts.lost.get(), 0, "the node closed connections during the soak");
                assert_eq!(counts.failed.get(), 0, "clients failed during the soak");
            }
            let growth = peak as f64 / rss_warm as f64 - 1.0;
            println!(
                "soak: RSS after warm-up {:.1} MiB, peak {:.1} MiB ({:+.1}%)",
                rss_warm as f64 / 1048576.0,
                peak as f64 / 1048576.0,
                growth * 100.0
            );
            assert!(growth < 0.20, "node RSS grew {:.1}% during the soak (limit 20%)", growth * 100.0);

            // Leave: the node's descriptors return to the baseline.
            phase_tx.send(2).expect("phase");
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let n = fds(pid);
                if n <= fd_base + 8 {
                    println!("after the clients left: {n} fds (baseline {fd_base})");
                    break;
                }
                assert!(Instant::now() < deadline, "node still holds {n} fds 120 s after the clients left (baseline {fd_base})");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
    drop(demo);
}
