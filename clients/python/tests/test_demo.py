"""The client against a real three-region demo: SIGKILL the region it is on; it resumes on
the next region and, over the whole run, receives the same records as a reference client
on another region, each exactly once.

Needs the tickmesh binary: $TICKMESH_BIN, else <repo>/target/debug/tickmesh. Without it
the test is skipped, unless TICKMESH_REQUIRE_DEMO=1 (set by tests/python_package.rs).
"""

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import tempfile
import time

import pytest

from tickmesh_client import Client, Connected, Disconnected, Record

REPO = pathlib.Path(__file__).resolve().parents[3]


def binary():
    b = os.environ.get("TICKMESH_BIN") or str(REPO / "target" / "debug" / "tickmesh")
    if not os.path.exists(b):
        if os.environ.get("TICKMESH_REQUIRE_DEMO") == "1":
            pytest.fail(f"{b} is missing; build it with `cargo build` or set TICKMESH_BIN")
        pytest.skip(f"{b} is missing; build it with `cargo build` or set TICKMESH_BIN")
    return b


@pytest.fixture
def demo():
    state = tempfile.TemporaryDirectory()
    p = subprocess.Popen([binary(), "demo", "--json", "--port-base", "0", "--feed", "synthetic", "--rate", "300",
                          "--state-dir", state.name], stdout=subprocess.PIPE, text=True)
    regions, tokens = [], {}
    deadline = time.monotonic() + 90
    try:
        for line in p.stdout:
            ev = json.loads(line)
            if ev["event"] == "region_up":
                regions.append(ev)
            elif ev["event"] == "tokens":
                tokens = ev
            elif ev["event"] == "ready":
                break
            assert time.monotonic() < deadline, "demo not ready within 90 s"
        assert len(regions) == 3, f"demo announced {regions}"
        yield regions, tokens
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        state.cleanup()


async def gather(client, until, seen, events):
    while time.monotonic() < until:
        try:
            ev = await asyncio.wait_for(client.next(), max(until - time.monotonic(), 0.01))
        except asyncio.TimeoutError:
            break
        if isinstance(ev, Record):
            seen.setdefault(ev.src, []).append(ev.seq)
        else:
            events.append(ev)


def test_sigkill_of_the_region_loses_and_duplicates_nothing(demo):
    regions, tokens = demo
    a, c = regions[0], regions[2]

    async def main():
        client = await Client([a["ws_url"]], token=tokens["user"], channels=["trades", "quotes"],
                              symbols=["*"]).connect()
        ref = await Client([c["ws_url"]], token=tokens["user"], channels=["trades", "quotes"],
                           symbols=["*"]).connect()
        got, want, events, ref_events = {}, {}, [], []
        t0 = time.monotonic()
        ref_task = asyncio.create_task(gather(ref, t0 + 7, want, ref_events))
        await gather(client, t0 + 2, got, events)
        os.kill(a["pid"], signal.SIGKILL)
        await gather(client, t0 + 7, got, events)
        await ref_task
        await client.close()
        await ref.close()
        return got, want, events, client.stats

    got, want, events, stats = asyncio.run(asyncio.wait_for(main(), 60))
    lost = [e for e in events if isinstance(e, Disconnected)]
    assert lost and lost[0].region == a["region"], events
    moved = [e for e in events if isinstance(e, Connected) and e.reconnect]
    assert moved and moved[0].region != a["region"] and moved[0].resumed, events
    assert stats.reconnects >= 1
    for src, seqs in got.items():
        assert seqs == sorted(set(seqs)), f"{src}: duplicates or disorder"
    assert set(got) == set(want), (sorted(got), sorted(want))
    for src in want:
        lo = max(got[src][0], want[src][0])
        hi = min(got[src][-1], want[src][-1])
        assert hi > lo, f"{src}: no overlap"
        mine = [s for s in got[src] if lo <= s <= hi]
        theirs = [s for s in want[src] if lo <= s <= hi]
        assert mine == theirs, f"{src}: {len(mine)} vs {len(theirs)} records in {lo}..={hi}; " \
                               f"missing {sorted(set(theirs) - set(mine))[:10]} extra {sorted(set(mine) - set(theirs))[:10]}"
