//! Fuzzing what a client controls before any business logic: the WebSocket frame decoder
//! (`ws::Decoder`) and the JSON control messages (`protocol::parse_request`).
//!
//! Frames: valid streams built here (masked, fragmented, control frames in between, every
//! length encoding) must decode to exactly what was sent however the bytes are chunked;
//! random and mutated streams must end in a clean error with the right close code, never a
//! panic, with buffers bounded; declared 64-bit lengths never allocate. Requests: random JSON
//! values, wrong types, deep nesting and huge strings get one clear, bounded refusal.
//!
//! Cases: `PROPTEST_CASES`, or `TICKMESH_FUZZ_LONG=1` for 100x the CI default.

#[path = "../../tests/support/fuzz.rs"]
mod fuzz;

use fuzz::{chunks, config, mutate, mutations, Capped};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tickmesh_gateway::protocol::{parse_request, Request, CHANNELS};
use tickmesh_gateway::ws::{Decoder, Message, WsError};

#[global_allocator]
static ALLOC: Capped = Capped;

const MAX: usize = 4096;

// ---------------------------------------------------------------------------------------
// WebSocket frames

/// A frame as a client would send it.
#[derive(Debug, Clone)]
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
    mask: [u8; 4],
    /// 0: shortest length form; 1: 16-bit form when it fits; 2: 64-bit form.
    len_form: u8,
}

fn encode(f: &Frame, out: &mut Vec<u8>) {
    out.push(if f.fin { 0x80 } else { 0 } | f.opcode);
    let n = f.payload.len();
    match (f.len_form, n) {
        (0, 0..=125) => out.push(0x80 | n as u8),
        (0 | 1, 0..=0xFFFF) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&f.mask);
    out.extend(f.payload.iter().enumerate().map(|(i, b)| b ^ f.mask[i % 4]));
}

/// One message the client means to send, and how it is cut into frames.
#[derive(Debug, Clone)]
enum Sent {
    Text(String, Vec<usize>),
    Binary(Vec<u8>, Vec<usize>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

fn sent() -> impl Strategy<Value = Sent> {
    let cuts = proptest::collection::vec(any::<usize>(), 0..4);
    prop_oneof![
        3 => ("\\PC{0,200}", cuts.clone()).prop_map(|(s, c)| Sent::Text(s, c)),
        2 => (proptest::collection::vec(any::<u8>(), 0..600), cuts).prop_map(|(b, c)| Sent::Binary(b, c)),
        1 => proptest::collection::vec(any::<u8>(), 0..=125).prop_map(Sent::Ping),
        1 => proptest::collection::vec(any::<u8>(), 0..=125).prop_map(Sent::Pong),
    ]
}

/// Encodes messages as frames; control frames go between the fragments of the next data
/// message when `interleave` is set.
fn build(msgs: &[Sent], mask: [u8; 4], len_form: u8, interleave: bool) -> (Vec<u8>, Vec<Message>) {
    let mut out = Vec::new();
    let mut expect = Vec::new();
    let mut pending_control: Vec<Frame> = Vec::new();
    // Control frames always use the 7-bit length: the extended forms start with 126 or 127
    // in that field, which RFC 6455 5.5 forbids for them (and the decoder refuses).
    let frame = |fin, opcode: u8, payload: &[u8]| Frame {
        fin,
        opcode,
        payload: payload.to_vec(),
        mask,
        len_form: if opcode & 0x8 != 0 { 0 } else { len_form },
    };
    for m in msgs {
        match m {
            Sent::Ping(p) | Sent::Pong(p) => {
                let (op, msg) = if matches!(m, Sent::Ping(_)) {
                    (0x9, Message::Ping(p.clone()))
                } else {
                    (0xA, Message::Pong(p.clone()))
                };
                expect.push(msg);
                if interleave {
                    pending_control.push(frame(true, op, p));
                } else {
                    encode(&frame(true, op, p), &mut out);
                }
            }
            Sent::Text(_, cuts) | Sent::Binary(_, cuts) => {
                let (opcode, bytes, msg) = match m {
                    Sent::Text(s, _) => (0x1, s.as_bytes().to_vec(), Message::Text(s.clone())),
                    Sent::Binary(b, _) => (0x2, b.clone(), Message::Binary(b.clone())),
                    _ => unreachable!(),
                };
                let pieces = chunks(&bytes, cuts);
                let pieces: Vec<&[u8]> = if pieces.is_empty() { vec![&[][..]] } else { pieces };
                // Control frames sent before this message's first fragment come out first.
                let n = pieces.len();
                for (i, p) in pieces.iter().enumerate() {
                    encode(&frame(i + 1 == n, if i == 0 { opcode } else { 0x0 }, p), &mut out);
                    if i + 1 < n {
                        if let Some(c) = pending_control.pop() {
                            encode(&c, &mut out);
                        }
                    }
                }
                // Any control frames still pending are sent after the message; move their
                // expected position after it.
                let ctrl_expected: Vec<Message> = expect.drain(expect.len() - pending_control.len()..).collect();
                expect.push(msg);
                for c in pending_control.drain(..) {
                    encode(&c, &mut out);
                }
                expect.extend(ctrl_expected);
            }
        }
    }
    for c in pending_control.drain(..) {
        encode(&c, &mut out);
    }
    (out, expect)
}

/// Feeds `pieces` one by one, draining after each; returns the messages and the error.
fn decode_all(pieces: &[&[u8]]) -> Result<(Vec<Message>, Option<WsError>), TestCaseError> {
    let mut d = Decoder::new(MAX);
    let mut got = Vec::new();
    for p in pieces {
        d.feed(p);
        loop {
            match d.next_message() {
                Ok(Some(m)) => {
                    let closed = matches!(m, Message::Close(_));
                    got.push(m);
                    if closed {
                        prop_assert!(d.next_message() == Ok(None), "nothing after a close");
                        return Ok((got, None));
                    }
                }
                Ok(None) => {
                    prop_assert!(d.buffered_len() < 14, "{} bytes stay buffered after draining", d.buffered_len());
                    break;
                }
                Err(e) => {
                    prop_assert!(matches!(e.close_code(), 1002 | 1007 | 1009), "close code {} for {e}", e.close_code());
                    let text = e.to_string();
                    prop_assert!(!text.is_empty() && text.len() <= 123, "close reason must fit a close frame: {text}");
                    prop_assert_eq!(d.next_message(), Err(e), "the same error every time");
                    d.feed(&[0x81, 0x80, 0, 0, 0, 0]);
                    prop_assert_eq!(d.next_message(), Err(e), "input after an error is dropped");
                    return Ok((got, Some(e)));
                }
            }
        }
    }
    Ok((got, None))
}

/// Orders control messages relative to data messages the way the decoder delivers them:
/// the model above cannot predict interleaving exactly, so compare data messages in order
/// and control messages in order, separately.
fn split(msgs: &[Message]) -> (Vec<&Message>, Vec<&Message>) {
    msgs.iter().partition(|m| matches!(m, Message::Text(_) | Message::Binary(_)))
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn valid_streams_decode_exactly_however_chunked(
        msgs in proptest::collection::vec(sent(), 1..8),
        mask in any::<[u8; 4]>(),
        len_form in 0u8..3,
        interleave in any::<bool>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let (bytes, expect) = build(&msgs, mask, len_form, interleave);
        let (got, err) = decode_all(&chunks(&bytes, &cuts))?;
        prop_assert_eq!(err, None);
        let (gd, gc) = split(&got);
        let (ed, ec) = split(&expect);
        prop_assert_eq!(gd, ed);
        prop_assert_eq!(gc.len(), ec.len());
        let mut gc: Vec<_> = gc.into_iter().map(|m| format!("{m:?}")).collect();
        let mut ec: Vec<_> = ec.into_iter().map(|m| format!("{m:?}")).collect();
        gc.sort();
        ec.sort();
        prop_assert_eq!(gc, ec);
        fuzz::assert_no_huge_alloc();
    }

    #[test]
    fn random_bytes_end_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..2048), cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        decode_all(&chunks(&bytes, &cuts))?;
        fuzz::assert_no_huge_alloc();
    }

    #[test]
    fn mutated_streams_end_cleanly(
        msgs in proptest::collection::vec(sent(), 1..6),
        mask in any::<[u8; 4]>(),
        len_form in 0u8..3,
        muts in mutations(4),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let (bytes, _) = build(&msgs, mask, len_form, true);
        let bytes = mutate(&bytes, &muts);
        let (got, _) = decode_all(&chunks(&bytes, &cuts))?;
        for m in &got {
            match m {
                Message::Text(t) => prop_assert!(t.len() <= MAX),
                Message::Binary(b) => prop_assert!(b.len() <= MAX),
                Message::Ping(p) | Message::Pong(p) => prop_assert!(p.len() <= 125),
                Message::Close(c) => prop_assert!(c.as_ref().is_none_or(|(_, r)| r.len() <= 123)),
            }
        }
        fuzz::assert_no_huge_alloc();
    }

    #[test]
    fn declared_lengths_never_allocate(len in prop_oneof![Just(u64::MAX), Just(1u64 << 63), Just(1u64 << 60), Just((1u64 << 63) - 1), (MAX as u64 + 1)..u64::MAX], opcode in prop_oneof![Just(1u8), Just(2u8)]) {
        let mut b = vec![0x80 | opcode, 0x80 | 127];
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(&[1, 2, 3, 4]);
        let mut d = Decoder::new(MAX);
        d.feed(&b);
        let e = d.next_message().expect_err("a length over the limit is refused from the header");
        prop_assert!(matches!(e, WsError::TooLarge { .. } | WsError::LengthTopBit), "{e:?}");
        prop_assert_eq!(e.close_code(), if len >> 63 != 0 { 1002 } else { 1009 });
        fuzz::assert_no_huge_alloc();
    }

    #[test]
    fn fragments_summing_over_the_limit_are_refused(sizes in proptest::collection::vec(1usize..2000, 2..10)) {
        let mut b = Vec::new();
        let n = sizes.len();
        for (i, s) in sizes.iter().enumerate() {
            encode(&Frame { fin: i + 1 == n, opcode: if i == 0 { 2 } else { 0 }, payload: vec![7; *s], mask: [9, 8, 7, 6], len_form: 0 }, &mut b);
        }
        let (got, err) = decode_all(&[&b])?;
        let total: usize = sizes.iter().sum();
        if total > MAX {
            prop_assert!(matches!(err, Some(WsError::TooLarge { .. })), "{err:?}");
            prop_assert!(got.is_empty());
        } else {
            prop_assert_eq!(err, None);
            prop_assert_eq!(got, vec![Message::Binary(vec![7; total])]);
        }
    }
}

/// Each rule of RFC 6455 that a client can break, with the close code it earns.
#[test]
fn each_violation_gets_its_close_code() {
    let masked = |b0: u8, payload: &[u8]| {
        let mut v = Vec::new();
        encode(
            &Frame {
                fin: b0 & 0x80 != 0,
                opcode: b0 & 0x0F,
                payload: payload.to_vec(),
                mask: [1, 2, 3, 4],
                len_form: 0,
            },
            &mut v,
        );
        v[0] = b0;
        v
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked text", vec![0x81, 0x02, b'h', b'i'], 1002),
        ("rsv1 set", masked(0xC1, b"hi"), 1002),
        ("rsv3 set", masked(0x91, b"hi"), 1002),
        ("opcode 0x3", masked(0x83, b"hi"), 1002),
        ("opcode 0xB", masked(0x8B, b""), 1002),
        ("ping of 126 bytes", masked(0x89, &[0; 126]), 1002),
        ("fragmented ping", masked(0x09, b"x"), 1002),
        ("continuation first", masked(0x80, b"x"), 1002),
        ("text inside a fragmented text", [masked(0x01, b"a"), masked(0x81, b"b")].concat(), 1002),
        ("invalid utf-8", masked(0x81, &[0xC3, 0x28]), 1007),
        (
            "utf-8 cut between fragments, never completed",
            [masked(0x01, &[0xE2, 0x82]), masked(0x80, b"x")].concat(),
            1007,
        ),
        ("close with one byte", masked(0x88, &[3]), 1002),
        ("close code 1005", masked(0x88, &1005u16.to_be_bytes()), 1002),
        ("close reason not utf-8", masked(0x88, &[0x03, 0xE8, 0xFF]), 1007),
        ("text over the limit", masked(0x81, &[b'a'; MAX + 1]), 1009),
    ];
    for (what, bytes, code) in cases {
        let mut d = Decoder::new(MAX);
        d.feed(&bytes);
        let r = d.next_message();
        let e = r.expect_err(what);
        assert_eq!(e.close_code(), code, "{what}: {e}");
    }
    // UTF-8 split across fragments but complete is fine.
    let mut d = Decoder::new(MAX);
    d.feed(&[masked(0x01, &[0xE2, 0x82]), masked(0x80, &[0xAC])].concat());
    assert_eq!(d.next_message(), Ok(Some(Message::Text("€".into()))));
}

// ---------------------------------------------------------------------------------------
// JSON control messages

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        "\\PC{0,20}".prop_map(Value::String),
        prop_oneof![
            Just("*"),
            Just("trades"),
            Just("orders"),
            Just("book"),
            Just("AAPL"),
            Just("BTC-*"),
            Just("conflate"),
            Just("subscribe")
        ]
        .prop_map(|s| json!(s)),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("\\PC{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A request-shaped object: known keys with arbitrary values, plus random keys.
fn request_like() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("op".to_owned()),
        Just("id".to_owned()),
        Just("channels".to_owned()),
        Just("symbols".to_owned()),
        Just("depth".to_owned()),
        Just("resume".to_owned()),
        Just("slow".to_owned()),
        "\\PC{0,8}",
    ];
    let op = prop_oneof![Just(json!("subscribe")), Just(json!("unsubscribe")), Just(json!("ping")), json_value()];
    (op, proptest::collection::vec((key, json_value()), 0..8)).prop_map(|(op, fields)| {
        let mut m = Map::new();
        m.insert("op".into(), op);
        for (k, v) in fields {
            m.insert(k, v);
        }
        Value::Object(m)
    })
}

const CODES: [&str; 9] = [
    "bad_request",
    "unknown_op",
    "unknown_channel",
    "unknown_symbol",
    "forbidden",
    "too_many_subscriptions",
    "rate_limited",
    "message_too_large",
    "home_region_unavailable",
];

/// One request's outcome: a well-formed request or a clear, bounded refusal.
fn check_parse(text: &str) -> Result<(), TestCaseError> {
    match parse_request(text) {
        Ok(Request::Subscribe(s)) => {
            prop_assert!((1..=1000).contains(&s.depth));
            prop_assert!(!s.channel_list.is_empty() && s.channel_list.iter().all(|c| CHANNELS.contains(c)));
            prop_assert!(!s.symbol_list.is_empty());
            if s.channel_list.contains(&"orders") {
                prop_assert!(text.contains("orders"), "orders is only ever named, never implied by *");
            }
        }
        Ok(Request::Unsubscribe { channel_list, symbol_list, .. }) => {
            prop_assert!(!channel_list.is_empty() && !symbol_list.is_empty());
        }
        Ok(Request::Ping { .. }) => {}
        Err(r) => {
            let code = r.code.code();
            prop_assert!(CODES.contains(&code), "code {code} is not in PROTOCOL.md");
            prop_assert!(!r.message.is_empty());
            prop_assert!(
                r.message.len() <= 512,
                "refusal reflects {} bytes of input: {:.120}",
                r.message.len(),
                r.message
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn random_json_gets_a_clear_answer(v in json_value()) {
        check_parse(&v.to_string())?;
    }

    #[test]
    fn request_shaped_json_gets_a_clear_answer(v in request_like()) {
        check_parse(&v.to_string())?;
    }

    #[test]
    fn random_text_gets_a_clear_answer(s in "\\PC{0,200}") {
        check_parse(&s)?;
    }

    #[test]
    fn mutated_requests_get_a_clear_answer(which in 0usize..4, muts in mutations(4)) {
        let valid = [
            r#"{"op":"subscribe","id":1,"channels":["trades","quotes","book"],"symbols":["AAPL","BTC-*"],"depth":10,"resume":{"XNAS.ITCH":48211},"slow":"conflate"}"#,
            r#"{"op":"unsubscribe","id":2,"channels":["book"],"symbols":["AAPL"]}"#,
            r#"{"op":"ping","id":3}"#,
            r#"{"op":"subscribe","id":"x","channels":"*","symbols":"*"}"#,
        ];
        let bytes = mutate(valid[which].as_bytes(), &muts);
        // The decoder hands only UTF-8 to the parser.
        if let Ok(text) = std::str::from_utf8(&bytes) {
            check_parse(text)?;
        }
    }
}

/// Deep nesting, huge strings and huge lists, each near the 64 KiB inbound limit.
#[test]
fn pathological_requests_get_bounded_refusals() {
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let huge = "A".repeat(60_000);
    let cases: Vec<String> = vec![
        deep(100_000),
        format!(r#"{{"op":"subscribe","channels":{},"symbols":["AAPL"]}}"#, deep(10_000)),
        format!(r#"{{"op":"{huge}"}}"#),
        format!(r#"{{"op":"subscribe","channels":["{huge}"],"symbols":["AAPL"]}}"#),
        format!(r#"{{"op":"subscribe","channels":["trades"],"symbols":["{huge}"]}}"#),
        format!(r#"{{"op":"subscribe","channels":["trades"],"symbols":["AAPL"],"slow":"{huge}"}}"#),
        format!(r#"{{"op":"subscribe","channels":["trades"],"symbols":["AAPL"],"resume":{{"{huge}":"x"}}}}"#),
        format!(r#"{{"op":"subscribe","channels":["trades"],"symbols":["AAPL"],"depth":1{}}}"#, "0".repeat(5000)),
        format!(r#"{{"op":"ping","id":"{huge}"}}"#),
        format!(r#"{{"op":"ping","id":{}}}"#, "9".repeat(60_000)),
        format!(r#"{{"op":"subscribe","channels":["trades"],"symbols":["AAPL"],"resume":{{"A":1e999}}}}"#),
        "\u{feff}{\"op\":\"ping\"}".to_owned(),
        "{\"op\":\"ping\",\"op\":\"subscribe\"}".to_owned(),
        "null".to_owned(),
        String::new(),
    ];
    for text in &cases {
        match parse_request(text) {
            Ok(_) => {}
            Err(r) => {
                assert!(!r.message.is_empty());
                assert!(r.message.len() <= 512, "refusal of {:.60} reflects {} bytes", text, r.message.len());
            }
        }
    }
    fuzz::assert_no_huge_alloc();
}
