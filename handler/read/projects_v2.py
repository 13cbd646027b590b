"""The SDK's v2 projects (``client.sessions``), in the shapes its generated client sends and parses
(langsmith/resources/sessions.py, types/session.py): ``GET /api/v2/sessions`` (``list_v2``, cursor
pages of ``{"items", "next_cursor"}``), ``POST /api/v2/sessions`` (``create_v2``),
``GET /api/v2/sessions/{id}`` (``retrieve_v2``) and ``PATCH /api/v2/sessions/{id}`` (``update_v2``).

The same projects as ``/sessions`` (projects.py, sessions.py): every one is a ``PROJECT`` (no
agents, experiments or datasets are kept, so asking for those finds none); ``trace_tier`` is
``LONG_LIVED`` / ``SHORT_LIVED`` here for /sessions' ``longlived`` / ``shortlived``. Statistics
(``include_stats``) are ``run_count``, from the counters the database keeps. What a project here
does not hold (datasets, evaluators, tags, end time) is a 400 naming it, not a silent no-op.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime

from handler.base.errors import RunError
from handler.base.handlers import JSONHandler
from handler.read import sessions
from handler.read.projects import create_project
from handler.read.query import _uuid, _uuids
from handler.runs.schema import UUID_TEXT

MAX_PAGE = 100
DEFAULT_PAGE = 20
TIERS = {"LONG_LIVED": "longlived", "SHORT_LIVED": "shortlived"}
SORTS = {"START_TIME": "start_time", "NAME": "name"}
NOT_KEPT = {
    "default_dataset_id": "datasets are not kept by this server",
    "reference_dataset_id": "datasets are not kept by this server",
    "end_time": "a project's end_time is not kept by this server",
    "evaluator_keys": "evaluators are not kept by this server",
    "num_examples": "experiments are not kept by this server",
    "num_repetitions": "experiments are not kept by this server",
    "kicked_off_by": "experiments are not kept by this server",
    "tag_value_ids": "project tags are not kept by this server",
    "start_time": "a project's start_time is the time this server made it",
}
CREATE_FIELDS = frozenset({"type", "id", "name", "description", "extra", "trace_tier", "longlived_ttl_days"})
UPDATE_FIELDS = frozenset({"name", "description", "extra", "trace_tier", "longlived_ttl_days"})
LIST_UNSERVED = {
    "filter": "project filter expressions are not offered; use name, name_contains, id or metadata",
    "stats_filter": "statistics are totals over the project's stored runs",
    "stats_start_time": "statistics are totals over the project's stored runs",
    "tag_value_id": "project tags are not kept by this server",
    "sort_by_feedback_key": "sorting by feedback is not offered",
    "sort_by_feedback_source": "sorting by feedback is not offered",
}
LIST_IGNORED = frozenset({"include_facets", "stats_select", "use_approx_stats", "include_stats"})
LIST_KNOWN = frozenset(
    {
        "id",
        "cursor",
        "dataset_version",
        "metadata",
        "name",
        "name_contains",
        "page_size",
        "reference_dataset_id",
        "sort_by",
        "sort_order",
        "type",
        *LIST_UNSERVED,
        *LIST_IGNORED,
    }
)
RUN_COUNTS = (
    "SELECT session_id, sum(run_count)::bigint FROM session_usage"
    " WHERE tenant = %s AND session_id = ANY(%s::uuid[]) GROUP BY session_id"
)


def session_v2(tenant: str, row: tuple, run_count: int | None = None) -> dict:
    """A project as the SDK's v2 ``Session`` reads it."""
    v1 = sessions.session_json(tenant, row)
    tier = "LONG_LIVED" if v1["trace_tier"] == "longlived" else "SHORT_LIVED"
    answer = {name: v1[name] for name in ("id", "name", "description", "extra", "start_time", "tenant_id")}
    answer.update(type="PROJECT", trace_tier=tier, longlived_ttl_days=v1["longlived_ttl_days"])
    if run_count is not None:
        answer["run_count"] = run_count
    return answer


def _body(body: bytes) -> dict:
    try:
        fields = json.loads(body or b"{}")
    except (ValueError, UnicodeError):
        raise RunError(400, "body must be a JSON object") from None
    if not isinstance(fields, dict):
        raise RunError(400, "body must be a JSON object")
    return fields


def v1_fields(fields: dict, allowed: frozenset) -> dict:
    """A v2 body as /sessions' (sessions.new_project checks it): tiers renamed, fields this server
    does not keep refused."""
    for name, reason in NOT_KEPT.items():
        if fields.get(name) is not None:
            raise RunError(400, f"{name}: {reason}")
    unknown = sorted(k for k in fields if k not in allowed and k not in NOT_KEPT)
    if unknown:
        raise RunError(400, f"unsupported fields: {', '.join(unknown)}")
    v1 = {k: v for k, v in fields.items() if k in allowed}
    if v1.get("trace_tier") is not None:
        if not isinstance(v1["trace_tier"], str) or v1["trace_tier"] not in TIERS:
            raise RunError(400, "trace_tier must be LONG_LIVED or SHORT_LIVED")
        v1["trace_tier"] = TIERS[v1["trace_tier"]]
    return v1


def create_body(tenant: str, body: bytes) -> bytes:
    """POST /api/v2/sessions's body, checked, as POST /sessions's."""
    fields = v1_fields(_body(body), CREATE_FIELDS)
    if fields.get("type") != "PROJECT":
        raise RunError(400, "type must be PROJECT: agents and experiments are not kept by this server")
    name = fields.get("name")
    if fields.get("id") is not None and (
        not isinstance(name, str) or _uuid(fields["id"], "id") != str(sessions.session_id_for(tenant, name))
    ):
        raise RunError(400, "id: a project's id is derived from its name here; leave id out")
    return json.dumps({k: v for k, v in fields.items() if k not in ("type", "id")}).encode()


def update_sql(tenant: str, session_id: str, body: bytes, current_name: str) -> tuple[str, tuple]:
    """PATCH /api/v2/sessions/{id}: what is given changes, null clears description and extra, and
    ``extra`` merges its top-level keys (a null value removes the key)."""
    fields = v1_fields(_body(body), UPDATE_FIELDS)
    name, description, extra, retention = sessions.new_project(json.dumps(fields).encode(), patch=True)
    if name is not None and name != current_name:
        raise RunError(400, "a project cannot be renamed: its id is derived from its name")
    sets, params = [], []
    if "description" in fields:
        sets.append("description = %s")
        params.append(description)
    if "extra" in fields:
        if extra is None:
            sets.append("extra = NULL")
        else:
            sets.append("extra = (coalesce(extra, '{}'::jsonb) - %s::text[]) || %s::jsonb")
            params.append([k for k, v in extra.items() if v is None])
            params.append(json.dumps({k: v for k, v in extra.items() if v is not None}))
    for column, value in retention.items():  # names from policy.FIELDS only
        sets.append(f"{column} = %s")
        params.append(value)
    if not sets:
        sets.append("name = name")
    where = "tenant = %s AND id = %s"
    sql = f"UPDATE sessions SET {', '.join(sets)} WHERE {where} RETURNING {sessions.COLUMNS}"
    return sql, (*params, tenant, session_id)


def _cursor(sort: str, order: str, row: tuple) -> str:
    key = row[4].isoformat() if sort == "start_time" else row[1]
    return base64.urlsafe_b64encode(json.dumps([sort, order, key, str(row[0])]).encode()).decode()


def _after(cursor: str, sort: str, order: str) -> tuple[str, tuple]:
    try:
        if len(cursor) > 3000:
            raise ValueError
        got_sort, got_order, key, session_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if (got_sort, got_order) != (sort, order) or not isinstance(key, str) or "\x00" in key:
            raise ValueError
        if sort == "start_time" and datetime.fromisoformat(key).tzinfo is None:
            raise ValueError
        if not isinstance(session_id, str) or not UUID_TEXT.fullmatch(session_id):
            raise ValueError
    except (ValueError, TypeError, UnicodeError):
        raise RunError(400, "cursor is not one this server gave out for this sort") from None
    cast = "::timestamptz" if sort == "start_time" else ""
    return f"({sort}, id) {'<' if order == 'desc' else '>'} (%s{cast}, %s::uuid)", (key, session_id)


def list_sql(tenant: str, args: dict[str, list[str]]) -> tuple[str, tuple, str, str, int]:
    """GET /api/v2/sessions's query arguments: (sql, params, sort column, order, page size)."""
    unknown = sorted(k for k in args if k not in LIST_KNOWN)
    if unknown:
        raise RunError(400, f"unsupported query arguments: {', '.join(unknown)}")
    if any("\x00" in value for values in args.values() for value in values):
        raise RunError(400, "query arguments must not contain NUL characters")
    for name, reason in LIST_UNSERVED.items():
        if name in args:
            raise RunError(400, f"{name}: {reason}")
    one = {k: v[-1] for k, v in args.items()}
    where, params = ["tenant = %s"], [tenant]
    if "id" in args:
        where.append("id = ANY(%s::uuid[])")
        params.append(_uuids(args["id"], "id"))
    if "name" in one:
        where.append("name = %s")
        params.append(one["name"])
    if "name_contains" in one:
        where.append("strpos(lower(name), lower(%s)) > 0")
        params.append(one["name_contains"])
    if "metadata" in one:
        try:
            metadata = json.loads(one["metadata"])
        except ValueError:
            metadata = None
        if not isinstance(metadata, dict) or not sessions._storable(json.dumps(metadata, ensure_ascii=False)):
            raise RunError(400, "metadata must be a JSON object of storable text")
        where.append("coalesce(extra -> 'metadata', '{}'::jsonb) @> %s::jsonb")
        params.append(json.dumps(metadata))
    types = set(args.get("type", ["PROJECT"]))
    if not types <= {"PROJECT", "AGENT", "EXPERIMENT"}:
        raise RunError(400, "type is PROJECT, AGENT or EXPERIMENT")
    if "PROJECT" not in types or "reference_dataset_id" in args or "dataset_version" in args:
        where.append("false")  # only tracing projects are kept here
    sort_by = one.get("sort_by", "START_TIME")
    if sort_by not in SORTS:
        raise RunError(400, f"sort_by: only {', '.join(SORTS)} are offered by this server")
    sort, order = SORTS[sort_by], one.get("sort_order", "desc")
    if order not in ("asc", "desc"):
        raise RunError(400, "sort_order is asc or desc")
    if "cursor" in one:
        clause, values = _after(one["cursor"], sort, order)
        where.append(clause)
        params.extend(values)
    size = one.get("page_size", str(DEFAULT_PAGE))
    if not size.isascii() or not size.isdigit() or len(size) > 4 or not 1 <= int(size) <= MAX_PAGE:
        raise RunError(400, f"page_size must be an integer from 1 to {MAX_PAGE}")
    sql = (
        f"SELECT {sessions.COLUMNS} FROM sessions WHERE {' AND '.join(where)}"
        f" ORDER BY {sort} {order}, id {order} LIMIT %s"
    )
    return sql, (*params, int(size) + 1), sort, order, int(size)


def _stats_wanted(handler: JSONHandler) -> bool:
    return handler.get_query_argument("include_stats", "false").lower() == "true"


async def run_counts(db, tenant: str, rows: list) -> dict:
    found = await db.fetch(RUN_COUNTS, (tenant, [str(row[0]) for row in rows]))
    return {str(session_id): count for session_id, count in found}


class SessionsV2Handler(JSONHandler):
    """GET /api/v2/sessions: a page of the tenant's projects. POST: create one (``?upsert=true``:
    or update the one of that name)."""

    SUPPORTED_METHODS = ("GET", "POST")

    async def get(self) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        args = self.query_args()
        try:
            sql, params, sort, order, size = list_sql(tenant, args)
            rows = await self.db.fetch(sql, params)
            page = rows[:size]
            counts = await run_counts(self.db, tenant, page) if _stats_wanted(self) and page else None
        except RunError as e:
            return self.fail(e)
        items = [
            session_v2(tenant, row, None if counts is None else counts.get(str(row[0]), 0)) for row in page
        ]
        more = len(rows) > size
        self.finish({"items": items, "next_cursor": _cursor(sort, order, page[-1]) if more else None})

    async def post(self) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        upsert = self.get_query_argument("upsert", "false").lower() == "true"
        try:
            body = create_body(tenant, self.request.body)
            created, row = await create_project(self.db, tenant, body, upsert)
        except RunError as e:
            return self.fail(e)
        if created:
            self.set_status(201)
        self.finish(session_v2(tenant, row))


class SessionV2Handler(JSONHandler):
    """GET /api/v2/sessions/{id}: one project. PATCH: change it (update_sql)."""

    SUPPORTED_METHODS = ("GET", "PATCH")

    async def _row(self, tenant: str, session_id: str) -> tuple:
        if not UUID_TEXT.fullmatch(session_id):
            raise RunError(400, "the project id must be a UUID")
        rows = await self.db.fetch(
            f"SELECT {sessions.COLUMNS} FROM sessions WHERE tenant = %s AND id = %s", (tenant, session_id)
        )
        if not rows:
            raise RunError(404, f"project {session_id} not found")
        return rows[0]

    async def get(self, session_id: str) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        try:
            if self.get_query_argument("stats_start_time", None) is not None:
                raise RunError(400, f"stats_start_time: {LIST_UNSERVED['stats_start_time']}")
            row = await self._row(tenant, session_id)
            count = None
            if _stats_wanted(self):
                count = (await run_counts(self.db, tenant, [row])).get(str(row[0]), 0)
        except RunError as e:
            return self.fail(e)
        self.finish(session_v2(tenant, row, count))

    async def patch(self, session_id: str) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        try:
            current = await self._row(tenant, session_id)
            rows = await self.db.fetch(*update_sql(tenant, str(current[0]), self.request.body, current[1]))
            if not rows:
                raise RunError(404, f"project {session_id} not found")
        except RunError as e:
            return self.fail(e)
        self.finish(session_v2(tenant, rows[0]))


def routes(deps: dict) -> list:
    return [
        (r"/api/v2/sessions/?", SessionsV2Handler, deps),
        (r"/api/v2/sessions/([^/]+)", SessionV2Handler, deps),
    ]
