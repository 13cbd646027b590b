"""A project's health over the last 1, 7 or 30 days, for the monitor page: traces and runs per
interval, the error rate and the latency p50/p99 of root runs; tokens and feedback averages once
their columns and table exist.

All of the monitor's SQL is here. Counts and latencies come from ``runs_hourly`` (schema/0009),
the runs' sums per project and hour that PostgreSQL's triggers keep as runs are written, patched
and deleted: a window sums at most a few thousand rows, whatever the number of runs. Latency
percentiles come from its histogram of root latencies (8 log-scale buckets per doubling), so they
are estimates within ``LATENCY_ERROR`` of PostgreSQL's percentile_cont over the runs themselves.
The optional series are switched on by what the database has (``features``). To add a series,
add its column to ``OPTIONAL_COLUMNS`` (or a statement like ``_FEEDBACK``) and a chart to
static/monitor.js.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from handler.store.db import Database

# days -> the width of one interval; 24 to 30 points a chart. Whole hours: the rollup's.
WINDOWS = {1: timedelta(hours=1), 7: timedelta(hours=6), 30: timedelta(days=1)}
_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)  # date_bin's origin: intervals start on whole hours/days (UTC)

# The rollup's latency buckets (runs_latency_bucket in schema/0009): bucket b >= 1 holds
# [2^((b-1)/8), 2^(b/8)) / 16 ms, bucket 0 what is under 1/16 ms. A latency is taken to be its
# bucket's middle (on the log scale), so a percentile is off by at most this fraction (4.4 %).
BUCKETS_PER_DOUBLING = 8
LATENCY_ERROR = 2 ** (1 / (2 * BUCKETS_PER_DOUBLING)) - 1

# name -> (the column that must exist on runs, the rollup's aggregate): series that light up when it does.
OPTIONAL_COLUMNS = {
    "tokens": ("total_tokens", "sum(tokens)"),
}
# Counts: the sums of the window's hours, per interval; their totals are sums.
_COUNTS = (
    "SELECT date_bin(%(step)s, hour, %(origin)s) AS bucket, sum(traces), sum(runs), sum(errors)"
    "{optional}"
    " FROM runs_hourly WHERE {window}"
    " GROUP BY 1"
)
# Latency: the histogram of ended root runs per interval; percentiles are read off it here.
_LATENCY = (
    "SELECT date_bin(%(step)s, hour, %(origin)s) AS bucket, latency_bucket, sum(traces)"
    " FROM runs_hourly WHERE {window} AND latency_bucket >= 0"
    " GROUP BY 1, 2"
)
_WINDOW = "tenant = %(tenant)s AND session_id = %(session)s AND hour >= %(since)s AND hour < %(until)s"
# Feedback on the project's runs, by when it was given (the feedback table of migration 0006).
_FEEDBACK = (
    "SELECT date_bin(%(step)s, f.created_at, %(origin)s) AS bucket, f.key, avg(f.score), count(f.score)"
    " FROM feedback f JOIN runs r ON r.tenant = f.tenant AND r.id = f.run_id"
    " WHERE f.tenant = %(tenant)s AND r.session_id = %(session)s"
    " AND f.created_at >= %(since)s AND f.created_at < %(until)s"
    " GROUP BY 1, 2 ORDER BY 1, 2"
)
# The trace list's columns that light up with the same features (r is the root run): the tokens
# of all the trace's runs, and the trace's feedback averages per key (feedback naming the trace,
# or given on the root run).
_TRACE_TOKENS = (
    "(SELECT sum(c.total_tokens) FROM runs c"
    " WHERE c.tenant = r.tenant AND c.trace_id = r.trace_id AND c.posted)"
)
_TRACE_FEEDBACK = (
    "(SELECT json_object_agg(s.key, s.avg) FROM (SELECT f.key, round(avg(f.score)::numeric, 4) AS avg"
    " FROM feedback f WHERE f.tenant = r.tenant AND (f.trace_id = r.trace_id OR f.run_id = r.id)"
    " GROUP BY f.key) AS s)"
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


async def detect(db: Database) -> Features:
    """What the database has now (a cheap catalogue query: a migration may land while we run)."""
    return features_of((await db.fetch(*features_sql()))[0])


def trace_columns(features: Features) -> list[tuple[str, str]]:
    """(name, SQL expression) of the trace list's optional columns this database can answer."""
    columns = [("tokens", _TRACE_TOKENS)] if "tokens" in features.columns else []
    return columns + ([("feedback", _TRACE_FEEDBACK)] if features.feedback else [])


class Statements(NamedTuple):
    counts: str
    latency: str
    feedback: str | None  # None: no feedback table


def statements(features: Features) -> Statements:
    """The statements for what the database can answer: the counts with the optional series, the
    latency histograms, and the feedback averages (None without the table)."""
    optional = "".join(f", {OPTIONAL_COLUMNS[n][1]} AS {n}" for n in sorted(features.columns))
    counts = _COUNTS.format(window=_WINDOW, optional=optional)
    latency = _LATENCY.format(window=_WINDOW)
    return Statements(counts, latency, _FEEDBACK if features.feedback else None)


def window(days: int, now: datetime) -> dict:
    """The statement parameters for the last ``days``: whole intervals, the current one last."""
    step = WINDOWS[days]
    current = _ORIGIN + (now - _ORIGIN) // step * step
    until = current + step
    since = until - step * round(timedelta(days=days) / step)
    return {"step": step, "origin": _ORIGIN, "since": since, "until": until}


def bucket_ms(bucket: int) -> float:
    """The latency a histogram bucket stands for: its middle on the log scale (0 for bucket 0)."""
    return 0.0 if bucket <= 0 else 2 ** ((bucket - 0.5) / BUCKETS_PER_DOUBLING) / 16


def percentile(histogram: dict[int, int], q: float) -> float | None:
    """percentile_cont(q) of the latencies counted in ``histogram`` (bucket -> runs), each taken
    as its bucket's middle: the same interpolation between the closest ranks, so the answer is
    within LATENCY_ERROR of the exact one (for latencies of 1/16 ms and more)."""
    counts = sorted((b, n) for b, n in histogram.items() if n > 0)
    total = sum(n for _, n in counts)
    if not total:
        return None
    rank = q * (total - 1)
    low = int(rank)
    ranks = (low, min(low + 1, total - 1))
    values, seen = [], 0
    for bucket, n in counts:
        seen += n
        while len(values) < 2 and ranks[len(values)] < seen:
            values.append(bucket_ms(bucket))
    return values[0] + (values[1] - values[0]) * (rank - low)


def series(
    features: Features, params: dict, counts: list[tuple], latency: list[tuple], feedback: list[tuple]
) -> dict:
    """The answer: one point per interval (empty intervals as zeros / nulls), and the totals."""
    step = params["step"]
    count = round((params["until"] - params["since"]) / step)
    names = ["traces", "runs", "errors", *sorted(features.columns)]
    found = {row[0]: dict(zip(names, row[1:], strict=True)) for row in counts}
    found[None] = {name: sum(row[i] or 0 for row in counts) for i, name in enumerate(names, 1)}
    histograms: dict = {None: {}}
    for bucket, latency_bucket, n in latency:
        for key in (bucket, None):  # the interval's and the window's
            histogram = histograms.setdefault(key, {})
            histogram[latency_bucket] = histogram.get(latency_bucket, 0) + int(n)
    for bucket, histogram in histograms.items():
        found.setdefault(bucket, {}).update(p50=percentile(histogram, 0.5), p99=percentile(histogram, 0.99))

    def point(values: dict) -> dict:
        out = {name: int(values.get(name) or 0) for name in names}
        for name in ("p50", "p99"):
            out[name] = None if values.get(name) is None else round(float(values[name]), 1)
        out["error_rate"] = round(out["errors"] / out["traces"], 4) if out["traces"] else None
        return out

    starts = [params["since"] + i * step for i in range(count)]
    points = [{"start": start.isoformat(), **point(found.get(start, {}))} for start in starts]
    answer = {
        "step_seconds": int(step.total_seconds()),
        "since": params["since"].isoformat(),
        "until": params["until"].isoformat(),
        "series": [*names[:3], "error_rate", "p50", "p99", *names[3:]],
        "points": points,
        "totals": point(found.get(None, {})),
        "feedback": None,
    }
    if features.feedback:
        keys: dict[str, list] = {}
        index = {start: i for i, start in enumerate(starts)}
        for bucket, key, avg, n in feedback:
            slot = keys.setdefault(key, [None] * count)
            at = index.get(bucket)
            if at is not None:
                slot[at] = {"avg": None if avg is None else round(float(avg), 4), "n": int(n)}
        answer["feedback"] = keys
    return answer


async def monitor(db: Database, tenant: str, session: str, days: int, now: datetime | None = None) -> dict:
    """The monitor's numbers for one project (``session``) of ``tenant`` over the last ``days``;
    the statements run at once, each on its own pooled connection."""
    features = await detect(db)
    sql = statements(features)
    params = {**window(days, now or datetime.now(UTC)), "tenant": tenant, "session": session}
    counts, latency, feedback = await asyncio.gather(
        db.fetch(sql.counts, params),
        db.fetch(sql.latency, params),
        db.fetch(sql.feedback, params) if sql.feedback else asyncio.sleep(0, []),
    )
    return series(features, params, counts, latency, feedback)
