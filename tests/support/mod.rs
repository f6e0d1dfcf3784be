//! Helpers for tests that run the real binary: start `tickmesh demo`, read its start-up
//! lines, connect WebSocket clients. Every process started here is killed on drop.

#![allow(dead_code, unreachable_pub)]

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// A region as `region_up` announced it.
#[derive(Debug, Clone)]
pub struct RegionUp {
    pub region: String,
    pub pid: u32,
    pub ws_url: String,
    pub http_url: String,
}

/// A running demo; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Demo {
    child: Child,
    pub regions: Vec<RegionUp>,
    pub user_token: String,
    pub admin_token: String,
    pub jwt_key_file: String,
    pub state_dir: std::path::PathBuf,
    /// The DNS router's address (`--router`).
    pub dns_addr: Option<std::net::SocketAddr>,
    _tmp: Option<tempfile::TempDir>,
}

impl Demo {
    /// Starts `tickmesh demo --json --port-base 0` with extra arguments and waits for `ready`.
    pub fn start(extra: &[&str]) -> Demo {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_owned();
        Demo::start_in(&dir, extra, Some(tmp))
    }

    /// Like [`Demo::start`], in a state directory the caller keeps (journals survive).
    pub fn start_in(state_dir: &std::path::Path, extra: &[&str], tmp: Option<tempfile::TempDir>) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tickmesh"))
            .args(["demo", "--json", "--port-base", "0", "--state-dir"])
            .arg(state_dir)
            .args(if extra.contains(&"--feed") { &[][..] } else { &["--feed", "synthetic"][..] })
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tickmesh demo");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut demo = Demo {
            child,
            regions: Vec::new(),
            user_token: String::new(),
            admin_token: String::new(),
            jwt_key_file: String::new(),
            state_dir: state_dir.to_owned(),
            dns_addr: None,
            _tmp: tmp,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("demo did not print `ready` within 90 s");
            let v: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("demo printed a non-JSON line {line:?}: {e}"));
            match v["event"].as_str() {
                Some("region_up") => demo.regions.push(RegionUp {
                    region: v["region"].as_str().unwrap().into(),
                    pid: v["pid"].as_u64().unwrap() as u32,
                    ws_url: v["ws_url"].as_str().unwrap().into(),
                    http_url: v["http_url"].as_str().unwrap().into(),
                }),
                Some("tokens") => {
                    demo.user_token = v["user"].as_str().unwrap().into();
                    demo.admin_token = v["admin"].as_str().unwrap().into();
                    demo.jwt_key_file = v["jwt_key_file"].as_str().unwrap().into();
                }
                Some("router_up") => demo.dns_addr = v["dns_addr"].as_str().and_then(|a| a.parse().ok()),
                Some("ready") => break,
                other => panic!("unexpected demo line {other:?}: {line}"),
            }
        }
        demo
    }

    /// SIGKILLs one region's process.
    pub fn kill_region(&self, region: &str) {
        let r = self.regions.iter().find(|r| r.region == region).expect("region");
        // SAFETY: a plain syscall on a pid the demo reported.
        unsafe { libc::kill(r.pid as i32, libc::SIGKILL) };
    }

    /// SIGKILLs one region's process and waits until it is gone (its journal lock released),
    /// so the test can start the region again on the same state directory.
    #[allow(dead_code)]
    pub fn kill_region_and_wait(&self, region: &str) {
        self.kill_region(region);
        let pid = self.regions.iter().find(|r| r.region == region).expect("region").pid;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            // Gone, or a zombie the demo has not reaped yet: either way its files are closed.
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => return,
                Ok(s) if s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')) => return,
                Ok(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        panic!("region {region} (pid {pid}) still runs 30 s after SIGKILL");
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // SAFETY: a plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects with the token in the query and returns the socket and the `hello`.
pub async fn connect(ws_url: &str, token: &str, query: &str) -> (Ws, Value) {
    let url = format!("{ws_url}?token={token}{query}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connect");
    let hello = next_json(&mut ws, Duration::from_secs(5)).await.expect("hello");
    assert_eq!(hello["type"], "hello", "first message must be hello: {hello}");
    (ws, hello)
}

/// The next text message as JSON, or None on timeout/close.
pub async fn next_json(ws: &mut Ws, limit: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()??.ok()?;
        match msg {
            Message::Text(t) => return Some(serde_json::from_str(t.as_str()).expect("server sent invalid JSON")),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

/// Sends a JSON request.
pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.expect("send");
}

/// Sends `req` and returns the reply with the same id (data messages in between are skipped).
pub async fn request(ws: &mut Ws, req: Value) -> Value {
    let id = req["id"].clone();
    send(ws, req).await;
    loop {
        let v = next_json(ws, Duration::from_secs(5)).await.expect("reply");
        if v.get("id") == Some(&id) || (v["type"] == "error" && v.get("id").is_none()) {
            return v;
        }
    }
}

/// Sends raw text.
pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.to_owned().into())).await.expect("send");
}

/// Connects over a socket with a small receive buffer (so a client that stops reading
/// backs up into the server quickly) and returns the socket and the `hello`.
pub async fn connect_small_rcvbuf(ws_url: &str, token: &str, query: &str) -> (Ws, Value) {
    let url = format!("{ws_url}?token={token}{query}");
    let addr: std::net::SocketAddr = ws_url.trim_start_matches("ws://").split('/').next().unwrap().parse().unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    sock.set_nonblocking(true).unwrap();
    let tcp = tokio::net::TcpStream::from_std(sock.into()).unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp)).await.expect("handshake");
    let hello = next_json(&mut ws, Duration::from_secs(5)).await.expect("hello");
    (ws, hello)
}

/// The next message of any kind (text as JSON, binary as raw bytes, close as its code).
pub enum Msg {
    Json(Value),
    Binary(Vec<u8>),
    Close(Option<u16>),
}

/// The next message, or None on timeout or end of stream.
pub async fn next_msg(ws: &mut Ws, limit: Duration) -> Option<Msg> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        match msg {
            Ok(Message::Text(t)) => return Some(Msg::Json(serde_json::from_str(t.as_str()).expect("invalid JSON"))),
            Ok(Message::Binary(b)) => return Some(Msg::Binary(b.to_vec())),
            Ok(Message::Close(c)) => return Some(Msg::Close(c.map(|c| u16::from(c.code)))),
            Ok(_) => continue,
            Err(_) => return Some(Msg::Close(None)),
        }
    }
}

/// Sends a JSON request; an error instead of a panic when the connection is gone.
pub async fn send_checked(ws: &mut Ws, v: Value) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    ws.send(Message::Text(v.to_string().into())).await
}

/// Every record of every source in a region's journal (`<state_dir>/journal`), by source id:
/// what the mesh tests compare across regions after a stop.
pub fn read_journal(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<(u64, Vec<u8>)>> {
    let (j, _) = tickmesh_journal::Journal::open(&dir.join("journal"), Default::default()).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for (src, _) in j.positions() {
        let mut r = j.reader(&src, 1).unwrap();
        let mut v = Vec::new();
        while let Some(rec) = r.next().unwrap() {
            v.push((rec.seq(), rec.bytes().to_vec()));
        }
        out.insert(src.as_str().to_owned(), v);
    }
    out
}

/// `tickmesh node` started on a region's directory of a demo state (its `node.toml`), with
/// its output in `restart.log` there; SIGKILLed on drop. For tests that restart a region.
pub struct NodeProcess {
    pub child: Child,
    pub log: std::path::PathBuf,
}

impl NodeProcess {
    pub fn start(region_dir: &std::path::Path) -> NodeProcess {
        let log = region_dir.join("restart.log");
        let out = std::fs::File::create(&log).expect("create restart.log");
        let child = Command::new(env!("CARGO_BIN_EXE_tickmesh"))
            .arg("node")
            .arg("--config")
            .arg(region_dir.join("node.toml"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .expect("start tickmesh node");
        NodeProcess { child, log }
    }

    /// Stops the node as an operator would (SIGTERM), SIGKILL after 15 s.
    pub fn stop(mut self) {
        // SAFETY: a plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the node has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `ws` until it closes: the last `reconnect` message seen before, and the close frame.
pub async fn reconnect_then_close(ws: &mut Ws, limit: Duration) -> (Option<Value>, Option<Option<u16>>) {
    let mut reconnect = None;
    while let Some(m) = next_msg(ws, limit).await {
        match m {
            Msg::Json(j) if j["type"] == "reconnect" => reconnect = Some(j),
            Msg::Close(c) => return (reconnect, Some(c)),
            _ => {}
        }
    }
    (reconnect, None)
}

/// ts_ingest of record `seq` of source number `k` in [`fill_journal`]: rising, interleaved
/// across sources.
pub fn fill_ts(k: usize, seq: u64) -> u64 {
    1_700_000_000_000_000_000 + seq * 1_000_000 + k as u64 * 1_000
}

/// Appends trades `from..=to` of every source in `sources` to the journal in
/// `state/journal` (8 KiB segments), with [`fill_ts`] times, and syncs it.
pub fn fill_journal(state: &std::path::Path, sources: &[&str], from: u64, to: u64) {
    use tickmesh_codec::{testing, Seq, Side, SourceId};
    let cfg = tickmesh_journal::JournalConfig { segment_bytes: 8_192, ..Default::default() };
    let (j, _) = tickmesh_journal::Journal::open(&state.join("journal"), cfg).expect("open the journal");
    for seq in from..=to {
        for (k, s) in sources.iter().enumerate() {
            let side = if seq % 2 == 0 { Side::Buy } else { Side::Sell };
            let mut r = testing::trade(seq, "AAPL", "320.14", "100", side);
            r.header.src = SourceId::new(s).expect("source id");
            r.header.seq = Seq(seq);
            r.header.ts_ingest = fill_ts(k, seq);
            j.append(&r.to_bytes()).expect("append");
        }
    }
    j.sync().expect("sync");
}

/// Every record of `src` in the journal under `state/journal`, as bytes, oldest first.
pub fn journal_records(state: &std::path::Path, src: &str) -> Vec<Vec<u8>> {
    let (j, _) = tickmesh_journal::Journal::open(&state.join("journal"), Default::default()).expect("open the journal");
    let id = tickmesh_codec::SourceId::new(src).expect("source id");
    let Some(first) = j.first_seq(&id) else { return Vec::new() };
    let mut r = j.reader(&id, first).expect("journal reader");
    let mut out = Vec::new();
    while let Some(b) = r.next_owned().expect("read the journal") {
        out.push(b);
    }
    out
}
