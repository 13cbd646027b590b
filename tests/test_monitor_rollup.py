"""The monitor's rollup (runs_hourly, schema/0009), kept by PostgreSQL's statement triggers on
runs: checked against the runs themselves after every kind of write -- runs posted, ended and
failed by a later PATCH, patched before their post, a refused batch (rolled back: nothing
counted), SQL updates and deletes -- and the monitor's answer from it against the answer the raw
rows give (percentile_cont over them): counts exactly, percentiles within LATENCY_ERROR.
Retention's deletes are checked in tests/test_retention.py.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest
from psycopg2.extras import execute_values

from handler.read.sessions import session_id_for
from handler.server.auth import OPEN_TENANT
from handler.ui import monitor
from tests.rollup import assert_rollup_right, close
from tests.runs import batch, run

# The answers of the raw rows, as the monitor computed them before the rollup (the reference).
_RAW_WINDOW = (
    "tenant = %(tenant)s AND session_id = %(session)s AND posted"
    " AND coalesce(start_time, '-infinity') >= %(since)s AND coalesce(start_time, '-infinity') < %(until)s"
)
_RAW_COUNTS = (
    "SELECT date_bin(%(step)s, coalesce(start_time, '-infinity'), %(origin)s),"
    " count(*) FILTER (WHERE parent_run_id IS NULL), count(*),"
    " count(*) FILTER (WHERE parent_run_id IS NULL AND status = 'error'), sum(total_tokens)"
    f" FROM runs WHERE {_RAW_WINDOW} GROUP BY 1"
)
_RAW_LATENCY = (
    "SELECT date_bin(%(step)s, coalesce(start_time, '-infinity'), %(origin)s),"
    " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM end_time - start_time) * 1000),"
    " percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM end_time - start_time) * 1000)"
    f" FROM runs WHERE {_RAW_WINDOW} AND parent_run_id IS NULL AND end_time IS NOT NULL"
    " GROUP BY GROUPING SETS ((1), ())"
)


def answer(cur, tenant: str, session: str, days: int, now: datetime) -> dict:
    """The monitor's answer, its statements run on ``cur`` (inside the test's transaction)."""
    cur.execute(*monitor.features_sql())
    features = monitor.features_of(cur.fetchone())
    params = {**monitor.window(days, now), "tenant": tenant, "session": session}
    rows = []
    for statement in monitor.statements(features):  # the feedback table is there (0006)
        cur.execute(statement, params)
        rows.append(cur.fetchall())
    return monitor.series(features, params, *rows)


def raw(cur, tenant: str, session: str, days: int, now: datetime) -> dict:
    """{interval start or None (the window): (traces, runs, errors, tokens, p50, p99)} from the runs."""
    params = {**monitor.window(days, now), "tenant": tenant, "session": session}
    cur.execute(_RAW_COUNTS, params)
    found = {row[0]: [*map(int, (v or 0 for v in row[1:])), None, None] for row in cur.fetchall()}
    found[None] = [sum(v[i] for v in found.values()) for i in range(4)] + [None, None]
    cur.execute(_RAW_LATENCY, params)
    for bucket, p50, p99 in cur.fetchall():
        found[bucket][4:] = [float(p50), float(p99)]
    return {k: tuple(v) for k, v in found.items() if k is None or v[1]}


def assert_same(got: dict, want: dict) -> None:
    """The rollup's answer is the raw rows': counts exactly, percentiles within the documented error
    (and the answer's rounding to 0.1 ms)."""
    points = {datetime.fromisoformat(p["start"]): p for p in got["points"] if p["runs"]}
    assert set(points) == {k for k in want if k is not None}
    for start, p in [*points.items(), (None, got["totals"])]:
        traces, runs, errors, tokens, p50, p99 = want[start]
        assert (p["traces"], p["runs"], p["errors"], p["tokens"]) == (traces, runs, errors, tokens)
        for estimate, exact in ((p["p50"], p50), (p["p99"], p99)):
            if exact is None:
                assert estimate is None
            else:
                assert abs(estimate - exact) <= monitor.LATENCY_ERROR * exact + 0.051, (
                    start,
                    estimate,
                    exact,
                )


@pytest.fixture
def tx(settings):
    """A connection whose work is rolled back at the end."""
    s = settings
    conn = psycopg2.connect(
        host=s.db_host, port=s.db_port, user=s.db_user, password=s.db_password, dbname=s.db_name
    )
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.rollback()
        conn.close()


def test_bucket_middles_are_within_the_error(tx):
    """Each latency's bucket (SQL) stands for a latency (Python) within LATENCY_ERROR of it."""
    latencies = [0.07, 0.5, 1, 1.04, 2, 3.3, 50, 99.9, 100, 1234.5, 65_000, 3_600_000, 86_400_000 * 30]
    tx.execute(
        "SELECT runs_latency_bucket(NULL, t, t + make_interval(secs => ms / 1000))"
        " FROM unnest(%s::float8[]) AS ms, (SELECT now() AS t) AS n",
        (latencies,),
    )
    buckets = [row[0] for row in tx.fetchall()]
    for ms, bucket in zip(latencies, buckets, strict=True):
        assert abs(monitor.bucket_ms(bucket) - ms) <= monitor.LATENCY_ERROR * ms * 1.000001, (ms, bucket)
    assert buckets == sorted(buckets)
    tx.execute(
        "SELECT runs_latency_bucket(NULL, now(), now() - interval '1 s'),"
        " runs_latency_bucket(NULL, now(), now())"
    )
    assert tx.fetchone() == (0, 0)  # under 1/16 ms (clocks that disagree too): bucket 0, taken as 0
    tx.execute(
        "SELECT runs_latency_bucket(gen_random_uuid(), now(), now()), runs_latency_bucket(NULL, now(), NULL)"
    )
    assert tx.fetchone() == (-1, -1)  # a child, a root still running: no latency


def test_the_rollup_answers_as_the_runs_do_through_inserts_updates_and_deletes(tx):
    """A month of generated runs (latencies from 0.1 ms to 100 s, failures, tokens, pending roots,
    unposted rows and runs without a start time), inserted in several statements, then updated
    and deleted in SQL: after each, the rollup is the runs' counts and every window's answer is
    the raw rows' one."""
    rng = random.Random(27)
    tenant, session = f"rollup-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    now = datetime.now(UTC)
    rows = []
    for _ in range(600):
        start = now - timedelta(hours=rng.uniform(0, 24 * 32))
        trace = str(uuid.uuid4())
        latency = timedelta(milliseconds=10 ** rng.uniform(-1, 5))
        ended = rng.random() < 0.9
        root = (trace, trace, None, start, start + latency if ended else None)
        runs = [root] + [
            (str(uuid.uuid4()), trace, trace, start, start + latency / 2) for _ in range(rng.randrange(4))
        ]
        for i, (run_id, trace_id, parent, begin, end) in enumerate(runs):
            rows.append(
                (
                    tenant,
                    run_id,
                    trace_id,
                    parent,
                    None if rng.random() < 0.01 else begin,
                    end,
                    session,
                    "error" if rng.random() < 0.1 else ("success" if end else "pending"),
                    rng.random() < 0.97,  # posted
                    rng.choice([None, 7, 1000]) if i else None,
                )
            )
    insert = (
        "INSERT INTO runs (tenant, id, trace_id, parent_run_id, start_time, end_time, session_id, status,"
        " posted, total_tokens, name, object_key, size_bytes) VALUES %s"
    )
    template = "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'r', gen_random_uuid()::text, 1)"
    execute_values(tx, insert, [(*r[:3], *r[3:]) for r in rows], template=template, page_size=500)

    def check() -> None:
        assert_rollup_right(tx, tenant)
        for days in (1, 7, 30):
            assert_same(answer(tx, tenant, session, days, now), raw(tx, tenant, session, days, now))

    check()
    # PATCHes as the API does them: roots end (some failed), unposted rows get their post.
    tx.execute(
        "UPDATE runs SET end_time = start_time + interval '1234 ms', status = 'error'"
        " WHERE tenant = %s AND end_time IS NULL AND parent_run_id IS NULL",
        (tenant,),
    )
    tx.execute("UPDATE runs SET posted = true WHERE tenant = %s AND NOT posted", (tenant,))
    tx.execute(
        "UPDATE runs SET start_time = start_time - interval '3 hours', total_tokens = 5"
        " WHERE tenant = %s AND id IN (SELECT id FROM runs WHERE tenant = %s ORDER BY id LIMIT 200)",
        (tenant, tenant),
    )
    tx.execute("UPDATE runs SET name = 'renamed' WHERE tenant = %s", (tenant,))  # counts unchanged
    check()
    tx.execute(
        "DELETE FROM runs WHERE tenant = %s"
        " AND id IN (SELECT id FROM runs WHERE tenant = %s ORDER BY id LIMIT 500)",
        (tenant, tenant),
    )
    check()
    tx.execute("DELETE FROM runs WHERE tenant = %s", (tenant,))
    assert assert_rollup_right(tx, tenant) == []


@pytest.fixture
def api_project(client, db):
    project = f"rollup-{uuid.uuid4().hex[:8]}"
    return project, str(session_id_for(OPEN_TENANT, project))


def totals(db, session: str) -> dict:
    with db.cursor() as cur:
        return answer(cur, OPEN_TENANT, session, 1, datetime.now(UTC))["totals"]


def test_a_patch_that_ends_or_fails_a_root_later_is_counted(client, db, api_project):
    project, session = api_project
    start = datetime.now(UTC) - timedelta(minutes=30)
    root, late = str(uuid.uuid4()), str(uuid.uuid4())
    child = run(
        id=str(uuid.uuid4()),
        trace_id=root,
        parent_run_id=root,
        session_name=project,
        start_time=start.isoformat(),
        end_time=(start + timedelta(milliseconds=5)).isoformat(),
    )
    posted = run(id=root, trace_id=root, session_name=project, start_time=start.isoformat())
    assert client.post(batch(posted, child)).status == 201
    assert (t := totals(db, session))["traces"] == 1 and t["runs"] == 2 and t["p50"] is None
    end = {"end_time": (start + timedelta(milliseconds=1234)).isoformat(), "error": "ValueError: late"}
    response = client.patch(f"/runs/{root}", json.dumps(end).encode())
    assert response.status == 200, response.body
    t = totals(db, session)
    assert (t["traces"], t["runs"], t["errors"]) == (1, 2, 1)
    assert close(t["p50"], 1234)
    # A patch before its post: the row is there, unposted, and counts only once the post comes.
    late_patch = {"end_time": (start + timedelta(milliseconds=100)).isoformat()}
    assert client.patch(f"/runs/{late}", json.dumps(late_patch).encode()).status == 200
    assert totals(db, session)["traces"] == 1
    posted_late = run(id=late, trace_id=late, session_name=project, start_time=start.isoformat())
    assert client.post(batch(posted_late)).status == 201
    t = totals(db, session)
    assert (t["traces"], t["runs"], t["errors"]) == (2, 3, 1)
    assert close(t["p50"], 667)  # halfway between 100 and 1234
    with db.cursor() as cur:
        assert len(assert_rollup_right(cur, OPEN_TENANT, session)) == 3  # the child's -1, the roots' buckets


def test_a_refused_batch_counts_nothing(client, db, api_project):
    project, session = api_project
    start = datetime.now(UTC).isoformat()
    first = run(id=str(uuid.uuid4()), session_name=project, start_time=start)
    assert client.post(batch(first)).status == 201
    before = totals(db, session)
    assert before["runs"] == 1
    fresh = [run(id=str(uuid.uuid4()), session_name=project, start_time=start) for _ in range(3)]
    response = client.post(batch(*fresh, run(id=first["id"], session_name=project, start_time=start)))
    assert response.status == 409, response.body  # the batch's rows were written, then rolled back
    assert totals(db, session) == before
    with db.cursor() as cur:
        assert len(assert_rollup_right(cur, OPEN_TENANT, session)) == 1


def test_the_migration_fills_the_rollup_from_existing_runs_and_rolls_back(settings):
    """0009 on a database with runs: the rollup is counted from them (the backfill), and its
    rollback drops the table, triggers and functions and leaves the runs; a TRUNCATE empties it."""
    from yoyo import get_backend, read_migrations

    from handler.store.migrations import SCHEMA_DIR, migrate, rollback_last
    from tests.conftest import FreshConnections, scratch_database

    with scratch_database(settings, "_rollup_migration", before="0009_monitor_rollup") as scratch:
        with FreshConnections(scratch).cursor() as cur:
            session, root, other = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
            for run_id, trace, parent, end, status, posted, tokens in (
                (root, root, None, "10:00:01.5", "error", True, None),  # a failed root of 1.5 s
                (str(uuid.uuid4()), root, root, "10:00:00.2", "success", True, 12),
                (str(uuid.uuid4()), root, root, None, "pending", False, 3),  # unposted: not counted
                (other, other, None, None, "pending", True, None),  # a root still running
            ):
                cur.execute(
                    "INSERT INTO runs (tenant, id, trace_id, parent_run_id, name, object_key, size_bytes,"
                    " session_id, start_time, end_time, status, posted, total_tokens)"
                    " VALUES ('t', %s, %s, %s, 'r', %s, 1, %s, '2026-01-01T10:00:00Z', %s, %s, %s, %s)",
                    (run_id, trace, parent, uuid.uuid4().hex, session, end and f"2026-01-01T{end}Z")
                    + (status, posted, tokens),
                )
            assert migrate(scratch) >= 1  # 0009, and any migration after it
            kept = assert_rollup_right(cur, "t")
            assert sum(row[3] for row in kept) == 3 and sum(row[6] for row in kept) == 12
            assert sorted(row[2] for row in kept if row[4]) == [-1, 1 + math.floor(8 * math.log2(16 * 1500))]
            while "0009_monitor_rollup" in {
                m.id for m in get_backend(scratch.db_url).to_rollback(read_migrations(str(SCHEMA_DIR)))
            }:
                assert rollback_last(scratch) == 1
            cur.execute("SELECT to_regclass('runs_hourly'), to_regproc('runs_hourly_count')")
            assert cur.fetchone() == (None, None)
            cur.execute("SELECT count(*) FROM runs")
            assert cur.fetchone()[0] == 4
            assert migrate(scratch) >= 1
            assert assert_rollup_right(cur, "t") == kept
            cur.execute("TRUNCATE runs CASCADE")  # nothing does it, but the rollup would follow
            cur.execute("SELECT count(*) FROM runs_hourly")
            assert cur.fetchone()[0] == 0


def test_concurrent_writers_of_one_project_keep_it_right(client, db, api_project):
    """Eight clients post traces of one project (roots ending in many latency buckets over two
    hours) and patch them, all at once: every request succeeds (the triggers' upserts wait on one
    another's rows at worst, never fail) and the rollup is the runs' counts."""
    project, session = api_project
    now = datetime.now(UTC)

    def write(seed: int) -> list[int]:
        rng, statuses = random.Random(seed), []
        for _ in range(10):
            start = now - timedelta(minutes=rng.uniform(0, 120))
            roots = [str(uuid.uuid4()) for _ in range(3)]
            runs = []
            for root in roots:
                runs.append(run(id=root, trace_id=root, session_name=project, start_time=start.isoformat()))
                runs.append(
                    run(trace_id=root, parent_run_id=root, session_name=project, start_time=start.isoformat())
                )
            statuses.append(client.post(batch(*runs)).status)
            for root in roots:
                end = start + timedelta(milliseconds=10 ** rng.uniform(0, 4))
                statuses.append(
                    client.patch(f"/runs/{root}", json.dumps({"end_time": end.isoformat()}).encode()).status
                )
        return statuses

    with ThreadPoolExecutor(8) as pool:
        statuses = [s for result in pool.map(write, range(8)) for s in result]
    assert set(statuses) <= {200, 201}, statuses
    with db.cursor() as cur:
        counted = assert_rollup_right(cur, OPEN_TENANT, session)
    assert sum(row[3] for row in counted) == 8 * 10 * 6
    assert sum(row[4] for row in counted if row[2] >= 0) == 8 * 10 * 3  # every root ended
