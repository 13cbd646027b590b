"""How long a trace is kept: the one rule, in Python (for answers and tests) and as SQL (for the
sweep), and a project's retention fields as clients send them.

A trace is the runs of one tenant that share a ``trace_id`` (a run stored without one, a patch
whose post has not come, is a trace of its own). It is first received when its earliest row was
written (``runs.created_at``, the server's clock; a patch keeps it) and expires, whole, once its
period has passed since then. The period of a run depends on its project:

- ``longlived`` tier (the project's ``trace_tier``, or the trace moved there by feedback or on
  request): the project's ``longlived_ttl_days``, else ``RETENTION_LONG_DAYS``, and never shorter
  than the short period;
- otherwise the project's ``retention_days``, else ``RETENTION_DAYS``.

None means for ever. A trace whose runs are in several projects takes the longest of their
periods, so no run is removed before its own project says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from handler.base.errors import RunError

TIERS = ("shortlived", "longlived")
MAX_DAYS = 36500
FIELDS = ("trace_tier", "retention_days", "longlived_ttl_days")


@dataclass(frozen=True)
class Defaults:
    """The server's settings: RETENTION_DAYS and RETENTION_LONG_DAYS (None: for ever)."""

    days: int | None = None
    long_days: int | None = None


def period_days(
    defaults: Defaults,
    trace_tier: str | None,
    retention_days: int | None,
    longlived_ttl_days: int | None,
    long_trace: bool = False,
) -> int | None:
    """Days a run of this project is kept (None: for ever)."""
    short = retention_days if retention_days is not None else defaults.days
    if not long_trace and trace_tier != "longlived":
        return short
    long = longlived_ttl_days if longlived_ttl_days is not None else defaults.long_days
    if short is None or long is None:
        return None
    return max(short, long)


def trace_expires(first_received: datetime, periods: list[int | None]) -> datetime | None:
    """When a trace whose runs have these periods expires (None: never)."""
    if any(p is None for p in periods):
        return None
    return first_received + timedelta(days=max(periods))


# The same rule over rows of runs r LEFT JOIN sessions s LEFT JOIN retention_long_traces l, with
# %(days)s and %(long_days)s bound (NULL: for ever).
_SHORT_SQL = "coalesce(s.retention_days, %(days)s::int)"
_LONG_SQL = "coalesce(s.longlived_ttl_days, %(long_days)s::int)"
PERIOD_SQL = (
    f"CASE WHEN l.trace_id IS NULL AND s.trace_tier IS DISTINCT FROM 'longlived' THEN {_SHORT_SQL}"
    f" WHEN {_SHORT_SQL} IS NULL OR {_LONG_SQL} IS NULL THEN NULL"
    f" ELSE greatest({_SHORT_SQL}, {_LONG_SQL}) END"
)


def project_fields(fields: dict) -> dict:
    """The retention fields of a POST or PATCH /sessions body, checked: column -> value. A field
    left out is not in it (PATCH leaves it as it is); null sets it back to the server's default."""
    found = {}
    for name in FIELDS:
        if name not in fields:
            continue
        value = fields[name]
        if name == "trace_tier":
            if value is not None and value not in TIERS:
                raise RunError(400, "trace_tier must be 'shortlived' or 'longlived'")
        elif value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DAYS
        ):
            raise RunError(400, f"{name} must be a whole number of days from 1 to {MAX_DAYS}, or null")
        found[name] = value
    return found


# Moves traces to the long tier: params (tenant, [trace ids], reason); POST
# /traces/{id}/extend-retention, with reason "asked".
MARK_LONG = (
    "INSERT INTO retention_long_traces (tenant, trace_id, reason)"
    " SELECT %s, unnest(%s::uuid[]), %s ON CONFLICT DO NOTHING"
)

# Feedback recorded with extend_trace_retention (LangSmith's default) moves its trace to the long
# tier, in the transaction that stores it (store/db.py, store/transaction.py), after the feedback's
# insert: a feedback that names only its run gets the run's trace. Params: feedback_marks(),
# positional, since a group's statements are joined into one execute with one parameter list.
MARK_FEEDBACK = """
INSERT INTO retention_long_traces (tenant, trace_id, reason)
SELECT DISTINCT f.tenant, coalesce(f.trace_id, r.trace_id), 'feedback'
FROM (SELECT %s::text AS tenant, * FROM unnest(%s::uuid[], %s::uuid[]) AS u(run_id, trace_id)) AS f
LEFT JOIN runs r ON r.tenant = f.tenant AND r.id = f.run_id
WHERE coalesce(f.trace_id, r.trace_id) IS NOT NULL
ON CONFLICT DO NOTHING
"""


def feedback_marks(tenant: str, feedback) -> tuple | None:
    """MARK_FEEDBACK's params for the feedback rows that extend their trace's retention, or None."""
    extending = [f for f in feedback if f.extend_trace_retention and (f.run_id or f.trace_id)]
    if not extending:
        return None
    return (
        tenant,
        [None if f.run_id is None else str(f.run_id) for f in extending],
        [None if f.trace_id is None else str(f.trace_id) for f in extending],
    )
