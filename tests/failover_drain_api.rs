//! Drain and undrain through the CLI and the admin HTTP API against real region processes:
//! `reconnect` naming the next region, 503 with `Retry-After` for new upgrades, readiness,
//! close 1012 after the grace period, role checks, and forwarding from another region.

mod support;

use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use support::{connect, Demo};

fn admin(args: &[&str]) -> (bool, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_tickmesh")).arg("admin").args(args).output().expect("run tickmesh admin");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn get(url: &str) -> (u16, String) {
    tickmesh::admin_api::http_request("GET", url, None, None, &[], Duration::from_secs(5)).await.unwrap()
}

/// The raw answer to a WebSocket upgrade (status line and headers included).
fn raw_upgrade(ws_url: &str, token: &str) -> String {
    use std::io::{Read, Write};
    let rest = ws_url.trim_start_matches("ws://");
    let (authority, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(authority).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path}?token={token} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_clients_then_closes_with_1012_and_undrain_reopens() {
    let demo = Demo::start(&["--regions", "us-east-1,eu-west-1", "--rate", "200"]);
    let (a, b) = (&demo.regions[0], &demo.regions[1]);
    let dir = demo.state_dir.to_str().unwrap().to_owned();
    let (mut ws, _) = connect(&a.ws_url, &demo.user_token, "").await;

    // A user token is not enough.
    let (ok, _, err) = admin(&["drain", "us-east-1", "--url", &a.http_url, "--token", &demo.user_token]);
    assert!(!ok && err.contains("403") && err.contains("admin"), "{err}");
    // An unknown region is named as such.
    let (ok, _, err) = admin(&["drain", "mars-1", "--url", &a.http_url, "--token", &demo.admin_token]);
    assert!(!ok && err.contains("404") && err.contains("us-east-1"), "{err}");

    // Drain A through B's URL: B passes it on.
    let (ok, out, err) =
        admin(&["drain", "us-east-1", "--url", &b.http_url, "--token", &demo.admin_token, "--grace-ms", "1500"]);
    assert!(ok, "drain failed: {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "draining", "{out}");
    assert_eq!(v["region"], "us-east-1", "{out}");

    // The connected client is told where to go, then closed with 1012 after the grace.
    let (reconnect, close) = support::reconnect_then_close(&mut ws, Duration::from_secs(10)).await;
    let r = reconnect.expect("a reconnect message");
    assert_eq!(r["reason"], "drain");
    assert_eq!(r["region"], "eu-west-1");
    assert_eq!(r["ws_url"], b.ws_url.as_str());
    assert_eq!(close, Some(Some(1012)));

    // New upgrades: 503, Retry-After, the next region in the body.
    let answer = raw_upgrade(&a.ws_url, &demo.user_token);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: "), "{answer}");
    assert!(answer.contains("\"draining\"") && answer.contains(&b.ws_url), "{answer}");
    let (status, body) = get(&format!("{}/readyz", a.http_url)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    let (_, regions) = get(&format!("{}/v1/regions", a.http_url)).await;
    let regions: Value = serde_json::from_str(&regions).unwrap();
    assert_eq!(regions[0]["state"], "draining", "{regions}");

    // Undrain with the demo's state dir (URL and token found there).
    let (ok, out, err) = admin(&["undrain", "us-east-1", "--state-dir", &dir]);
    assert!(ok, "undrain failed: {err}");
    assert!(out.contains("\"active\""), "{out}");
    let (_, hello) = connect(&a.ws_url, &demo.user_token, "").await;
    assert_eq!(hello["region"], "us-east-1");
}
