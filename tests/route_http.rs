//! `GET /v1/route` and `POST /v1/admin/weights` against real region processes.

mod support;

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use support::Demo;

fn addr(http_url: &str) -> SocketAddr {
    http_url.trim_start_matches("http://").parse().expect("http_url is host:port")
}

fn get(http_url: &str, path: &str) -> (u16, Value) {
    let (status, body) = tickmesh::http_get::get(addr(http_url), path, Duration::from_secs(5)).expect("GET");
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}")))
}

fn post(http_url: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let (status, body) =
        tickmesh::cmd::admin_route::request(addr(http_url), "POST", path, token, Some(body)).expect("POST");
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {body}")))
}

fn url_of<'a>(demo: &'a Demo, region: &str) -> &'a str {
    &demo.regions.iter().find(|r| r.region == region).expect("region").http_url
}

/// Polls `/v1/route` until `ok` holds, for at most `limit`.
fn wait_route(http_url: &str, q: &str, limit: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, v) = get(http_url, &format!("/v1/route?{q}"));
        if status == 200 && ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "route {q} never satisfied the condition; last answer {status} {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn each_country_gets_its_nearest_region_from_every_node() {
    let demo = Demo::start(&[]);
    // Every region listens on its own loopback address.
    let ips: std::collections::BTreeSet<_> = demo.regions.iter().map(|r| addr(&r.http_url).ip()).collect();
    assert_eq!(ips.len(), 3, "{:?}", demo.regions);
    for node in &demo.regions {
        // All peers are probed healthy within a few seconds of start.
        wait_route(&node.http_url, "geo=SG", Duration::from_secs(20), |v| v["region"] == "ap-southeast-1");
        for (cc, want) in [
            ("US", "us-east-1"),
            ("ca", "us-east-1"),
            ("BR", "us-east-1"),
            ("GB", "eu-west-1"),
            ("DE", "eu-west-1"),
            ("SG", "ap-southeast-1"),
            ("JP", "ap-southeast-1"),
            ("AU", "ap-southeast-1"),
            ("AE", "ap-southeast-1"),
        ] {
            let (status, v) = get(&node.http_url, &format!("/v1/route?geo={cc}&affinity=user-7"));
            assert_eq!(status, 200, "{v}");
            assert_eq!(v["region"], want, "{cc} from {}: {v}", node.region);
            let up = demo.regions.iter().find(|r| r.region == want).unwrap();
            assert_eq!(v["ws_url"], up.ws_url.as_str());
            assert_eq!(v["http_url"], up.http_url.as_str());
            assert_eq!(v["ttl"], 5);
            let alts: Vec<&str> =
                v["alternates"].as_array().unwrap().iter().map(|a| a["region"].as_str().unwrap()).collect();
            assert_eq!(alts.len(), 2, "{v}");
            assert!(!alts.contains(&want), "{v}");
            assert_eq!(v["fallbacks"], json!(alts));
        }
        let (_, v) = get(&node.http_url, "/v1/route?geo=SG");
        assert_eq!(v["fallbacks"], json!(["eu-west-1", "us-east-1"]), "failover order by RTT from ap-southeast-1");
        let (_, v) = get(&node.http_url, "/v1/route?region=eu-west-1");
        assert_eq!(v["region"], "eu-west-1");
        assert_eq!(v["fallbacks"], json!(["us-east-1", "ap-southeast-1"]));
        // No preference: the answering node itself.
        let (_, v) = get(&node.http_url, "/v1/route");
        assert_eq!(v["region"], node.region.as_str());
    }
    let n = &demo.regions[0].http_url;
    for (q, status, code) in [
        ("geo=USA", 400, "bad_request"),
        ("geo=XX", 404, "unknown_country"),
        ("region=mars-1", 404, "unknown_region"),
        ("geo=US&region=eu-west-1", 400, "bad_request"),
        ("country=US", 400, "bad_request"),
    ] {
        let (s, v) = get(n, &format!("/v1/route?{q}"));
        assert_eq!((s, v["error"]["code"].as_str()), (status, Some(code)), "{q}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().len() > 20, "{v}");
    }
}

#[test]
fn weights_are_admin_only_shared_by_the_cli_and_split_traffic_90_10() {
    let demo = Demo::start(&[]);
    let us = url_of(&demo, "us-east-1");
    let body = r#"{"weights":{"us-east-1":90,"eu-west-1":10}}"#;
    let (s, v) = post(us, "/v1/admin/weights", None, body);
    assert_eq!((s, v["error"]["code"].as_str()), (401, Some("missing_token")), "{v}");
    let (s, v) = post(us, "/v1/admin/weights", Some(&demo.user_token), body);
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")), "{v}");
    for bad in [r#"{"weights":{"us-east-1":101}}"#, r#"{"weights":{"mars-1":5}}"#, r#"{"w":1}"#, "nope"] {
        let (s, v) = post(us, "/v1/admin/weights", Some(&demo.admin_token), bad);
        assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_request")), "{bad}: {v}");
    }
    let (_, regions) = get(us, "/v1/regions");
    assert!(regions.as_array().unwrap().iter().all(|r| r["weight"] == 100), "nothing changed: {regions}");

    // The CLI sends the weights to every region /v1/regions lists.
    let out = Command::new(env!("CARGO_BIN_EXE_tickmesh"))
        .args(["admin", "weights", "us-east-1=90,eu-west-1=10", "--url", url_of(&demo, "eu-west-1")])
        .args(["--token", &demo.admin_token])
        .output()
        .expect("run tickmesh admin weights");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for r in &demo.regions {
        let (_, regions) = get(&r.http_url, "/v1/regions");
        for e in regions.as_array().unwrap() {
            let want = match e["region"].as_str().unwrap() {
                "us-east-1" => 90,
                "eu-west-1" => 10,
                _ => 100,
            };
            assert_eq!(e["weight"], want, "{} shows {e}", r.region);
        }
    }
    // Over many affinity keys the US answers split 90/10; the same key gets the same region
    // from every node.
    let n = 3000;
    let mut to_us = 0;
    for k in 0..n {
        let node = &demo.regions[k % 3].http_url;
        let (s, v) = get(node, &format!("/v1/route?geo=US&affinity=user-{k}"));
        assert_eq!(s, 200, "{v}");
        match v["region"].as_str().unwrap() {
            "us-east-1" => to_us += 1,
            "eu-west-1" => {}
            other => panic!("a US client went to {other}"),
        }
        if k < 100 {
            let (_, again) = get(&demo.regions[(k + 1) % 3].http_url, &format!("/v1/route?geo=US&affinity=user-{k}"));
            assert_eq!(again["region"], v["region"], "affinity across nodes for user-{k}");
        }
    }
    let share = to_us as f64 / n as f64;
    assert!((share - 0.9).abs() < 0.03, "us-east-1 got {share} of US answers");
    // Asia is untouched.
    let (_, v) = get(us, "/v1/route?geo=SG&affinity=user-1");
    assert_eq!(v["region"], "ap-southeast-1");
    // Weights survive a look from any node, and a reset brings everything back.
    let (s, _) = post(us, "/v1/admin/weights", Some(&demo.admin_token), r#"{"weights":{}}"#);
    assert_eq!(s, 200);
    for k in 0..200 {
        let (_, v) = get(us, &format!("/v1/route?geo=US&affinity=user-{k}"));
        assert_eq!(v["region"], "us-east-1");
    }
}

#[test]
fn a_killed_region_leaves_route_answers_and_affinity_moves_only_for_it() {
    let demo = Demo::start(&[]);
    let us = url_of(&demo, "us-east-1");
    wait_route(us, "geo=DE", Duration::from_secs(20), |v| v["region"] == "eu-west-1");
    wait_route(us, "geo=SG", Duration::from_secs(20), |v| v["region"] == "ap-southeast-1");
    let before: Vec<Value> =
        (0..50).map(|k| get(us, &format!("/v1/route?geo=US&affinity=u{k}")).1["region"].clone()).collect();
    demo.kill_region("eu-west-1");
    // Within the health threshold (2 probes at 1 s) plus generous slack for a loaded host.
    let v = wait_route(us, "geo=DE", Duration::from_secs(20), |v| v["region"] != "eu-west-1");
    assert_eq!(v["region"], "us-east-1", "eu-west-1's nearest is us-east-1 (70 ms): {v}");
    assert!(!v["fallbacks"].as_array().unwrap().iter().any(|f| f == "eu-west-1"), "{v}");
    let (_, v) = get(us, "/v1/route?region=eu-west-1");
    assert_ne!(v["region"], "eu-west-1", "{v}");
    // US clients were on us-east-1 and stay there.
    for (k, r) in before.iter().enumerate() {
        assert_eq!(&get(us, &format!("/v1/route?geo=US&affinity=u{k}")).1["region"], r);
    }
}

/// A drained region leaves route answers (`POST /v1/admin/drain`, PROTOCOL.md).
#[test]
fn a_drained_region_leaves_route_answers() {
    let demo = Demo::start(&[]);
    let us = url_of(&demo, "us-east-1");
    wait_route(us, "geo=DE", Duration::from_secs(20), |v| v["region"] == "eu-west-1");
    let (s, v) = post(us, "/v1/admin/drain", Some(&demo.admin_token), r#"{"region":"eu-west-1","grace_ms":100}"#);
    assert_eq!(s, 202, "{v}");
    let v = wait_route(us, "geo=DE", Duration::from_secs(20), |v| v["region"] != "eu-west-1");
    assert_eq!(v["region"], "us-east-1");
    let (s, _) = post(us, "/v1/admin/undrain", Some(&demo.admin_token), r#"{"region":"eu-west-1"}"#);
    assert_eq!(s, 200);
    wait_route(us, "geo=DE", Duration::from_secs(20), |v| v["region"] == "eu-west-1");
}
