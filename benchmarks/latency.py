"""A lone client's latency: one-run POSTs sent one after another, with group commit on (the
default) and off (``GROUP_MAX_BYTES=0``, each request its own PUT and transaction, as before it).

    RUN_HANDLER_ENV=test python -m benchmarks.latency [--requests 200] [--run-kb 4]

Each setting gets its own ``python -m handler`` on the load test's database and bucket
(``postgres_load``, ``runs-load``: see benchmarks/load.py); they take the requests in turn (20
warm-up, then ``--requests`` timed, each); prints each one's median and p99. The rows and objects
are deleted after.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.load import RunFactory, batch_body, clean_up, db_connect, ensure_database, percentile
from handler.server.config import Settings
from tests.server import start_server

WARM_UP = 20


SETTINGS = (("group commit on ", {}), ("group commit off", {"GROUP_MAX_BYTES": "0"}))


def measure(env: dict[str, str], requests: int, run_kb: float) -> tuple[list[list[float]], list[str]]:
    """Seconds per request for each of SETTINGS, and the ids stored. The servers run side by side
    and take the requests in turn, so that both see the same load from the rest of the machine."""
    factory = RunFactory(run_kb, seed=7)
    rng = random.Random(7)
    tmp = Path(tempfile.mkdtemp(prefix="latency-"))
    servers = []
    times: list[list[float]] = [[] for _ in SETTINGS]
    ids: list[str] = []
    try:
        for i, (_, extra) in enumerate(SETTINGS):
            servers.append(start_server(tmp, f"latency-{i}", **env, **extra))
        for n in range(WARM_UP + requests):
            for i, srv in enumerate(servers):
                body = batch_body(rng, [factory.run(rng, "latency", n, None)])
                start = time.perf_counter()
                response = srv.client.post(body)
                elapsed = time.perf_counter() - start
                if response.status != 201:
                    raise SystemExit(f"answered {response.status}: {response.body[:300]!r}")
                ids += response.json()["ids"]
                if n >= WARM_UP:
                    times[i].append(elapsed)
    finally:
        for srv in servers:
            srv.stop()
    return times, ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.latency", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--run-kb", type=float, default=4)
    args = parser.parse_args(argv)
    env = {"DB_NAME": "postgres_load", "S3_BUCKET_NAME": "runs-load", "API_KEYS": ""}
    os.environ.update(env)
    settings = Settings.from_env()
    ensure_database(settings)
    print(f"a lone client, {args.requests} POST /runs of one ~{args.run_kb:g} KB run each, one after another")
    times, ids = measure(env, args.requests, args.run_kb)
    conn = db_connect(settings)
    try:
        clean_up(settings, env["S3_BUCKET_NAME"], conn, ids)
    finally:
        conn.close()
    for (label, _), series in zip(SETTINGS, times, strict=True):
        print(
            f"{label}  median {statistics.median(series) * 1000:.2f} ms, "
            f"p99 {percentile(series, 0.99) * 1000:.2f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
