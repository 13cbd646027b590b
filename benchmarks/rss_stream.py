"""Stream a large generated batch to a server process and report that process's peak RSS growth.

    RUN_HANDLER_ENV=test python -m benchmarks.rss_stream [size_mb] [run_kb]   (defaults 1024, 100)

Each run has three fields of ``run_kb`` KB each (100: runs of about 330 KB; 25000: runs of about
88 MB, which the server uploads in parts while they arrive).

Starts its own ``python -m handler`` (so it knows the pid), reads VmRSS before the request and
VmHWM (the peak) after it, and checks every run was stored.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from benchmarks.streaming import batch_chunks
from tests.server import start_server

MB = 1024 * 1024


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def main(size_mb: int, run_kb: int) -> None:
    server = start_server(Path(tempfile.mkdtemp()), "rss")
    try:
        pid = server.process.pid
        client = server.client
        assert client.post(b"[]").status == 201  # warm up imports and pools
        before = status_kb(pid, "VmRSS")
        chunks, count = batch_chunks(size_mb * MB, run_kb)
        start = time.perf_counter()
        response = client.post(chunks)
        elapsed = time.perf_counter() - start
        assert response.status == 201, response.body[:500]
        assert len(response.json()["ids"]) == count
        peak = status_kb(pid, "VmHWM")
        print(
            f"{size_mb} MB batch, {count} runs of {size_mb / count:.1f} MB, "
            f"stored in {elapsed:.1f} s ({size_mb / elapsed:.0f} MB/s); "
            f"server RSS before {before / 1024:.1f} MB, peak {peak / 1024:.1f} MB, "
            f"growth {(peak - before) / 1024:.1f} MB"
        )
    finally:
        server.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1024, int(sys.argv[2]) if len(sys.argv) > 2 else 100)
