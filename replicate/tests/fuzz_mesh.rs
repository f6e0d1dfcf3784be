//! Fuzzing the mesh protocol's decoders through `MeshCore`'s one entry point for peer
//! bytes (`Event::Data`), at every place on the wire a peer can write: the first message of
//! a stream it opened (accepted or dialed connection), the control stream before and after
//! hello, a stream we serve, a stream we subscribed on. Inputs: random bytes, random
//! message types with random bodies (past the length check into every decoder), mutated
//! valid messages (bit flips, length fields, truncation, splices), and structure-aware
//! JSON messages (hello, heartbeat, subscribe, refused with arbitrary fields), each fed in
//! random chunks.
//!
//! Every case: no panic, no allocation trusting a length (the capped allocator), and either
//! the input is accepted or there is exactly one clear error (`peer eu-west-1: ...`, one
//! line, bounded) with that connection closed and counted; whatever reaches the journal
//! is valid records of the subscribed source continuing its `seq`; and the node still
//! serves another peer afterwards.
//!
//! Cases: `PROPTEST_CASES`, or `TICKMESH_FUZZ_LONG=1` for 100x the CI default
//! (see `tests/support/fuzz.rs`).

#[path = "../../tests/support/fuzz.rs"]
mod fuzz;
mod peer;

use fuzz::{chunks, config, mutate, mutations, Capped};
use peer::*;
use proptest::prelude::*;
use tickmesh_codec::frame::split_frame;
use tickmesh_replicate::link::{ConnId, Heartbeat, Held, Hello, LinkInfo, Refused, Role, StreamId, Subscribe};
use tickmesh_replicate::Error;

#[global_allocator]
static ALLOC: Capped = Capped;

/// Where on the wire the peer (`eu-west-1`) writes.
#[derive(Debug, Clone, Copy)]
enum Spot {
    /// A stream it opened on its connection to us: first message (hello or subscribe).
    AcceptedFirst,
    /// Its control stream to us after hello: heartbeats.
    AcceptedControl,
    /// A stream where we serve it our source: unsubscribe only.
    Serving,
    /// Our control stream to it, before its hello.
    DialedBeforeHello,
    /// Our control stream to it after hello: heartbeats.
    DialedControl,
    /// Our subscription to its home source: batches, refused.
    Subscription,
    /// A stream it opened on the connection we dialed (nothing is expected there).
    PeerOpenedOnDialed,
}

const SPOTS: [Spot; 7] = [
    Spot::AcceptedFirst,
    Spot::AcceptedControl,
    Spot::Serving,
    Spot::DialedBeforeHello,
    Spot::DialedControl,
    Spot::Subscription,
    Spot::PeerOpenedOnDialed,
];

/// A node with the peer at `spot`: (node, connection, stream, valid inputs there).
fn prepare(spot: Spot) -> (Node, ConnId, StreamId, Vec<Vec<u8>>) {
    let mut n = Node::new();
    let hb = heartbeat(5, &[(SRC_B, 9, B), (SRC_C, 3, C)]);
    let (conn, stream, valid) = match spot {
        Spot::AcceptedFirst => {
            let c = n.accepted(B);
            (c, 1, vec![[hello(B, &[SRC_B]), hb.clone()].concat(), subscribe(SRC_A, 2)])
        }
        Spot::AcceptedControl => {
            let c = n.accepted(B);
            n.data(c, 1, &hello(B, &[SRC_B])).unwrap();
            (c, 1, vec![hb.clone(), [hb.clone(), heartbeat(6, &[])].concat()])
        }
        Spot::Serving => {
            let c = n.accepted(B);
            n.data(c, 1, &hello(B, &[SRC_B])).unwrap();
            n.data(c, 3, &subscribe(SRC_A, 0)).unwrap();
            (c, 3, vec![message(UNSUBSCRIBE, &[])])
        }
        Spot::DialedBeforeHello => {
            n.tick();
            let c = 77;
            n.handle(tickmesh_replicate::link::Event::Connected {
                conn: c,
                peer: B.into(),
                dir: tickmesh_replicate::link::ConnDir::Dialed,
            })
            .unwrap();
            (c, 0, vec![[hello(B, &[SRC_B]), hb.clone()].concat()])
        }
        Spot::DialedControl => {
            let c = n.dialed(B, &[SRC_B]);
            (c, 0, vec![hb.clone()])
        }
        Spot::Subscription => {
            let (c, s) = n.upstream(B, SRC_B, 9);
            let refused = json(REFUSED, &Refused { src: SRC_B.into(), reason: "policy".into() });
            let two = [batch(SRC_B, &records(SRC_B, 1..=3)), batch(SRC_B, &records(SRC_B, 4..=6))].concat();
            (c, s, vec![two, refused, batch(SRC_B, &records(SRC_B, 1..=1))])
        }
        Spot::PeerOpenedOnDialed => {
            let c = n.dialed(B, &[SRC_B]);
            (c, 1, vec![batch(SRC_B, &records(SRC_B, 1..=2)), subscribe(SRC_A, 0)])
        }
    };
    n.take();
    (n, conn, stream, valid)
}

/// What every error must be: the protocol error of this peer, one clear bounded line.
fn check_error(e: &Error) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(matches!(e, Error::Protocol { peer, .. } if peer == B), "not a protocol error of {B}: {msg}");
    prop_assert!(msg.starts_with("peer eu-west-1: ") && msg.len() > 20, "unclear: {msg}");
    prop_assert!(!msg.contains('\n'), "error message spans lines: {msg}");
    prop_assert!(msg.len() < 1024, "error message too long ({} bytes): {msg:.200}", msg.len());
    Ok(())
}

/// Feeds `bytes` in pieces at `cuts` to the peer's `stream` and checks the invariants.
fn run(
    spot: Spot,
    n: &mut Node,
    conn: ConnId,
    stream: StreamId,
    bytes: &[u8],
    cuts: &[usize],
) -> Result<(), TestCaseError> {
    let errors_before = n.stats(B).protocol_errors;
    let mut errors = 0;
    for piece in chunks(bytes, cuts) {
        if let Err(e) = n.data(conn, stream, piece) {
            check_error(&e)?;
            errors += 1;
        }
    }
    // At most one error: the connection is closed by the first; later bytes are ignored.
    prop_assert!(errors <= 1, "{errors} errors on one connection");
    let closed = n.closed(conn);
    prop_assert_eq!(
        errors == 1,
        closed.is_some(),
        "an error must close the connection, and only an error: {:?}",
        closed
    );
    prop_assert_eq!(n.stats(B).protocol_errors, errors_before + errors, "protocol errors are counted");
    // Only the subscribed source reaches the journal, valid and contiguous. (A node that
    // holds nothing of a source takes whatever seq the upstream starts at: its retention
    // may have removed the first records.)
    let mut next = n.delivered().first().map(|d| d.first_seq).unwrap_or(1);
    for d in n.delivered() {
        prop_assert!(matches!(spot, Spot::Subscription), "delivered at {spot:?}: {d:?}");
        prop_assert_eq!(d.peer.as_str(), B);
        prop_assert_eq!(d.src, sid(SRC_B));
        prop_assert_eq!(d.first_seq, next);
        let mut rest: &[u8] = &d.frames;
        let mut count = 0;
        while let Ok(Some((rec, tail))) = split_frame(rest) {
            let r = tickmesh_codec::access_untrusted(rec)
                .map_err(|e| TestCaseError::fail(format!("invalid record delivered: {e}")))?;
            prop_assert_eq!(r.source_id(), sid(SRC_B));
            prop_assert_eq!(r.seq(), next);
            next += 1;
            count += 1;
            rest = tail;
        }
        prop_assert!(rest.is_empty(), "delivery ends inside a frame");
        prop_assert_eq!(count, d.count);
        prop_assert_eq!(d.last_seq, next - 1);
    }
    // The node is not hurt: it serves another peer.
    prop_assert!(n.still_serves(C), "after {spot:?} input the node no longer serves {C}");
    fuzz::assert_no_huge_alloc();
    Ok(())
}

fn spot() -> impl Strategy<Value = Spot> {
    proptest::sample::select(SPOTS.to_vec())
}

fn cuts() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(any::<usize>(), 0..4)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(vec![A, B, C, SRC_A, SRC_B, SRC_C, "", "tap", "x\ny", "bad id!"])
            .prop_map(str::to_owned),
        ".{0,24}",
        "[A-Z0-9._-]{1,20}",
    ]
}

fn held() -> impl Strategy<Value = Held> {
    (text(), any::<u64>(), text()).prop_map(|(src, seq, origin)| Held { src, seq, origin })
}

/// Structure-aware JSON messages with arbitrary field values.
fn json_message() -> impl Strategy<Value = Vec<u8>> {
    let role = proptest::sample::select(vec![Role::All, Role::Ingest, Role::Gateway, Role::Tap]);
    prop_oneof![
        (prop_oneof![Just(2u32), any::<u32>()], text(), role, proptest::collection::vec(text(), 0..6))
            .prop_map(|(version, region, role, home)| json(HELLO, &Hello { version, region, role, home })),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(held(), 0..8),
            proptest::collection::vec((text(), any::<u64>(), any::<bool>()), 0..4),
            any::<bool>()
        )
            .prop_map(|(t, echo, hold, sources, links, draining)| {
                let links =
                    links.into_iter().map(|(region, rtt_us, healthy)| LinkInfo { region, rtt_us, healthy }).collect();
                json(HEARTBEAT, &Heartbeat { t, echo, hold, sources, links, draining })
            }),
        (text(), any::<u64>()).prop_map(|(src, after_seq)| json(SUBSCRIBE, &Subscribe { src, after_seq })),
        (text(), text()).prop_map(|(src, reason)| json(REFUSED, &Refused { src, reason })),
        // Valid JSON of the wrong shape, and JSON with unexpected nesting.
        proptest::sample::select(vec![HELLO, HEARTBEAT, SUBSCRIBE, REFUSED]).prop_flat_map(|kind| {
            proptest::sample::select(vec![
                "null",
                "[]",
                "{}",
                "{\"version\":2}",
                "[[[[[[[[[[[[1]]]]]]]]]]]]",
                "\"\"",
                "1e999",
                r#"{"version":2,"region":"eu-west-1","role":"a\nb","home":[]}"#,
            ])
            .prop_map(move |body| message(kind, body.as_bytes()))
        }),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn random_bytes(spot in spot(), bytes in proptest::collection::vec(any::<u8>(), 0..512), cuts in cuts()) {
        let (mut n, conn, stream, _) = prepare(spot);
        run(spot, &mut n, conn, stream, &bytes, &cuts)?;
    }

    #[test]
    fn random_bodies_of_every_message_type(
        spot in spot(),
        kind in 0u8..9,
        body in proptest::collection::vec(any::<u8>(), 0..300),
        cuts in cuts(),
    ) {
        let (mut n, conn, stream, _) = prepare(spot);
        run(spot, &mut n, conn, stream, &message(kind, &body), &cuts)?;
    }

    #[test]
    fn mutated_valid_messages(spot in spot(), which in any::<usize>(), muts in mutations(4), cuts in cuts()) {
        let (mut n, conn, stream, valid) = prepare(spot);
        let bytes = mutate(&valid[which % valid.len()], &muts);
        run(spot, &mut n, conn, stream, &bytes, &cuts)?;
    }

    #[test]
    fn structured_json_messages(spot in spot(), msgs in proptest::collection::vec(json_message(), 1..4), cuts in cuts()) {
        let (mut n, conn, stream, _) = prepare(spot);
        run(spot, &mut n, conn, stream, &msgs.concat(), &cuts)?;
    }

    #[test]
    fn batches_of_mutated_records(
        seqs in proptest::collection::vec(0u64..12, 1..8),
        which in proptest::collection::vec(any::<bool>(), 8),
        muts in mutations(3),
        cuts in cuts(),
    ) {
        // A well-framed batch whose records are mutated one by one (and whose seqs may
        // repeat, go back or skip): the frame layer passes, the record checks must hold.
        let (mut n, conn, stream, _) = prepare(Spot::Subscription);
        let recs: Vec<Vec<u8>> = seqs
            .iter()
            .zip(&which)
            .map(|(q, m)| if *m { mutate(&record(SRC_B, *q), &muts) } else { record(SRC_B, *q) })
            .collect();
        run(Spot::Subscription, &mut n, conn, stream, &batch(SRC_B, &recs), &cuts)?;
    }
}

/// The declared lengths a peer cannot make us allocate: refused at the length field,
/// before any of the body arrives.
#[test]
fn oversized_and_zero_lengths_are_refused_before_buffering() {
    for (spot, len) in [(Spot::AcceptedFirst, u32::MAX), (Spot::Subscription, (4 << 20) + 1), (Spot::DialedControl, 0)]
    {
        let (mut n, conn, stream, _) = prepare(spot);
        let e = n.data(conn, stream, &len.to_le_bytes()).unwrap_err();
        assert!(e.to_string().contains("outside 1..="), "{spot:?}: {e}");
        assert!(n.closed(conn).is_some());
        fuzz::assert_no_huge_alloc();
    }
}
