"""The client: a protocol tracker without I/O (`Tracker`) and an asyncio driver (`Client`).

Same behaviour as the Rust `tickmesh::client`:

* connects to the first reachable region of a list (given, or from ``GET /v1/route``) and
  subscribes;
* tracks a position per source from the records it delivers and from heartbeats that
  arrive after the subscription (they prove everything matching up to them was sent);
* notices loss at once on a close, a reset or a read error, and after three heartbeat
  intervals (``hello.heartbeat_ms``) of silence otherwise;
* reconnects to the next region of the latest ``hello`` failover list, subscribes with
  ``resume`` set to its positions, drops (and counts) any record at or below a delivered
  position, and follows a server ``reconnect`` (drain, shutdown, rebalance).

There is no background task: ``Client.next()`` reads, detects loss and reconnects inside
the call, so an application that stops reading back-pressures the server instead of
growing a buffer here.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, Iterable, List, Optional, Tuple, Union

import websockets
from websockets.asyncio.client import connect as ws_connect

DEFAULT_HEARTBEAT_S = 1.0
MISSED_HEARTBEATS = 3
HEADER_LEN = 76
_KIND_TYPES = {
    1: "trade", 2: "quote", 3: "book", 4: "order_add", 5: "order_modify", 6: "order_cancel",
    7: "order_execute", 8: "order_replace", 9: "status", 10: "instrument", 11: "bar",
    12: "statistic", 13: "imbalance", 14: "order",
}


class ClientError(Exception):
    """Something the application must act on (transient failures are handled inside)."""


class UnreachableError(ClientError):
    """No region could be reached (first connect: one pass; later: the reconnect timeout)."""


class UnauthorizedError(ClientError):
    """A region refused the token with HTTP 401; get a fresh token."""


class RefusedError(ClientError):
    """The subscription was refused (``forbidden``, ``unknown_symbol``...)."""

    def __init__(self, region: str, code: str, message: str):
        super().__init__(f"{region} refused the subscription: {code}: {message}")
        self.region, self.code, self.message = region, code, message


@dataclass
class Record:
    """A data record, delivered exactly once. ``msg`` is the PROTOCOL.md message."""
    src: str
    seq: int
    kind: str
    region: str
    msg: Dict[str, Any]


@dataclass
class Snapshot:
    """A ``book_snapshot``: state at ``seq``, not a record, never deduplicated."""
    src: str
    seq: int
    region: str
    msg: Dict[str, Any]


@dataclass
class Gap:
    """Records the server says it did not deliver (``first``..``last`` inclusive)."""
    src: str
    first: int
    last: int
    reason: str


@dataclass
class Connected:
    region: str
    ws_url: str
    session: str
    resumed: bool
    reconnect: bool


@dataclass
class Disconnected:
    """``cause`` is ``closed``, ``error``, ``silent``, ``reconnect`` or ``protocol``."""
    region: str
    cause: str
    code: Optional[int] = None
    detail: str = ""


@dataclass
class ServerError:
    id: Any
    code: str
    message: str


Event = Union[Record, Snapshot, Gap, Connected, Disconnected, ServerError]


@dataclass
class Stats:
    records: int = 0
    duplicates_dropped: int = 0
    reconnects: int = 0
    gaps: int = 0
    heartbeats: int = 0


@dataclass
class _Control:
    kind: str  # hello, subscribed, error, reconnect
    data: Dict[str, Any] = field(default_factory=dict)


class Tracker:
    """Positions per source, dedupe and liveness; no I/O, time passed in."""

    def __init__(self, now: float, resume: Optional[Dict[str, int]] = None):
        self.positions: Dict[str, int] = dict(resume or {})
        self.heartbeat_s = DEFAULT_HEARTBEAT_S
        self.last_rx = now
        self.subscribed = False
        self.region = ""
        self.stats = Stats()

    def on_connect(self, now: float, region: str) -> None:
        self.last_rx, self.subscribed, self.region = now, False, region

    def on_subscribed(self) -> None:
        self.subscribed = True

    def deadline(self) -> float:
        return self.last_rx + self.heartbeat_s * MISSED_HEARTBEATS

    def on_activity(self, now: float) -> None:
        self.last_rx = now

    def on_text(self, now: float, text: str, out: Deque[Event]) -> List[_Control]:
        self.last_rx = now
        controls = []
        for line in text.split("\n"):
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError as e:
                raise ClientError(f"server sent a message that is not JSON ({e}): {line[:200]}") from None
            c = self._on_message(msg, out)
            if c is not None:
                controls.append(c)
        return controls

    def on_binary(self, now: float, data: bytes, out: Deque[Event]) -> None:
        self.last_rx = now
        off = 0
        while off < len(data):
            if off + 4 > len(data):
                raise ClientError("binary frame ends inside a length prefix")
            (n,) = struct.unpack_from("<I", data, off)
            rec = data[off + 4: off + 4 + n]
            if n < HEADER_LEN or len(rec) != n:
                raise ClientError(f"binary record of length {n} is truncated or shorter than a header")
            off += 4 + n
            kind = rec[1]
            src = rec[12:28].rstrip(b"\0").decode("ascii", "replace")
            (seq, ts, ts_ingest) = struct.unpack_from("<QQQ", rec, 28)
            sym = rec[52:76].rstrip(b"\0").decode("ascii", "replace")
            msg = {"type": _KIND_TYPES.get(kind, f"kind_{kind}"), "src": src, "seq": seq, "sym": sym,
                   "ts": ts, "ts_ingest": ts_ingest, "raw": bytes(rec)}
            self._deliver(src, seq, msg, out)

    def _on_message(self, m: Dict[str, Any], out: Deque[Event]) -> Optional[_Control]:
        t = m.get("type")
        if t == "hello":
            self.heartbeat_s = max(int(m.get("heartbeat_ms") or 1000), 1) / 1000.0
            if m.get("region"):
                self.region = m["region"]
            return _Control("hello", m)
        if t == "heartbeat":
            self.stats.heartbeats += 1
            if self.subscribed:
                for src, seq in (m.get("positions") or {}).items():
                    if isinstance(seq, int) and seq > self.positions.get(src, 0):
                        self.positions[src] = seq
            return None
        if t == "subscribed":
            return _Control("subscribed", m)
        if t == "error":
            return _Control("error", m)
        if t == "reconnect":
            return _Control("reconnect", m)
        if t in ("unsubscribed", "pong"):
            return None
        if t == "gap":
            self.stats.gaps += 1
            out.append(Gap(m.get("src", ""), m.get("from", 0), m.get("to", 0), m.get("reason", "")))
            return None
        if t == "book_snapshot":
            out.append(Snapshot(m.get("src", ""), m.get("seq", 0), self.region, m))
            return None
        src, seq = m.get("src"), m.get("seq")
        if isinstance(src, str) and isinstance(seq, int):
            self._deliver(src, seq, m, out)
        return None

    def _deliver(self, src: str, seq: int, msg: Dict[str, Any], out: Deque[Event]) -> None:
        pos = self.positions.get(src)
        if pos is not None and seq <= pos:
            self.stats.duplicates_dropped += 1
            return
        self.positions[src] = seq
        self.stats.records += 1
        out.append(Record(src, seq, msg.get("type", ""), self.region, msg))


class _Transient(Exception):
    pass


class Client:
    """A market-data client; see the module docstring.

    ``regions``: WebSocket URLs in failover order (replaced by the ``hello`` list once
    connected), or ``route_url``: a region's ``/v1/route?geo=CC`` URL.
    """

    def __init__(self, regions: Optional[Iterable[str]] = None, *, route_url: Optional[str] = None,
                 token: Optional[str] = None, channels: Iterable[str] = ("trades",),
                 symbols: Iterable[str] = ("*",), encoding: str = "json", batch: bool = False,
                 depth: Optional[int] = None, slow: Optional[str] = None,
                 resume: Optional[Dict[str, int]] = None, connect_timeout: float = 3.0,
                 reconnect_timeout: float = 60.0):
        urls = list(regions or [])
        if not urls and not route_url:
            raise ClientError("no region to connect to; pass regions=[\"ws://host:port/v1/ws\", ...] or route_url=")
        for u in urls:
            if not u.startswith(("ws://", "wss://")):
                raise ClientError(f"region URL {u!r} is not a ws:// URL; use the ws_url of /v1/regions")
        if encoding not in ("json", "binary"):
            raise ClientError(f"encoding {encoding!r} does not exist; use json or binary")
        if slow not in (None, "conflate", "drop", "disconnect"):
            raise ClientError(f"slow {slow!r} does not exist; use conflate, drop or disconnect")
        self.channels, self.symbols = list(channels), list(symbols)
        if not self.channels or not self.symbols:
            raise ClientError("nothing to subscribe to; pass channels=[...] and symbols=[...] (or \"*\")")
        self.route_url, self.token = route_url, token
        self.encoding, self.batch, self.depth, self.slow = encoding, batch, depth, slow
        self.connect_timeout, self.reconnect_timeout = connect_timeout, reconnect_timeout
        self.regions: List[Tuple[str, str]] = [(u, u) for u in urls]  # (region, ws_url)
        self.tracker = Tracker(time.monotonic(), resume)
        self._ws = None
        self._current: Optional[Tuple[str, str]] = None
        self._redirect: Optional[Tuple[str, str]] = None
        self._pending: Deque[Event] = deque()
        self._next_id = 0
        self._connections = 0

    # -- public API ------------------------------------------------------------------

    @property
    def positions(self) -> Dict[str, int]:
        return self.tracker.positions

    @property
    def stats(self) -> Stats:
        return self.tracker.stats

    @property
    def region(self) -> Optional[str]:
        return self._current[0] if self._current else None

    async def connect(self) -> "Client":
        if self.route_url:
            routed = await asyncio.wait_for(_route(self.route_url), 5.0)
            for r in self.regions:
                if all(r[1] != x[1] for x in routed):
                    routed.append(r)
            self.regions = routed
        await self._establish(first=True)
        return self

    async def next(self) -> Event:
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._ws is None:
                await self._establish(first=False)
                continue
            timeout = max(self.tracker.deadline() - time.monotonic(), 0.0)
            try:
                msg = await asyncio.wait_for(self._ws.recv(), timeout)
            except asyncio.TimeoutError:
                await self._lose("silent", detail=f"no message for {self.tracker.heartbeat_s * MISSED_HEARTBEATS:.3f} s")
                continue
            except websockets.ConnectionClosed as e:
                code = e.rcvd.code if e.rcvd is not None else None
                await self._lose("closed" if e.rcvd is not None else "error", code=code, detail=str(e))
                continue
            except OSError as e:
                await self._lose("error", detail=str(e))
                continue
            await self._on_message(msg)

    def __aiter__(self):
        return self

    async def __anext__(self) -> Event:
        return await self.next()

    async def close(self) -> None:
        if self._ws is not None:
            ws, self._ws = self._ws, None
            try:
                await asyncio.wait_for(ws.close(), 0.5)
            except Exception:  # noqa: BLE001 - best effort goodbye
                pass

    # -- internals -------------------------------------------------------------------

    async def _on_message(self, msg) -> None:
        now = time.monotonic()
        try:
            if isinstance(msg, str):
                controls = self.tracker.on_text(now, msg, self._pending)
            else:
                self.tracker.on_binary(now, msg, self._pending)
                controls = []
        except ClientError as e:
            await self._lose("protocol", detail=str(e))
            return
        for c in controls:
            if c.kind == "reconnect":
                if c.data.get("ws_url"):
                    self._redirect = (c.data.get("region", ""), c.data["ws_url"])
                await self._lose("reconnect", detail=f"{c.data.get('reason', '')} to {c.data.get('region', '')}")
                return
            if c.kind == "error":
                self._pending.append(ServerError(c.data.get("id"), c.data.get("code", ""), c.data.get("message", "")))

    async def _lose(self, cause: str, code: Optional[int] = None, detail: str = "") -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                # A polite goodbye to a draining region; a dead one is just dropped.
                await asyncio.wait_for(ws.close(), 0.2 if cause == "reconnect" else 0.01)
            except Exception:  # noqa: BLE001
                pass
        region = self._current[0] if self._current else ""
        self._pending.append(Disconnected(region, cause, code, detail))

    def _candidates(self) -> List[Tuple[str, str]]:
        out = [self._redirect] if self._redirect else []
        lst = self.regions
        at = None
        if self._current:
            for i, r in enumerate(lst):
                if r[1] == self._current[1] or r[0] == self._current[0]:
                    at = i
                    break
        ordered = lst if at is None else lst[at + 1:] + lst[:at + 1]
        for r in ordered:
            if all(r[1] != x[1] for x in out):
                out.append(r)
        return out

    async def _establish(self, first: bool) -> None:
        started = time.monotonic()
        backoff = 0.05
        while True:
            failures = []
            for cand in self._candidates():
                try:
                    await asyncio.wait_for(self._attempt(cand), self.connect_timeout)
                    self._redirect = None
                    return
                except (_Transient, OSError, asyncio.TimeoutError, websockets.WebSocketException) as e:
                    failures.append(f"{cand[1]}: {type(e).__name__}: {e}")
            self._redirect = None
            if first or time.monotonic() - started >= self.reconnect_timeout:
                raise UnreachableError("no region could be reached (" + "; ".join(failures)
                                       + "); check that the regions run and the URLs are right")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    def _url(self, ws_url: str) -> str:
        q = []
        if self.encoding == "binary":
            q.append("encoding=binary")
        if self.batch:
            q.append("batch=1")
        if not q:
            return ws_url
        return ws_url + ("&" if "?" in ws_url else "?") + "&".join(q)

    def _subscribe_request(self) -> Tuple[Dict[str, Any], bool]:
        self._next_id += 1
        as_list = lambda v: "*" if v == ["*"] else v  # noqa: E731
        req: Dict[str, Any] = {"op": "subscribe", "id": self._next_id,
                               "channels": as_list(self.channels), "symbols": as_list(self.symbols)}
        resumed = bool(self.tracker.positions)
        if resumed:
            req["resume"] = dict(self.tracker.positions)
        if self.depth is not None:
            req["depth"] = self.depth
        if self.slow is not None:
            req["slow"] = self.slow
        return req, resumed

    async def _attempt(self, cand: Tuple[str, str]) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            ws = await ws_connect(self._url(cand[1]), additional_headers=headers, max_size=None,
                                  ping_interval=None, open_timeout=None, close_timeout=0.2)
        except websockets.InvalidStatus as e:
            status = e.response.status_code
            body = (e.response.body or b"").decode("utf-8", "replace")
            if status == 401:
                try:
                    body = json.loads(body)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    pass
                raise UnauthorizedError(f"{cand[0]} refused the token: {body}; get a fresh token") from None
            raise _Transient(f"HTTP {status}: {body[:200]}") from None
        self.tracker.on_connect(time.monotonic(), cand[0])
        sub_id = None
        hello = None
        resumed = False
        try:
            while True:
                try:
                    msg = await ws.recv()
                except websockets.ConnectionClosed as e:
                    raise _Transient(f"closed during the handshake: {e}") from None
                now = time.monotonic()
                if isinstance(msg, str):
                    try:
                        controls = self.tracker.on_text(now, msg, self._pending)
                    except ClientError as e:
                        raise _Transient(str(e)) from None
                else:
                    self.tracker.on_binary(now, msg, self._pending)
                    controls = []
                for c in controls:
                    if c.kind == "hello":
                        hello = c.data
                        lst = [(r["region"], r["ws_url"]) for r in hello.get("regions") or []
                               if "region" in r and "ws_url" in r]
                        if lst:
                            self.regions = lst
                        req, resumed = self._subscribe_request()
                        sub_id = req["id"]
                        await ws.send(json.dumps(req))
                    elif c.kind == "subscribed" and sub_id is not None and c.data.get("id") == sub_id:
                        if hello is None:
                            raise _Transient("subscribed before hello")
                        self.tracker.on_subscribed()
                        self._connections += 1
                        reconnect = self._connections > 1
                        if reconnect:
                            self.tracker.stats.reconnects += 1
                        region = hello.get("region", cand[0])
                        self._current = (region, cand[1])
                        self._pending.appendleft(
                            Connected(region, cand[1], hello.get("session", ""), resumed, reconnect))
                        self._ws, ws = ws, None
                        return
                    elif c.kind == "error" and sub_id is not None and c.data.get("id") == sub_id:
                        raise RefusedError(hello.get("region", cand[0]) if hello else cand[0],
                                           c.data.get("code", ""), c.data.get("message", ""))
                    elif c.kind == "reconnect":
                        raise _Transient(f"sent on to {c.data.get('region')} during the handshake")
        finally:
            if ws is not None:
                try:
                    await asyncio.wait_for(ws.close(), 0.2)
                except Exception:  # noqa: BLE001
                    pass


async def _route(url: str) -> List[Tuple[str, str]]:
    """``GET`` a ``/v1/route`` URL (plain HTTP/1.1, no extra dependency)."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http":
        raise ClientError(f"route {url}: only http:// route URLs are supported")
    reader, writer = await asyncio.open_connection(u.hostname, u.port or 80)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    if b"chunked" in head.lower():
        out, rest = b"", body
        while True:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size.split(b";")[0] or b"0", 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    parts = status_line.split()
    if len(parts) < 2 or parts[1] != "200":
        raise ClientError(f"route {url}: {status_line}: {body[:200]!r}; check the URL or pass regions=")
    v = json.loads(body)
    out = [(v["region"], v["ws_url"])]
    out += [(a["region"], a["ws_url"]) for a in v.get("alternates") or [] if "region" in a and "ws_url" in a]
    return out
