//! Golden test of the DBN decoder against Databento's own parser.
//!
//! Every file under `shared/data/dbn` (read in place, never copied) is decoded twice: by
//! `scripts/ref_dbn.py` with `databento_dbn.DBNDecoder` (policy `AS_IS`), and by our
//! [`DbnDecoder`] with books off, fed in several chunkings. Each reference record must map
//! to our record field by field, per the table in `ingest/src/dbn_feed.rs`; files the
//! reference refuses (legacy DBZ, fragments without metadata) must be refused by us with our
//! own clear error, and fragments must then decode in fragment mode like the reference's
//! `has_metadata=False`. Books on, the nautilus MBO capture is checked for consistency.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;
use serde_json::Value;
use tickmesh_codec::{Body, Px, Qty, Record, Side, SourceId, TradingState, SCALE};
use tickmesh_ingest::dbn_feed::DbnDecoder;
use tickmesh_ingest::Decoder;

fn data_dir() -> PathBuf {
    let d = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/dbn"));
    assert!(
        d.is_dir(),
        "{} is missing: the golden tests read the shared captures in place; lay out shared/ beside the repo (as CI does)",
        d.display()
    );
    d
}

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("TICKMESH_PYTHON") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-deps.sh (it creates the test venv with databento-dbn)",
        p.display()
    );
    p
}

/// Runs the reference script; returns per file its header line and record lines.
fn reference(args: &[&str]) -> BTreeMap<String, (Value, Vec<Value>)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/ref_dbn.py");
    let out = Command::new(python()).arg(script).args(args).output().expect("running scripts/ref_dbn.py");
    assert!(
        out.status.success(),
        "scripts/ref_dbn.py failed ({}); run scripts/install-deps.sh: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files: BTreeMap<String, (Value, Vec<Value>)> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).expect("reference line is JSON");
        let file = v["file"].as_str().expect("file").to_owned();
        if v.get("status").is_some() {
            files.insert(file, (v, Vec::new()));
        } else {
            files.get_mut(&file).expect("header before records").1.push(v);
        }
    }
    files
}

fn decode(mut dec: DbnDecoder, bytes: &[u8], chunk: usize) -> Result<(Vec<Record>, DbnDecoder), String> {
    let mut out = Vec::new();
    for c in bytes.chunks(chunk.max(1)) {
        dec.feed(c, &mut out).map_err(|e| e.to_string())?;
    }
    dec.finish(&mut out).map_err(|e| e.to_string())?;
    Ok((out, dec))
}

fn i(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("integer expected, got {v}"))
}
fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("unsigned integer expected, got {v}"))
}
fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}
fn px(v: &Value) -> Px {
    let raw = i(v);
    if raw == i64::MAX {
        Px::NULL
    } else {
        Px(raw)
    }
}
fn qty(v: &Value) -> Qty {
    Qty(i(v) * SCALE)
}
fn side(v: &Value) -> Side {
    match s(v) {
        "B" => Side::Buy,
        "A" => Side::Sell,
        _ => Side::None,
    }
}
fn padded<const N: usize>(text: &str) -> [u8; N] {
    let mut a = [0u8; N];
    for (d, c) in a.iter_mut().zip(text.bytes()) {
        *d = c;
    }
    a
}

/// The quote a DBN top-of-book level stands for.
fn quote_of(l: &Value) -> (Px, Qty, Px, Qty, u32, u32) {
    let (b, a) = (px(&l["bid_px"]), px(&l["ask_px"]));
    let bq = if b.is_null() { Qty::ZERO } else { qty(&l["bid_sz"]) };
    let aq = if a.is_null() { Qty::ZERO } else { qty(&l["ask_sz"]) };
    let bc = l.get("bid_ct").map_or(0, |v| u(v) as u32);
    let ac = l.get("ask_ct").map_or(0, |v| u(v) as u32);
    (b, bq, a, aq, bc, ac)
}

/// The status mapping the decoder documents (DBN `StatusAction` to protocol state).
fn expected_state(r: &Value) -> TradingState {
    match u(&r["action"]) {
        1 => TradingState::PreOpen,
        2 | 4 | 5 | 6 => TradingState::Auction,
        3 => TradingState::Quoting,
        7 => TradingState::Trading,
        8 | 10 => TradingState::Halted,
        9 => TradingState::Paused,
        12 | 13 | 15 => TradingState::Closed,
        _ => match (s(&r["is_trading"]), s(&r["is_quoting"])) {
            ("Y", _) => TradingState::Trading,
            ("N", "Y") => TradingState::Quoting,
            ("N", "N") => TradingState::Closed,
            _ => TradingState::Unknown,
        },
    }
}

/// Whether a reference record has a record of its own (see the module table).
fn has_own_record(r: &Value) -> bool {
    match s(&r["type"]) {
        "MBOMsg" => matches!(s(&r["action"]), "A" | "C" | "M" | "T" | "F"),
        "MBP10Msg" => {
            s(&r["action"]) == "T" || (matches!(s(&r["action"]), "A" | "C" | "M") && side(&r["side"]) != Side::None)
        }
        _ => true,
    }
}

/// Asserts that our record is the one the reference record maps to.
fn check(file: &str, r: &Value, ours: &Record, dataset: Option<&str>) {
    let ctx = format!("{file} record {} ({})", r["i"], r["type"]);
    let h = &ours.header;
    assert_eq!(h.ts_event, u(&r["ts_event"]), "{ctx}: ts_event");
    assert_eq!(u64::from(h.instrument.0), u(&r["instrument_id"]), "{ctx}: instrument_id");
    assert_eq!((h.seq.0, h.ts_ingest), (0, 0), "{ctx}: decoders leave seq and ts_ingest to the sequencer");
    if let Some(sym) = r["symbol"].as_str() {
        assert_eq!(h.sym.as_str(), sym, "{ctx}: symbol");
    }
    if let Some(ds) = dataset {
        assert_eq!(h.src.as_str(), ds, "{ctx}: source id is the dataset");
    }
    let b = ours.body;
    match (s(&r["type"]), s(&r["action"])) {
        ("MBOMsg", "A") => {
            let Body::OrderAdd(a) = b else { panic!("{ctx}: expected OrderAdd, got {b:?}") };
            assert_eq!(
                (a.order_id, a.side, a.px, a.qty),
                (u(&r["order_id"]), side(&r["side"]), px(&r["price"]), qty(&r["size"])),
                "{ctx}"
            );
        }
        ("MBOMsg", "C") => {
            let Body::OrderCancel(c) = b else { panic!("{ctx}: expected OrderCancel, got {b:?}") };
            assert_eq!(
                (c.order_id, c.side, c.px, c.cancelled),
                (u(&r["order_id"]), side(&r["side"]), px(&r["price"]), qty(&r["size"])),
                "{ctx}"
            );
        }
        ("MBOMsg", "M") => {
            let Body::OrderModify(m) = b else { panic!("{ctx}: expected OrderModify, got {b:?}") };
            assert_eq!(
                (m.order_id, m.side, m.px, m.qty),
                (u(&r["order_id"]), side(&r["side"]), px(&r["price"]), qty(&r["size"])),
                "{ctx}"
            );
        }
        ("MBOMsg", "F") => {
            let Body::OrderExecute(e) = b else { panic!("{ctx}: expected OrderExecute, got {b:?}") };
            assert_eq!(
                (e.order_id, e.side, e.px, e.qty),
                (u(&r["order_id"]), side(&r["side"]), px(&r["price"]), qty(&r["size"])),
                "{ctx}"
            );
        }
        ("MBOMsg" | "TradeMsg" | "MBP1Msg" | "CMBP1Msg" | "MBP10Msg", "T") => {
            let Body::Trade(t) = b else { panic!("{ctx}: expected Trade, got {b:?}") };
            assert_eq!((t.px, t.qty, t.side), (px(&r["price"]), qty(&r["size"]), side(&r["side"])), "{ctx}");
        }
        ("MBP1Msg" | "CMBP1Msg" | "BBOMsg" | "CBBOMsg", _) => {
            let Body::Quote(q) = b else { panic!("{ctx}: expected Quote, got {b:?}") };
            let got = (q.bid_px, q.bid_qty, q.ask_px, q.ask_qty, q.bid_count, q.ask_count);
            assert_eq!(got, quote_of(&r["levels"][0]), "{ctx}");
        }
        ("MBP10Msg", _) => {
            let Body::Level(l) = b else { panic!("{ctx}: expected Level, got {b:?}") };
            let sd = side(&r["side"]);
            let (pk, sk, ck) =
                if sd == Side::Buy { ("bid_px", "bid_sz", "bid_ct") } else { ("ask_px", "ask_sz", "ask_ct") };
            let at = r["levels"].as_array().expect("levels").iter().find(|lv| lv[pk] == r["price"] && i(&lv[sk]) > 0);
            let (eq, ec) = at.map_or((Qty::ZERO, 0), |lv| (qty(&lv[sk]), u(&lv[ck]) as u32));
            assert_eq!((l.side, l.px, l.qty, l.count), (sd, px(&r["price"]), eq, ec), "{ctx}");
        }
        ("OHLCVMsg", _) => {
            let Body::Bar(bar) = b else { panic!("{ctx}: expected Bar, got {b:?}") };
            let interval = match u(&r["rtype"]) {
                0x20 => 1_000_000_000,
                0x21 => 60_000_000_000,
                0x22 => 3_600_000_000_000,
                _ => 86_400_000_000_000,
            };
            let want = (interval, px(&r["open"]), px(&r["high"]), px(&r["low"]), px(&r["close"]), qty(&r["volume"]));
            assert_eq!((bar.interval_ns, bar.open, bar.high, bar.low, bar.close, bar.volume), want, "{ctx}");
        }
        ("StatusMsg", _) => {
            let Body::Status(st) = b else { panic!("{ctx}: expected Status, got {b:?}") };
            let reason = u(&r["reason"]);
            let want_reason = if reason == 0 { [0u8; 8] } else { padded(&reason.to_string()) };
            assert_eq!((st.state, st.reason), (expected_state(r), want_reason), "{ctx}");
        }
        (t, _) if t.starts_with("InstrumentDefMsg") => {
            let Body::Instrument(d) = b else { panic!("{ctx}: expected Instrument, got {b:?}") };
            assert_eq!(h.sym.as_str(), s(&r["raw_symbol"]), "{ctx}: symbol is raw_symbol");
            let lot = i(&r["min_lot_size_round_lot"]);
            let lot = if lot <= 0 || lot == i64::from(i32::MAX) { Qty::ZERO } else { Qty(lot * SCALE) };
            let uom = i(&r["unit_of_measure_qty"]);
            let exp = u(&r["expiration"]);
            assert_eq!(d.currency, padded(s(&r["currency"])), "{ctx}: currency");
            assert_eq!(d.tick_size, px(&r["min_price_increment"]), "{ctx}: tick size");
            assert_eq!(d.lot_size, lot, "{ctx}: lot size");
            assert_eq!(d.multiplier, if uom == i64::MAX { 0 } else { uom }, "{ctx}: multiplier");
            assert_eq!(d.expiration, if exp == u64::MAX { 0 } else { exp }, "{ctx}: expiration");
            assert_eq!(d.strike, px(&r["strike_price"]), "{ctx}: strike");
            assert_eq!(d.underlying, padded(s(&r["underlying"])), "{ctx}: underlying");
            let kind = match s(&r["instrument_class"]) {
                "K" => "equity",
                "F" => "future",
                "C" | "P" => "option",
                "M" | "S" | "T" => "spread",
                "X" | "Y" => "spot",
                _ => "other",
            };
            assert_eq!(d.kind.as_str(), kind, "{ctx}: kind");
        }
        (t, _) if t.starts_with("StatMsg") => {
            let Body::Statistic(st) = b else { panic!("{ctx}: expected Statistic, got {b:?}") };
            let q = i(&r["quantity"]);
            let undef = if t == "StatMsgV1" { i64::from(i32::MAX) } else { i64::MAX };
            let want_q = if q == undef { Qty(i64::MAX) } else { Qty(q * SCALE) };
            let want = (u(&r["stat_type"]) as u16, px(&r["price"]), want_q, u(&r["update_action"]) as u8);
            assert_eq!((st.stat_type, st.px, st.qty, st.action), want, "{ctx}");
        }
        ("ImbalanceMsg", _) => {
            let Body::Imbalance(im) = b else { panic!("{ctx}: expected Imbalance, got {b:?}") };
            let size = |v: &Value| if u(v) == u64::from(u32::MAX) { Qty::ZERO } else { qty(v) };
            let want = (
                side(&r["side"]),
                size(&r["paired_qty"]),
                size(&r["total_imbalance_qty"]),
                px(&r["ref_price"]),
                px(&r["cont_book_clr_price"]),
                px(&r["auct_interest_clr_price"]),
                s(&r["auction_type"]).bytes().next().unwrap_or(0),
            );
            let got = (im.side, im.paired_qty, im.imbalance_qty, im.ref_px, im.near_px, im.far_px, im.cross_type);
            assert_eq!(got, want, "{ctx}");
        }
        (t, a) => panic!("{ctx}: no mapping known for {t} action {a:?}"),
    }
}

fn compare(file: &str, refs: &[Value], ours: &[Record], dataset: Option<&str>) {
    let expected: Vec<&Value> = refs.iter().filter(|r| has_own_record(r)).collect();
    assert_eq!(ours.len(), expected.len(), "{file}: record count (reference {} DBN records)", refs.len());
    for (r, o) in expected.iter().zip(ours) {
        check(file, r, o, dataset);
    }
}

fn chunkings(len: usize) -> Vec<usize> {
    if len < 20_000 {
        vec![usize::MAX, 1, 7, 4096]
    } else {
        vec![usize::MAX, 997, 65_536]
    }
}

#[test]
fn every_dbn_file_matches_databento_dbn() {
    let dir = data_dir();
    let refs = reference(&[dir.to_str().expect("utf-8 path")]);
    assert!(refs.len() >= 80, "expected the ~86 DBN files of shared/data/dbn, found {}", refs.len());
    let (mut ok, mut refused, mut records) = (0, 0, 0);
    for (file, (head, recs)) in &refs {
        let bytes = std::fs::read(file).expect("reading capture");
        if head["status"] == "error" {
            // The reference refuses it: so must we, with an error that says what it is.
            let err = decode(DbnDecoder::new(), &bytes, usize::MAX)
                .err()
                .unwrap_or_else(|| panic!("{file}: we decoded a file databento-dbn refuses ({})", head["error"]));
            let want = if file.ends_with(".dbz") { "legacy DBZ" } else { "fragment" };
            assert!(err.contains(want), "{file}: error should say {want:?}: {err}");
            refused += 1;
            continue;
        }
        for chunk in chunkings(bytes.len()) {
            let (out, dec) = decode(DbnDecoder::new().with_books(false), &bytes, chunk)
                .unwrap_or_else(|e| panic!("{file} (chunks of {chunk}): {e}"));
            assert_eq!(u64::from(dec.version()), u(&head["version"]), "{file}: version");
            assert_eq!(dec.dataset(), head["dataset"].as_str(), "{file}: dataset");
            compare(file, recs, &out, head["dataset"].as_str());
        }
        ok += 1;
        records += recs.len();
    }
    assert!(ok >= 69 && refused >= 17, "decoded {ok}, refused {refused}");
    eprintln!("golden dbn: {ok} files ({records} DBN records) match databento-dbn; {refused} refused by both");
}

#[test]
fn fragments_decode_like_databento_dbn_without_metadata() {
    let dir = data_dir();
    let mut n = 0;
    for (version, names) in [
        (
            1u8,
            &[
                "multi-frame.definition.v1.dbn.frag.zst",
                "test_data.definition.v1.dbn.frag",
                "test_data.definition.v1.dbn.frag.zst",
            ][..],
        ),
        (2, &["test_data.definition.v2.dbn.frag", "test_data.definition.dbn.frag.zst"][..]),
        (3, &["test_data.definition.v3.dbn.frag", "test_data.definition.v3.dbn.frag.zst"][..]),
    ] {
        let paths: Vec<String> = names.iter().map(|f| dir.join(f).to_string_lossy().into_owned()).collect();
        let mut args = vec!["--fragment".to_owned(), version.to_string()];
        args.extend(paths.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for (file, (head, recs)) in reference(&args) {
            assert_eq!(head["status"], "ok", "{file}: reference refused the fragment: {}", head["error"]);
            let bytes = std::fs::read(&file).expect("reading capture");
            for chunk in chunkings(bytes.len()) {
                let dec = DbnDecoder::fragment(version, SourceId::new("XNAS.ITCH").unwrap()).unwrap().with_books(false);
                let (out, _) = decode(dec, &bytes, chunk).unwrap_or_else(|e| panic!("{file} (chunks of {chunk}): {e}"));
                compare(&file, &recs, &out, None);
            }
            n += 1;
        }
    }
    assert_eq!(n, 7);
}

fn nautilus_mbo() -> Vec<u8> {
    let p = data_dir()
        .join("nautilus/order_book_deltas_catalog/orderbooks_mbo_2024-05-08T00-00-00_2024-05-08T00-00-02.dbn.zst");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}; the shared captures must be beside the repo", p.display()))
}

/// Books on: every order event of the capture finds its order (the capture starts with a
/// clear and a snapshot), the own records are those of books-off mode in the same order,
/// and every quote is the best of the levels emitted so far.
#[test]
fn mbo_books_are_consistent() {
    let bytes = nautilus_mbo();
    let (plain, _) = decode(DbnDecoder::new().with_books(false), &bytes, usize::MAX).unwrap();
    let (booked, dec) = decode(DbnDecoder::new().with_strict_books(true), &bytes, 4096).unwrap();
    let counts: BTreeMap<String, u64> = dec.message_counts().into_iter().collect();
    assert_eq!(counts.get("unknown_order"), None, "{counts:?}");
    let own: Vec<&Record> = booked.iter().filter(|r| !matches!(r.body, Body::Level(_) | Body::Quote(_))).collect();
    assert_eq!(own.len(), plain.len());
    assert!(own.iter().zip(&plain).all(|(a, b)| *a == b), "books change the order-level records");

    let mut bids: BTreeMap<Px, Qty> = BTreeMap::new();
    let mut asks: BTreeMap<Px, Qty> = BTreeMap::new();
    let mut quotes = 0;
    for r in &booked {
        match r.body {
            Body::Level(l) => {
                let book = if l.side == Side::Buy { &mut bids } else { &mut asks };
                if l.qty == Qty::ZERO {
                    assert!(book.remove(&l.px).is_some(), "removal of a level never announced: {l:?}");
                } else {
                    book.insert(l.px, l.qty);
                }
            }
            Body::Quote(q) => {
                quotes += 1;
                let best_bid = bids.iter().next_back().map_or((Px::NULL, Qty::ZERO), |(p, q)| (*p, *q));
                let best_ask = asks.iter().next().map_or((Px::NULL, Qty::ZERO), |(p, q)| (*p, *q));
                assert_eq!(((q.bid_px, q.bid_qty), (q.ask_px, q.ask_qty)), (best_bid, best_ask));
            }
            _ => {}
        }
    }
    assert!(quotes > 100, "only {quotes} quotes");
    assert!(!bids.is_empty() && !asks.is_empty());
}

/// Books on for the MBP-10 captures: the levels announced reproduce each record's ten.
#[test]
fn mbp10_levels_track_the_ten_levels() {
    let dir = data_dir();
    for f in ["test_data.mbp-10.dbn", "test_data.mbp-10.v1.dbn.zst", "test_data.mbp-10.v3.dbn.zst"] {
        let bytes = std::fs::read(dir.join(f)).unwrap();
        let (out, _) = decode(DbnDecoder::new(), &bytes, 5).unwrap();
        let levels = out.iter().filter(|r| matches!(r.body, Body::Level(_))).count();
        let quotes = out.iter().filter(|r| matches!(r.body, Body::Quote(_))).count();
        assert!(levels >= 20, "{f}: the first record announces its ten levels a side ({levels})");
        assert!(quotes >= 1, "{f}");
    }
}

fn mbp1_capture() -> Vec<u8> {
    let p = data_dir().join("nautilus/historical_bars_catalog/futures_mbp-1_2024-07-01T23-58_2024-07-02T00-02.dbn.zst");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The output does not depend on how the (compressed) input is cut into chunks.
    #[test]
    fn chunking_never_changes_the_output(cuts in proptest::collection::vec(0usize..50_000, 0..40)) {
        let bytes = mbp1_capture();
        let (whole, _) = decode(DbnDecoder::new(), &bytes, usize::MAX).unwrap();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut dec = DbnDecoder::new();
        let mut out = Vec::new();
        let mut at = 0;
        for c in cuts.into_iter().chain([bytes.len()]) {
            dec.feed(&bytes[at..c], &mut out).unwrap();
            at = c;
        }
        dec.finish(&mut out).unwrap();
        prop_assert_eq!(out, whole);
    }

    /// Damaged captures (a byte changed, or cut short) give an error or records, never a panic.
    #[test]
    fn damaged_captures_never_panic(pos in 0usize..43_000, val in any::<u8>(), cut in 0usize..43_000) {
        let mut bytes = mbp1_capture();
        let p = pos % bytes.len();
        bytes[p] = val;
        bytes.truncate(cut.max(1).min(bytes.len()));
        let _ = decode(DbnDecoder::new(), &bytes, 333);
    }
}

#[test]
fn truncated_files_say_so() {
    let dir = data_dir();
    let plain = std::fs::read(dir.join("test_data.mbo.dbn")).unwrap();
    let err = decode(DbnDecoder::new(), &plain[..plain.len() - 10], 64).unwrap_err();
    assert!(err.contains("ends inside a record"), "{err}");
    let err = decode(DbnDecoder::new(), &plain[..40], 64).unwrap_err();
    assert!(err.contains("inside the DBN metadata header"), "{err}");
    let zst = std::fs::read(dir.join("test_data.mbo.v3.dbn.zst")).unwrap();
    let err = decode(DbnDecoder::new(), &zst[..zst.len() - 3], 64).unwrap_err();
    assert!(err.contains("truncated"), "{err}");
    let err = decode(DbnDecoder::new(), &[], 64).unwrap_err();
    assert!(err.contains("empty input"), "{err}");
    let err = decode(DbnDecoder::new(), b"{\"hello\": 1}", 64).unwrap_err();
    assert!(err.contains("not a DBN stream"), "{err}");
    assert!(Path::new(&dir).is_dir());
}
