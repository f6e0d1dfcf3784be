//! The PostgreSQL backend of the user-data tier against a real server: the same
//! conformance check as the embedded store, data minimization in the table itself, and a
//! node configured with `userdata.backend = "postgres"` serving `/v1/users`.
//!
//! Each test starts a private server (initdb in a temporary directory, trust auth, listening
//! on 127.0.0.1 on a free port, its socket in the same directory) and stops it on drop. The
//! server binaries come from Debian's `postgresql` package: when they are missing the test
//! fails and says to run scripts/install-deps.sh (CI runs it), it does not skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tickmesh::tiers::userdata::{conformance, PgStore, UserStore};

/// A private PostgreSQL server in a temporary directory.
struct PgServer {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    _dir: tempfile::TempDir,
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb` and `pg_ctl`.
fn pg_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((v, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries (initdb, pg_ctl) are not under /usr/lib/postgresql/*/bin; \
             run scripts/install-deps.sh (it installs Debian's postgresql package)"
        ),
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl PgServer {
    fn start() -> PgServer {
        let bin = pg_bin();
        // initdb refuses to run as root: the server runs as Debian's `postgres` user then,
        // in a directory under /tmp (which that user can reach, unlike a root-only TMPDIR).
        let as_postgres = is_root();
        let dir = if as_postgres { tempfile::tempdir_in("/tmp").unwrap() } else { tempfile::tempdir().unwrap() };
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        std::fs::create_dir(&sock).unwrap();
        if as_postgres {
            let st = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().unwrap();
            assert!(st.success(), "chown of the server directory to postgres failed");
        }
        // A free port: bind port 0, read it, let it go, hand it to the server.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = PgServer { bin, data: data.clone(), port, as_postgres, _dir: dir };
        server.run(
            "initdb",
            &["-D", path(&data), "-A", "trust", "-U", "tickmesh", "-E", "UTF8", "--no-sync", "--no-instructions"],
        );
        let opts = format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", sock.display());
        let log = server._dir.path().join("server.log");
        server.run("pg_ctl", &["-D", path(&data), "-l", path(&log), "-o", &opts, "-w", "-t", "120", "start"]);
        server
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self.command(tool).args(args).output().unwrap_or_else(|e| panic!("running {tool}: {e}"));
        let log = std::fs::read_to_string(self._dir.path().join("server.log")).unwrap_or_default();
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}\nserver log:\n{log}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=tickmesh dbname=postgres connect_timeout=10", self.port)
    }

    fn sql(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).expect("connect to the test server")
    }

    /// The cluster's data directory.
    fn data_dir(&self) -> &Path {
        &self.data
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").args(["-D", path(&self.data), "-m", "immediate", "-w", "stop"]).output();
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

#[test]
fn pg_store_passes_the_same_conformance_check_as_redb() {
    let pg = PgServer::start();
    let store = PgStore::connect(&pg.url()).expect("PgStore connects to the test server");
    conformance(&store).unwrap_or_else(|e| panic!("PgStore broke the UserStore contract: {e}"));

    // Data minimization in the table itself: one row per user with the id, the home region
    // and the profile's own fields, nothing else.
    let mut sql = pg.sql();
    let cols: Vec<String> = sql
        .query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_name = 'tickmesh_users' ORDER BY ordinal_position",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(cols, ["id", "home", "profile"]);
    let alice = tickmesh::tiers::userdata::UserProfile {
        id: "alice".into(),
        home: "us-east-1".into(),
        name: Some("Alice Example".into()),
        email: Some("alice@example.com".into()),
        entitlements: Default::default(),
        preferences: Default::default(),
    };
    store.put(&alice).unwrap();
    let text: String = sql.query_one("SELECT profile FROM tickmesh_users WHERE id = 'alice'", &[]).unwrap().get(0);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["email", "entitlements", "home", "id", "name", "preferences"], "stored fields: {text}");
    // A second connection (another node of the region) sees the same users.
    let other = PgStore::connect(&pg.url()).unwrap();
    assert_eq!(other.get("alice").unwrap(), Some(alice));
    assert!(store.delete("alice").unwrap());
    let n: i64 = sql.query_one("SELECT count(*) FROM tickmesh_users", &[]).unwrap().get(0);
    assert_eq!(n, 0, "the row is erased");
    assert!(pg.data_dir().join("PG_VERSION").exists());
}

#[test]
fn pg_store_explains_an_unreachable_server() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = PgStore::connect(&format!("host=127.0.0.1 port={port} user=x dbname=x connect_timeout=5")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("check userdata.postgres_url and that the server runs"), "{msg}");
}

fn mint(secret: &[u8], sub: &str, roles: &[&str]) -> String {
    use tickmesh_gateway::auth::{Claims, Grant};
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = Claims {
        sub: sub.into(),
        exp: now + 600,
        home: Some("us-east-1".into()),
        channels: Grant::List(vec!["trades".into()]),
        symbols: Grant::List(vec!["*".into()]),
        roles: roles.iter().map(|r| r.to_string()).collect(),
    };
    tickmesh_gateway::auth::mint_hs256(secret, &claims).unwrap()
}

#[test]
fn a_node_with_the_postgres_backend_serves_users() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("jwt.key");
    std::fs::write(&key, "pg-test-secret").unwrap();
    let cfg: tickmesh::config::NodeConfig = toml::from_str(&format!(
        "region = \"us-east-1\"\nstate_dir = {:?}\n[gateway]\nlisten = \"127.0.0.1:0\"\ncores = [0]\n\
         [auth]\nhs256_key_files = [{:?}]\n[userdata]\nbackend = \"postgres\"\npostgres_url = {:?}\n",
        dir.path().join("state"),
        key,
        pg.url()
    ))
    .unwrap();
    let node = tickmesh::node::Node::start(cfg, tickmesh::metrics::Metrics::install()).expect("node starts");
    let addr = node.gateway_addr().unwrap();
    let admin = mint(b"pg-test-secret", "ops", &["admin"]);
    let alice_tok = mint(b"pg-test-secret", "alice", &[]);
    let call = |method: &str, path: &str, tok: &str, body: Option<&str>| -> (u16, serde_json::Value) {
        let (st, text) =
            tickmesh::http_get::request(addr, method, path, Some(tok), body, Duration::from_secs(20)).unwrap();
        (st, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    };
    let alice = r#"{"id":"alice","home":"us-east-1","name":"Alice Example","email":"alice@example.com",
        "entitlements":{"channels":["trades"],"symbols":["AAPL"]},"preferences":{"book_depth":"5"}}"#;
    let (st, body) = call("PUT", "/v1/users/alice", &admin, Some(alice));
    assert_eq!(st, 200, "{body}");
    let extra = r#"{"id":"alice","home":"us-east-1","ssn":"123-45-6789"}"#;
    let (st, body) = call("PUT", "/v1/users/alice", &admin, Some(extra));
    assert_eq!(st, 400, "a field no feature uses is refused: {body}");
    assert!(body["message"].as_str().unwrap().contains("ssn"), "{body}");
    let (st, prof) = call("GET", "/v1/users/alice", &alice_tok, None);
    assert_eq!(st, 200, "{prof}");
    assert_eq!(prof["email"], "alice@example.com");
    let (st, body) = call("PUT", "/v1/users/alice/preferences", &alice_tok, Some(r#"{"theme":"dark"}"#));
    assert_eq!(st, 200, "{body}");
    // The row in PostgreSQL is what the node wrote.
    let mut sql = pg.sql();
    let text: String = sql.query_one("SELECT profile FROM tickmesh_users WHERE id = 'alice'", &[]).unwrap().get(0);
    assert!(text.contains("\"theme\":\"dark\"") && !text.contains("ssn"), "{text}");
    let (st, view) = call("GET", "/v1/users/alice/view", &alice_tok, None);
    assert_eq!(st, 200, "{view}");
    assert!(view.get("email").is_none() && view.get("name").is_none(), "{view}");

    let (st, report) = call("DELETE", "/v1/users/alice", &admin, None);
    assert_eq!(st, 200, "{report}");
    assert_eq!(report["erased_at_home"], true, "{report}");
    let n: i64 = sql.query_one("SELECT count(*) FROM tickmesh_users", &[]).unwrap().get(0);
    assert_eq!(n, 0, "the profile row is erased");
    let (st, _) = call("GET", "/v1/users/alice", &admin, None);
    assert_eq!(st, 404);
    // Forgetting again is not an error: the erasure is on record, and it says so.
    let (st, again) = call("DELETE", "/v1/users/alice", &admin, None);
    assert_eq!(st, 200, "{again}");
    assert_eq!((again["erased_at_home"].as_bool(), again["already_erased"].as_bool()), (Some(false), Some(true)));
    let (st, body) = call("DELETE", "/v1/users/nobody", &admin, None);
    assert_eq!(st, 404, "a user never known is an error: {body}");
    node.shutdown();
}
