//! `GET /v1/latency` and the hop summary in `/metrics`: with two regions and one client,
//! every hop of the data path gets samples, and the histograms decode.

mod support;

use std::time::{Duration, Instant};
use support::{connect, send, Demo};
use tickmesh_gateway::hops::{decode_histogram, LatencyReport};

fn get(http_url: &str, path: &str) -> (u16, String) {
    let addr = http_url.trim_start_matches("http://").trim_end_matches('/').parse().expect("http_url is host:port");
    tickmesh::http_get::get(addr, path, Duration::from_secs(5)).expect("GET")
}

#[tokio::test(flavor = "current_thread")]
async fn every_hop_gets_samples_and_histograms_decode() {
    let demo = Demo::start(&["--regions", "us-east-1,eu-west-1", "--rate", "2000"]);
    let use1 = demo.regions.iter().find(|r| r.region == "us-east-1").unwrap().clone();
    let (mut ws, _) = connect(&use1.ws_url, &demo.user_token, "").await;
    send(
        &mut ws,
        serde_json::json!({"op":"subscribe","id":1,"channels":["trades","quotes","book","status"],"symbols":"*"}),
    )
    .await;
    // Keep reading so the writes complete; poll the node until every hop has samples.
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        let _ = support::next_json(&mut ws, Duration::from_millis(200)).await;
        let (status, body) = get(&use1.http_url, "/v1/latency");
        assert_eq!(status, 200, "{body}");
        let r: LatencyReport = serde_json::from_str(&body).expect("LatencyReport JSON");
        if r.hops.iter().all(|h| h.count > 0) && r.mesh_by_source.contains_key("SYN.EUW1") {
            break r;
        }
        assert!(Instant::now() < deadline, "some hop never got a sample: {body}");
    };
    assert_eq!(report.region, "us-east-1");
    let names: Vec<&str> = report.hops.iter().map(|h| h.hop.as_str()).collect();
    assert_eq!(names, ["decode", "journal", "mesh", "gateway", "ingest_to_send"]);
    for h in &report.hops {
        let hist = decode_histogram(&h.histogram).expect("histogram decodes");
        assert!(hist.len() >= h.count, "{}: {} < {}", h.hop, hist.len(), h.count);
        assert!(h.p50_ns <= h.p99_ns && h.p99_ns <= h.p999_ns && h.p999_ns <= h.max_ns, "{h:?}");
    }
    // Only remote records take the mesh hop: our own source never appears there.
    assert!(!report.mesh_by_source.contains_key("SYN.USE1"), "{:?}", report.mesh_by_source.keys());
    let (status, metrics) = get(&use1.http_url, "/metrics");
    assert_eq!(status, 200);
    for hop in names {
        assert!(
            metrics.contains(&format!("tickmesh_hop_latency_seconds{{hop=\"{hop}\",quantile=\"0.99\"}}")),
            "no {hop} summary in /metrics"
        );
    }
}
