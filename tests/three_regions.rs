//! The walking skeleton end to end: three region processes, one client per region.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use support::{connect, next_json, request, Demo, Ws};

/// Per source: (seq, raw JSON text) in arrival order.
type Seen = BTreeMap<String, Vec<(u64, String)>>;

async fn collect(ws: &mut Ws, window: Duration, seen: &mut Seen) {
    let deadline = tokio::time::Instant::now() + window;
    while tokio::time::Instant::now() < deadline {
        let Some(v) = next_json(ws, deadline - tokio::time::Instant::now()).await else { break };
        if v["type"] == "trade" || v["type"] == "quote" {
            let src = v["src"].as_str().unwrap().to_owned();
            let seq = v["seq"].as_u64().unwrap();
            seen.entry(src).or_default().push((seq, v.to_string()));
        }
    }
}

/// Per source, strictly increasing `seq` (a filtered subscription has holes in the numbers:
/// the synthetic feed also publishes book levels and status, so holes are not losses; the
/// identical-everywhere check below is what catches a lost record).
fn assert_strictly_increasing(who: &str, seen: &Seen) {
    for (src, v) in seen {
        for w in v.windows(2) {
            assert!(w[1].0 > w[0].0, "{who}: {src} seq {} after {}", w[1].0, w[0].0);
        }
    }
}

async fn subscribe_all(ws: &mut Ws) {
    let r = request(ws, json!({"op":"subscribe","id":1,"channels":["trades","quotes"],"symbols":"*"})).await;
    assert_eq!(r["type"], "subscribed", "{r}");
    assert_eq!(r["channels"], json!(["trades", "quotes"]));
    assert_eq!(r["symbols"], json!("*"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_region_streams_every_source_identically() {
    let demo = Demo::start(&["--rate", "300"]);
    assert_eq!(demo.regions.len(), 3);
    let mut clients = Vec::new();
    for r in &demo.regions {
        let (mut ws, hello) = connect(&r.ws_url, &demo.user_token, "").await;
        assert_eq!(hello["region"], r.region.as_str());
        assert_eq!(hello["protocol"], 1);
        assert_eq!(hello["regions"][0]["region"], r.region.as_str(), "this region first in failover order");
        assert_eq!(hello["regions"].as_array().unwrap().len(), 3);
        subscribe_all(&mut ws).await;
        clients.push((r.region.clone(), ws, Seen::new()));
    }
    // Collect concurrently so every client sees the same wall-clock window.
    let mut tasks = Vec::new();
    for (region, mut ws, mut seen) in clients {
        tasks.push(tokio::spawn(async move {
            collect(&mut ws, Duration::from_secs(4), &mut seen).await;
            (region, seen)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let sources: Vec<String> =
        demo.regions.iter().map(|r| format!("SYN.{}", tickmesh::regions::short_code(&r.region))).collect();
    for (region, seen) in &results {
        for s in &sources {
            assert!(
                seen.get(s).is_some_and(|v| v.len() > 100),
                "{region} received too little of {s}: {:?}",
                seen.get(s).map(Vec::len)
            );
        }
        assert_strictly_increasing(region, seen);
    }
    // Same (src, seq, content) everywhere over the range every client saw.
    for s in &sources {
        let lo = results.iter().map(|(_, seen)| seen[s].first().unwrap().0).max().unwrap();
        let hi = results.iter().map(|(_, seen)| seen[s].last().unwrap().0).min().unwrap();
        assert!(hi > lo + 200, "{s}: common window too small ({lo}..={hi})");
        let slice = |seen: &Seen| -> Vec<(u64, String)> {
            seen[s].iter().filter(|(q, _)| (lo..=hi).contains(q)).cloned().collect()
        };
        let reference = slice(&results[0].1);
        assert!(reference.len() > 50, "{s}: too few records in the common window");
        for (region, seen) in &results[1..] {
            assert_eq!(slice(seen), reference, "{region} differs from {} on {s}", results[0].0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_region_leaves_the_others_streaming() {
    let demo = Demo::start(&["--rate", "300"]);
    let victim = demo.regions[2].region.clone();
    let mut survivors = Vec::new();
    for r in &demo.regions[..2] {
        let (mut ws, _) = connect(&r.ws_url, &demo.user_token, "").await;
        subscribe_all(&mut ws).await;
        survivors.push((r.region.clone(), ws));
    }
    demo.kill_region(&victim);
    // Let the survivors notice, then watch a window after the kill.
    for (_, ws) in survivors.iter_mut() {
        let mut skip = Seen::new();
        collect(ws, Duration::from_millis(1500), &mut skip).await;
    }
    for (region, ws) in survivors.iter_mut() {
        let mut seen = Seen::new();
        collect(ws, Duration::from_secs(2), &mut seen).await;
        for r in &demo.regions[..2] {
            let s = format!("SYN.{}", tickmesh::regions::short_code(&r.region));
            assert!(seen.get(&s).is_some_and(|v| v.len() > 40), "{region} stopped receiving {s} after {victim} died");
        }
        assert!(
            seen.get(&format!("SYN.{}", tickmesh::regions::short_code(&victim))).is_none_or(|v| v.is_empty()),
            "records of the killed region kept arriving"
        );
        assert_strictly_increasing(region, &seen);
    }
    // The survivors' view of the regions: the dead one is down.
    let (code, body) = tickmesh::http_get::get(
        demo.regions[0].http_url.trim_start_matches("http://").parse().unwrap(),
        "/v1/regions",
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(code, 200);
    let regions: Vec<Value> = serde_json::from_str(&body).unwrap();
    let dead = regions.iter().find(|r| r["region"] == victim.as_str()).unwrap();
    assert_eq!(dead["state"], "down", "{body}");
    assert_eq!(dead["healthy"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wan_real_puts_the_measured_delay_on_the_mesh() {
    let demo = Demo::start(&["--regions", "us-east-1,eu-west-1", "--rate", "200", "--wan", "real"]);
    let (mut ws, _) = connect(&demo.regions[0].ws_url, &demo.user_token, "").await;
    subscribe_all(&mut ws).await;
    let mut remote = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        let Some(v) = next_json(&mut ws, Duration::from_secs(2)).await else { break };
        if v["src"] == "SYN.EUW1" {
            let now = tickmesh_codec::now_ns();
            remote.push(now.saturating_sub(v["ts_ingest"].as_u64().unwrap()));
        }
    }
    assert!(remote.len() > 50, "eu-west-1's records reach us-east-1 through the emulated WAN");
    let min_ms = *remote.iter().min().unwrap() / 1_000_000;
    // us-east-1 to eu-west-1 is 70 ms round trip (REGIONS.md): no record can arrive sooner
    // than the 35 ms one way.
    assert!(min_ms >= 35, "a remote record arrived after {min_ms} ms, faster than the emulated link");
}
