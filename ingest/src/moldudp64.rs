//! MoldUDP64: NASDAQ's sequenced UDP framing for ITCH.
//!
//! A datagram is a 20-byte header (session: 10 ASCII bytes; sequence number of the first
//! message: u64; message count: u16, all big-endian) followed by `count` messages, each
//! preceded by its 2-byte big-endian length. A count of 0 is a heartbeat whose sequence
//! number is that of the next message to come; a count of `0xFFFF` ends the session.
//!
//! * [`Session`] (sans-I/O) checks one datagram's framing and its place in the sequence,
//!   and hands back a [`Packet`]: the messages to deliver, in order, and any
//!   [`SessionEvent`]. A sequence number ahead of the next expected one is a gap: it is
//!   reported, never fatal, and the session continues from the new position (the
//!   messages in between are lost: **the re-request path is not implemented**; MoldUDP64
//!   recovers them from a separate re-request server, by unicast request packets of
//!   session, sequence and count, which a deployment that needs loss-free ITCH must add).
//!   A datagram behind the expected number is a duplicate (from a redundant feed line or a
//!   retransmission) and is dropped; one that overlaps delivers only its new messages. A
//!   new session id restarts sequencing at that datagram.
//! * Sequencing needs a real session and sequence: a session of ten zero bytes, or a
//!   sequence number of 0 (MoldUDP64 numbers messages from 1), marks datagrams whose
//!   framing was rebuilt around the messages (the OMI sample captures of 2023-08-22 carry
//!   both in every packet). Such datagrams are delivered whole, in arrival order, with no
//!   gap or duplicate detection.
//! * [`MoldDecoder`] (a [`Decoder`], one datagram per `feed`) runs a session's messages
//!   through the ITCH [`Normalizer`]; events wait in [`MoldDecoder::poll_event`].
//! * [`UdpSource`] is the thin tokio driver: it reads datagrams from a socket (unicast or
//!   a joined multicast group) into one buffer allocated at start and hands records and
//!   events to a callback.

use std::collections::VecDeque;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::ControlFlow;

use tickmesh_codec::Record;

use crate::decoder::Decoder;
use crate::error::{Error, Result};
use crate::itch::{EasternDate, Message, Normalizer, NormalizerConfig};

const FORMAT: &str = "moldudp64";

/// Length of the datagram header.
pub const HEADER_LEN: usize = 20;
/// Message count that marks the end of a session.
pub const END_OF_SESSION: u16 = 0xFFFF;
/// Largest UDP payload (65,535 less the IPv4 and UDP headers).
pub const MAX_DATAGRAM: usize = 65_507;

/// A MoldUDP64 session id: ten bytes, ASCII by convention (e.g. `000010059B`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub [u8; 10]);

impl SessionId {
    /// True for ten zero bytes, which marks unsequenced datagrams (see the module docs).
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 10]
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            f.write_str(std::str::from_utf8(&self.0).unwrap_or("?").trim_end())
        } else {
            self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
        }
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// A datagram header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Session.
    pub session: SessionId,
    /// Sequence number of the first message (of the next one, for heartbeats and the end
    /// of session).
    pub seq: u64,
    /// Messages in the datagram; 0 heartbeat, [`END_OF_SESSION`] end of session.
    pub count: u16,
}

impl Header {
    /// Reads the header at the start of `payload`.
    pub fn parse(payload: &[u8]) -> Result<Header> {
        let Some(h) = payload.get(..HEADER_LEN) else {
            return Err(Error::Parse {
                format: FORMAT,
                offset: 0,
                what: format!(
                    "datagram of {} bytes is shorter than the {HEADER_LEN}-byte MoldUDP64 header; check that this \
                     port carries MoldUDP64",
                    payload.len()
                ),
            });
        };
        let mut session = [0u8; 10];
        session.copy_from_slice(&h[..10]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&h[10..18]);
        Ok(Header {
            session: SessionId(session),
            seq: u64::from_be_bytes(seq),
            count: u16::from_be_bytes([h[18], h[19]]),
        })
    }

    /// A heartbeat (no messages).
    pub fn is_heartbeat(&self) -> bool {
        self.count == 0
    }

    /// The end of the session.
    pub fn is_end_of_session(&self) -> bool {
        self.count == END_OF_SESSION
    }

    /// Messages carried (0 for heartbeats and the end of session).
    pub fn messages(&self) -> u16 {
        if self.is_end_of_session() {
            0
        } else {
            self.count
        }
    }

    /// True when session and sequence number can be used for gap detection.
    pub fn is_sequenced(&self) -> bool {
        !self.session.is_zero() && self.seq != 0
    }
}

/// Something about the sequence that the receiver should know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// Messages `expected..got` never arrived; delivery continues at `got`.
    Gap {
        /// Session.
        session: SessionId,
        /// First missing sequence number.
        expected: u64,
        /// Sequence number that arrived instead.
        got: u64,
    },
    /// Messages already delivered arrived again and were dropped.
    Duplicate {
        /// Session.
        session: SessionId,
        /// First sequence number of the datagram.
        seq: u64,
        /// Messages dropped.
        count: u64,
    },
    /// A datagram of another session arrived; sequencing restarts at `seq`.
    SessionChange {
        /// The session before.
        from: SessionId,
        /// The new session.
        to: SessionId,
        /// First sequence number of the new session seen.
        seq: u64,
    },
    /// The venue ended the session.
    EndOfSession {
        /// Session.
        session: SessionId,
        /// Sequence number the session ended at (one past its last message).
        next_seq: u64,
    },
}

impl SessionEvent {
    /// The gap as the crate's [`Error::VenueGap`], for callers that report errors; `None`
    /// for other events.
    pub fn to_error(&self) -> Option<Error> {
        match *self {
            SessionEvent::Gap { expected, got, .. } => Some(Error::VenueGap { format: FORMAT, expected, got }),
            _ => None,
        }
    }
}

impl fmt::Display for SessionEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionEvent::Gap { session, expected, got } => write!(
                f,
                "session {session}: messages {expected} to {} lost (next expected {expected}, got {got}); re-request \
                 is not implemented, so books may be wrong until the next start of day",
                got.saturating_sub(1)
            ),
            SessionEvent::Duplicate { session, seq, count } => {
                write!(f, "session {session}: {count} message(s) from {seq} already delivered, dropped")
            }
            SessionEvent::SessionChange { from, to, seq } => write!(f, "session changed from {from} to {to} at {seq}"),
            SessionEvent::EndOfSession { session, next_seq } => write!(f, "session {session} ended at {next_seq}"),
        }
    }
}

/// One message of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoldMessage<'a> {
    /// Its sequence number (`None` in unsequenced datagrams).
    pub seq: Option<u64>,
    /// Offset of its bytes in the datagram.
    pub offset: usize,
    /// The message (for ITCH: type byte first).
    pub bytes: &'a [u8],
}

/// A datagram accepted by a [`Session`].
#[derive(Clone, Copy, Debug)]
pub struct Packet<'a> {
    /// The header.
    pub header: Header,
    events: [Option<SessionEvent>; 2],
    block: &'a [u8],
    skip: u16,
}

impl<'a> Packet<'a> {
    /// What this datagram revealed about the sequence (at most two: a gap and the end of
    /// the session can come together).
    pub fn events(&self) -> impl Iterator<Item = SessionEvent> + '_ {
        self.events.iter().flatten().copied()
    }

    /// Messages already delivered (dropped here).
    pub fn dropped(&self) -> u16 {
        self.skip
    }

    /// The messages to deliver, in order (duplicates left out).
    pub fn messages(&self) -> Messages<'a> {
        let sequenced = self.header.is_sequenced();
        let mut it = Messages { block: self.block, pos: 0, left: self.header.messages(), next_seq: None };
        for _ in 0..self.skip {
            it.next();
        }
        it.next_seq = sequenced.then(|| self.header.seq.saturating_add(u64::from(self.skip)));
        it
    }
}

/// Iterator over a datagram's messages; see [`Packet::messages`].
#[derive(Clone, Debug)]
pub struct Messages<'a> {
    block: &'a [u8],
    pos: usize,
    left: u16,
    next_seq: Option<u64>,
}

impl<'a> Iterator for Messages<'a> {
    type Item = MoldMessage<'a>;

    fn next(&mut self) -> Option<MoldMessage<'a>> {
        if self.left == 0 {
            return None;
        }
        // The block was walked by `check_block`, so every length is in bounds; `get` keeps
        // that an invariant rather than a panic.
        let len = self.block.get(self.pos..self.pos + 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))?;
        let bytes = self.block.get(self.pos + 2..self.pos + 2 + len)?;
        let m = MoldMessage { seq: self.next_seq, offset: HEADER_LEN + self.pos + 2, bytes };
        self.pos += 2 + len;
        self.left -= 1;
        self.next_seq = self.next_seq.map(|s| s.saturating_add(1));
        Some(m)
    }
}

/// Checks that `count` length-prefixed messages fill `block` exactly.
fn check_block(block: &[u8], count: u16) -> Result<()> {
    let mut pos = 0usize;
    for i in 0..count {
        let Some(l) = block.get(pos..pos + 2) else {
            return Err(Error::Parse {
                format: FORMAT,
                offset: (HEADER_LEN + pos) as u64,
                what: format!(
                    "the header announces {count} messages but the datagram ends after {i}; the datagram is truncated \
                     or not MoldUDP64"
                ),
            });
        };
        let len = usize::from(u16::from_be_bytes([l[0], l[1]]));
        if block.len() - pos - 2 < len {
            return Err(Error::Parse {
                format: FORMAT,
                offset: (HEADER_LEN + pos) as u64,
                what: format!(
                    "message {} of {count} declares {len} bytes but {} remain; the datagram is truncated or not MoldUDP64",
                    i + 1,
                    block.len() - pos - 2
                ),
            });
        }
        pos += 2 + len;
    }
    if pos != block.len() {
        return Err(Error::Parse {
            format: FORMAT,
            offset: (HEADER_LEN + pos) as u64,
            what: format!(
                "{} bytes follow the {count} messages the header announces; the datagram is not MoldUDP64",
                block.len() - pos
            ),
        });
    }
    Ok(())
}

/// Counters of a [`Session`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Datagrams accepted.
    pub packets: u64,
    /// Heartbeats among them.
    pub heartbeats: u64,
    /// Datagrams without usable sequencing (see the module docs).
    pub unsequenced: u64,
    /// Gaps reported.
    pub gaps: u64,
    /// Messages lost in those gaps.
    pub missing: u64,
    /// Duplicate messages dropped.
    pub duplicates: u64,
    /// Datagrams rejected as malformed.
    pub malformed: u64,
}

/// Sequencing state of one MoldUDP64 stream (sans-I/O).
#[derive(Debug, Clone, Default)]
pub struct Session {
    current: Option<SessionId>,
    next_seq: u64,
    stats: SessionStats,
}

impl Session {
    /// A session that accepts whatever sequence number comes first.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current session id, once a sequenced datagram has arrived.
    pub fn session(&self) -> Option<SessionId> {
        self.current
    }

    /// Sequence number of the next message expected (meaningful once `session()` is some).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Checks one datagram and places it in the sequence. A malformed datagram is an
    /// error and leaves the state as it was; gaps and duplicates are not errors but
    /// events of the returned packet.
    pub fn handle<'a>(&mut self, payload: &'a [u8]) -> Result<Packet<'a>> {
        let header = Header::parse(payload).inspect_err(|_| self.stats.malformed += 1)?;
        let block = &payload[HEADER_LEN..];
        let n = header.messages();
        if !header.is_end_of_session() {
            check_block(block, n).inspect_err(|_| self.stats.malformed += 1)?;
        }
        self.stats.packets += 1;
        if header.is_heartbeat() {
            self.stats.heartbeats += 1;
        }
        let mut pkt = Packet { header, events: [None, None], block, skip: 0 };
        if !header.is_sequenced() {
            self.stats.unsequenced += 1;
            return Ok(pkt);
        }
        let mut first_event = None;
        match self.current {
            Some(s) if s == header.session => {
                if header.seq > self.next_seq {
                    first_event = Some(SessionEvent::Gap { session: s, expected: self.next_seq, got: header.seq });
                    self.stats.gaps += 1;
                    // Saturating: a corrupt or hostile sequence number near 2^64 must not
                    // overflow the counter (a panic in debug builds, a wrong count in release).
                    self.stats.missing = self.stats.missing.saturating_add(header.seq - self.next_seq);
                    self.next_seq = header.seq;
                } else if header.seq < self.next_seq && n > 0 {
                    let behind = self.next_seq - header.seq;
                    let skip = behind.min(u64::from(n)) as u16;
                    pkt.skip = skip;
                    self.stats.duplicates = self.stats.duplicates.saturating_add(u64::from(skip));
                    first_event = Some(SessionEvent::Duplicate { session: s, seq: header.seq, count: u64::from(skip) });
                }
            }
            Some(from) => {
                first_event = Some(SessionEvent::SessionChange { from, to: header.session, seq: header.seq });
                self.current = Some(header.session);
                self.next_seq = header.seq;
            }
            None => {
                self.current = Some(header.session);
                self.next_seq = header.seq;
            }
        }
        self.next_seq = self.next_seq.max(header.seq.saturating_add(u64::from(n)));
        pkt.events[0] = first_event;
        if header.is_end_of_session() {
            pkt.events[1] = Some(SessionEvent::EndOfSession { session: header.session, next_seq: header.seq });
        }
        Ok(pkt)
    }
}

/// A [`Decoder`] of MoldUDP64 datagrams carrying ITCH 5.0: one datagram per `feed`.
///
/// Gaps do not fail `feed`: the datagram's messages are still decoded and the gap waits in
/// [`Self::poll_event`] (and counts in [`Self::message_counts`](Decoder::message_counts)).
/// A malformed datagram is an error and changes nothing. A malformed ITCH message is an
/// error too, reported after the datagram's other messages have been applied.
#[derive(Debug)]
pub struct MoldDecoder {
    session: Session,
    norm: Normalizer,
    events: VecDeque<SessionEvent>,
}

impl MoldDecoder {
    /// A decoder at the start of a stream. Live feeds join mid-session, so
    /// `config.strict_book` is normally off; the trading date must be set before the first
    /// message that gives a record ([`Self::set_date`], or [`UdpSource`] takes today's).
    pub fn new(config: NormalizerConfig) -> Self {
        MoldDecoder { session: Session::new(), norm: Normalizer::new(config), events: VecDeque::with_capacity(16) }
    }

    /// Sets the trading date.
    pub fn set_date(&mut self, date: EasternDate) {
        self.norm.set_date(date);
    }

    /// Decodes one datagram, appending its records to `out`.
    pub fn datagram(&mut self, payload: &[u8], out: &mut Vec<Record>) -> Result<()> {
        let pkt = self.session.handle(payload)?;
        self.events.extend(pkt.events());
        let mut first_err = None;
        for m in pkt.messages() {
            let r = match Message::parse(m.bytes) {
                Ok(msg) => self.norm.apply(&msg, m.offset as u64, out),
                Err(e) => Err(Error::Parse {
                    format: "itch",
                    offset: m.offset as u64,
                    what: match m.seq {
                        Some(s) => format!("MoldUDP64 message {s}: {e}"),
                        None => e.to_string(),
                    },
                }),
            };
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The next sequencing event, oldest first.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Sequencing state and counters.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The ITCH normalizer (books, symbols, counts).
    pub fn normalizer(&self) -> &Normalizer {
        &self.norm
    }
}

impl Decoder for MoldDecoder {
    fn feed(&mut self, input: &[u8], out: &mut Vec<Record>) -> Result<()> {
        self.datagram(input, out)
    }

    /// ITCH message counts, then the MoldUDP64 counters (`moldudp64_packets`, and
    /// `_heartbeats`, `_unsequenced`, `_gaps`, `_missing`, `_duplicates`, `_malformed` when
    /// not zero).
    fn message_counts(&self) -> Vec<(String, u64)> {
        let mut v = self.norm.message_counts();
        let s = self.session.stats;
        v.push(("moldudp64_packets".into(), s.packets));
        for (k, n) in [
            ("moldudp64_heartbeats", s.heartbeats),
            ("moldudp64_unsequenced", s.unsequenced),
            ("moldudp64_gaps", s.gaps),
            ("moldudp64_missing", s.missing),
            ("moldudp64_duplicates", s.duplicates),
            ("moldudp64_malformed", s.malformed),
        ] {
            if n > 0 {
                v.push((k.into(), n));
            }
        }
        v
    }
}

/// What [`UdpSource::run`] hands its callback.
#[derive(Debug)]
pub enum Delivery<'a> {
    /// A sequencing event (delivered before the records of the same datagram).
    Event(SessionEvent),
    /// The records of one datagram, in order.
    Records(&'a [Record]),
    /// A datagram that could not be (wholly) decoded; the source keeps reading.
    Error(Error),
}

/// Receives MoldUDP64 datagrams from a UDP socket and decodes them (the I/O around
/// [`MoldDecoder`]).
#[derive(Debug)]
pub struct UdpSource {
    socket: tokio::net::UdpSocket,
    decoder: MoldDecoder,
    buf: Vec<u8>,
    out: Vec<Record>,
}

impl UdpSource {
    /// Binds `addr` (use port 0 for any; for multicast bind the group's port on
    /// `0.0.0.0` and then [`Self::join_multicast_v4`]).
    pub async fn bind(addr: SocketAddr, decoder: MoldDecoder) -> Result<Self> {
        let socket = tokio::net::UdpSocket::bind(addr)
            .await
            .map_err(|source| Error::Io { what: format!("binding UDP {addr} for the MoldUDP64 feed"), source })?;
        Ok(Self::new(socket, decoder))
    }

    /// Wraps a bound socket. If the decoder has no trading date, today's (US/Eastern, from
    /// the system clock) is used: a live session is today's.
    pub fn new(socket: tokio::net::UdpSocket, mut decoder: MoldDecoder) -> Self {
        if decoder.normalizer().date().is_none() {
            decoder.set_date(EasternDate::from_unix_ns(tickmesh_codec::now_ns()));
        }
        UdpSource { socket, decoder, buf: vec![0; MAX_DATAGRAM + 1], out: Vec::with_capacity(1024) }
    }

    /// Joins a multicast group on an interface (`Ipv4Addr::UNSPECIFIED` for the default).
    pub fn join_multicast_v4(&self, group: Ipv4Addr, interface: Ipv4Addr) -> Result<()> {
        self.socket
            .join_multicast_v4(group, interface)
            .map_err(|source| Error::Io { what: format!("joining multicast group {group} on {interface}"), source })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.socket.local_addr().map_err(|source| Error::Io { what: "reading the UDP socket's address".into(), source })
    }

    /// The decoder (counters, books).
    pub fn decoder(&self) -> &MoldDecoder {
        &self.decoder
    }

    /// Reads and decodes datagrams until `deliver` returns `Break` (then `Ok`) or the socket
    /// fails. Per datagram, `deliver` gets its events, then its records, then its error if
    /// it had one. Cancel-safe between datagrams: dropping the future loses nothing
    /// already delivered.
    pub async fn run<F>(&mut self, mut deliver: F) -> Result<()>
    where
        F: FnMut(Delivery<'_>) -> ControlFlow<()>,
    {
        loop {
            let (n, _) = self
                .socket
                .recv_from(&mut self.buf)
                .await
                .map_err(|source| Error::Io { what: "receiving a MoldUDP64 datagram".into(), source })?;
            self.out.clear();
            let r = if n > MAX_DATAGRAM {
                Err(Error::Parse { format: FORMAT, offset: 0, what: format!("datagram over {MAX_DATAGRAM} bytes") })
            } else {
                self.decoder.datagram(&self.buf[..n], &mut self.out)
            };
            while let Some(ev) = self.decoder.poll_event() {
                if deliver(Delivery::Event(ev)).is_break() {
                    return Ok(());
                }
            }
            if !self.out.is_empty() && deliver(Delivery::Records(&self.out)).is_break() {
                return Ok(());
            }
            if let Err(e) = r {
                if deliver(Delivery::Error(e)).is_break() {
                    return Ok(());
                }
            }
        }
    }
}

/// Builds a MoldUDP64 datagram (for tests, replays and tools): header, then each message
/// with its length prefix.
pub fn encode_datagram(session: SessionId, seq: u64, messages: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(&session.0);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&(messages.len().min(usize::from(END_OF_SESSION - 1)) as u16).to_be_bytes());
    for m in messages.iter().take(usize::from(END_OF_SESSION - 1)) {
        out.extend_from_slice(&(m.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
        out.extend_from_slice(&m[..m.len().min(usize::from(u16::MAX))]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: SessionId = SessionId(*b"000010059B");
    const S2: SessionId = SessionId(*b"000010059C");

    fn dgram(session: SessionId, seq: u64, msgs: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_datagram(session, seq, msgs, &mut v);
        v
    }

    fn seqs(p: &Packet<'_>) -> Vec<Option<u64>> {
        p.messages().map(|m| m.seq).collect()
    }

    #[test]
    fn in_order_gap_duplicate_overlap_and_session_change() {
        let mut s = Session::new();
        let d = dgram(S1, 5, &[b"a", b"bb"]);
        let p = s.handle(&d).unwrap();
        assert_eq!((seqs(&p), p.events().count()), (vec![Some(5), Some(6)], 0));
        assert_eq!(p.messages().map(|m| m.bytes).collect::<Vec<_>>(), vec![&b"a"[..], b"bb"]);
        let d = dgram(S1, 7, &[b"c"]);
        let p = s.handle(&d).unwrap();
        assert_eq!(seqs(&p), vec![Some(7)]);
        // A gap: 8 and 9 lost.
        let d = dgram(S1, 10, &[b"d"]);
        let p = s.handle(&d).unwrap();
        assert_eq!(p.events().collect::<Vec<_>>(), vec![SessionEvent::Gap { session: S1, expected: 8, got: 10 }]);
        assert_eq!(seqs(&p), vec![Some(10)]);
        // Whole duplicate, then an overlap that brings one new message.
        let d = dgram(S1, 9, &[b"x", b"d"]);
        let p = s.handle(&d).unwrap();
        assert_eq!((seqs(&p), p.dropped()), (vec![], 2));
        let d = dgram(S1, 10, &[b"d", b"e"]);
        let p = s.handle(&d).unwrap();
        assert_eq!(seqs(&p), vec![Some(11)]);
        assert_eq!(p.messages().next().unwrap().bytes, b"e");
        // Heartbeat ahead of us reveals a gap; one at the expected number is silent.
        let d = dgram(S1, 12, &[]);
        let p = s.handle(&d).unwrap();
        assert_eq!(p.events().count(), 0);
        let d = dgram(S1, 14, &[]);
        let p = s.handle(&d).unwrap();
        assert!(matches!(p.events().next(), Some(SessionEvent::Gap { expected: 12, got: 14, .. })));
        // New session restarts sequencing.
        let d = dgram(S2, 1, &[b"f"]);
        let p = s.handle(&d).unwrap();
        assert_eq!(p.events().next(), Some(SessionEvent::SessionChange { from: S1, to: S2, seq: 1 }));
        assert_eq!(s.next_seq(), 2);
        // End of session.
        let mut eos = dgram(S2, 2, &[]);
        eos[18..20].copy_from_slice(&END_OF_SESSION.to_be_bytes());
        let p = s.handle(&eos).unwrap();
        assert_eq!(p.events().next(), Some(SessionEvent::EndOfSession { session: S2, next_seq: 2 }));
        let st = s.stats();
        assert_eq!((st.gaps, st.missing, st.duplicates, st.packets), (2, 4, 3, 9));
    }

    #[test]
    fn zero_session_or_sequence_disables_sequencing() {
        let mut s = Session::new();
        for seq in [0, 0, 0] {
            let d = dgram(SessionId([0; 10]), seq, &[b"a"]);
            let p = s.handle(&d).unwrap();
            assert_eq!((seqs(&p), p.events().count()), (vec![None], 0));
        }
        let d = dgram(S1, 0, &[b"a"]);
        let p = s.handle(&d).unwrap();
        assert_eq!(seqs(&p), vec![None]);
        assert_eq!(s.stats().unsequenced, 4);
    }

    #[test]
    fn malformed_datagrams_are_errors_that_change_nothing() {
        let mut s = Session::new();
        s.handle(&dgram(S1, 1, &[b"a"])).unwrap();
        let good = dgram(S1, 2, &[b"abc"]);
        for bad in [&good[..10], &good[..good.len() - 1], &[&good[..], b"x"].concat()[..]] {
            let e = s.handle(bad).unwrap_err().to_string();
            assert!(e.contains("moldudp64"), "{e}");
        }
        assert_eq!(s.next_seq(), 2);
        assert_eq!(s.stats().malformed, 3);
        assert!(s.handle(&good).unwrap().events().next().is_none());
    }
}
