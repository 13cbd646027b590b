"""Hostile clients at the connection level (issue 26), against a server this script starts with
default settings (extra settings from the environment). Loopback only; every loop is bounded.

    RUN_HANDLER_ENV=test python -m benchmarks.connections slow-headers [connections] [seconds]
    RUN_HANDLER_ENV=test python -m benchmarks.connections flood [connections] [seconds] [server_files]
    RUN_HANDLER_ENV=test python -m benchmarks.connections large-runs [clients] [size_mb]

slow-headers: N connections each send a request line and one header line, then nothing; how many
the server still holds open 10 s and ``seconds`` (default 65: past nginx's 60 s) after the last
one opened.

flood: as many such connections as fast as they open (up to N, default 19,990; the open-file
limit of both processes is 20,000 here; a third number lowers the server's), held ``seconds``
(default 15) and let go, while another
process asks GET /health once a second with a 1 s timeout: how many of those answered, during the
flood and after it.

large-runs: N clients (default 32) at once, each sending one run whose input is a single
``size_mb`` MB string (default 90) with ``Content-Length``, then reading the answer: the answers,
and how many clients could not send their whole body (reset) or read no answer.
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import re
import resource
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from tests.server import start_server

MB = 1024 * 1024
CHUNK = 64 * 1024
FILL = b"x" * CHUNK
SLOW_HEAD = b"POST /runs HTTP/1.1\r\nHost: localhost\r\n"


def still_open(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has not closed (a peek that would block means open)."""
    count = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            count += 1
            continue
        except OSError:
            continue
    return count


def open_slow(port: int, count: int, deadline: float) -> tuple[list[socket.socket], list[str]]:
    socks, errors = [], []
    while len(socks) < count and time.monotonic() < deadline:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(SLOW_HEAD)
            socks.append(sock)
        except OSError as e:
            errors.append(type(e).__name__ if not e.strerror else e.strerror)
            if len(errors) > 2000:
                break
    return socks, errors


def slow_headers(count: int = 3000, seconds: float = 65) -> None:
    server = start_server(Path(tempfile.mkdtemp()), "slow-headers")
    try:
        start = time.monotonic()
        socks, errors = open_slow(server.client.port, count, start + 120)
        opened = time.monotonic() - start
        last = time.monotonic()  # counted from the last one opened
        time.sleep(10)
        at_10 = still_open(socks)
        time.sleep(max(0.0, seconds - (time.monotonic() - last)))
        at_end = still_open(socks)
        print(
            f"slow headers: {len(socks)} connections opened in {opened:.1f} s "
            f"({len(errors)} failed); still open 10 s after the last one opened: {at_10}, "
            f"{seconds:g} s after: {at_end}"
        )
        for sock in socks:
            sock.close()
    finally:
        server.stop()


def probe(port: int, seconds: float, results) -> None:
    """GET /health once a second with a 1 s timeout, for ``seconds``: (time, ok) pairs."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        began = time.monotonic()
        ok = False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                data = b""
                while b"\r\n\r\n" not in data:
                    more = sock.recv(4096)
                    if not more:
                        break
                    data += more
                ok = data.startswith(b"HTTP/1.1 200")
        except OSError:
            pass
        results.append((round(began - start, 1), ok))
        time.sleep(max(0.0, 1 - (time.monotonic() - began)))


def flood(count: int = 19_990, hold: float = 15, server_files: int = 0) -> None:
    """``server_files``: the server's open-file limit, lowered once it has started: the same flood
    with fewer connections, so quicker (set MAX_CONNECTIONS to what that limit gives: the server
    derived its own from the limit it started with)."""
    server = start_server(Path(tempfile.mkdtemp()), "flood")
    if server_files:
        resource.prlimit(server.process.pid, resource.RLIMIT_NOFILE, (server_files, server_files))
    port = server.client.port
    try:
        manager = multiprocessing.Manager()
        health = manager.list()
        flood_limit = 120
        prober = multiprocessing.Process(target=probe, args=(port, flood_limit + hold + 15, health))
        prober.start()
        time.sleep(2)
        start = time.monotonic()
        socks, errors = open_slow(port, count, start + flood_limit)
        opened = time.monotonic() - start
        time.sleep(hold)
        server_open = still_open(socks)
        for sock in socks:
            sock.close()
        released = time.monotonic()
        time.sleep(10)
        prober.terminate()
        prober.join(timeout=10)
        points = list(health)
        t0 = 2.0  # the prober started 2 s before the flood
        full, free = t0 + opened, t0 + (released - start)

        def answered(first: float, last: float) -> str:
            window = [ok for t, ok in points if first <= t < last]
            return f"{sum(window)}/{len(window)}"

        reasons = collections.Counter(errors).most_common(3)
        print(
            f"flood: {len(socks)} connections opened in {opened:.1f} s ({len(errors)} failed: {reasons}); "
            f"{server_open} still open after holding them {hold:g} s; GET /health (1 s timeout) answered "
            f"{answered(t0, full)} while they opened, {answered(full, free)} while held, "
            f"{answered(free + 1, 1e9)} after; server {'up' if server.process.poll() is None else 'DOWN'}"
        )
    finally:
        server.stop()


def send_run(port: int, size: int, results: list) -> None:
    """One run of a ``size``-byte string with Content-Length, sent whole, then the answer read."""
    run_id, trace_id = uuid.uuid4(), uuid.uuid4()
    head = json.dumps({"id": str(run_id), "trace_id": str(trace_id), "name": "long string"})
    first = b"[" + head[:-1].encode() + b',"inputs":{"text":"'
    count, tail = size // CHUNK, b'"}}]'
    length = len(first) + count * CHUNK + len(tail)
    sent_all, status, retry_after = False, None, None
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=300)
    except OSError as e:
        results.append(("connect failed: " + type(e).__name__, False, None))
        return
    try:
        sock.sendall(
            b"POST /runs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (length, first)
        )
        for _ in range(count):
            sock.sendall(FILL)
        sock.sendall(tail)
        sent_all = True
    except OSError:
        pass  # a client that sends, then reads, sees this as a network fault
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                break
            data += more
        match = re.match(rb"HTTP/1\.1 (\d+)", data)
        status = int(match.group(1)) if match else "no answer"
        found = re.search(rb"(?im)^retry-after:\s*(\d+)", data)
        retry_after = found and int(found.group(1))
    except OSError as e:
        status = f"reset ({type(e).__name__})"
    finally:
        sock.close()
    results.append((status, sent_all, retry_after))


def large_runs(clients: int = 32, size_mb: int = 90) -> None:
    server = start_server(Path(tempfile.mkdtemp()), "large-runs")
    try:
        port = server.client.port
        assert server.client.post(b"[]").status == 201
        results: list = []
        threads = [
            threading.Thread(target=send_run, args=(port, size_mb * MB, results)) for _ in range(clients)
        ]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=900)
        elapsed = time.perf_counter() - start
        statuses = collections.Counter(str(s) for s, _, _ in results)
        unsent = sum(1 for _, sent, _ in results if not sent)
        no_retry = sum(1 for s, _, r in results if s == 503 and not r)
        answers = ", ".join(f"{n} x {s}" for s, n in sorted(statuses.items()))
        print(
            f"{clients} clients x one run of a {size_mb} MB string with Content-Length: {answers} "
            f"in {elapsed:.0f} s; {unsent} could not send their whole body; {no_retry} 503 without "
            f"Retry-After; server {'up' if server.process.poll() is None else 'DOWN'}"
        )
    finally:
        server.stop()


if __name__ == "__main__":
    case = sys.argv[1] if len(sys.argv) > 1 else ""
    args = [int(a) for a in sys.argv[2:]]
    if case == "slow-headers":
        slow_headers(*args)
    elif case == "flood":
        flood(*args)
    elif case == "large-runs":
        large_runs(*args)
    else:
        raise SystemExit(__doc__)
