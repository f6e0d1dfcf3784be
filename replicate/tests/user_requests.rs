//! The user-data request channel on real sockets: a request reaches the home region's
//! handler and its answer comes back on the same mesh connections as the records; personal
//! data moves only toward its home region (refused, and audited, on both sides otherwise);
//! every message is in both regions' audit trails.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tickmesh_replicate::tls::{self, CaPem, Credentials, TlsFiles};
use tickmesh_replicate::{
    DataClass, EntryKind, MemoryStore, Mesh, MeshConfig, MeshParams, PeerConfig, RecordStore, RequestError,
    ResidencyConfig, ResidencyPolicy, Transfer, TransferAudit, UserDataRecord, UserMessage, UserRequestHandler,
};

#[derive(Default)]
struct Trail(Mutex<Vec<(EntryKind, UserDataRecord)>>);

impl TransferAudit for Trail {
    fn record(&self, _t: Transfer) {}
    fn record_user_data(&self, kind: EntryKind, ev: UserDataRecord) {
        self.0.lock().unwrap().push((kind, ev));
    }
}

/// The home region's handler: `view` answers the PII-free view, `profile` (a buggy
/// handler) tries to answer with personal data, `write_back` stores what it got.
struct Home(Mutex<Vec<serde_json::Value>>);

impl UserRequestHandler for Home {
    fn handle(&self, _peer: &str, req: UserMessage) -> UserMessage {
        let mut a = UserMessage {
            op: "ok".into(),
            class: DataClass::MarketData,
            fields: vec![],
            body: serde_json::Value::Null,
            ..req.clone()
        };
        match req.op.as_str() {
            "view" => {
                a.class = DataClass::MarketData;
                a.fields = vec!["preferences".into()];
                a.body = serde_json::json!({"preferences": {"theme": "dark"}});
            }
            "profile" => {
                a.class = DataClass::Pii;
                a.fields = vec!["email".into()];
                a.body = serde_json::json!({"email": "alice@example.com"});
            }
            _ => self.0.lock().unwrap().push(req.body.clone()),
        }
        a
    }
}

fn start(region: &str, ca: &CaPem, listen: SocketAddr, peer: (&str, SocketAddr), trail: Arc<Trail>) -> Mesh {
    let leaf = tls::issue(ca, region, 1).unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(0);
    std::mem::forget(_tx);
    Mesh::start(MeshParams {
        region: region.into(),
        cfg: MeshConfig {
            listen,
            peers: vec![PeerConfig { region: peer.0.into(), addr: peer.1.to_string() }],
            tls: TlsFiles { ca_cert: "unused".into(), cert: "unused".into(), key: "unused".into() },
            reconnect_ms: 50,
            upstream: None,
            io_thread: Default::default(),
        },
        role: tickmesh_replicate::Role::All,
        policy: Arc::new(ResidencyPolicy::new(&ResidencyConfig::regions_md())),
        audit: trail,
        creds: Credentials::from_pem(&ca.cert, &leaf).unwrap(),
        store: Arc::new(Arc::new(MemoryStore::default())) as Arc<dyn RecordStore>,
        home: vec![],
        appended: rx,
        inbound: Arc::new(|_| {}),
    })
    .unwrap()
}

fn msg(op: &str, class: DataClass, fields: &[&str], body: serde_json::Value) -> UserMessage {
    UserMessage {
        op: op.into(),
        user: "alice".into(),
        home: "us-east-1".into(),
        class,
        fields: fields.iter().map(|f| f.to_string()).collect(),
        body,
        error: None,
        code: None,
    }
}

#[test]
fn requests_reach_home_and_personal_data_never_leaves_it() {
    let ca = tls::generate_ca("test CA").unwrap();
    let free = || std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (a_addr, b_addr) = (free(), free());
    let (ta, tb) = (Arc::new(Trail::default()), Arc::new(Trail::default()));
    let home = start("us-east-1", &ca, a_addr, ("eu-west-1", b_addr), ta.clone());
    let away = start("eu-west-1", &ca, b_addr, ("us-east-1", a_addr), tb.clone());
    let stored = Arc::new(Home(Mutex::new(Vec::new())));
    home.set_user_handler(stored.clone());
    let h = away.handle();
    let t = Duration::from_secs(10);

    // The view, once the link is up (poll: the mesh dials in the background).
    let deadline = Instant::now() + Duration::from_secs(30);
    let view = loop {
        match h.user_request("us-east-1", msg("view", DataClass::MarketData, &[], serde_json::json!({})), t) {
            Ok(v) => break v,
            Err(RequestError::NotConnected(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("view request failed: {e}"),
        }
    };
    assert_eq!((view.op.as_str(), &view.body["preferences"]["theme"]), ("ok", &serde_json::json!("dark")));

    // Personal data toward its home: allowed (a contact update written back).
    let wb = msg("write_back", DataClass::Pii, &["email"], serde_json::json!({"email": "new@example.com"}));
    assert_eq!(h.user_request("us-east-1", wb, t).unwrap().op, "ok");
    assert_eq!(stored.0.lock().unwrap().len(), 1);

    // Personal data away from home: the home region will not send it.
    let err = h.user_request("us-east-1", msg("profile", DataClass::MarketData, &[], serde_json::json!({})), t);
    assert!(matches!(&err, Err(RequestError::Refused(why)) if why.contains("may not send the answer")), "{err:?}");
    // Nor will the sender push a home user's PII to another region.
    let push = msg("write_back", DataClass::Pii, &["email"], serde_json::json!({"email": "x@example.com"}));
    let err = home.handle().user_request("eu-west-1", push, t);
    assert!(matches!(&err, Err(RequestError::Refused(_))), "{err:?}");
    assert_eq!(
        home.handle().user_request(
            "ap-southeast-1",
            msg("view", DataClass::MarketData, &[], serde_json::Value::Null),
            t
        ),
        Err(RequestError::NotConnected("ap-southeast-1".into()))
    );

    // Both trails hold every message, by pseudonym, with the decision.
    let a = ta.0.lock().unwrap().clone();
    let b = tb.0.lock().unwrap().clone();
    assert!(a
        .iter()
        .chain(&b)
        .all(|(k, e)| *k == EntryKind::UserTransfer && e.user != "alice" && e.user.starts_with("u:")));
    let denied = |t: &[(EntryKind, UserDataRecord)]| t.iter().filter(|(_, e)| e.decision == "deny").count();
    assert_eq!(denied(&a), 2, "home refused the PII answer and the PII push: {a:?}");
    assert_eq!(denied(&b), 0, "{b:?}");
    // The away region's trail: each request sent and each answer received.
    let ops: Vec<(&str, &str)> = b.iter().map(|(_, e)| (e.op.as_str(), e.from.as_str())).collect();
    assert!(ops.contains(&("view", "eu-west-1")) && ops.contains(&("ok", "us-east-1")), "{ops:?}");
    let pii_in = a.iter().filter(|(_, e)| e.class == DataClass::Pii && e.decision == "allow").count();
    assert_eq!(pii_in, 1, "the PII write-back arrived at home, audited once there: {a:?}");
    drop(away);
    drop(home);
}
