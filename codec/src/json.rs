//! Rendering records to the JSON data messages of PROTOCOL.md.
//!
//! Written by hand into a reused `Vec<u8>` rather than through serde: this runs once per
//! record per gateway on the hot path, the shapes are fixed, and the only variable text
//! (ids and symbols) is validated ASCII, so escaping is a scan for `"` and `\`.

use crate::fixed::{Px, Qty};
use crate::record::{BodyRef, RecordRef, FLAG_CONFLATED};

/// Appends the JSON object for `rec` (no trailing newline) to `out`.
pub fn write_json(rec: &RecordRef<'_>, out: &mut Vec<u8>) {
    let mut n = itoa::Buffer::new();
    let ty = match rec.body() {
        BodyRef::Trade(_) => "trade",
        BodyRef::Quote(_) => "quote",
    };
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(ty.as_bytes());
    out.extend_from_slice(b"\",\"src\":");
    write_str(rec.src(), out);
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(n.format(rec.seq()).as_bytes());
    out.extend_from_slice(b",\"sym\":");
    write_str(rec.sym(), out);
    out.extend_from_slice(b",\"ts\":");
    out.extend_from_slice(n.format(rec.ts_event()).as_bytes());
    out.extend_from_slice(b",\"ts_ingest\":");
    out.extend_from_slice(n.format(rec.ts_ingest()).as_bytes());
    match rec.body() {
        BodyRef::Trade(t) => {
            out.extend_from_slice(b",\"px\":");
            write_px(t.px.get(), out);
            out.extend_from_slice(b",\"qty\":");
            write_qty(t.qty.get(), out);
            out.extend_from_slice(b",\"side\":\"");
            out.extend_from_slice(t.side.get().as_str().as_bytes());
            out.push(b'"');
        }
        BodyRef::Quote(q) => {
            let (bp, bq, ap, aq) = (q.bid_px.get(), q.bid_qty.get(), q.ask_px.get(), q.ask_qty.get());
            out.extend_from_slice(b",\"bid_px\":");
            write_px(bp, out);
            out.extend_from_slice(b",\"bid_qty\":");
            write_side_qty(bp, bq, out);
            out.extend_from_slice(b",\"ask_px\":");
            write_px(ap, out);
            out.extend_from_slice(b",\"ask_qty\":");
            write_side_qty(ap, aq, out);
        }
    }
    if rec.flags() & FLAG_CONFLATED != 0 {
        out.extend_from_slice(b",\"conflated\":true");
    }
    out.push(b'}');
}

/// The JSON text of `rec` as a `String`.
pub fn to_json(rec: &RecordRef<'_>) -> String {
    let mut v = Vec::with_capacity(192);
    write_json(rec, &mut v);
    // write_json emits ASCII punctuation, digits and escaped validated ASCII ids.
    String::from_utf8(v).unwrap_or_default()
}

fn write_px(px: Px, out: &mut Vec<u8>) {
    if px.is_null() {
        out.extend_from_slice(b"null");
    } else {
        out.push(b'"');
        px.write_to(out);
        out.push(b'"');
    }
}

fn write_qty(q: Qty, out: &mut Vec<u8>) {
    out.push(b'"');
    q.write_to(out);
    out.push(b'"');
}

fn write_side_qty(px: Px, q: Qty, out: &mut Vec<u8>) {
    if px.is_null() {
        out.extend_from_slice(b"null");
    } else {
        write_qty(q, out);
    }
}

/// Writes `s` as a JSON string literal.
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for &c in s.as_bytes() {
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            c if c < 0x20 => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 15)]);
            }
            c => out.push(c),
        }
    }
    out.push(b'"');
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{access_untrusted, Side};
    use crate::testing;

    #[test]
    fn trade_matches_protocol_shape() {
        let b = testing::trade(48212, "AAPL", "320.14", "100", Side::Buy).to_bytes();
        let j = to_json(&access_untrusted(&b).unwrap());
        assert_eq!(
            j,
            r#"{"type":"trade","src":"TEST.SRC","seq":48212,"sym":"AAPL","ts":1700000000000000000,"ts_ingest":1700000000000001000,"px":"320.14","qty":"100","side":"buy"}"#
        );
    }

    #[test]
    fn one_sided_quote_has_nulls() {
        let b = testing::quote(3, "BTC-USD", Some(("64000.5", "0.0025")), None).to_bytes();
        let j = to_json(&access_untrusted(&b).unwrap());
        assert_eq!(
            j,
            r#"{"type":"quote","src":"TEST.SRC","seq":3,"sym":"BTC-USD","ts":1700000000000000000,"ts_ingest":1700000000000001000,"bid_px":"64000.5","bid_qty":"0.0025","ask_px":null,"ask_qty":null}"#
        );
    }

    #[test]
    fn symbols_are_escaped() {
        let mut out = Vec::new();
        write_str("a\"b\\c", &mut out);
        assert_eq!(out, br#""a\"b\\c""#);
    }
}
