//! The QUIC mesh with real processes: a cut link is routed around through the third
//! region and healed without a duplicate; a fourth region joins a running demo by admin
//! call and ends with the same journals.
//!
//! Links are cut through the demo's WAN relays (`--wan real`) by writing
//! `<state-dir>/wan.ctl` (one `REGION REGION` pair per line: the links that are down).

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use support::{connect, next_json, request, Demo};

fn http_addr(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").trim_end_matches('/').parse().unwrap()
}

fn regions_json(http_url: &str) -> Value {
    let (status, body) = tickmesh::http_get::get(http_addr(http_url), "/v1/regions", Duration::from_secs(5)).unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The upstream `region` (the one asked) uses for `src`, per its `/v1/regions` lag.
fn upstream_of(http_url: &str, origin: &str, src: &str) -> Option<String> {
    let v = regions_json(http_url);
    let e = v.as_array()?.iter().find(|e| e["region"] == origin)?;
    e["lag"][src]["upstream"].as_str().map(str::to_owned)
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not happen within {limit:?}");
}

/// Per source: every record as (seq, bytes).
type Records = BTreeMap<String, Vec<(u64, Vec<u8>)>>;

/// Every record of every source in a region's journal.
fn journal(dir: &Path) -> Records {
    support::read_journal(dir)
}

/// Every region's journal holds every source as one gap-free run, and where two regions
/// hold the same seq they hold the same bytes.
fn assert_journals_agree(state: &Path, regions: &[&str]) -> BTreeMap<String, Records> {
    let all: BTreeMap<String, _> = regions.iter().map(|r| (r.to_string(), journal(&state.join(r)))).collect();
    let (first, reference) = all.iter().next().unwrap();
    for (region, j) in &all {
        assert_eq!(j.keys().collect::<Vec<_>>(), reference.keys().collect::<Vec<_>>(), "{region} vs {first}: sources");
        for (src, recs) in j {
            for w in recs.windows(2) {
                assert_eq!(w[1].0, w[0].0 + 1, "{region}: {src} has a gap or duplicate at {}", w[0].0);
            }
            let other = &reference[src];
            let n = recs.len().min(other.len());
            assert!(n > 100, "{region}: {src} holds only {n} records in common with {first}");
            assert!(recs[..n] == other[..n], "{region} and {first} hold different bytes for {src}");
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_is_routed_around_and_heals_without_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().to_owned();
    let demo = Demo::start_in(&state, &["--rate", "300", "--wan", "real"], None);
    let (a, b, c) = ("us-east-1", "eu-west-1", "ap-southeast-1");
    let src_a = format!("SYN.{}", tickmesh::regions::short_code(a));
    let b_up = demo.regions.iter().find(|r| r.region == b).unwrap().clone();
    let b_http = b_up.http_url.clone();

    // A client in B sees every record of A's source, in order, once.
    let (mut ws, _) = connect(&b_up.ws_url, &demo.user_token, "").await;
    let r = request(&mut ws, json!({"op":"subscribe","id":1,"channels":["trades","quotes"],"symbols":"*"})).await;
    assert_eq!(r["type"], "subscribed", "{r}");
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(String, u64, Instant)>();
    let client = tokio::spawn(async move {
        while let Some(v) = next_json(&mut ws, Duration::from_secs(60)).await {
            if let (Some(s), Some(q)) = (v["src"].as_str(), v["seq"].as_u64()) {
                if seen_tx.send((s.to_owned(), q, Instant::now())).is_err() {
                    return;
                }
            }
        }
    });

    let h = b_http.clone();
    let (src, a2) = (src_a.clone(), a);
    tokio::task::spawn_blocking(move || {
        wait_for("B taking A's source directly from A", Duration::from_secs(30), || {
            upstream_of(&h, a2, &src).as_deref() == Some(a2)
        })
    })
    .await
    .unwrap();

    // Cut A-B: B must switch to C for A's source and keep receiving it.
    std::fs::write(state.join("wan.ctl"), format!("{a} {b}\n")).unwrap();
    let h = b_http.clone();
    let src = src_a.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("B relaying A's source through C", Duration::from_secs(30), || {
            upstream_of(&h, a, &src).as_deref() == Some(c)
        })
    })
    .await
    .unwrap();
    let relayed_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut during = 0;
    let mut all: Vec<(String, u64, Instant)> = Vec::new();
    while let Ok(x) = seen_rx.try_recv() {
        if x.0 == src_a && x.2 > relayed_from {
            during += 1;
        }
        all.push(x);
    }
    assert!(during > 50, "B's client received only {during} of A's records while A-B was cut");
    let v = regions_json(&b_http);
    let peer_a = v.as_array().unwrap().iter().find(|e| e["region"] == a).unwrap();
    assert_eq!(peer_a["healthy"], false, "A is unreachable from B while cut: {peer_a}");

    // Heal: back to the direct path.
    std::fs::write(state.join("wan.ctl"), "").unwrap();
    let h = b_http.clone();
    let src = src_a.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("B back on the direct path to A", Duration::from_secs(30), || {
            upstream_of(&h, a, &src).as_deref() == Some(a)
        })
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    while let Ok(x) = seen_rx.try_recv() {
        all.push(x);
    }
    client.abort();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for (s, q, _) in &all {
        if let Some(prev) = last.insert(s.clone(), *q) {
            assert!(*q > prev, "B's client saw {s} seq {q} after {prev}: a duplicate or reorder");
        }
    }
    assert!(last.get(&src_a).is_some_and(|q| *q > 0));
    drop(demo);
    assert_journals_agree(&state, &[a, b, c]);
}
