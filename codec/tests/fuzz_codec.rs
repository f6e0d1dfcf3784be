//! Fuzzing the codec's validation of untrusted bytes (records from peers, clients, files):
//! random bytes, mutated valid records (bit flips, truncation, length fields), length-prefixed
//! frame streams and decimal text. No panic, no allocation trusting a length, a clear error
//! every time, and whatever is accepted is a record the encoder could have written.
//!
//! Cases: `PROPTEST_CASES`, or `TICKMESH_FUZZ_LONG=1` for 100x the CI default
//! (see `tests/support/fuzz.rs`).

#[path = "../../tests/support/fuzz.rs"]
mod fuzz;

use fuzz::{config, mutate, mutations, Capped};
use proptest::prelude::*;
use tickmesh_codec::frame::{put_frame, split_frame, Frames, MAX_RECORD_LEN};
use tickmesh_codec::record::{access_untrusted, HEADER_LEN};
use tickmesh_codec::{json, testing, Error, Px, Qty, Record, Side};

#[global_allocator]
static ALLOC: Capped = Capped;

/// One valid record of each kind the testing helpers build, one-sided quotes included.
fn samples() -> Vec<Vec<u8>> {
    vec![
        testing::trade(7, "AAPL", "320.14", "100", Side::Buy).to_bytes(),
        testing::trade(u64::MAX, "BTC-USD", "0.000000001", "0.0025", Side::None).to_bytes(),
        testing::quote(8, "MSFT", Some(("410.5", "300")), Some(("410.6", "200"))).to_bytes(),
        testing::quote(9, "ESH4", None, Some(("5000.25", "1"))).to_bytes(),
        testing::level(10, "ETH-USD", Side::Sell, "3000.01", "0").to_bytes(),
    ]
}

/// What every error must be: a non-empty, one-line message of bounded size.
fn check_error(e: &Error) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(!msg.is_empty());
    prop_assert!(!msg.contains('\n'), "error message spans lines: {msg}");
    prop_assert!(msg.len() < 1024, "error message too long ({} bytes): {msg:.200}", msg.len());
    Ok(())
}

/// An accepted record: every accessor and the JSON rendering work, and it is exactly what
/// the encoder writes for its decoded value (nothing in the bytes is ignored).
fn check_accepted(bytes: &[u8]) -> Result<(), TestCaseError> {
    let r = access_untrusted(bytes).map_err(|e| TestCaseError::fail(format!("not accepted: {e}")))?;
    let _ = (r.kind(), r.src(), r.seq(), r.sym(), r.ts_event(), r.ts_ingest(), r.flags(), r.instrument());
    let text = json::to_json(&r);
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| TestCaseError::fail(format!("accepted record renders invalid JSON ({e}): {text}")))?;
    prop_assert!(v.is_object());
    let owned: Record = r.to_owned();
    prop_assert_eq!(owned.to_bytes(), bytes.to_vec(), "accepted bytes do not round-trip");
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        match access_untrusted(&bytes) {
            Ok(_) => check_accepted(&bytes)?,
            Err(e) => check_error(&e)?,
        }
        match Record::decode(&bytes) {
            Ok(r) => prop_assert_eq!(r.to_bytes(), bytes.clone()),
            Err(e) => check_error(&e)?,
        }
        fuzz::assert_no_huge_alloc();
    }

    #[test]
    fn mutated_records_are_refused_or_canonical(which in 0usize..5, muts in mutations(4)) {
        let valid = &samples()[which];
        let bytes = mutate(valid, &muts);
        match access_untrusted(&bytes) {
            Ok(_) => check_accepted(&bytes)?,
            Err(e) => check_error(&e)?,
        }
        fuzz::assert_no_huge_alloc();
    }

    #[test]
    fn mutated_frame_streams_terminate_with_clear_errors(
        picks in proptest::collection::vec(0usize..5, 1..8),
        muts in mutations(4),
    ) {
        let samples = samples();
        let mut stream = Vec::new();
        for p in &picks {
            put_frame(&samples[*p], &mut stream);
        }
        let bytes = mutate(&stream, &muts);
        let mut n = 0usize;
        for item in Frames::new(&bytes) {
            n += 1;
            prop_assert!(n <= bytes.len() / 4 + 1, "iterator does not terminate");
            match item {
                Ok(r) => check_accepted(r.bytes())?,
                Err(e) => check_error(&e)?,
            }
        }
        // The incremental splitter agrees: it never asks for more than MAX_RECORD_LEN + 4.
        let mut rest = &bytes[..];
        loop {
            match split_frame(rest) {
                Ok(Some((rec, tail))) => {
                    prop_assert!((HEADER_LEN..=MAX_RECORD_LEN).contains(&rec.len()));
                    rest = tail;
                }
                Ok(None) => {
                    prop_assert!(rest.len() < 4 + MAX_RECORD_LEN);
                    break;
                }
                Err(e) => {
                    check_error(&e)?;
                    break;
                }
            }
        }
        fuzz::assert_no_huge_alloc();
    }

    #[test]
    fn declared_frame_lengths_are_bounded(len in any::<u32>(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut b = len.to_le_bytes().to_vec();
        b.extend_from_slice(&tail);
        match split_frame(&b) {
            Ok(Some((rec, _))) => prop_assert_eq!(rec.len(), len as usize),
            Ok(None) => prop_assert!((HEADER_LEN..=MAX_RECORD_LEN).contains(&(len as usize))),
            Err(e) => {
                prop_assert!(!(HEADER_LEN..=MAX_RECORD_LEN).contains(&(len as usize)));
                check_error(&e)?;
            }
        }
    }

    #[test]
    fn decimal_text_is_parsed_exactly_or_refused(s in "[-+0-9.eE ,_x]{0,40}|\\PC{0,40}") {
        for parsed in [Px::parse(&s).map(|p| p.to_string()), Qty::parse(&s).map(|q| q.to_string())] {
            match parsed {
                Ok(text) => {
                    // Whatever was accepted prints as a plain decimal that parses back the same.
                    prop_assert!(text.chars().all(|c| c.is_ascii_digit() || c == '.' || c == '-'), "{text}");
                    prop_assert_eq!(Px::parse(&text).map(|p| p.to_string()).ok(), Some(text.clone()));
                }
                Err(e) => check_error(&e)?,
            }
        }
    }
}
