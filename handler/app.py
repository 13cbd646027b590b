"""Routes and request handlers."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid

import tornado.iostream
import tornado.web

from handler import docs, ops
from handler.auth import ApiKeys
from handler.config import Settings
from handler.db import Database
from handler.errors import RunError
from handler.ingest import BatchIngest
from handler.storage import ObjectStore
from handler.stream import UUID_TEXT

log = logging.getLogger(__name__)

# The body limit is enforced by BatchIngest with a clear 413; Tornado's own limit (which answers
# a bare 400 and closes) is lifted for this route so ours always speaks first.
_NO_TORNADO_LIMIT = 1 << 62
_DIGITS = re.compile(r"[0-9]+")  # str.isdigit() also takes "²", which int() refuses


class InFlight:
    """The POST /runs requests being served, so that a shutdown can wait for them to end."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.cleanups: set[asyncio.Task] = set()  # aborts of batches whose client went away

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False


class JSONHandler(tornado.web.RequestHandler):
    """Every response, errors included, is JSON."""

    def initialize(self, settings: Settings, store: ObjectStore, db: Database, keys: ApiKeys) -> None:
        self.config = settings
        self.store = store
        self.db = db
        self.keys = keys

    def authenticate(self) -> str | None:
        """The caller's tenant; answers 401 and returns None without a valid ``x-api-key``."""
        tenant = self.keys.tenant_for(self.request.headers.get("x-api-key"))
        if tenant is None:
            self.fail(RunError(401, "a valid x-api-key header is required"))
        return tenant

    def fail(self, error: RunError) -> None:
        if error.status >= 500:
            log.error("%s %s -> %d: %s", self.request.method, self.request.path, error.status, error.reason)
        if self._finished:
            return
        self.clear()
        self.set_status(error.status)
        self.finish(error.to_json())  # on a closed connection this writes nothing and does not raise

    def write_error(self, status_code: int, **kwargs) -> None:
        self.finish({"error": self._reason})


class NotFoundHandler(JSONHandler):
    def initialize(self) -> None:
        pass

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404)


@tornado.web.stream_request_body
class RunsHandler(JSONHandler):
    """POST /runs: a JSON array of runs, streamed."""

    SUPPORTED_METHODS = ("POST",)

    def initialize(self, in_flight: InFlight, **deps) -> None:
        super().initialize(**deps)
        self.in_flight = in_flight
        self.ingest: BatchIngest | None = None
        self.committing = False
        self.counted = False  # in self.in_flight

    def prepare(self) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        content_type = self.request.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            return self.fail(RunError(415, "Content-Type must be application/json"))
        length = self.request.headers.get("Content-Length")
        if length is not None and _DIGITS.fullmatch(length) and int(length) > self.config.max_body_bytes:
            return self.fail(RunError(413, f"body is larger than {self.config.max_body_bytes} bytes"))
        self.request.connection.set_max_body_size(_NO_TORNADO_LIMIT)
        self.ingest = BatchIngest(self.store, self.db, self.config, tenant)
        self.in_flight.enter()
        self.counted = True

    async def data_received(self, chunk: bytes) -> None:
        if self.ingest is None or self._finished:
            return
        try:
            await self.ingest.feed(chunk)
        except Exception as e:
            await self.reject(e)

    async def post(self) -> None:
        self.committing = True
        try:
            ids = await self.ingest.commit()
        except Exception as e:
            await self.reject(e)
            return
        self.set_status(201)
        self.finish({"ids": ids})

    async def reject(self, error: Exception) -> None:
        """Undo the batch, then answer; a bug still undoes the batch and answers 500."""
        if not isinstance(error, RunError):
            log.exception("unexpected error in POST /runs", exc_info=error)
            error = RunError(500, "internal error")
        await self.ingest.abort(error)
        self.fail(error)

    def on_finish(self) -> None:
        self.leave_in_flight()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        # Once the body has ended the insert may already be running: a disconnect then must not
        # delete objects whose rows are about to be committed.
        if self.ingest is not None and not self.committing and not self._finished:
            log.info("client disconnected mid-body after %d bytes", self.ingest.bytes_received)
            task = asyncio.ensure_future(self.ingest.abort())
            self.in_flight.cleanups.add(task)
            task.add_done_callback(self.in_flight.cleanups.discard)
            task.add_done_callback(lambda _: self.leave_in_flight())

    def leave_in_flight(self) -> None:
        if self.counted:
            self.counted = False
            self.in_flight.leave()


class RunHandler(JSONHandler):
    """GET /runs/{id}: the run's stored bytes, streamed from object storage."""

    SUPPORTED_METHODS = ("GET",)

    async def get(self, run_id: str) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        if not UUID_TEXT.fullmatch(run_id):
            return self.fail(RunError(400, "run id must be a UUID"))
        try:
            found = await self.db.find_run(tenant, uuid.UUID(run_id))
        except RunError as e:
            return self.fail(e)
        if found is None:
            return self.fail(RunError(404, f"run {run_id} not found"))
        key, size = found
        chunks = self.store.read(key)
        try:
            first = await anext(chunks, b"")
        except RunError as e:
            return self.fail(e)
        self.set_header("Content-Type", "application/json")
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
            log.exception("reading %s failed mid-stream", key)
            self.request.connection.close()
            return
        self.finish()


def make_app(
    settings: Settings, store: ObjectStore, db: Database, in_flight: InFlight | None = None
) -> tornado.web.Application:
    deps = {"settings": settings, "store": store, "db": db, "keys": settings.api_keys}
    return tornado.web.Application(
        [
            (r"/runs", RunsHandler, {**deps, "in_flight": in_flight or InFlight()}),
            (r"/runs/([^/]+)", RunHandler, deps),
            *ops.routes(deps),
            *docs.routes(),
        ],
        default_handler_class=NotFoundHandler,
        compress_response=False,
        log_function=ops.log_request,
    )
