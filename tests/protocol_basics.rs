//! Protocol v1 basics against one real region process: replies, error codes, heartbeats,
//! authentication before the upgrade, HTTP endpoints, pinned worker threads.

mod support;

use serde_json::json;
use std::time::Duration;
use support::{connect, next_json, request, Demo};

fn addr(demo: &Demo) -> std::net::SocketAddr {
    demo.regions[0].http_url.trim_start_matches("http://").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_errors_and_heartbeats_follow_the_protocol() {
    let demo = Demo::start(&["--regions", "us-east-1", "--rate", "200"]);
    let r = &demo.regions[0];
    let (mut ws, hello) = connect(&r.ws_url, &demo.user_token, "").await;
    assert_eq!(hello["heartbeat_ms"], 1000);
    assert!(hello["session"].as_str().is_some_and(|s| !s.is_empty()));

    let pong = request(&mut ws, json!({"op":"ping","id":3})).await;
    assert_eq!(pong["type"], "pong");
    assert!(pong["ts"].as_u64().unwrap() > 1_600_000_000_000_000_000);

    let e = request(&mut ws, json!({"op":"subscribe","id":1,"channels":["tradez"],"symbols":["AAPL"]})).await;
    assert_eq!(
        e,
        json!({"type":"error","id":1,"code":"unknown_channel",
        "message":"channel 'tradez' does not exist; use one of trades, quotes, book, status, orders"})
    );
    let e = request(&mut ws, json!({"op":"subscribe","id":2,"channels":["trades"],"symbols":["NOPE"]})).await;
    assert_eq!(e["code"], "unknown_symbol");
    let e = request(&mut ws, json!({"op":"jump","id":4})).await;
    assert_eq!(e["code"], "unknown_op");
    let e = request(&mut ws, json!({"id":5})).await;
    assert_eq!(e["code"], "bad_request");
    support::send_text(&mut ws, "{not json").await;
    let e = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(e["code"], "bad_request");
    assert!(e.get("id").is_none(), "no id key when none could be read: {e}");

    let ok = request(&mut ws, json!({"op":"subscribe","id":6,"channels":["trades"],"symbols":["AAPL","MS*"]})).await;
    assert_eq!(ok, json!({"type":"subscribed","id":6,"channels":["trades"],"symbols":["AAPL","MS*"]}));
    // Only subscribed symbols arrive, and a heartbeat reports positions for the source.
    let mut got_trade = false;
    let mut got_heartbeat = false;
    for _ in 0..2000 {
        let v = next_json(&mut ws, Duration::from_secs(3)).await.expect("stream continues");
        match v["type"].as_str().unwrap() {
            "trade" => {
                let sym = v["sym"].as_str().unwrap();
                assert!(sym == "AAPL" || sym.starts_with("MS"), "unsubscribed symbol {sym}");
                got_trade = true;
            }
            "heartbeat" => {
                assert!(v["positions"]["SYN.USE1"].as_u64().unwrap() > 0, "{v}");
                got_heartbeat = true;
            }
            other => panic!("unexpected message type {other}: {v}"),
        }
        if got_trade && got_heartbeat {
            break;
        }
    }
    assert!(got_trade && got_heartbeat);
    let un = request(&mut ws, json!({"op":"unsubscribe","id":7,"channels":["trades"],"symbols":["AAPL","MS*"]})).await;
    assert_eq!(un["type"], "unsubscribed");
    // After unsubscribing, only heartbeats.
    for _ in 0..3 {
        let v = next_json(&mut ws, Duration::from_secs(3)).await.unwrap();
        if v["type"] == "trade" {
            // One may have been queued before the unsubscribe was processed; after the
            // next heartbeat none may follow.
            continue;
        }
        assert_eq!(v["type"], "heartbeat");
    }
    let v = next_json(&mut ws, Duration::from_millis(1500)).await.unwrap();
    assert_eq!(v["type"], "heartbeat", "data after unsubscribe: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_before_the_upgrade_and_http_endpoints_answer() {
    let demo = Demo::start(&["--regions", "us-east-1", "--rate", "100"]);
    let r = &demo.regions[0];
    for (token, code) in [("", "missing_token"), ("not.a.jwt", "bad_token")] {
        let url = if token.is_empty() { r.ws_url.clone() } else { format!("{}?token={token}", r.ws_url) };
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401);
                let body: serde_json::Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"]["code"], code, "{body}");
            }
            other => panic!("expected 401, got {other:?}"),
        }
    }
    let a = addr(&demo);
    let (code, body) = tickmesh::http_get::get(a, "/healthz", Duration::from_secs(2)).unwrap();
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (code, body) = tickmesh::http_get::get(a, "/readyz", Duration::from_secs(2)).unwrap();
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["ready"], true);
    let (code, body) = tickmesh::http_get::get(a, "/metrics", Duration::from_secs(2)).unwrap();
    assert_eq!(code, 200);
    let names: Vec<&str> = body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    assert!(names.iter().any(|l| l.starts_with("tickmesh_process_resident_memory_bytes")));
    assert!(names.iter().any(|l| l.starts_with("tickmesh_node_records_total")));
    for l in names {
        assert!(l.starts_with("tickmesh_"), "metric without the tickmesh_ prefix: {l}");
    }
    let (code, body) = tickmesh::http_get::get(a, "/nope", Duration::from_secs(2)).unwrap();
    assert_eq!(code, 404);
    assert!(body.contains("\"code\":\"not_found\""));

    // One worker thread per gateway core, named gw-core-N. The feeds' threads start once
    // the peers have reported the home sources' positions (the home gate, at most ~3 s).
    let task_dir = format!("/proc/{}/task", r.pid);
    let threads = || -> Vec<String> {
        std::fs::read_dir(&task_dir)
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|s| s.trim().to_owned())
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut names = threads();
    while !names.iter().any(|n| n.starts_with("ingest-")) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        names = threads();
    }
    assert!(names.iter().any(|n| n == "gw-core-0"), "threads: {names:?}");
    assert!(names.iter().any(|n| n == "hub"), "threads: {names:?}");
    assert!(names.iter().any(|n| n.starts_with("ingest-")), "threads: {names:?}");
}

/// The first `seq` of `src` a fresh subscription sees.
async fn first_seq(demo: &Demo, src: &str) -> u64 {
    let (mut ws, _) = connect(&demo.regions[0].ws_url, &demo.user_token, "").await;
    request(&mut ws, json!({"op":"subscribe","id":1,"channels":["trades","quotes"],"symbols":"*"})).await;
    loop {
        let v = next_json(&mut ws, Duration::from_secs(5)).await.expect("records flow");
        if v["src"] == src {
            return v["seq"].as_u64().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_region_continues_its_sequence() {
    let keep = tempfile::tempdir().unwrap();
    let demo = Demo::start_in(keep.path(), &["--regions", "us-east-1", "--rate", "500"], None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = first_seq(&demo, "SYN.USE1").await;
    drop(demo); // SIGTERM: a clean stop
    let demo = Demo::start_in(keep.path(), &["--regions", "us-east-1", "--rate", "500"], None);
    let after = first_seq(&demo, "SYN.USE1").await;
    assert!(after > before, "seq {after} after the restart does not continue past {before}");
}
