"""Routes, and the handlers of each route (the streaming of bodies is ingest_handler.py's)."""

from __future__ import annotations

import base64
import json
import logging
import re
import uuid
from datetime import datetime

import tornado.iostream
import tornado.web

from handler import __version__, docs, ops, projects, query, ui
from handler.budget import Budget
from handler.config import MIB, Settings
from handler.db import Database
from handler.errors import RunError
from handler.ingest import BatchIngest
from handler.ingest_handler import InFlight, IngestHandler
from handler.json_handler import JSONHandler, NotFoundHandler
from handler.multipart import MultipartReader, boundary_of
from handler.readers import ArrayReader, BatchReader, PatchReader
from handler.storage import Location, ObjectStore
from handler.stream import MAX_DOTTED_ORDER_CHARS, UUID_TEXT

log = logging.getLogger(__name__)

_DIGITS = re.compile(r"[0-9]+")  # str.isdigit() also takes "²", which int() refuses


class RunsHandler(IngestHandler):
    """POST /runs: a JSON array of runs, streamed. GET /runs?trace_id=: a page of a trace."""

    SUPPORTED_METHODS = ("GET", "POST")

    def make_reader(self, ingest: BatchIngest) -> ArrayReader:
        return ArrayReader(ingest, self.config)

    async def post(self) -> None:
        result = await self.commit()
        if result is not None:
            self.set_status(201)
            self.finish({"ids": result["ids"]})

    async def get(self) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        try:
            trace_id = _uuid_argument(self.get_query_argument("trace_id", None), "trace_id")
            limit = self.get_query_argument("limit", "100")
            if not _DIGITS.fullmatch(limit) or len(limit) > 4 or not 1 <= int(limit) <= MAX_PAGE:
                raise RunError(400, f"limit must be an integer from 1 to {MAX_PAGE}")
            cursor = self.get_query_argument("cursor", None)
            after = _decode_cursor(cursor) if cursor else None
            runs = await self.db.list_trace(tenant, trace_id, int(limit) + 1, after)
        except RunError as e:
            return self.fail(e)
        page = runs[: int(limit)]
        more = len(runs) > len(page)
        self.finish(
            {
                "runs": [_summary(run) for run in page],
                "next_cursor": _encode_cursor(page[-1]) if more else None,
            }
        )


class AcceptedHandler(IngestHandler):
    """LangSmith's batch routes: 202 with the ids created and the ids patched."""

    SUPPORTED_METHODS = ("POST",)

    async def post(self) -> None:
        result = await self.commit()
        if result is not None:
            self.set_status(202)
            self.finish(result)


class MultipartHandler(AcceptedHandler):
    """POST /runs/multipart: LangSmith's multipart ingestion (multipart.py)."""

    def check_content_type(self, content_type: str) -> None:
        self.boundary = boundary_of(content_type)

    def make_reader(self, ingest: BatchIngest) -> MultipartReader:
        return MultipartReader(self.boundary, ingest, self.config)


class BatchHandler(AcceptedHandler):
    """POST /runs/batch: LangSmith's ``{"post": [...], "patch": [...]}`` (readers.BatchReader)."""

    def make_reader(self, ingest: BatchIngest) -> BatchReader:
        return BatchReader(ingest, self.config)


class RunHandler(IngestHandler):
    """GET /runs/{id}: the run's stored bytes, streamed from object storage. PATCH /runs/{id}:
    set some of its fields."""

    SUPPORTED_METHODS = ("GET", "PATCH")
    ingest_methods = ("PATCH",)

    def make_reader(self, ingest: BatchIngest) -> PatchReader:
        return PatchReader(ingest, self.config, _uuid_argument(self.path_args[0], "run id"))

    async def patch(self, run_id: str) -> None:
        result = await self.commit()
        if result is not None:
            self.finish({"id": run_id.lower()})

    async def get(self, run_id: str) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        try:
            found = await self.db.find_run(tenant, _uuid_argument(run_id, "run id"))
        except RunError as e:
            return self.fail(e)
        if found is None:
            return self.fail(RunError(404, f"run {run_id} not found"))
        await self.relay(found.location, found.size, "application/json")

    async def relay(self, location: Location, size: int, content_type: str) -> None:
        """Stream a run's bytes (an object, or its range of a segment) to the client."""
        chunks = self.store.read(location.key, location.offset, size)
        try:
            first = await anext(chunks, b"")
        except RunError as e:
            return self.fail(e)
        self.set_header("Content-Type", content_type)
        self.set_header("Content-Length", size)
        self.write(first)
        try:
            async for chunk in chunks:
                self.write(chunk)
                await self.flush()
        except tornado.iostream.StreamClosedError:
            return  # the client went away
        except Exception:
            # The status line is gone already; a short body and a closed connection tell the client.
            log.exception("reading %s failed mid-stream", location.key)
            self.request.connection.close()
            return
        self.finish()


class AttachmentHandler(RunHandler):
    """GET /runs/{id}/attachments/{name}: an attachment's bytes, with the type it was sent with."""

    SUPPORTED_METHODS = ("GET",)
    ingest_methods = ()

    async def get(self, run_id: str, name: str) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        try:
            found = await self.db.find_attachment(tenant, _uuid_argument(run_id, "run id"), name)
        except RunError as e:
            return self.fail(e)
        if found is None:
            return self.fail(RunError(404, f"run {run_id} has no attachment {name!r}"))
        key, content_type, size = found
        await self.relay(Location(key), size, content_type)


class InfoHandler(JSONHandler):
    """GET /info: what LangSmith clients read before they send: the limits this server enforces."""

    def get(self) -> None:
        s = self.config
        self.finish(
            {
                "version": __version__,
                "batch_ingest_config": {
                    "use_multipart_endpoint": True,
                    "size_limit": min(100, s.max_runs_per_batch),
                    "size_limit_bytes": min(20 * MIB, s.max_body_bytes),
                    "scale_up_qsize_trigger": 1000,
                    "scale_up_nthreads_limit": 16,
                    "scale_down_nempty_trigger": 4,
                },
                "instance_flags": {"zstd_compression_enabled": True, "gzip_body_enabled": True},
            }
        )


MAX_PAGE = 1000


def _uuid_argument(value: str | None, name: str) -> uuid.UUID:
    if value is None:
        raise RunError(400, f"{name} is required")
    if not UUID_TEXT.fullmatch(value):
        raise RunError(400, f"{name} must be a UUID")
    return uuid.UUID(value)


def _summary(run: dict) -> dict:
    return {k: v if v is None or isinstance(v, str | int) else _text(v) for k, v in run.items()}


def _text(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _encode_cursor(run: dict) -> str:
    position = json.dumps([run["dotted_order"] or "", str(run["id"])])
    return base64.urlsafe_b64encode(position.encode()).decode()


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        order, run_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not isinstance(order, str) or len(order) > MAX_DOTTED_ORDER_CHARS or "\x00" in order:
            raise ValueError
        if not UUID_TEXT.fullmatch(run_id):
            raise ValueError
    except (ValueError, TypeError, UnicodeError):
        raise RunError(400, "cursor is not one this server gave out") from None
    return order, run_id


def make_app(
    settings: Settings,
    store: ObjectStore,
    db: Database,
    in_flight: InFlight | None = None,
    budget: Budget | None = None,
) -> tornado.web.Application:
    """The routes; ``budget`` is the memory all ingesting requests share (one per process)."""
    deps = {"settings": settings, "store": store, "db": db, "keys": settings.api_keys}
    budget = budget or Budget(settings.max_buffered_bytes, settings.budget_wait_seconds)
    ingest_deps = {**deps, "in_flight": in_flight or InFlight(), "budget": budget}
    return tornado.web.Application(
        [
            *query.routes(deps),
            *projects.routes(deps),
            *ui.routes(deps),
            (r"/runs", RunsHandler, ingest_deps),
            (r"/runs/multipart", MultipartHandler, ingest_deps),
            (r"/runs/batch", BatchHandler, ingest_deps),
            (r"/runs/([^/]+)", RunHandler, ingest_deps),
            (r"/runs/([^/]+)/attachments/([^/]+)", AttachmentHandler, ingest_deps),
            (r"/info", InfoHandler, deps),
            *ops.routes(deps),
            *docs.routes(),
        ],
        default_handler_class=NotFoundHandler,
        compress_response=False,
        log_function=ops.log_request,
    )
