//! ITCH 5.0, MoldUDP64 and pcap decoding checked against third-party parsers on real
//! captures, plus split-invariance and no-panic properties.
//!
//! The captures are read in place from `<repo>/../shared/data` and never copied. What they
//! should decode to comes from `scripts/ref_itch.py`, run at test time with the test venv's
//! Python (`<repo>/.venv`, made by `scripts/install-deps.sh`, or `$TICKMESH_PYTHON`): itchfeed
//! for ITCH messages and for the book rebuilt from them, dpkt for pcap/Ethernet/IP/UDP, and
//! the system time-zone database for US/Eastern midnights. A missing capture or venv fails
//! with the command to run; nothing is skipped.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tickmesh_codec::{
    Body, Instrument, InstrumentId, InstrumentKind, Level, Meta, OrderAdd, OrderCancel, OrderExecute, OrderReplace, Px,
    Qty, Quote, Record, Seq, Side, SourceId, Status, Symbol, Trade, TradingState,
};
use tickmesh_ingest::itch::{self, EasternDate, FileDecoder, Message, NormalizerConfig};
use tickmesh_ingest::moldudp64::{self, Delivery, MoldDecoder, SessionEvent, SessionId, UdpSource};
use tickmesh_ingest::pcap::{self, PcapConfig, PcapDecoder, PcapReader};
use tickmesh_ingest::Decoder;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const ITCH_FILE: &str = "itch/locate-13-10k.bin";
/// The trading day of `locate-13-10k.bin` (NASDAQ's `01302020.NASDAQ_ITCH50`, per
/// shared/data/SOURCES.md; the excerpt's own name carries no date).
const ITCH_FILE_DATE: &str = "2020-01-30";

fn data(rel: &str) -> PathBuf {
    let p = Path::new(DATA).join(rel);
    assert!(
        p.exists(),
        "{} is missing: the golden tests read the shared captures in place from <repo>/../shared/data \
         (see shared/data/SOURCES.md); check that shared/ sits beside the repository",
        p.display()
    );
    p
}

fn read(rel: &str) -> Vec<u8> {
    let p = data(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn python() -> PathBuf {
    let p = std::env::var_os("TICKMESH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(REPO).join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} not found: the golden tests run third-party parsers (itchfeed, dpkt) in the test venv; run \
         scripts/install-deps.sh in the repository (it creates .venv), or set TICKMESH_PYTHON to a Python that has \
         scripts/requirements-test.txt installed",
        p.display()
    );
    p
}

/// Runs `scripts/ref_itch.py ARGS` and parses its JSON lines.
fn reference(args: &[&str]) -> Vec<Value> {
    let script = Path::new(REPO).join("scripts/ref_itch.py");
    let out = Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}); if a module is missing run scripts/install-deps.sh\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("reference output is UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("reference line {l:?}: {e}")))
        .collect()
}

fn latin1(b: &[u8]) -> Value {
    Value::String(b.iter().map(|&c| c as char).collect())
}

fn ch(c: u8) -> Value {
    latin1(&[c])
}

/// Our view of a message in itchfeed's terms: its attribute names, raw values, alpha
/// fields as their exact bytes.
fn msg_json(m: &Message<'_>) -> Value {
    let mut o = Map::new();
    o.insert("type".into(), ch(m.msg_type()));
    o.insert("stock_locate".into(), json!(m.stock_locate()));
    o.insert("tracking_number".into(), json!(m.tracking_number()));
    o.insert("timestamp".into(), json!(m.timestamp()));
    let mut put = |k: &str, v: Value| {
        o.insert(k.into(), v);
    };
    match m {
        Message::SystemEvent(x) => put("event_code", ch(x.event_code())),
        Message::StockDirectory(x) => {
            put("stock", latin1(&x.stock()));
            put("market_category", ch(x.market_category()));
            put("financial_status_indicator", ch(x.financial_status_indicator()));
            put("round_lot_size", json!(x.round_lot_size()));
            put("round_lots_only", ch(x.round_lots_only()));
            put("issue_classification", ch(x.issue_classification()));
            put("issue_sub_type", latin1(&x.issue_sub_type()));
            put("authenticity", ch(x.authenticity()));
            put("short_sale_threshold_indicator", ch(x.short_sale_threshold_indicator()));
            put("ipo_flag", ch(x.ipo_flag()));
            put("luld_ref", ch(x.luld_reference_price_tier()));
            put("etp_flag", ch(x.etp_flag()));
            put("etp_leverage_factor", json!(x.etp_leverage_factor()));
            put("inverse_indicator", ch(x.inverse_indicator()));
        }
        Message::StockTradingAction(x) => {
            put("stock", latin1(&x.stock()));
            put("trading_state", ch(x.trading_state()));
            put("reserved", ch(x.reserved()));
            put("reason", latin1(&x.reason()));
        }
        Message::RegShoRestriction(x) => {
            put("stock", latin1(&x.stock()));
            put("reg_sho_action", ch(x.reg_sho_action()));
        }
        Message::MarketParticipantPosition(x) => {
            put("mpid", latin1(&x.mpid()));
            put("stock", latin1(&x.stock()));
            put("primary_market_maker", ch(x.primary_market_maker()));
            put("market_maker_mode", ch(x.market_maker_mode()));
            put("market_participant_state", ch(x.market_participant_state()));
        }
        Message::MwcbDeclineLevel(x) => {
            put("level1_price", json!(x.level1()));
            put("level2_price", json!(x.level2()));
            put("level3_price", json!(x.level3()));
        }
        Message::MwcbStatus(x) => put("breached_level", ch(x.breached_level())),
        Message::IpoQuotingPeriodUpdate(x) => {
            put("stock", latin1(&x.stock()));
            put("ipo_release_time", json!(x.ipo_quotation_release_time()));
            put("ipo_release_qualifier", ch(x.ipo_quotation_release_qualifier()));
            put("ipo_price", json!(x.ipo_price()));
        }
        Message::LuldAuctionCollar(x) => {
            put("stock", latin1(&x.stock()));
            put("auction_collar_reference_price", json!(x.auction_collar_reference_price()));
            put("upper_auction_collar_price", json!(x.upper_auction_collar_price()));
            put("lower_auction_collar_price", json!(x.lower_auction_collar_price()));
            put("auction_collar_extention", json!(x.auction_collar_extension()));
        }
        Message::OperationalHalt(x) => {
            put("stock", latin1(&x.stock()));
            put("market_code", ch(x.market_code()));
            put("operational_halt_action", ch(x.operational_halt_action()));
        }
        Message::AddOrder(x) => {
            put("order_reference_number", json!(x.order_ref()));
            put("buy_sell_indicator", ch(x.side()));
            put("shares", json!(x.shares()));
            put("stock", latin1(&x.stock()));
            put("price", json!(x.price()));
        }
        Message::AddOrderMpid(x) => {
            put("order_reference_number", json!(x.order_ref()));
            put("buy_sell_indicator", ch(x.side()));
            put("shares", json!(x.shares()));
            put("stock", latin1(&x.stock()));
            put("price", json!(x.price()));
            put("attribution", latin1(&x.attribution()));
        }
        Message::OrderExecuted(x) => {
            put("order_reference_number", json!(x.order_ref()));
            put("executed_shares", json!(x.executed_shares()));
            put("match_number", json!(x.match_number()));
        }
        Message::OrderExecutedWithPrice(x) => {
            put("order_reference_number", json!(x.order_ref()));
            put("executed_shares", json!(x.executed_shares()));
            put("match_number", json!(x.match_number()));
            put("printable", ch(x.printable()));
            put("execution_price", json!(x.execution_price()));
        }
        Message::OrderCancel(x) => {
            put("order_reference_number", json!(x.order_ref()));
            put("cancelled_shares", json!(x.cancelled_shares()));
        }
        Message::OrderDelete(x) => put("order_reference_number", json!(x.order_ref())),
        Message::OrderReplace(x) => {
            put("order_reference_number", json!(x.original_order_ref()));
            put("new_order_reference_number", json!(x.new_order_ref()));
            put("shares", json!(x.shares()));
            put("price", json!(x.price()));
        }
        Message::Trade(x) => {
            put("order_reference_number", json!(x.order_ref()));
            put("buy_sell_indicator", ch(x.side()));
            put("shares", json!(x.shares()));
            put("stock", latin1(&x.stock()));
            put("price", json!(x.price()));
            put("match_number", json!(x.match_number()));
        }
        Message::CrossTrade(x) => {
            put("shares", json!(x.shares()));
            put("stock", latin1(&x.stock()));
            put("cross_price", json!(x.cross_price()));
            put("match_number", json!(x.match_number()));
            put("cross_type", ch(x.cross_type()));
        }
        Message::BrokenTrade(x) => put("match_number", json!(x.match_number())),
        Message::Noii(x) => {
            put("paired_shares", json!(x.paired_shares()));
            put("imbalance_shares", json!(x.imbalance_shares()));
            put("imbalance_direction", ch(x.imbalance_direction()));
            put("stock", latin1(&x.stock()));
            put("far_price", json!(x.far_price()));
            put("near_price", json!(x.near_price()));
            put("current_reference_price", json!(x.current_reference_price()));
            put("cross_type", ch(x.cross_type()));
            put("variation_indicator", ch(x.price_variation_indicator()));
        }
        Message::RetailPriceImprovement(x) => {
            put("stock", latin1(&x.stock()));
            put("interest_flag", ch(x.interest_flag()));
        }
        Message::DirectListing(x) => {
            put("stock", latin1(&x.stock()));
            put("open_eligibility_status", ch(x.open_eligibility_status()));
            put("minimum_allowable_price", json!(x.minimum_allowable_price()));
            put("maximum_allowable_price", json!(x.maximum_allowable_price()));
            put("near_execution_price", json!(x.near_execution_price()));
            put("near_execution_time", json!(x.near_execution_time()));
            put("lower_price_range_collar", json!(x.lower_price_range_collar()));
            put("upper_price_range_collar", json!(x.upper_price_range_collar()));
        }
    }
    Value::Object(o)
}

/// Midnight US/Eastern of `date` per the system time-zone database.
fn zoneinfo_midnight(date: &str) -> u64 {
    let r = reference(&["midnights", date, date]);
    r[0][1].as_u64().expect("midnight as an integer")
}

fn config(date: &str, strict: bool) -> NormalizerConfig {
    NormalizerConfig { date: Some(EasternDate::parse(date).unwrap()), strict_book: strict, ..Default::default() }
}

fn decode_all(dec: &mut dyn Decoder, pieces: &[&[u8]]) -> Vec<Record> {
    let mut out = Vec::new();
    for p in pieces {
        dec.feed(p, &mut out).unwrap();
    }
    dec.finish(&mut out).unwrap();
    out
}

fn counts_by_type(msgs: &[Value]) -> BTreeMap<String, u64> {
    let mut c = BTreeMap::new();
    for m in msgs {
        *c.entry(m["type"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    c
}

#[test]
fn itch_file_messages_match_itchfeed() {
    let path = data(ITCH_FILE);
    let want = reference(&["messages", path.to_str().unwrap()]);
    let bytes = read(ITCH_FILE);
    let got: Vec<Value> = itch::parser::messages(&bytes).map(|r| msg_json(&r.unwrap().1)).collect();
    assert_eq!(got.len(), want.len(), "message count");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "message {i} differs from itchfeed's");
    }
    // Per-type counts as the decoder reports them.
    let mut dec = FileDecoder::new(config(ITCH_FILE_DATE, true));
    decode_all(&mut dec, &[&bytes]);
    let ours: BTreeMap<String, u64> = dec.message_counts().into_iter().collect();
    assert_eq!(ours, counts_by_type(&want));
    assert_eq!(ours.values().sum::<u64>(), 10_000, "sanity: the excerpt is 10,000 messages");
}

fn px(raw4: &Value) -> Px {
    match raw4.as_i64() {
        Some(v) => Px::from_scaled(v, 4),
        None => Px::NULL,
    }
}

fn sh(v: &Value) -> Qty {
    Qty::from_units(v.as_i64().expect("share count"))
}

fn book_side(s: &Value) -> Side {
    match s.as_str() {
        Some("B") => Side::Buy,
        Some("S") => Side::Sell,
        other => panic!("side {other:?}"),
    }
}

/// The records a message must give, per the normalization rules of `itch::normalize`,
/// from itchfeed's message `m` and the reference book's view `b` of it.
fn expected_records(m: &Value, b: &Value, prev_bbo: &Value, midnight: u64) -> Vec<Record> {
    let t = m["type"].as_str().unwrap();
    let meta = Meta {
        src: SourceId::new("XNAS.ITCH").unwrap(),
        seq: Seq(0),
        instrument: InstrumentId(m["stock_locate"].as_u64().unwrap() as u32),
        sym: Symbol::new("AAPL").unwrap(),
        ts_event: midnight + m["timestamp"].as_u64().unwrap(),
        ts_ingest: 0,
    };
    let rec = |body| Record::new(meta, body);
    let mut v = Vec::new();
    let order = &b["order"];
    let id = m["order_reference_number"].as_u64().unwrap_or(0);
    match t {
        "A" | "F" => v.push(rec(Body::OrderAdd(OrderAdd {
            order_id: id,
            side: book_side(&m["buy_sell_indicator"]),
            px: px(&m["price"]),
            qty: sh(&m["shares"]),
        }))),
        "E" | "C" => {
            let side = book_side(&order[0]);
            let p = if t == "E" { px(&order[1]) } else { px(&m["execution_price"]) };
            let q = sh(&m["executed_shares"]);
            let remaining = Qty::from_units(order[2].as_i64().unwrap() - m["executed_shares"].as_i64().unwrap());
            let match_id = m["match_number"].as_u64().unwrap();
            v.push(rec(Body::OrderExecute(OrderExecute { order_id: id, side, px: p, qty: q, remaining, match_id })));
            if t == "E" || m["printable"] == "Y" {
                let aggressor = if side == Side::Buy { Side::Sell } else { Side::Buy };
                v.push(rec(Body::Trade(Trade { px: p, qty: q, side: aggressor, match_id })));
            }
        }
        "X" => {
            let cancelled = sh(&m["cancelled_shares"]);
            let remaining = Qty::from_units(order[2].as_i64().unwrap() - m["cancelled_shares"].as_i64().unwrap());
            v.push(rec(Body::OrderCancel(OrderCancel {
                order_id: id,
                side: book_side(&order[0]),
                px: px(&order[1]),
                cancelled,
                remaining,
            })));
        }
        "D" => v.push(rec(Body::OrderCancel(OrderCancel {
            order_id: id,
            side: book_side(&order[0]),
            px: px(&order[1]),
            cancelled: sh(&order[2]),
            remaining: Qty::ZERO,
        }))),
        "U" => v.push(rec(Body::OrderReplace(OrderReplace {
            order_id: id,
            new_order_id: m["new_order_reference_number"].as_u64().unwrap(),
            side: book_side(&order[0]),
            px: px(&m["price"]),
            qty: sh(&m["shares"]),
        }))),
        "P" => v.push(rec(Body::Trade(Trade {
            px: px(&m["price"]),
            qty: sh(&m["shares"]),
            side: Side::None,
            match_id: m["match_number"].as_u64().unwrap(),
        }))),
        "H" => {
            let state = match m["trading_state"].as_str().unwrap() {
                "T" => TradingState::Trading,
                "H" => TradingState::Halted,
                "P" => TradingState::Paused,
                "Q" => TradingState::Quoting,
                _ => TradingState::Unknown,
            };
            let mut reason = [0u8; 8];
            let r = m["reason"].as_str().unwrap().trim_end();
            reason[..r.len()].copy_from_slice(r.as_bytes());
            v.push(rec(Body::Status(Status { state, reason })));
        }
        "R" => v.push(rec(Body::Instrument(Instrument {
            kind: InstrumentKind::Equity,
            currency: *b"USD\0\0\0\0\0",
            tick_size: Px::NULL,
            lot_size: sh(&m["round_lot_size"]),
            multiplier: 0,
            expiration: 0,
            strike: Px::NULL,
            underlying: [0; 24],
        }))),
        // No record for the other types in this file (S, Y, L): see itch::normalize.
        _ => {}
    }
    for l in b["levels"].as_array().unwrap() {
        v.push(rec(Body::Level(Level {
            side: book_side(&l[0]),
            px: px(&l[1]),
            qty: sh(&l[2]),
            count: l[3].as_u64().unwrap() as u32,
        })));
    }
    let bbo = &b["bbo"];
    if bbo != prev_bbo {
        v.push(rec(Body::Quote(Quote {
            bid_px: px(&bbo[0]),
            bid_qty: sh(&bbo[1]),
            bid_count: bbo[2].as_u64().unwrap() as u32,
            ask_px: px(&bbo[3]),
            ask_qty: sh(&bbo[4]),
            ask_count: bbo[5].as_u64().unwrap() as u32,
        })));
    }
    v
}

#[test]
fn itch_file_records_and_book_match_a_book_rebuilt_from_itchfeed() {
    let path = data(ITCH_FILE);
    let msgs = reference(&["messages", path.to_str().unwrap()]);
    let book = reference(&["book", path.to_str().unwrap()]);
    let midnight = zoneinfo_midnight(ITCH_FILE_DATE);
    let (steps, finals): (Vec<&Value>, Vec<&Value>) = book.iter().partition(|v| v.get("final").is_none());
    assert_eq!(steps.len(), msgs.len());
    assert!(steps.iter().all(|s| s.get("unknown_order").is_none()), "the reference book met an unknown order");

    // Feed one message at a time, so each message's records can be told apart.
    let bytes = read(ITCH_FILE);
    let mut dec = FileDecoder::new(config(ITCH_FILE_DATE, true));
    let frames: Vec<(usize, usize)> = {
        let mut v = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let len = 2 + usize::from(u16::from_be_bytes([bytes[pos], bytes[pos + 1]]));
            v.push((pos, pos + len));
            pos += len;
        }
        v
    };
    assert_eq!(frames.len(), msgs.len());
    let empty_bbo = json!([null, 0, 0, null, 0, 0]);
    let mut prev_bbo = &empty_bbo;
    let mut out = Vec::new();
    for (i, ((a, b), (m, s))) in frames.iter().zip(msgs.iter().zip(&steps)).enumerate() {
        out.clear();
        dec.feed(&bytes[*a..*b], &mut out).unwrap_or_else(|e| panic!("message {i}: {e}"));
        let want = expected_records(m, s, prev_bbo, midnight);
        assert_eq!(out, want, "message {i} ({m}) with reference book step {s}");
        // The decoder's own book agrees on the touch and the order count after every message.
        let ob = dec.normalizer().book(13).expect("AAPL's book");
        assert_eq!(ob.len() as u64, s["orders"].as_u64().unwrap(), "live orders after message {i}");
        prev_bbo = &s["bbo"];
    }
    dec.finish(&mut out).unwrap();

    // The final book, level by level.
    assert_eq!(finals.len(), 1);
    let f = finals[0];
    let ob = dec.normalizer().book(13).unwrap();
    let levels = |side: Side| -> Vec<Value> {
        ob.levels().levels(side).map(|(p, q, c)| json!([p.raw() / 100_000, q.raw() / 1_000_000_000, c])).collect()
    };
    assert_eq!(Value::Array(levels(Side::Buy)), f["bids"]);
    assert_eq!(Value::Array(levels(Side::Sell)), f["asks"]);
    assert_eq!(ob.len() as u64, f["orders"].as_u64().unwrap());
    // Sanity, as shared/data/VALIDATION.md reports it.
    let q = ob.levels().quote();
    assert_eq!((q.bid_px, q.bid_qty), (Px::parse("320.14").unwrap(), Qty::from_units(25)));
    assert_eq!((q.ask_px, q.ask_qty), (Px::parse("320.30").unwrap(), Qty::from_units(100)));
    assert_eq!((ob.levels().len(Side::Buy), ob.levels().len(Side::Sell), ob.len()), (79, 63, 215));
    assert_eq!(dec.normalizer().symbol(13).unwrap().as_str(), "AAPL");
}

#[test]
fn eastern_midnights_match_zoneinfo() {
    let want = reference(&["midnights", "1990-01-01", "2035-12-31"]);
    assert!(want.len() > 16_000);
    for w in &want {
        let d = EasternDate::parse(w[0].as_str().unwrap()).unwrap();
        assert_eq!(d.midnight_unix_ns(), w[1].as_u64().unwrap(), "midnight of {d}");
    }
}

fn pcaps() -> Vec<PathBuf> {
    let root = data("itch/moldudp64");
    let mut v = Vec::new();
    let mut dirs = vec![root];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "pcap") {
                v.push(p);
            }
        }
    }
    v.sort();
    assert!(!v.is_empty(), "no pcap under {DATA}/itch/moldudp64");
    v
}

fn decimal_ns(s: &str) -> u64 {
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let frac = format!("{frac:0<9}");
    sec.parse::<u64>().unwrap() * 1_000_000_000 + frac[..9].parse::<u64>().unwrap()
}

#[test]
fn pcap_messages_match_dpkt_and_itchfeed() {
    let files = pcaps();
    let args: Vec<&str> = std::iter::once("pcap").chain(files.iter().map(|p| p.to_str().unwrap())).collect();
    let want = reference(&args);
    let mut got = Vec::new();
    let mut events = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        let mut session = moldudp64::Session::new();
        let mut reader = PcapReader::new();
        reader
            .feed(&bytes, |h, p| {
                let udp = pcap::udp_payload(h.link_type, p.data).expect("every packet of these captures is UDP");
                let pkt = session.handle(udp.payload)?;
                events.extend(pkt.events().map(|e| (name.clone(), e)));
                for (k, m) in pkt.messages().enumerate() {
                    let msg = Message::parse(m.bytes).unwrap();
                    let mut v = msg_json(&msg);
                    let o = v.as_object_mut().unwrap();
                    o.insert("file".into(), json!(name));
                    o.insert("packet".into(), json!(p.index));
                    o.insert("capture_ts".into(), json!(p.ts_ns));
                    o.insert("session".into(), latin1(&pkt.header.session.0));
                    o.insert("seq".into(), json!(pkt.header.seq + k as u64));
                    // Sequence numbers are used only where session and sequence are real.
                    let usable = !pkt.header.session.is_zero() && pkt.header.seq != 0;
                    assert_eq!(m.seq, usable.then(|| pkt.header.seq + k as u64));
                    got.push(v);
                }
                Ok(())
            })
            .unwrap();
        reader.finish().unwrap();
    }
    let want: Vec<Value> = want
        .into_iter()
        .map(|mut w| {
            let ns = decimal_ns(w["capture_ts"].as_str().unwrap());
            w["capture_ts"] = json!(ns);
            w
        })
        .collect();
    assert_eq!(got.len(), want.len(), "ITCH messages found");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
    assert_eq!(got.len(), 117, "sanity: shared/data/VALIDATION.md counts 117 messages in 23 pcaps");

    // Gaps exactly where the reference's sequence numbers jump between the packets of a
    // capture with a real session (the 20230822 ones have none: see moldudp64's docs).
    let mut want_events = Vec::new();
    let mut packets: BTreeMap<(String, u64), (String, u64, u64)> = BTreeMap::new();
    for w in &want {
        let key = (w["file"].as_str().unwrap().to_string(), w["packet"].as_u64().unwrap());
        let e =
            packets.entry(key).or_insert((w["session"].as_str().unwrap().to_string(), w["seq"].as_u64().unwrap(), 0));
        e.2 += 1;
    }
    let mut prev: Option<(String, u64)> = None;
    for ((file, _), (session, seq, n)) in &packets {
        let sequenced = session.chars().any(|c| c != '\0') && *seq != 0;
        if let Some((pf, next)) = &prev {
            if sequenced && pf == file && seq > next {
                let sid = SessionId(session.as_bytes().try_into().unwrap());
                want_events.push((file.clone(), SessionEvent::Gap { session: sid, expected: *next, got: *seq }));
            }
        }
        prev = Some((file.clone(), seq + n));
    }
    assert_eq!(events, want_events);
}

#[test]
fn pcap_decoder_gives_records_stamped_with_the_capture_day() {
    let midnight = zoneinfo_midnight("2023-08-22");
    for f in pcaps() {
        let bytes = std::fs::read(&f).unwrap();
        let mut dec = PcapDecoder::new(PcapConfig::default());
        let recs = decode_all(&mut dec, &[&bytes]);
        while let Some(e) = dec.poll_event() {
            // Only real gaps (checked against the reference in the test above).
            assert!(matches!(e, SessionEvent::Gap { session, .. } if !session.is_zero()), "{e:?}");
        }
        assert_eq!(dec.mold().normalizer().date().unwrap().to_string(), "2023-08-22");
        let counts: BTreeMap<String, u64> = dec.message_counts().into_iter().collect();
        let messages: u64 =
            itch::MESSAGE_TYPES.iter().filter_map(|(t, _, _)| counts.get(&(*t as char).to_string())).sum();
        assert!(messages > 0, "{}", f.display());
        // Book messages about orders added before the capture started are counted, not errors.
        let unknown = counts.get("unknown_order").copied().unwrap_or(0);
        for r in &recs {
            let t = r.header.ts_event - midnight;
            assert!(
                (9 * 3600 + 29 * 60) * 1_000_000_000 < t && t < 10 * 3600 * 1_000_000_000,
                "{}: ts {t}",
                f.display()
            );
            assert!(!r.header.sym.as_str().is_empty());
        }
        let name = f.file_name().unwrap().to_str().unwrap();
        if ["Order", "Executed", "Cancel", "Delete", "Replace"].iter().any(|k| name.starts_with(k)) {
            assert_eq!(unknown, messages, "{name}");
        } else if name.starts_with("Add") {
            assert_eq!(unknown, 0, "{name}");
        }
        if name.starts_with("Add")
            || name.starts_with("Cross")
            || name.starts_with("NonCross")
            || name.starts_with("Net")
        {
            assert!(!recs.is_empty(), "{name} gives records");
        }
    }
}

#[test]
fn pcap_decoding_does_not_depend_on_how_the_input_is_cut() {
    let bytes = read("itch/moldudp64/Nasdaq.Equities.TotalView.Itch.v5.0/Multiple.Packets.pcap");
    let whole = decode_all(&mut PcapDecoder::new(PcapConfig::default()), &[&bytes]);
    assert!(whole.len() > 39, "39 messages, most of them adds with a level and quotes");
    for cut in (0..bytes.len()).step_by(7) {
        let got = decode_all(&mut PcapDecoder::new(PcapConfig::default()), &[&bytes[..cut], &bytes[cut..]]);
        assert_eq!(got, whole, "cut at {cut}");
    }
}

/// Records and message counts of the whole ITCH file decoded in one piece.
type Decoded = (Vec<Record>, Vec<(String, u64)>);

fn whole_file_records() -> &'static Decoded {
    static ONCE: std::sync::OnceLock<Decoded> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let mut dec = FileDecoder::new(config(ITCH_FILE_DATE, true));
        let recs = decode_all(&mut dec, &[&read(ITCH_FILE)]);
        (recs, dec.message_counts())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// However the file is cut into pieces, the records are the same.
    #[test]
    fn itch_file_decoding_does_not_depend_on_how_the_input_is_cut(
        mut cuts in proptest::collection::vec(0usize..307_643, 0..60),
    ) {
        let bytes = read(ITCH_FILE);
        let (whole, counts) = whole_file_records();
        cuts.iter_mut().for_each(|c| *c = (*c).min(bytes.len()));
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut last = 0;
        for c in cuts {
            pieces.push(&bytes[last..c]);
            last = c;
        }
        pieces.push(&bytes[last..]);
        let mut dec = FileDecoder::new(config(ITCH_FILE_DATE, true));
        let got = decode_all(&mut dec, &pieces);
        prop_assert_eq!(&got, whole);
        prop_assert_eq!(&dec.message_counts(), counts);
    }
}

/// Bytes that are mostly well-framed ITCH messages with arbitrary contents, to reach deep.
fn itch_frames() -> impl Strategy<Value = Vec<u8>> {
    let frame = (0usize..itch::MESSAGE_TYPES.len(), proptest::collection::vec(any::<u8>(), 0..60), any::<bool>())
        .prop_map(|(t, mut body, exact)| {
            let (ty, _, len) = itch::MESSAGE_TYPES[t];
            if exact {
                body.resize(len, b' ');
            }
            body.insert(0, ty);
            // Small locates and order refs so that messages meet each other's orders.
            if body.len() >= 3 {
                body[1] = 0;
                body[2] &= 3;
            }
            if body.len() >= 19 && matches!(ty, b'A' | b'F' | b'E' | b'C' | b'X' | b'D' | b'U') {
                body[11..18].fill(0);
                body[18] &= 7;
            }
            let mut f = (body.len() as u16).to_be_bytes().to_vec();
            f.extend_from_slice(&body);
            f
        });
    proptest::collection::vec(frame, 0..80).prop_map(|v| v.concat())
}

fn feed_no_panic(dec: &mut dyn Decoder, bytes: &[u8], chunk: usize) {
    let mut out = Vec::new();
    for c in bytes.chunks(chunk.max(1)) {
        let _ = dec.feed(c, &mut out);
    }
    let _ = dec.finish(&mut out);
    let _ = dec.message_counts();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn itch_parser_and_normalizer_never_panic(
        junk in proptest::collection::vec(any::<u8>(), 0..400),
        frames in itch_frames(),
        chunk in 1usize..64,
        strict in any::<bool>(),
    ) {
        let _ = Message::parse(&junk);
        for bytes in [&junk, &frames] {
            feed_no_panic(&mut FileDecoder::new(config("2020-01-30", strict)), bytes, chunk);
            for m in itch::parser::messages(bytes).flatten() {
                let _ = format!("{:?}", m.1);
            }
        }
        // No date: an error, not a panic.
        feed_no_panic(&mut FileDecoder::new(NormalizerConfig::default()), &frames, chunk);
    }

    #[test]
    fn moldudp64_never_panics(
        junk in proptest::collection::vec(any::<u8>(), 0..200),
        frames in itch_frames(),
        seq in 0u64..5,
        count_delta in -2i32..3,
        zero_session in any::<bool>(),
    ) {
        let mut dec = MoldDecoder::new(config("2023-08-22", false));
        let _ = dec.feed(&junk, &mut Vec::new());
        // A real header over well-framed messages, with the count sometimes off.
        let mut msgs: Vec<&[u8]> = Vec::new();
        let mut pos = 0;
        while pos + 2 <= frames.len() {
            let len = usize::from(u16::from_be_bytes([frames[pos], frames[pos + 1]]));
            msgs.push(&frames[pos + 2..pos + 2 + len]);
            pos += 2 + len;
        }
        let session = if zero_session { SessionId([0; 10]) } else { SessionId(*b"TESTSESS01") };
        let mut d = Vec::new();
        moldudp64::encode_datagram(session, seq, &msgs, &mut d);
        let count = (msgs.len() as i32 + count_delta).clamp(0, 0xFFFF) as u16;
        d[18..20].copy_from_slice(&count.to_be_bytes());
        let mut out = Vec::new();
        let _ = dec.feed(&d, &mut out);
        let _ = dec.feed(&d, &mut out);
        while dec.poll_event().is_some() {}
        let _ = dec.message_counts();
    }

    #[test]
    fn pcap_never_panics(
        junk in proptest::collection::vec(any::<u8>(), 0..300),
        link in prop_oneof![Just(0u32), Just(1), Just(101), Just(108), Just(113), Just(276), any::<u32>()],
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 0..6),
        chunk in 1usize..50,
    ) {
        feed_no_panic(&mut PcapDecoder::new(PcapConfig::default()), &junk, chunk);
        let mut file = Vec::new();
        file.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        file.extend_from_slice(&[2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0]);
        file.extend_from_slice(&link.to_le_bytes());
        for f in &frames {
            file.extend_from_slice(&[0; 8]);
            file.extend_from_slice(&(f.len() as u32).to_le_bytes());
            file.extend_from_slice(&(f.len() as u32).to_le_bytes());
            file.extend_from_slice(f);
            let _ = pcap::udp_payload(link, f);
        }
        feed_no_panic(&mut PcapDecoder::new(PcapConfig::default()), &file, chunk);
    }

    /// Real captures with some bytes changed.
    #[test]
    fn mutated_captures_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
        which in 0usize..3,
        chunk in 1usize..700,
    ) {
        let rel = [
            "itch/moldudp64/Nasdaq.Equities.TotalView.Itch.v5.0/Multiple.Packets.pcap",
            "itch/moldudp64/Nasdaq.Equities.TotalView.Itch.v5.0.20230822/NetOrderImbalanceIndicator.pcap",
            ITCH_FILE,
        ][which];
        let mut bytes = read(rel);
        bytes.truncate(6000);
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        if rel.ends_with(".pcap") {
            feed_no_panic(&mut PcapDecoder::new(PcapConfig::default()), &bytes, chunk);
        } else {
            feed_no_panic(&mut FileDecoder::new(config(ITCH_FILE_DATE, true)), &bytes, chunk);
            feed_no_panic(&mut FileDecoder::new(config(ITCH_FILE_DATE, false)), &bytes, chunk);
        }
    }
}

fn add_order(locate: u16, order_ref: u64, side: u8, shares: u32, stock: &[u8; 8], price: u32, ts: u64) -> Vec<u8> {
    let mut b = vec![b'A'];
    b.extend_from_slice(&locate.to_be_bytes());
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&ts.to_be_bytes()[2..]);
    b.extend_from_slice(&order_ref.to_be_bytes());
    b.push(side);
    b.extend_from_slice(&shares.to_be_bytes());
    b.extend_from_slice(stock);
    b.extend_from_slice(&price.to_be_bytes());
    b
}

/// Runs a UDP source until `done` says so (bounded in time); returns what it delivered.
async fn run_source(mut src: UdpSource, mut done: impl FnMut(&[String]) -> bool) -> (Vec<Record>, Vec<String>) {
    let mut recs = Vec::new();
    let mut events = Vec::new();
    let run = src.run(|d| {
        match d {
            Delivery::Records(r) => recs.extend_from_slice(r),
            Delivery::Event(e) => events.push(format!("{e:?}")),
            Delivery::Error(e) => events.push(format!("error: {e}")),
        }
        if done(&events) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    tokio::time::timeout(std::time::Duration::from_secs(20), run)
        .await
        .expect("the UDP source delivered everything within 20 s")
        .unwrap();
    (recs, events)
}

#[tokio::test]
async fn udp_source_on_loopback_reports_the_gap_and_keeps_going() {
    let dec = MoldDecoder::new(config("2023-08-22", false));
    let src = UdpSource::bind("127.0.0.1:0".parse().unwrap(), dec).await.unwrap();
    let addr = src.local_addr().unwrap();
    let tx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let s = SessionId(*b"000010059B");
    let a1 = add_order(7, 1, b'B', 100, b"MSFT    ", 3_201_400, 34_200_000_000_000);
    let a2 = add_order(7, 2, b'S', 50, b"MSFT    ", 3_203_000, 34_200_000_000_100);
    let a3 = add_order(7, 3, b'B', 10, b"MSFT    ", 3_201_000, 34_200_000_000_200);
    let mut datagrams = Vec::new();
    for (seq, msgs) in [(1u64, vec![&a1[..]]), (3, vec![&a2[..]]), (3, vec![&a2[..], &a3[..]]), (5, vec![])] {
        let mut d = Vec::new();
        moldudp64::encode_datagram(s, seq, &msgs, &mut d);
        datagrams.push(d);
    }
    let mut eos = Vec::new();
    moldudp64::encode_datagram(s, 5, &[], &mut eos);
    eos[18..20].copy_from_slice(&moldudp64::END_OF_SESSION.to_be_bytes());
    datagrams.push(eos);
    for d in &datagrams {
        tx.send_to(d, addr).await.unwrap();
    }
    let (recs, events) = run_source(src, |ev| ev.iter().any(|e| e.starts_with("EndOfSession"))).await;
    assert_eq!(
        events,
        vec![
            format!("{:?}", SessionEvent::Gap { session: s, expected: 2, got: 3 }),
            format!("{:?}", SessionEvent::Duplicate { session: s, seq: 3, count: 1 }),
            format!("{:?}", SessionEvent::EndOfSession { session: s, next_seq: 5 }),
        ]
    );
    // Orders 1, 2 and 3 each gave an add and a level, 1 and 2 a quote (3 bids behind the best);
    // the duplicate of 2 gave nothing.
    let adds: Vec<u64> = recs
        .iter()
        .filter_map(|r| match r.body {
            Body::OrderAdd(a) => Some(a.order_id),
            _ => None,
        })
        .collect();
    assert_eq!(adds, vec![1, 2, 3]);
    assert_eq!(recs.len(), 8);
    assert!(recs.iter().all(|r| r.header.sym.as_str() == "MSFT" && r.header.instrument == InstrumentId(7)));
    let gap = SessionEvent::Gap { session: s, expected: 2, got: 3 }.to_error().unwrap();
    assert!(gap.to_string().contains("expected 2, got 3"), "{gap}");
}

#[tokio::test]
async fn udp_source_on_loopback_decodes_a_captures_payloads_as_the_pcap_decoder_does() {
    let rel = "itch/moldudp64/Nasdaq.Equities.TotalView.Itch.v5.0/Multiple.Packets.pcap";
    let bytes = read(rel);
    let mut pdec = PcapDecoder::new(PcapConfig::default());
    let want = decode_all(&mut pdec, &[&bytes]);
    let want_events: Vec<String> = std::iter::from_fn(|| pdec.poll_event()).map(|e| format!("{e:?}")).collect();
    assert_eq!(want_events.len(), 1, "the capture's two packets are not consecutive: {want_events:?}");
    let mut payloads = Vec::new();
    PcapReader::new()
        .feed(&bytes, |h, p| {
            payloads.push(pcap::udp_payload(h.link_type, p.data).unwrap().payload.to_vec());
            Ok(())
        })
        .unwrap();
    assert_eq!(payloads.len(), 2);
    let dec = MoldDecoder::new(config("2023-08-22", false));
    let src = UdpSource::bind("127.0.0.1:0".parse().unwrap(), dec).await.unwrap();
    let addr = src.local_addr().unwrap();
    let tx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for p in &payloads {
        tx.send_to(p, addr).await.unwrap();
    }
    // A heartbeat at the next sequence number marks the end (it yields no event);
    // an end-of-session datagram does.
    let mut eos = payloads[1][..20].to_vec();
    eos[18..20].copy_from_slice(&moldudp64::END_OF_SESSION.to_be_bytes());
    tx.send_to(&eos, addr).await.unwrap();
    let (recs, events) = run_source(src, |ev| ev.iter().any(|e| e.starts_with("EndOfSession"))).await;
    assert_eq!(recs, want);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0], want_events[0]);
}
