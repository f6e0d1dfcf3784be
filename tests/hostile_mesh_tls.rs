//! The mesh port of a running region refuses peers that are not peers: a certificate from a
//! foreign CA, an expired one from the right CA, and one from the right CA naming a region
//! that is not configured. Each refusal is logged. A certificate of the right CA naming a
//! configured peer completes the handshake (the control that the refusals mean something).
//!
//! The test holds the CA key: it runs a two-region demo once to lay out the state directory,
//! then replaces the mesh PKI with its own CA and restarts `us-east-1` alone on it.
//!
//! Then a peer with a *valid* certificate sends forged mesh messages (a hello naming another
//! region, a hello claiming this region's home source, a batch nobody asked for): each
//! closes that connection with the reason, is logged with the peer's name, and the node goes
//! on. The message fuzzing and the full list of forgeries are sans-I/O, in
//! `replicate/tests/fuzz_mesh.rs` and `replicate/tests/hostile_peer.rs`.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::Demo;
use tickmesh_replicate::tls::{self, CaPem, Credentials, LeafPem};

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A leaf for `region` signed by `ca`, valid only in 2020 (long expired).
fn expired_leaf(ca: &CaPem, region: &str) -> LeafPem {
    let ca_key = rcgen::KeyPair::from_pem(&ca.key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![region.to_owned()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, region);
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 12, 31);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    LeafPem { cert: cert.pem(), key: key.serialize_pem() }
}

/// Dials the mesh port with `leaf` (trusting `trust` for the server) and returns how the
/// connection ended within a few seconds: `Err(reason)` if refused, `Ok(())` if it stayed up.
async fn dial(addr: std::net::SocketAddr, trust: &str, leaf: &LeafPem) -> Result<(), String> {
    let creds = Credentials::from_pem(trust, leaf).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(creds.client_config().unwrap());
    let connecting = ep.connect(addr, "us-east-1").map_err(|e| e.to_string())?;
    let conn = match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Err(_) => return Err("handshake timed out".into()),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(c)) => c,
    };
    // With TLS 1.3 the server checks the client certificate after the client considers the
    // handshake done: a refusal closes the connection right after.
    match tokio::time::timeout(Duration::from_secs(3), conn.closed()).await {
        Ok(reason) => Err(reason.to_string()),
        Err(_) => Ok(()),
    }
}

/// A mesh message: `u32` LE length of type and body, `u8` type, body.
fn mesh_message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut b = (body.len() as u32 + 1).to_le_bytes().to_vec();
    b.push(kind);
    b.extend_from_slice(body);
    b
}

/// Connects with a valid `leaf`, writes `streams` (each on a new stream, in order) and
/// returns the application close reason the node sent (or why there was none).
async fn forge(addr: std::net::SocketAddr, trust: &str, leaf: &LeafPem, streams: &[Vec<u8>]) -> String {
    let creds = Credentials::from_pem(trust, leaf).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(creds.client_config().unwrap());
    let conn = ep.connect(addr, "us-east-1").unwrap().await.expect("a valid certificate connects");
    // Kept open until the end: a stream dropped is a stream finished, which the node
    // would rightly treat as the end of the control stream.
    let mut open = Vec::new();
    for bytes in streams {
        let Ok((mut send, recv)) = conn.open_bi().await else { break };
        if send.write_all(bytes).await.is_err() {
            break;
        }
        open.push((send, recv));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match tokio::time::timeout(Duration::from_secs(10), conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => String::from_utf8_lossy(&c.reason).into_owned(),
        Ok(other) => format!("closed otherwise: {other}"),
        Err(_) => "still open after 10 s".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_refuses_foreign_expired_and_misnamed_certificates() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path();
    drop(Demo::start_in(state, &["--regions", "us-east-1,eu-west-1"], None));

    // Our own CA for the mesh of us-east-1.
    let ca = tls::generate_ca("hostile-test-ca").unwrap();
    let node_leaf = tls::issue(&ca, "us-east-1", 30).unwrap();
    let pki = state.join("pki");
    std::fs::write(pki.join("ca.pem"), &ca.cert).unwrap();
    std::fs::write(pki.join("us-east-1.pem"), &node_leaf.cert).unwrap();
    std::fs::write(pki.join("us-east-1.key"), &node_leaf.key).unwrap();
    let cfg_path = state.join("us-east-1").join("node.toml");
    let cfg: toml::Value = toml::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let mesh: std::net::SocketAddr = cfg["mesh"]["listen"].as_str().unwrap().parse().unwrap();
    let http: std::net::SocketAddr = cfg["gateway"]["listen"].as_str().unwrap().parse().unwrap();
    let log = state.join("us-east-1").join("mesh-tls.log");
    let out = std::fs::File::create(&log).unwrap();
    let _node = Node(
        Command::new(env!("CARGO_BIN_EXE_tickmesh"))
            .arg("node")
            .arg("--config")
            .arg(&cfg_path)
            .env("TICKMESH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while tickmesh::http_get::get(http, "/healthz", Duration::from_secs(1)).is_err() {
        assert!(Instant::now() < deadline, "node did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let foreign = tls::generate_ca("evil-ca").unwrap();
    let cases: Vec<(&str, LeafPem)> = vec![
        ("foreign CA", tls::issue(&foreign, "eu-west-1", 30).unwrap()),
        ("expired", expired_leaf(&ca, "eu-west-1")),
        ("names an unknown region", tls::issue(&ca, "mars-1", 30).unwrap()),
    ];
    for (what, leaf) in &cases {
        let r = dial(mesh, &ca.cert, leaf).await;
        eprintln!("{what}: {r:?}");
        assert!(r.is_err(), "a peer whose certificate {what} was let in");
    }
    // Control: a certificate of our CA for a configured peer gets through the handshake.
    let good = tls::issue(&ca, "eu-west-1", 30).unwrap();
    let r = dial(mesh, &ca.cert, &good).await;
    eprintln!("valid eu-west-1 certificate: {r:?}");
    // The mesh protocol may still close it (an application close), never TLS.
    let tls_refusal = r.as_ref().is_err_and(|e| e.contains("cryptographic") || e.contains("certificate"));
    assert!(!tls_refusal, "a valid peer certificate was refused: {r:?}");
    // The node's own region is let in too, by design: that is how a region's gateway-role
    // nodes pull from its ingest node (ARCHITECTURE.md, Roles); same-region links are not
    // cross-region transfers.
    let own = tls::issue(&ca, "us-east-1", 30).unwrap();
    let r = dial(mesh, &ca.cert, &own).await;
    let tls_refusal = r.as_ref().is_err_and(|e| e.contains("cryptographic") || e.contains("certificate"));
    assert!(!tls_refusal, "a same-region (gateway node) certificate was refused: {r:?}");

    // Every refusal is in the log.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let refusals = text.lines().filter(|l| l.contains("refused")).count();
    assert!(refusals >= 3, "refusals are not logged ({refusals} lines):\n{text}");

    // Forged messages from a peer with a valid certificate.
    let home = cfg["feeds"][0]["source"].as_str().unwrap().to_owned();
    let hello = |region: &str, home: &[&str]| {
        let body = serde_json::json!({"version": tickmesh_replicate::link::VERSION, "region": region, "role": "all", "home": home});
        mesh_message(1, body.to_string().as_bytes())
    };
    let mut batch = vec![home.len() as u8];
    batch.extend_from_slice(home.as_bytes());
    batch.extend_from_slice(&0u64.to_le_bytes());
    let cases: Vec<(&str, Vec<Vec<u8>>, String)> = vec![
        (
            "a hello naming another region",
            vec![hello("ap-southeast-1", &[])],
            "says it is region ap-southeast-1".into(),
        ),
        (
            "a hello claiming this region's home source",
            vec![hello("eu-west-1", &[home.as_str()])],
            format!("claims to be home to {home}"),
        ),
        (
            "a batch on a stream nobody asked for",
            vec![hello("eu-west-1", &[]), mesh_message(6, &batch)],
            "unexpected message type 6".into(),
        ),
    ];
    for (what, streams, want) in &cases {
        let reason = forge(mesh, &ca.cert, &good, streams).await;
        eprintln!("{what}: closed with {reason:?}");
        assert!(reason.starts_with("peer eu-west-1: ") && reason.contains(want.as_str()), "{what}: {reason}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    for (what, _, want) in &cases {
        assert!(
            text.lines()
                .any(|l| l.contains("mesh protocol error") && l.contains("eu-west-1") && l.contains(want.as_str())),
            "{what} is not logged with the peer's name:\n{text}"
        );
    }
    // The node is unharmed.
    let (status, _) = tickmesh::http_get::get(http, "/healthz", Duration::from_secs(5)).unwrap();
    assert_eq!(status, 200);
}
