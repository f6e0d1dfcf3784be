//! Golden test of the LOBSTER decoder against LOBSTER's own book reconstruction.
//!
//! The AMZN sample pair in `shared/data/lobster` (read in place) is decoded event by event;
//! after every event the quote we have published must equal that event's row of
//! `..._orderbook_1.csv`, which LOBSTER computed from the full TotalView-ITCH feed. The
//! decoder uses the orderbook rows for levels that the level-1 message file never describes
//! (see `ingest/src/lobster.rs`), so the check that is not by construction is the other one:
//! the message-derived change of every level that was already visible never disagrees with
//! the next row (`book_contradictions` stays 0), on all 57,515 events.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use tickmesh_codec::{Body, Px, Qty, Quote, Record};
use tickmesh_ingest::lobster::{decode_files, orderbook_path_for, LobsterDecoder};
use tickmesh_ingest::Decoder;

fn message_file() -> PathBuf {
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/lobster/AMZN_2012-06-21_34200000_57600000_message_1.csv"
    ));
    assert!(
        p.is_file(),
        "{} is missing: the golden tests read the shared captures in place; lay out shared/ beside the repo",
        p.display()
    );
    p
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The level-1 rows: (ask_px, ask_sz, bid_px, bid_sz) as LOBSTER wrote them.
fn rows(book: &[u8]) -> Vec<[i64; 4]> {
    String::from_utf8_lossy(book)
        .lines()
        .map(|l| {
            let v: Vec<i64> = l.split(',').map(|f| f.trim().parse().expect("orderbook field")).collect();
            [v[0], v[1], v[2], v[3]]
        })
        .collect()
}

fn expect_quote(row: &[i64; 4]) -> (Px, Qty, Px, Qty) {
    let side = |p: i64, s: i64, dummy: i64| {
        if p == dummy || s == 0 {
            (Px::NULL, Qty::ZERO)
        } else {
            (Px(p * 100_000), Qty::from_units(s))
        }
    };
    let (ap, aq) = side(row[0], row[1], 9_999_999_999);
    let (bp, bq) = side(row[2], row[3], -9_999_999_999);
    (bp, bq, ap, aq)
}

#[test]
fn best_bid_and_ask_match_the_orderbook_file_after_every_event() {
    let msg_path = message_file();
    let book_path = orderbook_path_for(&msg_path).expect("orderbook name");
    let (msgs, book) = (read(&msg_path), read(&book_path));
    let want = rows(&book);
    let mut dec = LobsterDecoder::from_file_name(&msg_path, true).unwrap();
    let mut out: Vec<Record> = Vec::new();
    dec.feed_orderbook(&book, &mut out).unwrap();
    assert!(out.is_empty(), "rows alone publish nothing");
    let mut quote: Option<Quote> = None;
    let mut events = 0;
    for line in msgs.split_inclusive(|b| *b == b'\n') {
        let from = out.len();
        dec.feed(line, &mut out).unwrap();
        for r in &out[from..] {
            if let Body::Quote(q) = r.body {
                quote = Some(q);
            }
        }
        let q = quote.unwrap_or_else(|| panic!("no quote after event {}", events + 1));
        assert_eq!(
            (q.bid_px, q.bid_qty, q.ask_px, q.ask_qty),
            expect_quote(&want[events]),
            "after event {} ({})",
            events + 1,
            String::from_utf8_lossy(line).trim()
        );
        events += 1;
    }
    dec.finish(&mut out).unwrap();
    assert_eq!(events, want.len(), "one orderbook row per message");
    let counts: BTreeMap<String, u64> = dec.message_counts().into_iter().collect();
    assert_eq!(counts.get("book_contradictions"), None, "message file and orderbook file disagree: {counts:?}");
    assert!(
        counts.get("book_levels_exposed").copied().unwrap_or(0) > 0,
        "a level-1 file exposes deeper levels: {counts:?}"
    );
    assert!(
        counts.get("unknown_order").copied().unwrap_or(0) > 0,
        "orders placed before 09:30 are executed and deleted: {counts:?}"
    );
    eprintln!("golden lobster: {events} events, quotes equal the orderbook file after each; {counts:?}");
    let total: u64 = ["add", "cancel", "delete", "execute_visible", "execute_hidden", "cross", "halt"]
        .iter()
        .filter_map(|k| counts.get(*k))
        .sum();
    assert_eq!(total as usize, events);
    // Every record belongs to the file's symbol and day and is left for the sequencer.
    let first_ts = out[0].header.ts_event;
    assert!(out.iter().all(|r| r.header.sym.as_str() == "AMZN" && r.header.seq.0 == 0 && r.header.ts_ingest == 0));
    assert!(out.windows(2).all(|w| w[0].header.ts_event <= w[1].header.ts_event), "event times never go back");
    // 09:30 EDT on 2012-06-21 is 13:30 UTC.
    let open = (1_340_251_200 + 34_200) * 1_000_000_000u64;
    assert!((open..open + 1_000_000_000).contains(&first_ts), "first event at {first_ts}");
}

/// The orderbook file only changes levels and quotes: order and trade records are the same
/// with and without it, and the file driver gives what event-by-event feeding gives.
#[test]
fn order_records_do_not_depend_on_the_orderbook_file() {
    let msg_path = message_file();
    let book_path = orderbook_path_for(&msg_path).unwrap();
    let mut with = Vec::new();
    decode_files(&msg_path, Some(&book_path), &mut with).unwrap();
    let mut without = Vec::new();
    decode_files(&msg_path, None, &mut without).unwrap();
    let own = |v: &[Record]| -> Vec<Record> {
        v.iter().filter(|r| !matches!(r.body, Body::Level(_) | Body::Quote(_))).copied().collect()
    };
    let (a, b) = (own(&with), own(&without));
    assert_eq!(a.len(), b.len());
    assert!(a == b);
    assert!(a.iter().any(|r| matches!(r.body, Body::Trade(_))));
}

fn head(lines: usize) -> (Vec<u8>, Vec<u8>) {
    let msg_path = message_file();
    let take = |b: Vec<u8>| -> Vec<u8> { b.split_inclusive(|c| *c == b'\n').take(lines).flatten().copied().collect() };
    (take(read(&msg_path)), take(read(&orderbook_path_for(&msg_path).unwrap())))
}

fn decode_split(msgs: &[u8], book: &[u8], cuts: &[usize]) -> Vec<Record> {
    let mut dec = LobsterDecoder::new("AMZN", "2012-06-21", 1).unwrap();
    let mut out = Vec::new();
    let (mut a, mut b) = (0, 0);
    for c in cuts.iter().copied().chain([usize::MAX]) {
        let (ma, mb) = (c.min(msgs.len()).max(a), (c / 2).min(book.len()).max(b));
        dec.feed(&msgs[a..ma], &mut out).unwrap();
        dec.feed_orderbook(&book[b..mb], &mut out).unwrap();
        (a, b) = (ma, mb);
    }
    dec.finish(&mut out).unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// How the two files are cut into chunks, and how their chunks interleave, never
    /// changes the records.
    #[test]
    fn chunking_never_changes_the_output(cuts in proptest::collection::vec(0usize..80_000, 0..30)) {
        let (msgs, book) = head(2_000);
        let whole = decode_split(&msgs, &book, &[]);
        let mut cuts = cuts;
        cuts.sort_unstable();
        prop_assert_eq!(decode_split(&msgs, &book, &cuts), whole);
    }

    /// Damaged files give errors or records, never a panic.
    #[test]
    fn damaged_files_never_panic(pos in 0usize..80_000, val in any::<u8>(), cut in 0usize..80_000) {
        let (mut msgs, book) = head(2_000);
        let p = pos % msgs.len();
        msgs[p] = val;
        msgs.truncate(cut.min(msgs.len()));
        let mut dec = LobsterDecoder::new("AMZN", "2012-06-21", 1).unwrap();
        let mut out = Vec::new();
        let _ = dec.feed_orderbook(&book, &mut out);
        let _ = dec.feed(&msgs, &mut out);
        let _ = dec.finish(&mut out);
    }
}
