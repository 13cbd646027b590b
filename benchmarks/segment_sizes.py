"""What SEGMENT_BYTES costs: ingest time and objects per batch for a few segment sizes.

    RUN_HANDLER_ENV=test python -m benchmarks.segment_sizes [--rounds 5]

Starts one real server per size (and one with ``SEGMENT_BYTES=0``) and streams each reference
workload to each in turn, in 64 KB chunks, ``--rounds`` times; prints the median wall time and
the objects one batch wrote. Smaller segments start uploading sooner and leave a shorter upload
after the body ends; larger ones cost fewer PUTs (each one a billed request on S3).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.workloads import WORKLOADS, encode
from handler.server.config import MIB, Settings
from tests.conftest import FreshConnections
from tests.runs import split
from tests.server import start_server

SIZES = [0, 1 * MIB, 2 * MIB, 4 * MIB, 8 * MIB]
NAMES = ["500_10kb", "50_100kb", "5000_1kb"]


def objects_of(db: FreshConnections, ids: list[str]) -> int:
    with db.cursor() as cur:
        cur.execute("SELECT count(DISTINCT object_key) FROM runs WHERE id = ANY(%s::uuid[])", (ids,))
        return cur.fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    db = FreshConnections(Settings.from_env())
    bodies = {name: split(encode(WORKLOADS[name]())[0], 64 * 1024) for name in NAMES}
    tmp = Path(tempfile.mkdtemp(prefix="segment-sizes-"))
    results: dict[tuple[str, int], tuple[float, int]] = {}
    for size in SIZES:
        srv = start_server(tmp, f"segments-{size}", SEGMENT_BYTES=str(size))
        try:
            for name, chunks in bodies.items():
                srv.client.post(chunks)  # warm-up
                times, ids = [], []
                for _ in range(args.rounds):
                    started = time.perf_counter()
                    response = srv.client.post(chunks)
                    times.append(time.perf_counter() - started)
                    assert response.status == 201, response.body[:200]
                    ids = response.json()["ids"]
                results[name, size] = statistics.median(times), objects_of(db, ids)
                with db.cursor() as cur:  # keep the database small between sizes
                    cur.execute("DELETE FROM runs WHERE id = ANY(%s::uuid[])", (ids,))
        finally:
            srv.stop()
    print(f"median of {args.rounds} rounds per cell: ms (objects per batch)")
    print(f"{'SEGMENT_BYTES':>14} " + " ".join(f"{name:>18}" for name in NAMES))
    for size in SIZES:
        label = "0 (per run)" if size == 0 else f"{size // MIB} MiB"
        cells = " ".join(
            f"{results[name, size][0] * 1000:9.1f} ({results[name, size][1]:>5})" for name in NAMES
        )
        print(f"{label:>14} {cells}")


if __name__ == "__main__":
    main()
