//! Replayed and forged mesh messages from a peer with a valid certificate (the mTLS layer
//! let it in; `tests/hostile_mesh_tls.rs` covers the peers it keeps out), sans-I/O: the
//! node under test is `us-east-1`, the misbehaving peer `eu-west-1` (home to `SYN.EUW1`),
//! an honest third region `ap-southeast-1` (home to `SYN.APS1`).
//!
//! What a peer with a valid certificate can and cannot do:
//! * replay a batch: the records are dropped by (source, seq), counted as duplicates
//!   (`tickmesh_mesh_duplicates_dropped_total{peer}`), nothing is journaled twice;
//! * send records of another source on a subscription, or a batch whose header names
//!   another source, or a batch on a stream nobody asked for: a protocol error naming the
//!   peer, the connection closed, nothing journaled;
//! * claim another region's home source (in its hello or its heartbeats), or ours: refused
//!   the same way, so it can never become a source's origin and feed us its records;
//! * say hello as a region other than the one its certificate names: refused.
//!
//! What it can do: relay forged records of a source *if* we chose it as the relay for that
//! source (only while the origin's link is down, see `link.rs` routing). Records are not
//! signed; a region's certificate is the trust boundary (SECURITY.md).

mod peer;

use peer::*;
use tickmesh_replicate::link::{Action, Event};

fn journaled(n: &Node) -> Vec<(String, u64, u64)> {
    n.delivered().iter().map(|d| (d.src.as_str().to_owned(), d.first_seq, d.last_seq)).collect()
}

fn assert_refused(n: &Node, r: Result<(), tickmesh_replicate::Error>, conn: u64, want: &str) {
    let e = r.expect_err(want).to_string();
    assert!(e.starts_with(&format!("peer {B}: ")), "the error names the peer: {e}");
    assert!(e.contains(want), "{want}: {e}");
    let reason = n.closed(conn).unwrap_or_else(|| panic!("connection not closed after: {e}"));
    assert_eq!(reason, e, "the close reason sent to the peer is the error");
    assert!(n.stats(B).protocol_errors >= 1);
}

#[test]
fn a_replayed_batch_is_dropped_by_source_and_seq_and_counted() {
    let mut n = Node::new();
    let (conn, stream) = n.upstream(B, SRC_B, 6);
    let first = batch(SRC_B, &records(SRC_B, 1..=3));
    n.data(conn, stream, &first).unwrap();
    assert_eq!(journaled(&n), vec![(SRC_B.to_owned(), 1, 3)]);
    // The same batch again, then an overlapping one: only seq 4 is new.
    n.data(conn, stream, &first).unwrap();
    n.data(conn, stream, &batch(SRC_B, &records(SRC_B, 2..=4))).unwrap();
    assert_eq!(journaled(&n), vec![(SRC_B.to_owned(), 1, 3), (SRC_B.to_owned(), 4, 4)], "nothing journaled twice");
    let st = n.stats(B);
    assert_eq!((st.duplicates, st.records_in), (5, 4), "replayed records are counted, not journaled");
    assert!(n.closed(conn).is_none(), "a replay is dropped, not a reason to drop a healthy upstream");
    // A replay in the middle of new records (seq going back) is an error.
    let r = n.data(conn, stream, &batch(SRC_B, &[record(SRC_B, 5), record(SRC_B, 3)]));
    assert_refused(&n, r, conn, "out of order");
    assert_eq!(journaled(&n).len(), 2, "nothing of the bad batch is journaled");
}

#[test]
fn a_replay_on_a_new_connection_is_deduplicated_too() {
    let mut n = Node::new();
    let (conn, stream) = n.upstream(B, SRC_B, 3);
    n.data(conn, stream, &batch(SRC_B, &records(SRC_B, 1..=3))).unwrap();
    n.handle(Event::Closed { conn }).unwrap();
    // The peer reconnects; we subscribe after seq 3; it replays 1..=3 anyway, then 4.
    for _ in 0..50 {
        n.tick();
        n.now += 50_000_000;
    }
    n.take();
    let (conn2, stream2) = n.upstream(B, SRC_B, 4);
    assert_ne!(conn2, conn);
    let sub = n.actions.iter().find_map(|a| match a {
        Action::Send { conn, stream, bytes, .. } if *conn == conn2 && *stream == stream2 => Some(bytes.clone()),
        _ => None,
    });
    assert!(String::from_utf8_lossy(&sub.unwrap()[5..]).contains("\"after_seq\":3"), "subscribed after what we hold");
    n.data(conn2, stream2, &batch(SRC_B, &records(SRC_B, 1..=4))).unwrap();
    let d = n.delivered();
    assert_eq!((d.len(), d[0].first_seq, d[0].last_seq), (1, 4, 4), "{d:?}");
    assert_eq!(n.stats(B).duplicates, 3);
}

#[test]
fn records_of_another_source_on_a_subscription_are_refused() {
    // (d) a record whose header src differs from the stream's source.
    let mut n = Node::new();
    let (conn, stream) = n.upstream(B, SRC_B, 6);
    let r = n.data(conn, stream, &batch(SRC_B, &[record(SRC_B, 1), record(SRC_C, 2)]));
    assert_refused(&n, r, conn, "sent a record of SYN.APS1 on the stream of SYN.EUW1");
    assert!(journaled(&n).is_empty(), "nothing of the batch is journaled, not even its good first record");

    // A batch header naming another source (the honest C's) on B's subscription.
    let mut n = Node::new();
    let (conn, stream) = n.upstream(B, SRC_B, 6);
    let r = n.data(conn, stream, &batch(SRC_C, &records(SRC_C, 1..=2)));
    assert_refused(&n, r, conn, "BATCH for source \"SYN.APS1\" on the stream of SYN.EUW1");
    assert!(journaled(&n).is_empty());

    // Our own home source, pushed at us.
    let mut n = Node::new();
    let (conn, stream) = n.upstream(B, SRC_B, 6);
    let r = n.data(conn, stream, &batch(SRC_B, &records(SRC_A, 6..=7)));
    assert_refused(&n, r, conn, "sent a record of SYN.USE1");
    assert!(journaled(&n).is_empty());
}

#[test]
fn a_batch_on_a_stream_nobody_asked_for_is_refused() {
    // (c) on a stream the peer opened on its connection to us.
    let mut n = Node::new();
    let conn = n.accepted(B);
    n.data(conn, 1, &hello(B, &[SRC_B])).unwrap();
    let r = n.data(conn, 3, &batch(SRC_B, &records(SRC_B, 1..=2)));
    assert_refused(&n, r, conn, "unexpected message type 6 on stream 3");
    // As the first message of a new connection, before any hello.
    let mut n = Node::new();
    let conn = n.accepted(B);
    let r = n.data(conn, 1, &batch(SRC_B, &records(SRC_B, 1..=2)));
    assert_refused(&n, r, conn, "unexpected message type 6");
    // On a stream it opened on the connection we dialed.
    let mut n = Node::new();
    let conn = n.dialed(B, &[SRC_B]);
    let r = n.data(conn, 1, &batch(SRC_B, &records(SRC_B, 1..=2)));
    assert_refused(&n, r, conn, "unexpected message type 6 on stream 1");
    // On our control stream.
    let mut n = Node::new();
    let conn = n.dialed(B, &[SRC_B]);
    let r = n.data(conn, 0, &batch(SRC_B, &records(SRC_B, 1..=2)));
    assert_refused(&n, r, conn, "unexpected message type 6 on stream 0");
    assert!(journaled(&n).is_empty());
    // On a subscription we ended (late bytes of a switch are normal): ignored, not journaled.
    let mut n = Node::new();
    let (conn, stream) = n.upstream(B, SRC_B, 6);
    n.handle(Event::StreamEnded { conn, stream }).unwrap();
    n.take();
    n.data(conn, stream, &batch(SRC_B, &records(SRC_B, 1..=2))).unwrap();
    assert!(journaled(&n).is_empty());
}

#[test]
fn a_peer_cannot_claim_another_regions_home_source() {
    // (b) C is home to SYN.APS1 and said so; B then claims it in its hello.
    let mut n = Node::new();
    n.upstream(C, SRC_C, 10);
    n.take();
    n.tick();
    let conn = 50;
    n.handle(Event::Connected { conn, peer: B.into(), dir: tickmesh_replicate::link::ConnDir::Dialed }).unwrap();
    let r = n.data(conn, 0, &hello(B, &[SRC_B, SRC_C]));
    assert_refused(&n, r, conn, "claims to be home to SYN.APS1, which is home to region ap-southeast-1");
    assert_eq!(n.core.upstream(&sid(SRC_C)), Some(C));

    // B claims our own home source.
    let mut n = Node::new();
    n.tick();
    n.handle(Event::Connected { conn, peer: B.into(), dir: tickmesh_replicate::link::ConnDir::Dialed }).unwrap();
    let r = n.data(conn, 0, &hello(B, &[SRC_A]));
    assert_refused(&n, r, conn, "claims to be home to SYN.USE1, which is home to region us-east-1");

    // The same claims as the peer of an accepted connection.
    let mut n = Node::new();
    let conn = n.accepted(B);
    let r = n.data(conn, 1, &hello(B, &[SRC_A]));
    assert_refused(&n, r, conn, "claims to be home to SYN.USE1");

    // B's heartbeat says it is the origin of C's source (its hello did not claim it), with
    // seqs far beyond C's: refused before C is even known, so B never becomes its origin.
    let mut n = Node::new();
    let conn = n.dialed(B, &[SRC_B]);
    let r = n.data(conn, 0, &heartbeat(1, &[(SRC_B, 5, B), (SRC_C, 1_000_000, B)]));
    assert_refused(&n, r, conn, "heartbeat claims to be the origin of SYN.APS1");
    assert_eq!(n.core.upstream(&sid(SRC_C)), None);
}

#[test]
fn a_relay_claiming_more_of_a_source_than_its_origin_is_not_chosen_while_the_origin_is_up() {
    // (b) B says it holds C's source (as a relay, origin C) far beyond C's seq. We take
    // SYN.APS1 from its origin while the origin's link is healthy; B's stream is never
    // opened, so its forged records have nowhere to go.
    let mut n = Node::new();
    let (c_conn, c_stream) = n.upstream(C, SRC_C, 10);
    let b = n.dialed(B, &[SRC_B]);
    n.data(b, 0, &heartbeat(1, &[(SRC_B, 5, B), (SRC_C, 1_000_000, C)])).unwrap();
    for _ in 0..5 {
        n.tick();
    }
    assert_eq!(n.core.upstream(&sid(SRC_C)), Some(C));
    assert!(n.sub_stream(b, SRC_C).is_none(), "subscribed to a forged relay");
    n.data(c_conn, c_stream, &batch(SRC_C, &records(SRC_C, 1..=10))).unwrap();
    assert_eq!(journaled(&n), vec![(SRC_C.to_owned(), 1, 10)]);
    // C's origin, learned from C's hello, is not overwritten by B's claims.
    let v = n.core.sources().into_iter().find(|s| s.src == SRC_C).unwrap();
    assert_eq!(v.origin, C);
}

#[test]
fn a_hello_naming_another_region_than_the_certificate_is_refused() {
    // (e) both directions of a connection.
    let mut n = Node::new();
    let conn = n.accepted(B);
    let r = n.data(conn, 1, &hello(C, &[SRC_C]));
    assert_refused(&n, r, conn, "says it is region ap-southeast-1 but its certificate names eu-west-1");
    assert_eq!(n.core.upstream(&sid(SRC_C)), None);

    let mut n = Node::new();
    n.tick();
    let conn = 60;
    n.handle(Event::Connected { conn, peer: B.into(), dir: tickmesh_replicate::link::ConnDir::Dialed }).unwrap();
    let r = n.data(conn, 0, &hello(C, &[SRC_C]));
    assert_refused(&n, r, conn, "certificate names eu-west-1");
    for _ in 0..5 {
        n.tick();
    }
    assert!(n.sub_stream(conn, SRC_C).is_none());
    assert!(journaled(&n).is_empty());
    // The node keeps serving the honest peers.
    assert!(n.still_serves(C));
}
