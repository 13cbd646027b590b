"""Benchmark fixtures: the real server over a real socket, and the storage floor beside it.

Every service/floor pair is measured in the same session, and the summary prints their ratio.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from benchmarks.cpu import CpuMeter, summary_lines
from handler.server.config import Settings
from handler.store.db import Database
from handler.store.objects import ObjectStore
from tests.server import start_server

if os.environ.get("RUN_HANDLER_ENV") != "test":
    pytest.exit("run the benchmarks with RUN_HANDLER_ENV=test (make benchmark does)", returncode=2)

_medians: dict[str, float] = {}
_sizes: dict[str, tuple[int, int]] = {}  # name -> (bytes, runs) moved per round
_cpu: dict[str, dict[str, float | None]] = {}  # name -> CPU seconds per round by process


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("bench"), "bench")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def unpacked_server(tmp_path_factory):
    """The same server with one object per run (``SEGMENT_BYTES=0``), the layout before segments."""
    srv = start_server(tmp_path_factory.mktemp("bench-unpacked"), "bench-unpacked", SEGMENT_BYTES="0")
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
        benchmark.extra_info["cpu_not_measured"] = cpu.not_measured
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
    terminalreporter.section("segments against one object per run (medians of this session)")
    for name, median in sorted(_medians.items()):
        for other in (f"{name}_per_run", f"{name}_alone"):
            if other in _medians:
                terminalreporter.write_line(
                    f"{name:<26} {other:<34} other / this {_medians[other] / median:6.2f}"
                )
    terminalreporter.section("CPU ms per round (two cores: cores busy = machine CPU / median)")
    for line in summary_lines(_cpu, _medians):
        terminalreporter.write_line(line)
