"""Benchmark fixtures: the real server over a real socket, and the storage floor beside it.

Every service/floor pair is measured in the same session, and the summary prints their ratio.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from handler.config import REPO_ROOT, Settings
from handler.db import Database
from handler.storage import ObjectStore
from tests.server import start_server

if os.environ.get("RUN_HANDLER_ENV") != "test":
    pytest.exit("run the benchmarks with RUN_HANDLER_ENV=test (make benchmark does)", returncode=2)

_medians: dict[str, float] = {}
_sizes: dict[str, tuple[int, int]] = {}  # name -> (bytes, runs) moved per round
_cpu: dict[str, dict[str, float]] = {}  # name -> CPU seconds per round by process
_TICKS = os.sysconf("SC_CLK_TCK")
MINIO_PID_FILE = REPO_ROOT / ".services" / "minio" / "minio.pid"


def process_cpu(pid: int | str) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def machine_cpu() -> float:
    """CPU seconds all cores of the machine have been busy so far (not idle, not waiting on I/O)."""
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / _TICKS


class CpuMeter:
    """Where the CPU of each timed round goes: this process (the client, or the floor's uploader),
    the server, MinIO, and the whole machine (the rest is mostly PostgreSQL). The machine has two
    cores shared by all of them, so these explain a wall time better than any one process does."""

    def __init__(self, server_pid: int | None) -> None:
        self.pids = {"client": "self", "minio": MINIO_PID_FILE.read_text().strip()}
        if server_pid is not None:
            self.pids["server"] = server_pid
        self.used = dict.fromkeys([*self.pids, "machine"], 0.0)
        self.rounds = 0

    def _now(self) -> dict[str, float]:
        now = {name: process_cpu(pid) for name, pid in self.pids.items()}
        return now | {"machine": machine_cpu()}

    def __enter__(self) -> CpuMeter:
        self._start = self._now()
        return self

    def __exit__(self, *exc) -> None:
        for name, value in self._now().items():
            self.used[name] += value - self._start[name]
        self.rounds += 1

    def per_round(self) -> dict[str, float]:
        return {name: used / self.rounds for name, used in self.used.items()}


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("bench"), "bench")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def backends(loop, settings):
    """The service's own S3 and PostgreSQL code, driven directly for the floor."""
    store, db = ObjectStore(settings), Database(settings)
    loop.run_until_complete(store.start())
    loop.run_until_complete(db.start())
    yield store, db
    loop.run_until_complete(db.close())
    loop.run_until_complete(store.close())


def record(name: str, benchmark, nbytes: int, nruns: int, cpu: CpuMeter | None = None) -> None:
    """Keep what the summary and benchmarks/report.py need: the median, bytes and runs per round,
    and the CPU seconds per round of each process."""
    benchmark.extra_info.update(bytes=nbytes, runs=nruns)
    if cpu is not None:
        benchmark.extra_info["cpu_per_round"] = _cpu[name] = cpu.per_round()
    _medians[name] = benchmark.stats.stats.median
    _sizes[name] = (nbytes, nruns)


def pytest_terminal_summary(terminalreporter):
    if not _medians:
        return
    rows = []
    for name, median in sorted(_medians.items()):
        if name.startswith("floor_"):
            continue
        floor = _medians.get(f"floor_{name}")
        nbytes, nruns = _sizes[name]
        rows.append(
            {
                "workload": name,
                "median_s": median,
                "floor_median_s": floor,
                "ratio": median / floor if floor else None,
                "mb_per_s": nbytes / 1e6 / median,
                "runs_per_s": nruns / median,
            }
        )
    terminalreporter.section("service / storage floor (medians of this session)")
    for row in rows:
        ratio = f"{row['ratio']:.2f}" if row["ratio"] else "n/a"
        floor = f"{row['floor_median_s'] * 1000:9.1f} ms" if row["floor_median_s"] else "         n/a"
        terminalreporter.write_line(
            f"{row['workload']:<22} service {row['median_s'] * 1000:9.1f} ms   floor {floor}   "
            f"ratio {ratio:>5}   {row['mb_per_s']:8.1f} MB/s   {row['runs_per_s']:9.1f} runs/s"
        )
    terminalreporter.section("CPU ms per round (two cores: cores busy = machine CPU / median)")
    for name, used in sorted(_cpu.items()):
        shares = "   ".join(
            f"{who} {used[who] * 1000:8.1f}" if who in used else f"{who} {'-':>8}"
            for who in ("client", "server", "minio")
        )
        terminalreporter.write_line(
            f"{name:<24} {shares}   machine {used['machine'] * 1000:8.1f}   "
            f"cores busy {used['machine'] / _medians[name]:4.2f}"
        )
