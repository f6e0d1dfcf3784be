"""The client against fake regions (websockets servers on 127.0.0.1:0) following scripts."""

import asyncio
import json

import pytest
from websockets.asyncio.server import serve

from tickmesh_client import (Client, ClientError, Connected, Disconnected, Gap, Record, RefusedError,
                             Snapshot, Tracker, UnreachableError)


def hello(region, hb_ms, regions):
    return {"type": "hello", "protocol": 1, "region": region, "session": f"{region}-1", "heartbeat_ms": hb_ms,
            "regions": [{"region": r, "ws_url": u} for r, u in regions]}


def trade(src, seq):
    return {"type": "trade", "src": src, "seq": seq, "sym": "AAPL", "ts": 1, "ts_ingest": 2, "px": "1.5",
            "qty": "2", "side": "buy"}


async def handshake(ws, hello_msg):
    await ws.send(json.dumps(hello_msg))
    req = json.loads(await ws.recv())
    assert req["op"] == "subscribe"
    await ws.send(json.dumps({"type": "subscribed", "id": req["id"], "channels": req["channels"],
                              "symbols": req["symbols"]}))
    return req


class Region:
    """A fake region running `script(ws)` on its first connection."""

    def __init__(self):
        self.script = None
        self.requests = []
        self.server = None
        self.url = None

    async def start(self):
        async def handler(ws):
            if self.script is not None:
                script, self.script = self.script, None
                await script(ws)
        self.server = await serve(handler, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/v1/ws"
        return self

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()


async def collect(client, n):
    recs, other = [], []
    while len(recs) < n:
        ev = await asyncio.wait_for(client.next(), 20)
        (recs if isinstance(ev, Record) else other).append(ev)
    return recs, other


def run(coro):
    asyncio.run(asyncio.wait_for(coro, 60))


def test_tracker_dedupes_and_trusts_heartbeats_only_after_subscribing():
    from collections import deque
    t = Tracker(0.0, {"A": 3})
    out = deque()
    t.on_connect(0.0, "r1")
    t.on_text(0.0, json.dumps({"type": "heartbeat", "ts": 1, "positions": {"A": 9}}), out)
    assert t.positions["A"] == 3
    t.on_subscribed()
    lines = "\n".join(json.dumps(m) for m in [trade("A", 3), trade("A", 4), trade("A", 4),
                                              {"type": "book_snapshot", "src": "A", "seq": 4, "sym": "AAPL",
                                               "ts": 1, "bids": [], "asks": []},
                                              {"type": "gap", "src": "A", "from": 5, "to": 6,
                                               "reason": "slow_consumer"}])
    t.on_text(1.0, lines, out)
    evs = list(out)
    assert [type(e) for e in evs] == [Record, Snapshot, Gap]
    assert evs[0].seq == 4 and t.stats.duplicates_dropped == 2
    assert t.deadline() == pytest.approx(1.0 + 3.0)
    with pytest.raises(ClientError):
        t.on_text(0.0, "not json", out)


def test_binary_records_are_read_from_the_header():
    import struct
    from collections import deque
    t = Tracker(0.0)
    out = deque()
    rec = bytearray(76 + 25)
    rec[0], rec[1] = 1, 1
    struct.pack_into("<H", rec, 4, 25)
    rec[12:12 + 8] = b"SYN.USE1"
    struct.pack_into("<QQQ", rec, 28, 42, 5, 6)
    rec[52:56] = b"AAPL"
    frame = struct.pack("<I", len(rec)) + bytes(rec)
    t.on_binary(0.0, frame + frame, out)
    assert len(out) == 1 and out[0].msg["type"] == "trade" and out[0].src == "SYN.USE1" and out[0].seq == 42
    assert t.stats.duplicates_dropped == 1


def test_a_closed_region_is_left_for_the_next_with_resume_and_no_duplicate():
    async def main():
        a, b = await Region().start(), await Region().start()
        lst = [("r-a", a.url), ("r-b", b.url)]

        async def script_a(ws):
            req = await handshake(ws, hello("r-a", 1000, lst))
            assert "resume" not in req
            for s in range(1, 6):
                await ws.send(json.dumps(trade("S", s)))
            ws.transport.abort()  # what a killed process looks like

        async def script_b(ws):
            req = await handshake(ws, hello("r-b", 1000, lst[::-1]))
            b.requests.append(req)
            for s in range(4, 9):
                await ws.send(json.dumps(trade("S", s)))
            await ws.wait_closed()

        a.script, b.script = script_a, script_b
        c = await Client([a.url, b.url], token="t").connect()
        recs, other = await collect(c, 8)
        assert [r.seq for r in recs] == list(range(1, 9))
        assert recs[4].region == "r-a" and recs[5].region == "r-b"
        assert b.requests[0]["resume"] == {"S": 5}
        assert isinstance(other[0], Connected) and not other[0].reconnect
        assert any(isinstance(e, Disconnected) and e.region == "r-a" for e in other)
        assert any(isinstance(e, Connected) and e.region == "r-b" and e.resumed for e in other)
        assert (c.stats.records, c.stats.duplicates_dropped, c.stats.reconnects) == (8, 2, 1)
        await c.close()
        await a.stop()
        await b.stop()
    run(main())


def test_three_missed_heartbeats_count_as_loss():
    async def main():
        a, b = await Region().start(), await Region().start()
        lst = [("r-a", a.url), ("r-b", b.url)]
        hold = asyncio.Event()

        async def script_a(ws):
            await handshake(ws, hello("r-a", 100, lst))
            for s in range(1, 4):
                await ws.send(json.dumps(trade("S", s)))
            await hold.wait()  # open but silent

        async def script_b(ws):
            b.requests.append(await handshake(ws, hello("r-b", 100, lst)))
            await ws.send(json.dumps(trade("S", 4)))
            await ws.wait_closed()

        a.script, b.script = script_a, script_b
        c = await Client([a.url, b.url], token="t").connect()
        recs, other = await collect(c, 4)
        assert [r.seq for r in recs] == [1, 2, 3, 4]
        assert [e.cause for e in other if isinstance(e, Disconnected)] == ["silent"]
        assert b.requests[0]["resume"] == {"S": 3}
        hold.set()
        await c.close()
        await a.stop()
        await b.stop()
    run(main())


def test_a_server_reconnect_is_followed_and_heartbeat_positions_resumed():
    async def main():
        a, b, cc = await Region().start(), await Region().start(), await Region().start()
        lst = [("r-a", a.url), ("r-b", b.url), ("r-c", cc.url)]

        async def script_a(ws):
            await handshake(ws, hello("r-a", 1000, lst))
            await ws.send(json.dumps(trade("S", 1)))
            await ws.send(json.dumps({"type": "heartbeat", "ts": 1, "positions": {"S": 7, "T": 2}}))
            await ws.send(json.dumps({"type": "reconnect", "reason": "drain", "region": "r-c", "ws_url": cc.url}))
            await ws.wait_closed()

        async def script_c(ws):
            cc.requests.append(await handshake(ws, hello("r-c", 1000, lst)))
            await ws.send(json.dumps(trade("S", 7)))
            await ws.send(json.dumps(trade("S", 8)))
            await ws.wait_closed()

        a.script, cc.script = script_a, script_c
        c = await Client([a.url], token="t").connect()
        recs, other = await collect(c, 2)
        assert [(r.seq, r.region) for r in recs] == [(1, "r-a"), (8, "r-c")]
        assert cc.requests[0]["resume"] == {"S": 7, "T": 2}
        assert [e.cause for e in other if isinstance(e, Disconnected)] == ["reconnect"]
        assert not b.requests, "the drained region's pick wins over the failover list"
        await c.close()
        for r in (a, b, cc):
            await r.stop()
    run(main())


def test_refused_and_unreachable_are_errors():
    async def main():
        a = await Region().start()

        async def script_a(ws):
            await ws.send(json.dumps(hello("r-a", 1000, [("r-a", a.url)])))
            req = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "error", "id": req["id"], "code": "forbidden", "message": "no"}))
            await ws.wait_closed()

        a.script = script_a
        with pytest.raises(RefusedError) as e:
            await Client([a.url], token="t").connect()
        assert e.value.code == "forbidden"
        url = a.url
        await a.stop()
        with pytest.raises(UnreachableError) as e:
            await Client([url], token="t").connect()
        assert url in str(e.value)
    run(main())
    with pytest.raises(ClientError):
        Client([])
    with pytest.raises(ClientError):
        Client(["http://x"])


def test_a_route_answer_picks_the_region_and_its_alternates():
    async def main():
        b = await Region().start()
        down = await Region().start()
        down_url = down.url
        await down.stop()

        async def script_b(ws):
            await handshake(ws, hello("r-b", 1000, [("r-b", b.url)]))
            await ws.send(json.dumps(trade("S", 1)))
            await ws.wait_closed()

        b.script = script_b
        body = json.dumps({"region": "r-a", "ws_url": down_url, "http_url": "http://x",
                           "alternates": [{"region": "r-b", "ws_url": b.url, "http_url": "http://y"}]}).encode()

        async def http(reader, writer):
            line = await reader.readline()
            assert line.startswith(b"GET /v1/route?geo=DE HTTP/1.1"), line
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
            writer.close()

        srv = await asyncio.start_server(http, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        c = await Client(route_url=f"http://127.0.0.1:{port}/v1/route?geo=DE", token="t").connect()
        recs, _ = await collect(c, 1)
        assert recs[0].region == "r-b"
        await c.close()
        srv.close()
        await b.stop()
    run(main())
