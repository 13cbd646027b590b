"""The SDK's v2 run reads: ``POST /api/v2/runs/query`` (``client.runs.query``) and
``GET /api/v2/runs/{id}`` (``client.runs.retrieve``), in the shapes its generated client sends and
parses (langsmith/types/run_query_v2_params.py, run.py): ``{"items": [...], "next_cursor": ...}``,
each run holding only the fields ``selects`` names (``id`` alone when it names none).

A query covers ``project_ids`` between ``min_start_time`` (default: a day ago) and
``max_start_time`` (default: now), newest first, in cursor pages of ``page_size`` (1 to 1,000).
Fields that columns hold come from the row; INPUTS, OUTPUTS, EXTRA, METADATA, EVENTS, the previews
and the whole ERROR come from the run's bytes, read as POST /runs/query reads them (a page ends
early rather than read more than PAYLOAD_BYTES). What this server does not keep (AI and semantic
search, datasets, feedback windows) is refused with 400; select fields it does not keep come
as null.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from datetime import UTC, datetime, timedelta

from handler.base.errors import RunError
from handler.query.scopes import Filters
from handler.read.query import _flag, _moment, _uuids, encode_cursor, json_value, one_of, run_clauses

MAX_PAGE = 1000
DEFAULT_PAGE = 100
DEFAULT_WINDOW = timedelta(days=1)
PREVIEW_CHARS = 500
# Select field -> the row's column.
COLUMN_SELECTS = {
    "ID": "id",
    "NAME": "name",
    "RUN_TYPE": "run_type",
    "STATUS": "status",
    "START_TIME": "start_time",
    "END_TIME": "end_time",
    "ERROR_PREVIEW": "error",
    "PROJECT_ID": "session_id",
    "TRACE_ID": "trace_id",
    "DOTTED_ORDER": "dotted_order",
    "REFERENCE_EXAMPLE_ID": "reference_example_id",
    "TOTAL_TOKENS": "total_tokens",
    "PROMPT_TOKENS": "prompt_tokens",
    "COMPLETION_TOKENS": "completion_tokens",
    "TOTAL_COST": "total_cost",
    "PROMPT_COST": "prompt_cost",
    "COMPLETION_COST": "completion_cost",
    "TAGS": "tags",
}
COMPUTED_SELECTS = frozenset({"LATENCY_SECONDS", "IS_ROOT", "PARENT_RUN_IDS"})
# Select field -> the run's field in its bytes.
PAYLOAD_SELECTS = {
    "INPUTS": "inputs",
    "OUTPUTS": "outputs",
    "EXTRA": "extra",
    "EVENTS": "events",
    "METADATA": "extra",
    "INPUTS_PREVIEW": "inputs",
    "OUTPUTS_PREVIEW": "outputs",
    "ERROR": "error",
}
# Known to the SDK, not kept here: answered as null.
NULL_SELECTS = frozenset(
    {
        "FIRST_TOKEN_TIME",
        "MANIFEST",
        "THREAD_ID",
        "REFERENCE_DATASET_ID",
        "PROMPT_TOKEN_DETAILS",
        "COMPLETION_TOKEN_DETAILS",
        "PROMPT_COST_DETAILS",
        "COMPLETION_COST_DETAILS",
        "PRICE_MODEL_ID",
        "APP_PATH",
        "ATTACHMENTS",
        "THREAD_EVALUATION_TIME",
        "IS_IN_DATASET",
        "LAST_QUEUED_AT",
        "SHARE_URL",
        "FEEDBACK_STATS",
        "LS_USER_ID",
    }
)
SELECTS = frozenset({*COLUMN_SELECTS, *COMPUTED_SELECTS, *PAYLOAD_SELECTS, *NULL_SELECTS})
ROW_COLUMNS = (
    "id, name, run_type, status, start_time, end_time, error, session_id, trace_id, dotted_order,"
    " reference_example_id, total_tokens, prompt_tokens, completion_tokens, total_cost, prompt_cost,"
    " completion_cost, tags, parent_run_id, object_key, object_offset, size_bytes"
)
_NAMES = [c.strip() for c in ROW_COLUMNS.split(",")]
_ORDER_KEY = "coalesce(start_time, '-infinity')"
UNSERVED = {
    "ai_search": "AI search is not offered by this server",
    "sem_filter": "semantic filtering is not offered by this server",
    "reference_dataset_id": "datasets are not kept by this server; use project_ids",
    "min_feedback_modified_at": "feedback time windows are not offered by this server",
    "max_feedback_modified_at": "feedback time windows are not offered by this server",
}
KNOWN = frozenset(
    {
        "cursor",
        "filter",
        "trace_filter",
        "tree_filter",
        "has_error",
        "ids",
        "include_subtree_usage",
        "is_root",
        "max_start_time",
        "min_start_time",
        "page_size",
        "project_ids",
        "reference_examples",
        "run_type",
        "selects",
        "trace_id",
        *UNSERVED,
    }
)
# This body's names for the fields every read understands (read/query.RUN_CLAUSES).
V2_NAMES = {
    "ids": "ids",
    "reference_examples": "reference_examples",
    "trace_id": "trace",
    "run_type": "run_type",
    "is_root": "is_root",
    "has_error": "has_error",
    "cursor": "cursor",
}
_DOTTED_ID = re.compile(r"Z([0-9a-fA-F-]{36})")


def selects_of(value: object) -> list[str]:
    if value is None:
        return ["ID"]
    if (
        not isinstance(value, list)
        or len(value) > len(SELECTS) * 2
        or not all(isinstance(s, str) for s in value)
    ):
        raise RunError(400, "selects must be a list of field names such as ID, NAME, INPUTS")
    unknown = sorted({s for s in value if s not in SELECTS})
    if unknown:
        raise RunError(400, f"unknown selects: {', '.join(unknown)}")
    return list(dict.fromkeys(["ID", *value]))


def checked_body(body: object, known: Collection[str], unserved: dict[str, str]) -> dict:
    """A v2 query body's fields that are given (not null): 400 for a field it does not know, or
    one it knows but does not serve (``unserved``: field -> why)."""
    if not isinstance(body, dict):
        raise RunError(400, "body must be a JSON object")
    unknown = sorted(k for k in body if k not in known)
    if unknown:
        raise RunError(400, f"unsupported query fields: {', '.join(unknown)}")
    given = {k: v for k, v in body.items() if v is not None}
    for key, reason in unserved.items():
        if key in given:
            raise RunError(400, f"{key}: {reason}")
    return given


def page_size(given: dict, default: int, most: int) -> int:
    """A v2 body's ``page_size``: an integer from 1 to ``most``, ``default`` when not given."""
    size = given.get("page_size", default)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= most:
        raise RunError(400, f"page_size must be an integer from 1 to {most}")
    return size


class QueryV2:
    """A checked POST /api/v2/runs/query body: its SQL and what each run of the answer holds."""

    def __init__(self, tenant: str, body: object, now: datetime | None = None) -> None:
        given = checked_body(body, KNOWN, UNSERVED)
        if "project_ids" not in given:
            raise RunError(400, "project_ids is required")
        filters = Filters(given)
        projects, project_ids = one_of("session_id", _uuids(given["project_ids"], "project_ids"))
        where = ["tenant = %s", "posted", projects]
        params: list = [tenant, project_ids]

        def add(clause: str, *values: object) -> None:
            where.append(clause)
            params.extend(values)

        now = now or datetime.now(UTC)
        low = (
            _moment(given["min_start_time"], "min_start_time")
            if "min_start_time" in given
            else now - DEFAULT_WINDOW
        )
        high = _moment(given["max_start_time"], "max_start_time") if "max_start_time" in given else now
        add(f"{_ORDER_KEY} >= %s AND {_ORDER_KEY} <= %s", low, high)
        if "include_subtree_usage" in given and _flag(
            given["include_subtree_usage"], "include_subtree_usage"
        ):
            raise RunError(400, "include_subtree_usage: subtree totals are not computed by this server")
        for clause, values in run_clauses(given, V2_NAMES):
            add(clause, *values)
        where.extend(filters.clauses)
        params.extend(filters.params)
        self.page_size = page_size(given, DEFAULT_PAGE, MAX_PAGE)
        self.selects = selects_of(given.get("selects"))
        order = f"ORDER BY {_ORDER_KEY} DESC, id DESC"
        self.sql = f"SELECT {ROW_COLUMNS} FROM runs AS r WHERE {' AND '.join(where)} {order} LIMIT %s"
        self.params = (*params, self.page_size + 1)


def payload_fields(selects: list[str]) -> list[str]:
    return sorted({PAYLOAD_SELECTS[s] for s in selects if s in PAYLOAD_SELECTS})


def parent_run_ids(dotted_order: str | None, parent_run_id: object) -> list[str]:
    """The run's ancestors, root first: every id of its dotted_order but its own."""
    if dotted_order:
        return [m.lower() for m in _DOTTED_ID.findall(dotted_order)[:-1]]
    return [] if parent_run_id is None else [str(parent_run_id)]


def preview(value: object) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text[:PREVIEW_CHARS]


def run_v2(row: tuple, selects: list[str], stored: dict | None) -> dict:
    """One run of the answer, holding the selected fields."""
    values = dict(zip(_NAMES, row, strict=True))
    run: dict = {}
    for select in selects:
        name = select.lower()
        if select in COLUMN_SELECTS:
            value = values[COLUMN_SELECTS[select]]
            if select == "STATUS":
                value = value.upper()
            run[name] = json_value(value)
        elif select == "LATENCY_SECONDS":
            start, end = values["start_time"], values["end_time"]
            run[name] = None if start is None or end is None else (end - start).total_seconds()
        elif select == "IS_ROOT":
            run[name] = values["parent_run_id"] is None
        elif select == "PARENT_RUN_IDS":
            run[name] = parent_run_ids(values["dotted_order"], values["parent_run_id"])
        elif select in PAYLOAD_SELECTS:
            if stored is None:
                continue  # too large to read for a page: left out
            field = stored.get(PAYLOAD_SELECTS[select])
            if select == "METADATA":
                field = (field or {}).get("metadata") if isinstance(field, dict) else None
            elif select.endswith("_PREVIEW"):
                field = preview(field)
            run[name] = field
        else:
            run[name] = None
    return run


def next_cursor(rows: list[tuple], more: bool) -> str | None:
    if not more or not rows:
        return None
    last = dict(zip(_NAMES, rows[-1], strict=True))
    return encode_cursor(last["start_time"], last["id"])
