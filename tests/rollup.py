"""The monitor's rollup (runs_hourly, schema/0009) against the runs it sums: what the triggers kept
must be what counting the runs now gives, key by key (hour, latency bucket), the shards added up.
Shared by tests/test_monitor_rollup.py and tests/test_retention.py."""

from __future__ import annotations

from handler.ui.monitor import LATENCY_ERROR

_EXACT = """
SELECT session_id::text, date_bin('1 hour', start_time, '2000-01-01 00:00+00'),
    runs_latency_bucket(parent_run_id, start_time, end_time), count(*),
    count(*) FILTER (WHERE parent_run_id IS NULL),
    count(*) FILTER (WHERE parent_run_id IS NULL AND status = 'error'), coalesce(sum(total_tokens), 0)
FROM runs WHERE tenant = %s AND coalesce(session_id = %s, true)
    AND posted AND session_id IS NOT NULL AND start_time IS NOT NULL
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""
_KEPT = """
SELECT session_id::text, hour, latency_bucket, sum(runs), sum(traces), sum(errors), sum(tokens)
FROM runs_hourly WHERE tenant = %s AND coalesce(session_id = %s, true)
GROUP BY 1, 2, 3 HAVING sum(runs) <> 0 OR sum(traces) <> 0 OR sum(errors) <> 0 OR sum(tokens) <> 0
ORDER BY 1, 2, 3
"""


def kept_and_exact(cur, tenant: str, session: str | None = None) -> tuple[list[tuple], list[tuple]]:
    """(the rollup's sums, the runs' counts) of ``tenant`` (or of its project ``session``), per
    project, hour and latency bucket."""
    cur.execute(_KEPT, (tenant, session))
    kept = [(*row[:3], *map(int, row[3:])) for row in cur.fetchall()]
    cur.execute(_EXACT, (tenant, session))
    return kept, [(*row[:3], *map(int, row[3:])) for row in cur.fetchall()]


def assert_rollup_right(cur, tenant: str, session: str | None = None) -> list[tuple]:
    """The rollup of ``tenant`` (or of its project ``session``) is the runs' counts; returns them."""
    kept, exact = kept_and_exact(cur, tenant, session)
    assert kept == exact
    return exact


def close(estimate: float | None, exact: float | None) -> bool:
    """A percentile from the rollup's histogram is the exact one (percentile_cont over the runs)
    within the histogram's documented error, and the answer's rounding to 0.1 ms."""
    if exact is None or estimate is None:
        return estimate is exact
    return abs(estimate - exact) <= LATENCY_ERROR * abs(exact) + 0.051
