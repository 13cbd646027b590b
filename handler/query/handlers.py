"""Routes of the v2 run and trace reads: ``POST /api/v2/runs/query`` and ``GET /api/v2/runs/{id}``
(v2.py), ``POST /api/v2/traces/query`` and ``GET /api/v2/traces/{id}/runs`` (traces.py)."""

from __future__ import annotations

import uuid

from handler.base.errors import RunError
from handler.base.handlers import JSONHandler
from handler.query.traces import AGGREGATES, TRACE_RUNS, TraceRuns, TracesQuery, aggregates_json
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


def refuse_streaming(handler: JSONHandler) -> None:
    """The SDK's ``traces.streaming`` asks for server-sent events alone: not offered here."""
    accept = handler.request.headers.get("Accept", "")
    if "text/event-stream" in accept and "json" not in accept and "*/*" not in accept:
        raise RunError(406, "streamed answers (text/event-stream) are not offered; ask for application/json")


class TracesQueryHandler(JSONHandler):
    """POST /api/v2/traces/query."""

    SUPPORTED_METHODS = ("POST",)

    async def post(self) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        try:
            refuse_streaming(self)
            query = TracesQuery(tenant, self.json_body(MAX_BODY_BYTES))
            rows = await self.db.fetch_bounded(query.sql, query.params, self.config.query_timeout_ms)
            full = rows[: query.page_size]
            runs, count = await runs_of(self, full, query.selects)
            page = full[:count]
            items = [{"root_run": run} for run in runs]
            if query.aggregates and page:
                found = await self.db.fetch(AGGREGATES, (tenant, [str(row[0]) for row in page]))
                sums = {trace: tuple(values) for trace, *values in found}
                for item, row in zip(items, page, strict=True):
                    item["trace_aggregates"] = aggregates_json(query.aggregates, sums.get(row[0]))
        except RunError as e:
            return self.fail(e)
        more = len(rows) > len(full) or count < len(full)
        self.finish({"items": items, "next_cursor": next_cursor(page, more)})


class TraceRunsHandler(JSONHandler):
    """GET /api/v2/traces/{trace_id}/runs?project_id=...: the trace's runs, oldest first."""

    async def get(self, trace_id: str) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        args = self.query_args()
        try:
            refuse_streaming(self)
            query = TraceRuns(tenant, trace_id, args)
            rows = await self.db.fetch_bounded(query.sql, query.params, self.config.query_timeout_ms)
            if len(rows) > TRACE_RUNS:
                raise RunError(
                    400, f"the trace has more than {TRACE_RUNS} runs here: narrow it by filter or window"
                )
            runs, count = await runs_of(self, rows, query.selects)
            # Past the payload budget, the rest come without the fields read from their bytes.
            runs += [run_v2(row, query.selects, None) for row in rows[count:]]
        except RunError as e:
            return self.fail(e)
        self.finish({"items": runs})


def routes(deps: dict) -> list:
    return [
        (r"/api/v2/runs/query", QueryV2Handler, deps),
        (r"/api/v2/runs/([^/]+)", RunV2Handler, deps),
        (r"/api/v2/traces/query", TracesQueryHandler, deps),
        (r"/api/v2/traces/([^/]+)/runs", TraceRunsHandler, deps),
    ]
