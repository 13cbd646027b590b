"""CPU per batch of the reference workloads: the server process's and PostgreSQL's, not wall time.

    RUN_HANDLER_ENV=test python -m benchmarks.ingest_cpu [rounds] [--timed]

Wall time on a shared machine moves by tens of percent with the load; the CPU a batch costs does
not, so this is how the query columns' ingest cost (handler/query/extract.py, schema/0007) was
held to its 10% budget: run it at two commits (or with SEARCH_TEXT_CHARS set) and compare. The
server is started from this checkout; PostgreSQL's CPU is the sum over its processes (the
data directory of scripts/services.sh), MinIO's is left out (the same bytes are stored either way).

The reference workloads' runs have no start or end time, so the monitor's rollup (schema/0009)
skips them; ``--timed`` gives every run a start time in the last hour and an end time 1 ms to
10 s later (every run a root: the most latency buckets a batch can touch), to measure its triggers
at their dearest (run it with and without them: ALTER TABLE runs DISABLE TRIGGER runs_hourly_insert).
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks.workloads import WORKLOADS, encode
from handler.server.config import REPO_ROOT
from tests.runs import split
from tests.server import start_server

CHUNK = 64 * 1024
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def postgres_cpu() -> float:
    pid_file = REPO_ROOT / ".services" / "postgres" / "data" / "postmaster.pid"
    main = int(pid_file.read_text().split()[0])
    total = cpu_seconds(main)
    for child in Path(f"/proc/{main}/task/{main}/children").read_text().split():
        try:
            total += cpu_seconds(int(child))
        except FileNotFoundError:
            pass
    return total


def timed(runs: list[dict]) -> list[dict]:
    """The runs with start and end times (see the module's docstring)."""
    rng, now = random.Random(0), datetime.now(UTC)
    for run in runs:
        start = now - timedelta(seconds=rng.uniform(0, 3600))
        run["start_time"] = start.isoformat()
        run["end_time"] = (start + timedelta(milliseconds=10 ** rng.uniform(0, 4))).isoformat()
    return runs


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--timed"]
    rounds = int(args[0]) if args else 5
    server = start_server(Path(tempfile.mkdtemp()), "ingest-cpu")
    try:
        for name in ("500_10kb", "50_100kb", "5000_1kb"):
            runs = WORKLOADS[name]()
            body, parts = encode(timed(runs) if "--timed" in sys.argv else runs)
            chunks = split(body, CHUNK)
            server.client.post(chunks, "/runs")  # warm up
            server_cpu = pg_cpu = 0.0
            start = time.perf_counter()
            for _ in range(rounds):
                before = cpu_seconds(server.process.pid), postgres_cpu()
                response = server.client.post(chunks, "/runs")
                assert response.status in (200, 201, 202), response.body[:200]
                server_cpu += cpu_seconds(server.process.pid) - before[0]
                pg_cpu += postgres_cpu() - before[1]
            wall = (time.perf_counter() - start) / rounds
            print(
                f"{name:9} {len(parts):5} runs  server {server_cpu / rounds * 1000:7.1f} ms CPU"
                f"  postgres {pg_cpu / rounds * 1000:6.1f} ms CPU  (wall {wall * 1000:.0f} ms)"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
