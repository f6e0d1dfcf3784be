//! Sans-I/O WebSocket (RFC 6455) codec for the server side of `/v1/ws`.
//!
//! # Why the gateway has its own codec
//! Writing is the hot path. One record becomes one frame that is built once and shared, as a
//! [`Bytes`], by every client subscribed to it. That works only because a server frame does not
//! depend on the connection: servers never mask (RFC 6455 5.1), extensions are never negotiated,
//! and every frame is final. So building a frame is a header of 2, 4 or 10 bytes
//! ([`frame_header`]) plus one copy of the payload, and a caller that serialises straight into
//! a buffer can write the header first and the payload after it.
//!
//! Reading is the cold path, and it faces an untrusted peer. Clients send a few small messages
//! (subscribe, unsubscribe, ping), masked. The [`Decoder`] checks every rule RFC 6455 makes a
//! receiver check, and returns a [`WsError`] whose [`WsError::close_code`] is the code to close
//! with. Its memory is bounded: it never holds more than `max_message_len` bytes of message
//! plus one control frame, whatever a client declares or sends.
//!
//! Neither half does I/O or reads a clock (STYLE.md habit 2). The connection task reads socket
//! bytes into [`Decoder::feed`], drains [`Decoder::next_message`], and writes the frames built
//! here.
//!
//! # Not handled here
//! The HTTP upgrade, apart from computing [`accept_key`]. The closing handshake's timing. Who
//! answers a ping: the decoder returns [`Message::Ping`] and the caller replies with
//! [`pong_frame`].

use bytes::Bytes;

/// The GUID that RFC 6455 section 1.3 appends to `Sec-WebSocket-Key` to form the accept key.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The largest payload of a control frame (close, ping, pong), RFC 6455 5.5.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// A close payload is a 2-byte code plus the reason, so the reason gets what is left of 125.
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
///
/// Surrounding whitespace is trimmed first. HTTP parsers normally strip it, and the
/// base64 alphabet contains no whitespace, so trimming can only help a sloppy client.
pub fn accept_key(sec_websocket_key: &str) -> String {
    use base64::Engine as _;
    use sha1::{Digest as _, Sha1};

    let mut sha = Sha1::new();
    sha.update(sec_websocket_key.trim().as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The opcode of a frame the server sends.
///
/// Continuation is missing on purpose. Server frames are always final (FIN set), so a
/// continuation frame could only break the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// A UTF-8 text message: JSON control and data messages.
    Text = 0x1,
    /// A binary message: length-prefixed codec records (`encoding=binary`).
    Binary = 0x2,
    /// Close. Its payload is a 2-byte code and a UTF-8 reason; see [`close_frame`].
    Close = 0x8,
    /// Ping. Its payload is at most 125 bytes.
    Ping = 0x9,
    /// Pong. It echoes a ping's payload.
    Pong = 0xA,
}

impl OpCode {
    fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// The size of the header [`frame_header`] writes for a payload of `payload_len` bytes.
fn header_len(payload_len: usize) -> usize {
    if payload_len <= 125 {
        2
    } else if payload_len <= usize::from(u16::MAX) {
        4
    } else {
        10
    }
}

/// Appends the header of an unmasked, final server frame with `payload_len` bytes of payload.
///
/// This is a 2-, 4- or 10-byte header, always the shortest length encoding (RFC 6455 5.2).
/// It lets a caller serialise a payload straight into `out` after the header, with no copy,
/// when it knows the payload's length first.
///
/// The caller keeps a control opcode's payload to 125 bytes or less. [`encode_frame`] and the
/// control builders enforce this themselves.
pub fn frame_header(opcode: OpCode, payload_len: usize, out: &mut Vec<u8>) {
    out.push(0x80 | opcode as u8);
    if payload_len <= 125 {
        out.push(payload_len as u8);
    } else if let Ok(len) = u16::try_from(payload_len) {
        out.push(126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(payload_len as u64).to_be_bytes());
    }
}

/// Appends a whole unmasked, final server frame to `out`.
///
/// Control frames (close, ping, pong) carry at most 125 bytes, so a longer control payload is
/// cut to its first 125 bytes. Sending a frame the client must reject would be worse.
pub fn encode_frame(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    let payload = if opcode.is_control() { payload.get(..MAX_CONTROL_PAYLOAD).unwrap_or(payload) } else { payload };
    out.reserve(header_len(payload.len()) + payload.len());
    frame_header(opcode, payload.len(), out);
    out.extend_from_slice(payload);
}

/// One frame in a buffer of exactly its size: the shape shared between clients.
fn frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(header_len(payload.len()) + payload.len());
    encode_frame(opcode, payload, &mut out);
    Bytes::from(out)
}

/// A text frame holding `payload`, which the caller guarantees is UTF-8.
///
/// It takes bytes, not `&str`, because the gateway serialises JSON into byte buffers. Such
/// output is UTF-8 already, and checking it again here would cost a pass on the hot path.
pub fn text_frame(payload: &[u8]) -> Bytes {
    frame(OpCode::Text, payload)
}

/// A binary frame holding `payload`.
pub fn binary_frame(payload: &[u8]) -> Bytes {
    frame(OpCode::Binary, payload)
}

/// A close frame with `code` and `reason`.
///
/// The reason is cut to 123 bytes, at a character boundary, so that the payload fits the
/// 125-byte control-frame limit and stays valid UTF-8. The caller picks a code a server may
/// send: 1000-1003, 1007-1014 or 3000-4999. PROTOCOL.md uses 1000, 1008, 1009, 1012, 4008 and
/// 4029.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let reason = truncate_utf8(reason, MAX_CLOSE_REASON);
    let mut out = Vec::with_capacity(2 + 2 + reason.len());
    frame_header(OpCode::Close, 2 + reason.len(), &mut out);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
    Bytes::from(out)
}

/// A pong frame echoing `payload`, as RFC 6455 5.5.3 requires in answer to a ping.
///
/// The payload is cut to 125 bytes. A ping the [`Decoder`] accepted never carries more.
pub fn pong_frame(payload: &[u8]) -> Bytes {
    frame(OpCode::Pong, payload)
}

/// A ping frame carrying `payload`, cut to 125 bytes.
pub fn ping_frame(payload: &[u8]) -> Bytes {
    frame(OpCode::Ping, payload)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    // Terminates: 0 is always a char boundary.
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

/// Why a client's byte stream was rejected.
///
/// Each variant is a connection-ending violation. The caller sends
/// `close_frame(err.close_code(), &err.to_string())` and closes. The value is small and
/// `Copy` because it is produced on a per-frame path, where allocating would be wasted work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// A client frame without the mask bit (RFC 6455 5.1).
    #[error("client frame is not masked; a client must mask every frame it sends (rfc 6455 5.3)")]
    Unmasked,
    /// RSV1-3 set although no extension was negotiated (the gateway negotiates none).
    #[error("frame has reserved bits {bits:#05b} set but no extension was negotiated; clear rsv1-3")]
    ReservedBits {
        /// The three RSV bits, RSV1 as the highest.
        bits: u8,
    },
    /// An opcode RFC 6455 does not define.
    #[error("frame opcode {opcode:#x} is not defined; use 0x0-0x2 for data or 0x8-0xa for control")]
    UnknownOpcode {
        /// The 4-bit opcode as received.
        opcode: u8,
    },
    /// A close, ping or pong frame with more than 125 bytes of payload.
    #[error("control frame (opcode {opcode:#x}) has over 125 payload bytes; shorten its payload")]
    ControlTooLong {
        /// The control frame's opcode.
        opcode: u8,
    },
    /// A close, ping or pong frame without FIN.
    #[error("control frame (opcode {opcode:#x}) has fin clear; control frames cannot be fragmented")]
    FragmentedControl {
        /// The control frame's opcode.
        opcode: u8,
    },
    /// A continuation frame when no fragmented message is in progress.
    #[error("continuation frame with no message to continue; start with a text or binary frame")]
    UnexpectedContinuation,
    /// A text or binary frame in the middle of a fragmented message.
    #[error("new data frame (opcode {opcode:#x}) inside a fragmented message; finish it first")]
    ExpectedContinuation {
        /// The opcode of the frame that should have been a continuation.
        opcode: u8,
    },
    /// A 64-bit payload length with its most significant bit set (RFC 6455 5.2).
    #[error("64-bit payload length has its top bit set; lengths must be below 2^63")]
    LengthTopBit,
    /// The message, counting every fragment so far, is over the inbound limit.
    #[error("message of at least {len} bytes exceeds the {max}-byte limit; send smaller messages")]
    TooLarge {
        /// The message length the headers announced so far (a lower bound of its real size).
        len: u64,
        /// The limit given to [`Decoder::new`].
        max: usize,
    },
    /// A text message that is not valid UTF-8.
    #[error("text message is not valid utf-8; send text as utf-8 or use a binary frame")]
    InvalidUtf8,
    /// A close frame with a 1-byte payload: half a status code.
    #[error("close frame has a 1-byte payload; send no payload or a 2-byte code and a reason")]
    CloseTooShort,
    /// A close code that must not appear on the wire (RFC 6455 7.4).
    #[error("close code {code} may not be sent; use 1000-1003, 1007-1014 or 3000-4999")]
    InvalidCloseCode {
        /// The code as received.
        code: u16,
    },
    /// A close reason that is not valid UTF-8.
    #[error("close reason is not valid utf-8; send a utf-8 reason or none")]
    CloseReasonNotUtf8,
}

impl WsError {
    /// The close code to send before closing the connection: 1002 for a protocol violation,
    /// 1007 for bad UTF-8, 1009 for a message over the limit.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::TooLarge { .. } => 1009,
            WsError::InvalidUtf8 | WsError::CloseReasonNotUtf8 => 1007,
            WsError::Unmasked
            | WsError::ReservedBits { .. }
            | WsError::UnknownOpcode { .. }
            | WsError::ControlTooLong { .. }
            | WsError::FragmentedControl { .. }
            | WsError::UnexpectedContinuation
            | WsError::ExpectedContinuation { .. }
            | WsError::LengthTopBit
            | WsError::CloseTooShort
            | WsError::InvalidCloseCode { .. } => 1002,
        }
    }
}

/// One complete message from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message, reassembled from its fragments and checked to be UTF-8.
    Text(String),
    /// A binary message, reassembled from its fragments.
    Binary(Vec<u8>),
    /// A ping. Answer it with [`pong_frame`] and the same payload.
    Ping(Vec<u8>),
    /// A pong. It may be unsolicited (RFC 6455 5.5.3), so it needs no matching ping.
    Pong(Vec<u8>),
    /// A close, with the code and reason if the client sent one. Echo the code, or send 1000
    /// if there was none, then close the connection. The decoder returns nothing after it.
    Close(Option<(u16, String)>),
}

/// Which kind of data message the fragments in progress belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataKind {
    Text,
    Binary,
}

/// Where the decoder is in the frame it is reading.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Waiting for enough bytes to parse the next frame header.
    Header,
    /// Moving a frame's payload out of the input buffer, unmasking it as it goes.
    Payload {
        opcode: u8,
        fin: bool,
        /// Payload bytes of this frame not yet received.
        remaining: usize,
        mask: [u8; 4],
        /// How many payload bytes are already unmasked, modulo 4: where in the mask we are.
        phase: usize,
    },
}

/// Whether the decoder still accepts input.
#[derive(Debug, Clone, Copy)]
enum Status {
    Open,
    /// A close frame was returned. Whatever follows it is ignored (RFC 6455 5.5.1).
    Closed,
    /// The stream broke a rule. The same error is returned from then on.
    Failed(WsError),
}

/// Decodes the masked frames a client sends into whole [`Message`]s.
///
/// # Memory
/// Payload bytes move out of the input buffer as soon as they arrive, unmasked, into the
/// message being assembled. So a frame larger than what the caller buffers still makes
/// progress. The limit is enforced from the headers: a message that would exceed
/// `max_message_len` fails with [`WsError::TooLarge`] when its header (or the running total of
/// its fragments) says so, before any of its payload is buffered. The message buffer grows at
/// most to `max_message_len`, and control frames, at most 125 bytes, use a separate buffer
/// allocated once.
///
/// The input buffer holds what was fed and not yet decoded. The decoder cannot bound it, because
/// it never refuses bytes. The caller bounds it: read from the socket in chunks of bounded size,
/// drain [`Decoder::next_message`] until it returns `Ok(None)` after each [`Decoder::feed`],
/// and stop reading while [`Decoder::buffered_len`] is over the chunk size. After draining,
/// what stays buffered is less than one frame header (14 bytes): payloads, control frames'
/// included, are consumed as they arrive.
///
/// # Leniency
/// A length in a longer encoding than needed (say 5 in the 16-bit form) is accepted. RFC 6455
/// puts the minimal-encoding rule on the sender, and refusing it would protect nothing. Text is
/// checked for UTF-8 when its last fragment arrives, not fragment by fragment, which Autobahn
/// rates NON-STRICT.
///
/// # Errors
/// The first rule broken makes [`Decoder::next_message`] return that [`WsError`], and it returns
/// the same error on every call after that. Input fed after an error, or after a close, is
/// dropped. The decoder never panics on any input.
pub struct Decoder {
    max_message_len: usize,
    /// Bytes fed but not yet consumed start at `pos`. The consumed part is dropped lazily in
    /// `feed`, so that consuming never moves memory.
    input: Vec<u8>,
    pos: usize,
    state: State,
    /// Set from the header of a message's first data frame until its final frame is complete.
    message: Option<DataKind>,
    /// The unmasked payload of the data message being assembled. Never longer than
    /// `max_message_len`.
    data: Vec<u8>,
    /// The unmasked payload of the control frame being read. It is separate from `data`
    /// because control frames may come between the fragments of a data message.
    control: Vec<u8>,
    status: Status,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The buffers can be large and hold client data, so print their sizes only.
        f.debug_struct("Decoder")
            .field("max_message_len", &self.max_message_len)
            .field("buffered_len", &self.buffered_len())
            .field("state", &self.state)
            .field("message", &self.message)
            .field("message_len", &self.data.len())
            .field("status", &self.status)
            .finish()
    }
}

impl Decoder {
    /// A decoder that refuses messages over `max_message_len` bytes. The total of a fragmented
    /// message counts, and control frames are not counted. PROTOCOL.md's default inbound limit
    /// is 64 KiB.
    pub fn new(max_message_len: usize) -> Self {
        Decoder {
            max_message_len,
            input: Vec::new(),
            pos: 0,
            state: State::Header,
            message: None,
            data: Vec::new(),
            control: Vec::with_capacity(MAX_CONTROL_PAYLOAD),
            status: Status::Open,
        }
    }

    /// Appends bytes read from the socket. Nothing is decoded until
    /// [`Decoder::next_message`] is called.
    ///
    /// Bytes are dropped once the decoder has failed or returned a close, so a client that
    /// keeps sending cannot grow the buffer.
    pub fn feed(&mut self, data: &[u8]) {
        if !matches!(self.status, Status::Open) {
            return;
        }
        // Compact only when the consumed prefix is at least as large as what is left. The
        // memmove is then paid for by the bytes already consumed, so the cost stays linear
        // even for a caller that feeds many small chunks before draining.
        let unread = self.input.len() - self.pos;
        if self.pos > 0 && self.pos >= unread {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        self.input.extend_from_slice(data);
    }

    /// How many fed bytes are not yet decoded. The caller stops reading from the socket while
    /// this is over its bound (see the type's docs), which keeps the input buffer bounded.
    pub fn buffered_len(&self) -> usize {
        self.input.len() - self.pos
    }

    /// Decodes as far as the buffered bytes allow.
    ///
    /// Returns `Ok(Some(message))` for each complete message. Control frames come as soon as
    /// they are complete, even between the fragments of a data message. Returns `Ok(None)` when
    /// more input is needed, or after a close. Returns `Err` on the first violation, and the
    /// same error on every call after it.
    pub fn next_message(&mut self) -> Result<Option<Message>, WsError> {
        match self.status {
            Status::Open => {}
            Status::Closed => return Ok(None),
            Status::Failed(err) => return Err(err),
        }
        match self.decode() {
            Ok(Some(Message::Close(close))) => {
                self.status = Status::Closed;
                self.release_buffers();
                Ok(Some(Message::Close(close)))
            }
            Ok(other) => Ok(other),
            Err(err) => {
                self.status = Status::Failed(err);
                self.release_buffers();
                Err(err)
            }
        }
    }

    /// Frees the buffers once the connection is over. Nothing will be decoded any more.
    fn release_buffers(&mut self) {
        self.input = Vec::new();
        self.pos = 0;
        self.data = Vec::new();
    }

    fn decode(&mut self) -> Result<Option<Message>, WsError> {
        loop {
            match self.state {
                State::Header => {
                    let Some((header, consumed)) = self.parse_header()? else {
                        return Ok(None);
                    };
                    self.pos += consumed;
                    if header.opcode & 0x8 != 0 {
                        self.control.clear();
                    } else {
                        match header.opcode {
                            0x1 => self.message = Some(DataKind::Text),
                            0x2 => self.message = Some(DataKind::Binary),
                            _ => {}
                        }
                        self.reserve_data(header.len);
                    }
                    self.state = State::Payload {
                        opcode: header.opcode,
                        fin: header.fin,
                        remaining: header.len,
                        mask: header.mask,
                        phase: 0,
                    };
                }
                State::Payload { opcode, fin, remaining, mask, phase } => {
                    let unread = self.input.get(self.pos..).unwrap_or_default();
                    let take = remaining.min(unread.len());
                    let chunk = unread.get(..take).unwrap_or_default();
                    let target = if opcode & 0x8 != 0 { &mut self.control } else { &mut self.data };
                    let start = target.len();
                    target.extend_from_slice(chunk);
                    let phase = unmask(target.get_mut(start..).unwrap_or_default(), mask, phase);
                    self.pos += take;
                    let remaining = remaining - take;
                    if remaining > 0 {
                        self.state = State::Payload { opcode, fin, remaining, mask, phase };
                        return Ok(None);
                    }
                    self.state = State::Header;
                    if let Some(message) = self.finish_frame(opcode, fin)? {
                        return Ok(Some(message));
                    }
                }
            }
        }
    }

    /// Parses and checks the header at the read position. Returns `Ok(None)` if more bytes are
    /// needed. Each rule is checked as soon as the bytes it needs are present, so a stream that
    /// breaks one fails without waiting for more input.
    fn parse_header(&self) -> Result<Option<(FrameHeader, usize)>, WsError> {
        let buf = self.input.get(self.pos..).unwrap_or_default();
        let Some([b0, b1]) = read_array::<2>(buf, 0) else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0x7;
        if rsv != 0 {
            return Err(WsError::ReservedBits { bits: rsv });
        }
        let opcode = b0 & 0xF;
        let is_control = match opcode {
            0x0..=0x2 => false,
            0x8..=0xA => true,
            _ => return Err(WsError::UnknownOpcode { opcode }),
        };
        if b1 & 0x80 == 0 {
            return Err(WsError::Unmasked);
        }
        let len7 = b1 & 0x7F;
        if is_control {
            if !fin {
                return Err(WsError::FragmentedControl { opcode });
            }
            if usize::from(len7) > MAX_CONTROL_PAYLOAD {
                return Err(WsError::ControlTooLong { opcode });
            }
        } else {
            match (opcode, self.message) {
                (0x0, None) => return Err(WsError::UnexpectedContinuation),
                (0x1 | 0x2, Some(_)) => return Err(WsError::ExpectedContinuation { opcode }),
                _ => {}
            }
        }

        let (len, ext_len) = match len7 {
            126 => match read_array::<2>(buf, 2) {
                Some(ext) => (u64::from(u16::from_be_bytes(ext)), 2),
                None => return Ok(None),
            },
            127 => match read_array::<8>(buf, 2) {
                Some(ext) => (u64::from_be_bytes(ext), 8),
                None => return Ok(None),
            },
            short => (u64::from(short), 0),
        };
        if len >> 63 != 0 {
            return Err(WsError::LengthTopBit);
        }
        if !is_control {
            let total = (self.data.len() as u64).saturating_add(len);
            if total > self.max_message_len as u64 {
                return Err(WsError::TooLarge { len: total, max: self.max_message_len });
            }
        }
        // Within max_message_len (or 125 for control frames), so it fits a usize.
        let len = usize::try_from(len).map_err(|_| WsError::TooLarge { len, max: self.max_message_len })?;

        let mask_at = 2 + ext_len;
        let Some(mask) = read_array::<4>(buf, mask_at) else {
            return Ok(None);
        };
        Ok(Some((FrameHeader { fin, opcode, len, mask }, mask_at + 4)))
    }

    /// Makes room for `additional` more payload bytes of the data message.
    ///
    /// The capacity at least doubles each time, so a message in many small fragments is not
    /// copied once per fragment, but never past `max_message_len`. The header check guarantees
    /// the message fits in that.
    fn reserve_data(&mut self, additional: usize) {
        let needed = self.data.len().saturating_add(additional);
        if needed <= self.data.capacity() {
            return;
        }
        let target = needed.max(self.data.capacity().saturating_mul(2)).min(self.max_message_len).max(needed);
        self.data.reserve_exact(target - self.data.len());
    }

    /// Called when a frame's payload is complete. Returns the message it finishes, if any.
    fn finish_frame(&mut self, opcode: u8, fin: bool) -> Result<Option<Message>, WsError> {
        match opcode {
            0x8 => parse_close(&self.control).map(|close| Some(Message::Close(close))),
            0x9 => Ok(Some(Message::Ping(self.control.clone()))),
            0xA => Ok(Some(Message::Pong(self.control.clone()))),
            _ if !fin => Ok(None),
            _ => {
                let payload = std::mem::take(&mut self.data);
                match self.message.take() {
                    Some(DataKind::Text) => String::from_utf8(payload)
                        .map(|text| Some(Message::Text(text)))
                        .map_err(|_| WsError::InvalidUtf8),
                    Some(DataKind::Binary) | None => Ok(Some(Message::Binary(payload))),
                }
            }
        }
    }

    /// The capacity of the message buffer, for tests of the memory bound.
    #[cfg(test)]
    fn message_capacity(&self) -> usize {
        self.data.capacity()
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    fin: bool,
    opcode: u8,
    len: usize,
    mask: [u8; 4],
}

/// `N` bytes of `buf` starting at `at`, or `None` if they have not all arrived.
fn read_array<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Parses a close payload: empty, or a 2-byte code and a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<(u16, String)>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::CloseTooShort),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code_may_be_sent(code) {
                return Err(WsError::InvalidCloseCode { code });
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::CloseReasonNotUtf8)?;
            Ok(Some((code, reason.to_owned())))
        }
    }
}

/// Whether a peer may put `code` in a close frame (RFC 6455 7.4).
///
/// Allowed: the codes RFC 6455 defines for use on the wire (1000-1003, 1007-1011), the ones
/// IANA registered since (1012 service restart, 1013 try again later, 1014 bad gateway), and
/// the ranges for libraries and applications (3000-4999). Refused: 1004, and 1005, 1006 and
/// 1015, which only report conditions locally. Also refused: the rest of 1000-2999, which is
/// unassigned, and anything outside 1000-4999.
fn close_code_may_be_sent(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XORs `buf` with the mask, starting `phase` bytes into it. Returns the phase after `buf`.
///
/// It works on 8 bytes at a time with one u64 XOR: the 4-byte mask, rotated to the phase, is
/// repeated twice in a word. Eight is a multiple of four, so every word starts at the same
/// phase, and only the last bytes (fewer than 8) go one at a time. This is safe code, and the
/// compiler vectorises it further.
fn unmask(buf: &mut [u8], mask: [u8; 4], phase: usize) -> usize {
    let mut key = mask;
    key.rotate_left(phase & 3);
    let [k0, k1, k2, k3] = key;
    let key64 = u64::from_ne_bytes([k0, k1, k2, k3, k0, k1, k2, k3]);
    let (words, tail) = buf.as_chunks_mut::<8>();
    for word in words {
        *word = (u64::from_ne_bytes(*word) ^ key64).to_ne_bytes();
    }
    for (byte, k) in tail.iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
    (phase + buf.len()) & 3
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A client frame as a browser would send it: masked with `key`. The masking here is byte
    /// by byte on purpose, so that it checks the word-wise `unmask` independently.
    fn mask_client_frame(opcode: u8, fin: bool, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len <= 125 {
            out.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// Feeds `bytes` at once, then drains, collecting messages until the first error.
    fn decode_all(max: usize, bytes: &[u8]) -> (Vec<Message>, Option<WsError>) {
        let mut dec = Decoder::new(max);
        dec.feed(bytes);
        drain(&mut dec)
    }

    fn drain(dec: &mut Decoder) -> (Vec<Message>, Option<WsError>) {
        let mut out = Vec::new();
        loop {
            match dec.next_message() {
                Ok(Some(m)) => out.push(m),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    fn first_error(bytes: &[u8]) -> WsError {
        match decode_all(1 << 20, bytes) {
            (_, Some(e)) => e,
            (msgs, None) => panic!("expected an error, decoded {msgs:?}"),
        }
    }

    /// Parses an unmasked server frame: (fin, opcode, payload, header length).
    fn parse_server_frame(frame: &[u8]) -> (bool, u8, &[u8], usize) {
        assert_eq!(frame[1] & 0x80, 0, "server frames are never masked");
        let (len, hlen) = match frame[1] & 0x7F {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => (u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        assert_eq!(frame.len(), hlen + len, "frame length matches its header");
        (frame[0] & 0x80 != 0, frame[0] & 0xF, &frame[hlen..], hlen)
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(accept_key(" dGhlIHNhbXBsZSBub25jZQ== "), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn encoder_lengths_use_the_shortest_header() {
        for (len, want_hlen, want_len_byte) in
            [(0usize, 2usize, 0u8), (125, 2, 125), (126, 4, 126), (65535, 4, 126), (65536, 10, 127)]
        {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for (frame, op) in [(text_frame(&payload), 0x1), (binary_frame(&payload), 0x2)] {
                assert_eq!(frame[1], want_len_byte, "len {len}");
                let (fin, opcode, got, hlen) = parse_server_frame(&frame);
                assert!(fin);
                assert_eq!(opcode, op);
                assert_eq!(hlen, want_hlen, "len {len}");
                assert_eq!(got, &payload[..]);
            }
            let mut header = Vec::new();
            frame_header(OpCode::Binary, len, &mut header);
            assert_eq!(header.len(), want_hlen);
            assert_eq!(header_len(len), want_hlen);
            let mut out = vec![0xEE];
            encode_frame(OpCode::Binary, &payload, &mut out);
            assert_eq!(out[0], 0xEE, "encode_frame appends");
            assert_eq!(&out[1..], &binary_frame(&payload)[..]);
        }
        let mut header = Vec::new();
        frame_header(OpCode::Text, 1 << 32, &mut header);
        assert_eq!(header, [0x81, 127, 0, 0, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn decoder_lengths_round_trip() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let (msgs, err) = decode_all(65536, &mask_client_frame(0x2, true, &payload, KEY));
            assert_eq!(err, None, "len {len}");
            assert_eq!(msgs, vec![Message::Binary(payload.clone())], "len {len}");
            let text = "é".repeat(len / 2) + if len % 2 == 1 { "x" } else { "" };
            assert_eq!(text.len(), len);
            let (msgs, err) = decode_all(65536, &mask_client_frame(0x1, true, text.as_bytes(), KEY));
            assert_eq!(err, None, "len {len}");
            assert_eq!(msgs, vec![Message::Text(text)], "len {len}");
        }
    }

    #[test]
    fn control_builders() {
        let ping = ping_frame(b"hi");
        let (fin, op, payload, _) = parse_server_frame(&ping);
        assert!(fin);
        assert_eq!((op, payload), (0x9, &b"hi"[..]));
        let pong = pong_frame(b"hi");
        let (_, op, payload, _) = parse_server_frame(&pong);
        assert_eq!((op, payload), (0xA, &b"hi"[..]));
        let long = [7u8; 200];
        for frame in [ping_frame(&long), pong_frame(&long)] {
            let (_, _, payload, _) = parse_server_frame(&frame);
            assert_eq!(payload.len(), 125, "control payloads are cut to 125 bytes");
        }
        let mut out = Vec::new();
        encode_frame(OpCode::Close, &long, &mut out);
        assert_eq!(parse_server_frame(&out).2.len(), 125);

        let close = close_frame(1000, "bye");
        let (_, op, payload, _) = parse_server_frame(&close);
        assert_eq!(op, 0x8);
        assert_eq!(payload, b"\x03\xe8bye");
        let close = close_frame(4008, "");
        assert_eq!(parse_server_frame(&close).2, 4008u16.to_be_bytes());
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes, 2 per char
        let frame = close_frame(1009, &reason);
        let (_, _, payload, _) = parse_server_frame(&frame);
        assert!(payload.len() <= 125);
        let cut = std::str::from_utf8(&payload[2..]).expect("still utf-8");
        assert_eq!(cut.len(), 122, "123 would split a char");
        let frame = close_frame(1000, &"x".repeat(300));
        assert_eq!(parse_server_frame(&frame).2.len(), 125);
        // A 4-byte char straddling byte 123.
        let reason = format!("{}{}", "a".repeat(121), "😀");
        let frame = close_frame(1000, &reason);
        assert_eq!(&parse_server_frame(&frame).2[2..], "a".repeat(121).as_bytes());
        assert_eq!(truncate_utf8("abc", 3), "abc");
    }

    #[test]
    fn unmasked_client_frame_is_1002() {
        let err = first_error(&[0x81, 0x02, b'h', b'i']);
        assert_eq!(err, WsError::Unmasked);
        assert_eq!(err.close_code(), 1002);
    }

    #[test]
    fn reserved_bits_are_1002() {
        for rsv in [0x40u8, 0x20, 0x10, 0x70] {
            let mut f = mask_client_frame(0x1, true, b"hi", KEY);
            f[0] |= rsv;
            let err = first_error(&f);
            assert_eq!(err, WsError::ReservedBits { bits: rsv >> 4 });
            assert_eq!(err.close_code(), 1002);
        }
    }

    #[test]
    fn unknown_opcodes_are_1002() {
        for op in (0x3..=0x7).chain(0xB..=0xF) {
            let err = first_error(&mask_client_frame(op, true, b"", KEY));
            assert_eq!(err, WsError::UnknownOpcode { opcode: op });
            assert_eq!(err.close_code(), 1002);
        }
    }

    #[test]
    fn long_or_fragmented_control_frames_are_1002() {
        for op in [0x8u8, 0x9, 0xA] {
            let mut payload = vec![b'x'; 126];
            if op == 0x8 {
                payload[..2].copy_from_slice(&1000u16.to_be_bytes());
            }
            let err = first_error(&mask_client_frame(op, true, &payload, KEY));
            assert_eq!(err, WsError::ControlTooLong { opcode: op });
            assert_eq!(err.close_code(), 1002);
            let err = first_error(&mask_client_frame(op, false, b"", KEY));
            assert_eq!(err, WsError::FragmentedControl { opcode: op });
            assert_eq!(err.close_code(), 1002);
        }
        // Exactly 125 is fine.
        let (msgs, err) = decode_all(0, &mask_client_frame(0x9, true, &[1; 125], KEY));
        assert_eq!((msgs, err), (vec![Message::Ping(vec![1; 125])], None));
    }

    #[test]
    fn continuation_sequencing_is_checked() {
        let err = first_error(&mask_client_frame(0x0, true, b"x", KEY));
        assert_eq!(err, WsError::UnexpectedContinuation);
        assert_eq!(err.close_code(), 1002);

        for second in [0x1u8, 0x2] {
            let mut s = mask_client_frame(0x1, false, b"ab", KEY);
            s.extend(mask_client_frame(second, true, b"cd", KEY));
            let err = first_error(&s);
            assert_eq!(err, WsError::ExpectedContinuation { opcode: second });
            assert_eq!(err.close_code(), 1002);
        }

        // After a complete fragmented message, a continuation has nothing to continue.
        let mut s = mask_client_frame(0x2, false, b"ab", KEY);
        s.extend(mask_client_frame(0x0, true, b"cd", KEY));
        s.extend(mask_client_frame(0x0, true, b"ef", KEY));
        let (msgs, err) = decode_all(100, &s);
        assert_eq!(msgs, vec![Message::Binary(b"abcd".to_vec())]);
        assert_eq!(err, Some(WsError::UnexpectedContinuation));
    }

    #[test]
    fn fragments_reassemble_with_control_frames_between() {
        let mut s = mask_client_frame(0x1, false, b"hel", KEY);
        s.extend(mask_client_frame(0x9, true, b"p1", [1, 2, 3, 4]));
        s.extend(mask_client_frame(0x0, false, b"lo ", [9, 8, 7, 6]));
        s.extend(mask_client_frame(0xA, true, b"", KEY));
        s.extend(mask_client_frame(0x0, false, b"", KEY));
        s.extend(mask_client_frame(0x0, true, "wörld".as_bytes(), KEY));
        s.extend(mask_client_frame(0x2, true, b"\x00\xff", KEY));
        let (msgs, err) = decode_all(100, &s);
        assert_eq!(err, None);
        assert_eq!(
            msgs,
            vec![
                Message::Ping(b"p1".to_vec()),
                Message::Pong(Vec::new()),
                Message::Text("hello wörld".into()),
                Message::Binary(vec![0, 255]),
            ]
        );
    }

    #[test]
    fn too_large_fails_on_the_header_before_any_payload() {
        // One frame: only the header is fed. 1 MiB declared, 64 KiB allowed.
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 20).to_be_bytes());
        header.extend_from_slice(&KEY);
        let mut dec = Decoder::new(64 * 1024);
        dec.feed(&header[..2 + 8]); // even before the mask key
        let err = dec.next_message().unwrap_err();
        assert_eq!(err, WsError::TooLarge { len: 1 << 20, max: 64 * 1024 });
        assert_eq!(err.close_code(), 1009);
        assert_eq!(dec.message_capacity(), 0, "nothing was reserved");

        // Fragments: the running total crosses the limit on the third header.
        let mut s = mask_client_frame(0x1, false, &[b'a'; 40], KEY);
        s.extend(mask_client_frame(0x0, false, &[b'b'; 40], KEY));
        s.extend(mask_client_frame(0x0, true, &[b'c'; 40], KEY));
        let (msgs, err) = decode_all(100, &s);
        assert!(msgs.is_empty());
        assert_eq!(err, Some(WsError::TooLarge { len: 120, max: 100 }));

        // Exactly at the limit is fine.
        let (msgs, err) = decode_all(100, &mask_client_frame(0x2, true, &[0; 100], KEY));
        assert_eq!((msgs, err), (vec![Message::Binary(vec![0; 100])], None));
        let (_, err) = decode_all(99, &mask_client_frame(0x2, true, &[0; 100], KEY));
        assert_eq!(err, Some(WsError::TooLarge { len: 100, max: 99 }));
    }

    #[test]
    fn sixty_four_bit_length_with_top_bit_is_1002() {
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&(1u64 << 63 | 5).to_be_bytes());
        f.extend_from_slice(&KEY);
        let err = first_error(&f);
        assert_eq!(err, WsError::LengthTopBit);
        assert_eq!(err.close_code(), 1002);
    }

    #[test]
    fn text_must_be_utf8_across_fragments() {
        let err = first_error(&mask_client_frame(0x1, true, b"\xff\xfe", KEY));
        assert_eq!(err, WsError::InvalidUtf8);
        assert_eq!(err.close_code(), 1007);

        // A 3-byte char split over two fragments is valid.
        let euro = "€".as_bytes();
        let mut s = mask_client_frame(0x1, false, &euro[..1], KEY);
        s.extend(mask_client_frame(0x0, true, &euro[1..], KEY));
        assert_eq!(decode_all(10, &s), (vec![Message::Text("€".into())], None));

        // Only the first two bytes of it is not.
        let mut s = mask_client_frame(0x1, false, &euro[..1], KEY);
        s.extend(mask_client_frame(0x0, true, &euro[1..2], KEY));
        assert_eq!(decode_all(10, &s).1, Some(WsError::InvalidUtf8));

        // Binary messages are not checked.
        let (msgs, err) = decode_all(10, &mask_client_frame(0x2, true, b"\xff", KEY));
        assert_eq!((msgs, err), (vec![Message::Binary(vec![0xff])], None));
    }

    #[test]
    fn close_payloads_are_parsed_and_checked() {
        let close = |payload: &[u8]| decode_all(10, &mask_client_frame(0x8, true, payload, KEY));
        assert_eq!(close(b""), (vec![Message::Close(None)], None));
        let mut p = 1000u16.to_be_bytes().to_vec();
        p.extend_from_slice("bye ✓".as_bytes());
        assert_eq!(close(&p), (vec![Message::Close(Some((1000, "bye ✓".into())))], None));

        let err = close(b"\x03").1.unwrap();
        assert_eq!(err, WsError::CloseTooShort);
        assert_eq!(err.close_code(), 1002);

        for code in [1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999]
        {
            assert_eq!(
                close(&code.to_be_bytes()),
                (vec![Message::Close(Some((code, String::new())))], None),
                "code {code}"
            );
        }
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            let err = close(&code.to_be_bytes()).1;
            assert_eq!(err, Some(WsError::InvalidCloseCode { code }), "code {code}");
            assert_eq!(err.map(|e| e.close_code()), Some(1002));
        }

        let mut p = 1000u16.to_be_bytes().to_vec();
        p.extend_from_slice(b"\xc3\x28");
        let err = close(&p).1.unwrap();
        assert_eq!(err, WsError::CloseReasonNotUtf8);
        assert_eq!(err.close_code(), 1007);
    }

    #[test]
    fn nothing_is_decoded_after_close() {
        let mut s = mask_client_frame(0x8, true, &1000u16.to_be_bytes(), KEY);
        s.extend(mask_client_frame(0x1, true, b"late", KEY));
        let mut dec = Decoder::new(100);
        dec.feed(&s);
        assert_eq!(dec.next_message(), Ok(Some(Message::Close(Some((1000, String::new()))))));
        assert_eq!(dec.next_message(), Ok(None));
        dec.feed(&mask_client_frame(0x1, true, b"later", KEY));
        assert_eq!(dec.buffered_len(), 0, "input after close is dropped");
        assert_eq!(dec.next_message(), Ok(None));
    }

    #[test]
    fn errors_are_sticky() {
        let mut dec = Decoder::new(100);
        dec.feed(&[0x81, 0x00]);
        assert_eq!(dec.next_message(), Err(WsError::Unmasked));
        dec.feed(&mask_client_frame(0x1, true, b"ok", KEY));
        assert_eq!(dec.buffered_len(), 0);
        assert_eq!(dec.next_message(), Err(WsError::Unmasked));
    }

    #[test]
    fn payload_is_consumed_as_it_arrives() {
        let payload = vec![42u8; 10_000];
        let frame = mask_client_frame(0x2, true, &payload, KEY);
        let mut dec = Decoder::new(10_000);
        let mut got = Vec::new();
        for chunk in frame.chunks(1000) {
            dec.feed(chunk);
            while let Some(m) = dec.next_message().unwrap() {
                got.push(m);
            }
            assert_eq!(dec.buffered_len(), 0, "no payload waits in the input buffer");
        }
        assert_eq!(got, vec![Message::Binary(payload)]);
        // A partial header stays buffered until it is complete.
        dec.feed(&[0x81, 0x85, 1]);
        assert_eq!(dec.next_message(), Ok(None));
        assert_eq!(dec.buffered_len(), 3);
    }

    #[test]
    fn many_tiny_fragments_stay_within_the_limit() {
        let max = 1000;
        let mut s = mask_client_frame(0x2, false, b"x", KEY);
        for _ in 0..998 {
            s.extend(mask_client_frame(0x0, false, b"x", KEY));
        }
        s.extend(mask_client_frame(0x0, true, b"x", KEY));
        let mut dec = Decoder::new(max);
        dec.feed(&s);
        let m = dec.next_message().unwrap().unwrap();
        assert_eq!(m, Message::Binary(vec![b'x'; 1000]));
        if let Message::Binary(v) = m {
            assert!(v.capacity() <= max, "capacity {} > {max}", v.capacity());
        }
    }

    #[test]
    fn debug_prints_sizes_not_contents() {
        let mut dec = Decoder::new(100);
        dec.feed(b"secret");
        let dbg = format!("{dec:?}");
        assert!(dbg.contains("buffered_len: 6"), "{dbg}");
        assert!(!dbg.contains("115"), "{dbg}"); // no byte values
    }

    #[test]
    fn error_messages_are_lowercase_with_a_next_step() {
        let all = [
            WsError::Unmasked,
            WsError::ReservedBits { bits: 4 },
            WsError::UnknownOpcode { opcode: 3 },
            WsError::ControlTooLong { opcode: 9 },
            WsError::FragmentedControl { opcode: 9 },
            WsError::UnexpectedContinuation,
            WsError::ExpectedContinuation { opcode: 1 },
            WsError::LengthTopBit,
            WsError::TooLarge { len: u64::MAX, max: usize::MAX },
            WsError::InvalidUtf8,
            WsError::CloseTooShort,
            WsError::InvalidCloseCode { code: 1005 },
            WsError::CloseReasonNotUtf8,
        ];
        for e in all {
            let msg = e.to_string();
            assert!(msg.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()), "{msg}");
            assert!(!msg.ends_with('.'), "{msg}");
            assert!(msg.contains("; "), "says what to do: {msg}");
            // It is sent as the close reason, so it should fit.
            assert!(msg.len() <= MAX_CLOSE_REASON, "{} bytes: {msg}", msg.len());
        }
    }

    /// A message as a client could send it: how it is fragmented, which control frames come
    /// between its fragments, and the mask keys used.
    #[derive(Debug, Clone)]
    struct Sent {
        kind: u8, // 0 text, 1 binary, 2 ping, 3 pong, 4 close
        text: String,
        bytes: Vec<u8>,
        cuts: Vec<usize>,
        pings_between: Vec<Vec<u8>>,
        key: [u8; 4],
    }

    fn sent_strategy() -> impl Strategy<Value = Sent> {
        (
            0u8..5,
            "\\PC{0,60}",
            prop::collection::vec(any::<u8>(), 0..300),
            prop::collection::vec(0usize..400, 0..4),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..8), 0..3),
            any::<[u8; 4]>(),
        )
            .prop_map(|(kind, text, bytes, cuts, pings_between, key)| Sent {
                kind,
                text,
                bytes,
                cuts,
                pings_between,
                key,
            })
    }

    /// Encodes the messages as a client would, and the messages the decoder should return.
    fn client_stream(sent: &[Sent]) -> (Vec<u8>, Vec<Message>) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for s in sent {
            match s.kind {
                0 | 1 => {
                    let payload = if s.kind == 0 { s.text.as_bytes() } else { &s.bytes[..] };
                    let mut cuts: Vec<usize> = s.cuts.iter().map(|c| c % (payload.len() + 1)).collect();
                    cuts.sort_unstable();
                    cuts.push(payload.len());
                    let mut start = 0;
                    for (i, end) in cuts.iter().enumerate() {
                        let last = i + 1 == cuts.len();
                        let op = if i == 0 { 1 + s.kind } else { 0 };
                        stream.extend(mask_client_frame(op, last, &payload[start..*end], s.key));
                        start = *end;
                        if let Some(p) = s.pings_between.get(i).filter(|_| !last) {
                            stream.extend(mask_client_frame(0x9, true, p, s.key));
                            expected.push(Message::Ping(p.clone()));
                        }
                    }
                    expected.push(if s.kind == 0 {
                        Message::Text(s.text.clone())
                    } else {
                        Message::Binary(s.bytes.clone())
                    });
                }
                2 | 3 => {
                    let p = &s.bytes[..s.bytes.len().min(125)];
                    let op = if s.kind == 2 { 0x9 } else { 0xA };
                    stream.extend(mask_client_frame(op, true, p, s.key));
                    expected.push(if s.kind == 2 { Message::Ping(p.to_vec()) } else { Message::Pong(p.to_vec()) });
                }
                _ => {
                    let mut p = 4000u16.to_be_bytes().to_vec();
                    p.extend_from_slice(truncate_utf8(&s.text, 123).as_bytes());
                    stream.extend(mask_client_frame(0x8, true, &p, s.key));
                    expected.push(Message::Close(Some((4000, truncate_utf8(&s.text, 123).to_owned()))));
                    // Nothing after a close is decoded, so the stream ends here.
                    break;
                }
            }
        }
        (stream, expected)
    }

    fn naive_unmask(buf: &mut [u8], mask: [u8; 4], phase: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= mask[(phase + i) % 4];
        }
    }

    /// Feeds arbitrary bytes in arbitrary chunks. It must not panic, and the message buffer
    /// must stay within the limit. This is the body a fuzz target would call (STYLE.md
    /// habit 10).
    fn decode_untrusted(data: &[u8], chunk: usize, max: usize) {
        let mut dec = Decoder::new(max);
        for piece in data.chunks(chunk.max(1)) {
            dec.feed(piece);
            while let Ok(Some(_)) = dec.next_message() {
                assert!(dec.message_capacity() <= max);
            }
            assert!(dec.message_capacity() <= max);
            assert!(dec.buffered_len() < 14);
        }
    }

    proptest! {
        #[test]
        fn random_chunk_splits_decode_the_same(
            sent in prop::collection::vec(sent_strategy(), 1..8),
            splits in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let (stream, expected) = client_stream(&sent);
            let (whole, err) = decode_all(1024, &stream);
            prop_assert_eq!(err, None);
            prop_assert_eq!(&whole, &expected);

            let mut points: Vec<usize> = splits.iter().map(|i| i.index(stream.len() + 1)).collect();
            points.sort_unstable();
            points.push(stream.len());
            let mut dec = Decoder::new(1024);
            let mut got = Vec::new();
            let mut start = 0;
            for end in points {
                dec.feed(&stream[start..end]);
                start = end;
                let (msgs, err) = drain(&mut dec);
                prop_assert_eq!(err, None);
                got.extend(msgs);
                prop_assert!(dec.buffered_len() < 14);
            }
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            data in prop::collection::vec(any::<u8>(), 0..2048),
            chunk in 1usize..64,
            max in 0usize..512,
        ) {
            decode_untrusted(&data, chunk, max);
        }

        #[test]
        fn mutated_streams_never_panic(
            sent in prop::collection::vec(sent_strategy(), 1..6),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            chunk in 1usize..64,
            max in 0usize..512,
        ) {
            // Valid streams with a few bytes changed reach deeper states than random bytes,
            // which almost all fail on the mask bit.
            let (mut stream, _) = client_stream(&sent);
            for (at, byte) in flips {
                let i = at.index(stream.len());
                stream[i] ^= byte;
            }
            decode_untrusted(&stream, chunk, max);
        }

        #[test]
        fn word_unmask_matches_bytewise(
            data in prop::collection::vec(any::<u8>(), 0..100),
            mask in any::<[u8; 4]>(),
            phase in 0usize..8,
        ) {
            let mut fast = data.clone();
            let mut slow = data.clone();
            let next = unmask(&mut fast, mask, phase);
            naive_unmask(&mut slow, mask, phase);
            prop_assert_eq!(fast, slow);
            prop_assert_eq!(next, (phase + data.len()) % 4);
        }
    }
}
