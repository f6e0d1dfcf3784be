//! A region's state as the others see it, and a graceful stop, against real region
//! processes:
//! * SIGTERM is a drain with reason `shutdown`: a connected client gets `reconnect`
//!   naming the next region, then close 1012, and the process exits by itself.
//! * A drained region shows as `draining` in the other regions' `/v1/regions` (carried in
//!   the mesh heartbeat), leaves their `/v1/route` answers and their `hello` lists, and
//!   comes back as `active` after undrain.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::{connect, Demo};

async fn get_json(url: &str) -> (u16, Value) {
    let (status, body) =
        tickmesh::admin_api::http_request("GET", url, None, None, &[], Duration::from_secs(5)).await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn admin(args: &[&str]) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickmesh")).arg("admin").args(args).output().unwrap();
    assert!(out.status.success(), "tickmesh admin {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The state `http_url`'s `/v1/regions` gives `region`.
async fn state_of(http_url: &str, region: &str) -> String {
    let (_, v) = get_json(&format!("{http_url}/v1/regions")).await;
    let e = v.as_array().and_then(|a| a.iter().find(|e| e["region"] == region).cloned()).unwrap_or(Value::Null);
    e["state"].as_str().unwrap_or("").to_owned()
}

/// Polls until `cond` holds (generous: the machine is shared).
async fn wait_for(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The region process still runs (an exited one the demo has not reaped yet is a zombie).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_reconnect_shutdown_then_1012_and_exits() {
    let demo = Demo::start(&["--regions", "us-east-1,eu-west-1", "--rate", "200"]);
    let (a, b) = (&demo.regions[0], &demo.regions[1]);
    let (mut ws, hello) = connect(&a.ws_url, &demo.user_token, "").await;
    assert_eq!(hello["region"], "us-east-1");

    // SAFETY: a plain syscall on a pid the demo reported.
    unsafe { libc::kill(a.pid as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    let (reconnect, close) = support::reconnect_then_close(&mut ws, Duration::from_secs(15)).await;
    let r = reconnect.expect("a reconnect message before the close");
    assert_eq!(r["reason"], "shutdown", "{r}");
    assert_eq!(r["region"], "eu-west-1", "{r}");
    assert_eq!(r["ws_url"], b.ws_url.as_str(), "{r}");
    assert_eq!(close, Some(Some(1012)), "a client that stays is closed with 1012 (drained)");
    // The close comes after the grace (default 1.5 s), not at once.
    assert!(t0.elapsed() >= Duration::from_millis(1000), "closed after {:?}, before the grace", t0.elapsed());

    // The process ends by itself, and the next region takes the client.
    let deadline = Instant::now() + Duration::from_secs(20);
    while process_alive(a.pid) {
        assert!(Instant::now() < deadline, "region A still running 20 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, hello) = connect(r["ws_url"].as_str().unwrap(), &demo.user_token, "").await;
    assert_eq!(hello["region"], "eu-west-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_see_a_drained_region_and_route_around_it() {
    let demo = Demo::start(&["--rate", "100"]);
    let (a, b, c) = (&demo.regions[0], &demo.regions[1], &demo.regions[2]);
    wait_for("B to see A active", async || state_of(&b.http_url, &a.region).await == "active").await;
    let (_, hello) = connect(&b.ws_url, &demo.user_token, "").await;
    let listed = |h: &Value| h["regions"].as_array().unwrap().iter().any(|r| r["region"] == a.region.as_str());
    assert!(listed(&hello), "A is in B's hello list while active: {hello}");

    admin(&["drain", &a.region, "--url", &a.http_url, "--token", &demo.admin_token, "--grace-ms", "1000"]);
    // Peers learn it from A's heartbeat.
    for peer in [b, c] {
        wait_for("a peer to show A draining", async || state_of(&peer.http_url, &a.region).await == "draining").await;
    }
    // B's route answers never name A, whatever the geo (A is the nearest region of US).
    for i in 0..200 {
        let (status, v) = get_json(&format!("{}/v1/route?geo=US&affinity=user-{i}", b.http_url)).await;
        assert_eq!(status, 200, "{v}");
        assert_ne!(v["region"], a.region.as_str(), "B routed to the draining region: {v}");
        let alternates = v["fallbacks"].as_array().unwrap();
        assert!(!alternates.iter().any(|f| f == a.region.as_str()), "draining region among fallbacks: {v}");
    }
    let (status, v) = get_json(&format!("{}/v1/route?region={}", b.http_url, a.region)).await;
    assert!(status != 200 || v["region"] != a.region.as_str(), "asked for A by name, got it while draining: {v}");
    // New clients of B are not offered A for failover.
    wait_for("B's hello to leave A out", async || {
        let (_, hello) = connect(&b.ws_url, &demo.user_token, "").await;
        !listed(&hello)
    })
    .await;

    admin(&["undrain", &a.region, "--url", &a.http_url, "--token", &demo.admin_token]);
    for peer in [b, c] {
        wait_for("a peer to show A active again", async || state_of(&peer.http_url, &a.region).await == "active").await;
    }
    wait_for("B to route US to A again", async || {
        let (_, v) = get_json(&format!("{}/v1/route?geo=US", b.http_url)).await;
        v["region"] == a.region.as_str()
    })
    .await;
    wait_for("B's hello to list A again", async || {
        let (_, hello) = connect(&b.ws_url, &demo.user_token, "").await;
        listed(&hello)
    })
    .await;
}
