//! Growing a running mesh with real processes: a fourth region joins a three-region demo
//! by admin call (`POST /v1/admin/peers`) and ends with the same journals; and a region
//! scales out with gateway-role nodes that take every record from its node over QUIC.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use support::{connect, next_json, request, Demo};
use tickmesh::config::{FeedConfig, NodeConfig};
use tickmesh_replicate::tls::{self, CaPem, TlsFiles};
use tickmesh_replicate::{MeshConfig, PeerConfig, Role};

/// A `tickmesh node` process, killed on drop.
struct NodeProc(Child);
impl Drop for NodeProc {
    fn drop(&mut self) {
        // SAFETY: a plain syscall on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}
fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn node_cfg(state: &Path, region: &str) -> NodeConfig {
    toml::from_str(&std::fs::read_to_string(state.join(region).join("node.toml")).unwrap()).unwrap()
}

/// Writes a certificate for `region` from the demo's CA and returns its TLS files.
fn issue(state: &Path, region: &str, dir: &Path) -> TlsFiles {
    let pki = state.join("pki");
    let ca = CaPem {
        cert: std::fs::read_to_string(pki.join("ca.pem")).unwrap(),
        key: std::fs::read_to_string(pki.join("ca.key")).unwrap(),
    };
    let leaf = tls::issue(&ca, region, 1).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("node.pem"), leaf.cert).unwrap();
    std::fs::write(dir.join("node.key"), leaf.key).unwrap();
    TlsFiles { ca_cert: pki.join("ca.pem"), cert: dir.join("node.pem"), key: dir.join("node.key") }
}

fn start_node(cfg: &NodeConfig) -> NodeProc {
    std::fs::create_dir_all(&cfg.state_dir).unwrap();
    let file = cfg.state_dir.join("node.toml");
    std::fs::write(&file, toml::to_string_pretty(cfg).unwrap()).unwrap();
    NodeProc(
        Command::new(env!("CARGO_BIN_EXE_tickmesh"))
            .args(["node", "--config"])
            .arg(&file)
            .stderr(std::fs::File::create(cfg.state_dir.join("node.log")).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn get_json(addr: SocketAddr, path: &str) -> Option<Value> {
    let (_, body) = tickmesh::http_get::get(addr, path, Duration::from_secs(5)).ok()?;
    serde_json::from_str(&body).ok()
}

fn post(addr: SocketAddr, path: &str, token: &str, body: &Value) -> (u16, String) {
    let body = body.to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out.split_once("\r\n\r\n").map(|x| x.1.to_owned()).unwrap_or_default())
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what} did not happen within {limit:?}");
}

fn journal(dir: &Path) -> BTreeMap<String, Vec<(u64, Vec<u8>)>> {
    support::read_journal(dir)
}

#[test]
fn a_fourth_region_joins_by_admin_call_and_backfills() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().to_owned();
    let demo = Demo::start_in(&state, &["--rate", "200"], None);
    // Let the three regions build some history the newcomer must backfill.
    std::thread::sleep(Duration::from_secs(2));
    let new = "sa-east-1";
    let dir: PathBuf = state.join(new);
    let http = free_tcp();
    let mesh = free_udp();
    let mut cfg = node_cfg(&state, "us-east-1");
    let peers: Vec<PeerConfig> = ["us-east-1", "eu-west-1", "ap-southeast-1"]
        .iter()
        .map(|r| PeerConfig { region: r.to_string(), addr: node_cfg(&state, r).mesh.unwrap().listen.to_string() })
        .collect();
    cfg.region = new.into();
    cfg.state_dir = dir.clone();
    cfg.gateway.listen = http;
    cfg.mesh = Some(MeshConfig {
        listen: mesh,
        peers,
        tls: issue(&state, new, &dir.join("pki")),
        reconnect_ms: 100,
        upstream: None,
        io_thread: Default::default(),
    });
    let code = tickmesh::regions::short_code(new);
    if let FeedConfig::Synthetic(s) = &mut cfg.feeds[0] {
        s.source = format!("SYN.{code}");
        s.seed = 77;
    }
    cfg.regions = Vec::new();
    let node = start_node(&cfg);

    // Before the admin calls the others refuse its certificate: it receives nothing.
    std::thread::sleep(Duration::from_secs(2));
    let r = get_json(http, "/readyz").expect("the new region serves /readyz");
    assert!(r["peers"].as_object().unwrap().values().all(|p| p["receiving"] == false), "{r}");

    let body = json!({"region": new, "addr": mesh.to_string(), "ws_url": format!("ws://{http}/v1/ws"), "http_url": format!("http://{http}")});
    for up in &demo.regions {
        let addr: SocketAddr = up.http_url.trim_start_matches("http://").parse().unwrap();
        let (status, text) = post(addr, "/v1/admin/peers", &demo.user_token, &body);
        assert_eq!(status, 403, "a user token may not add peers: {text}");
        let (status, text) = post(addr, "/v1/admin/peers", &demo.admin_token, &json!({"region": new}));
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("addr"), "the error names the missing field: {text}");
        let (status, text) = post(addr, "/v1/admin/peers", &demo.admin_token, &body);
        assert_eq!(status, 200, "{text}");
    }
    // Full member: it receives from every region and every region receives from it.
    wait_for("the new region meshed with all three", Duration::from_secs(60), || {
        let mine = get_json(http, "/readyz").map(|r| r["peers"].clone()).unwrap_or_default();
        let in_ok = mine.as_object().is_some_and(|m| m.len() == 3 && m.values().all(|p| p["receiving"] == true));
        let out_ok = demo.regions.iter().all(|up| {
            let addr: SocketAddr = up.http_url.trim_start_matches("http://").parse().unwrap();
            get_json(addr, "/readyz").is_some_and(|r| r["peers"][new]["receiving"] == true)
        });
        in_ok && out_ok
    });
    let addr: SocketAddr = demo.regions[0].http_url.trim_start_matches("http://").parse().unwrap();
    let regions = get_json(addr, "/v1/regions").unwrap();
    assert!(regions.as_array().unwrap().iter().any(|e| e["region"] == new), "{regions}");
    std::thread::sleep(Duration::from_secs(2));
    drop(node);
    drop(demo);
    let all: BTreeMap<&str, _> =
        ["us-east-1", "eu-west-1", "ap-southeast-1", new].into_iter().map(|r| (r, journal(&state.join(r)))).collect();
    let reference = &all[new];
    assert_eq!(reference.len(), 4, "the new region holds all four sources: {:?}", reference.keys());
    for (region, j) in &all {
        assert_eq!(j.keys().collect::<Vec<_>>(), reference.keys().collect::<Vec<_>>(), "{region}: sources");
        for (src, recs) in j {
            assert_eq!(recs.first().map(|r| r.0), Some(1), "{region}: {src} starts at seq 1 (backfilled)");
            for w in recs.windows(2) {
                assert_eq!(w[1].0, w[0].0 + 1, "{region}: {src} has a gap or duplicate at {}", w[0].0);
            }
            let other = &reference[src];
            let n = recs.len().min(other.len());
            assert!(n > 100, "{region}: {src} has only {n} records in common with {new}");
            assert!(recs[..n] == other[..n], "{region} and {new} hold different bytes for {src}");
        }
    }
}

/// A log file without its terminal colour codes (`ESC [ ... m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `GET /v1/ws` with a valid token, expecting a refusal: (HTTP status, JSON body).
async fn refused_upgrade(ws_url: &str, token: &str) -> (u16, Value) {
    match tokio_tungstenite::connect_async(format!("{ws_url}?token={token}")).await {
        Ok(_) => panic!("{ws_url} accepted a client WebSocket"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            let v = serde_json::from_slice(body)
                .unwrap_or_else(|e| panic!("refusal body is not JSON ({e}): {}", String::from_utf8_lossy(body)));
            (resp.status().as_u16(), v)
        }
        Err(e) => panic!("{ws_url}: expected an HTTP refusal, got {e}"),
    }
}

/// A region of one ingest node and two gateway nodes: the demo's us-east-1 process is
/// replaced by a `role = "ingest"` node on the same state and addresses, which refuses
/// clients (503, code `ingest_node`, naming the region's gateway address) and feeds two
/// gateway nodes over QUIC; clients on both gateway nodes see the same records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_nodes_serve_the_same_records_as_their_region() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().to_owned();
    let demo = Demo::start_in(&state, &["--regions", "us-east-1,eu-west-1", "--rate", "300"], None);
    let region = "us-east-1";
    let mut ingest = node_cfg(&state, region);
    let upstream = ingest.mesh.as_ref().unwrap().listen.to_string();
    let ingest_http = ingest.gateway.listen;
    let gw_http = [free_tcp(), free_tcp()];
    // The region's public address is its gateway nodes' load balancer (here: gateway 0).
    let public_ws = format!("ws://{}/v1/ws", gw_http[0]);
    for e in ingest.regions.iter_mut().filter(|e| e.region == region) {
        e.ws_url = public_ws.clone();
    }
    ingest.role = Role::Ingest;
    demo.kill_region(region);
    wait_for("the demo's us-east-1 process gone", Duration::from_secs(30), || {
        std::net::TcpStream::connect(ingest_http).is_err()
    });
    let _ingest_node = start_node(&ingest);
    tokio::task::spawn_blocking(move || {
        wait_for("the ingest node up", Duration::from_secs(60), || {
            get_json(ingest_http, "/readyz").is_some_and(|r| r["peers"]["eu-west-1"]["receiving"] == true)
        })
    })
    .await
    .unwrap();
    // No client WebSocket on the ingest node, with where to go instead; HTTP stays up.
    let (status, body) = refused_upgrade(&format!("ws://{ingest_http}/v1/ws"), &demo.user_token).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "ingest_node", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("ingest node") && message.contains(&public_ws), "{body}");
    assert_eq!(body["next"]["ws_url"], public_ws.as_str(), "{body}");
    assert_eq!(body["next"]["region"], region, "{body}");
    let health = tickmesh::http_get::get(ingest_http, "/healthz", Duration::from_secs(5)).unwrap();
    assert_eq!(health.0, 200, "{health:?}");
    let stats = get_json(ingest_http, "/v1/stats").expect("/v1/stats on the ingest node");
    assert!(stats.is_object(), "{stats}");

    let mut gws = Vec::new();
    let mut urls = Vec::new();
    for (i, http) in gw_http.into_iter().enumerate() {
        let dir = state.join(format!("{region}-gw{i}"));
        let mut cfg = ingest.clone();
        cfg.role = Role::Gateway;
        cfg.state_dir = dir.clone();
        cfg.gateway.listen = http;
        cfg.feeds = Vec::new();
        cfg.mesh = Some(MeshConfig {
            listen: free_udp(),
            peers: Vec::new(),
            // A gateway node presents its region's certificate.
            tls: issue(&state, region, &dir.join("pki")),
            reconnect_ms: 100,
            upstream: Some(upstream.clone()),
            io_thread: Default::default(),
        });
        gws.push(start_node(&cfg));
        urls.push(http);
    }
    let mut clients = Vec::new();
    for http in &urls {
        let h = *http;
        tokio::task::spawn_blocking(move || {
            wait_for("a gateway node up", Duration::from_secs(60), || {
                get_json(h, "/readyz").is_some_and(|r| r["peers"][region]["receiving"] == true)
            })
        })
        .await
        .unwrap();
        let (mut ws, hello) = connect(&format!("ws://{http}/v1/ws"), &demo.user_token, "").await;
        assert_eq!(hello["region"], region);
        let r = request(&mut ws, json!({"op":"subscribe","id":1,"channels":["trades"],"symbols":"*"})).await;
        assert_eq!(r["type"], "subscribed", "{r}");
        clients.push(ws);
    }
    // The mesh's log lines say which region (and role) they come from: the ingest node
    // logged each gateway node's connection inside its `mesh{region=..}` span.
    let log = strip_ansi(&std::fs::read_to_string(ingest.state_dir.join("node.log")).unwrap());
    let ups: Vec<&str> = log.lines().filter(|l| l.contains("mesh connection up")).collect();
    assert!(ups.iter().any(|l| l.contains("peer=eu-west-1")), "no mesh connection with eu-west-1 logged:\n{log}");
    let gateways = ups.iter().filter(|l| l.contains("peer=us-east-1") && l.contains("dir=\"accepted\"")).count();
    assert!(gateways >= 2, "the gateway nodes' connections are not logged:\n{log}");
    for l in &ups {
        assert!(l.contains("mesh{region=us-east-1 role=Ingest}"), "a mesh line without its region span: {l}");
    }
    let mut seen: Vec<BTreeMap<String, Vec<(u64, String)>>> = Vec::new();
    for mut ws in clients {
        let mut m: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
        while tokio::time::Instant::now() < deadline {
            let Some(v) = next_json(&mut ws, deadline - tokio::time::Instant::now()).await else { break };
            if let (Some(s), Some(q)) = (v["src"].as_str(), v["seq"].as_u64()) {
                m.entry(s.to_owned()).or_default().push((q, v.to_string()));
            }
        }
        seen.push(m);
    }
    // Both gateways carry both regions' sources, in order, with the same content.
    for s in ["SYN.USE1", "SYN.EUW1"].iter().map(|c| c.to_string()) {
        let a = seen[0].get(&s).unwrap_or_else(|| panic!("gateway 0 saw no {s}"));
        let b = seen[1].get(&s).unwrap_or_else(|| panic!("gateway 1 saw no {s}"));
        for v in [a, b] {
            for w in v.windows(2) {
                assert!(w[1].0 > w[0].0, "{s}: seq {} after {}", w[1].0, w[0].0);
            }
        }
        let common: Vec<_> = a.iter().filter(|x| b.iter().any(|y| y.0 == x.0)).collect();
        assert!(common.len() > 20, "{s}: the gateways share only {} records", common.len());
        for x in common {
            let y = b.iter().find(|y| y.0 == x.0).unwrap();
            assert_eq!(x.1, y.1, "{s} seq {} differs between the gateway nodes", x.0);
        }
    }
    drop(gws);
}

#[test]
fn tap_reads_a_source_from_a_seq_over_the_mesh() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().to_owned();
    let _demo = Demo::start_in(&state, &["--regions", "us-east-1,eu-west-1", "--rate", "200"], None);
    let pki = state.join("pki");
    let out = Command::new(env!("CARGO_BIN_EXE_tickmesh"))
        .args(["certs", "issue", "tap", "--dir"])
        .arg(&pki)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mesh = node_cfg(&state, "eu-west-1").mesh.unwrap().listen.to_string();
    // eu-west-1 serves us-east-1's source too: any source a region holds.
    let out = Command::new(env!("CARGO_BIN_EXE_tickmesh"))
        .args([
            "tap",
            "--region",
            "eu-west-1",
            "--mesh",
            &mesh,
            "--src",
            "SYN.USE1",
            "--from",
            "5",
            "--count",
            "20",
            "--pki",
        ])
        .arg(&pki)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 20);
    for (i, v) in lines.iter().enumerate() {
        assert_eq!(v["src"], "SYN.USE1", "{v}");
        assert_eq!(v["seq"], 5 + i as u64, "{v}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_tickmesh"))
        .args(["tap", "--region", "eu-west-1", "--mesh", &mesh, "--format", "xml", "--pki"])
        .arg(&pki)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("use jsonl or binary"));
}
