"""The SDK's v2 trace reads, in the shapes its generated client sends and parses
(langsmith/types/trace_query_params.py, trace.py, trace_list_runs_params.py):

- ``POST /api/v2/traces/query`` (``client.traces.query``): one project's traces, each its root run
  (the fields ``selects`` names) and, when TOTAL_TOKENS / TOTAL_COST / FIRST_TOKEN_TIME are
  selected, ``trace_aggregates`` summed over every run of the trace; newest first, in cursor pages
  of ``page_size`` (1 to 100, 20 by default), between ``min_start_time`` (inclusive, default a day
  ago) and ``max_start_time`` (exclusive, default now). ``trace_filter`` applies to the root run,
  ``tree_filter`` to any run of the trace, ``trace_ids`` restricts to those traces.
- ``GET /api/v2/traces/{trace_id}/runs`` (``client.traces.list_runs``): a trace's runs of one
  project, oldest first, optionally narrowed by ``filter`` and an inclusive start-time window
  (both bounds or neither). At most TRACE_RUNS runs; a larger trace is a 400 asking to narrow it.

What this server does not offer (AI or semantic search, feedback windows, a streamed answer) is a
400 (406 for ``Accept: text/event-stream`` alone).
"""

from __future__ import annotations

from datetime import UTC, datetime

from handler.base.errors import RunError
from handler.query.scopes import Filters
from handler.query.v2 import _ORDER_KEY, DEFAULT_WINDOW, ROW_COLUMNS, checked_body, page_size, selects_of
from handler.read.query import _moment, _uuid, run_clauses

MAX_PAGE = 100
DEFAULT_PAGE = 20
TRACE_RUNS = 1000
AGGREGATE_SELECTS = ("TOTAL_TOKENS", "TOTAL_COST", "FIRST_TOKEN_TIME")
UNSERVED = {
    "ai_search": "AI search is not offered by this server",
    "sem_filter": "semantic filtering is not offered by this server",
    "min_feedback_modified_at": "feedback time windows are not offered by this server",
    "max_feedback_modified_at": "feedback time windows are not offered by this server",
}
KNOWN = frozenset(
    {
        "cursor",
        "max_start_time",
        "min_start_time",
        "page_size",
        "project_id",
        "selects",
        "trace_filter",
        "trace_ids",
        "tree_filter",
        *UNSERVED,
    }
)
# The trace's sums, for the page's traces: params (tenant, [trace ids]).
AGGREGATES = (
    "SELECT trace_id, sum(total_tokens), sum(total_cost) FROM runs"
    " WHERE tenant = %s AND trace_id = ANY(%s::uuid[]) AND posted GROUP BY trace_id"
)


class TracesQuery:
    """A checked POST /api/v2/traces/query body: the SQL of its root runs and what each item holds."""

    def __init__(self, tenant: str, body: object, now: datetime | None = None) -> None:
        given = checked_body(body, KNOWN, UNSERVED)
        if "project_id" not in given:
            raise RunError(400, "project_id is required")
        project = _uuid(given["project_id"], "project_id")
        filters = Filters({k: given.get(k) for k in ("trace_filter", "tree_filter")})
        now = now or datetime.now(UTC)
        low = _moment(given["min_start_time"], "min_start_time") if "min_start_time" in given else None
        high = _moment(given["max_start_time"], "max_start_time") if "max_start_time" in given else now
        where = [
            "tenant = %s",
            "posted",
            "session_id = %s::uuid",
            "parent_run_id IS NULL",
            f"{_ORDER_KEY} >= %s AND {_ORDER_KEY} < %s",
        ]
        params: list = [tenant, project, low or now - DEFAULT_WINDOW, high]
        for clause, values in run_clauses(given, {"trace_ids": "traces", "cursor": "cursor"}):
            where.append(clause)
            params.extend(values)
        where.extend(filters.clauses)
        params.extend(filters.params)
        self.page_size = page_size(given, DEFAULT_PAGE, MAX_PAGE)
        selects = selects_of(given.get("selects"))
        self.aggregates = [s for s in selects if s in AGGREGATE_SELECTS]
        self.selects = [s for s in selects if s not in AGGREGATE_SELECTS]
        order = f"ORDER BY {_ORDER_KEY} DESC, id DESC"
        self.sql = f"SELECT {ROW_COLUMNS} FROM runs AS r WHERE {' AND '.join(where)} {order} LIMIT %s"
        self.params = (*params, self.page_size + 1)


def aggregates_json(selected: list[str], sums: tuple | None) -> dict:
    """A trace's ``trace_aggregates``: the selected sums (null when no run of it has any)."""
    tokens, cost = sums if sums is not None else (None, None)
    values = {
        "TOTAL_TOKENS": None if tokens is None else int(tokens),
        "TOTAL_COST": None if cost is None else float(cost),
        "FIRST_TOKEN_TIME": None,  # not kept by this server
    }
    return {name.lower(): values[name] for name in selected}


def _one(args: dict[str, list[str]], name: str) -> str | None:
    values = args.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise RunError(400, f"{name} must be given once")
    return values[0]


class TraceRuns:
    """A checked GET /api/v2/traces/{trace_id}/runs: the SQL of the trace's runs, oldest first."""

    KNOWN = frozenset({"project_id", "filter", "min_start_time", "max_start_time", "selects"})

    def __init__(self, tenant: str, trace_id: str, args: dict[str, list[str]]) -> None:
        unknown = sorted(k for k in args if k not in self.KNOWN)
        if unknown:
            raise RunError(400, f"unsupported query arguments: {', '.join(unknown)}")
        if any("\x00" in value for values in args.values() for value in values):
            raise RunError(400, "query arguments must not contain NUL characters")
        project = _one(args, "project_id")
        if project is None:
            raise RunError(400, "project_id is required")
        where = ["tenant = %s", "posted", "session_id = %s::uuid", "trace_id = %s::uuid"]
        params: list = [tenant, _uuid(project, "project_id"), _uuid(trace_id, "the trace id")]
        low, high = _one(args, "min_start_time"), _one(args, "max_start_time")
        if (low is None) != (high is None):
            raise RunError(400, "min_start_time and max_start_time go together: give both or neither")
        if low is not None:
            where.append(f"{_ORDER_KEY} >= %s AND {_ORDER_KEY} <= %s")
            params += [_moment(low, "min_start_time"), _moment(high, "max_start_time")]
        filters = Filters({"filter": _one(args, "filter")})
        where.extend(filters.clauses)
        params.extend(filters.params)
        self.selects = selects_of(args.get("selects") or None)
        order = f"ORDER BY {_ORDER_KEY}, id"
        self.sql = f"SELECT {ROW_COLUMNS} FROM runs AS r WHERE {' AND '.join(where)} {order} LIMIT %s"
        self.params = (*params, TRACE_RUNS + 1)
