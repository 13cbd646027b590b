"""A project's health over the last 1, 7 or 30 days, for the monitor page: traces and runs per
interval, the error rate and the latency p50/p99 of root runs; tokens and feedback averages once
their columns and table exist.

All of the monitor's SQL is here. One statement reads the project's window through the
``(tenant, session_id, start_time)`` index; the optional series are switched on by what the
database has (``features``), so this code runs unchanged before and after the token columns (the
query issue's migration) and the feedback table (the feedback issue's) are there. To add a series,
add its column to ``OPTIONAL_COLUMNS`` (or a statement like ``_FEEDBACK``) and to ``monitor``'s
answer; the page draws every series the answer has.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from handler.store.db import Database

# days -> the width of one interval; 24 to 30 points a chart.
WINDOWS = {1: timedelta(hours=1), 7: timedelta(hours=6), 30: timedelta(days=1)}
_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)  # date_bin's origin: intervals start on whole hours/days (UTC)

_ROOT = "parent_run_id IS NULL"
_LATENCY_MS = "extract(epoch FROM end_time - start_time) * 1000"
_ENDED_ROOT = "parent_run_id IS NULL AND end_time IS NOT NULL"
# name -> (the column that must exist on runs, the aggregate): series that light up when it does.
OPTIONAL_COLUMNS = {
    "tokens": ("total_tokens", "sum(total_tokens)"),
}
_RUNS = (
    "SELECT date_bin(%(step)s, coalesce(start_time, '-infinity'), %(origin)s) AS bucket,"
    " count(*) FILTER (WHERE {root}) AS traces,"
    " count(*) AS runs,"
    " count(*) FILTER (WHERE {root} AND status = 'error') AS errors,"
    " percentile_cont(0.5) WITHIN GROUP (ORDER BY {latency}) FILTER (WHERE {ended}) AS p50,"
    " percentile_cont(0.99) WITHIN GROUP (ORDER BY {latency}) FILTER (WHERE {ended}) AS p99"
    "{optional}"
    " FROM runs"
    " WHERE tenant = %(tenant)s AND session_id = %(session)s AND posted"
    " AND coalesce(start_time, '-infinity') >= %(since)s AND coalesce(start_time, '-infinity') < %(until)s"
    " GROUP BY GROUPING SETS ((1), ()) ORDER BY 1"  # (): the window's totals, bucket NULL, same scan
)
# Feedback on the project's runs, by when it was given (the feedback table of migration 0006).
_FEEDBACK = (
    "SELECT date_bin(%(step)s, f.created_at, %(origin)s) AS bucket, f.key, avg(f.score), count(f.score)"
    " FROM feedback f JOIN runs r ON r.tenant = f.tenant AND r.id = f.run_id"
    " WHERE f.tenant = %(tenant)s AND r.session_id = %(session)s"
    " AND f.created_at >= %(since)s AND f.created_at < %(until)s"
    " GROUP BY 1, 2 ORDER BY 1, 2"
)
_FEATURES = (
    "SELECT to_regclass('feedback') IS NOT NULL,"
    " ARRAY(SELECT column_name::text FROM information_schema.columns"
    " WHERE table_schema = current_schema() AND table_name = 'runs' AND column_name = ANY(%s))"
)


class Features(NamedTuple):
    """What the database has beyond the runs table of migration 0005."""

    feedback: bool = False
    columns: frozenset = frozenset()  # OPTIONAL_COLUMNS' names whose column exists


def features_sql() -> tuple[str, tuple]:
    return _FEATURES, ([column for column, _ in OPTIONAL_COLUMNS.values()],)


def features_of(row: tuple) -> Features:
    has_feedback, columns = row
    return Features(has_feedback, frozenset(n for n, (c, _) in OPTIONAL_COLUMNS.items() if c in columns))


def statements(features: Features) -> tuple[str, str | None]:
    """The runs statement with the optional series the database can answer, and the feedback
    statement (None without the table)."""
    optional = "".join(f", {OPTIONAL_COLUMNS[n][1]} AS {n}" for n in sorted(features.columns))
    runs = _RUNS.format(root=_ROOT, ended=_ENDED_ROOT, latency=_LATENCY_MS, optional=optional)
    return runs, (_FEEDBACK if features.feedback else None)


def window(days: int, now: datetime) -> dict:
    """The statement parameters for the last ``days``: whole intervals, the current one last."""
    step = WINDOWS[days]
    current = _ORIGIN + (now - _ORIGIN) // step * step
    until = current + step
    since = until - step * round(timedelta(days=days) / step)
    return {"step": step, "origin": _ORIGIN, "since": since, "until": until}


def series(features: Features, params: dict, rows: list[tuple], feedback_rows: list[tuple]) -> dict:
    """The answer: one point per interval (empty intervals as zeros / nulls), and the totals."""
    step = params["step"]
    count = round((params["until"] - params["since"]) / step)
    names = ["traces", "runs", "errors", "p50", "p99", *sorted(features.columns)]
    found = {row[0]: dict(zip(names, row[1:], strict=True)) for row in rows}

    def point(values: dict) -> dict:
        out = {}
        for name in names:
            value = values.get(name)
            if name in ("p50", "p99"):
                out[name] = None if value is None else round(float(value), 1)
            else:
                out[name] = int(value or 0)
        out["error_rate"] = round(out["errors"] / out["traces"], 4) if out["traces"] else None
        return out

    starts = [params["since"] + i * step for i in range(count)]
    points = [{"start": start.isoformat(), **point(found.get(start, {}))} for start in starts]
    answer = {
        "step_seconds": int(step.total_seconds()),
        "since": params["since"].isoformat(),
        "until": params["until"].isoformat(),
        "series": names + ["error_rate"],
        "points": points,
        "totals": point(found.get(None, {})),
        "feedback": None,
    }
    if features.feedback:
        keys: dict[str, list] = {}
        index = {params["since"] + i * step: i for i in range(count)}
        for bucket, key, avg, n in feedback_rows:
            slot = keys.setdefault(key, [None] * count)
            at = index.get(bucket)
            if at is not None:
                slot[at] = {"avg": None if avg is None else round(float(avg), 4), "n": int(n)}
        answer["feedback"] = keys
    return answer


async def monitor(db: Database, tenant: str, session: str, days: int, now: datetime | None = None) -> dict:
    """The monitor's numbers for one project (``session``) of ``tenant`` over the last ``days``."""
    features = features_of((await db.fetch(*features_sql()))[0])
    runs_sql, feedback_sql = statements(features)
    params = {**window(days, now or datetime.now(UTC)), "tenant": tenant, "session": session}
    rows = await db.fetch(runs_sql, params)
    feedback_rows = await db.fetch(feedback_sql, params) if feedback_sql else []
    return series(features, params, rows, feedback_rows)
