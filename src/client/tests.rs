//! The client against fake regions on 127.0.0.1:0 that follow scripts: loss by close,
//! by silence and by `reconnect`; resume positions; dedupe.

use super::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;

type ServerWs = WebSocketStream<TcpStream>;

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/ws", l.local_addr().unwrap());
    (l, url)
}

/// Accepts one WebSocket connection on `l` and runs `script` on it.
fn serve<F, Fut>(l: TcpListener, script: F) -> tokio::task::JoinHandle<()>
where
    F: FnOnce(ServerWs) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        script(ws).await;
    })
}

async fn send(ws: &mut ServerWs, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

fn hello(region: &str, hb_ms: u64, regions: &[(&str, &str)]) -> Value {
    let regions: Vec<Value> = regions.iter().map(|(r, u)| json!({"region": r, "ws_url": u})).collect();
    json!({"type":"hello","protocol":1,"region":region,"session":format!("{region}-1"),"heartbeat_ms":hb_ms,"regions":regions})
}

fn trade(src: &str, seq: u64) -> Value {
    json!({"type":"trade","src":src,"seq":seq,"sym":"AAPL","ts":1,"ts_ingest":2,"px":"1.5","qty":"2","side":"buy"})
}

/// Sends hello, reads the subscribe, answers `subscribed`; returns the subscribe request.
async fn handshake(ws: &mut ServerWs, hello_msg: Value) -> Value {
    send(ws, hello_msg).await;
    let req = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => break serde_json::from_str::<Value>(t.as_str()).unwrap(),
            _ => continue,
        }
    };
    assert_eq!(req["op"], "subscribe");
    send(ws, json!({"type":"subscribed","id":req["id"],"channels":req["channels"],"symbols":req["symbols"]})).await;
    req
}

fn client(urls: &[&str]) -> Client {
    Client::builder()
        .regions(urls.iter().map(|s| s.to_string()))
        .token("t")
        .subscribe(["trades"], ["*"])
        .connect_timeout(Duration::from_secs(10))
        .reconnect_timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Reads events until `n` records arrived; returns records (src, seq, region) and the others.
async fn collect(c: &mut Client, n: usize) -> (Vec<(String, u64, String)>, Vec<Event>) {
    let mut recs = Vec::new();
    let mut other = Vec::new();
    while recs.len() < n {
        let ev = tokio::time::timeout(Duration::from_secs(20), c.next()).await.expect("event in time").unwrap();
        match ev {
            Event::Record(r) => recs.push((r.src, r.seq, r.region.to_string())),
            e => other.push(e),
        }
    }
    (recs, other)
}

fn seqs(recs: &[(String, u64, String)]) -> Vec<u64> {
    recs.iter().map(|r| r.1).collect()
}

#[tokio::test]
async fn a_closed_region_is_left_for_the_next_with_resume_and_no_duplicate() {
    let (la, ua) = listener().await;
    let (lb, ub) = listener().await;
    let list = [("r-a", ua.as_str()), ("r-b", ub.as_str())];
    let h = hello("r-a", 1000, &list);
    let a = serve(la, move |mut ws| async move {
        let req = handshake(&mut ws, h).await;
        assert!(req.get("resume").is_none(), "first subscription has nothing to resume: {req}");
        for seq in 1..=5 {
            send(&mut ws, trade("S", seq)).await;
        }
        // Dropped without a close frame: what a killed process looks like.
    });
    let hb = hello("r-b", 1000, &[("r-b", ub.as_str()), ("r-a", ua.as_str())]);
    let b = serve(lb, move |mut ws| async move {
        let req = handshake(&mut ws, hb).await;
        assert_eq!(req["resume"], json!({"S": 5}), "resume carries the last delivered seq");
        for seq in 4..=8 {
            send(&mut ws, trade("S", seq)).await;
        }
        let _ = ws.next().await;
    });
    let mut c = client(&[&ua, &ub]).connect().await.unwrap();
    let (recs, other) = collect(&mut c, 8).await;
    assert_eq!(seqs(&recs), (1..=8).collect::<Vec<_>>());
    assert_eq!(recs[4].2, "r-a");
    assert_eq!(recs[5].2, "r-b");
    assert!(matches!(&other[0], Event::Connected(c) if c.region == "r-a" && !c.reconnect));
    assert!(other.iter().any(|e| matches!(e, Event::Disconnected(d) if d.region == "r-a")));
    assert!(other.iter().any(|e| matches!(e, Event::Connected(c) if c.region == "r-b" && c.resumed && c.reconnect)));
    let st = c.stats();
    assert_eq!((st.records, st.duplicates_dropped, st.reconnects), (8, 2, 1));
    a.await.unwrap();
    drop(c);
    b.await.unwrap();
}

#[tokio::test]
async fn three_missed_heartbeats_count_as_loss() {
    let (la, ua) = listener().await;
    let (lb, ub) = listener().await;
    let list = [("r-a", ua.as_str()), ("r-b", ub.as_str())];
    let h = hello("r-a", 100, &list);
    let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<()>();
    let a = serve(la, move |mut ws| async move {
        handshake(&mut ws, h).await;
        for seq in 1..=3 {
            send(&mut ws, trade("S", seq)).await;
        }
        // Silent but open: only the heartbeat deadline can notice.
        let _ = hold_rx.await;
    });
    let hb = hello("r-b", 100, &list);
    let b = serve(lb, move |mut ws| async move {
        let req = handshake(&mut ws, hb).await;
        assert_eq!(req["resume"], json!({"S": 3}));
        send(&mut ws, trade("S", 4)).await;
        let _ = ws.next().await;
    });
    let mut c = client(&[&ua, &ub]).connect().await.unwrap();
    let (recs, other) = collect(&mut c, 4).await;
    assert_eq!(seqs(&recs), vec![1, 2, 3, 4]);
    let lost = other
        .iter()
        .find_map(|e| match e {
            Event::Disconnected(d) => Some(d.cause.clone()),
            _ => None,
        })
        .expect("a Disconnected event");
    assert_eq!(lost, LossCause::Silent(Duration::from_millis(300)));
    drop(hold_tx);
    a.await.unwrap();
    drop(c);
    b.await.unwrap();
}

#[tokio::test]
async fn heartbeat_positions_after_the_subscription_are_resumed() {
    let (la, ua) = listener().await;
    let (lb, ub) = listener().await;
    let list = [("r-a", ua.as_str()), ("r-b", ub.as_str())];
    let h = hello("r-a", 1000, &list);
    let a = serve(la, move |mut ws| async move {
        handshake(&mut ws, h).await;
        send(&mut ws, trade("S", 2)).await;
        // S moved to 10 on records this subscription does not match; T has no match yet.
        send(&mut ws, json!({"type":"heartbeat","ts":1,"positions":{"S":10,"T":4}})).await;
        let _ = ws.close(Some(tungstenite::protocol::CloseFrame { code: 1001u16.into(), reason: "bye".into() })).await;
    });
    let hb = hello("r-b", 1000, &list);
    let b = serve(lb, move |mut ws| async move {
        let req = handshake(&mut ws, hb).await;
        assert_eq!(req["resume"], json!({"S": 10, "T": 4}));
        send(&mut ws, trade("S", 10)).await; // at the position: dropped
        send(&mut ws, trade("S", 11)).await;
        let _ = ws.next().await;
    });
    let mut c = client(&[&ua, &ub]).connect().await.unwrap();
    let (recs, other) = collect(&mut c, 2).await;
    assert_eq!(seqs(&recs), vec![2, 11]);
    assert!(other.iter().any(|e| matches!(e, Event::Disconnected(d) if d.cause == LossCause::Closed(Some(1001)))));
    assert_eq!(c.stats().duplicates_dropped, 1);
    assert_eq!(c.positions().get("T"), Some(&4));
    a.await.unwrap();
    drop(c);
    b.await.unwrap();
}

#[tokio::test]
async fn a_server_reconnect_is_followed_to_the_region_it_names() {
    let (la, ua) = listener().await;
    let (lb, ub) = listener().await;
    let (lc, uc) = listener().await;
    // The failover list says B next, but the server sends the client to C.
    let list = [("r-a", ua.as_str()), ("r-b", ub.as_str()), ("r-c", uc.as_str())];
    let h = hello("r-a", 1000, &list);
    let uc2 = uc.clone();
    let a = serve(la, move |mut ws| async move {
        handshake(&mut ws, h).await;
        send(&mut ws, trade("S", 1)).await;
        send(&mut ws, json!({"type":"reconnect","reason":"drain","region":"r-c","ws_url":uc2})).await;
        // The client says goodbye itself.
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(_) = m {
                break;
            }
        }
    });
    drop(lb);
    let hc = hello("r-c", 1000, &list);
    let cs = serve(lc, move |mut ws| async move {
        let req = handshake(&mut ws, hc).await;
        assert_eq!(req["resume"], json!({"S": 1}));
        send(&mut ws, trade("S", 2)).await;
        let _ = ws.next().await;
    });
    let mut c = client(&[&ua]).connect().await.unwrap();
    let (recs, other) = collect(&mut c, 2).await;
    assert_eq!(recs.iter().map(|r| (r.1, r.2.as_str())).collect::<Vec<_>>(), vec![(1, "r-a"), (2, "r-c")]);
    assert!(other.iter().any(|e| matches!(e, Event::Disconnected(d)
        if d.cause == LossCause::Reconnect { reason: "drain".into(), region: "r-c".into() })));
    a.await.unwrap();
    drop(c);
    cs.await.unwrap();
}

#[tokio::test]
async fn a_refused_subscription_is_an_error_not_a_retry() {
    let (la, ua) = listener().await;
    let h = hello("r-a", 1000, &[("r-a", ua.as_str())]);
    let a = serve(la, move |mut ws| async move {
        send(&mut ws, h).await;
        let Some(Ok(Message::Text(t))) = ws.next().await else { panic!("no subscribe") };
        let req: Value = serde_json::from_str(t.as_str()).unwrap();
        send(&mut ws, json!({"type":"error","id":req["id"],"code":"forbidden","message":"no"})).await;
        let _ = ws.next().await;
    });
    let err = client(&[&ua]).connect().await.unwrap_err();
    assert!(matches!(&err, ClientError::Refused { code, .. } if code == "forbidden"), "{err}");
    a.await.unwrap();
}

#[tokio::test]
async fn nothing_reachable_says_which_urls_failed() {
    let (l, u) = listener().await;
    drop(l);
    let err = client(&[&u]).connect().await.unwrap_err();
    assert!(matches!(&err, ClientError::Unreachable(m) if m.contains(&u)), "{err}");
    assert!(Client::builder().token("t").subscribe(["trades"], ["*"]).build().is_err());
    assert!(Client::builder().regions(["http://x"]).subscribe(["trades"], ["*"]).build().is_err());
}

/// Serves one HTTP answer with `body` (chunked, as axum may send it) and returns the URL.
async fn route_server(body: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/route?geo=DE", l.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /v1/route?geo=DE HTTP/1.1"));
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        s.write_all(resp.as_bytes()).await.unwrap();
    });
    url
}

#[tokio::test]
async fn a_route_answer_picks_the_region_and_its_alternates() {
    let (lb, ub) = listener().await;
    let (la, ua) = listener().await;
    drop(la); // the routed region is down: the alternate is used
    let body = json!({"region":"r-a","ws_url":ua,"http_url":"http://x","alternates":[{"region":"r-b","ws_url":ub,"http_url":"http://y"}]});
    let route = route_server(body.to_string()).await;
    let hb = hello("r-b", 1000, &[("r-b", ub.as_str())]);
    let b = serve(lb, move |mut ws| async move {
        handshake(&mut ws, hb).await;
        send(&mut ws, trade("S", 1)).await;
        let _ = ws.next().await;
    });
    let mut c = Client::builder().route_url(route).token("t").subscribe(["trades"], ["*"]).build().unwrap();
    c = c.connect().await.unwrap();
    assert_eq!(c.failover_list()[0].region, "r-b", "the hello list replaces the routed one");
    let (recs, _) = collect(&mut c, 1).await;
    assert_eq!(recs[0].2, "r-b");
    drop(c);
    b.await.unwrap();
}
