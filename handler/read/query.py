"""POST /runs/query: runs by project, trace, parent, type, root-ness, error and start time, newest
first, in cursor pages -- the body and the answer that the SDK's ``list_runs`` sends and reads.

Answered from the rows' columns and indexes (schema/0005_sessions.sql). Only when ``select``
names a field that lives in the run's bytes (inputs, outputs, extra, ...) are the bytes of that
page's runs read from object storage: at most PAYLOAD_BYTES for a page, which ends early rather
than go over (a single run larger than that comes without those fields and with
``"payload_omitted": true``). LangSmith's filter language (``filter``, ``trace_filter``,
``tree_filter``, and ``query`` as free text) is compiled by handler/query/ into the same WHERE.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from handler.base.errors import RunError
from handler.base.handlers import JSONHandler
from handler.feedback.store import stats as feedback_stats
from handler.query.extract import TOKEN_COLUMNS
from handler.query.scopes import Filters
from handler.runs.schema import RUN_TYPES, UUID_TEXT
from handler.store.objects import Location, ObjectGone

MAX_PAGE = 100
DEFAULT_PAGE = 100
MAX_BODY_BYTES = 1 << 20
MAX_IDS = 1000  # in ``id``, ``session``, ``reference_example``
PAYLOAD_BYTES = 32 << 20  # run bytes read for one page
PAYLOAD_READS = 8  # at once
# Fields of the answer that columns give; the others of PAYLOAD_FIELDS come from the run's bytes.
COLUMNS = (
    "id",
    "name",
    "run_type",
    "start_time",
    "end_time",
    "trace_id",
    "parent_run_id",
    "dotted_order",
    "session_id",
    "reference_example_id",
    "status",
    "error",
    *TOKEN_COLUMNS,
)
ALWAYS = ("id", "name", "run_type", "start_time", "trace_id")
PAYLOAD_FIELDS = frozenset({"inputs", "outputs", "extra", "events", "tags", "serialized"})
_SQL_COLUMNS = ", ".join(COLUMNS) + ", object_key, object_offset, size_bytes"
_ORDER_KEY = "coalesce(start_time, '-infinity')"
FILTERS = ("filter", "trace_filter", "tree_filter", "query")
KNOWN = frozenset(
    {
        "session",
        "session_id",
        "id",
        "trace",
        "parent_run",
        "run_type",
        "is_root",
        "error",
        "start_time",
        "reference_example",
        "limit",
        "cursor",
        "select",
        *FILTERS,
    }
)


def _uuids(value: object, name: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if len(values) > MAX_IDS:
        raise RunError(400, f"{name} has more than {MAX_IDS} ids")
    for v in values:
        if not isinstance(v, str) or not UUID_TEXT.fullmatch(v):
            raise RunError(400, f"{name} must be a UUID or a list of UUIDs")
    return [str(uuid.UUID(v)) for v in values]


def one_of(column: str, ids: list[str]) -> tuple[str, object]:
    """``column`` is one of ``ids``: as an equality when there is one, so that an index on the
    column returns rows in its order (an = ANY scan does not, before PostgreSQL 17)."""
    if len(ids) == 1:
        return f"{column} = %s::uuid", ids[0]
    return f"{column} = ANY(%s::uuid[])", ids


def _uuid(value: object, name: str) -> str:
    if not isinstance(value, str) or not UUID_TEXT.fullmatch(value):
        raise RunError(400, f"{name} must be a UUID")
    return str(uuid.UUID(value))


def _flag(value: object, name: str) -> bool:
    if value in (True, False, 0, 1) and not isinstance(value, float):
        return bool(value)
    raise RunError(400, f"{name} must be a boolean")


def _moment(value: object, name: str) -> datetime:
    try:
        if not isinstance(value, str):
            raise ValueError
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise RunError(400, f"{name} must be an ISO 8601 date and time") from None
    if moment.tzinfo is None:
        raise RunError(400, f"{name} must have a time zone")
    return moment


def encode_cursor(start_time: datetime | None, run_id: object) -> str:
    position = json.dumps([start_time.isoformat() if start_time else None, str(run_id)])
    return base64.urlsafe_b64encode(position.encode()).decode()


def decode_cursor(cursor: object) -> tuple[datetime | None, str]:
    try:
        if not isinstance(cursor, str) or len(cursor) > 200:
            raise ValueError
        moment, run_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not isinstance(run_id, str) or not UUID_TEXT.fullmatch(run_id):
            raise ValueError
        start = None if moment is None else datetime.fromisoformat(moment)
        if start is not None and start.tzinfo is None:
            raise ValueError
    except (ValueError, TypeError, UnicodeError):
        raise RunError(400, "cursor is not one this server gave out") from None
    return start, run_id


def after_cursor(cursor: object) -> tuple[str, tuple]:
    """The WHERE clause and parameters that continue a newest-first listing after ``cursor``."""
    start, run_id = decode_cursor(cursor)
    return f" AND ({_ORDER_KEY}, id) < (coalesce(%s::timestamptz, '-infinity'), %s::uuid)", (start, run_id)


def _run_type(value: object, name: str) -> tuple[str, tuple]:
    if not isinstance(value, str) or value not in RUN_TYPES:
        raise RunError(400, f"{name} must be one of {', '.join(sorted(RUN_TYPES))}")
    return "run_type = %s", (value,)


def _yes_no(yes: str, no: str):
    return lambda value, name: (yes if _flag(value, name) else no, ())


def _any_of(column: str):
    return lambda value, name: (f"{column} = ANY(%s::uuid[])", (_uuids(value, name),))


def _one(column: str):
    return lambda value, name: (f"{column} = %s::uuid", (_uuid(value, name),))


def _after(value: object, name: str) -> tuple[str, tuple]:
    clause, values = after_cursor(value)
    return clause.removeprefix(" AND "), values


# What a request's field means for the rows, once for every read (/runs/query, /api/v2/runs/query,
# /api/v2/traces/...): meaning -> (value, the request's name for it) -> (clause, params).
RUN_CLAUSES = {
    "ids": _any_of("id"),
    "reference_examples": _any_of("reference_example_id"),
    "trace": _one("trace_id"),
    "traces": _any_of("trace_id"),
    "parent_run": _one("parent_run_id"),
    "run_type": _run_type,
    "is_root": _yes_no("parent_run_id IS NULL", "parent_run_id IS NOT NULL"),
    "has_error": _yes_no("status = 'error'", "status <> 'error'"),
    "cursor": _after,
}
# POST /runs/query's names for them.
V1_NAMES = {
    "id": "ids",
    "reference_example": "reference_examples",
    "trace": "trace",
    "parent_run": "parent_run",
    "run_type": "run_type",
    "is_root": "is_root",
    "error": "has_error",
    "cursor": "cursor",
}


def run_clauses(given: dict, names: dict[str, str]) -> list[tuple[str, tuple]]:
    """The WHERE clauses of the fields of ``given`` that ``names`` maps to a RUN_CLAUSES meaning."""
    return [RUN_CLAUSES[meaning](given[name], name) for name, meaning in names.items() if name in given]


class Query:
    """A checked POST /runs/query body: the SQL that answers it and what to select."""

    def __init__(self, tenant: str, body: object) -> None:
        if not isinstance(body, dict):
            raise RunError(400, "body must be a JSON object")
        unknown = sorted(k for k in body if k not in KNOWN)
        if unknown:
            raise RunError(400, f"unsupported query fields: {', '.join(unknown)}")
        filters = Filters(body, body.get("query"))
        filters.bounded(any(body.get(k) is not None for k in ("session", "session_id", "id", "trace")))
        self.filtered = bool(filters)
        where, params = ["tenant = %s", "posted"], [tenant]

        def add(clause: str, *values: object) -> None:
            where.append(clause)
            params.extend(values)

        given = {k: v for k, v in body.items() if v is not None}
        for key in ("session", "session_id"):
            if key in given:
                add(*one_of("session_id", _uuids(given[key], key)))
        if "start_time" in given:
            # On the order key, so that the project's index answers both the range and the order.
            add(f"{_ORDER_KEY} >= %s", _moment(given["start_time"], "start_time"))
        for clause, values in run_clauses(given, V1_NAMES):
            add(clause, *values)
        where.extend(filters.clauses)
        params.extend(filters.params)
        limit = given.get("limit", DEFAULT_PAGE)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise RunError(400, "limit must be a positive integer")
        self.limit = min(limit, MAX_PAGE)
        select = given.get("select")
        if select is not None and (
            not isinstance(select, list) or len(select) > 100 or not all(isinstance(s, str) for s in select)
        ):
            raise RunError(400, "select must be a list of field names")
        # What the SDK's Run cannot be made without comes whatever the select.
        wanted = set(COLUMNS) if select is None else {*ALWAYS, *select}
        self.columns = [c for c in COLUMNS if c in wanted]
        self.payload = sorted(PAYLOAD_FIELDS & wanted)
        self.feedback_stats = select is None or "feedback_stats" in select
        order = f"ORDER BY {_ORDER_KEY} DESC, id DESC"
        self.sql = f"SELECT {_SQL_COLUMNS} FROM runs AS r WHERE {' AND '.join(where)} {order} LIMIT %s"
        self.params = (*params, self.limit + 1)


def run_json(row: Sequence, columns: Sequence[str]) -> dict:
    values = dict(zip(COLUMNS, row, strict=False))
    run = {}
    for name in columns:
        value = values[name]
        if name == "dotted_order" and value is None:
            continue  # the SDK's Run takes a missing dotted_order, not a null one
        run[name] = json_value(value)
    return run


def json_value(value: object) -> object:
    """A column's value as the SDK reads it: times in ISO 8601, ids as text, numbers as numbers."""
    if value is None or isinstance(value, int | str | list | dict):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


async def with_payloads(store, rows: list[Sequence], runs: list[dict], fields: list[str]) -> int:
    """Fill in ``fields`` from the runs' bytes, within PAYLOAD_BYTES; returns how many runs of the
    page were read (the page ends there)."""
    budget, count = PAYLOAD_BYTES, 0
    for row in rows:
        size = row[-1]
        if count and size > budget:
            break
        budget -= size
        count += 1
    limit = asyncio.Semaphore(PAYLOAD_READS)

    async def fill(row: Sequence, run: dict) -> None:
        key, offset, size = row[-3:]
        if size > PAYLOAD_BYTES:
            run["payload_omitted"] = True
            return
        async with limit:
            try:
                data = await store.read_all(Location(key, offset), size)
            except ObjectGone:  # expired and deleted since the page's rows were read
                run["payload_omitted"] = True
                return
        stored = json.loads(data)
        for name in fields:
            run[name] = stored.get(name)
        if "error" in run and isinstance(stored.get("error"), str):
            run["error"] = stored["error"]  # whole, not the column's start of it

    await asyncio.gather(*(fill(row, run) for row, run in zip(rows[:count], runs, strict=False)))
    return count


class QueryHandler(JSONHandler):
    """POST /runs/query."""

    SUPPORTED_METHODS = ("POST",)

    async def post(self) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        try:
            query = Query(tenant, self.json_body(MAX_BODY_BYTES))
            if query.filtered:
                timeout = self.config.query_timeout_ms
                rows = await self.db.fetch_bounded(query.sql, query.params, timeout)
            else:
                rows = await self.db.fetch(query.sql, query.params)
            page = rows[: query.limit]
            runs = [run_json(row, query.columns) for row in page]
            more = len(rows) > len(page)
            if query.payload and page:
                count = await with_payloads(self.store, page, runs, query.payload)
                more = more or count < len(page)
                page, runs = page[:count], runs[:count]
            if query.feedback_stats and runs:
                found = await feedback_stats(self.db, tenant, [run["id"] for run in runs])
                for run in runs:
                    run["feedback_stats"] = found.get(run["id"])
        except RunError as e:
            return self.fail(e)
        last = page[-1] if page else None
        next_cursor = encode_cursor(last[3], last[0]) if more and last else None
        self.finish({"runs": runs, "cursors": {"next": next_cursor, "prev": None}})


def routes(deps: dict) -> list:
    return [(r"/runs/query", QueryHandler, deps)]
