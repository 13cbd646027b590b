"""Faults against the real services: MinIO or PostgreSQL stopped mid-batch, SIGTERM, kill -9.

These stop and restart the services that scripts/services.sh started, so they are skipped when
the services belong to someone else (for example docker compose).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid

import pytest

from handler.server.config import MIN_PART_BYTES, REPO_ROOT
from tests.runs import batch, run, split
from tests.server import run_handler, start_server

SERVICES = REPO_ROOT / "scripts" / "services.sh"


def services(command: str) -> None:
    subprocess.run(
        ["bash", str(SERVICES), command],
        check=True,
        env={**os.environ, "RUN_HANDLER_ENV": "test"},
        capture_output=True,
    )


pytestmark = pytest.mark.skipif(
    subprocess.run(["bash", str(SERVICES), "owns"], capture_output=True).returncode != 0,
    reason="the services were not started by scripts/services.sh",
)


def runs_with_ids(count: int) -> list[dict]:
    return [run(id=str(uuid.uuid4()), inputs={"i": i, "text": "x" * 2000}) for i in range(count)]


def body_parts(runs: list[dict]) -> tuple[bytes, bytes]:
    """The batch cut after its first half of runs (the cut falls between two runs)."""
    half = len(runs) // 2
    return b"[" + batch(*runs[:half])[1:-1] + b",", batch(*runs[half:])[1:]


def send_first_half(srv, store, runs: list[dict]):
    """Open a batch and send its first half; returns the open connection once those runs are in
    the bucket."""
    keys_before = store.keys()
    conn = srv.client.start_post()
    srv.client.send_chunk(conn, body_parts(runs)[0])
    half = len(runs) // 2
    assert wait_for(lambda: store.runs_in(store.keys() - keys_before) == half), "first half not uploaded"
    return conn


def wait_for(condition, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def row_count(db, ids: list[str]) -> int:
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE id = ANY(%s::uuid[])", (ids,))
        return cur.fetchone()[0]


def gc(grace_seconds: int) -> str:
    return run_handler("gc", "--grace-seconds", str(grace_seconds))


def test_minio_stopped_mid_batch_is_503_then_retry_succeeds_and_gc_cleans(tmp_path, store, db):
    srv = start_server(tmp_path, "minio-fault")
    runs = runs_with_ids(20)
    ids = [r["id"] for r in runs]
    first, rest = body_parts(runs)
    keys_before = store.keys()
    try:
        conn = srv.client.start_post()
        srv.client.send_chunk(conn, first)
        assert wait_for(lambda: store.runs_in(store.keys() - keys_before) >= 10), "first half not uploaded"
        services("stop-minio")
        try:
            srv.client.send_chunk(conn, rest)
            response = srv.client.finish(conn)
            assert response.status == 503
            assert "object storage unavailable" in response.json()["error"]
            assert row_count(db, ids) == 0
        finally:
            services("start-minio")
        # Objects of the failed attempt could not be deleted while MinIO was down; they are
        # invisible (no rows), so the same batch, same ids, goes through.
        response = srv.client.post(first + rest)
        assert response.status == 201
        assert response.json()["ids"] == ids
        stored = {srv.client.get(f"/runs/{i}").body for i in ids}
        leftovers = store.keys() - keys_before
        assert store.runs_in(leftovers) > 20, "expected the failed attempt's objects to be left for gc"
        gc(grace_seconds=0)
        assert store.runs_in(store.keys() - keys_before) == 20
        assert {srv.client.get(f"/runs/{i}").body for i in ids} == stored  # gc kept every stored run
    finally:
        srv.stop()


def test_postgres_stopped_before_commit_is_503_and_objects_removed(tmp_path, store, db):
    srv = start_server(tmp_path, "pg-fault")
    runs = runs_with_ids(10)
    ids = [r["id"] for r in runs]
    before = store.snapshot()
    try:
        conn = srv.client.start_post()
        srv.client.send_chunk(conn, batch(*runs))  # the whole array, but not the end of the body
        assert wait_for(lambda: store.runs_in(store.keys() - before[1]) == 10), "runs not uploaded"
        services("stop-postgres")
        try:
            response = srv.client.finish(conn)
            assert response.status == 503
            assert "database unavailable" in response.json()["error"]
        finally:
            services("start-postgres")
        # With PostgreSQL down the server cannot tell whether the insert committed, so it keeps
        # the objects until it can look: once PostgreSQL is back they go.
        assert wait_for(lambda: store.keys() == before[1], timeout=30), "objects of the failed batch left"
        assert row_count(db, ids) == 0
        assert srv.client.post(batch(*runs)).status == 201  # the pool reconnects
    finally:
        srv.stop()


def test_sigterm_lets_a_streaming_batch_finish_then_exits_0(tmp_path, store, db):
    srv = start_server(tmp_path, "sigterm", SHUTDOWN_TIMEOUT="30")
    runs = runs_with_ids(10)
    first, rest = body_parts(runs)
    conn = srv.client.start_post()
    srv.client.send_chunk(conn, first)
    time.sleep(0.3)
    srv.process.send_signal(signal.SIGTERM)
    # The listening socket closes: no new connections.
    assert wait_for(lambda: not _accepts(srv.client.port), timeout=10)
    srv.client.send_chunk(conn, rest)
    response = srv.client.finish(conn)
    assert response.status == 201
    assert srv.process.wait(timeout=30) == 0
    assert row_count(db, [r["id"] for r in runs]) == 10


def test_sigterm_fails_a_batch_that_outlives_the_timeout_cleanly(tmp_path, store, db):
    srv = start_server(tmp_path, "sigterm-timeout", SHUTDOWN_TIMEOUT="1")
    runs = runs_with_ids(10)
    before = store.snapshot()
    conn = send_first_half(srv, store, runs)
    srv.process.send_signal(signal.SIGTERM)
    assert srv.process.wait(timeout=30) == 0
    conn.close()
    store.assert_unchanged(before)
    assert row_count(db, [r["id"] for r in runs]) == 0


def test_kill_9_mid_batch_leaves_no_visible_run_and_gc_removes_the_rest(tmp_path, store, db):
    srv = start_server(tmp_path, "kill9")
    runs = runs_with_ids(10)
    before = store.snapshot()
    conn = send_first_half(srv, store, runs)
    srv.process.kill()
    srv.process.wait()
    conn.close()
    leftovers = store.keys() - before[1]
    assert store.runs_in(leftovers) == 5 and row_count(db, [r["id"] for r in runs]) == 0
    restarted = start_server(tmp_path, "kill9-restarted")
    try:
        for r in runs:
            assert restarted.client.get(f"/runs/{r['id']}").status == 404
        gc(grace_seconds=3600)  # too young: kept
        assert store.keys() - before[1] == leftovers
        gc(grace_seconds=0)
        store.assert_unchanged(before)
    finally:
        restarted.stop()


def test_kill_9_mid_large_run_leaves_an_unfinished_upload_that_gc_drops(tmp_path, store, db):
    """A run large enough to go up in parts: killed mid-run, its upload is never finished (so no
    object and no row), and gc drops the upload once it is older than the grace period."""
    srv = start_server(tmp_path, "kill9-parts", STREAM_PART_BYTES=str(MIN_PART_BYTES))
    before = store.snapshot()

    def uploads() -> list[dict]:
        return store.s3.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])

    big = run(inputs={f"k{i}": "x" * 10_000 for i in range(2000)})
    conn = srv.client.start_post()
    for chunk in split(b"[" + json.dumps(big).encode()[: 3 * MIN_PART_BYTES], 64 * 1024):
        srv.client.send_chunk(conn, chunk)
    assert wait_for(lambda: uploads()), "no upload in parts started"
    srv.process.kill()
    srv.process.wait()
    conn.close()
    left = uploads()
    assert len(left) == 1
    store.assert_unchanged(before)
    gc(grace_seconds=3600)  # too young: kept
    assert uploads() == left
    gc(grace_seconds=0)
    assert uploads() == []


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
