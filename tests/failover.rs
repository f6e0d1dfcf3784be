//! Failover without loss, end to end: three regions with the measured WAN round-trip times,
//! the Rust client (`tickmesh::client`) on region A and a plain reference client on region
//! C, both subscribed to trades and quotes of every symbol. Region A is SIGKILLed (or
//! drained); the client resumes on the next region, and over the whole run it has received
//! exactly the reference's records, once each, for the window both observed.

mod support;

use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use support::{connect, next_json, request, Demo};
use tickmesh::client::{Client, Event, LossCause};
use tokio::time::Instant;

/// Per source, `seq`s in arrival order.
type Seen = BTreeMap<String, Vec<u64>>;

/// The reference: a raw WebSocket on region C, collecting until `until`.
async fn reference(ws_url: String, token: String, until: Instant) -> Seen {
    let (mut ws, _) = connect(&ws_url, &token, "").await;
    let r = request(&mut ws, json!({"op":"subscribe","id":1,"channels":["trades","quotes"],"symbols":"*"})).await;
    assert_eq!(r["type"], "subscribed", "{r}");
    let mut seen = Seen::new();
    while Instant::now() < until {
        let Some(v) = next_json(&mut ws, until - Instant::now()).await else { break };
        if let (Some(src), Some(seq)) = (v["src"].as_str(), v["seq"].as_u64()) {
            if v["type"] == "trade" || v["type"] == "quote" {
                seen.entry(src.to_owned()).or_default().push(seq);
            }
        }
    }
    seen
}

/// Reads the client until `until`: records per source, every other event.
async fn drive(client: &mut Client, until: Instant, seen: &mut Seen, events: &mut Vec<Event>) {
    while Instant::now() < until {
        match tokio::time::timeout_at(until, client.next()).await {
            Err(_) => break,
            Ok(Err(e)) => panic!("client gave up: {e}"),
            Ok(Ok(Event::Record(r))) => seen.entry(r.src).or_default().push(r.seq),
            Ok(Ok(e)) => events.push(e),
        }
    }
}

/// Same (src, seq) set as the reference in the window both saw, no duplicates, in order.
fn assert_exactly_once(got: &Seen, want: &Seen) {
    for (src, seqs) in got {
        assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{src}: a duplicate or out-of-order seq in {seqs:?}");
    }
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "same sources");
    for (src, theirs) in want {
        let mine = &got[src];
        let lo = mine[0].max(theirs[0]);
        let hi = *mine.last().unwrap().min(theirs.last().unwrap());
        assert!(hi > lo + 100, "{src}: the two clients overlap only in {lo}..={hi}");
        let m: Vec<u64> = mine.iter().copied().filter(|s| (lo..=hi).contains(s)).collect();
        let t: Vec<u64> = theirs.iter().copied().filter(|s| (lo..=hi).contains(s)).collect();
        if m != t {
            let missing: Vec<_> = t.iter().filter(|s| !m.contains(s)).take(10).collect();
            let extra: Vec<_> = m.iter().filter(|s| !t.contains(s)).take(10).collect();
            panic!(
                "{src}: {} records against the reference's {} in {lo}..={hi}; missing {missing:?}, extra {extra:?}",
                m.len(),
                t.len()
            );
        }
    }
}

enum Fault {
    Kill,
    Drain,
    /// SIGTERM: a graceful stop, which is a drain with reason `shutdown`.
    Term,
}

async fn failover(fault: Fault) {
    let demo = Demo::start(&["--wan", "real", "--rate", "300"]);
    let (a, c) = (demo.regions[0].clone(), demo.regions[2].clone());
    let start = Instant::now();
    let end = start + Duration::from_secs(10);
    let ref_task = tokio::spawn(reference(c.ws_url.clone(), demo.user_token.clone(), end));
    let mut client = Client::builder()
        .regions([a.ws_url.clone()])
        .token(demo.user_token.clone())
        .subscribe(["trades", "quotes"], ["*"])
        .build()
        .unwrap()
        .connect()
        .await
        .expect("connect to region A");
    let mut got = Seen::new();
    let mut events = Vec::new();
    drive(&mut client, start + Duration::from_secs(4), &mut got, &mut events).await;
    assert_eq!(client.region(), Some(a.region.as_str()));
    let before = client.stats().records;
    assert!(before > 100, "only {before} records before the fault");
    match fault {
        Fault::Kill => demo.kill_region(&a.region),
        Fault::Drain => {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickmesh"))
                .args(["admin", "drain", &a.region, "--url", &a.http_url, "--token", &demo.admin_token])
                .args(["--grace-ms", "3000"])
                .output()
                .unwrap();
            assert!(out.status.success(), "drain: {}", String::from_utf8_lossy(&out.stderr));
        }
        Fault::Term => {
            // SAFETY: a plain syscall on a pid the demo reported.
            unsafe { libc::kill(a.pid as i32, libc::SIGTERM) };
        }
    }
    drive(&mut client, end, &mut got, &mut events).await;
    let want = ref_task.await.unwrap();

    let lost: Vec<&LossCause> = events
        .iter()
        .filter_map(|e| match e {
            Event::Disconnected(d) => Some(&d.cause),
            _ => None,
        })
        .collect();
    assert_eq!(lost.len(), 1, "exactly one loss: {events:?}");
    match fault {
        Fault::Kill => assert!(!matches!(lost[0], LossCause::Reconnect { .. }), "{lost:?}"),
        Fault::Drain => {
            assert!(matches!(lost[0], LossCause::Reconnect { reason, .. } if reason == "drain"), "{lost:?}")
        }
        Fault::Term => {
            assert!(matches!(lost[0], LossCause::Reconnect { reason, .. } if reason == "shutdown"), "{lost:?}")
        }
    }
    let moved = events.iter().find_map(|e| match e {
        Event::Connected(c) if c.reconnect => Some(c.clone()),
        _ => None,
    });
    let moved = moved.expect("a reconnection");
    assert_eq!(moved.region, demo.regions[1].region, "the next region in the hello list");
    assert!(moved.resumed);
    assert!(client.stats().records > before + 100, "too few records after the failover: {:?}", client.stats());
    assert_exactly_once(&got, &want);
    eprintln!("stats: {:?}", client.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_region_loses_and_duplicates_nothing() {
    failover(Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_of_the_region_loses_and_duplicates_nothing() {
    failover(Fault::Drain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_region_moves_the_client_without_loss_or_duplicate() {
    failover(Fault::Term).await;
}

/// `tickmesh bench failover` runs end to end and meets its own targets (it exits non-zero
/// when a record is lost or duplicated, or the first resumed record takes 2 s or more).
#[test]
fn bench_failover_reports_no_loss() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickmesh"))
        .args(["bench", "failover", "--runs", "1", "--rate", "300", "--warmup", "2", "--after", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("lost 0, duplicated 0"), "{stdout}");
}
