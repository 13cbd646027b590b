"""Where the server's CPU goes under load: py-spy samples of the server of ``benchmarks.load``,
sorted into the jobs of the ingest path, as CPU per run.

    RUN_HANDLER_ENV=test python -m benchmarks.cpu_profile [--runs-per-batch 100] [--run-kb 4]
        [--clients 16] [--seconds 15] [--sdk] [--sdk-numbers] [--variant "LABEL" "ENV=VALUE ..."]...

Each ``--variant`` is one load with those environment variables given to the server (say the
splitter's old path against its new one), profiled the same way in the same session, so the
columns can be compared. The server's CPU per run is what the load tool measured (from /proc);
py-spy's samples (taken without pausing the server, ``--nonblocking``) only split it between jobs.
A sample is counted under the job of the deepest frame that belongs to one, so a call into
Tornado from a handler's ``finish`` is HTTP, and ``uuid`` called by the splitter is parsing.
Samples of threads waiting on their queue are left out.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

# (job, path fragments of its frames); the first job whose fragment a frame's file holds.
JOBS: list[tuple[str, tuple[str, ...]]] = [
    (
        "JSON: splitting and checking runs",
        (
            "handler/runs/splitter.py",
            "handler/runs/events.py",
            "handler/runs/jsonbytes.py",
            "handler/runs/longstrings.py",
            "handler/runs/fastpath.py",
            "handler/runs/tapwalk.py",
            "handler/runs/schema.py",
            "handler/query/extract.py",
            "ijson/",
            "simdjson",
            "msgspec",
        ),
    ),
    (
        "multipart parts and patch merges",
        ("handler/runs/multipart.py", "handler/runs/merge.py", "handler/runs/patching.py", "multipart/"),
    ),
    ("S3: PUT (aiohttp, signing, CRC32)", ("aiohttp/", "botocore/", "handler/store/objects.py", "yarl/")),
    (
        "PostgreSQL: rows and transaction",
        (
            "aiopg/",
            "psycopg2/",
            "handler/store/transaction.py",
            "handler/store/rows.py",
            "handler/store/db.py",
        ),
    ),
    (
        "segments and group commit",
        ("handler/store/segments.py", "handler/store/group.py", "handler/store/uploads.py"),
    ),
    ("logging and metrics", ("logging/", "prometheus_client/", "handler/server/ops.py")),
    ("HTTP: Tornado and the event loop", ("tornado/",)),
    ("the rest of the request's handling", ("handler/",)),
]
# The event loop and sockets serve every job: a frame of theirs counts for the job of the nearest
# caller that has one (an aiohttp write is S3's), else as HTTP (the loop itself).
LOOP = ("asyncio/", "selectors.py", "socket.py")
IDLE = ("_worker (concurrent/futures/thread.py", "EpollSelector.select")
_FILE = re.compile(r"\(([^():]+)(?::\d+)?\)$")


def job_of(stack: list[str]) -> str | None:
    """The job of one sample (its frames from the outermost), None for an idle thread."""
    if any(stack[-1].startswith(idle) for idle in IDLE):
        return None
    paths = [m.group(1) if (m := _FILE.search(frame)) else frame for frame in stack]
    for path in reversed(paths):
        for job, fragments in JOBS:
            if any(f in path for f in fragments):
                return job
    if any(f in path for path in paths for f in LOOP):
        return "HTTP: Tornado and the event loop"
    return "other (Python's own modules)"


def fold(raw: Path) -> Counter:
    jobs: Counter = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue  # not a sample (a blank line)
        job = job_of(stack.split(";"))
        if job is not None:
            jobs[job] += int(count)
    return jobs


def profile(args: argparse.Namespace, env: dict[str, str], workdir: Path) -> tuple[Counter, dict, str]:
    """One load, its server sampled by py-spy: (samples per job, figures, the load's output)."""
    load = [sys.executable, "-m", "benchmarks.load", "--clients", str(args.clients)]
    load += ["--seconds", str(args.seconds), "--run-kb", str(args.run_kb)]
    load += ["--sdk"] if args.sdk else ["--runs-per-batch", str(args.runs_per_batch)]
    load += ["--sdk-numbers"] if args.sdk_numbers else []
    raw = workdir / f"samples-{len(list(workdir.iterdir()))}.txt"
    proc = subprocess.Popen(load, env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
    lines, spy = [], None
    for line in proc.stdout:
        lines.append(line)
        started = re.search(r"server\(s\): pid (\d+)", line)
        if started and spy is None:
            seconds = max(1, int(args.seconds) - 2)
            spy = subprocess.Popen(
                [args.py_spy, "record", "--pid", started.group(1), "--duration", str(seconds),
                 "--rate", "200", "--nonblocking", "--format", "raw", "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
    output = "".join(lines)
    if proc.wait() != 0 or spy is None or spy.wait() != 0 or not raw.exists():
        raise SystemExit(f"the load or py-spy failed:\n{output}")
    figures = {
        "runs/s": float(re.search(r"throughput\s+(\d+) runs/s", output).group(1)),
        "ms per run": float(re.search(r"server CPU per 1,000 runs\s+([\d.]+) s", output).group(1)),
    }
    return fold(raw), figures, output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cpu_profile", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs-per-batch", type=int, default=100)
    parser.add_argument("--run-kb", type=float, default=4)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--sdk", action="store_true", help="SDK-shaped requests (load.py --sdk)")
    parser.add_argument("--sdk-numbers", action="store_true", help="load.py --sdk-numbers")
    parser.add_argument("--variant", nargs=2, action="append", metavar=("LABEL", "ENV"), default=[])
    parser.add_argument(
        "--py-spy", default=shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    )
    args = parser.parse_args(argv)
    variants = [(label, dict(kv.split("=", 1) for kv in env.split())) for label, env in args.variant]
    variants = variants or [("this code", {})]
    shape = f"{args.runs_per_batch} runs of ~{args.run_kb:g} KB a request"
    shape += ", numbers as SDKs write them" if args.sdk_numbers else ""
    shape = "SDK-shaped requests" if args.sdk else shape
    print(f"where the server's CPU goes: {args.clients} clients for {args.seconds:g} s, {shape}")
    print(
        "CPU ms per run by job (share of the server's samples); runs/s and CPU per run from benchmarks.load\n"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="cpu-profile-") as tmp:
        for label, env in variants:
            jobs, figures, _ = profile(args, env, Path(tmp))
            results.append((label, env, jobs, figures))
    width = max(len(job) for job, _ in JOBS) + 2
    head = "".join(f"{label:>24}" for label, *_ in results)
    print(f"{'':{width}}{head}")
    names = [job for job, _ in JOBS] + ["other (Python's own modules)"]
    for job in names:
        cells = ""
        for _, _, jobs, figures in results:
            share = jobs[job] / max(1, sum(jobs.values()))
            cells += f"{figures['ms per run'] * share:>16.3f} ({100 * share:3.0f}%)"
        print(f"{job:{width}}{cells}")
    print(f"{'server CPU per run, ms':{width}}" + "".join(f"{f['ms per run']:>24.3f}" for *_, f in results))
    print(f"{'runs/s':{width}}" + "".join(f"{f['runs/s']:>24.0f}" for *_, f in results))
    for label, env, jobs, _ in results:
        settings = " ".join(f"{k}={v}" for k, v in env.items()) or "defaults"
        print(f"\n{label}: {settings}, {sum(jobs.values())} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
