"""A property of the sweep: for random projects, tiers, long-tier marks, server defaults and ages,
a sweep deletes exactly the traces that the policy (handler/retention/policy.py, in Python) says
have expired -- so no unexpired run is ever deleted, and none expired is left.

The rows are written straight into a database of this module's (tenant "prop"), as ingestion
would leave them but with chosen received times; their object keys name nothing, and deleting a
missing object is not an error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from handler.retention.policy import Defaults, period_days, trace_expires
from handler.retention.sweep import Sweep
from handler.store.db import Database
from handler.store.objects import ObjectStore
from tests.conftest import FreshConnections
from tests.test_retention import env  # noqa: F401 (the module's database and bucket)

NOW = datetime(2026, 6, 1, tzinfo=UTC)
days = st.none() | st.integers(1, 12)
projects = st.lists(
    st.tuples(st.sampled_from([None, "shortlived", "longlived"]), days, days), min_size=1, max_size=3
)
# A run: (project index, or None for a project that does not exist; hours before NOW; posted).
runs = st.tuples(st.none() | st.integers(0, 2), st.integers(0, 24 * 30), st.booleans())
traces = st.lists(st.tuples(st.lists(runs, min_size=1, max_size=3), st.booleans()), min_size=1, max_size=6)


@pytest.fixture(scope="module")
def prop(settings, env):  # noqa: F811
    scratch = dataclasses.replace(settings, db_name=env["DB_NAME"])
    from handler.store.migrations import migrate

    migrate(scratch)
    return scratch


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    defaults=st.tuples(days, days),
    project_list=projects,
    trace_list=traces,
    as_of_hours=st.integers(-48, 24 * 20),
)
def test_a_sweep_deletes_exactly_the_expired_traces(prop, defaults, project_list, trace_list, as_of_hours):
    db = FreshConnections(prop)
    policy = Defaults(*defaults)
    project_ids = [uuid.uuid4() for _ in project_list]
    expected_left, rows, marks = set(), [], []
    for trace_runs, long_mark in trace_list:
        trace_id = uuid.uuid4()
        # Only a patch (not posted) may name a project that does not exist yet.
        found = [index is not None and index < len(project_list) for index, _, _ in trace_runs]
        posted = [flag and exists for (_, _, flag), exists in zip(trace_runs, found, strict=True)]
        lone = len(trace_runs) == 1 and not posted[0]  # a patch alone, sent without a trace id
        periods, first, ids = [], None, []
        for (index, hours, _), exists, is_posted in zip(trace_runs, found, posted, strict=True):
            run_id = trace_id if lone else uuid.uuid4()
            received = NOW - timedelta(hours=hours)
            first = received if first is None else min(first, received)
            if exists:
                session_id, (tier, short, long) = project_ids[index], project_list[index]
            else:
                session_id, (tier, short, long) = uuid.uuid4(), (None, None, None)
            periods.append(period_days(policy, tier, short, long, long_trace=long_mark))
            rows.append((run_id, None if lone else trace_id, session_id, is_posted, received))
            ids.append(str(run_id))
        if long_mark:
            marks.append(trace_id)
        expires = trace_expires(first, periods)
        as_of = NOW + timedelta(hours=as_of_hours)
        if expires is None or expires > as_of:
            expected_left.update(ids)
    with db.cursor() as cur:
        for table in ("runs", "sessions", "retention_long_traces"):
            cur.execute(f"DELETE FROM {table} WHERE tenant = 'prop'")
        for project_id, (tier, short, long) in zip(project_ids, project_list, strict=True):
            cur.execute(
                "INSERT INTO sessions (tenant, id, name, trace_tier, retention_days, longlived_ttl_days)"
                " VALUES ('prop', %s, %s, %s, %s, %s)",
                (str(project_id), str(project_id), tier, short, long),
            )
        for run_id, trace_id, session_id, posted, received in rows:
            cur.execute(
                "INSERT INTO runs (tenant, id, trace_id, name, object_key, size_bytes, session_id, posted,"
                " created_at) VALUES ('prop', %s, %s, 'r', %s, 1, %s, %s, %s)",
                (
                    str(run_id),
                    trace_id and str(trace_id),
                    f"prop/runs/{run_id}/{uuid.uuid4().hex}.json",
                    str(session_id),
                    posted,
                    received,
                ),
            )
        for trace_id in marks:
            cur.execute("INSERT INTO retention_long_traces VALUES ('prop', %s, 'test')", (str(trace_id),))
    swept = dataclasses.replace(
        prop, retention_days=defaults[0], retention_long_days=defaults[1], retention_batch_rows=3
    )

    async def sweep():
        store = ObjectStore(swept)
        await store.start()
        try:
            return await Sweep(swept, store, Database(swept)).run(as_of=NOW + timedelta(hours=as_of_hours))
        finally:
            await store.close()

    report = asyncio.run(sweep())
    with db.cursor() as cur:
        cur.execute("SELECT id::text FROM runs WHERE tenant = 'prop'")
        left = {row[0] for row in cur.fetchall()}
    assert left == expected_left
    assert report.runs == len(rows) - len(expected_left)
