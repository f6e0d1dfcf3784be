#!/usr/bin/env python3
"""Reference view of a cryptofeed capture (Coinbase Exchange, Coinbase Advanced Trade, Binance),
for ingest/tests/golden_crypto.rs.

Independent of our Rust code: Python's json and decimal modules and the zstandard package
(pinned in scripts/requirements-test.txt) parse the capture; the books are rebuilt here by the
venues' documented rules. Prints JSON lines, each with "i" = index of the received message:

  {"kind":"trade","i","sym","px","qty","side","id","ts"}   side = aggressor (buy/sell)
  {"kind":"ticker","i","sym","bid","ask","bid_qty","ask_qty","fresh","ref":[bid,bid_qty,ask,ask_qty]}
      a venue top-of-book message (Coinbase ticker, Binance bookTicker) and this script's own
      book at that point; "fresh" (Coinbase Exchange) = the ticker is at least as new as the
      last book update; Binance adds "at_diff": the ticker's update id equals the last diff's u
  {"kind":"book","sym","bids":[[px,qty],...],"asks":[...]}  final books, best first
  {"kind":"counts","messages":N,"types":{type: count}}  message types (Coinbase Exchange:
      "type"; Advanced Trade: "channel"; Binance: the event type "e", or "bookTicker")

Usage: ref_crypto.py coinbase|coinbase-advanced|binance PATH
"""
import calendar
import json
import sys
import time
from decimal import Decimal


def dec(s):
    d = Decimal(s)
    if d == 0:
        return "0"
    return format(d.normalize(), "f")


def iso_ns(s):
    # 2021-04-17T16:43:37.075687Z -> ns since the epoch, exactly.
    base, _, rest = s.partition(".")
    base = base.rstrip("Z")
    secs = calendar.timegm(time.strptime(base[:19], "%Y-%m-%dT%H:%M:%S"))
    frac = "".join(c for c in rest if c.isdigit())
    return secs * 1_000_000_000 + int((frac + "000000000")[:9])


def received(path):
    """Received messages of a capture, in order."""
    raw = open(path, "rb").read()
    if raw[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        text = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(raw)
        for line in text.decode().splitlines():
            o = json.loads(line)
            if o.get("t") == "recv":
                yield o["data"]
    else:
        for line in raw.decode().splitlines():
            if line and line[0].isdigit():
                yield line.split(": ", 1)[1]


class Book:
    def __init__(self):
        self.bids, self.asks = {}, {}

    def set(self, bid, px, qty):
        side = self.bids if bid else self.asks
        px, qty = Decimal(px), Decimal(qty)
        if qty == 0:
            side.pop(px, None)
        else:
            side[px] = qty

    def bbo(self):
        b = max(self.bids) if self.bids else None
        a = min(self.asks) if self.asks else None
        return [
            dec(b) if b is not None else None,
            dec(self.bids[b]) if b is not None else "0",
            dec(a) if a is not None else None,
            dec(self.asks[a]) if a is not None else "0",
        ]

    def crossed(self):
        return bool(self.bids) and bool(self.asks) and max(self.bids) >= min(self.asks)

    def dump(self, sym):
        return {
            "kind": "book",
            "sym": sym,
            "bids": [[dec(p), dec(self.bids[p])] for p in sorted(self.bids, reverse=True)],
            "asks": [[dec(p), dec(self.asks[p])] for p in sorted(self.asks)],
        }


def out(o):
    sys.stdout.write(json.dumps(o) + "\n")


def counts(path, name_of):
    types, n = {}, 0
    for payload in received(path):
        n += 1
        k = name_of(json.loads(payload))
        types[k] = types.get(k, 0) + 1
    out({"kind": "counts", "messages": n, "types": types})


def binance_type(m):
    d = m.get("data", m)
    if "e" in d:
        return d["e"]
    return "bookTicker" if m.get("stream", "").endswith("@bookTicker") else "other"


def coinbase_exchange(path):
    books, book_time = {}, {}
    for i, payload in enumerate(received(path)):
        m = json.loads(payload)
        t = m.get("type")
        p = m.get("product_id")
        if t == "snapshot":
            b = books[p] = Book()
            for px, q in m["bids"]:
                b.set(True, px, q)
            for px, q in m["asks"]:
                b.set(False, px, q)
            book_time[p] = 0
        elif t == "l2update" and p in books:
            for s, px, q in m["changes"]:
                books[p].set(s == "buy", px, q)
            book_time[p] = iso_ns(m["time"])
            assert not books[p].crossed(), f"reference book of {p} crossed at message {i}"
        elif t == "match":
            # "side" is the maker order's side; the aggressor took the other side.
            out({"kind": "trade", "i": i, "sym": p, "px": dec(m["price"]), "qty": dec(m["size"]),
                 "side": "buy" if m["side"] == "sell" else "sell", "id": m["trade_id"], "ts": iso_ns(m["time"])})
        elif t == "ticker" and p in books:
            fresh = book_time.get(p, 0) != 0 and iso_ns(m["time"]) >= book_time[p]
            out({"kind": "ticker", "i": i, "sym": p, "bid": dec(m["best_bid"]), "ask": dec(m["best_ask"]),
                 "bid_qty": None, "ask_qty": None, "fresh": fresh, "ref": books[p].bbo()})
    for p in sorted(books):
        out(books[p].dump(p))


def coinbase_advanced(path):
    books = {}
    for i, payload in enumerate(received(path)):
        m = json.loads(payload)
        ch = m.get("channel")
        for e in m.get("events", []):
            if ch == "l2_data":
                p = e["product_id"]
                if e["type"] == "snapshot":
                    books[p] = Book()
                if p not in books:
                    continue
                for u in e["updates"]:
                    books[p].set(u["side"] == "bid", u["price_level"], u["new_quantity"])
                assert not books[p].crossed(), f"reference book of {p} crossed at message {i}"
            elif ch == "market_trades" and e.get("type") == "update":
                for t in reversed(e["trades"]):  # listed newest first
                    out({"kind": "trade", "i": i, "sym": t["product_id"], "px": dec(t["price"]),
                         "qty": dec(t["size"]), "side": "buy" if t["side"] == "SELL" else "sell",
                         "id": int(t["trade_id"]), "ts": iso_ns(t["time"])})
            elif ch == "ticker":
                for t in e["tickers"]:
                    p = t["product_id"]
                    if p in books:
                        out({"kind": "ticker", "i": i, "sym": p, "bid": dec(t["best_bid"]), "ask": dec(t["best_ask"]),
                             "bid_qty": dec(t["best_bid_quantity"]), "ask_qty": dec(t["best_ask_quantity"]),
                             "fresh": True, "ref": books[p].bbo()})
    for p in sorted(books):
        out(books[p].dump(p))


def binance(path):
    # No REST snapshot in the capture: the book holds the levels the diffs named (exact), and
    # nothing about levels never touched. A bookTicker is usually ahead of the 100 ms diffs; it
    # can be checked exactly only once the diff whose final id u equals its update id is
    # applied, so it is reported then, with "i" = that diff's message and "at_diff": true.
    books, last_u, pending = {}, {}, {}
    for i, payload in enumerate(received(path)):
        m = json.loads(payload)
        d = m.get("data", m)
        stream = m.get("stream", "")
        if d.get("e") == "depthUpdate":
            s = d["s"]
            if s in last_u and d["U"] != last_u[s] + 1:
                raise SystemExit(f"capture has an update-id gap in {s} at message {i}")
            last_u[s] = d["u"]
            b = books.setdefault(s, Book())
            for px, q in d["b"]:
                b.set(True, px, q)
            for px, q in d["a"]:
                b.set(False, px, q)
            keep = []
            for t in pending.get(s, []):
                if t["u"] == d["u"]:
                    bid, ask = Decimal(t["bid"]), Decimal(t["ask"])
                    ok = (b.bids.get(bid, Decimal(t["bid_qty"])) == Decimal(t["bid_qty"])
                          and all(p <= bid for p in b.bids)
                          and b.asks.get(ask, Decimal(t["ask_qty"])) == Decimal(t["ask_qty"])
                          and all(p >= ask for p in b.asks))
                    out(dict(t, i=i, at_diff=True, ok=ok, ref=b.bbo()))
                elif t["u"] > d["u"]:
                    keep.append(t)
                else:
                    out(dict(t, at_diff=False))
            pending[s] = keep
        elif d.get("e") == "aggTrade":
            out({"kind": "trade", "i": i, "sym": d["s"], "px": dec(d["p"]), "qty": dec(d["q"]),
                 "side": "sell" if d["m"] else "buy", "id": d["a"], "ts": d["T"] * 1_000_000})
        elif stream.endswith("@bookTicker"):
            s = d["s"]
            pending.setdefault(s, []).append(
                {"kind": "ticker", "i": i, "sym": s, "u": d["u"], "bid": dec(d["b"]), "ask": dec(d["a"]),
                 "bid_qty": dec(d["B"]), "ask_qty": dec(d["A"]), "fresh": True})
    for s in sorted(pending):
        for t in pending[s]:
            out(dict(t, at_diff=False))
    for s in sorted(books):
        out(books[s].dump(s))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    fmt, path = sys.argv[1], sys.argv[2]
    {"coinbase": coinbase_exchange, "coinbase-advanced": coinbase_advanced, "binance": binance}[fmt](path)
    counts(path, {"coinbase": lambda m: m["type"], "coinbase-advanced": lambda m: m["channel"],
                  "binance": binance_type}[fmt])
