"""The project routes: ``GET /sessions``, ``GET /sessions/{id}``, ``POST /sessions`` (sessions.py
has the SQL and the shapes)."""

from __future__ import annotations

import json

from handler.base.errors import RunError
from handler.base.handlers import JSONHandler
from handler.read import sessions
from handler.retention import handlers as retention
from handler.runs.schema import UUID_TEXT


async def create_project(db, tenant: str, body: bytes, upsert: bool) -> tuple[bool, tuple]:
    """POST /sessions's body made a project (True), or, with ``upsert``, updated the one of that
    name (False): its row. 409 when it exists and ``upsert`` is not asked."""
    name, description, extra, retention = sessions.new_project(body)
    extra_json = None if extra is None else json.dumps(extra)
    session_id = str(sessions.session_id_for(tenant, name))
    policy = [retention.get(field) for field in sessions.RETENTION_FIELDS]
    rows = await db.fetch(sessions.CREATE, (tenant, session_id, name, description, extra_json, *policy))
    if rows:
        return True, rows[0]
    if not upsert:
        raise RunError(409, f"a project named {name!r} already exists")
    rows = await db.fetch(
        sessions.update_sql("tenant = %s AND name = %s", retention),
        (description, extra_json, *retention.values(), tenant, name),
    )
    return False, rows[0]


class SessionsHandler(JSONHandler):
    """GET /sessions: a tenant's projects (a JSON array, as LangSmith answers). POST /sessions:
    create one (``?upsert=true``: or update the one of that name)."""

    SUPPORTED_METHODS = ("GET", "POST")

    async def get(self) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        args = self.query_args()
        try:
            rows = await self.db.fetch(*sessions.list_sql(tenant, args))
        except RunError as e:
            return self.fail(e)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps([sessions.session_json(tenant, row) for row in rows]))

    async def post(self) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        upsert = self.get_query_argument("upsert", "false").lower() == "true"
        try:
            created, row = await create_project(self.db, tenant, self.request.body, upsert)
        except RunError as e:
            return self.fail(e)
        if created:
            self.set_status(201)
        self.finish(sessions.session_json(tenant, row))


class SessionHandler(JSONHandler):
    """GET /sessions/{id}: one project, with its retention and usage. PATCH: change its
    description, extra or retention (handler/retention/handlers.py)."""

    SUPPORTED_METHODS = ("GET", "PATCH")

    async def get(self, session_id: str) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        try:
            if not UUID_TEXT.fullmatch(session_id):
                raise RunError(400, "the project id must be a UUID")
            rows = await self.db.fetch(
                f"SELECT {sessions.COLUMNS} FROM sessions WHERE tenant = %s AND id = %s", (tenant, session_id)
            )
            if not rows:
                raise RunError(404, f"project {session_id} not found")
            answer = sessions.session_json(tenant, rows[0])
            answer.update(await retention.project_details(self.db, self.config, tenant, rows[0]))
        except RunError as e:
            return self.fail(e)
        self.finish(answer)

    async def patch(self, session_id: str) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        try:
            if not UUID_TEXT.fullmatch(session_id):
                raise RunError(400, "the project id must be a UUID")
            row = await retention.patch_project(self.db, tenant, session_id, self.request.body)
        except RunError as e:
            return self.fail(e)
        self.finish(sessions.session_json(tenant, row))


def routes(deps: dict) -> list:
    return [(r"/sessions/?", SessionsHandler, deps), (r"/sessions/([^/]+)", SessionHandler, deps)]
