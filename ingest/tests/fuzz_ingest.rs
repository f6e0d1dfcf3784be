//! Fuzzing the venue decoders with mutations of valid input: ITCH 5.0 files (windows of the
//! real capture in `../shared/data/itch`, read in place and mutated in memory), single ITCH
//! messages, MoldUDP64 datagrams built from those messages (and sequences of them with
//! hostile sequence numbers and counts), the real pcap captures, and DBN streams built with
//! the `dbn` crate's encoder (plus the real uncompressed and zstd DBN files).
//!
//! Each input is fed in random chunks. Asserted: no panic, no allocation trusting a length
//! (the capped allocator), every error is a non-empty one-line message of bounded size, and
//! every record that comes out is a valid codec record.
//!
//! Cases: `PROPTEST_CASES`, or `TICKMESH_FUZZ_LONG=1` for 100x the CI default.

#[path = "../../tests/support/fuzz.rs"]
mod fuzz;

use std::ffi::c_char;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fuzz::{chunks, config, mutate, mutations, Capped};
use proptest::prelude::*;
use tickmesh_codec::{access_untrusted, Record};
use tickmesh_ingest::dbn_feed::DbnDecoder;
use tickmesh_ingest::itch::{EasternDate, FileDecoder, Message, Normalizer, NormalizerConfig};
use tickmesh_ingest::moldudp64::{encode_datagram, MoldDecoder, SessionId};
use tickmesh_ingest::pcap::{PcapConfig, PcapDecoder};
use tickmesh_ingest::Decoder;

#[global_allocator]
static ALLOC: Capped = Capped;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data");

fn read(rel: &str) -> Vec<u8> {
    let p = Path::new(DATA).join(rel);
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!("{}: {e}; the fuzz tests read the shared captures in place from <repo>/../shared/data", p.display())
    })
}

fn itch_config() -> NormalizerConfig {
    NormalizerConfig { date: Some(EasternDate::parse("2020-01-30").unwrap()), ..Default::default() }
}

/// The capture and the start offset of each length-prefixed message in it.
fn itch_capture() -> &'static (Vec<u8>, Vec<usize>) {
    static CAP: OnceLock<(Vec<u8>, Vec<usize>)> = OnceLock::new();
    CAP.get_or_init(|| {
        let b = read("itch/locate-13-10k.bin");
        let mut starts = Vec::new();
        let mut at = 0;
        while at + 2 <= b.len() {
            starts.push(at);
            at += 2 + usize::from(u16::from_be_bytes([b[at], b[at + 1]]));
        }
        (b, starts)
    })
}

/// Messages `from..from + n` of the capture, framing included.
fn itch_window(from: usize, n: usize) -> &'static [u8] {
    let (b, starts) = itch_capture();
    let from = from % starts.len();
    let to = (from + n).min(starts.len());
    let end = starts.get(to).copied().unwrap_or(b.len());
    &b[starts[from]..end]
}

/// The message bodies (no length prefix) of a window.
fn itch_messages(from: usize, n: usize) -> Vec<&'static [u8]> {
    let w = itch_window(from, n);
    let mut out = Vec::new();
    let mut at = 0;
    while at + 2 <= w.len() {
        let len = usize::from(u16::from_be_bytes([w[at], w[at + 1]]));
        out.push(&w[at + 2..at + 2 + len]);
        at += 2 + len;
    }
    out
}

fn check_error(e: &dyn std::fmt::Display) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(!msg.is_empty());
    prop_assert!(!msg.contains('\n'), "error message spans lines: {msg}");
    prop_assert!(msg.len() < 2048, "error message of {} bytes: {msg:.200}", msg.len());
    Ok(())
}

fn check_records(out: &[Record]) -> Result<(), TestCaseError> {
    for r in out {
        let b = r.to_bytes();
        if let Err(e) = access_untrusted(&b) {
            return Err(TestCaseError::fail(format!("decoder produced an invalid record ({e}): {r:?}")));
        }
    }
    Ok(())
}

/// Feeds the pieces, then finishes; stops at the first error (a decoder may refuse to go
/// on after one), which must be clear.
fn run(dec: &mut dyn Decoder, pieces: &[&[u8]]) -> Result<(), TestCaseError> {
    let mut out = Vec::new();
    for p in pieces {
        if let Err(e) = dec.feed(p, &mut out) {
            check_error(&e)?;
            return check_records(&out);
        }
    }
    if let Err(e) = dec.finish(&mut out) {
        check_error(&e)?;
    }
    check_records(&out)
}

/// A DBN MBO stream built with the `dbn` crate's encoder: adds, modifies, cancels, fills,
/// trades and a clear on two instruments.
fn dbn_stream(events: &[(u8, bool, i64, u32, u64)]) -> Vec<u8> {
    use dbn::encode::{dbn::Encoder, EncodeRecord};
    use dbn::{rtype, FlagSet, MboMsg, Metadata, RecordHeader, SType, Schema};
    let md = Metadata::builder()
        .dataset("XNAS.ITCH".to_owned())
        .schema(Some(Schema::Mbo))
        .start(1_700_000_000_000_000_000)
        .stype_in(Some(SType::RawSymbol))
        .stype_out(SType::InstrumentId)
        .build();
    let mut buf = Vec::new();
    {
        let mut enc = Encoder::new(&mut buf, &md).expect("dbn metadata encodes");
        for (i, (action, bid, px, size, order)) in events.iter().enumerate() {
            let ts = 1_700_000_000_000_000_000 + i as u64 * 1_000;
            let action = [b'A', b'M', b'C', b'F', b'T', b'R'][usize::from(*action) % 6];
            let msg = MboMsg {
                hd: RecordHeader::new::<MboMsg>(rtype::MBO, 1, 1 + (*order % 2) as u32, ts),
                order_id: *order,
                price: *px,
                size: *size,
                flags: FlagSet::default(),
                channel_id: 0,
                action: action as c_char,
                side: if *bid { b'B' } else { b'A' } as c_char,
                ts_recv: ts + 10,
                ts_in_delta: 5,
                sequence: i as u32,
            };
            enc.encode_record(&msg).expect("dbn record encodes");
        }
    }
    buf
}

fn dbn_event() -> impl Strategy<Value = (u8, bool, i64, u32, u64)> {
    (0u8..6, any::<bool>(), (1i64..1_000_000).prop_map(|p| p * 10_000_000), 1u32..1000, 1u64..20)
}

/// The real DBN files, plain and zstd.
fn dbn_files() -> &'static Vec<Vec<u8>> {
    static FILES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = PathBuf::from(DATA).join("dbn");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_str().is_some_and(|s| s.ends_with(".dbn") || s.ends_with(".dbn.zst")))
            .collect();
        names.sort();
        names.iter().map(|p| std::fs::read(p).unwrap()).collect()
    })
}

/// The real MoldUDP64 pcap captures.
fn pcap_files() -> &'static Vec<Vec<u8>> {
    static FILES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FILES.get_or_init(|| {
        let mut out = Vec::new();
        let root = PathBuf::from(DATA).join("itch/moldudp64");
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())).flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "pcap") {
                    out.push(p);
                }
            }
        }
        out.sort();
        assert!(!out.is_empty(), "no pcap under {DATA}/itch/moldudp64");
        out.iter().map(|p| std::fs::read(p).unwrap()).collect()
    })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn itch_file_windows_mutated(from in any::<usize>(), n in 1usize..80, muts in mutations(4), cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        let bytes = mutate(itch_window(from, n), &muts);
        run(&mut FileDecoder::new(itch_config()), &chunks(&bytes, &cuts))?;
        fuzz::assert_no_huge_alloc();
    }

    #[test]
    fn itch_single_messages_mutated(from in any::<usize>(), muts in mutations(3)) {
        // Context first (directory and add messages before it), so the mutated message
        // meets a book that knows its order and security.
        let mut norm = Normalizer::new(itch_config());
        let mut out = Vec::new();
        let msgs = itch_messages(from, 40);
        for m in msgs.iter().take(msgs.len().saturating_sub(1)) {
            if let Ok(msg) = Message::parse(m) {
                let _ = norm.apply(&msg, 0, &mut out);
            }
        }
        let last = msgs.last().copied().unwrap_or_default();
        let bytes = mutate(last, &muts);
        match Message::parse(&bytes) {
            Ok(msg) => {
                if let Err(e) = norm.apply(&msg, 0, &mut out) {
                    check_error(&e)?;
                }
            }
            Err(e) => check_error(&e)?,
        }
        check_records(&out)?;
        fuzz::assert_no_huge_alloc();
    }

    #[test]
    fn itch_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        run(&mut FileDecoder::new(itch_config()), &[&bytes])?;
    }

    #[test]
    fn moldudp64_datagrams_mutated(
        from in any::<usize>(),
        per in proptest::collection::vec(0usize..6, 1..8),
        seqs in proptest::collection::vec(prop_oneof![Just(u64::MAX), Just(1u64 << 60), Just(0u64), 1u64..50], 1..8),
        muts in mutations(4),
        which in any::<usize>(),
    ) {
        let msgs = itch_messages(from, 60);
        let session = SessionId(*b"FUZZSESS01");
        let mut datagrams = Vec::new();
        let mut at = 0;
        for (i, n) in per.iter().enumerate() {
            let take: Vec<&[u8]> = msgs.iter().skip(at).take(*n).copied().collect();
            at += n;
            let mut d = Vec::new();
            encode_datagram(session, seqs[i % seqs.len()], &take, &mut d);
            datagrams.push(d);
        }
        let k = which % datagrams.len();
        datagrams[k] = mutate(&datagrams[k], &muts);
        let mut dec = MoldDecoder::new(itch_config());
        let mut out = Vec::new();
        for d in &datagrams {
            if let Err(e) = dec.datagram(d, &mut out) {
                check_error(&e)?;
            }
            while let Some(ev) = dec.poll_event() {
                if let Some(e) = ev.to_error() {
                    check_error(&e)?;
                }
            }
        }
        check_records(&out)?;
        fuzz::assert_no_huge_alloc();
    }

    #[test]
    fn moldudp64_random_datagrams(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut dec = MoldDecoder::new(itch_config());
        let mut out = Vec::new();
        if let Err(e) = dec.datagram(&bytes, &mut out) {
            check_error(&e)?;
        }
        check_records(&out)?;
        fuzz::assert_no_huge_alloc();
    }

    #[test]
    fn pcap_captures_mutated(which in any::<usize>(), muts in mutations(4), cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        let files = pcap_files();
        let bytes = mutate(&files[which % files.len()], &muts);
        run(&mut PcapDecoder::new(PcapConfig::default()), &chunks(&bytes, &cuts))?;
        fuzz::assert_no_huge_alloc();
    }

    #[test]
    fn dbn_encoded_streams_mutated(events in proptest::collection::vec(dbn_event(), 1..40), muts in mutations(4), cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        let valid = dbn_stream(&events);
        // Unmutated, the stream decodes without error.
        let mut out = Vec::new();
        let mut dec = DbnDecoder::new();
        dec.feed(&valid, &mut out).map_err(|e| TestCaseError::fail(format!("valid stream refused: {e}")))?;
        dec.finish(&mut out).map_err(|e| TestCaseError::fail(format!("valid stream refused at the end: {e}")))?;
        check_records(&out)?;
        let bytes = mutate(&valid, &muts);
        run(&mut DbnDecoder::new(), &chunks(&bytes, &cuts))?;
        fuzz::assert_no_huge_alloc();
    }

    #[test]
    fn dbn_real_files_mutated(which in any::<usize>(), muts in mutations(4), cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        let files = dbn_files();
        let bytes = mutate(&files[which % files.len()], &muts);
        run(&mut DbnDecoder::new(), &chunks(&bytes, &cuts))?;
        fuzz::assert_no_huge_alloc();
    }
}
