//! The dashboard and the figures behind it, against a running three-region demo:
//! * in headless Chromium (Debian's `chromium`, driven by playwright-core from
//!   `tests/browser`): the page loads chart.js from the binary, lists every region, its
//!   figures change as data flows, its charts have points; a screenshot is saved;
//! * `/v1/stats`, `/v1/vwap` and `/v1/stats/global` directly, including a region that was
//!   killed and is shown `down` without holding the page up.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::Demo;

fn addr(http_url: &str) -> std::net::SocketAddr {
    http_url.trim_start_matches("http://").parse().expect("demo http_url is host:port")
}

fn get_json(http_url: &str, path: &str) -> Value {
    let (code, body) = tickmesh::http_get::get(addr(http_url), path, Duration::from_secs(10)).expect("GET");
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {body}"))
}

/// Polls `f` every 250 ms until it returns Some, or panics with `what` after `limit`.
fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Chromium and playwright-core, or a panic that says what to run.
fn browser_prereqs() -> String {
    let chromium = std::env::var("TICKMESH_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: the dashboard test drives Debian's headless chromium; run \
         scripts/install-deps.sh (or apt-get install chromium chromium-driver), or set TICKMESH_CHROMIUM"
    );
    let node_ok = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(node_ok, "node is missing: run scripts/install-deps.sh (or apt-get install nodejs npm)");
    let pw = browser_dir().join("node_modules/playwright-core");
    if !pw.exists() {
        let st = Command::new("npm")
            .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
            .current_dir(browser_dir())
            .status();
        assert!(
            st.is_ok_and(|s| s.success()) && pw.exists(),
            "tests/browser/node_modules/playwright-core is missing and `npm ci` there failed; run scripts/install-deps.sh"
        );
    }
    chromium
}

#[test]
fn dashboard_in_headless_chromium_shows_live_figures() {
    let chromium = browser_prereqs();
    let demo = Demo::start(&[]);
    let me = &demo.regions[0];
    // chart.js is served by the binary itself (no CDN).
    let (code, js) = tickmesh::http_get::get(addr(&me.http_url), "/dashboard/chart.umd.js", Duration::from_secs(10))
        .expect("GET chart.umd.js");
    assert_eq!(code, 200);
    assert!(
        js.contains("Chart.js v4"),
        "the binary serves no chart.js 4 (was npm missing at build time? run `cd gateway/dashboard && npm ci` and rebuild)"
    );

    // A subscribed client that keeps reading, so messages flow out of the first region.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (url, token, stop) = (me.ws_url.clone(), demo.user_token.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let (mut ws, _) = support::connect(&url, &token, "").await;
                let sub = serde_json::json!({"op": "subscribe", "id": 1, "channels": ["trades"], "symbols": "*"});
                support::send(&mut ws, sub).await;
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if support::next_json(&mut ws, Duration::from_secs(1)).await.is_some() {
                        n += 1;
                    }
                }
                n
            })
        })
    };

    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&tmp).expect("target tmp dir");
    let shot = tmp.join(format!("dashboard-{}.png", std::process::id()));
    let _ = std::fs::remove_file(&shot);
    let mut child = Command::new("node")
        .arg(browser_dir().join("dashboard.mjs"))
        .arg(format!("{}/", me.http_url))
        .arg(&shot)
        .args(demo.regions.iter().map(|r| r.region.as_str()))
        .env("TICKMESH_CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node tests/browser/dashboard.mjs");
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for node") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the browser script did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let received = reader.join().expect("reader thread");
    assert!(received > 0, "the subscribed client received nothing");
    let out = child.wait_with_output().expect("browser script output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "browser checks failed ({status}):\n{stdout}\n{stderr}");
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("browser script printed no result ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(result["ok"], true, "{result}");
    for r in &demo.regions {
        let (a, b) = (&result["first"]["regions"][&r.region], &result["second"]["regions"][&r.region]);
        assert!(
            b["records_in_total"].as_f64() > a["records_in_total"].as_f64(),
            "{}: records did not grow: {a} then {b}",
            r.region
        );
    }
    assert!(result["second"]["points"]["chart-records"].as_u64().unwrap_or(0) > 0, "{result}");
    let (a, b) = (&result["first"]["regions"][&me.region], &result["second"]["regions"][&me.region]);
    assert!(b["connections"].as_f64() >= Some(1.0), "the client is not counted: {b}");
    assert!(
        a["messages_out_per_s"].as_f64() > Some(0.0) || b["messages_out_per_s"].as_f64() > Some(0.0),
        "no messages out shown: {a} then {b}"
    );
    assert!(shot.exists(), "no screenshot at {}", shot.display());
    let keep = tmp.parent().unwrap_or(&tmp).join("dashboard.png");
    std::fs::copy(&shot, &keep).expect("copy the screenshot");
    println!("dashboard screenshot: {} (last one also at {})", shot.display(), keep.display());
}

#[test]
fn stats_vwap_and_global_view_with_a_region_down() {
    let demo = Demo::start(&[]);
    let me = demo.regions[0].http_url.clone();
    let names: Vec<String> = demo.regions.iter().map(|r| r.region.clone()).collect();

    // Rates come from samples once per second: wait until every source flows here.
    let s = wait_for(Duration::from_secs(60), "every source flowing into the first region", || {
        let s = get_json(&me, "/v1/stats");
        let srcs = s["sources"].as_array()?;
        (srcs.len() == names.len() && srcs.iter().all(|x| x["records_per_s"].as_f64() > Some(0.0))).then_some(s)
    });
    assert_eq!(s["region"], names[0].as_str());
    assert_eq!(s["state"], "active");
    assert!(s["records_in_per_s"]["home"].as_f64() > Some(0.0), "{s}");
    assert!(s["records_in_per_s"]["replicated"].as_f64() > Some(0.0), "{s}");
    assert_eq!(s["sources"].as_array().unwrap().iter().filter(|x| x["origin"] == "home").count(), 1);
    assert_eq!(s["peers"].as_array().unwrap().len(), names.len() - 1, "{s}");
    assert!(!s["history"].as_array().unwrap().is_empty());
    for src in s["sources"].as_array().unwrap() {
        let name = src["source"].as_str().unwrap();
        assert!(src["journal_seq"].as_u64() > Some(0) && src["last_seq"].as_u64() > Some(0), "{src}");
        assert!(s["journal"]["positions"][name].as_u64().is_some(), "{s}");
    }

    // VWAP: rows agree with their own per-source figures; a symbol filter returns one row.
    let rows = wait_for(Duration::from_secs(30), "trades in /v1/vwap", || {
        let v = get_json(&me, "/v1/vwap?limit=5");
        v.as_array().filter(|a| !a.is_empty()).cloned()
    });
    assert!(rows.len() <= 5);
    for r in &rows {
        let sum: u64 = r["by_source"].as_array().unwrap().iter().map(|s| s["trades"].as_u64().unwrap()).sum();
        assert_eq!(Some(sum), r["trades"].as_u64(), "{r}");
        tickmesh_codec::Px::parse(r["vwap"].as_str().unwrap()).expect("vwap is a decimal string");
        tickmesh_codec::Qty::parse(r["volume"].as_str().unwrap()).expect("volume is a decimal string");
    }
    let sym = rows[0]["symbol"].as_str().unwrap();
    let one = get_json(&me, &format!("/v1/vwap?symbol={sym}"));
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(one[0]["symbol"], sym);
    let (code, body) = tickmesh::http_get::get(addr(&me), "/v1/vwap?symbol=NOPE", Duration::from_secs(5)).unwrap();
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("unknown_symbol"), "{body}");
    let (code, body) = tickmesh::http_get::get(addr(&me), "/v1/vwap?limit=0", Duration::from_secs(5)).unwrap();
    assert_eq!(code, 400, "{body}");

    // Global: every region active, lag rows for every replicated source with its home.
    let g = wait_for(Duration::from_secs(60), "every region active and every source replicated", || {
        let g = get_json(&me, "/v1/stats/global");
        let active = g["regions"].as_array()?.iter().all(|r| r["state"] == "active");
        let replicated = g["lag"].as_array()?.len() == names.len() * (names.len() - 1);
        (active && replicated).then_some(g)
    });
    let listed: Vec<&str> = g["regions"].as_array().unwrap().iter().map(|r| r["region"].as_str().unwrap()).collect();
    let mut sorted = listed.clone();
    sorted.sort();
    let mut want: Vec<&str> = names.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(sorted, want);
    assert_eq!(listed[0], names[0], "this region comes first");
    let lag = g["lag"].as_array().unwrap();
    assert_eq!(lag.len(), names.len() * (names.len() - 1), "{g}");
    assert!(lag.iter().all(|l| l["from"].is_string() && l["records_behind"].is_u64()), "{g}");

    // A killed region is `down`, and the page still answers promptly.
    let victim = names[2].clone();
    demo.kill_region(&victim);
    let g = wait_for(Duration::from_secs(30), "the killed region shown down", || {
        let g = get_json(&me, "/v1/stats/global");
        let r = g["regions"].as_array()?.iter().find(|r| r["region"] == victim.as_str())?.clone();
        (r["state"] == "down").then_some(g)
    });
    let down = g["regions"].as_array().unwrap().iter().find(|r| r["region"] == victim.as_str()).unwrap();
    assert!(down["error"].is_string() && down.get("stats").is_none(), "{down}");
    let t = Instant::now();
    let _ = get_json(&me, "/v1/stats/global");
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "a dead region held /v1/stats/global for {:?}; each region gets {:?}",
        t.elapsed(),
        tickmesh::stats::PEER_TIMEOUT
    );
}
