"""Projects, which LangSmith calls sessions: ids, the upsert that ingestion runs, and the routes
``GET /sessions``, ``GET /sessions/{id}`` and ``POST /sessions`` in the shapes the SDK parses.

A project's id is derived from its tenant and name (``session_id_for``), so a run that names its
project (``session_name``, "default" when it names none) gets the project's id without a lookup,
and the row and its project are written in one statement (db.write_batch). A run that gives a
``session_id`` keeps it; a project of that id is created if the tenant has none of its name.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from functools import lru_cache

from handler.base.errors import RunError
from handler.retention import policy
from handler.runs.schema import UUID_TEXT
from handler.store.rows import RunRow

DEFAULT_PROJECT = "default"  # LangSmith's, for runs that name no project
MAX_PROJECT_NAME_CHARS = 1024
MAX_PAGE = 100
_TENANTS = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")  # uuid.NAMESPACE_URL
# The last three are the project's retention (handler/retention/policy.py).
RETENTION_FIELDS = policy.FIELDS
COLUMNS = f"id, name, description, extra, start_time, {', '.join(RETENTION_FIELDS)}"
UPSERT = (
    "INSERT INTO sessions (tenant, id, name) SELECT %s, * FROM unnest(%s::uuid[], %s::text[])"
    " ON CONFLICT DO NOTHING"
)


@lru_cache(maxsize=1024)  # pure, and asked for every request
def tenant_id(tenant: str) -> uuid.UUID:
    """The UUID that stands for a tenant (the SDK's ``tenant_id``)."""
    return uuid.uuid3(_TENANTS, f"run-handler:tenant:{tenant}")


@lru_cache(maxsize=4096)
def session_id_for(tenant: str, name: str) -> uuid.UUID:
    return uuid.uuid3(tenant_id(tenant), name)


def with_sessions(tenant: str, rows: Sequence[RunRow]) -> tuple[list[RunRow], list[tuple[str, str]]]:
    """The rows with their project's id filled in, and the projects (id, name) that the posted ones
    need, sorted (so concurrent batches take their locks in one order)."""
    resolved, projects = [], {}
    for row in rows:
        name = row.session_name
        if row.session_id is None:
            name = name if name is not None else DEFAULT_PROJECT
            row = row._replace(session_id=session_id_for(tenant, name))
        if row.posted:
            projects.setdefault(str(row.session_id), name if name is not None else str(row.session_id))
        resolved.append(row)
    return resolved, sorted(projects.items())


def session_json(tenant: str, row: Sequence) -> dict:
    """A project as the SDK's TracerSession(Result) reads it."""
    session_id, name, description, extra, start_time, trace_tier, retention_days, longlived_ttl_days = row
    return {
        "id": str(session_id),
        "name": name,
        "description": description,
        "extra": extra,
        "start_time": start_time.isoformat(),
        "end_time": None,
        "tenant_id": str(tenant_id(tenant)),
        "reference_dataset_id": None,
        "trace_tier": trace_tier or "shortlived",
        "retention_days": retention_days,
        "longlived_ttl_days": longlived_ttl_days,
    }


def new_project(body: bytes, patch: bool = False) -> tuple[str | None, str | None, dict | None, dict]:
    """POST /sessions's body: (name, description, extra, retention fields given). The id a client
    sends is not kept: a project's id is derived from its name. With ``patch`` (PATCH
    /sessions/{id}) the name may be null."""
    try:
        fields = json.loads(body)
    except (ValueError, UnicodeError):
        raise RunError(400, "body must be a JSON object") from None
    if not isinstance(fields, dict):
        raise RunError(400, "body must be a JSON object")
    name, description, extra = fields.get("name"), fields.get("description"), fields.get("extra")
    if not (patch and name is None) and (
        not isinstance(name, str) or not name or len(name) > MAX_PROJECT_NAME_CHARS or "\x00" in name
    ):
        raise RunError(400, f"name must be a string of 1 to {MAX_PROJECT_NAME_CHARS} characters")
    if description is not None and (not isinstance(description, str) or "\x00" in description):
        raise RunError(400, "description must be a string")
    if extra is not None and not isinstance(extra, dict):
        raise RunError(400, "extra must be an object")
    for text in (name, description, json.dumps(extra, ensure_ascii=False)):
        if text is not None and not _storable(text):
            raise RunError(
                400, "name, description and extra must be storable text (no NUL, no lone surrogate)"
            )
    return name, description, extra, policy.project_fields(fields)


def _storable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in text and "\\u0000" not in text


def list_sql(tenant: str, args: dict[str, list[str]]) -> tuple[str, tuple]:
    """GET /sessions's query arguments (``name``, ``id``, ``name_contains``, ``limit``, ``offset``,
    ``reference_free``, ``reference_dataset``) to SQL. Others the SDK sends (``include_stats``,
    ``dataset_version``) change nothing here; ``metadata`` filters are refused."""
    if "metadata" in args:
        raise RunError(400, "filtering projects by metadata is not supported by this server")
    if any("\x00" in value for values in args.values() for value in values):
        raise RunError(400, "query arguments must not contain NUL characters")
    where, params = ["tenant = %s"], [tenant]
    if "name" in args:
        where.append("name = ANY(%s)")
        params.append(args["name"])
    if "id" in args:
        for value in args["id"]:
            if not UUID_TEXT.fullmatch(value):
                raise RunError(400, "id must be a UUID")
        where.append("id = ANY(%s::uuid[])")
        params.append(args["id"])
    if "name_contains" in args:
        where.append("strpos(lower(name), lower(%s)) > 0")
        params.append(args["name_contains"][-1])
    # No project here has a reference dataset (datasets are not kept).
    if "reference_dataset" in args or args.get("reference_free", ["true"])[-1].lower() == "false":
        where.append("false")
    limit = _number(args, "limit", 100, 1, MAX_PAGE)
    offset = _number(args, "offset", 0, 0, 1_000_000)
    sql = f"SELECT {COLUMNS} FROM sessions WHERE {' AND '.join(where)} ORDER BY start_time DESC, name"
    return f"{sql} LIMIT %s OFFSET %s", (*params, limit, offset)


def _number(args: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    value = args.get(name, [str(default)])[-1]
    if not value.isascii() or not value.isdigit() or len(value) > 8 or not low <= int(value) <= high:
        raise RunError(400, f"{name} must be an integer from {low} to {high}")
    return int(value)


CREATE = (
    f"INSERT INTO sessions (tenant, id, name, description, extra, {', '.join(RETENTION_FIELDS)})"
    f" VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
)


def update_sql(where: str, retention: dict) -> str:
    """UPDATE of a project: description and extra when not null, the retention fields given
    (policy.project_fields) as they are; params: description, extra, *retention values, *where's."""
    sets = ["description = coalesce(%s, description)", "extra = coalesce(%s::jsonb, extra)"]
    sets += [f"{name} = %s" for name in retention]  # names from policy.FIELDS only
    return f"UPDATE sessions SET {', '.join(sets)} WHERE {where} RETURNING {COLUMNS}"
