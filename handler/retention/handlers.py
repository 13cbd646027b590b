"""Retention on the routes: a project's retention and usage in ``GET /sessions/{id}``, its
``PATCH`` (read/projects.py routes both here), and ``POST /traces/{trace_id}/extend-retention``,
which moves a trace to the long tier."""

from __future__ import annotations

import json

from handler.base.errors import RunError
from handler.base.handlers import JSONHandler
from handler.read import sessions
from handler.read.runs import uuid_argument
from handler.retention.policy import MARK_LONG, Defaults, period_days
from handler.server.config import Settings
from handler.store.db import Database

_USAGE = """
SELECT coalesce(sum(run_count), 0)::bigint, coalesce(sum(bytes), 0)::bigint,
    (SELECT min(created_at) FROM runs WHERE tenant = %(t)s AND session_id = %(s)s)
FROM session_usage WHERE tenant = %(t)s AND session_id = %(s)s
"""


async def project_details(db: Database, settings: Settings, tenant: str, row) -> dict:
    """What GET /sessions/{id} adds to a project: its retention in days as it applies now (null:
    for ever), when its oldest stored run was received, and its runs and their bytes, from
    counters the database keeps (schema/0008_retention.sql), so nothing is counted here."""
    session_id, tier, days, long_days = row[0], *row[5:8]
    defaults = Defaults(settings.retention_days, settings.retention_long_days)
    run_count, size, oldest = (await db.fetch(_USAGE, {"t": tenant, "s": str(session_id)}))[0]
    return {
        "retention": {
            "days": period_days(defaults, tier, days, long_days),
            "longlived_days": period_days(defaults, tier, days, long_days, long_trace=True),
        },
        "oldest_run_received_at": oldest.isoformat() if oldest is not None else None,
        "run_count": run_count,
        "bytes_stored": size,
    }


async def patch_project(db: Database, tenant: str, session_id: str, body: bytes) -> tuple:
    """PATCH /sessions/{id} (the SDK's ``update_project``, plus the retention fields): the
    project's row after the change. Null or absent description and extra stay as they are; a
    retention field that is present is set (null: back to the server's default). A project's id is
    derived from its name, so it cannot be renamed; ``end_time`` is not kept."""
    name, description, extra, retention = sessions.new_project(body, patch=True)
    if json.loads(body).get("end_time") is not None:
        raise RunError(400, "end_time is not kept by this server; send null or leave it out")
    found = await db.fetch("SELECT name FROM sessions WHERE tenant = %s AND id = %s", (tenant, session_id))
    if not found:
        raise RunError(404, f"project {session_id} not found")
    if name is not None and name != found[0][0]:
        raise RunError(400, "a project cannot be renamed: its id is derived from its name")
    extra_json = None if extra is None else json.dumps(extra)
    rows = await db.fetch(
        sessions.update_sql("tenant = %s AND id = %s", retention),
        (description, extra_json, *retention.values(), tenant, session_id),
    )
    if not rows:
        raise RunError(404, f"project {session_id} not found")
    return rows[0]


class ExtendHandler(JSONHandler):
    """POST /traces/{trace_id}/extend-retention: keep the trace for the long tier's period."""

    SUPPORTED_METHODS = ("POST",)

    async def post(self, trace_id: str) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        try:
            trace = uuid_argument(trace_id, "trace id")
            found = await self.db.fetch(
                "SELECT 1 FROM runs WHERE tenant = %s AND trace_id = %s LIMIT 1", (tenant, str(trace))
            )
            if not found:
                raise RunError(404, f"trace {trace} not found")
            await self.db.fetch(f"{MARK_LONG} RETURNING 1", (tenant, [str(trace)], "asked"))
        except RunError as e:
            return self.fail(e)
        self.finish({"trace_id": str(trace), "trace_tier": "longlived"})


def routes(deps: dict) -> list:
    return [(r"/traces/([^/]+)/extend-retention", ExtendHandler, deps)]
