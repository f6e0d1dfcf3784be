//! Mutual TLS on real sockets: a peer with a certificate from our CA naming a configured
//! region receives our records; a foreign CA's certificate, or one naming a region that
//! is not configured, gets nothing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tickmesh_codec::{frame, testing, Side, SourceId};
use tickmesh_replicate::tls::{self, CaPem, Credentials, TlsFiles};
use tickmesh_replicate::{MemoryStore, Mesh, MeshConfig, MeshParams, PeerConfig, RecordStore};

fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

struct Node {
    _mesh: Mesh,
    got: Arc<Mutex<Vec<u64>>>,
    /// (sent_ns, received_ns) of every batch received.
    batches: Arc<Mutex<Vec<(u64, u64)>>>,
    _appended: tokio::sync::watch::Sender<u64>,
}

fn start(
    region: &str,
    ca: &CaPem,
    listen: SocketAddr,
    peers: &[(&str, SocketAddr)],
    store: Arc<MemoryStore>,
    home: &[&str],
) -> Node {
    let leaf = tls::issue(ca, region, 1).unwrap();
    let creds = Credentials::from_pem(&ca.cert, &leaf).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let batches = Arc::new(Mutex::new(Vec::new()));
    let times = batches.clone();
    let (tx, rx) = tokio::sync::watch::channel(0);
    let mesh = Mesh::start(MeshParams {
        region: region.into(),
        cfg: MeshConfig {
            listen,
            peers: peers.iter().map(|(r, a)| PeerConfig { region: (*r).into(), addr: a.to_string() }).collect(),
            tls: TlsFiles { ca_cert: "unused".into(), cert: "unused".into(), key: "unused".into() },
            reconnect_ms: 50,
            upstream: None,
            io_thread: Default::default(),
        },
        role: tickmesh_replicate::Role::All,
        policy: Arc::new(tickmesh_replicate::AllowAll),
        audit: Arc::new(tickmesh_replicate::NoAudit),
        creds,
        store: Arc::new(store) as Arc<dyn RecordStore>,
        home: home.iter().map(|s| SourceId::new(s).unwrap()).collect(),
        appended: rx,
        inbound: Arc::new(move |d: tickmesh_replicate::Delivery| {
            times.lock().unwrap().push((d.sent_ns, d.received_ns));
            let mut g = sink.lock().unwrap();
            for r in frame::Frames::new(&d.frames) {
                g.push(r.unwrap().seq());
            }
        }),
    })
    .unwrap();
    Node { _mesh: mesh, got, batches, _appended: tx }
}

fn wait_for(n: usize, got: &Mutex<Vec<u64>>, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let len = got.lock().unwrap().len();
        if len >= n {
            return len;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    got.lock().unwrap().len()
}

#[test]
fn only_a_configured_region_with_our_ca_receives_records() {
    let ca = tls::generate_ca("test CA").unwrap();
    let foreign = tls::generate_ca("someone else's CA").unwrap();
    let store = Arc::new(MemoryStore::default());
    for seq in 1..=100 {
        store.append(&testing::trade(seq, "AAPL", "1", "1", Side::Buy).to_bytes()).unwrap();
    }
    let (a_addr, b_addr, x_addr, c_addr) = (free_udp(), free_udp(), free_udp(), free_udp());
    let started_ns = tickmesh_codec::now_ns();
    // A serves its home source TEST.SRC and knows peers b and x.
    let _a = start("a", &ca, a_addr, &[("b", b_addr), ("x", x_addr)], store, &["TEST.SRC"]);
    let b = start("b", &ca, b_addr, &[("a", a_addr)], Arc::new(MemoryStore::default()), &[]);
    assert_eq!(wait_for(100, &b.got, Duration::from_secs(20)), 100, "the configured peer receives every record");
    assert_eq!(*b.got.lock().unwrap(), (1..=100).collect::<Vec<u64>>(), "in order, once");
    // Each batch carries when the sender made it (its clock; one machine here): the mesh
    // hop is receipt minus that, not minus the records' ts_ingest (November 2023 in these
    // test records, which would make the hop years long).
    let batches = b.batches.lock().unwrap().clone();
    assert!(!batches.is_empty());
    for (sent, received) in batches {
        assert!(sent >= started_ns, "batch stamped {sent}, before the mesh started at {started_ns}");
        assert!(received >= sent, "received {received} before sent {sent}");
        assert!(received - sent < 60_000_000_000, "a mesh hop of {} ns", received - sent);
    }
    // Region x, but from a foreign CA: the TLS handshake fails.
    let x = start("x", &foreign, x_addr, &[("a", a_addr)], Arc::new(MemoryStore::default()), &[]);
    // Region c from our CA, but c is not a configured peer of a.
    let c = start("c", &ca, c_addr, &[("a", a_addr)], Arc::new(MemoryStore::default()), &[]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(x.got.lock().unwrap().is_empty(), "a foreign CA's certificate got records");
    assert!(c.got.lock().unwrap().is_empty(), "an unconfigured region got records");
}
