#!/usr/bin/env python3
"""Third-party view of ITCH 5.0 captures, for ingest/tests/golden_itch.rs.

Prints JSON lines computed by independent parsers, never by tickmesh:
  messages FILE        every message of a length-prefixed ITCH file, as itchfeed decodes it
  book FILE            after every message of the file: the price levels it touched, the
                       best bid/offer and the live order count, from a book rebuilt here out
                       of itchfeed's messages; then the final book
  pcap FILE...         every ITCH message in MoldUDP64 datagrams of pcaps, walked with dpkt
                       (Ethernet/VLAN/IPv4/UDP), a MoldUDP64 header walk, then itchfeed
  midnights FROM TO    midnight America/New_York of every date FROM..TO (YYYY-MM-DD) as ns
                       since the Unix epoch, from the system time-zone database (zoneinfo)

Message fields use itchfeed's attribute names and raw values: integers as on the wire
(prices in their implied-decimal units), alpha fields as their exact bytes (latin-1 text,
padding kept). itchfeed's pure-Python parser is used (ITCH_NO_CPP=1): itchcpp, which it
would otherwise load, is the benchmark's subject, not a reference.
"""

import os
import sys

os.environ["ITCH_NO_CPP"] = "1"

import datetime  # noqa: E402
import json  # noqa: E402
import struct  # noqa: E402
import zoneinfo  # noqa: E402

import dpkt  # noqa: E402
from itch._backend import USING_CPP_BACKEND  # noqa: E402
from itch.parser import MessageParser  # noqa: E402

assert not USING_CPP_BACKEND, "itchfeed must run its own Python parser here"


def fields(msg):
    """A message's decoded fields, itchfeed's names, raw values."""
    out = {"type": msg.message_type.decode("latin-1")}
    for k, v in sorted(vars(msg).items()):
        out[k] = v.decode("latin-1") if isinstance(v, bytes) else v
    return out


def emit(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")


def parse_file(path):
    with open(path, "rb") as f:
        yield from MessageParser().parse_file(f)


def cmd_messages(path):
    for msg in parse_file(path):
        emit(fields(msg))


class Book:
    """Orders by reference number, aggregated into levels: what the ITCH spec describes."""

    def __init__(self):
        self.orders = {}  # ref -> [side, price, shares]
        self.levels = {"B": {}, "S": {}}  # price -> [shares, orders]

    def level(self, side, price):
        q, n = self.levels[side].get(price, (0, 0))
        return [side, price, q, n]

    def _adjust(self, side, price, dq, dn):
        q, n = self.levels[side].get(price, (0, 0))
        q, n = q + dq, n + dn
        if q <= 0:
            self.levels[side].pop(price, None)
        else:
            self.levels[side][price] = (q, n)

    def add(self, ref, side, price, shares):
        self.orders[ref] = [side, price, shares]
        self._adjust(side, price, shares, 1)
        return [self.level(side, price)]

    def reduce(self, ref, shares):
        side, price, left = self.orders[ref]
        take = min(shares, left)
        if left - take == 0:
            del self.orders[ref]
            self._adjust(side, price, -take, -1)
        else:
            self.orders[ref][2] = left - take
            self._adjust(side, price, -take, 0)
        return [self.level(side, price)]

    def delete(self, ref):
        side, price, left = self.orders.pop(ref)
        self._adjust(side, price, -left, -1)
        return [self.level(side, price)]

    def replace(self, ref, new_ref, price, shares):
        side, old_price, _ = self.orders[ref]
        self.delete(ref)
        self.add(new_ref, side, price, shares)
        if old_price == price:
            return [self.level(side, price)]
        return [self.level(side, old_price), self.level(side, price)]

    def best(self, side):
        lv = self.levels[side]
        if not lv:
            return [None, 0, 0]
        p = max(lv) if side == "B" else min(lv)
        return [p, lv[p][0], lv[p][1]]

    def sorted_levels(self, side):
        lv = self.levels[side]
        return [[p, lv[p][0], lv[p][1]] for p in sorted(lv, reverse=(side == "B"))]


def cmd_book(path):
    books = {}
    n = 0
    for msg in parse_file(path):
        t = msg.message_type
        rec = {"i": n, "type": t.decode("latin-1"), "locate": msg.stock_locate}
        n += 1
        book = books.setdefault(msg.stock_locate, Book())
        ref = getattr(msg, "order_reference_number", None)
        if t in (b"E", b"C", b"X", b"D", b"U"):
            if ref not in book.orders:
                rec["unknown_order"] = ref
                emit(rec)
                continue
            side, price, left = book.orders[ref]
            rec["order"] = [side, price, left]
        if t in (b"A", b"F"):
            rec["levels"] = book.add(ref, msg.buy_sell_indicator.decode(), msg.price, msg.shares)
        elif t in (b"E", b"C"):
            rec["levels"] = book.reduce(ref, msg.executed_shares)
        elif t == b"X":
            rec["levels"] = book.reduce(ref, msg.cancelled_shares)
        elif t == b"D":
            rec["levels"] = book.delete(ref)
        elif t == b"U":
            rec["levels"] = book.replace(ref, msg.new_order_reference_number, msg.price, msg.shares)
        else:
            rec["levels"] = []
        rec["bbo"] = book.best("B") + book.best("S")
        rec["orders"] = len(book.orders)
        emit(rec)
    for locate, book in sorted(books.items()):
        emit(
            {
                "final": locate,
                "bids": book.sorted_levels("B"),
                "asks": book.sorted_levels("S"),
                "orders": len(book.orders),
            }
        )


def cmd_pcap(paths):
    parser = MessageParser()
    for path in paths:
        with open(path, "rb") as f:
            for pkt_index, (ts, frame) in enumerate(dpkt.pcap.Reader(f)):
                eth = dpkt.ethernet.Ethernet(frame)
                ip = eth.data
                if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.udp.UDP):
                    continue
                payload = bytes(ip.data.data)
                session, seq, count = struct.unpack("!10sQH", payload[:20])
                pos = 20
                if count == 0xFFFF:
                    count = 0
                for k in range(count):
                    (length,) = struct.unpack("!H", payload[pos : pos + 2])
                    raw = payload[pos + 2 : pos + 2 + length]
                    pos += 2 + length
                    rec = fields(parser.get_message_type(raw))
                    rec["file"] = os.path.basename(path)
                    rec["packet"] = pkt_index
                    rec["capture_ts"] = str(ts)
                    rec["session"] = session.decode("latin-1")
                    rec["seq"] = seq + k
                    emit(rec)
                if pos != len(payload):
                    sys.exit(f"{path} packet {pkt_index}: {len(payload) - pos} bytes after the messages")


def cmd_midnights(first, last):
    ny = zoneinfo.ZoneInfo("America/New_York")
    d = datetime.date.fromisoformat(first)
    end = datetime.date.fromisoformat(last)
    while d <= end:
        midnight = datetime.datetime(d.year, d.month, d.day, tzinfo=ny)
        emit([d.isoformat(), int(midnight.timestamp()) * 1_000_000_000])
        d += datetime.timedelta(days=1)


def main(argv):
    if len(argv) >= 2 and argv[0] == "messages":
        cmd_messages(argv[1])
    elif len(argv) >= 2 and argv[0] == "book":
        cmd_book(argv[1])
    elif len(argv) >= 2 and argv[0] == "pcap":
        cmd_pcap(argv[1:])
    elif len(argv) == 3 and argv[0] == "midnights":
        cmd_midnights(argv[1], argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
