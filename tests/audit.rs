//! The audit trail through the binary: `tickmesh audit verify | show` and `GET /v1/audit`.

mod support;

use std::process::Command;
use std::time::Duration;
use tickmesh_replicate::{AuditLog, DataClass, Decision, Direction, Transfer, TransferAudit};

fn transfer(i: u64) -> Transfer {
    let deny = i % 3 == 2;
    Transfer {
        src: if deny { "USR.EUW1".into() } else { "SYN.EUW1".into() },
        first_seq: i * 100 + 1,
        last_seq: i * 100 + 100,
        count: 100,
        bytes: 9_600,
        from: "eu-west-1".into(),
        to: "us-east-1".into(),
        class: if deny { DataClass::Pii } else { DataClass::MarketData },
        dir: Direction::Send,
        decision: if deny { Decision::Deny("pii stays home".into()) } else { Decision::Allow },
    }
}

fn tickmesh(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tickmesh")).args(args).output().expect("run tickmesh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn audit_verify_exits_0_on_an_intact_log_and_1_with_the_broken_index() {
    let state = tempfile::tempdir().unwrap();
    let log = AuditLog::open(&state.path().join("audit")).unwrap();
    for i in 0..6 {
        log.record(transfer(i));
    }
    log.flush();
    drop(log);
    let dir = state.path().to_str().unwrap();
    let file = state.path().join("audit/audit.jsonl");
    let file = file.to_str().unwrap();

    let (code, out, err) = tickmesh(&["audit", "verify", "--state-dir", dir]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("intact, 6 entries, head index 5"), "{out}");
    let (code, out, _) = tickmesh(&["audit", "verify", "--file", file]);
    assert_eq!(code, 0);
    assert!(out.contains("intact"), "{out}");

    let (code, out, err) = tickmesh(&["audit", "show", "--state-dir", dir, "--decision", "deny"]);
    assert_eq!(code, 0, "{err}");
    let idx: Vec<u64> =
        out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["index"].as_u64().unwrap()).collect();
    assert_eq!(idx, vec![2, 5]);

    // Edit one field of entry 3: exit 1, index 3 named.
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[3] = lines[3].replace("\"to\":\"us-east-1\"", "\"to\":\"sa-east-1\"");
    std::fs::write(file, lines.join("\n") + "\n").unwrap();
    let (code, _, err) = tickmesh(&["audit", "verify", "--state-dir", dir]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("BROKEN at index 3 (line 4)") && err.contains("edited"), "{err}");
    assert!(err.contains("what to do:"), "{err}");

    // Restore, then cut the last two lines: the head anchor catches it.
    std::fs::write(file, &text).unwrap();
    assert_eq!(tickmesh(&["audit", "verify", "--file", file]).0, 0);
    let cut: String = text.lines().take(4).map(|l| format!("{l}\n")).collect();
    std::fs::write(file, cut).unwrap();
    let (code, _, err) = tickmesh(&["audit", "verify", "--file", file]);
    assert_eq!(code, 1);
    assert!(err.contains("BROKEN at index 4") && err.contains("tail"), "{err}");

    // No log there: a clear error.
    let (code, _, err) = tickmesh(&["audit", "verify", "--state-dir", "/nonexistent/tickmesh"]);
    assert_eq!(code, 1);
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn v1_audit_needs_an_admin_token() {
    let demo = support::Demo::start(&["--regions", "us-east-1"]);
    let addr: std::net::SocketAddr = demo.regions[0].http_url.trim_start_matches("http://").parse().unwrap();
    let get = |path: &str| tickmesh::http_get::get(addr, path, Duration::from_secs(10)).unwrap();
    let (code, body) = get("/v1/audit");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let (code, body) = get(&format!("/v1/audit?token={}", demo.user_token));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("forbidden"), "{body}");
    let (code, body) = get(&format!("/v1/audit?token={}&limit=5&class=pii", demo.admin_token));
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["region"], "us-east-1");
    assert!(v["entries"].is_array(), "{body}");
    let (code, body) = get(&format!("/v1/audit?token={}&colour=red", demo.admin_token));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("colour"), "{body}");
}
