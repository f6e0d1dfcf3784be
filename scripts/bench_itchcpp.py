#!/usr/bin/env python3
"""itchcpp (NASDAQ ITCH 5.0 in C++, Python bindings) on the same bytes as tickmesh's
criterion bench `ingest/benches/itch.rs`, for a side-by-side messages/s figure.

Usage: bench_itchcpp.py [FILE] [--seconds S] [--json]
FILE defaults to <repo>/../shared/data/itch/locate-13-10k.bin (2-byte length-prefixed).
Three measurements, each repeated for at least S seconds (default 2); the median and best
run are reported (criterion reports a mean with its interval, closest to the median):
  parse_messages   C++ parse, one Python message object and callback per message
  parse_stream     C++ parse through a Python iterator of message objects
  book             BookManager.process_stream: C++ parse and order book, no Python per message
Run it with the test venv's Python (<repo>/.venv/bin/python, made by scripts/install-deps.sh).
"""

import collections
import json
import os
import statistics
import sys
import time

try:
    import itchcpp
    from itchcpp import MessageParser
    from itchcpp.book import BookManager
except ImportError as e:  # pragma: no cover - environment problem, say what to do
    sys.exit(f"itchcpp is not importable ({e}); run scripts/install-deps.sh and use <repo>/.venv/bin/python")


def rates(fn, messages, seconds):
    """messages/s of each of repeated runs lasting at least `seconds` in total."""
    out = []
    start = time.perf_counter()
    while len(out) < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        out.append(messages / (time.perf_counter() - t0))
    return out


def main(argv):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(repo, "..", "shared", "data", "itch", "locate-13-10k.bin")
    seconds, as_json = 2.0, False
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--seconds":
            seconds = float(args.pop(0))
        elif a == "--json":
            as_json = True
        elif a in ("-h", "--help"):
            sys.exit(__doc__)
        else:
            path = a
    if not os.path.exists(path):
        print(f"note: {path} not found; the ITCH bench reads the shared capture in place, nothing measured")
        return
    with open(path, "rb") as f:
        data = f.read()

    parser = MessageParser()
    count = [0]

    def on_message(_msg):
        count[0] += 1

    parser.parse_messages(data, on_message)
    messages = count[0]

    def parse_messages():
        parser.parse_messages(data, on_message)

    def parse_stream():
        collections.deque(parser.parse_stream(data), maxlen=0)

    def book():
        bm = BookManager()
        bm.track_symbol("AAPL")
        bm.process_stream(data)

    results = {}
    for name, fn in (("parse_messages", parse_messages), ("parse_stream", parse_stream), ("book", book)):
        r = sorted(rates(fn, messages, seconds))
        results[name] = {"best_per_s": round(r[-1]), "median_per_s": round(statistics.median(r)), "runs": len(r)}
    version = getattr(itchcpp, "__version__", "?")
    if as_json:
        print(json.dumps({"tool": "itchcpp", "version": version, "file": path, "messages": messages, "results": results}))
    else:
        print(f"itchcpp {version} on {os.path.basename(path)} ({messages} messages, repeated runs)")
        for name, r in results.items():
            print(
                f"  {name:<15} median {r['median_per_s'] / 1e6:7.2f} M msgs/s, best {r['best_per_s'] / 1e6:7.2f} M msgs/s"
                f"  ({r['runs']} runs)"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
