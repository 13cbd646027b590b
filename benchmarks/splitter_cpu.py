"""CPU of splitting the reference bodies, in process: the service's splitter (FastSplitter), RunSplitter
(every byte through ijson's events, the fast path's judge) and ijson's bare event stream.

    python -m benchmarks.splitter_cpu

No server, no storage: the cost of parsing and validating a 17 MB body, fed in 64 KB chunks.
"""

from __future__ import annotations

import time

import ijson

from benchmarks.workloads import WORKLOADS, encode
from handler.runs.fastpath import FastSplitter
from handler.runs.splitter import RunSplitter

CHUNK = 64 * 1024


def split(body: bytes, kind=FastSplitter) -> int:
    splitter = kind(1 << 30, 10**6)
    runs = 0
    for i in range(0, len(body), CHUNK):
        runs += len(splitter.feed(body[i : i + CHUNK]))
    return runs + len(splitter.close())


def events_only(body: bytes) -> None:
    events = ijson.sendable_list()
    parser = ijson.basic_parse_coro(events)
    for i in range(0, len(body), CHUNK):
        parser.send(body[i : i + CHUNK])
        events.clear()
    parser.close()


def best_of(rounds: int, fn, body: bytes) -> float:
    times = []
    for _ in range(rounds):
        start = time.process_time()
        fn(body)
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    for name in ("500_10kb", "50_100kb", "5000_1kb"):
        body, parts = encode(WORKLOADS[name]())
        assert split(body) == split(body, RunSplitter) == len(parts)
        fast_ms = best_of(5, split, body) * 1000
        splitter_ms = best_of(5, lambda b: split(b, RunSplitter), body) * 1000
        ijson_ms = best_of(5, events_only, body) * 1000
        print(
            f"{name:<10} {len(body) / 1e6:5.1f} MB   FastSplitter {fast_ms:6.1f} ms CPU   "
            f"RunSplitter {splitter_ms:6.1f} ms CPU   ijson events alone {ijson_ms:6.1f} ms CPU"
        )


if __name__ == "__main__":
    main()
