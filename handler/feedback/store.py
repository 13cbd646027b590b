"""Feedback in PostgreSQL (schema/0006_feedback.sql): the statements, and the JSON they answer in.

Rows are written by store/db.py's ``write_batch``, in the transaction of the request's runs
(INSERT below); everything else here is one statement through ``Database.fetch``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from handler.feedback.schema import COLUMNS, FeedbackRow
from handler.runs.schema import UUID_TEXT
from handler.store.rows import columns

if TYPE_CHECKING:  # db.py imports INSERT from here
    from handler.store.db import Database

MAX_COMMENTS = 10  # per key in feedback_stats, newest first
_TYPES = {
    "id": "uuid",
    "run_id": "uuid",
    "trace_id": "uuid",
    "session_id": "uuid",
    "score": "float8",
    "value": "jsonb",
    "correction": "jsonb",
    "feedback_source": "jsonb",
    "feedback_config": "jsonb",
    "extra": "jsonb",
    "error": "boolean",
    "comparative_experiment_id": "uuid",
    "feedback_group_id": "uuid",
    "start_time": "timestamptz",
    "created_at": "timestamptz",
    "modified_at": "timestamptz",
}
_NAMES = ", ".join(COLUMNS)
# A feedback without a trace_id gets its run's, when the run is known (posted earlier, or in this
# transaction), so a trace's feedback can be found (and deleted with it) by trace.
INSERT = f"""
INSERT INTO feedback (tenant, {_NAMES})
SELECT %s, {", ".join("coalesce(f.trace_id, r.trace_id)" if c == "trace_id" else f"f.{c}" for c in COLUMNS)}
FROM unnest({", ".join(f"%s::{_TYPES.get(c, 'text')}[]" for c in COLUMNS)}) AS f({_NAMES})
LEFT JOIN runs r ON r.tenant = %s AND r.id = f.run_id
"""
SELECT = f"SELECT {_NAMES} FROM feedback"
# One row per (run, key): LangSmith's feedback_stats of each run (its FeedbackStats shape).
STATS = f"""
WITH f AS (
    SELECT run_id, key, score, value, comment, error, feedback_source ->> 'type' AS source, created_at
    FROM feedback WHERE tenant = %s AND run_id = ANY(%s::uuid[])
), labels AS (
    SELECT run_id, key, jsonb_object_agg(label, n) AS counts FROM (
        SELECT run_id, key, value #>> '{{}}' AS label, count(*) AS n FROM f
        WHERE jsonb_typeof(value) IN ('string', 'number', 'boolean') GROUP BY 1, 2, 3
    ) AS v GROUP BY 1, 2
)
SELECT s.*, coalesce(labels.counts, '{{}}'::jsonb) FROM (
    SELECT run_id, key, count(*), avg(score), stddev_samp(score), min(score), max(score),
        count(*) FILTER (WHERE error),
        (array_agg(comment ORDER BY created_at DESC) FILTER (WHERE comment <> ''))[1:{MAX_COMMENTS}],
        array_agg(DISTINCT source) FILTER (WHERE source IS NOT NULL)
    FROM f GROUP BY run_id, key
) AS s LEFT JOIN labels USING (run_id, key)
"""


def conflict_message(detail: str | None) -> str:
    """The 409 of a feedback id taken, from PostgreSQL's "Key (tenant, id)=(t, <id>) already
    exists." (one tenant's ids only: the key includes the tenant)."""
    found = UUID_TEXT.findall(detail or "")  # the id is the key's last part
    return f"feedback {found[-1]} already exists" if found else "a feedback id already exists"


def insert_params(tenant: str, rows: Sequence[FeedbackRow]) -> tuple:
    """The parameters of INSERT for these rows."""
    return (tenant, *columns([row[: len(COLUMNS)] for row in rows]), tenant)


def dumps(value: object) -> str:
    """An answer's JSON (Tornado writes dicts itself, but not a list: GET /feedback's array)."""
    return json.dumps(value, ensure_ascii=False)


def as_json(row: Sequence) -> dict:
    """A row of SELECT as the SDKs' Feedback reads it (jsonb comes back parsed)."""
    return {name: _plain(value) for name, value in zip(COLUMNS, row, strict=True)}


def _plain(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value) if isinstance(value, uuid.UUID) else value


def row_json(row: FeedbackRow) -> dict:
    """A feedback as stored, from the row written (what POST /feedback answers)."""
    values = dict(zip(COLUMNS, row, strict=False))
    for name in ("value", "correction", "feedback_source", "feedback_config", "extra"):
        if values[name] is not None:
            values[name] = json.loads(values[name])
    return as_json([values[name] for name in COLUMNS])


async def find(db: Database, tenant: str, feedback_id: uuid.UUID) -> dict | None:
    rows = await db.fetch(f"{SELECT} WHERE tenant = %s AND id = %s", (tenant, str(feedback_id)))
    return as_json(rows[0]) if rows else None


async def update(
    db: Database, tenant: str, feedback_id: uuid.UUID, changes: dict[str, object]
) -> dict | None:
    """Set the fields of ``changes`` (checked by schema.parse_update); None if there is no such
    feedback."""
    sets = [f"{name} = %s::{_TYPES.get(name, 'text')}" for name in changes]
    rows = await db.fetch(
        f"UPDATE feedback SET {', '.join([*sets, 'modified_at = now()'])}"
        f" WHERE tenant = %s AND id = %s RETURNING {_NAMES}",
        (*changes.values(), tenant, str(feedback_id)),
    )
    return as_json(rows[0]) if rows else None


async def delete(db: Database, tenant: str, feedback_id: uuid.UUID) -> bool:
    rows = await db.fetch(
        "DELETE FROM feedback WHERE tenant = %s AND id = %s RETURNING id", (tenant, str(feedback_id))
    )
    return bool(rows)


async def listing(db: Database, tenant: str, where: list[str], params: list, limit: int, offset: int) -> list:
    clauses = " AND ".join(["tenant = %s", *where])
    rows = await db.fetch(
        f"{SELECT} WHERE {clauses} ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s",
        (tenant, *params, limit, offset),
    )
    return [as_json(row) for row in rows]


async def stats(db: Database, tenant: str, run_ids: Sequence[object]) -> dict[str, dict]:
    """feedback_stats of each of these runs that has feedback: run id -> key -> stats."""
    if not run_ids:
        return {}
    found: dict[str, dict] = {}
    for run_id, key, n, avg, stdev, low, high, errors, comments, sources, values in await db.fetch(
        STATS, (tenant, [str(r) for r in run_ids])
    ):
        found.setdefault(str(run_id), {})[key] = {
            "n": n,
            "avg": avg,
            "stdev": stdev,
            "min": low,
            "max": high,
            "errors": errors,
            "values": values,
            "comments": comments or [],
            "sources": sources or [],
            "contains_thread_feedback": False,
        }
    return found


async def stats_tail(db: Database, tenant: str, run_id: object) -> bytes:
    """What GET /runs/{id} puts in place of the run's closing brace when it has feedback:
    ``,"feedback_stats":{...}}``; nothing when it has none (the run's bytes stay exactly as sent)."""
    found = (await stats(db, tenant, [run_id])).get(str(uuid.UUID(str(run_id))))
    return b',"feedback_stats":' + dumps(found).encode() + b"}" if found else b""
