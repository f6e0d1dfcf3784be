//! Rendering records to the JSON data messages of PROTOCOL.md.
//!
//! Written by hand into a reused `Vec<u8>` rather than through serde: this runs once per
//! record per gateway on the hot path, the shapes are fixed, and the only variable text
//! (ids and symbols) is validated ASCII, so escaping is a scan for `"` and `\`.

use crate::fixed::{Px, Qty};
use crate::record::{BodyRef, RecordKind, RecordRef, Side, FLAG_CONFLATED};

/// The `type` of the JSON message for a record kind.
pub fn type_name(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Trade => "trade",
        RecordKind::Quote => "quote",
        RecordKind::Level => "book",
        RecordKind::OrderAdd => "order_add",
        RecordKind::OrderModify => "order_modify",
        RecordKind::OrderCancel => "order_cancel",
        RecordKind::OrderExecute => "order_execute",
        RecordKind::OrderReplace => "order_replace",
        RecordKind::Status => "status",
        RecordKind::Instrument => "instrument",
        RecordKind::Bar => "bar",
        RecordKind::Statistic => "statistic",
        RecordKind::Imbalance => "imbalance",
        RecordKind::OrderUpdate => "order",
    }
}

struct Obj<'a> {
    out: &'a mut Vec<u8>,
    n: itoa::Buffer,
}

impl Obj<'_> {
    fn key(&mut self, k: &str) {
        self.out.push(b',');
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
    }
    fn u64(&mut self, k: &str, v: u64) {
        self.key(k);
        let s = self.n.format(v);
        self.out.extend_from_slice(s.as_bytes());
    }
    fn i64(&mut self, k: &str, v: i64) {
        self.key(k);
        let s = self.n.format(v);
        self.out.extend_from_slice(s.as_bytes());
    }
    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        write_str(v, self.out);
    }
    fn px(&mut self, k: &str, v: Px) {
        self.key(k);
        write_px(v, self.out);
    }
    fn qty(&mut self, k: &str, v: Qty) {
        self.key(k);
        write_qty(v, self.out);
    }
    fn raw(&mut self, k: &str, v: &[u8]) {
        self.key(k);
        self.out.extend_from_slice(v);
    }
}

fn ascii(b: &[u8]) -> &str {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    std::str::from_utf8(&b[..end]).unwrap_or("")
}

/// Appends the JSON object for `rec` (no trailing newline) to `out`: the protocol's data
/// message for kinds that have a channel, and a message of the same style (`type` from
/// [`type_name`]) for order-level and reference kinds.
pub fn write_json(rec: &RecordRef<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(type_name(rec.kind()).as_bytes());
    out.push(b'"');
    let mut o = Obj { out, n: itoa::Buffer::new() };
    o.str("src", rec.src());
    o.u64("seq", rec.seq());
    o.str("sym", rec.sym());
    o.u64("ts", rec.ts_event());
    if rec.kind() != RecordKind::Status {
        o.u64("ts_ingest", rec.ts_ingest());
    }
    match rec.body() {
        BodyRef::Trade(t) => {
            o.px("px", t.px.get());
            o.qty("qty", t.qty.get());
            o.str("side", t.side.get().as_str());
        }
        BodyRef::Quote(q) => {
            let (bp, bq, ap, aq) = (q.bid_px.get(), q.bid_qty.get(), q.ask_px.get(), q.ask_qty.get());
            o.px("bid_px", bp);
            o.key("bid_qty");
            write_side_qty(bp, bq, o.out);
            o.px("ask_px", ap);
            o.key("ask_qty");
            write_side_qty(ap, aq, o.out);
        }
        BodyRef::Level(l) => {
            let mut level = Vec::with_capacity(48);
            level.extend_from_slice(b"[[");
            write_px(l.px.get(), &mut level);
            level.push(b',');
            write_qty(l.qty.get(), &mut level);
            level.extend_from_slice(b"]]");
            let (bids, asks): (&[u8], &[u8]) = match l.side.get() {
                Side::Buy => (&level, b"[]"),
                _ => (b"[]", &level),
            };
            o.raw("bids", bids);
            o.raw("asks", asks);
        }
        BodyRef::OrderAdd(a) => {
            o.u64("order_id", a.order_id.to_native());
            o.str("side", book_side(a.side.get()));
            o.px("px", a.px.get());
            o.qty("qty", a.qty.get());
        }
        BodyRef::OrderModify(a) => {
            o.u64("order_id", a.order_id.to_native());
            o.str("side", book_side(a.side.get()));
            o.px("px", a.px.get());
            o.qty("qty", a.qty.get());
        }
        BodyRef::OrderCancel(c) => {
            o.u64("order_id", c.order_id.to_native());
            o.str("side", book_side(c.side.get()));
            o.px("px", c.px.get());
            o.qty("cancelled", c.cancelled.get());
            o.qty("remaining", c.remaining.get());
        }
        BodyRef::OrderExecute(e) => {
            o.u64("order_id", e.order_id.to_native());
            o.str("side", book_side(e.side.get()));
            o.px("px", e.px.get());
            o.qty("qty", e.qty.get());
            o.qty("remaining", e.remaining.get());
            o.u64("match_id", e.match_id.to_native());
        }
        BodyRef::OrderReplace(r) => {
            o.u64("order_id", r.order_id.to_native());
            o.u64("new_order_id", r.new_order_id.to_native());
            o.str("side", book_side(r.side.get()));
            o.px("px", r.px.get());
            o.qty("qty", r.qty.get());
        }
        BodyRef::Status(s) => {
            o.str("state", s.state.get().as_str());
            let reason = ascii(&s.reason);
            if !reason.is_empty() {
                o.str("reason", reason);
            }
        }
        BodyRef::Instrument(i) => {
            o.u64("instrument_id", u64::from(rec.instrument().0));
            o.str("kind", i.kind.get().as_str());
            o.str("currency", ascii(&i.currency));
            o.px("tick_size", i.tick_size.get());
            o.qty("lot_size", i.lot_size.get());
            o.i64("multiplier", i.multiplier.to_native());
            o.u64("expiration", i.expiration.to_native());
            o.px("strike", i.strike.get());
            o.str("underlying", ascii(&i.underlying));
        }
        BodyRef::Bar(b) => {
            o.u64("interval_ns", b.interval_ns.to_native());
            o.px("open", b.open.get());
            o.px("high", b.high.get());
            o.px("low", b.low.get());
            o.px("close", b.close.get());
            o.qty("volume", b.volume.get());
        }
        BodyRef::Statistic(st) => {
            o.u64("stat_type", u64::from(st.stat_type.to_native()));
            o.px("px", st.px.get());
            let q = st.qty.get();
            if q.raw() == i64::MAX {
                o.raw("qty", b"null");
            } else {
                o.qty("qty", q);
            }
            o.u64("action", u64::from(st.action));
        }
        BodyRef::Imbalance(im) => {
            o.str("side", book_side(im.side.get()));
            o.qty("paired_qty", im.paired_qty.get());
            o.qty("imbalance_qty", im.imbalance_qty.get());
            o.px("ref_px", im.ref_px.get());
            o.px("near_px", im.near_px.get());
            o.px("far_px", im.far_px.get());
            let ct = [im.cross_type];
            o.str("cross_type", ascii(&ct));
        }
        BodyRef::OrderUpdate(u) => {
            o.str("order_id", ascii(&u.order_id));
            o.str("status", order_status(u.status));
            o.str("side", u.side.get().as_str());
            o.px("px", u.px.get());
            o.qty("qty", u.qty.get());
            o.qty("filled_qty", u.filled_qty.get());
        }
    }
    if rec.flags() & FLAG_CONFLATED != 0 {
        o.raw("conflated", b"true");
    }
    out.push(b'}');
}

/// Spelling of a book side.
pub const fn book_side(s: Side) -> &'static str {
    match s {
        Side::Buy => "bid",
        Side::Sell => "ask",
        Side::None => "none",
    }
}

/// Spelling of an [`crate::OrderUpdate`] status.
pub const fn order_status(s: u8) -> &'static str {
    match s {
        1 => "new",
        2 => "partially_filled",
        3 => "filled",
        4 => "cancelled",
        5 => "rejected",
        _ => "unknown",
    }
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

/// Writes price levels as `[["px","qty"],...]` (the protocol's `bids` / `asks`).
pub fn write_levels(levels: impl IntoIterator<Item = (Px, Qty)>, out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, (p, q)) in levels.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"[\"");
        p.write_to(out);
        out.extend_from_slice(b"\",\"");
        q.write_to(out);
        out.extend_from_slice(b"\"]");
    }
    out.push(b']');
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
