//! Real captures through the binary: `tickmesh ingest` prints protocol-shaped JSON lines
//! with books that never cross, and `tickmesh demo --feed FORMAT:FILE` streams a replayed
//! capture to WebSocket clients.

mod support;

use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;
use support::{connect, next_json, request, Demo};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data");

fn data(rel: &str) -> String {
    let p = format!("{DATA}/{rel}");
    assert!(std::path::Path::new(&p).exists(), "capture {p} is missing; the tests read ../shared/data in place");
    p
}

fn best(levels: &Value) -> Option<f64> {
    levels.as_array()?.first().map(|l| l[0].as_str().unwrap().parse::<f64>().unwrap())
}

#[test]
fn ingest_prints_sequenced_records_and_books_that_never_cross() {
    for (format, file) in [("coinbase", "crypto/COINBASE.ws.28.0"), ("binance", "crypto/BINANCE.ws.1.0")] {
        let out = Command::new(env!("CARGO_BIN_EXE_tickmesh"))
            .args(["ingest", &data(file), "--format", format, "--emit", "jsonl", "--book"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let mut last_seq = 0;
        let (mut trades, mut states) = (0, 0);
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{format}: bad line {line}: {e}"));
            let seq = v["seq"].as_u64().unwrap();
            match v["type"].as_str().unwrap() {
                "book_state" => {
                    assert_eq!(seq, last_seq, "book_state follows its record");
                    states += 1;
                    if let (Some(b), Some(a)) = (best(&v["bids"]), best(&v["asks"])) {
                        assert!(b < a, "{format}: crossed book after seq {seq}: {line}");
                    }
                }
                t => {
                    assert_eq!(seq, last_seq + 1, "{format}: records are numbered 1, 2, 3, …");
                    last_seq = seq;
                    if t == "trade" {
                        trades += 1;
                        assert!(["buy", "sell", "none"].contains(&v["side"].as_str().unwrap()));
                        v["px"].as_str().unwrap().parse::<f64>().unwrap();
                    }
                }
            }
        }
        assert!(trades > 0 && states > 0, "{format}: {trades} trades, {states} book states");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_tickmesh"))
        .args(["ingest", &data("crypto/BINANCE.ws.1.0"), "--format", "nasdaq"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("is not one of itch"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_streams_a_replayed_capture() {
    let feed = format!("coinbase:{}", data("crypto/COINBASE.ws.28.0"));
    let demo = Demo::start(&["--regions", "us-east-1", "--feed", &feed, "--rate", "2000"]);
    let (mut ws, _) = connect(&demo.regions[0].ws_url, &demo.user_token, "").await;
    let r = request(&mut ws, json!({"op":"subscribe","id":1,"channels":"*","symbols":"*"})).await;
    assert_eq!(r["type"], "subscribed");
    let mut kinds = std::collections::BTreeSet::new();
    for _ in 0..3000 {
        let Some(v) = next_json(&mut ws, Duration::from_secs(3)).await else { break };
        if v["src"] == "CB.USE1" {
            kinds.insert(v["type"].as_str().unwrap().to_owned());
        }
        if kinds.len() >= 3 {
            break;
        }
    }
    assert!(kinds.contains("book") && kinds.contains("quote"), "types from the replayed capture: {kinds:?}");
}
