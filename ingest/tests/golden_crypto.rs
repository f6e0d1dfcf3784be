//! Golden tests of the Coinbase and Binance adapters against the real captures in
//! `../shared/data/crypto` (read in place, never copied), with expectations computed at run time
//! by `scripts/ref_crypto.py` (Python's json/decimal and zstandard, in the test venv), and end to
//! end through the replay server and the live adapters, gaps included.
//!
//! What is compared, per capture:
//! * every trade (symbol, price, size, aggressor, trade id, venue time) with the reference's;
//! * our book with the reference's independently rebuilt book at every venue top-of-book
//!   message, and the final books level by level;
//! * our book with the venue's own top of book: Coinbase Exchange `ticker` (exact, for every
//!   ticker at least as new as the book), Advanced Trade `ticker` (its prices must be our best
//!   bid/ask within 8 book messages either way: that ticker is not in lockstep with `l2_data`),
//!   Binance `bookTicker` (consistency of the known levels at the same update id);
//! * books never cross, checked after every message;
//! * live: the books rebuilt from the `Level` records the adapters emit (as the gateway does)
//!   equal the reference's final books after an injected gap was detected and resynchronised.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::Value;
use tickmesh_codec::{Body, Px, Qty, Record, Side, SourceId, TradingState};
use tickmesh_ingest::book::LevelBook;
use tickmesh_ingest::coinbase::{self, FeedEvent, FeedItem};
use tickmesh_ingest::replay::{self, CaptureFormat, Pace, ReplayOptions, ReplayServer};
use tickmesh_ingest::{binance, Decoder, Error};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn capture(name: &str) -> PathBuf {
    let p = Path::new(DATA).join("crypto").join(name);
    assert!(
        p.is_file(),
        "capture {} is missing: the shared data folder must sit beside the repository (../shared/data, see its SOURCES.md)",
        p.display()
    );
    p
}

fn python() -> PathBuf {
    let p = std::env::var_os("TICKMESH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(REPO).join(".venv/bin/python"));
    assert!(p.exists(), "test python {} not found: run scripts/install-deps.sh (or set TICKMESH_PYTHON)", p.display());
    p
}

/// The reference script's view of a capture.
fn reference(format: &str, path: &Path) -> Vec<Value> {
    let script = Path::new(REPO).join("scripts/ref_crypto.py");
    let out =
        Command::new(python()).arg(&script).arg(format).arg(path).output().expect("running scripts/ref_crypto.py");
    assert!(
        out.status.success(),
        "scripts/ref_crypto.py {format} failed: {}; run scripts/install-deps.sh if a module is missing",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn kind<'a>(r: &'a [Value], k: &str) -> impl Iterator<Item = &'a Value> + 'a {
    let k = k.to_owned();
    r.iter().filter(move |v| v["kind"] == k.as_str())
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

type Levels = Vec<(String, String)>;

fn book_levels(b: &LevelBook, side: Side) -> Levels {
    b.levels(side).map(|(p, q, _)| (p.to_string(), q.to_string())).collect()
}

fn ref_levels(v: &Value) -> Levels {
    v.as_array().unwrap().iter().map(|l| (s(&l[0]), s(&l[1]))).collect()
}

/// Trades as the reference prints them: (i, sym, px, qty, side, id, ts).
type TradeRow = (usize, String, String, String, String, u64, u64);

fn ref_trades(r: &[Value]) -> Vec<TradeRow> {
    kind(r, "trade")
        .map(|t| {
            (
                t["i"].as_u64().unwrap() as usize,
                s(&t["sym"]),
                s(&t["px"]),
                s(&t["qty"]),
                s(&t["side"]),
                t["id"].as_u64().unwrap(),
                t["ts"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn our_trade(i: usize, r: &Record) -> Option<TradeRow> {
    match r.body {
        Body::Trade(t) => Some((
            i,
            r.header.sym.as_str().to_owned(),
            t.px.to_string(),
            t.qty.to_string(),
            t.side.as_str().to_owned(),
            t.match_id,
            r.header.ts_event,
        )),
        _ => None,
    }
}

fn bbo(b: &LevelBook) -> (String, String, String, String) {
    let q = b.quote();
    let p = |x: Px| if x.is_null() { "null".to_owned() } else { x.to_string() };
    (p(q.bid_px), q.bid_qty.to_string(), p(q.ask_px), q.ask_qty.to_string())
}

fn ref_bbo(v: &Value) -> (String, String, String, String) {
    let p = |x: &Value| if x.is_null() { "null".to_owned() } else { s(x) };
    (p(&v[0]), s(&v[1]), p(&v[2]), s(&v[3]))
}

fn tickers_by_index(r: &[Value]) -> HashMap<usize, Vec<&Value>> {
    let mut m: HashMap<usize, Vec<&Value>> = HashMap::new();
    for t in kind(r, "ticker") {
        m.entry(t["i"].as_u64().unwrap() as usize).or_default().push(t);
    }
    m
}

fn reason(r: &Record) -> Option<(TradingState, String)> {
    match r.body {
        Body::Status(st) => {
            let txt = String::from_utf8_lossy(&st.reason).trim_end_matches('\0').to_owned();
            Some((st.state, txt))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Offline: decoder against the reference, message by message.
// ---------------------------------------------------------------------------------------------

#[test]
fn coinbase_exchange_matches_reference() {
    let path = capture("COINBASE.ws.28.0");
    let refv = reference("coinbase", &path);
    let cap = replay::load_capture(&path).unwrap();
    assert_eq!(cap.format, CaptureFormat::CoinbaseExchange);
    let mut dec = coinbase::ExchangeDecoder::new(SourceId::new("COINBASE").unwrap(), &[]).unwrap();
    let tickers = tickers_by_index(&refv);
    let (mut trades, mut out) = (Vec::new(), Vec::new());
    let (mut fresh, mut compared) = (0, 0);
    for (i, m) in cap.received.iter().enumerate() {
        out.clear();
        dec.set_receipt_time(m.ts_ns);
        dec.feed(m.payload.as_bytes(), &mut out).unwrap_or_else(|e| panic!("message {i}: {e}"));
        trades.extend(out.iter().filter_map(|r| our_trade(i, r)));
        for p in dec.products() {
            assert!(!dec.book(&p).unwrap().is_crossed(), "book of {p} crossed after message {i}");
        }
        for t in tickers.get(&i).into_iter().flatten() {
            let ours = bbo(dec.book(&s(&t["sym"])).unwrap());
            assert_eq!(ours, ref_bbo(&t["ref"]), "message {i}: our book and the reference's disagree");
            compared += 1;
            if t["fresh"] == true {
                fresh += 1;
                assert_eq!(
                    (ours.0.clone(), ours.2.clone()),
                    (s(&t["bid"]), s(&t["ask"])),
                    "message {i}: venue ticker {t}"
                );
            }
        }
    }
    assert!(dec.poll_event().is_none(), "the clean capture has no gap");
    assert_eq!(trades, ref_trades(&refv));
    assert_eq!(dec.cross_check(), coinbase::CrossCheck { checked: fresh, mismatched: 0 });
    assert!(fresh > 0, "no ticker was newer than its book");
    assert_eq!(compared, kind(&refv, "ticker").count());
    let books: Vec<&Value> = kind(&refv, "book").collect();
    assert!(!books.is_empty());
    for b in books {
        let ours = dec.book(&s(&b["sym"])).unwrap();
        assert_eq!(book_levels(ours, Side::Buy), ref_levels(&b["bids"]), "bids of {}", b["sym"]);
        assert_eq!(book_levels(ours, Side::Sell), ref_levels(&b["asks"]), "asks of {}", b["sym"]);
    }
}

#[test]
fn coinbase_advanced_matches_reference() {
    let path = capture("COINBASE.jsonl.zst");
    let refv = reference("coinbase-advanced", &path);
    let cap = replay::load_capture(&path).unwrap();
    assert_eq!(cap.format, CaptureFormat::CoinbaseAdvanced);
    let mut dec = coinbase::AdvancedDecoder::new(SourceId::new("COINBASE").unwrap(), &[]).unwrap();
    let tickers = tickers_by_index(&refv);
    let (mut trades, mut out) = (Vec::new(), Vec::new());
    // Per product: our best bid/ask prices after each message that changed the book.
    let mut history: HashMap<String, Vec<(usize, String, String)>> = HashMap::new();
    let mut pending: Vec<(String, usize, String, String)> = Vec::new();
    let mut exact = 0;
    for (i, m) in cap.received.iter().enumerate() {
        out.clear();
        dec.set_receipt_time(m.ts_ns);
        dec.feed(m.payload.as_bytes(), &mut out).unwrap_or_else(|e| panic!("message {i}: {e}"));
        trades.extend(out.iter().filter_map(|r| our_trade(i, r)));
        for p in dec.products() {
            let b = dec.book(&p).unwrap();
            assert!(!b.is_crossed(), "book of {p} crossed after message {i}");
            if out.iter().any(|r| r.header.sym.as_str() == p && matches!(r.body, Body::Level(_))) {
                let q = bbo(b);
                history.entry(p).or_default().push((i, q.0, q.2));
            }
        }
        for t in tickers.get(&i).into_iter().flatten() {
            let sym = s(&t["sym"]);
            let ours = bbo(dec.book(&sym).unwrap());
            assert_eq!(ours, ref_bbo(&t["ref"]), "message {i}: our book and the reference's disagree");
            if (ours.0.clone(), ours.1.clone(), ours.2.clone(), ours.3.clone())
                == (s(&t["bid"]), s(&t["bid_qty"]), s(&t["ask"]), s(&t["ask_qty"]))
            {
                exact += 1;
            }
            pending.push((sym, i, s(&t["bid"]), s(&t["ask"])));
        }
    }
    assert!(dec.poll_event().is_none(), "the clean capture has no gap");
    for (sym, i, bid, ask) in &pending {
        let h = &history[sym];
        let k = h.iter().rposition(|(j, _, _)| j <= i).unwrap_or(0);
        let window = &h[k.saturating_sub(8)..(k + 9).min(h.len())];
        assert!(
            window.iter().any(|(_, b, a)| b == bid && a == ask),
            "ticker of {sym} at message {i} ({bid} / {ask}) is not our best bid/ask within 8 book messages"
        );
    }
    assert_eq!(pending.len(), kind(&refv, "ticker").count());
    eprintln!("advanced trade: {exact} of {} tickers equal our top of book exactly on arrival", pending.len());
    assert_eq!(trades, ref_trades(&refv));
    for b in kind(&refv, "book") {
        let ours = dec.book(&s(&b["sym"])).unwrap();
        assert_eq!(book_levels(ours, Side::Buy), ref_levels(&b["bids"]), "bids of {}", b["sym"]);
        assert_eq!(book_levels(ours, Side::Sell), ref_levels(&b["asks"]), "asks of {}", b["sym"]);
    }
}

#[test]
fn binance_diff_only_matches_reference() {
    let path = capture("BINANCE.ws.1.0");
    let refv = reference("binance", &path);
    let cap = replay::load_capture(&path).unwrap();
    assert_eq!(cap.format, CaptureFormat::Binance);
    let mut dec = binance::Decoder::new(SourceId::new("BINANCE").unwrap(), &[], binance::SyncMode::DiffOnly).unwrap();
    let tickers = tickers_by_index(&refv);
    let (mut trades, mut out, mut statuses) = (Vec::new(), Vec::new(), Vec::new());
    let mut at_diff = 0;
    for (i, m) in cap.received.iter().enumerate() {
        out.clear();
        dec.set_receipt_time(m.ts_ns);
        dec.feed(m.payload.as_bytes(), &mut out).unwrap_or_else(|e| panic!("message {i}: {e}"));
        trades.extend(out.iter().filter_map(|r| our_trade(i, r)));
        statuses.extend(out.iter().filter_map(|r| reason(r).map(|x| (r.header.sym.as_str().to_owned(), x))));
        for p in dec.symbols() {
            assert!(!dec.book(&p).unwrap().is_crossed(), "book of {p} crossed after message {i}");
        }
        for t in tickers.get(&i).into_iter().flatten().filter(|t| t["at_diff"] == true) {
            at_diff += 1;
            assert_eq!(t["ok"], true, "the reference finds bookTicker {t} inconsistent with the diffs");
            let b = dec.book(&s(&t["sym"])).unwrap();
            let (bid, ask) = (Px::parse(&s(&t["bid"])).unwrap(), Px::parse(&s(&t["ask"])).unwrap());
            let (bq, aq) = (Qty::parse(&s(&t["bid_qty"])).unwrap(), Qty::parse(&s(&t["ask_qty"])).unwrap());
            assert!(b.get(Side::Buy, bid).is_none_or(|(q, _)| q == bq), "message {i}: bid size differs from {t}");
            assert!(b.get(Side::Sell, ask).is_none_or(|(q, _)| q == aq), "message {i}: ask size differs from {t}");
            assert!(b.best(Side::Buy).is_none_or(|(p, _, _)| p <= bid), "message {i}: we know a bid above {t}");
            assert!(b.best(Side::Sell).is_none_or(|(p, _, _)| p >= ask), "message {i}: we know an ask below {t}");
        }
    }
    let boundary = kind(&refv, "ticker").filter(|t| t["at_diff"] == true).count() as u64;
    assert!(boundary > 0, "no bookTicker falls on a diff boundary");
    assert_eq!(at_diff, boundary);
    assert_eq!(dec.cross_check(), binance::CrossCheck { checked: boundary, mismatched: 0 });
    assert!(dec.poll_event().is_none(), "the clean capture has no gap");
    assert_eq!(trades, ref_trades(&refv));
    let books: Vec<&Value> = kind(&refv, "book").collect();
    assert!(!books.is_empty());
    for b in books {
        let sym = s(&b["sym"]);
        assert!(statuses.contains(&(sym.clone(), (TradingState::Unknown, "DIFFONLY".into()))), "{sym} not flagged");
        let ours = dec.book(&sym).unwrap();
        assert_eq!(book_levels(ours, Side::Buy), ref_levels(&b["bids"]), "bids of {sym}");
        assert_eq!(book_levels(ours, Side::Sell), ref_levels(&b["asks"]), "asks of {sym}");
    }
}

// ---------------------------------------------------------------------------------------------
// Live: adapters against the replay server, with an injected gap.
// ---------------------------------------------------------------------------------------------

/// One side of a rebuilt book.
type Side2 = BTreeMap<Px, Qty>;

/// Books rebuilt from Level records, as the gateway builds `book_snapshot`.
#[derive(Default)]
struct Rebuilt {
    books: BTreeMap<String, (Side2, Side2)>,
    statuses: Vec<(String, TradingState, String)>,
    gaps: Vec<(String, u64, u64)>,
    quotes: usize,
    errors: Vec<String>,
}

impl Rebuilt {
    fn take(&mut self, item: FeedItem) {
        match item {
            FeedItem::Record(r) => {
                let sym = r.header.sym.as_str().to_owned();
                match r.body {
                    Body::Level(l) => {
                        let (bids, asks) = self.books.entry(sym).or_default();
                        let side = if l.side == Side::Buy { bids } else { asks };
                        if l.qty == Qty::ZERO {
                            side.remove(&l.px);
                        } else {
                            side.insert(l.px, l.qty);
                        }
                    }
                    Body::Quote(_) => {
                        self.quotes += 1;
                        if let Some((bids, asks)) = self.books.get(&sym) {
                            if let (Some(b), Some(a)) = (bids.keys().next_back(), asks.keys().next()) {
                                assert!(b < a, "rebuilt book of {sym} crossed: bid {b} >= ask {a}");
                            }
                        }
                    }
                    _ => {
                        if let Some((st, why)) = reason(&r) {
                            self.statuses.push((sym, st, why));
                        }
                    }
                }
            }
            FeedItem::Event(FeedEvent::Gap { sym, error: Error::VenueGap { expected, got, .. } }) => {
                self.gaps.push((sym, expected, got))
            }
            FeedItem::DecodeError(e) => self.errors.push(e.to_string()),
            _ => {}
        }
    }

    fn assert_books_equal(&self, refv: &[Value]) {
        let mut n = 0;
        for b in kind(refv, "book") {
            let sym = s(&b["sym"]);
            let (bids, asks) = self.books.get(&sym).unwrap_or_else(|| panic!("no levels of {sym} arrived"));
            let ours_b: Levels = bids.iter().rev().map(|(p, q)| (p.to_string(), q.to_string())).collect();
            let ours_a: Levels = asks.iter().map(|(p, q)| (p.to_string(), q.to_string())).collect();
            assert_eq!(ours_b, ref_levels(&b["bids"]), "rebuilt bids of {sym}");
            assert_eq!(ours_a, ref_levels(&b["asks"]), "rebuilt asks of {sym}");
            n += 1;
        }
        assert!(n > 0);
    }

    fn has_status(&self, sym: &str, why: &str) -> bool {
        self.statuses.iter().any(|(s, _, w)| s == sym && w == why)
    }
}

async fn collect(mut rx: tokio::sync::mpsc::Receiver<FeedItem>) -> Rebuilt {
    let mut r = Rebuilt::default();
    let all = async {
        while let Some(item) = rx.recv().await {
            r.take(item);
        }
    };
    tokio::time::timeout(Duration::from_secs(180), all).await.expect("the live adapter did not finish within 180 s");
    r
}

/// Index of a `match` whose product trades again well before the end (so a gap ending there is
/// detected by the trade-id check with time to resync).
fn exchange_gap(cap: &replay::Capture) -> std::ops::Range<usize> {
    let matches: Vec<(usize, String)> = cap
        .received
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let v: Value = serde_json::from_str(&m.payload).ok()?;
            (v["type"] == "match").then(|| (i, s(&v["product_id"])))
        })
        .collect();
    for (k, (i, p)) in matches.iter().enumerate().skip(10) {
        if let Some((j, _)) = matches[k + 1..].iter().find(|(_, q)| q == p) {
            if *j < cap.received.len() / 2 && *i > 200 {
                return i - 20..i + 1;
            }
        }
    }
    panic!("no suitable match for the gap test in the capture");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coinbase_exchange_live_replay_resyncs_after_gap() {
    let path = capture("COINBASE.ws.28.0");
    let refv = reference("coinbase", &path);
    let cap = replay::load_capture(&path).unwrap();
    let gap = exchange_gap(&cap);
    let opts = ReplayOptions { pace: Pace::Recorded(5.0), gaps: vec![gap.clone()], ..ReplayOptions::default() };
    let (_addr, mut server) = ReplayServer::start_with(&path, CaptureFormat::CoinbaseExchange, opts).await.unwrap();
    let products: Vec<String> = kind(&refv, "book").map(|b| s(&b["sym"])).collect();
    let mut lo = coinbase::LiveOptions::new(&server.ws_url(), &products, coinbase::Api::Exchange);
    lo.max_connections = Some(1);
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    let live = tokio::spawn(coinbase::run_live_with(lo, tx));
    let r = collect(rx).await;
    live.await.unwrap().unwrap();
    let p = server.finished().await;
    assert_eq!(p.dropped, gap.len());
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(!r.gaps.is_empty(), "the dropped match was not detected");
    for sym in &products {
        assert!(r.has_status(sym, "GAP"), "{sym}: no GAP status");
        assert!(r.has_status(sym, "RESYNC"), "{sym}: no RESYNC status");
    }
    r.assert_books_equal(&refv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coinbase_advanced_live_replay_resyncs_after_gap() {
    let path = capture("COINBASE.jsonl.zst");
    let refv = reference("coinbase-advanced", &path);
    let opts = ReplayOptions {
        pace: Pace::Recorded(5.0),
        gaps: std::iter::once(300..305).collect(),
        ..ReplayOptions::default()
    };
    let (_addr, mut server) = ReplayServer::start_with(&path, CaptureFormat::CoinbaseAdvanced, opts).await.unwrap();
    let products: Vec<String> = kind(&refv, "book").map(|b| s(&b["sym"])).collect();
    let mut lo = coinbase::LiveOptions::new(&server.ws_url(), &products, coinbase::Api::Advanced);
    lo.max_connections = Some(1);
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    let live = tokio::spawn(coinbase::run_live_with(lo, tx));
    let r = collect(rx).await;
    live.await.unwrap().unwrap();
    assert_eq!(server.finished().await.dropped, 5);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.gaps.len(), 1, "one sequence_num gap: {:?}", r.gaps);
    assert_eq!(r.gaps[0].2 - r.gaps[0].1, 5, "five numbers skipped: {:?}", r.gaps);
    for sym in &products {
        assert!(r.has_status(sym, "GAP") && r.has_status(sym, "RESYNC"), "{sym}: {:?}", r.statuses);
    }
    assert!(r.quotes > 0);
    r.assert_books_equal(&refv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binance_live_replay_resyncs_after_gap() {
    let path = capture("BINANCE.ws.1.0");
    let refv = reference("binance", &path);
    let cap = replay::load_capture(&path).unwrap();
    // Drop two NKNUSDT diffs in the first half of the capture.
    let depth: Vec<usize> =
        cap.received.iter().enumerate().filter(|(_, m)| m.payload.contains("nknusdt@depth")).map(|(i, _)| i).collect();
    let at = depth[depth.len() / 3];
    let next = depth[depth.len() / 3 + 1];
    let opts =
        ReplayOptions { pace: Pace::Recorded(5.0), gaps: vec![at..at + 1, next..next + 1], ..ReplayOptions::default() };
    let (_addr, mut server) = ReplayServer::start_with(&path, CaptureFormat::Binance, opts).await.unwrap();
    let symbols: Vec<String> = kind(&refv, "book").map(|b| s(&b["sym"])).collect();
    let mut lo = binance::LiveOptions::new(&server.ws_url(), &server.rest_url(), &symbols);
    lo.max_connections = Some(1);
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    let live = tokio::spawn(binance::run_live_with(lo, tx));
    let r = collect(rx).await;
    live.await.unwrap().unwrap();
    assert_eq!(server.finished().await.dropped, 2);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.gaps.iter().filter(|g| g.0 == "NKNUSDT").count(), 1, "{:?}", r.gaps);
    assert!(r.has_status("NKNUSDT", "GAP"));
    let partial = r.statuses.iter().filter(|(s, _, w)| s == "NKNUSDT" && w == "PARTIAL").count();
    assert_eq!(partial, 2, "synchronised once at the start and once after the gap: {:?}", r.statuses);
    for sym in &symbols {
        assert!(r.has_status(sym, "PARTIAL"), "{sym} never synchronised: {:?}", r.statuses);
    }
    assert!(r.quotes > 0, "bookTicker quotes pass through for a partial book");
    r.assert_books_equal(&refv);
}

#[tokio::test]
async fn replay_server_rest_refuses_unknown_symbols() {
    let path = capture("BINANCE.ws.1.0");
    let (_addr, server) = ReplayServer::start(&path, CaptureFormat::Binance, Pace::Fast).await.unwrap();
    let err = binance::http_get(&format!("{}/api/v3/depth?symbol=NOPE", server.rest_url())).await.unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    // Before playback, a symbol's snapshot point is just before its first diff.
    let cap = replay::load_capture(&path).unwrap();
    let first: Value = cap
        .received
        .iter()
        .find_map(|m| {
            let v: Value = serde_json::from_str(&m.payload).ok()?;
            (v["data"]["e"] == "depthUpdate").then(|| v["data"].clone())
        })
        .unwrap();
    let url = format!("{}/api/v3/depth?symbol={}", server.rest_url(), s(&first["s"]));
    let v: Value = serde_json::from_slice(&binance::http_get(&url).await.unwrap()).unwrap();
    assert_eq!(v["lastUpdateId"].as_u64(), Some(first["U"].as_u64().unwrap() - 1));
    assert_eq!(v["x_tickmesh_partial"], true);
    assert!(ReplayServer::start(&path, CaptureFormat::CoinbaseExchange, Pace::Fast).await.is_err());
}

#[test]
fn decode_capture_reads_every_message() {
    for (format, name) in
        [("coinbase", "COINBASE.ws.28.0"), ("coinbase-advanced", "COINBASE.jsonl.zst"), ("binance", "BINANCE.ws.1.0")]
    {
        let path = capture(name);
        let refv = reference(format, &path);
        let want = kind(&refv, "counts").next().unwrap();
        let mut kinds: HashMap<&'static str, usize> = HashMap::new();
        let sum = replay::decode_capture(&path, SourceId::new("X").unwrap(), |r| {
            *kinds.entry(tickmesh_codec::json::type_name(r.body.kind())).or_default() += 1;
        })
        .unwrap();
        assert!(sum.errors.is_empty(), "{name}: {:?}", sum.errors);
        assert_eq!(sum.messages as u64, want["messages"].as_u64().unwrap(), "{name}");
        let got: BTreeMap<String, u64> = sum.counts.into_iter().collect();
        let want: BTreeMap<String, u64> =
            want["types"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect();
        assert_eq!(got, want, "{name}: message types");
        assert_eq!(kinds.get("trade").copied().unwrap_or(0), kind(&refv, "trade").count(), "{name}: trades");
        assert!(kinds.get("quote").is_some_and(|n| *n > 0), "{name}: no quotes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_adapter_reconnects_and_marks_books_stale() {
    let path = capture("BINANCE.ws.1.0");
    let (_addr, server) = ReplayServer::start(&path, CaptureFormat::Binance, Pace::Fast).await.unwrap();
    let refv = reference("binance", &path);
    let symbols: Vec<String> = kind(&refv, "book").map(|b| s(&b["sym"])).collect();
    let mut lo = binance::LiveOptions::new(&server.ws_url(), &server.rest_url(), &symbols);
    lo.max_connections = Some(2);
    lo.backoff = Duration::from_millis(10);
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let live = tokio::spawn(binance::run_live_with(lo, tx));
    let (mut connected, mut disconnected, mut disconn_status) = (0, 0, 0);
    while let Some(item) = rx.recv().await {
        match item {
            FeedItem::Connected { .. } => connected += 1,
            FeedItem::Disconnected { .. } => disconnected += 1,
            FeedItem::Record(r) if reason(&r).is_some_and(|(_, w)| w == "DISCONN") => disconn_status += 1,
            _ => {}
        }
    }
    live.await.unwrap().unwrap();
    assert_eq!((connected, disconnected), (2, 2), "the capture ends, the adapter reconnects, the server (done) closes");
    assert!(disconn_status > 0, "books live at the first disconnect are marked stale");
}

// ---------------------------------------------------------------------------------------------
// Robustness: chunking never changes the output; arbitrary bytes never panic.
// ---------------------------------------------------------------------------------------------

fn stream_of(name: &str, max: usize) -> Vec<u8> {
    let cap = replay::load_capture(&capture(name)).unwrap();
    let mut v = Vec::new();
    for m in cap.received.iter().take(max) {
        v.extend_from_slice(m.payload.as_bytes());
        v.push(b'\n');
    }
    v
}

fn decoders() -> Vec<Box<dyn Decoder>> {
    let src = SourceId::new("TEST").unwrap();
    vec![
        Box::new(coinbase::ExchangeDecoder::new(src, &[]).unwrap()),
        Box::new(coinbase::AdvancedDecoder::new(src, &[]).unwrap()),
        Box::new(binance::Decoder::new(src, &[], binance::SyncMode::DiffOnly).unwrap()),
        Box::new(binance::Decoder::new(src, &[], binance::SyncMode::Snapshot).unwrap()),
    ]
}

fn run_chunks(d: &mut dyn Decoder, data: &[u8], cuts: &[usize]) -> (Vec<Record>, usize) {
    let mut out = Vec::new();
    let mut errors = 0;
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&data.len())) {
        let c = c.clamp(at, data.len());
        errors += usize::from(d.feed(&data[at..c], &mut out).is_err());
        at = c;
    }
    errors += usize::from(d.finish(&mut out).is_err());
    (out, errors)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    #[test]
    fn capture_output_does_not_depend_on_chunking(mut cuts in proptest::collection::vec(0usize..60_000, 0..40)) {
        for (name, idx) in [("BINANCE.ws.1.0", 2usize), ("COINBASE.ws.28.0", 0)] {
            let data = stream_of(name, 400);
            cuts.sort_unstable();
            let (whole, e1) = run_chunks(decoders()[idx].as_mut(), &data, &[]);
            let (split, e2) = run_chunks(decoders()[idx].as_mut(), &data, &cuts);
            prop_assert_eq!(e1 + e2, 0);
            prop_assert!(!whole.is_empty());
            prop_assert_eq!(whole, split);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048), cut in 0usize..2048) {
        for mut d in decoders() {
            let _ = run_chunks(d.as_mut(), &data, &[cut]);
        }
    }

    #[test]
    fn json_ish_text_never_panics(text in r#"(\{|\}|\[|\]|"|:|,|\\|-|0|1\.5|"type"|"snapshot"|"l2update"|"match"|"product_id"|"changes"|"bids"|"asks"|"channel"|"l2_data"|"events"|"updates"|"sequence_num"|"stream"|"data"|"e"|"depthUpdate"|"U"|"u"|"b"|"a"|"buy"|"sell"|"bid"|"offer"|"X-Y"| |\n){0,200}"#) {
        for mut d in decoders() {
            let _ = run_chunks(d.as_mut(), text.as_bytes(), &[text.len() / 2]);
        }
    }

    #[test]
    fn mutated_capture_messages_never_panic(pick in 0usize..400, flips in proptest::collection::vec((0usize..4096, any::<u8>()), 1..8)) {
        for (name, idx) in [("COINBASE.ws.28.0", 0usize), ("BINANCE.ws.1.0", 2)] {
            let cap = replay::load_capture(&capture(name)).unwrap();
            let mut msg = cap.received[pick % cap.received.len()].payload.clone().into_bytes();
            for &(at, b) in &flips {
                if !msg.is_empty() {
                    let n = msg.len();
                    msg[at % n] = b;
                }
            }
            let _ = run_chunks(decoders()[idx].as_mut(), &msg, &[]);
        }
    }
}
