//! Protocol v1 against a real region process: book snapshots and depth-exact deltas,
//! resume without gap or duplicate, binary framing, and the slow-consumer policies.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use support::{connect, connect_small_rcvbuf, next_json, next_msg, request, Demo, Msg};
use tickmesh_codec::frame::Frames;

type Book = (BTreeMap<String, String>, BTreeMap<String, String>);

fn apply(book: &mut Book, v: &Value) {
    for (side, m) in [("bids", &mut book.0), ("asks", &mut book.1)] {
        for l in v[side].as_array().unwrap() {
            let (px, qty) = (l[0].as_str().unwrap().to_owned(), l[1].as_str().unwrap().to_owned());
            if qty == "0" {
                m.remove(&px);
            } else {
                m.insert(px, qty);
            }
        }
    }
}

fn from_snapshot(v: &Value) -> Book {
    let mut b = Book::default();
    apply(&mut b, v);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn book_snapshot_then_deltas_keep_the_depth_view_exact() {
    let demo = Demo::start(&["--regions", "us-east-1", "--rate", "2000"]);
    let url = &demo.regions[0].ws_url;
    let (mut ws, _) = connect(url, &demo.user_token, "").await;
    let r = request(&mut ws, json!({"op":"subscribe","id":1,"channels":["book"],"symbols":["AAPL"],"depth":3})).await;
    assert_eq!(r["type"], "subscribed");
    let snap = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(snap["type"], "book_snapshot", "{snap}");
    assert_eq!(snap["sym"], "AAPL");
    let mut book = from_snapshot(&snap);
    let mut last_seq = snap["seq"].as_u64().unwrap();
    assert!(book.0.len() <= 3 && book.1.len() <= 3);
    // Keep the state after every delta, to compare with a later snapshot at its seq.
    let mut history: Vec<(u64, Book)> = vec![(last_seq, book.clone())];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        let Some(v) = next_json(&mut ws, Duration::from_secs(2)).await else { break };
        if v["type"] == "heartbeat" {
            continue;
        }
        assert_eq!(v["type"], "book", "{v}");
        let seq = v["seq"].as_u64().unwrap();
        assert!(seq > last_seq, "deltas follow the snapshot in seq order");
        last_seq = seq;
        apply(&mut book, &v);
        assert!(book.0.len() <= 3 && book.1.len() <= 3, "the view never exceeds the depth: {book:?}");
        history.push((seq, book.clone()));
    }
    assert!(history.len() > 20, "too few deltas: {}", history.len());
    // A second connection's snapshot must equal our view at the same position.
    let (mut ws2, _) = connect(url, &demo.user_token, "").await;
    request(&mut ws2, json!({"op":"subscribe","id":1,"channels":["book"],"symbols":["AAPL"],"depth":3})).await;
    let snap2 = next_json(&mut ws2, Duration::from_secs(5)).await.unwrap();
    let s2 = snap2["seq"].as_u64().unwrap();
    // Read on until our deltas pass s2.
    while last_seq < s2 {
        let v = next_json(&mut ws, Duration::from_secs(2)).await.unwrap();
        if v["type"] == "book" {
            last_seq = v["seq"].as_u64().unwrap();
            apply(&mut book, &v);
            history.push((last_seq, book.clone()));
        }
    }
    let at = history.iter().rev().find(|(q, _)| *q <= s2).unwrap();
    assert_eq!(at.1, from_snapshot(&snap2), "view at seq {} differs from a fresh snapshot at {s2}", at.0);
    // The same book over HTTP.
    let addr = demo.regions[0].http_url.trim_start_matches("http://").parse().unwrap();
    let (code, body) = tickmesh::http_get::get(addr, "/v1/book?sym=AAPL&depth=2", Duration::from_secs(2)).unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "book_snapshot");
    assert!(v["bids"].as_array().unwrap().len() <= 2);
    let (code, body) = tickmesh::http_get::get(addr, "/v1/book?sym=NOPE", Duration::from_secs(2)).unwrap();
    assert_eq!(code, 404, "{body}");
}

/// Every record of `src` from `ws` (binary encoding), as (seq, bytes), for `window`.
async fn binary_records(ws: &mut support::Ws, src: &str, window: Duration, out: &mut Vec<(u64, Vec<u8>)>) {
    let deadline = tokio::time::Instant::now() + window;
    while tokio::time::Instant::now() < deadline {
        match next_msg(ws, deadline - tokio::time::Instant::now()).await {
            Some(Msg::Binary(b)) => {
                for r in Frames::new(&b) {
                    let r = r.expect("server sent an invalid record");
                    if r.src() == src {
                        out.push((r.seq(), r.bytes().to_vec()));
                    }
                }
            }
            Some(Msg::Json(_)) => {}
            Some(Msg::Close(c)) => panic!("closed: {c:?}"),
            None => break,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_reconnect_has_no_gap_and_no_duplicate() {
    let demo = Demo::start(&["--regions", "us-east-1", "--rate", "1500"]);
    let url = &demo.regions[0].ws_url;
    let src = "SYN.USE1";
    let sub = json!({"op":"subscribe","id":1,"channels":"*","symbols":"*"});
    // The reference client stays connected throughout, binary: every record of the source.
    let (mut reference, _) = connect(url, &demo.user_token, "&encoding=binary").await;
    request(&mut reference, sub.clone()).await;
    let (mut a, _) = connect(url, &demo.user_token, "&encoding=binary").await;
    request(&mut a, sub.clone()).await;
    let mut got = Vec::new();
    binary_records(&mut a, src, Duration::from_millis(800), &mut got).await;
    let last = got.last().unwrap().0;
    drop(a);
    tokio::time::sleep(Duration::from_millis(1200)).await; // records flow while A is away
    let (mut a, _) = connect(url, &demo.user_token, "&encoding=binary").await;
    let mut resume = sub.clone();
    resume["resume"] = json!({ src: last });
    resume["id"] = json!(2);
    let r = request(&mut a, resume).await;
    assert_eq!(r["type"], "subscribed", "{r}");
    let mut after = Vec::new();
    binary_records(&mut a, src, Duration::from_millis(1500), &mut after).await;
    let mut all_ref = Vec::new();
    binary_records(&mut reference, src, Duration::from_millis(1500), &mut all_ref).await;
    assert_eq!(after.first().unwrap().0, last + 1, "resume starts right after the last processed seq");
    for w in after.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "no gap and no duplicate: {} then {}", w[0].0, w[1].0);
    }
    assert!(after.len() > 1500, "the replay covered the time away: {}", after.len());
    // Same bytes as the reference client for every record both saw.
    let ref_map: BTreeMap<u64, Vec<u8>> = all_ref.into_iter().collect();
    let mut compared = 0;
    for (seq, bytes) in &after {
        if let Some(b) = ref_map.get(seq) {
            assert_eq!(b, bytes, "record {seq} differs");
            compared += 1;
        }
    }
    assert!(compared > 100, "too little overlap to compare: {compared}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_cut_off_or_conflated_and_never_delays_others() {
    let demo = Demo::start(&["--regions", "us-east-1", "--rate", "4000", "--slow-bytes", "65536"]);
    let url = &demo.regions[0].ws_url;
    let src = "SYN.USE1";
    let (mut normal, _) = connect(url, &demo.user_token, "&encoding=binary").await;
    request(&mut normal, json!({"op":"subscribe","id":1,"channels":"*","symbols":"*"})).await;
    let (mut cut, _) = connect_small_rcvbuf(url, &demo.user_token, "").await;
    request(&mut cut, json!({"op":"subscribe","id":1,"channels":"*","symbols":"*","slow":"disconnect"})).await;
    let (mut merged, _) = connect_small_rcvbuf(url, &demo.user_token, "").await;
    request(
        &mut merged,
        json!({"op":"subscribe","id":1,"channels":["trades","quotes"],"symbols":"*","slow":"conflate"}),
    )
    .await;
    // The two slow clients stop reading while the normal one reads everything.
    let mut seen = Vec::new();
    binary_records(&mut normal, src, Duration::from_secs(4), &mut seen).await;
    for w in seen.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "the normal client lost or repeated a record: {} then {}", w[0].0, w[1].0);
    }
    assert!(seen.len() > 8000, "the normal client was slowed down: {} records", seen.len());
    // The disconnect client finds a 4008 close after whatever was buffered.
    let mut code = None;
    while let Some(m) = next_msg(&mut cut, Duration::from_secs(5)).await {
        if let Msg::Close(c) = m {
            code = c;
            break;
        }
    }
    assert_eq!(code, Some(4008), "a stalled `disconnect` client is closed with 4008");
    // The conflate client reads again: conflated quotes and gaps for trades, never out of order.
    let mut last_seq = 0u64;
    let mut conflated = 0;
    let mut gaps = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < deadline {
        let Some(v) = next_json(&mut merged, Duration::from_secs(2)).await else { break };
        match v["type"].as_str().unwrap() {
            "trade" | "quote" => {
                let seq = v["seq"].as_u64().unwrap();
                assert!(seq > last_seq, "out-of-order seq {seq} after {last_seq}");
                last_seq = seq;
                if v["conflated"] == true {
                    assert_eq!(v["type"], "quote", "trades are never merged");
                    conflated += 1;
                }
            }
            "gap" => {
                assert_eq!(v["reason"], "slow_consumer");
                assert!(v["from"].as_u64().unwrap() <= v["to"].as_u64().unwrap());
                gaps += 1;
            }
            _ => {}
        }
    }
    assert!(conflated > 0, "the stalled client received conflated quotes");
    assert!(gaps > 0, "dropped trades were named by gap");
}

/// `trade` and `book` messages of `src` (data messages, not snapshots) read for `window`, and
/// the `book_snapshot`s seen.
async fn book_messages(ws: &mut support::Ws, src: &str, window: Duration) -> (Vec<Value>, Vec<Value>) {
    let (mut data, mut snaps) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + window;
    while tokio::time::Instant::now() < deadline {
        let Some(v) = next_json(ws, deadline - tokio::time::Instant::now()).await else { break };
        if v["src"] != src {
            continue;
        }
        match v["type"].as_str() {
            Some("trade") | Some("book") => data.push(v),
            Some("book_snapshot") => snaps.push(v),
            _ => {}
        }
    }
    (data, snaps)
}

/// Reads `ws` until a data message of `src` passes `seq`.
async fn book_messages_until(ws: &mut support::Ws, src: &str, seq: u64, out: &mut Vec<Value>) {
    while out.last().is_none_or(|v| v["seq"].as_u64().unwrap() < seq) {
        let (more, _) = book_messages(ws, src, Duration::from_millis(500)).await;
        assert!(!more.is_empty(), "no more data while waiting for seq {seq}");
        out.extend(more);
    }
}

/// The view a client builds from a snapshot and the deltas after it, up to `upto`.
fn view(snap: &Value, data: &[Value], upto: u64) -> Book {
    let mut b = from_snapshot(snap);
    let from = snap["seq"].as_u64().unwrap();
    for v in data.iter().filter(|v| v["type"] == "book") {
        let q = v["seq"].as_u64().unwrap();
        if q > from && q <= upto {
            apply(&mut b, v);
        }
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_book_deltas_exactly_as_a_client_that_never_left_got_them() {
    let demo = Demo::start(&["--regions", "us-east-1", "--rate", "1500"]);
    let url = &demo.regions[0].ws_url;
    let src = "SYN.USE1";
    let sub = json!({"op":"subscribe","id":1,"channels":["trades","book"],"symbols":["AAPL"],"depth":3});
    let (mut reference, _) = connect(url, &demo.user_token, "").await;
    request(&mut reference, sub.clone()).await;
    let (mut a, _) = connect(url, &demo.user_token, "").await;
    request(&mut a, sub.clone()).await;
    let (before, snaps) = book_messages(&mut a, src, Duration::from_millis(800)).await;
    let first_snap = snaps.first().expect("a book_snapshot after subscribe").clone();
    let last = before.last().expect("data before the disconnect")["seq"].as_u64().unwrap();
    let held = view(&first_snap, &before, last);
    drop(a);
    tokio::time::sleep(Duration::from_millis(1200)).await; // the book moves while A is away
    let (mut a, _) = connect(url, &demo.user_token, "").await;
    let mut resume = sub.clone();
    resume["resume"] = json!({ src: last });
    let r = request(&mut a, resume).await;
    assert_eq!(r["type"], "subscribed", "{r}");
    let (after, snaps) = book_messages(&mut a, src, Duration::from_millis(1500)).await;
    // The book as of the client's position first: the one it already holds.
    assert_eq!(snaps.len(), 1, "one snapshot, at the resume point: {snaps:?}");
    assert_eq!(snaps[0]["seq"].as_u64(), Some(last), "{}", snaps[0]);
    assert_eq!(from_snapshot(&snaps[0]), held, "the resume snapshot is the book the client held");
    let max_a = after.last().expect("data after the resume")["seq"].as_u64().unwrap();
    let mut all_ref = Vec::new();
    book_messages_until(&mut reference, src, max_a, &mut all_ref).await;
    // Every trade and every depth-3 delta after `last`, exactly as the reference got them.
    let expected: Vec<&Value> =
        all_ref.iter().filter(|v| (last + 1..=max_a).contains(&v["seq"].as_u64().unwrap())).collect();
    let got: Vec<&Value> = after.iter().collect();
    assert_eq!(got.len(), expected.len(), "replayed + live messages vs the reference");
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g, e, "message differs from the reference");
    }
    let deltas = got.iter().filter(|v| v["type"] == "book").count();
    assert!(deltas > 20, "too few book deltas replayed to compare: {deltas}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_region_serves_whole_books_and_rebuilds_old_positions_from_the_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = Demo::start_in(tmp.path(), &["--regions", "us-east-1", "--rate", "1500"], None);
    let url = demo.regions[0].ws_url.clone();
    let src = "SYN.USE1";
    let sub = json!({"op":"subscribe","id":1,"channels":["book"],"symbols":["AAPL"],"depth":1000});
    let (mut a, _) = connect(&url, &demo.user_token, "").await;
    request(&mut a, sub.clone()).await;
    let (before, snaps) = book_messages(&mut a, src, Duration::from_millis(1000)).await;
    let last = before.last().expect("book deltas before the kill")["seq"].as_u64().unwrap();
    let held = view(&snaps[0], &before, last);
    demo.kill_region_and_wait("us-east-1");
    drop(a);
    let dir = tmp.path().join("us-east-1");
    let _node = support::NodeProcess::start(&dir);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut a = loop {
        match tokio_tungstenite::connect_async(format!("{url}?token={}", demo.user_token)).await {
            Ok((mut ws, _)) => {
                next_json(&mut ws, Duration::from_secs(5)).await.expect("hello");
                break ws;
            }
            Err(_) if std::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("the restarted region does not accept connections: {e}"),
        }
    };
    // Resuming from before the restart: the books are rebuilt from the journal (the new
    // process has no change log that far back), and the client's own book comes back.
    let mut resume = sub.clone();
    resume["resume"] = json!({ src: last });
    assert_eq!(request(&mut a, resume).await["type"], "subscribed");
    let (after, snaps) = book_messages(&mut a, src, Duration::from_millis(1500)).await;
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["seq"].as_u64(), Some(last));
    assert_eq!(from_snapshot(&snaps[0]), held, "the book rebuilt from the journal is the one the client held");
    // A new client's snapshot (the live core's books, read back from the journal at start)
    // equals the view the resumed client built delta by delta.
    let (mut b, _) = connect(&url, &demo.user_token, "").await;
    request(&mut b, sub.clone()).await;
    let (_, fresh) = book_messages(&mut b, src, Duration::from_millis(300)).await;
    let s2 = fresh[0]["seq"].as_u64().unwrap();
    let mut data = after;
    book_messages_until(&mut a, src, s2, &mut data).await;
    assert_eq!(view(&snaps[0], &data, s2), from_snapshot(&fresh[0]), "the books at seq {s2}");
}
