"""The load benchmark (benchmarks/load.py) at each scale, and one table of them.

    RUN_HANDLER_ENV=test python -m benchmarks.scaling [--clients 32] [--seconds 60]

Runs, one after the other: WORKERS=1; WORKERS=2; two instances (WORKERS=1 each) behind nginx;
and WORKERS=2 with one worker killed (kill -9) halfway. Each prints its full report; the table at
the end has runs/s, MB/s, batch latency, server CPU per 1,000 runs, errors, the byte-exact sample,
and the cores each process kept busy (from /proc, so on a shared machine "others" is everyone
else). ``make scaling`` saves the output as .benchmarks/scaling.txt for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from benchmarks.load import parse_args, run_load
from handler.server.config import Settings


def scenarios(clients: int, seconds: float) -> list[tuple[str, list[str]]]:
    common = ["--clients", str(clients), "--seconds", f"{seconds:g}"]
    return [
        ("WORKERS=1", [*common, "--workers", "1"]),
        ("WORKERS=2", [*common, "--workers", "2"]),
        ("nginx + 2 instances", [*common, "--workers", "1", "--instances", "2"]),
        ("WORKERS=2, one killed", [*common, "--workers", "2", "--kill-worker-after", f"{seconds / 2:g}"]),
    ]


def cores(used: dict[str, float], *prefixes: str) -> str:
    return f"{sum(v for k, v in used.items() if k.startswith(prefixes) and 'worker' not in k):.2f}"


# On paper: 1,000 traces/s of 10 runs of 5 KB, each trace one POST /runs.
TRACES_S, RUNS_PER_TRACE, RUN_BYTES = 1000, 10, 5 * 1024
MACHINE_CORES, CORE_BUDGET = 8, 0.7  # an 8-core machine kept at 70% busy, MinIO and PostgreSQL elsewhere


def projection(single: dict) -> list[str]:
    """What 1,000 traces/s takes, from the server CPU per run measured at WORKERS=1."""
    runs_s = TRACES_S * RUNS_PER_TRACE
    cpu_per_run = single["server_cpu_per_1000"] / 1000 * RUN_BYTES / single["run_bytes"]
    cores = runs_s * cpu_per_run
    machines = math.ceil(cores / (MACHINE_CORES * CORE_BUDGET))
    segment_bytes = Settings.from_env().segment_bytes
    batch_bytes = RUNS_PER_TRACE * RUN_BYTES
    puts = TRACES_S * math.ceil(batch_bytes / segment_bytes) if segment_bytes else runs_s
    return [
        f"on paper: {TRACES_S:,} traces/s of {RUNS_PER_TRACE} runs of {RUN_BYTES // 1024} KB "
        f"= {runs_s:,} runs/s, {runs_s * RUN_BYTES / 1e6:.1f} MB/s",
        f"  server CPU  {single['server_cpu_per_1000']:.2f} s per 1,000 runs of "
        f"{single['run_bytes'] / 1024:.1f} KB measured, scaled by bytes to "
        f"{cpu_per_run * 1000:.2f} ms per 5 KB run: {cores:.1f} cores busy",
        f"  machines    {machines} of {MACHINE_CORES} cores at {CORE_BUDGET:.0%} busy "
        f"(WORKERS=0 on each), behind a load balancer",
        f"  PostgreSQL  {runs_s:,} rows inserted/s, in {TRACES_S:,} transactions/s (one INSERT per batch)",
        f"  S3          {puts:,} PUT/s of {batch_bytes / 1024:.0f} KB "
        f"(SEGMENT_BYTES={segment_bytes:,}: a segment belongs to one request, "
        f"so a {batch_bytes // 1024} KB batch is one segment), "
        f"{runs_s * RUN_BYTES / 1e6:.1f} MB/s in",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    results = []
    for name, argv in scenarios(args.clients, args.seconds):
        print(f"\n=== {name}: python -m benchmarks.load {' '.join(argv)}", flush=True)
        results.append((name, run_load(parse_args(argv))))
    print("\n=== summary")
    print(
        f"{args.clients} clients, {args.seconds:g} s each, 20 runs of ~4 KB a batch; {os.cpu_count()} cores"
    )
    print("cores busy: CPU seconds / wall seconds of each process (server: all its processes);")
    print("others: every process not listed (on a shared machine, other sessions' work)\n")
    header = (
        f"{'':<22} {'runs/s':>7} {'MB/s':>6} {'p50 ms':>7} {'p99 ms':>7} {'srv s/1k':>8} "
        f"{'errors':>6} {'sample':>9} | {'server':>6} {'nginx':>6} {'minio':>6} {'pg':>6} {'client':>6} "
        f"{'others':>6} {'machine':>7}"
    )
    print(header)
    print("-" * len(header))
    base = results[0][1].get("runs_s")
    for name, r in results:
        if "runs_s" not in r:
            print(f"{name:<22} failed before measuring")
            continue
        used = r["cores"]
        sample = f"{r['verified']}/{r['verified'] + r['mismatches']}"
        print(
            f"{name:<22} {r['runs_s']:>7.0f} {r['mb_s']:>6.1f} {r['p50_ms']:>7.0f} {r['p99_ms']:>7.0f} "
            f"{r['server_cpu_per_1000']:>8.2f} {r['errors']:>6} {sample:>9} | {cores(used, 'server'):>6} "
            f"{cores(used, 'nginx'):>6} {cores(used, 'minio'):>6} {cores(used, 'postgres'):>6} "
            f"{cores(used, 'load client'):>6} {cores(used, 'others'):>6} {cores(used, 'machine'):>7}"
        )
    for name, r in results:
        if "cores" in r:
            used = r["cores"]
            busiest = max((k for k in used if k not in ("machine", "others on the machine")), key=used.get)
            full = used["machine"] >= 0.95 * (os.cpu_count() or 1)
            print(
                f"{name}: busiest {busiest} ({used[busiest]:.2f} cores); the machine "
                + (
                    f"was saturated ({used['machine']:.2f} of {os.cpu_count()} cores busy)"
                    if full
                    else "had idle CPU"
                )
            )
    for name, r in results[1:]:
        if base and "runs_s" in r:
            print(f"{name}: {r['runs_s'] / base:.2f}x the runs/s of WORKERS=1")
    killed = results[-1][1]
    if "retried" in killed:
        print(
            f"killed run: {killed['retried']} batches cut by the kill and sent again, "
            f"{killed['unanswered_runs']} runs of them committed before the worker died"
        )
    if "runs_s" in results[0][1]:
        print()
        print("\n".join(projection(results[0][1])))
    failed = [name for name, r in results if not r.get("ok")]
    if failed:
        print("FAIL: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
