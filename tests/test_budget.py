"""The memory budget of the whole server (handler/budget.py, MAX_BUFFERED_BYTES).

Against a real server with a small budget (one request at its limits, and little more): requests
that cannot get room in time are answered 503 with Retry-After and leave nothing; the others are
stored exactly; and the server's memory stays within the budget plus a fixed overhead.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from pathlib import Path

import pytest

from handler.runs.budget import Budget, Busy, Claim
from handler.server.config import MIB, Settings
from tests.conftest import Store
from tests.server import Server, start_server

MAX_RUN = 16 * MIB
WINDOW = 8 * MIB
SEGMENT = MIB
BUDGET = MAX_RUN + WINDOW + 2 * SEGMENT + MIB  # the least the server starts with
CHUNK = 64 * 1024


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


@pytest.fixture(scope="module")
def budget_server(tmp_path_factory) -> Server:
    srv = start_server(
        tmp_path_factory.mktemp("budget"),
        "budget",
        MAX_RUN_BYTES=str(MAX_RUN),
        UPLOAD_WINDOW_BYTES=str(WINDOW),
        SEGMENT_BYTES=str(SEGMENT),
        STREAM_PART_BYTES=str(5 * MIB),
        MAX_BUFFERED_BYTES=str(BUDGET),
        BUDGET_WAIT_SECONDS="2",
    )
    yield srv
    srv.stop()


@pytest.fixture
def storage(s3, db, budget_server) -> Store:
    return Store(s3, db, budget_server.bucket)


def buffered(server: Server) -> float:
    """The server's bytes held against the budget (its gauge in /metrics)."""
    text = server.client.get("/metrics").body.decode()
    return float(re.search(r"^run_handler_buffered_bytes (\S+)$", text, re.M).group(1))


def hold_most_of_the_budget(server: Server, body: bytes):
    """Send all but the end of ``body`` (a /runs/batch body: its run is held whole until it
    ends), and wait until the server holds it; returns the connection, and what is left to send."""
    client = server.client
    conn = client.start_post("/runs/batch")
    cut = len(body) - 1000
    for i in range(0, cut, CHUNK):
        client.send_chunk(conn, body[i : min(i + CHUNK, cut)])
    deadline = time.monotonic() + 60
    while buffered(server) < cut - MIB and time.monotonic() < deadline:
        time.sleep(0.05)
    assert buffered(server) >= cut - MIB
    return conn, body[cut:]


def big_run(size: int, run_id: str | None = None) -> bytes:
    """One run whose input is a single string of about ``size`` bytes."""
    run = {"trace_id": str(uuid.uuid4()), "name": "big", "inputs": {"text": "q" * size}}
    if run_id:
        run = {"id": run_id, **run}
    return json.dumps(run).encode()


def test_budget_waiters_are_served_in_order_and_refused_in_time():
    async def main() -> None:
        budget = Budget(100, wait_seconds=0.5)
        await budget.acquire(80)
        second = asyncio.ensure_future(budget.acquire(30))
        third = asyncio.ensure_future(budget.acquire(10))  # fits, but comes after the second
        await asyncio.sleep(0)
        assert budget.waiting == 2 and not third.done()
        budget.release(50)
        await asyncio.wait([second, third], timeout=1)
        assert second.done() and third.done() and budget.held == 70
        with pytest.raises(Busy) as refused:
            await budget.acquire(40)
        assert refused.value.status == 503 and refused.value.retry_after >= 1
        assert budget.held == 70 and budget.waiting == 0
        await budget.acquire(500, own=70)  # a request holding all that is held always gets room
        assert budget.held == 570

    asyncio.run(main())


def test_an_older_request_waiting_refuses_younger_waiters_that_hold_what_it_needs():
    """Requests that hold part of the budget and wait for more would wait for each other until
    they all time out: the youngest waiters are refused at once, so the oldest progresses."""

    async def main() -> None:
        budget = Budget(100, wait_seconds=30)
        old, young, younger = (Claim(budget, lambda: 0) for _ in range(3))
        for claim in (old, young, younger):
            await claim.room(30)  # each holds 30
        assert budget.held == 90
        old_waits = asyncio.ensure_future(budget.acquire(20, 30, old.rank))
        young_waits = asyncio.ensure_future(budget.acquire(20, 30, young.rank))
        await asyncio.wait([young_waits], timeout=1)
        with pytest.raises(Busy):
            young_waits.result()  # refused at once: its 30 cover what the oldest lacks
        younger_waits = asyncio.ensure_future(budget.acquire(20, 30, younger.rank))
        await asyncio.sleep(0.01)
        assert not old_waits.done() and not younger_waits.done()  # 30 are on their way back
        budget.let_go(30)  # the refused request is undone and gives back what it held
        budget.release(30)
        await asyncio.wait([old_waits, younger_waits], timeout=1)
        assert old_waits.done() and younger_waits.done() and budget.held == 100  # oldest first

    asyncio.run(main())


def test_the_server_refuses_to_start_with_a_budget_too_small_for_one_request(monkeypatch):
    monkeypatch.setenv("MAX_RUN_BYTES", str(MAX_RUN))
    monkeypatch.setenv("UPLOAD_WINDOW_BYTES", str(WINDOW))
    monkeypatch.setenv("SEGMENT_BYTES", str(SEGMENT))
    monkeypatch.setenv("MAX_BUFFERED_BYTES", str(BUDGET - 1))
    with pytest.raises(SystemExit, match="MAX_BUFFERED_BYTES .* must be at least"):
        Settings.from_env()
    monkeypatch.setenv("MAX_BUFFERED_BYTES", str(BUDGET))
    assert Settings.from_env().max_buffered_bytes == BUDGET


def test_a_request_without_room_is_503_with_retry_after_and_leaves_nothing(budget_server, storage):
    """A holds most of the budget (a run of /runs/batch is held whole until it ends) and stalls;
    B needs as much: it waits, gets no room, and is undone. Then A ends and is stored."""
    client = budget_server.client
    a_id, b_id = str(uuid.uuid4()), str(uuid.uuid4())
    a_run, b_run = big_run(14 * MIB, a_id), big_run(14 * MIB, b_id)
    before = storage.snapshot()
    a, a_rest = hold_most_of_the_budget(budget_server, b'{"post":[' + a_run + b"]}")
    b = client.start_post("/runs/batch")
    b_body = b'{"post":[' + b_run + b"]}"
    try:
        for i in range(0, len(b_body), CHUNK):
            client.send_chunk(b, b_body[i : i + CHUNK])
    except OSError:
        pass  # the server answered and closed while we were still sending
    b_answer = client.finish(b)
    assert b_answer.status == 503, b_answer.body[:300]
    assert "busy" in b_answer.json()["error"]
    client.send_chunk(a, a_rest)
    a_answer = client.finish(a)
    assert a_answer.status == 202, a_answer.body[:300]
    assert client.get(f"/runs/{a_id}").body == a_run
    assert client.get(f"/runs/{b_id}").status == 404
    rows, keys = storage.snapshot()
    assert rows - before[0] == {a_id}
    assert storage.runs_in(keys - before[1]) == 1  # A's object, nothing of B


def test_a_503_carries_retry_after(budget_server):
    """The header itself (http.client's Response in tests/client.py keeps only status and body)."""
    import http.client

    client = budget_server.client
    body = b'{"post":[' + big_run(14 * MIB) + b"]}"
    hold, rest = hold_most_of_the_budget(budget_server, body)
    other = http.client.HTTPConnection(client.host, client.port, timeout=120)
    other.putrequest("POST", "/runs/batch")
    other.putheader("Content-Type", "application/json")
    other.putheader("Transfer-Encoding", "chunked")
    other.endheaders()
    try:
        for i in range(0, len(body), CHUNK):
            other.send(b"%x\r\n%s\r\n" % (len(body[i : i + CHUNK]), body[i : i + CHUNK]))
        other.send(b"0\r\n\r\n")
    except OSError:
        pass
    response = other.getresponse()
    assert response.status == 503
    assert int(response.getheader("Retry-After")) >= 1
    other.close()
    client.send_chunk(hold, rest)
    assert client.finish(hold).status == 202


def test_concurrent_large_batches_stay_within_the_budget(budget_server, storage):
    """16 clients at once, each one run of a 14 MB string: every answer 201 or 503, every 201 run
    stored exactly, no 503 leaves anything, and the server's peak memory grows by at most the
    budget and a fixed overhead (without the budget: about 16 times a run)."""
    client = budget_server.client
    pid = budget_server.process.pid
    assert client.post(b"[]").status == 201
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak so far (earlier tests) is forgotten
    before_rss = status_kb(pid, "VmRSS")
    before = storage.snapshot()
    runs = {str(uuid.uuid4()): big_run(14 * MIB) for _ in range(16)}
    answers: dict[str, object] = {}

    def send(run_id: str) -> None:
        body = b"[" + json.dumps({"id": run_id, **json.loads(runs[run_id])}).encode() + b"]"
        runs[run_id] = body[1:-1]
        answers[run_id] = client.post([body[i : i + CHUNK] for i in range(0, len(body), CHUNK)])

    threads = [threading.Thread(target=send, args=(run_id,)) for run_id in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    growth = (status_kb(pid, "VmHWM") - before_rss) * 1024
    statuses = [a.status for a in answers.values()]
    assert set(statuses) <= {201, 503}, statuses
    stored = {run_id for run_id, a in answers.items() if a.status == 201}
    assert stored, statuses
    for run_id in stored:
        assert client.get(f"/runs/{run_id}").body == runs[run_id]
    rows, _ = storage.snapshot()
    assert rows - before[0] == stored
    assert growth < BUDGET + 64 * MIB, (growth / MIB, statuses)
