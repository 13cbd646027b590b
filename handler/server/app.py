"""The application: every package's routes, gathered, with the dependencies each handler is given."""

from __future__ import annotations

import tornado.web

from handler.base.handlers import NotFoundHandler
from handler.feedback import handlers as feedback
from handler.otel import handlers as otel
from handler.query import extract
from handler.query import handlers as query_v2
from handler.read import projects, projects_v2, query
from handler.retention import handlers as retention
from handler.runs import fastpath
from handler.runs import handlers as runs
from handler.runs.budget import Budget
from handler.runs.ingest_handler import InFlight
from handler.server import docs, info, ops
from handler.server.config import Settings
from handler.store.db import Database
from handler.store.objects import ObjectStore
from handler.ui import handlers as ui


def make_app(
    settings: Settings,
    store: ObjectStore,
    db: Database,
    in_flight: InFlight | None = None,
    budget: Budget | None = None,
) -> tornado.web.Application:
    """The routes; ``budget`` is the memory all ingesting requests share (one per process)."""
    extract.configure(settings.search_text_chars, settings.io_keys)
    fastpath.configure(settings.fast_splitter)
    deps = {"settings": settings, "store": store, "db": db, "keys": settings.api_keys}
    budget = budget or Budget(settings.max_buffered_bytes, settings.budget_wait_seconds)
    ingest_deps = {**deps, "in_flight": in_flight or InFlight(), "budget": budget}
    return tornado.web.Application(
        [
            *query.routes(deps),
            *query_v2.routes(deps),
            *projects.routes(deps),
            *projects_v2.routes(deps),
            *retention.routes(deps),
            *ui.routes(deps),
            *runs.routes(ingest_deps),
            *feedback.routes(ingest_deps),
            *otel.routes(ingest_deps),
            *info.routes(deps),
            *ops.routes(deps),
            *docs.routes(),
        ],
        default_handler_class=NotFoundHandler,
        compress_response=False,
        log_function=ops.log_request,
    )
