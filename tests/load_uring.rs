//! The io_uring backend behaves like epoll: for each `gateway.io_backend`, a gateway
//! started in-process streams 5,000 AAPL trades to 20 clients, every client gets every
//! record once and in `seq` order, and a client that stops reading (`slow: disconnect`,
//! subscribed to AAPL and to a busier MSFT stream) is closed with 4008 while the others
//! still get everything.
//!
//! Built only with `--features io-uring` (`cargo test --features io-uring --test load_uring`);
//! skipped, with a message, where the kernel refuses io_uring.
#![cfg(feature = "io-uring")]

use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tickmesh_gateway::auth::{mint_hs256, Claims, Grant, Verifier};
use tickmesh_gateway::{Gateway, GatewayConfig, GatewayShared};
use tokio_tungstenite::tungstenite::Message;

const RECORDS: u64 = 5_000;
const CLIENTS: usize = 20;

fn trade(seq: u64, sym: &str) -> Vec<u8> {
    let mut rec = tickmesh_codec::testing::trade(seq, sym, "320.14", "100", tickmesh_codec::Side::Buy);
    if sym != "AAPL" {
        // Its own source, so its seq runs on its own.
        rec.header.src = tickmesh_codec::SourceId::new("TEST.MSFT").unwrap();
    }
    rec.to_bytes()
}

/// Runs the check on one backend; false if the kernel refused io_uring.
async fn run_backend(backend: &str) -> bool {
    let secret = b"load-uring-test-secret-0123456789".to_vec();
    let mut verifier = Verifier::new();
    verifier.add_hs256(&secret);
    let shared = Arc::new(GatewayShared::new("test", verifier, Box::new(String::new)));
    let cfg = GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        io_backend: backend.into(),
        // Above all of the AAPL stream (5,000 x ~150 bytes): a reading client is never slow.
        slow_bytes: 1 << 20,
        socket_send_buffer: 8192,
        ..Default::default()
    };
    let (gw, mut fanout) = match Gateway::start(cfg, shared, axum::Router::new()) {
        Ok(g) => g,
        Err(e) if backend == "io_uring" && e.to_string().contains("kernel refused") => {
            eprintln!("{e}; skipping the io_uring half");
            return false;
        }
        Err(e) => panic!("gateway did not start: {e}"),
    };
    for sym in ["AAPL", "MSFT"] {
        let b = trade(1, sym);
        fanout.publish(&tickmesh_codec::access_untrusted(&b).unwrap());
    }
    let claims = Claims {
        sub: "t".into(),
        exp: tickmesh_codec::now_ns() / 1_000_000_000 + 3600,
        home: None,
        channels: Grant::All,
        symbols: Grant::All,
        roles: vec![],
    };
    let url = format!("ws://{}/v1/ws?token={}", gw.local_addr(), mint_hs256(&secret, &claims).unwrap());

    // The stalled client: a tiny receive buffer, subscribes, then never reads again.
    let addr = gw.local_addr();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    sock.set_nonblocking(true).unwrap();
    let tcp = tokio::net::TcpStream::from_std(sock.into()).unwrap();
    let (mut stalled, _) = tokio_tungstenite::client_async(url.clone(), tcp).await.expect("handshake");
    stalled
        .send(Message::text(
            r#"{"op":"subscribe","id":1,"channels":["trades"],"symbols":["AAPL","MSFT"],"slow":"disconnect"}"#,
        ))
        .await
        .unwrap();
    loop {
        let Some(Ok(Message::Text(t))) = stalled.next().await else { panic!("stalled client lost before its ack") };
        if t.contains("\"subscribed\"") {
            break;
        }
    }

    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(CLIENTS);
    for _ in 0..CLIENTS {
        let url = url.clone();
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
            ws.send(Message::text(r#"{"op":"subscribe","id":1,"channels":["trades"],"symbols":["AAPL"]}"#))
                .await
                .unwrap();
            let mut last = 1u64;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while last < RECORDS {
                let msg = tokio::time::timeout_at(deadline, ws.next()).await.expect("records within 120 s");
                let Some(Ok(Message::Text(t))) = msg else { panic!("connection ended at seq {last}") };
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                match v["type"].as_str() {
                    Some("subscribed") => ready.send(()).await.unwrap(),
                    Some("trade") => {
                        let seq = v["seq"].as_u64().unwrap();
                        assert_eq!(seq, last + 1, "every record once, in order");
                        last = seq;
                    }
                    Some("heartbeat" | "hello") => {}
                    other => panic!("unexpected {other:?}: {t}"),
                }
            }
            last
        }));
    }
    drop(ready_tx);
    for _ in 0..CLIENTS {
        let r = tokio::time::timeout(Duration::from_secs(120), ready_rx.recv()).await;
        assert!(matches!(r, Ok(Some(()))), "{backend}: a client did not get subscribed");
    }
    // Publish from a plain thread, as the node's hub does, in bursts.
    let publisher = std::thread::spawn(move || {
        let mut msft = 1;
        for seq in 2..=RECORDS {
            let b = trade(seq, "AAPL");
            fanout.publish(&tickmesh_codec::access_untrusted(&b).unwrap());
            for _ in 0..3 {
                msft += 1;
                let b = trade(msft, "MSFT");
                fanout.publish(&tickmesh_codec::access_untrusted(&b).unwrap());
            }
            if seq.is_multiple_of(50) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        fanout
    });
    for t in tasks {
        assert_eq!(t.await.unwrap(), RECORDS);
    }
    let _fanout = publisher.join().unwrap();

    // Now read the stalled client: whatever was queued, then close code 4008.
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        assert!(Instant::now() < deadline, "{backend}: the stalled client was not closed");
        match tokio::time::timeout(Duration::from_secs(60), stalled.next()).await.expect("stalled client read") {
            Some(Ok(Message::Close(c))) => break c.map(|c| u16::from(c.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break None,
        }
    };
    assert_eq!(code, Some(4008), "{backend}: a stalled client with slow=disconnect is closed with 4008");
    gw.shutdown();
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_uring_and_epoll_deliver_the_same() {
    assert!(run_backend("epoll").await);
    run_backend("io_uring").await;
}

#[test]
fn unknown_backend_is_refused_with_the_choices() {
    let cfg = GatewayConfig { io_backend: "kqueue".into(), ..Default::default() };
    let mut problems = Vec::new();
    cfg.validate(&mut problems);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("gateway.io_backend") && problems[0].contains("\"auto\", \"epoll\" or \"io_uring\""),
        "{problems:?}"
    );
}
