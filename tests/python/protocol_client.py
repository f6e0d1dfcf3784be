"""PROTOCOL.md's examples, driven by a third-party client (the `websockets` package).

Run by tests/python_client.rs against a running region:
    protocol_client.py WS_URL USER_TOKEN OTHER_HOME_TOKEN RESTRICTED_TOKEN
Exits non-zero with a message on the first broken expectation.
"""

import asyncio
import json
import struct
import sys

import websockets

WS_URL, TOKEN, OTHER_HOME_TOKEN, RESTRICTED_TOKEN = sys.argv[1:5]
HEADER_LEN = 76


def url(token, query=""):
    return f"{WS_URL}?token={token}{query}"


async def recv_json(ws, timeout=5.0):
    while True:
        msg = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(msg, str):
            return json.loads(msg)


async def reply_to(ws, req):
    await ws.send(json.dumps(req))
    while True:
        m = await recv_json(ws)
        if m.get("id") == req.get("id") or (m["type"] == "error" and "id" not in m):
            return m


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


async def examples():
    async with websockets.connect(url(TOKEN), max_size=None) as ws:
        hello = await recv_json(ws)
        check(hello["type"] == "hello" and hello["protocol"] == 1, f"hello: {hello}")
        check(hello["regions"][0]["region"] == hello["region"], "this region first in hello.regions")
        r = await reply_to(ws, {"op": "subscribe", "id": 1, "channels": ["trades", "quotes", "book"],
                                "symbols": ["AAPL", "MSFT"], "depth": 10, "resume": {}, "slow": "conflate"})
        check(r == {"type": "subscribed", "id": 1, "channels": ["trades", "quotes", "book"],
                    "symbols": ["AAPL", "MSFT"]}, f"subscribed echoes channels and symbols: {r}")
        snap = await recv_json(ws)
        while snap["type"] != "book_snapshot":
            snap = await recv_json(ws)
        check(snap["sym"] in ("AAPL", "MSFT") and isinstance(snap["bids"], list), f"book_snapshot: {snap}")
        r = await reply_to(ws, {"op": "subscribe", "id": 1, "channels": ["tradez"], "symbols": ["AAPL"]})
        check(r == {"type": "error", "id": 1, "code": "unknown_channel",
                    "message": "channel 'tradez' does not exist; use one of trades, quotes, book, status, orders"},
              f"unknown_channel exactly as PROTOCOL.md: {r}")
        r = await reply_to(ws, {"op": "ping", "id": 3})
        check(r["type"] == "pong" and r["id"] == 3 and isinstance(r["ts"], int), f"pong: {r}")
        types = set()
        for _ in range(400):
            m = await recv_json(ws)
            types.add(m["type"])
            if m["type"] in ("trade", "quote"):
                check(m["sym"] in ("AAPL", "MSFT"), f"only subscribed symbols: {m}")
                check(isinstance(m["seq"], int) and isinstance(m["ts_ingest"], int), f"ints: {m}")
                for k in ("px", "qty", "bid_px", "ask_px"):
                    if k in m and m[k] is not None:
                        check(isinstance(m[k], str), f"{k} is a decimal string: {m}")
            if m["type"] == "trade":
                check(m["side"] in ("buy", "sell", "none"), f"side: {m}")
            if {"trade", "quote", "book"} <= types:
                break
        check({"trade", "quote", "book"} <= types, f"data types seen: {types}")
        r = await reply_to(ws, {"op": "unsubscribe", "id": 2, "channels": ["book"], "symbols": ["AAPL"]})
        check(r == {"type": "unsubscribed", "id": 2, "channels": ["book"], "symbols": ["AAPL"]}, f"unsubscribed: {r}")
        await ws.send("this is not json")
        r = await recv_json(ws)
        while r["type"] != "error":
            r = await recv_json(ws)
        check(r["code"] == "bad_request" and "id" not in r, f"bad_request without id: {r}")
        r = await reply_to(ws, {"op": "fly", "id": 9})
        check(r["code"] == "unknown_op", f"unknown_op: {r}")
        r = await reply_to(ws, {"op": "subscribe", "id": 10, "channels": ["trades"], "symbols": ["ZZZZ"]})
        check(r["code"] == "unknown_symbol", f"unknown_symbol: {r}")
        r = await reply_to(ws, {"op": "subscribe", "id": 11, "channels": ["trades"], "symbols": ["ZZ*"]})
        check(r["type"] == "subscribed", f"a pattern never gets unknown_symbol: {r}")
        hb = await recv_json(ws, 3)
        while hb["type"] != "heartbeat":
            hb = await recv_json(ws, 3)
        check(isinstance(hb["positions"], dict) and all(isinstance(v, int) for v in hb["positions"].values()),
              f"heartbeat positions: {hb}")


async def entitlements():
    async with websockets.connect(url(RESTRICTED_TOKEN)) as ws:
        await recv_json(ws)
        r = await reply_to(ws, {"op": "subscribe", "id": 1, "channels": ["trades"], "symbols": ["MSFT"]})
        check(r["type"] == "error" and r["code"] == "forbidden", f"forbidden symbol: {r}")
        r = await reply_to(ws, {"op": "subscribe", "id": 2, "channels": ["trades"], "symbols": ["AAPL"]})
        check(r["type"] == "subscribed", f"granted symbol: {r}")
    async with websockets.connect(url(OTHER_HOME_TOKEN)) as ws:
        await recv_json(ws)
        r = await reply_to(ws, {"op": "subscribe", "id": 1, "channels": ["orders", "trades"], "symbols": "*"})
        check(r["type"] == "error" and r["code"] == "home_region_unavailable", f"orders outside home: {r}")
    try:
        async with websockets.connect(url("nope.nope.nope")):
            raise SystemExit("FAILED: a bad token was accepted")
    except websockets.exceptions.InvalidStatus as e:
        check(e.response.status_code == 401, f"401 before the upgrade: {e.response.status_code}")
        body = json.loads(e.response.body)
        check(body["error"]["code"] == "bad_token", f"error body: {body}")


async def binary_encoding():
    async with websockets.connect(url(TOKEN, "&encoding=binary")) as ws:
        await recv_json(ws)
        await ws.send(json.dumps({"op": "subscribe", "id": 1, "channels": ["trades", "quotes"], "symbols": "*"}))
        records = 0
        last = {}
        while records < 200:
            msg = await asyncio.wait_for(ws.recv(), 5)
            if isinstance(msg, str):
                continue
            off = 0
            while off < len(msg):
                (n,) = struct.unpack_from("<I", msg, off)
                rec = msg[off + 4: off + 4 + n]
                off += 4 + n
                version, kind = rec[0], rec[1]
                (body_len,) = struct.unpack_from("<H", rec, 4)
                check(version == 1 and kind in (1, 2), f"record version/kind {version}/{kind}")
                check(len(rec) == HEADER_LEN + body_len, "length prefix matches header + body")
                src = rec[12:28].rstrip(b"\0").decode()
                (seq,) = struct.unpack_from("<Q", rec, 28)
                check(seq > last.get(src, 0), f"seq increases per source: {src} {seq}")
                last[src] = seq
                records += 1
            check(off == len(msg), "frame holds whole records")


async def limits():
    async with websockets.connect(url(TOKEN), max_size=None) as ws:
        await recv_json(ws)
        await ws.send("x" * (70 * 1024))
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        except websockets.exceptions.ConnectionClosed as e:
            check(e.rcvd is not None and e.rcvd.code == 1009, f"close 1009 on a message over 64 KiB: {e.rcvd}")
    async with websockets.connect(url(TOKEN)) as ws:
        await recv_json(ws)
        # Past the burst (50) but not twice it: refused with rate_limited, still open.
        for i in range(80):
            await ws.send(json.dumps({"op": "ping", "id": i}))
        pongs = limited = 0
        while pongs + limited < 80:
            m = await recv_json(ws)
            if m["type"] == "pong":
                pongs += 1
            elif m.get("code") == "rate_limited":
                limited += 1
        check(limited > 0 and pongs >= 50, f"rate_limited after the burst: {pongs} pongs, {limited} refused")
        # A flood that ignores the refusals is closed with 4029.
        try:
            for i in range(1000):
                await ws.send(json.dumps({"op": "ping", "id": i}))
            while True:
                await recv_json(ws)
        except websockets.exceptions.ConnectionClosed as e:
            check(e.rcvd is not None and e.rcvd.code == 4029, f"close 4029 for a request flood: {e.rcvd}")


async def main():
    await examples()
    await entitlements()
    await binary_encoding()
    await limits()
    print("ok")


asyncio.run(main())
