"""IngestHandler: a request body streamed into a BatchIngest as it arrives -- decoded, read by the
route's reader, held to the memory budget and the idle timeout, answered early (then lingering)
when it is refused, committed when it ends. The routes themselves are in app.py."""

from __future__ import annotations

import asyncio
import logging
import re
from asyncio import Future
from dataclasses import dataclass

import tornado.iostream
import tornado.web
from tornado.concurrent import future_add_done_callback
from tornado.ioloop import IOLoop

from handler.base import metrics
from handler.base.errors import RunError
from handler.base.handlers import JSONHandler
from handler.runs.budget import Budget, Busy, Claim
from handler.runs.decompress import decoder_for
from handler.runs.ingest import BatchIngest

log = logging.getLogger(__name__)

# The body limit is enforced by BatchIngest with a clear 413; Tornado's own limit (which answers
# a bare 400 and closes) is lifted for this route so ours always speaks first.
_NO_TORNADO_LIMIT = 1 << 62
_DIGITS = re.compile(r"[0-9]+")  # str.isdigit() also takes "²", which int() refuses
_CONTINUE_BYTES = 64 * 1024  # Tornado's first chunk of a body


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
    timer: object  # IOLoop timeout handle: the linger's next look at the time
    limit: int  # the most bytes dropped
    started: float = 0.0
    last: float = 0.0  # when the last byte came
    discarded: int = 0


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

    @property
    def group_id(self) -> str | None:
        """The group commit this request joined (for the access log)."""
        return self.ingest.group_id if self.ingest is not None else None

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
            if self.request.headers.get("Expect", "").lower() == "100-continue":
                self.check_room_to_continue()
            self.decoder = decoder_for(
                self.request.headers.get("Content-Encoding"), self.config.max_body_bytes
            )
            self.ingest = BatchIngest(self.store, self.db, self.config, tenant, self.claim.settle)
            self.reader = self.make_reader(self.ingest)
        except RunError as e:
            return self.fail(e)
        self.request.connection.set_max_body_size(_NO_TORNADO_LIMIT)
        self.request.connection.set_body_timeout(None)  # BODY_IDLE_TIMEOUT is between bytes here
        self.in_flight.enter()
        self.counted = True
        metrics.BATCHES_IN_FLIGHT.inc()
        if self.config.body_idle_timeout:
            self.idle_since = IOLoop.current().time()
            self.watch_idle()

    def check_room_to_continue(self) -> None:
        """Tornado sends "100 Continue" once prepare() is done, and a client waiting for it has
        sent nothing yet: when the memory budget is full, or requests already wait for room in it,
        it is answered 503 now rather than made to send a body that would wait or be refused."""
        budget = self.claim.budget
        if budget.waiting or budget.held + _CONTINUE_BYTES > budget.max_bytes:
            metrics.BUDGET_REFUSED.inc()
            raise Busy(budget.retry_after)

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
            self.linger.last = IOLoop.current().time()
            if self.linger.discarded > self.linger.limit:
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
        LINGER_SECONDS and LINGER_BYTES -- or, when the body's length is declared (within
        MAX_BODY_BYTES), up to its end while the client keeps sending (watch_linger); then the
        connection is closed. Nothing of the dropped bytes is held, decoded or counted."""
        if self.linger is not None:
            return  # answered already
        if not self.lingers():
            return super().fail(error)
        if error.status >= 500:
            log.error("%s %s -> %d: %s", self.request.method, self.request.path, error.status, error.reason)
        body, content_type = self.error_answer(error)
        self.clear()
        self.set_status(error.status)
        self.set_retry_after(error)
        self.set_header("Content-Type", content_type)
        self.set_header("Content-Length", len(body))
        self.set_header("Connection", "close")
        self.write(body)
        # A refusal in prepare() comes before the body limit is lifted: lift it, or Tornado would
        # answer a long Content-Length with its own bare 400 after ours.
        self.request.connection.set_max_body_size(_NO_TORNADO_LIMIT)
        self.request.connection.set_body_timeout(None)
        sent = self.flush()
        loop = IOLoop.current()
        rest = self.declared_rest()
        if rest is not None and rest > self.config.linger_bytes and self.config.linger_max_seconds:
            timer = loop.call_later(1, self.watch_linger)
            self.linger = Linger(sent, timer, rest, loop.time(), loop.time())
        else:
            timer = loop.call_later(self.config.linger_seconds, self.end_linger)
            self.linger = Linger(sent, timer, self.config.linger_bytes)
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

    def declared_rest(self) -> int | None:
        """What is left of a body whose Content-Length is declared within MAX_BODY_BYTES."""
        length = self.request.headers.get("Content-Length")
        if length is None or not _DIGITS.fullmatch(length) or int(length) > self.config.max_body_bytes:
            return None
        return int(length) - self.body_bytes

    def watch_linger(self) -> None:
        """A linger up to a declared Content-Length, looked at once a second: it lasts while the
        client keeps sending -- a byte at least every LINGER_SECONDS, and fast enough for the rest
        to arrive within LINGER_MAX_SECONDS of the answer (else it would be reset anyway)."""
        linger = self.linger
        if linger is None:
            return
        now = IOLoop.current().time()
        elapsed, left = now - linger.started, linger.limit - linger.discarded
        limit = self.config.linger_max_seconds
        idle = now - linger.last >= self.config.linger_seconds
        # At the rate so far, the rest would not arrive in time (checked from 2 s on).
        too_slow = elapsed >= 2 and left * elapsed > linger.discarded * (limit - elapsed)
        if idle or too_slow or elapsed >= limit:
            self.end_linger()
        else:
            linger.timer = IOLoop.current().call_later(1, self.watch_linger)

    def end_linger(self) -> None:
        """The dropped body has ended, or passed its limit, or the time is up: finish the answer
        and close the connection."""
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
