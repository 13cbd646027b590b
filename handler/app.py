"""Routes and request handlers."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import uuid
from asyncio import Future
from dataclasses import dataclass
from datetime import datetime

import tornado.iostream
import tornado.web
from tornado.concurrent import future_add_done_callback
from tornado.ioloop import IOLoop

from handler import __version__, docs, metrics, ops
from handler.auth import ApiKeys
from handler.budget import Budget, Claim
from handler.config import MIB, Settings
from handler.db import Database
from handler.decompress import decoder_for
from handler.errors import RunError
from handler.ingest import BatchIngest
from handler.multipart import MultipartReader, boundary_of
from handler.readers import ArrayReader, BatchReader, PatchReader
from handler.storage import Location, ObjectStore
from handler.stream import MAX_DOTTED_ORDER_CHARS, UUID_TEXT

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


@dataclass
class Linger:
    """An answer sent before the request body ended, while the rest of the body is read and
    dropped (see IngestHandler.fail)."""

    sent: Future  # the answer's write to the socket
    timer: object  # IOLoop timeout handle: the linger's time limit
    discarded: int = 0


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
        self.set_retry_after(error)
        self.finish(error.to_json())  # on a closed connection this writes nothing and does not raise

    def set_retry_after(self, error: RunError) -> None:
        retry_after = getattr(error, "retry_after", None)  # budget.Busy
        if retry_after is not None:
            self.set_header("Retry-After", str(retry_after))

    def write_error(self, status_code: int, **kwargs) -> None:
        self.finish({"error": self._reason})


class NotFoundHandler(JSONHandler):
    def initialize(self) -> None:
        pass

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404)


@tornado.web.stream_request_body
class IngestHandler(JSONHandler):
    """A route whose body streams into a BatchIngest: decoded (Content-Encoding) and read by the
    route's ``reader`` as it arrives, committed when it ends. Other methods of the route (GET)
    take no body and skip all of this."""

    content_type = "application/json"
    ingest_methods = ("POST",)

    def initialize(self, in_flight: InFlight, budget: Budget, **deps) -> None:
        super().initialize(**deps)
        self.in_flight = in_flight
        self.claim = Claim(budget, self.held_bytes)  # this request's share of the memory budget
        self.ingest: BatchIngest | None = None
        self.committing = False
        self.counted = False  # in self.in_flight
        self.body_bytes = 0  # for the access log
        self.idle_since: float | None = None  # receiving the body, not busy with a chunk, since then
        self.receiving = False  # a byte of the body has come
        self.body_ended = False
        self.linger: Linger | None = None  # answered early, the rest of the body being dropped
        self.idle_timer: object | None = None  # watch_idle's next look, cancelled when done

    @property
    def run_count(self) -> int:
        return self.ingest.run_count if self.ingest is not None and self.committing else 0

    @property
    def object_count(self) -> int:
        """Objects this request wrote (for the access log); a failed request deleted them again."""
        return self.ingest.object_count if self.ingest is not None else 0

    def prepare(self) -> None:
        if self.request.method not in self.ingest_methods:
            return
        tenant = self.authenticate()
        if tenant is None:
            return
        length = self.request.headers.get("Content-Length")
        try:
            self.check_content_type(self.request.headers.get("Content-Type", ""))
            if length is not None and _DIGITS.fullmatch(length) and int(length) > self.config.max_body_bytes:
                raise RunError(413, f"body is larger than {self.config.max_body_bytes} bytes")
            self.decoder = decoder_for(
                self.request.headers.get("Content-Encoding"), self.config.max_body_bytes
            )
            self.ingest = BatchIngest(self.store, self.db, self.config, tenant, self.claim.settle)
            self.reader = self.make_reader(self.ingest)
        except RunError as e:
            return self.fail(e)
        self.request.connection.set_max_body_size(_NO_TORNADO_LIMIT)
        self.in_flight.enter()
        self.counted = True
        metrics.BATCHES_IN_FLIGHT.inc()
        if self.config.body_idle_timeout:
            self.idle_since = IOLoop.current().time()
            self.watch_idle()

    def watch_idle(self) -> None:
        """A client that stops sending mid-body would hold its batch open for ever: after
        BODY_IDLE_TIMEOUT seconds without a byte (not counting time spent on a chunk, when the
        server itself stops reading), the batch is undone and answered 408."""
        if self.ingest is None or self._finished or self.committing or self.linger is not None:
            return
        loop, timeout = IOLoop.current(), self.config.body_idle_timeout
        if self.idle_since is not None and loop.time() - self.idle_since >= timeout:
            log.info("no body data for %d s after %d bytes: closing the batch", timeout, self.body_bytes)
            self.idle_since = None
            task = asyncio.ensure_future(self.reject(RunError(408, f"no body data for {timeout:g} s")))
            self.in_flight.cleanups.add(task)
            task.add_done_callback(self.in_flight.cleanups.discard)
            return
        waited = 0 if self.idle_since is None else loop.time() - self.idle_since
        self.idle_timer = loop.call_later(timeout - waited, self.watch_idle)

    def stop_watching_idle(self) -> None:
        """The request is done: drop the pending look, which would keep the handler and its batch
        in memory for up to BODY_IDLE_TIMEOUT seconds."""
        if self.idle_timer is not None:
            IOLoop.current().remove_timeout(self.idle_timer)
            self.idle_timer = None

    def check_content_type(self, content_type: str) -> None:
        if content_type.split(";")[0].strip().lower() != self.content_type:
            raise RunError(415, f"Content-Type must be {self.content_type}")

    def make_reader(self, ingest: BatchIngest):
        raise NotImplementedError

    def held_bytes(self) -> int:
        """What this request holds in memory now, as the budget counts it."""
        if self.ingest is None:
            return 0
        return (self.reader.buffered if self.reader is not None else 0) + self.ingest.held_bytes

    async def data_received(self, chunk: bytes) -> None:
        self.receiving = True
        if self.linger is not None:
            self.linger.discarded += len(chunk)
            if self.linger.discarded > self.config.linger_bytes:
                self.end_linger()
            return
        if self.ingest is None or self._finished or self.ingest.aborted:
            return
        self.idle_since = None
        self.body_bytes += len(chunk)
        metrics.INGESTED_BYTES.inc(len(chunk))
        try:
            if self.body_bytes > self.config.max_body_bytes:
                raise RunError(413, f"body is larger than {self.config.max_body_bytes} bytes")
            for piece in self.decoder.decode(chunk):
                # Waiting for room here keeps Tornado from reading the socket: TCP pushes back.
                await self.claim.room(len(piece))
                if self.ingest.aborted:
                    return
                await self.reader.feed(piece)
                self.claim.done_taking()
        except Exception as e:
            await self.reject(e)
        else:
            self.idle_since = IOLoop.current().time() if self.config.body_idle_timeout else None

    async def commit(self) -> dict | None:
        """The body has ended: the request's result, or None once it has been answered."""
        self.body_ended = True
        if self.linger is not None:  # answered already: the dropped body has ended
            self.end_linger()
            return None
        if self.ingest is None or self._finished:
            return None
        self.committing = True
        try:
            for piece in self.decoder.finish():
                await self.reader.feed(piece)
            await self.reader.close()
            result = await self.ingest.commit()
        except Exception as e:
            await self.reject(e)
            return None
        metrics.RUNS_INGESTED.inc(self.ingest.run_count)
        return result

    async def reject(self, error: Exception) -> None:
        """Undo the batch, then answer; a bug still undoes the batch and answers 500."""
        if not isinstance(error, RunError):
            log.exception("unexpected error in %s %s", self.request.method, self.request.path, exc_info=error)
            error = RunError(500, "internal error")
        await self.ingest.abort(error)
        self.reader = None  # what it holds is no longer counted: let it go (a linger may last)
        self.fail(error)

    def fail(self, error: RunError) -> None:
        """Answer; while the body is still arriving, keep reading and dropping it (lingering).

        A server that answers early and closes at once resets the connection of a client still
        sending, and the reset destroys the answer before the client reads it (Node's fetch then
        reports ECONNRESET, not the 400). So, as nginx's lingering close does, the answer is sent
        (with ``Connection: close``) and the rest of the body read and dropped, for at most
        LINGER_SECONDS and LINGER_BYTES; then the connection is closed. Nothing of the dropped
        bytes is held, decoded or counted against a limit."""
        if self.linger is not None:
            return  # answered already
        if not self.lingers():
            return super().fail(error)
        if error.status >= 500:
            log.error("%s %s -> %d: %s", self.request.method, self.request.path, error.status, error.reason)
        body = json.dumps(error.to_json()).encode()
        self.clear()
        self.set_status(error.status)
        self.set_retry_after(error)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Content-Length", len(body))
        self.set_header("Connection", "close")
        self.write(body)
        # A refusal in prepare() comes before the body limit is lifted: lift it, or Tornado would
        # answer a long Content-Length with its own bare 400 after ours.
        self.request.connection.set_max_body_size(_NO_TORNADO_LIMIT)
        sent = self.flush()
        timer = IOLoop.current().call_later(self.config.linger_seconds, self.end_linger)
        self.linger = Linger(sent, timer)
        self.leave_in_flight()  # the batch is undone: a shutdown need not wait for the linger

    def lingers(self) -> bool:
        """Whether an answer now comes before the end of a body that the client is sending."""
        return (
            self.request.method in self.ingest_methods
            and not self.body_ended
            and not self._finished
            and self.linger is None
            and self.config.linger_seconds > 0
            and self.config.linger_bytes > 0
            and not self.request.connection.stream.closed()
            # A client waiting for "100 Continue" has sent nothing: it gets the answer instead,
            # and the connection closes.
            and (self.receiving or self.request.headers.get("Expect", "").lower() != "100-continue")
        )

    def end_linger(self) -> None:
        """The dropped body has ended, or passed LINGER_BYTES, or LINGER_SECONDS are up: finish
        the answer and close the connection."""
        linger, self.linger = self.linger, None
        if linger is None or self._finished:
            return
        IOLoop.current().remove_timeout(linger.timer)
        connection = self.request.connection
        # While the body is still arriving, Tornado closes the connection itself once the answer
        # is written; after its end it would keep it open for another request.
        self.finish()
        if linger.sent.done():
            connection.close()
        else:  # the client is not reading: close once the answer is out, or after one more linger
            future_add_done_callback(linger.sent, lambda _: connection.close())
            IOLoop.current().call_later(self.config.linger_seconds, connection.close)

    def on_finish(self) -> None:
        self.stop_watching_idle()
        self.leave_in_flight()

    def on_connection_close(self) -> None:
        self.stop_watching_idle()
        if self.linger is not None:  # the client has gone, with the answer or not
            super().on_connection_close()
            self.end_linger()
            return
        super().on_connection_close()
        # Once the body has ended the commit may already be running: a disconnect then must not
        # delete objects whose rows are about to be committed.
        if self.ingest is not None and not self.committing and not self._finished:
            log.info("client disconnected mid-body after %d bytes", self.body_bytes)
            task = asyncio.ensure_future(self.ingest.abort())
            self.in_flight.cleanups.add(task)
            task.add_done_callback(self.in_flight.cleanups.discard)
            task.add_done_callback(lambda _: self.leave_in_flight())

    def leave_in_flight(self) -> None:
        self.claim.close()
        if self.counted:
            self.counted = False
            self.in_flight.leave()
            metrics.BATCHES_IN_FLIGHT.dec()


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
    from handler import projects, query, ui  # the read API and the viewer (they import this module)

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
