"""Routes of the v2 run reads (v2.py): ``POST /api/v2/runs/query`` and ``GET /api/v2/runs/{id}``."""

from __future__ import annotations

import uuid

from handler.base.errors import RunError
from handler.base.handlers import JSONHandler
from handler.query.v2 import ROW_COLUMNS, QueryV2, next_cursor, payload_fields, run_v2, selects_of
from handler.read.query import MAX_BODY_BYTES, with_payloads
from handler.runs.schema import UUID_TEXT


async def runs_of(handler: JSONHandler, rows: list[tuple], selects: list[str]) -> tuple[list[dict], int]:
    """The answer's runs for ``rows``, with the bytes read for the selects that need them; and how
    many rows that covers (fewer when the page's payload budget ran out)."""
    fields = payload_fields(selects)
    if not fields or not rows:
        return [run_v2(row, selects, None) for row in rows], len(rows)
    stored = [{} for _ in rows]
    count = await with_payloads(handler.store, rows, stored, fields)
    runs = [
        run_v2(row, selects, None if held.get("payload_omitted") else held)
        for row, held in zip(rows[:count], stored, strict=False)
    ]
    return runs, count


class QueryV2Handler(JSONHandler):
    """POST /api/v2/runs/query."""

    SUPPORTED_METHODS = ("POST",)

    async def post(self) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        try:
            query = QueryV2(tenant, self.json_body(MAX_BODY_BYTES))
            rows = await self.db.fetch_bounded(query.sql, query.params, self.config.query_timeout_ms)
            page = rows[: query.page_size]
            runs, count = await runs_of(self, page, query.selects)
        except RunError as e:
            return self.fail(e)
        more = len(rows) > len(page) or count < len(page)
        self.finish({"items": runs, "next_cursor": next_cursor(page[:count], more)})


class RunV2Handler(JSONHandler):
    """GET /api/v2/runs/{id}?project_id=...&selects=...: one run of a project."""

    async def get(self, run_id: str) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        try:
            project = self.get_query_argument("project_id", None)
            if project is None or not UUID_TEXT.fullmatch(project):
                raise RunError(400, "project_id must be a UUID")
            if not UUID_TEXT.fullmatch(run_id):
                raise RunError(400, "the run id must be a UUID")
            selects = selects_of(self.get_query_arguments("selects") or None)
            rows = await self.db.fetch(
                f"SELECT {ROW_COLUMNS} FROM runs"
                " WHERE tenant = %s AND id = %s AND session_id = %s AND posted",
                (tenant, str(uuid.UUID(run_id)), str(uuid.UUID(project))),
            )
            if not rows:
                raise RunError(404, "run not found")
            runs, _ = await runs_of(self, rows, selects)
        except RunError as e:
            return self.fail(e)
        self.finish(runs[0])


def routes(deps: dict) -> list:
    return [
        (r"/api/v2/runs/query", QueryV2Handler, deps),
        (r"/api/v2/runs/([^/]+)", RunV2Handler, deps),
    ]
