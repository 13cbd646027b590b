"""WORKERS=2: one parent, two forked workers accepting on the same port, against the real services.

Which worker takes a connection is the kernel's choice; to make it ours, the tests SIGSTOP every
other worker for a moment (``only``): a stopped process accepts nothing, so the one left running
takes every connection from the shared backlog. The access log names the worker (``[pid N]``)
that served each request.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.runs import batch, run
from tests.server import Server, run_handler, start_server
from tests.test_faults import body_parts, row_count, runs_with_ids, send_first_half, wait_for
from tests.test_ops import FAMILIES, scrape


def children(srv: Server) -> list[int]:
    pid = srv.process.pid
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def state(pid: int) -> str:
    """The process's state letter (R, S, T stopped, Z zombie...), or "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""


def start_workers(tmp_path: Path, name: str, **env: str) -> tuple[Server, list[int]]:
    srv = start_server(tmp_path, name, WORKERS="2", **env)
    assert wait_for(lambda: len(children(srv)) == 2), open(srv.log_path).read()
    return srv, children(srv)


@contextlib.contextmanager
def only(srv: Server, worker: int):
    """Every connection made inside is taken by ``worker``: the others are stopped meanwhile."""
    others = [pid for pid in children(srv) if pid != worker]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    # kill() returns before the signal is taken: wait until each one is really stopped.
    assert wait_for(lambda: all(state(pid) in ("T", "t") for pid in others))
    try:
        yield
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


def served_by(srv: Server, request: str) -> set[int]:
    """The pids of the workers whose access log has a line starting with ``request``."""
    pattern = re.compile(rf"\[pid (\d+)\] handler\.access: {re.escape(request)}")
    return {int(m.group(1)) for line in open(srv.log_path) if (m := pattern.search(line))}


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    srv, pids = start_workers(tmp_path_factory.mktemp("workers"), "workers")
    yield srv, pids
    srv.stop()
    assert srv.process.returncode == 0, open(srv.log_path).read()[-3000:]


def test_runs_ingested_by_one_worker_read_back_through_the_other(workers):
    srv, (a, b) = workers
    runs = [run(id=str(uuid.uuid4()), inputs={"i": i}) for i in range(5)]
    with only(srv, a):
        response = srv.client.post(batch(*runs))
    assert response.status == 201
    with only(srv, b):
        for r in runs:
            got = srv.client.get(f"/runs/{r['id']}")
            assert got.status == 200 and json.loads(got.body) == r
    for r in runs:
        assert wait_for(lambda r=r: served_by(srv, f"GET /runs/{r['id']} 200") == {b})
    assert a in served_by(srv, "POST /runs 201")


def test_metrics_sum_the_counts_of_every_worker(workers):
    srv, (a, b) = workers
    ingested = ("run_handler_runs_ingested_total", ())
    created = (
        "run_handler_requests_total",
        (("handler", "RunsHandler"), ("method", "POST"), ("status", "201")),
    )
    before = scrape(srv)
    for worker, batches, size in ((a, 3, 2), (b, 2, 1)):
        with only(srv, worker):
            for _ in range(batches):
                assert srv.client.post(batch(*[run() for _ in range(size)])).status == 201
    # A request is counted just after its answer is sent: let both workers finish counting.
    assert wait_for(lambda: scrape(srv).get(created) == before.get(created, 0) + 5)
    for worker in (a, b):  # the same totals whichever worker answers the scrape
        with only(srv, worker):
            after = scrape(srv)
        assert after[ingested] == before.get(ingested, 0) + 8
        assert after[created] == before.get(created, 0) + 5
        assert after[("run_handler_batches_in_flight", ())] == 0
    assert wait_for(lambda: served_by(srv, "GET /metrics 200") >= {a, b})


def test_metric_families_are_those_of_a_single_server(workers):
    """A family with labels shows once some worker has counted in it (the multiprocess files hold
    values, not declarations), so a run is posted and read back first."""
    srv, _ = workers
    r = run(id=str(uuid.uuid4()))
    assert srv.client.post(batch(r)).status == 201
    assert srv.client.get(f"/runs/{r['id']}").status == 200
    families = {
        f.name: f.type
        for f in text_string_to_metric_families(srv.client.get("/metrics").body.decode())
        if not f.name.endswith("_created")
    }
    assert families == FAMILIES


def test_ready_checks_both_services_in_a_worker(workers):
    srv, _ = workers
    response = srv.client.get("/ready")
    assert response.status == 200
    assert response.json() == {"status": "ready", "postgres": "ok", "s3": "ok"}


def test_a_killed_worker_is_replaced_and_nothing_acknowledged_is_lost(tmp_path, store, db):
    srv, (a, b) = start_workers(tmp_path, "kill")
    try:
        acknowledged = runs_with_ids(6)
        for worker, part in ((a, acknowledged[:3]), (b, acknowledged[3:])):
            with only(srv, worker):
                assert srv.client.post(batch(*part)).status == 201
        before = store.snapshot()
        half_received = runs_with_ids(10)
        with only(srv, a):
            conn = send_first_half(srv, store, half_received)
        os.kill(a, signal.SIGKILL)
        assert wait_for(lambda: len(children(srv)) == 2 and a not in children(srv))
        (replacement,) = set(children(srv)) - {b}
        conn.close()
        log = open(srv.log_path).read()
        assert f"worker 0 (pid {a}) killed by SIGKILL; starting a replacement" in log
        for worker in (b, replacement):  # the survivor and the replacement both serve everything
            with only(srv, worker):
                for r in acknowledged:
                    got = srv.client.get(f"/runs/{r['id']}")
                    assert got.status == 200 and json.loads(got.body) == r
                for r in half_received:
                    assert srv.client.get(f"/runs/{r['id']}").status == 404
        assert row_count(db, [r["id"] for r in half_received]) == 0
        leftovers = store.keys() - before[1]
        assert store.runs_in(leftovers) == 5, "the dead worker's first half should be left for gc"
        run_handler("gc", "--grace-seconds", "0")
        store.assert_unchanged(before)
    finally:
        srv.stop()
    assert srv.process.returncode == 0


def test_sigterm_drains_every_worker_and_the_whole_tree_exits_0(tmp_path, store, db):
    srv, (a, b) = start_workers(tmp_path, "term", SHUTDOWN_TIMEOUT="30")
    runs = runs_with_ids(10)
    with only(srv, a):
        conn = send_first_half(srv, store, runs)
    srv.process.send_signal(signal.SIGTERM)
    assert wait_for(lambda: "SIGTERM: stopping 2 workers" in open(srv.log_path).read())
    assert wait_for(lambda: not Path(f"/proc/{b}").exists()), "the idle worker should exit at once"
    srv.client.send_chunk(conn, body_parts(runs)[1])
    response = srv.client.finish(conn)
    assert response.status == 201, response.body  # drained, not cut off
    assert srv.process.wait(timeout=60) == 0, open(srv.log_path).read()[-3000:]
    assert not Path(f"/proc/{a}").exists() and not Path(f"/proc/{b}").exists(), "orphaned worker"
    assert row_count(db, [r["id"] for r in runs]) == 10
    metrics_dir = re.search(r"metrics of the workers in (\S+)", open(srv.log_path).read()).group(1)
    assert not Path(metrics_dir).exists(), "the metrics directory should be removed"


def test_workers_0_means_one_per_core(tmp_path):
    srv = start_server(tmp_path, "per-core", WORKERS="0")
    try:
        assert wait_for(lambda: len(children(srv)) == os.cpu_count())
        assert srv.client.get("/health").status == 200
    finally:
        srv.stop()
    assert srv.process.returncode == 0


def alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet reaped, is not)."""
    return state(pid) not in ("", "Z")


def test_workers_stop_when_their_parent_is_killed(tmp_path):
    srv, pids = start_workers(tmp_path, "orphans")
    srv.process.kill()
    srv.process.wait()
    assert wait_for(lambda: not any(alive(pid) for pid in pids)), "a worker outlived its parent"
    # A parent killed outright cannot remove its metrics directory: the test does.
    metrics_dir = re.search(r"metrics of the workers in (\S+)", open(srv.log_path).read()).group(1)
    shutil.rmtree(metrics_dir, ignore_errors=True)
