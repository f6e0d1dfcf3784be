//! The trading and user-data tiers across three regions: order updates reach only their
//! owner, only in the home region; profiles stay home, other regions get a PII-free view;
//! `forget` erases everywhere; and no region's files hold another region's personal data.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{connect, next_json, request, Demo};

fn token(demo: &Demo, sub: &str, home: &str, channels: &str, roles: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickmesh"))
        .args(["token", "--key", &demo.jwt_key_file, "--sub", sub, "--home", home, "--channels", channels])
        .args(["--roles", roles])
        .output()
        .expect("run tickmesh token");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn http(demo: &Demo, region: &str, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let r = demo.regions.iter().find(|r| r.region == region).expect("region");
    let addr = tickmesh::http_get::url_addr(&r.http_url).unwrap();
    let body = body.map(|b| b.to_string());
    let (status, text) =
        tickmesh::http_get::request(addr, method, path, Some(token), body.as_deref(), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{method} {path} on {region}: {e}"));
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn order(id: &str, user: &str, status: &str, filled: &str) -> Value {
    json!({"order_id": id, "user": user, "symbol": "AAPL", "status": status, "side": "buy",
           "px": "189.5", "qty": "100", "filled_qty": filled})
}

/// Every file under `dir`, with its bytes.
fn files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push((p, b));
            }
        }
    }
    out
}

fn holds(files: &[(std::path::PathBuf, Vec<u8>)], needle: &[u8]) -> Vec<std::path::PathBuf> {
    files.iter().filter(|(_, b)| b.windows(needle.len()).any(|w| w == needle)).map(|(p, _)| p.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_updates_and_profiles_stay_in_the_home_region() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = Demo::start_in(tmp.path(), &[], None);
    let admin = demo.admin_token.clone();
    let ws_use1 = demo.regions.iter().find(|r| r.region == "us-east-1").unwrap().ws_url.clone();

    // A profile is stored in its home region only.
    let alice = json!({"id": "alice", "home": "us-east-1", "name": "Alice Example", "email": "alice@example.com",
        "entitlements": {"channels": ["trades", "orders"], "symbols": ["*"]}, "preferences": {"book_depth": "10"}});
    // Created through another region: the profile (personal data) travels over the mesh
    // toward its home only, and is stored there only.
    let (st, body) = http(&demo, "eu-west-1", "PUT", "/v1/users/alice", &admin, Some(alice.clone()));
    assert_eq!(st, 200, "{body}");
    let (st, body) = http(&demo, "us-east-1", "PUT", "/v1/users/alice", &admin, Some(alice));
    assert_eq!(st, 200, "{body}");
    let (st, prof) = http(&demo, "us-east-1", "GET", "/v1/users/alice", &admin, None);
    assert_eq!((st, &prof["email"]), (200, &json!("alice@example.com")), "{prof}");
    let (st, page) = http(&demo, "eu-west-1", "GET", "/v1/audit?kind=user_transfer&class=pii", &admin, None);
    assert_eq!(st, 200, "{page}");
    let pii: Vec<(&str, &str, &str)> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["event"])
        .map(|e| (e["op"].as_str().unwrap(), e["to"].as_str().unwrap(), e["decision"].as_str().unwrap()))
        .collect();
    assert_eq!(pii, [("put", "us-east-1", "allow")], "personal data left eu-west-1 once, toward home: {page}");

    // Another region serves a view without the personal fields; the user's own token works.
    let alice_tok = token(&demo, "alice", "us-east-1", "orders", "");
    let (st, view) = http(&demo, "eu-west-1", "GET", "/v1/users/alice/view", &alice_tok, None);
    assert_eq!(st, 200, "{view}");
    assert_eq!(view["entitlements"]["channels"], json!(["trades", "orders"]));
    let text = view.to_string();
    assert!(!text.contains("alice@example.com") && !text.contains("Alice Example"), "{text}");
    let bob_tok = token(&demo, "bob", "us-east-1", "orders", "");
    let (st, _) = http(&demo, "eu-west-1", "GET", "/v1/users/alice/view", &bob_tok, None);
    assert_eq!(st, 403, "bob may not read alice's view");
    // Preferences written in eu-west-1 land in the home region.
    let (st, body) =
        http(&demo, "eu-west-1", "PUT", "/v1/users/alice/preferences", &alice_tok, Some(json!({"theme": "dark"})));
    assert_eq!(st, 200, "{body}");
    let (st, prof) = http(&demo, "us-east-1", "GET", "/v1/users/alice", &alice_tok, None);
    assert_eq!(st, 200, "{prof}");
    assert_eq!(prof["preferences"]["theme"], "dark");
    assert_eq!(prof["email"], "alice@example.com");

    // Order updates go to their owner only.
    let (mut a, _) = connect(&ws_use1, &alice_tok, "").await;
    let (mut b, _) = connect(&ws_use1, &bob_tok, "").await;
    for ws in [&mut a, &mut b] {
        let r = request(ws, json!({"op":"subscribe","id":1,"channels":["orders"],"symbols":"*"})).await;
        assert_eq!(r["type"], "subscribed", "{r}");
    }
    let trader = token(&demo, "paper-trader", "us-east-1", "", "trading");
    for (o, st) in [
        (order("A-1", "alice", "new", "0"), 202),
        (order("B-1", "bob", "new", "0"), 202),
        (order("A-1", "alice", "filled", "100"), 202),
        (order("X-1", "alice", "filled", "5"), 400),
    ] {
        let (got, body) = http(&demo, "us-east-1", "POST", "/v1/trading/orders", &trader, Some(o));
        assert_eq!(got, st, "{body}");
    }
    let (st, _) =
        http(&demo, "us-east-1", "POST", "/v1/trading/orders", &bob_tok, Some(order("B-2", "bob", "new", "0")));
    assert_eq!(st, 403, "a user token cannot publish order updates");

    let orders = |msgs: Vec<Value>| -> Vec<(String, String)> {
        msgs.iter()
            .filter(|m| m["type"] == "order")
            .map(|m| (m["order_id"].as_str().unwrap().to_owned(), m["status"].as_str().unwrap().to_owned()))
            .collect()
    };
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && (orders(got_a.clone()).len() < 2 || orders(got_b.clone()).is_empty()) {
        if let Some(m) = next_json(&mut a, Duration::from_millis(200)).await {
            got_a.push(m);
        }
        if let Some(m) = next_json(&mut b, Duration::from_millis(200)).await {
            got_b.push(m);
        }
    }
    // Anything still in flight arrives within a heartbeat or two.
    for _ in 0..5 {
        if let Some(m) = next_json(&mut a, Duration::from_millis(200)).await {
            got_a.push(m);
        }
        if let Some(m) = next_json(&mut b, Duration::from_millis(200)).await {
            got_b.push(m);
        }
    }
    assert_eq!(
        orders(got_a),
        vec![("A-1".to_owned(), "new".to_owned()), ("A-1".to_owned(), "filled".to_owned())],
        "alice sees her own orders, nothing else"
    );
    assert_eq!(orders(got_b), vec![("B-1".to_owned(), "new".to_owned())], "bob sees only his");

    // Orders are not served outside the home region.
    let ws_euw1 = demo.regions.iter().find(|r| r.region == "eu-west-1").unwrap().ws_url.clone();
    let (mut e, _) = connect(&ws_euw1, &alice_tok, "").await;
    let r = request(&mut e, json!({"op":"subscribe","id":1,"channels":["orders"],"symbols":"*"})).await;
    assert_eq!(r["code"], "home_region_unavailable", "{r}");

    // Until the forget, no other region ever holds alice's personal data: not in memory
    // (the view has no personal fields) and not in any file.
    for region in ["eu-west-1", "ap-southeast-1"] {
        let f = files(&demo.state_dir.join(region));
        for needle in [b"alice@example.com", &b"Alice Example"[..]] {
            let found = holds(&f, needle);
            assert!(found.is_empty(), "{region} holds {:?} in {found:?}", String::from_utf8_lossy(needle));
        }
    }

    // Forget, from the shell, sent to another region that passes it on to the home region
    // over the mesh: erased at home, every cached view dropped, each region reported.
    let (st, _) = http(&demo, "eu-west-1", "GET", "/v1/users/alice/view", &alice_tok, None);
    assert_eq!(st, 200);
    let euw1_url = demo.regions.iter().find(|r| r.region == "eu-west-1").unwrap().http_url.clone();
    let state_dir = demo.state_dir.clone();
    let forget = |user: &str, json: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tickmesh"));
        c.args(["admin", "forget-user", user, "--home", "us-east-1"]);
        if json {
            // Through another region's node, with a token.
            c.args(["--json", "--url", &euw1_url, "--token", &admin]);
        } else {
            // Straight to the home region named in the demo's configs, token minted there.
            c.arg("--state-dir").arg(&state_dir);
        }
        let out = c.output().expect("run tickmesh admin forget-user");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = forget("alice", true);
    assert!(ok, "{stdout}{stderr}");
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["erased_at_home"], true, "{report}");
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["fields"], json!(["name", "email", "entitlements", "preferences"]));
    assert_eq!(
        report["regions"],
        json!([{"region": "eu-west-1", "ok": true, "outcome": "cached view erased"},
               {"region": "ap-southeast-1", "ok": true, "outcome": "no cached view"}]),
        "{report}"
    );
    let (st, _) = http(&demo, "eu-west-1", "GET", "/v1/users/alice/view", &alice_tok, None);
    assert_eq!(st, 404, "after forget no region serves alice");
    let (st, _) = http(&demo, "us-east-1", "GET", "/v1/users/alice", &admin, None);
    assert_eq!(st, 404, "the profile is gone at home");
    // Idempotent: again, it says so and tells every region again.
    let (ok, stdout, stderr) = forget("alice", false);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("already erased") && stdout.contains("ap-southeast-1: no cached view"), "{stdout}");
    // A user nobody knows: a clear error, nothing erased.
    let (ok, _, stderr) = forget("nobody", false);
    assert!(!ok && stderr.contains("404") && stderr.contains("not known"), "{stderr}");

    // The erasure is in the home region's audit chain, by pseudonym, with the operator
    // and the regions told; each other region has its own entry.
    let (st, page) = http(&demo, "us-east-1", "GET", "/v1/audit?kind=erasure&user=alice", &admin, None);
    assert_eq!(st, 200, "{page}");
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "two forgets at home: {page}");
    assert_eq!(entries[0]["event"]["op"], "forget");
    assert_eq!(entries[0]["event"]["regions"], json!(["eu-west-1", "ap-southeast-1"]));
    assert!(entries[0]["event"]["outcome"].as_str().unwrap().starts_with("profile erased"), "{page}");
    assert!(entries[0]["event"]["operator"].as_str().is_some_and(|o| !o.is_empty()), "{page}");
    let (st, page) = http(&demo, "eu-west-1", "GET", "/v1/audit?kind=erasure&user=alice", &admin, None);
    assert_eq!(st, 200, "{page}");
    assert_eq!(page["entries"][0]["event"]["outcome"], "cached view erased", "{page}");
    // The view and the write-back crossed the mesh: audited on both sides.
    let (st, page) = http(&demo, "eu-west-1", "GET", "/v1/audit?kind=user_transfer&user=alice", &admin, None);
    assert_eq!(st, 200, "{page}");
    let ops: Vec<&str> = page["entries"].as_array().unwrap().iter().filter_map(|e| e["event"]["op"].as_str()).collect();
    assert!(ops.contains(&"view") && ops.contains(&"write_back"), "{ops:?}");

    // A region down during a forget: the home erases, the others are told, the command
    // fails naming the region and saying to run it again.
    let bob = json!({"id": "bob", "home": "us-east-1", "name": "Bob Example", "email": "bob@example.com"});
    let (st, body) = http(&demo, "us-east-1", "PUT", "/v1/users/bob", &admin, Some(bob));
    assert_eq!(st, 200, "{body}");
    demo.kill_region("ap-southeast-1");
    let (ok, stdout, stderr) = forget("bob", false);
    assert!(!ok, "{stdout}");
    assert!(stdout.contains("personal data erased") && stdout.contains("eu-west-1: no cached view"), "{stdout}");
    assert!(stdout.contains("ap-southeast-1: NOT REACHED"), "{stdout}");
    assert!(stderr.contains("ap-southeast-1 not reached") && stderr.contains("run the same command again"), "{stderr}");
    let (st, _) = http(&demo, "us-east-1", "GET", "/v1/users/bob", &admin, None);
    assert_eq!(st, 404, "bob is erased at home even though a region was down");

    // Let replication run a little, then stop every region and read their files.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let state = demo.state_dir.clone();
    drop(demo);
    let home = files(&state.join("us-east-1"));
    assert!(!holds(&home, b"ORD.USE1").is_empty(), "the home journal holds the orders source");
    for region in ["us-east-1", "eu-west-1", "ap-southeast-1"] {
        let f = files(&state.join(region));
        assert!(!f.is_empty(), "{region} wrote files");
        // No region (the home included) holds alice's personal data after the forget:
        // not the store, not a journal, not an audit log.
        for needle in [b"alice@example.com", &b"Alice Example"[..], b"bob@example.com", b"Bob Example"] {
            let found = holds(&f, needle);
            assert!(found.is_empty(), "{region} holds {:?} in {found:?}", String::from_utf8_lossy(needle));
        }
        // Audit logs name users only by pseudonym, and every chain verifies, erasures included.
        let audit: Vec<_> =
            f.iter().filter(|(p, _)| p.components().any(|c| c.as_os_str() == "audit")).cloned().collect();
        let found = holds(&audit, b"alice");
        assert!(found.is_empty(), "{region}'s audit trail names alice in {found:?}");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickmesh"))
            .args(["audit", "verify", "--state-dir"])
            .arg(state.join(region))
            .output()
            .unwrap();
        assert!(out.status.success(), "{region}: {}", String::from_utf8_lossy(&out.stderr));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickmesh"))
            .args(["audit", "show", "--kind", "erasure", "--user", "alice", "--state-dir"])
            .arg(state.join(region))
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && shown.lines().count() >= 2, "{region}: {shown}");
        if region == "us-east-1" {
            continue;
        }
        // The orders source may be named in the audit trail (a refused transfer), never
        // anywhere else: no journal segment or index holds its records.
        let data: Vec<_> =
            f.iter().filter(|(p, _)| !p.components().any(|c| c.as_os_str() == "audit")).cloned().collect();
        let found = holds(&data, b"ORD.USE1");
        assert!(found.is_empty(), "{region} holds the orders source in {found:?}");
    }
    // Every refused attempt to move it is in an audit trail, with the decision.
    let refusals: Vec<String> = ["us-east-1", "eu-west-1", "ap-southeast-1"]
        .iter()
        .filter_map(|r| std::fs::read_to_string(state.join(r).join("audit").join("audit.jsonl")).ok())
        .flat_map(|t| t.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| l.contains("\"ORD.USE1\"") && l.contains("deny"))
        .collect();
    assert!(!refusals.is_empty(), "no audit entry records the refused transfer of ORD.USE1");
    assert!(refusals.iter().all(|l| l.contains("\"pii\"")), "{refusals:?}");
}
