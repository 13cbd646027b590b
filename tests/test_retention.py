"""Retention (README "Retention"): traces expire whole, their rows, feedback marks and objects go,
and nothing unexpired is touched -- against a server and `python -m handler retain` of their own
(a database and a bucket of this module's, so expiring "everything older than" never reaches the
other suites' runs).

Time travel is ``retain --as-of``; where a sweep must run at the real time (concurrent ingest, the
server's own sweep) the test moves its runs' ``created_at`` back instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from handler.server.auth import hash_key
from handler.server.config import REPO_ROOT
from tests.conftest import FreshConnections, scratch_database
from tests.reset_env import empty_bucket
from tests.rollup import assert_rollup_right
from tests.server import start_server
from tests.test_faults import wait_for
from tests.test_langsmith_api import MULTIPART, form, part

ALPHA, BETA = "alpha-key-retention", "beta-key-retention"
A, B = {"x-api-key": ALPHA}, {"x-api-key": BETA}


@pytest.fixture(scope="module")
def env(settings, s3):
    names = {
        "DB_NAME": f"{settings.db_name}_retention",
        "S3_BUCKET_NAME": f"{settings.s3_bucket_name}-retention",
        "API_KEYS": f"alpha:{hash_key(ALPHA)},beta:{hash_key(BETA)}",
        "RETENTION_SWEEP_SECONDS": "0",
        "PACK_MAX_RUN_BYTES": "2000",  # a larger run gets an object of its own
        "RETENTION_BATCH_ROWS": "7",  # many small transactions
    }
    admin = FreshConnections(settings)
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{names["DB_NAME"]}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{names["DB_NAME"]}"')
    empty_bucket(s3, names["S3_BUCKET_NAME"])
    yield names
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{names["DB_NAME"]}" WITH (FORCE)')
    empty_bucket(s3, names["S3_BUCKET_NAME"])


@pytest.fixture(scope="module")
def rserver(tmp_path_factory, env):
    srv = start_server(tmp_path_factory.mktemp("retention"), "retention", **env)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def rdb(settings, env):
    return FreshConnections(dataclasses.replace(settings, db_name=env["DB_NAME"]))


def retain(env: dict, *args: str, **extra: str) -> str:
    """``python -m handler retain ARGS`` with the module's settings; returns its log."""
    result = subprocess.run(
        [sys.executable, "-m", "handler", "retain", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "RUN_HANDLER_ENV": "test", **env, **extra},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def later(**delta) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


def project(srv, headers: dict, name: str, **fields) -> str:
    response = srv.client.post(json.dumps({"name": name, **fields}).encode(), "/sessions", headers=headers)
    assert response.status == 201, response.body
    return response.json()["id"]


def trace(project_name: str, children: int = 2, big: bool = False) -> list[dict]:
    """A root and its children, as the SDK sends them (the root's id is the trace id)."""
    root = str(uuid.uuid4())
    runs = [
        {"id": root, "trace_id": root, "name": "root", "session_name": project_name, "inputs": {"q": "é"}}
    ]
    for i in range(children):
        runs.append(
            {
                "id": str(uuid.uuid4()),
                "trace_id": root,
                "parent_run_id": root,
                "name": f"child {i}",
                "session_name": project_name,
                "outputs": {"text": "x" * (5000 if big and i == 0 else 10)},
            }
        )
    return runs


def post(srv, headers: dict, runs: list[dict]) -> None:
    response = srv.client.post(json.dumps(runs).encode(), "/runs", headers=headers)
    assert response.status == 201, response.body


def exact(srv, headers: dict, runs: list[dict]) -> None:
    for run in runs:
        response = srv.client.get(f"/runs/{run['id']}", headers=headers)
        assert response.status == 200, response.body
        assert response.body == json.dumps(run).encode()


def kept_with_stats(srv, runs: list[dict]) -> None:
    """Still stored: GET answers the run as sent, with feedback_stats added last where it has any."""
    for run in runs:
        response = srv.client.get(f"/runs/{run['id']}", headers=A)
        assert response.status == 200, response.body
        assert response.body == json.dumps(run).encode() or response.body.startswith(
            json.dumps(run).encode()[:-1] + b',"feedback_stats":'
        )


def gone(srv, headers: dict, runs: list[dict]) -> None:
    for run in runs:
        assert srv.client.get(f"/runs/{run['id']}", headers=headers).status == 404
    assert srv.client.get(f"/runs?trace_id={runs[0]['trace_id']}", headers=headers).json()["runs"] == []


def keys(s3, env: dict) -> set[str]:
    found = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=env["S3_BUCKET_NAME"]):
        found.update(o["Key"] for o in page.get("Contents", []))
    return found


def run_keys(rdb) -> set[str]:
    with rdb.cursor() as cur:
        cur.execute("SELECT object_key FROM runs UNION SELECT object_key FROM run_attachments")
        return {row[0] for row in cur.fetchall()}


def details(srv, headers: dict, project_id: str) -> dict:
    response = srv.client.get(f"/sessions/{project_id}", headers=headers)
    assert response.status == 200, response.body
    return response.json()


def test_as_of_expires_whole_traces_and_keeps_the_rest_byte_exact(rserver, env, rdb, s3):
    short = project(rserver, A, "short", retention_days=1)
    keep = project(rserver, A, "keep")
    expiring, big, kept = trace("short"), trace("short", big=True), trace("keep")
    # One request: the small runs of all three share one segment; big's first child is its own object.
    post(rserver, A, expiring + big + kept)
    attachment = rserver.client.post(
        form(part(f"attachment.{expiring[1]['id']}.notes.txt", b"notes", "text/plain")),
        "/runs/multipart",
        MULTIPART,
        A,
    )
    assert attachment.status == 202, attachment.body
    before = keys(s3, env)
    assert any(f"/runs/{big[1]['id']}/" in k for k in before)
    assert rserver.client.get(f"/runs/{expiring[1]['id']}/attachments/notes.txt", headers=A).body == b"notes"
    with rdb.cursor() as cur:
        cur.execute(
            "SELECT id::text, object_key FROM runs WHERE id = ANY(%s::uuid[])",
            ([expiring[0]["id"], kept[0]["id"]],),
        )
        assert len({key for _, key in cur.fetchall()}) == 1  # one segment holds both
    shown = details(rserver, A, short)
    assert shown["run_count"] == 6 and shown["retention"] == {"days": 1, "longlived_days": None}
    assert shown["retention_days"] == 1 and shown["trace_tier"] == "shortlived"

    assert "would delete 2 traces, 6 runs" in retain(env, "--dry-run", "--as-of", later(days=2))
    assert "deleted 0 traces" in retain(env, "--as-of", later(hours=23))
    exact(rserver, A, expiring + big + kept)

    log = retain(env, "--as-of", later(days=2))
    assert "deleted 2 traces, 6 runs" in log, log
    gone(rserver, A, expiring + big)
    assert rserver.client.get(f"/runs/{expiring[1]['id']}/attachments/notes.txt", headers=A).status == 404
    query = rserver.client.post(json.dumps({"session": [short]}).encode(), "/runs/query", headers=A)
    assert query.status == 200 and query.json()["runs"] == []
    exact(rserver, A, kept)  # out of the shared segment, which stays for it
    after = keys(s3, env)
    assert not any(f"/runs/{run['id']}/" in k for run in expiring + big for k in after)
    assert after <= before and after == run_keys(rdb)
    assert details(rserver, A, short)["run_count"] == 0 and details(rserver, A, short)["bytes_stored"] == 0
    assert details(rserver, A, keep)["run_count"] == 3
    with rdb.cursor() as cur:
        cur.execute("SELECT count(*) FROM retention_pending_objects")
        assert cur.fetchone()[0] == 0

    # Compaction rewrites the shared segment for its live runs, byte for byte.
    subprocess.run(
        [sys.executable, "-m", "handler", "compact", "--grace-seconds", "0", "--min-live", "1"],
        cwd=REPO_ROOT,
        env={**os.environ, "RUN_HANDLER_ENV": "test", **env},
        check=True,
        capture_output=True,
    )
    exact(rserver, A, kept)
    assert keys(s3, env) == run_keys(rdb)


def test_a_segment_of_expired_runs_only_is_deleted(rserver, env, rdb, s3):
    project(rserver, A, "alone", retention_days=2)
    runs = trace("alone", children=4)
    post(rserver, A, runs)
    with rdb.cursor() as cur:
        cur.execute("SELECT DISTINCT object_key FROM runs WHERE trace_id = %s", (runs[0]["id"],))
        (segment,) = [row[0] for row in cur.fetchall()]
    assert "deleted 0 traces" in retain(env, "--as-of", later(days=1))
    assert "deleted 1 traces, 5 runs" in retain(env, "--as-of", later(days=3))
    assert segment not in keys(s3, env)
    gone(rserver, A, runs)


def test_one_tenants_policy_never_touches_another(rserver, env):
    project(rserver, A, "same name", retention_days=1)
    project(rserver, B, "same name")
    alphas, betas = trace("same name"), trace("same name")
    post(rserver, A, alphas)
    post(rserver, B, betas)
    retain(env, "--as-of", later(days=30))
    gone(rserver, A, alphas)
    exact(rserver, B, betas)


def test_the_long_tier(rserver, env):
    tiered = project(rserver, A, "tiered", retention_days=1, longlived_ttl_days=5)
    asked, plain = trace("tiered"), trace("tiered")
    post(rserver, A, asked + plain)
    extend = rserver.client.post(b"", f"/traces/{asked[0]['id']}/extend-retention", headers=A)
    assert extend.status == 200 and extend.json()["trace_tier"] == "longlived"
    assert rserver.client.post(b"", f"/traces/{uuid.uuid4()}/extend-retention", headers=A).status == 404
    # Another tenant cannot extend (or learn of) alpha's trace.
    assert rserver.client.post(b"", f"/traces/{asked[0]['id']}/extend-retention", headers=B).status == 404
    retain(env, "--as-of", later(days=2))
    exact(rserver, A, asked)
    gone(rserver, A, plain)
    retain(env, "--as-of", later(days=6))
    gone(rserver, A, asked)
    # A project moved to the long tier keeps what it has for the long period.
    response = rserver.client.patch(f"/sessions/{tiered}", json.dumps({"trace_tier": "longlived"}).encode())
    assert response.status == 401  # no key
    fresh = trace("tiered")
    post(rserver, A, fresh)
    patch = rserver.client.post(
        json.dumps({"trace_tier": "longlived"}).encode(), f"/sessions/{tiered}", headers=A, method="PATCH"
    )
    assert patch.status == 200 and patch.json()["trace_tier"] == "longlived", patch.body
    assert details(rserver, A, tiered)["retention"] == {"days": 5, "longlived_days": 5}
    retain(env, "--as-of", later(days=3))
    exact(rserver, A, fresh)
    retain(env, "--as-of", later(days=6))
    gone(rserver, A, fresh)


def test_patch_and_post_sessions_check_their_fields(rserver):
    made = project(rserver, A, "checked", trace_tier="longlived", longlived_ttl_days=30)
    shown = details(rserver, A, made)
    assert (shown["trace_tier"], shown["longlived_ttl_days"], shown["retention_days"]) == (
        "longlived",
        30,
        None,
    )
    assert shown["oldest_run_received_at"] is None and shown["bytes_stored"] == 0

    def patch(body: dict, project_id: str = made):
        return rserver.client.post(
            json.dumps(body).encode(), f"/sessions/{project_id}", headers=A, method="PATCH"
        )

    for bad in (
        {"trace_tier": "forever"},
        {"retention_days": 0},
        {"retention_days": "7"},
        {"retention_days": True},
        {"longlived_ttl_days": 36501},
        {"name": "renamed"},
        {"end_time": "2026-01-01T00:00:00Z"},
        {"description": 5},
    ):
        assert patch(bad).status == 400, bad
    assert patch({"retention_days": 3}, str(uuid.uuid4())).status == 404
    assert (
        rserver.client.post(b'{"retention_days": 3}', f"/sessions/{made}", headers=B, method="PATCH").status
        == 404
    )
    # What the SDK's update_project sends: nulls for what it leaves alone.
    body = {"name": None, "extra": None, "description": "d", "end_time": None, "retention_days": 3}
    changed = patch(body)
    assert changed.status == 200 and changed.json()["retention_days"] == 3
    assert changed.json()["longlived_ttl_days"] == 30 and changed.json()["description"] == "d"
    assert patch({"longlived_ttl_days": None}).json()["longlived_ttl_days"] is None
    bad_post = rserver.client.post(b'{"name": "x", "trace_tier": 1}', "/sessions", headers=A)
    assert bad_post.status == 400


def test_usage_follows_ingest_patches_and_deletes(rserver, rdb):
    made = project(rserver, A, "usage")
    runs = trace("usage", children=3)
    post(rserver, A, runs)
    sizes = sum(len(json.dumps(run)) for run in runs)
    shown = details(rserver, A, made)
    assert shown["run_count"] == 4 and shown["bytes_stored"] == sizes
    assert datetime.fromisoformat(shown["oldest_run_received_at"]) > datetime.now(UTC) - timedelta(minutes=5)
    with rdb.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE session_id = %s", (made,))
        assert cur.fetchone()[0] == 4
        cur.execute("DELETE FROM runs WHERE id = %s", (runs[3]["id"],))
    assert details(rserver, A, made)["run_count"] == 3


def test_the_monitors_rollup_follows_the_sweeps_deletes(rserver, env, rdb):
    """The sweep deletes rows in small transactions (RETENTION_BATCH_ROWS); runs_hourly's triggers
    take each one out of the monitor's counts: what is left is what the runs left count."""
    watched = project(rserver, A, "watched", retention_days=1)
    project(rserver, A, "watched-kept")
    start = datetime.now(UTC) - timedelta(hours=2)
    timed = []
    for name, count in (("watched", 4), ("watched-kept", 2)):
        for i in range(count):
            runs = trace(name, children=i % 3)
            for j, run in enumerate(runs):
                run["start_time"] = (start + timedelta(minutes=10 * i)).isoformat()
                run["end_time"] = (
                    start + timedelta(minutes=10 * i, milliseconds=100 * (i + 1) - j)
                ).isoformat()
            runs[0]["error"] = "failed" if i == 1 else None
            timed.extend(runs)
    post(rserver, A, timed)
    with rdb.cursor() as cur:
        counted = {row[0] for row in assert_rollup_right(cur, "alpha")}
    assert watched in counted
    log = retain(env, "--as-of", later(days=2))
    assert "deleted" in log and "deleted 0 traces" not in log, log
    with rdb.cursor() as cur:
        left = assert_rollup_right(cur, "alpha")
    assert watched not in {row[0] for row in left} and sum(row[4] for row in left) >= 2


def test_concurrent_ingest_and_reads_during_a_sweep(rserver, env, rdb):
    project(rserver, A, "busy", retention_days=1)
    old = [trace("busy", children=1) for _ in range(40)]
    for i in range(0, 40, 10):
        post(rserver, A, [run for t in old[i : i + 10] for run in t])
    with rdb.cursor() as cur:
        cur.execute("UPDATE runs SET created_at = created_at - interval '2 days' WHERE session_name = 'busy'")
    new, answers, stop = [], [], threading.Event()

    def ingest():
        while not stop.is_set():
            t = trace("busy", children=1)
            post(rserver, A, t)
            new.append(t)

    def read():
        while not stop.is_set():
            for t in old[::5]:
                response = rserver.client.get(f"/runs/{t[1]['id']}", headers=A)
                answers.append((response.status, response.body == json.dumps(t[1]).encode()))

    threads = [threading.Thread(target=ingest), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    try:
        while not (new and answers):
            time.sleep(0.05)
        log = retain(env)
        seen = len(new)
        while len(new) == seen:  # one more batch after the sweep
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert "deleted 40 traces, 80 runs" in log, log
    assert new and answers
    assert all(status == 404 or (status == 200 and same) for status, same in answers), answers
    for t in old:
        gone(rserver, A, t)
    for t in new:
        exact(rserver, A, t)


@pytest.fixture(scope="module")
def rserver_alone(tmp_path_factory, env):
    """The module's server with group commit off: patches are written by db.write_batch."""
    srv = start_server(tmp_path_factory.mktemp("alone"), "alone", **env, GROUP_MAX_BYTES="0")
    yield srv
    srv.stop()


def blocked_updates(rdb) -> int:
    with rdb.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE '%%UPDATE runs%%'"
        )
        return cur.fetchone()[0]


@pytest.mark.parametrize("grouped", [True, False], ids=["group-commit", "write-batch"])
def test_a_patch_of_a_run_deleted_before_its_commit_is_kept_as_a_patch_before_its_post(grouped, request, rdb):
    """A sweep deletes a run between a patch's read of it and the patch's commit: the deleting
    transaction is opened first, so the patch still reads the run (and its bytes) and then waits on
    the row in its UPDATE; the delete commits and the UPDATE finds nothing. The patch is answered
    as one of an unknown run is -- accepted and kept alone, its own fields only (the deleted run's
    fields never come back); the other run it patches is patched as usual."""
    srv = request.getfixturevalue("rserver" if grouped else "rserver_alone")
    doomed = trace("racing", children=0)[0] | {"old_only": "deleted with its run"}
    live = trace("racing", children=0)[0]
    post(srv, A, [doomed, live])
    patches = [
        {"id": doomed["id"], "name": "first", "outputs": {"a": 1}},
        {"id": doomed["id"], "name": "second"},
        {"id": live["id"], "outputs": {"b": 2}},
    ]
    with rdb.cursor() as sweep, ThreadPoolExecutor(1) as pool:
        sweep.execute("BEGIN")
        sweep.execute("DELETE FROM runs WHERE tenant = 'alpha' AND id = %s", (doomed["id"],))
        body = json.dumps({"post": [], "patch": patches}).encode()
        answer = pool.submit(srv.client.post, body, "/runs/batch", "application/json", A)
        assert wait_for(lambda: blocked_updates(rdb) >= 1), "the patch did not reach its UPDATE"
        sweep.execute("COMMIT")
        response = answer.result(timeout=60)
    assert response.status == 202, response.body
    assert response.json()["patched"] == [doomed["id"], live["id"]]
    assert srv.client.get(f"/runs/{doomed['id']}", headers=A).status == 404  # as a patch before its post
    assert json.loads(srv.client.get(f"/runs/{live['id']}", headers=A).body) == live | {"outputs": {"b": 2}}
    with rdb.cursor() as cur:
        cur.execute("SELECT posted FROM runs WHERE id = %s", (doomed["id"],))
        assert cur.fetchall() == [(False,)]
    late = {key: doomed[key] for key in ("id", "trace_id", "session_name")} | {
        "name": "late",
        "inputs": {"q": 2},
    }
    post(srv, A, [late])
    stored = json.loads(srv.client.get(f"/runs/{doomed['id']}", headers=A).body)
    assert stored == late | {"name": "second", "outputs": {"a": 1}}


def test_kill_9_mid_sweep_then_a_rerun_finishes(rserver, env, rdb, s3):
    project(rserver, A, "killed", retention_days=1)
    old = [trace("killed", children=2, big=True) for _ in range(6)]
    post(rserver, A, [run for t in old for run in t])
    with rdb.cursor() as cur:
        for minutes, t in enumerate(old):  # one trace after another: a page of 7 rows holds 3 of them
            cur.execute(
                "UPDATE runs SET created_at = created_at - interval '2 days' + make_interval(mins => %s)"
                " WHERE trace_id = %s",
                (minutes, t[0]["id"]),
            )
    # A sweep that stops for good right after its first commit, before deleting any object.
    script = (
        "import asyncio, sys\n"
        "from handler.server.config import Settings\n"
        "from handler.store.db import Database\n"
        "from handler.store.objects import ObjectStore\n"
        "from handler.retention.sweep import Sweep\n"
        "async def main():\n"
        "    s = Settings.from_env(); store = ObjectStore(s); await store.start()\n"
        "    async def hang():\n"
        "        print('committed', flush=True); await asyncio.sleep(600)\n"
        "    await Sweep(s, store, Database(s)).run(after_commit=hang)\n"
        "asyncio.run(main())\n"
    )
    sweep = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env={**os.environ, "RUN_HANDLER_ENV": "test", **env},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sweep.stdout.readline().strip() == "committed"
    finally:
        sweep.send_signal(signal.SIGKILL)
        sweep.wait()
    with rdb.cursor() as cur:
        cur.execute("SELECT count(*) FROM retention_pending_objects")
        pending = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM runs WHERE session_name = 'killed'")
        left = cur.fetchone()[0]
    assert pending > 0 and left == 9  # the first 3 traces went in the first batch
    # Never a row without its bytes: every row's object is still there.
    assert run_keys(rdb) <= keys(s3, env)
    log = retain(env)
    assert "objects left by an earlier sweep" in log, log
    for t in old:
        gone(rserver, A, t)
    with rdb.cursor() as cur:
        cur.execute("SELECT count(*) FROM retention_pending_objects")
        assert cur.fetchone()[0] == 0
    assert keys(s3, env) == run_keys(rdb)


def test_the_server_sweeps_alone_under_the_lock(tmp_path, env, rdb):
    srv = start_server(tmp_path, "sweeping", **{**env, "RETENTION_SWEEP_SECONDS": "1"})
    try:
        project(srv, A, "periodic", retention_days=1)
        runs = trace("periodic")
        post(srv, A, runs)
        with rdb.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (0x72756E5F726574,))  # as another sweep would
            cur.execute(
                "UPDATE runs SET created_at = created_at - interval '2 days' WHERE trace_id = %s",
                (runs[0]["id"],),
            )
            busy = subprocess.run(
                [sys.executable, "-m", "handler", "retain"],
                cwd=REPO_ROOT,
                env={**os.environ, "RUN_HANDLER_ENV": "test", **env},
                capture_output=True,
                text=True,
            )
            assert busy.returncode != 0 and "another retention sweep is running" in busy.stderr
            time.sleep(2)
            exact(srv, A, runs)
            assert (
                'run_handler_retention_sweeps_total{result="busy"}'
                in srv.client.get("/metrics").body.decode()
            )
        deadline = time.monotonic() + 20
        while (
            srv.client.get(f"/runs/{runs[0]['id']}", headers=A).status != 404 and time.monotonic() < deadline
        ):
            time.sleep(0.3)
        gone(srv, A, runs)
        metrics = srv.client.get("/metrics").body.decode()
        line = next(
            x for x in metrics.splitlines() if x.startswith("run_handler_retention_runs_deleted_total ")
        )
        assert float(line.split()[1]) >= 3
    finally:
        srv.stop()


def test_the_sdk_reads_and_updates_a_projects_retention(rserver):
    from langsmith import Client

    url = f"http://127.0.0.1:{rserver.client.port}"
    client = Client(api_url=url, api_key=ALPHA, auto_batch_tracing=False)
    made = client.create_project("sdk retention", description="first")
    read = client.read_project(project_id=made.id)
    assert read.run_count == 0 and read.name == "sdk retention"
    updated = client.update_project(made.id, description="second", metadata={"team": "x"})
    assert updated.description == "second" and updated.metadata == {"team": "x"}
    # The SDK has no argument for the retention fields: PATCH them as LangSmith's API takes them.
    body = json.dumps({"trace_tier": "longlived", "longlived_ttl_days": 400}).encode()
    assert rserver.client.post(body, f"/sessions/{made.id}", headers=A, method="PATCH").status == 200
    assert details(rserver, A, str(made.id))["retention"] == {"days": None, "longlived_days": None}
    assert client.read_project(project_id=made.id).description == "second"


def test_expired_traces_feedback_goes_with_them(rserver, env, rdb):
    """Feedback (handler/feedback, migration 0006) of an expired trace is deleted with it, whether
    it names the trace or only a run of it (written straight into the table, as it would be stored
    for a run it names only)."""
    project(rserver, A, "with feedback", retention_days=1)
    expiring, kept = trace("with feedback"), trace("with feedback")
    post(rserver, A, expiring + kept)
    with rdb.cursor() as cur:
        for run, trace_id in (
            (expiring[1], expiring[0]["id"]),
            (expiring[2], None),
            (kept[1], kept[0]["id"]),
        ):
            cur.execute(
                "INSERT INTO feedback (tenant, id, run_id, trace_id, key, created_at, modified_at)"
                " VALUES ('alpha', %s, %s, %s, 'k', now(), now())",
                (str(uuid.uuid4()), run["id"], trace_id),
            )
        cur.execute(
            "UPDATE runs SET created_at = created_at - interval '2 days' WHERE trace_id = %s",
            (expiring[0]["id"],),
        )
    retain(env)
    gone(rserver, A, expiring)
    kept_with_stats(rserver, kept)
    with rdb.cursor() as cur:
        cur.execute("SELECT run_id::text FROM feedback WHERE key = 'k'")
        assert [row[0] for row in cur.fetchall()] == [kept[1]["id"]]


def test_the_migration_counts_existing_runs_and_rolls_back(settings):
    """0008 on a database with runs: each project's usage is counted from them; its rollback drops
    what it added (the projects' retention settings with it) and leaves the runs."""
    from yoyo import get_backend, read_migrations

    from handler.store.migrations import SCHEMA_DIR, migrate, rollback_last

    with scratch_database(settings, "_retention_migration", before="0008_retention") as scratch:
        with FreshConnections(scratch).cursor() as cur:
            session = str(uuid.uuid4())
            for size, posted in ((10, True), (20, True), (5, False)):
                cur.execute(
                    "INSERT INTO runs (tenant, id, trace_id, name, object_key, size_bytes, session_id,"
                    " posted) VALUES ('t', %s, %s, 'r', %s, %s, %s, %s)",
                    (str(uuid.uuid4()), str(uuid.uuid4()), uuid.uuid4().hex, size, session, posted),
                )
            assert migrate(scratch) >= 1
            cur.execute(
                "SELECT sum(run_count), sum(bytes) FROM session_usage WHERE session_id = %s", (session,)
            )
            assert cur.fetchone() == (2, 35)
            while "0008_retention" in {
                m.id for m in get_backend(scratch.db_url).to_rollback(read_migrations(str(SCHEMA_DIR)))
            }:
                assert rollback_last(scratch) == 1
            cur.execute("SELECT to_regclass('session_usage'), to_regclass('retention_pending_objects')")
            assert cur.fetchone() == (None, None)
            cur.execute("SELECT count(*) FROM runs")
            assert cur.fetchone()[0] == 3
            assert migrate(scratch) >= 1


def test_feedback_moves_its_trace_to_the_long_tier(rserver, env):
    project(rserver, A, "rated", retention_days=1, longlived_ttl_days=5)
    rated, by_run, declined, unrated = (trace("rated") for _ in range(4))
    post(rserver, A, rated + by_run + declined + unrated)
    for body in (
        {"trace_id": rated[0]["id"], "run_id": rated[1]["id"], "key": "good", "score": 1},
        {"run_id": by_run[2]["id"], "key": "good", "score": 1},  # the trace comes from the run
        {"trace_id": declined[0]["id"], "key": "good", "score": 0, "extend_trace_retention": False},
    ):
        response = rserver.client.post(json.dumps(body).encode(), "/feedback", headers=A)
        assert response.status in (200, 201, 202), response.body
    retain(env, "--as-of", later(days=2))
    kept_with_stats(rserver, rated + by_run)
    gone(rserver, A, declined)
    gone(rserver, A, unrated)
    retain(env, "--as-of", later(days=6))
    gone(rserver, A, rated)
    gone(rserver, A, by_run)
