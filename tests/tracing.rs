//! Distributed traces across regions: a client that resumes at region A and, failing
//! over, at region B with the same W3C `traceparent` produces one trace holding spans of
//! both regions' services (`tickmesh-<region>`), each resume a child of the client's span
//! and each catch-up a child of its resume. The collector is a tiny OTLP/HTTP JSON
//! receiver on 127.0.0.1:0, handed to the regions through `OTEL_EXPORTER_OTLP_ENDPOINT`.

mod support;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{connect, request, Demo};

/// Every OTLP/JSON body POSTed to it, parsed.
#[derive(Clone, Default)]
struct Collector {
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Collector {
    fn start() -> (Collector, String) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let c = Collector::default();
        let bodies = c.bodies.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { break };
                let bodies = bodies.clone();
                std::thread::spawn(move || serve(conn, bodies));
            }
        });
        (c, url)
    }

    /// (service.name, span) of every span received.
    fn spans(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for b in self.bodies.lock().unwrap().iter() {
            for rs in b["resourceSpans"].as_array().into_iter().flatten() {
                let service = rs["resource"]["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["key"] == "service.name")
                    .and_then(|a| a["value"]["stringValue"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for s in ss["spans"].as_array().into_iter().flatten() {
                        out.push((service.clone(), s.clone()));
                    }
                }
            }
        }
        out
    }
}

/// HTTP/1.1 with keep-alive: requests with Content-Length, each answered 200 `{}`.
fn serve(conn: std::net::TcpStream, bodies: Arc<Mutex<Vec<Value>>>) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut len = 0usize;
        let mut first = true;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let t = line.trim_end();
            if t.is_empty() && !first {
                break;
            }
            first = false;
            if let Some((k, v)) = t.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(&body) {
            bodies.lock().unwrap().push(v);
        }
        let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}");
    }
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "current_thread")]
async fn one_resume_across_two_regions_is_one_trace() {
    let (collector, url) = Collector::start();
    // Inherited by the demo and its region processes (the standard OTLP variable; a
    // node's `[telemetry] otlp_endpoint` would take precedence).
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &url);
    let demo = Demo::start(&["--regions", "us-east-1,eu-west-1", "--rate", "500"]);
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let mut sessions = Vec::new();
    for region in ["us-east-1", "eu-west-1"] {
        let r = demo.regions.iter().find(|r| r.region == region).unwrap();
        let (mut ws, _) = connect(&r.ws_url, &demo.user_token, "").await;
        // Wait until the region holds some of us-east-1's records, so resuming from 1
        // needs a catch-up from the journal.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let hb = support::next_json(&mut ws, Duration::from_secs(5)).await;
            if hb.as_ref().and_then(|h| h["positions"]["SYN.USE1"].as_u64()).is_some_and(|p| p > 20) {
                break;
            }
            assert!(Instant::now() < deadline, "{region} never reached SYN.USE1 seq 20: {hb:?}");
        }
        let ack = request(
            &mut ws,
            json!({"op":"subscribe","id":1,"channels":["trades","quotes"],"symbols":"*",
                   "resume":{"SYN.USE1":1},"traceparent":tp}),
        )
        .await;
        assert_eq!(ack["type"], "subscribed", "{ack}");
        // A malformed traceparent is refused with what a valid one looks like.
        let bad = request(
            &mut ws,
            json!({"op":"subscribe","id":2,"channels":["trades"],"symbols":"*","traceparent":"00-xyz"}),
        )
        .await;
        assert_eq!(bad["type"], "error", "{bad}");
        assert!(bad["message"].as_str().unwrap().contains("is not a W3C traceparent"), "{bad}");
        sessions.push(ws);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spans: Vec<(String, Value)> =
            collector.spans().into_iter().filter(|(_, s)| s["traceId"].as_str() == Some(TRACE)).collect();
        let resumes: Vec<&(String, Value)> = spans.iter().filter(|(_, s)| s["name"] == "gateway.resume").collect();
        let services: std::collections::BTreeSet<&str> = resumes.iter().map(|(svc, _)| svc.as_str()).collect();
        let catch_ups: Vec<&(String, Value)> = spans.iter().filter(|(_, s)| s["name"] == "gateway.catch_up").collect();
        let catch_up_services: std::collections::BTreeSet<&str> =
            catch_ups.iter().map(|(svc, _)| svc.as_str()).collect();
        if services.len() == 2 && catch_up_services.len() == 2 {
            assert_eq!(services, ["tickmesh-eu-west-1", "tickmesh-us-east-1"].into_iter().collect());
            for (svc, r) in &resumes {
                assert_eq!(r["parentSpanId"], PARENT, "{svc}: the resume is a child of the client's span: {r}");
            }
            for (svc, c) in &catch_ups {
                let parent = c["parentSpanId"].as_str().unwrap();
                assert!(
                    resumes.iter().any(|(s, r)| s == svc && r["spanId"] == parent),
                    "{svc}: catch-up {c} is not a child of that region's resume"
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no trace with spans of both regions after 60 s; spans of the trace: {spans:?}; all: {:?}",
            collector
                .spans()
                .iter()
                .map(|(s, v)| (s.clone(), v["name"].clone(), v["traceId"].clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(sessions);
}
