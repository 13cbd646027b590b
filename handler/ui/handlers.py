"""The trace viewer, ``/ui``: a project's recent traces, a trace as a waterfall (LLM runs' messages
as a chat), and a project's monitor (charts over 1, 7 or 30 days, ui/monitor.py).

Tornado templates (``ui/templates``) and plain JavaScript and CSS (``ui/static``), all served
from the package: nothing from a CDN, no build step, no inline script (the pages carry a
``script-src 'self'`` Content-Security-Policy). The pages load without a key; their data calls
(``/sessions``, ``/runs/query``, ``/runs/{id}``, ``/ui/api/traces``, ``/ui/api/monitor``) send
``x-api-key`` from the tab's sessionStorage, asked for once when the server answers 401. URLs are
relative, so the viewer also works behind a proxy that mounts the service under a path prefix.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import tornado.template
import tornado.web

from handler.base.errors import RunError
from handler.base.handlers import JSONHandler
from handler.query.scopes import Filters
from handler.read.query import after_cursor, encode_cursor
from handler.runs.schema import UUID_TEXT
from handler.store.objects import Location
from handler.ui.monitor import Features, detect, monitor, trace_columns
from handler.ui.preview import previews

_PACKAGE = Path(str(importlib.resources.files(__package__)))
_TEMPLATES = tornado.template.Loader(str(_PACKAGE / "templates"))
STATIC = _PACKAGE / "static"
MAX_TRACES = 50
_POLICY = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'"
_TRACES = (
    "SELECT r.id, r.trace_id, r.name, r.start_time, r.end_time, r.status, r.error,"
    " (SELECT count(*) FROM runs c WHERE c.tenant = r.tenant AND c.trace_id = r.trace_id AND c.posted),"
    " extract(epoch FROM r.end_time - r.start_time) * 1000,"
    " r.object_key, r.object_offset, r.size_bytes{extra}"
    " FROM runs r WHERE {where} ORDER BY coalesce(r.start_time, '-infinity') DESC, r.id DESC LIMIT %s"
)
_NAMES = ("id", "trace_id", "name", "start_time", "end_time", "status", "error", "run_count", "latency_ms")
_STORED = slice(9, 12)  # object_key, object_offset, size_bytes: where the root's input is read from


def traces_statement(where: list[str], features: Features) -> tuple[str, list[str]]:
    """The trace list's statement, with the optional columns (tokens, feedback) the database has,
    and those columns' names."""
    extra = trace_columns(features)
    sql = _TRACES.format(where=" AND ".join(where), extra="".join(f", {expr}" for _, expr in extra))
    return sql, [name for name, _ in extra]


class PageHandler(tornado.web.RequestHandler):
    """A viewer page; ``root`` is the relative way back to the service's root."""

    SUPPORTED_METHODS = ("GET",)

    def initialize(self, template: str, root: str, **deps) -> None:
        self.template, self.root = template, root

    def get(self, *args: str) -> None:
        self.set_header("Content-Security-Policy", _POLICY)
        self.set_header("Cache-Control", "no-store")
        self.finish(_TEMPLATES.load(self.template).generate(root=self.root, args=args))


class TracesApiHandler(JSONHandler):
    """GET /ui/api/traces?session=&status=&name=&filter=&cursor=: a project's root runs, newest
    first (``filter`` in the filter language of /runs/query, applied to the roots), each with the
    number of runs in its trace, its latency and the first line of its input (and its tokens and
    feedback averages, named in ``columns``, once the database has them)."""

    async def get(self) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        try:
            where, params, filtered = self.filters(tenant)
            sql, optional = traces_statement(where, await detect(self.db))
            if filtered:  # a filter may cost much: bounded as /runs/query's are
                timeout = self.config.query_timeout_ms
                rows = await self.db.fetch_bounded(sql, (*params, MAX_TRACES + 1), timeout)
            else:
                rows = await self.db.fetch(sql, (*params, MAX_TRACES + 1))
        except RunError as e:
            return self.fail(e)
        page = rows[:MAX_TRACES]
        traces = [
            {
                k: v.isoformat()
                if hasattr(v, "isoformat")
                else (v if v is None or k == "run_count" else round(v) if k == "latency_ms" else str(v))
                for k, v in zip(_NAMES, row[: len(_NAMES)], strict=True)
            }
            for row in page
        ]
        texts = await previews(self.store, [(Location(*r[_STORED][:2]), r[_STORED][2]) for r in page])
        for trace, text, row in zip(traces, texts, page, strict=True):
            trace["input"] = text
            for name, value in zip(optional, row[_STORED.stop :], strict=True):
                trace[name] = int(value) if name == "tokens" and value is not None else value
        last = page[-1] if len(rows) > len(page) else None
        next_cursor = encode_cursor(last[3], last[0]) if last else None
        self.finish({"traces": traces, "columns": optional, "next_cursor": next_cursor})

    def filters(self, tenant: str) -> tuple[list[str], list, bool]:
        session = self.get_query_argument("session", "")
        if not UUID_TEXT.fullmatch(session):
            raise RunError(400, "session must be a project id")
        where = ["r.tenant = %s", "r.posted", "r.session_id = %s", "r.parent_run_id IS NULL"]
        params: list = [tenant, session]
        status = self.get_query_argument("status", "")
        if status:
            if status not in ("success", "error", "pending"):
                raise RunError(400, "status must be success, error or pending")
            where.append("r.status = %s")
            params.append(status)
        name = self.get_query_argument("name", "")
        if "\x00" in name:
            raise RunError(400, "name must not contain NUL characters")
        if name:
            where.append("strpos(lower(r.name), lower(%s)) > 0")
            params.append(name)
        # The same checks and compiler as /runs/query's ``filter`` (query/scopes.py), over the roots
        # (alias r); a mistake is a 400 naming its position, which the page shows beside the box.
        text = self.get_query_argument("filter", "")
        filters = Filters({"filter": text} if text.strip() else {})
        where.extend(filters.clauses)
        params.extend(filters.params)
        cursor = self.get_query_argument("cursor", "")
        if cursor:
            clause, values = after_cursor(cursor)
            where.append(clause.removeprefix(" AND "))  # its columns are r's: the only table here
            params.extend(values)
        return where, params, bool(filters)


class MonitorApiHandler(JSONHandler):
    """GET /ui/api/monitor?session=&days=1|7|30: the monitor page's numbers (ui/monitor.py)."""

    async def get(self) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        session = self.get_query_argument("session", "")
        days = self.get_query_argument("days", "1")
        try:
            if not UUID_TEXT.fullmatch(session):
                raise RunError(400, "session must be a project id")
            if days not in ("1", "7", "30"):
                raise RunError(400, "days must be 1, 7 or 30")
            self.finish(await monitor(self.db, tenant, session, int(days)))
        except RunError as e:
            return self.fail(e)


def routes(deps: dict) -> list:
    return [
        (r"/ui", PageHandler, {"template": "traces.html", "root": "./", **deps}),
        (r"/ui/trace/([0-9a-fA-F-]{36})", PageHandler, {"template": "trace.html", "root": "../../", **deps}),
        (
            r"/ui/projects/([0-9a-fA-F-]{36})/monitor",
            PageHandler,
            {"template": "monitor.html", "root": "../../../", **deps},
        ),
        (r"/ui/api/traces", TracesApiHandler, deps),
        (r"/ui/api/monitor", MonitorApiHandler, deps),
        (r"/ui/static/(.*)", tornado.web.StaticFileHandler, {"path": str(STATIC)}),
    ]
