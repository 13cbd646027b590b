"""Connections: how long a client may take over its headers, how many connections one process
holds, and what a connection past that number gets.

Tornado keeps a connection whose headers never end for ``idle_connection_timeout`` (one timer for
the idle time between requests and the headers), and accepts until the process runs out of file
descriptors, after which nothing, ``/health`` included, is answered. ``Server`` is Tornado's
HTTPServer with nginx's rules instead:

- ``HEADER_TIMEOUT``: a new connection's request line and headers must be in within it;
  ``KEEPALIVE_TIMEOUT``: from the end of one answer to the end of the next request's headers.
  Either closes the connection without an answer, as nginx does.
- ``MAX_CONNECTIONS`` per process, below the open-file limit. Past it a connection is looked at
  without reading it (``MSG_PEEK``): ``GET /health``, ``/ready`` and ``/metrics`` are served;
  any other request gets a ``503`` with ``Retry-After`` and is closed; one that sends nothing
  within LOOK_SECONDS is closed. At most OVERFLOW of them are looked at at once, any more are
  closed at once, so the listen queue keeps moving and the process never runs out of descriptors.
  Requests in flight are not touched.
"""

from __future__ import annotations

import copy
import json
import logging
import resource
import socket
import time

import tornado.httpserver
import tornado.httputil
import tornado.iostream
from tornado.http1connection import HTTP1Connection, HTTP1ServerConnection
from tornado.ioloop import IOLoop

from handler.base import metrics
from handler.server.config import Settings

log = logging.getLogger(__name__)

# Connections past MAX_CONNECTIONS looked at (or served, for the ops routes) at once.
OVERFLOW = 64
# How long one of them may take to send its request line, and to send its headers once it has.
LOOK_SECONDS = 1.0
OVERFLOW_HEADER_TIMEOUT = 5.0
# The routes served past the cap: probes and scrapes must see a busy server, not a dead one.
OPS_PATHS = (b"/health", b"/ready", b"/metrics")
_OPS_STARTS = tuple(m + b" " + p for m in (b"GET", b"HEAD") for p in OPS_PATHS)
RETRY_AFTER_S = 1
_BUSY_BODY = json.dumps({"error": "server busy: too many connections; retry later"}).encode()
BUSY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=UTF-8\r\n"
    b"Retry-After: %d\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
    % (RETRY_AFTER_S, len(_BUSY_BODY), _BUSY_BODY)
)
# The file descriptors kept for everything but client connections: listening sockets, the
# PostgreSQL pool, S3 connections, log and metrics files, the connections being looked at.
MIN_RESERVE = 128 + OVERFLOW
_MAX_RAISED = 1 << 20  # an "unlimited" hard limit is not a number of connections to plan for


def raise_open_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (as Go's runtime does at start:
    the soft default, often 1024, is for select()-era programs); returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _MAX_RAISED if hard == resource.RLIM_INFINITY else min(hard, _MAX_RAISED)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, e)
    return _MAX_RAISED if soft == resource.RLIM_INFINITY else soft


def derive_max_connections(open_files: int, settings: Settings) -> int:
    """MAX_CONNECTIONS when unset: the open-file limit less a reserve for everything else the
    process opens (a tenth of the limit, and at least the pools' sizes and MIN_RESERVE)."""
    pools = settings.db_pool_size + 4 * settings.upload_concurrency  # storage's max_pool_connections
    reserve = max(open_files // 10, MIN_RESERVE + pools)
    return max(open_files - reserve, 1)


def max_connections(settings: Settings) -> tuple[int, int]:
    """(the cap, the open-file limit), after raising the soft limit; a MAX_CONNECTIONS set above
    what the limit allows is lowered to it, with a warning."""
    open_files = raise_open_file_limit()
    derived = derive_max_connections(open_files, settings)
    if not settings.max_connections:
        return derived, open_files
    if settings.max_connections > derived:
        log.warning(
            "MAX_CONNECTIONS=%d leaves too few of the %d open files for the database, S3 and "
            "logs: using %d (raise the hard limit, ulimit -Hn, for more)",
            settings.max_connections,
            open_files,
            derived,
        )
        return derived, open_files
    return settings.max_connections, open_files


def is_ops_request(start: bytes) -> bool:
    """Whether the first bytes of a request are (or may yet be, if that is all that came) a GET
    or HEAD of one of OPS_PATHS."""
    line = start.split(b"\n", 1)[0]
    if any(line.startswith(s + b" ") or line.startswith(s + b"?") for s in _OPS_STARTS):
        return True
    return b"\n" not in start and any(s.startswith(line) or line == s for s in _OPS_STARTS)


class _Connection(HTTP1ServerConnection):
    """One client connection and what the server needs to know of it."""

    def __init__(self, stream, params, context, overflow: bool) -> None:
        super().__init__(stream, params, context)
        self.overflow = overflow  # accepted past MAX_CONNECTIONS: the ops routes only
        self.requests = 0  # requests begun (read or being read)
        self.headers_in = False  # the current request's headers have arrived
        self.waiting_since = time.monotonic()


class _Request(tornado.httputil.HTTPMessageDelegate):
    """The application's delegate for one request, which also tells the connection when the
    headers are in; on a connection past the cap, anything but an ops route is answered 503."""

    def __init__(
        self, inner: tornado.httputil.HTTPMessageDelegate, conn: _Connection, request: HTTP1Connection
    ) -> None:
        self.inner, self.conn, self.request = inner, conn, request
        self.refused = False

    def headers_received(self, start_line, headers):
        self.conn.headers_in = True
        if self.conn.overflow and not is_ops_request(f"{start_line.method} {start_line.path} ".encode()):
            self.refused = True
            metrics.CONNECTIONS_REFUSED.labels("503").inc()
            head, _, body = BUSY_ANSWER.partition(b"\r\n\r\n")
            fields = tornado.httputil.HTTPHeaders()
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.decode().partition(": ")
                fields.add(name, value)
            status = tornado.httputil.ResponseStartLine("HTTP/1.1", 503, "Service Unavailable")
            self.request.write_headers(status, fields, body)
            self.request.finish()  # before the body: Tornado sends no "100 Continue", and closes
            return None
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk):
        return None if self.refused else self.inner.data_received(chunk)

    def finish(self) -> None:
        if not self.refused:
            self.inner.finish()

    def on_connection_close(self) -> None:
        if not self.refused:
            self.inner.on_connection_close()


class Server(tornado.httpserver.HTTPServer):
    """Tornado's HTTPServer with HEADER_TIMEOUT, KEEPALIVE_TIMEOUT and MAX_CONNECTIONS."""

    def initialize(  # type: ignore[override]
        self,
        request_callback,
        *,
        header_timeout: float,
        keepalive_timeout: float,
        max_connections: int,
        **kwargs,
    ) -> None:
        super().initialize(request_callback, **kwargs)
        self.conn_params.header_timeout = header_timeout or None  # 0: no limit
        self.keepalive_timeout = keepalive_timeout or None
        self.max_connections = max_connections
        self.open = 0  # connections served under the cap
        self.overflow = 0  # connections past it, looked at or served
        self._looking: dict[tornado.iostream.IOStream, object] = {}  # stream -> its timeout

    # -- accepting ---------------------------------------------------------------------------

    def handle_stream(self, stream: tornado.iostream.IOStream, address: tuple) -> None:
        if self.open < self.max_connections:
            self.open += 1
            self._serve(stream, address, overflow=False)
        elif self.overflow >= OVERFLOW:
            metrics.CONNECTIONS_REFUSED.labels("closed").inc()
            stream.close()
            return
        else:
            self.overflow += 1
            self._look(stream, address)
        metrics.OPEN_CONNECTIONS.set(self.open + self.overflow)

    def _serve(self, stream: tornado.iostream.IOStream, address: tuple, overflow: bool) -> None:
        params = copy.copy(self.conn_params)  # each connection's own: its timeouts change
        if overflow:
            params.header_timeout = OVERFLOW_HEADER_TIMEOUT
            params.no_keep_alive = True
        # As HTTPServer.handle_stream does (Tornado has no hook for the parameters).
        context = tornado.httpserver._HTTPRequestContext(
            stream, address, self.protocol, self.trusted_downstream
        )
        conn = _Connection(stream, params, context, overflow)
        self._connections.add(conn)
        conn.start_serving(self)

    def _look(self, stream: tornado.iostream.IOStream, address: tuple) -> None:
        """A connection past the cap: decide on its first bytes, once they have come."""
        if self._decide(stream, address):
            return
        loop = IOLoop.current()
        fd = stream.socket.fileno()

        def readable(fd: int, events: int) -> None:
            self._stop_looking(stream, fd)
            if not self._decide(stream, address):  # woken with nothing to read
                self._close_overflow(stream, "closed")

        def too_slow() -> None:
            self._stop_looking(stream, fd)
            self._close_overflow(stream, "closed")

        loop.add_handler(fd, readable, IOLoop.READ)
        self._looking[stream] = loop.call_later(LOOK_SECONDS, too_slow)

    def _stop_looking(self, stream: tornado.iostream.IOStream, fd: int) -> None:
        loop = IOLoop.current()
        loop.remove_timeout(self._looking.pop(stream))
        loop.remove_handler(fd)

    def _decide(self, stream: tornado.iostream.IOStream, address: tuple) -> bool:
        """Serve, refuse or close the connection on what it has sent, without reading it;
        False when nothing has come yet."""
        sock = stream.socket
        try:
            start = sock.recv(1024, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError:
            start = b""
        if not start:  # the client has gone already
            self._close_overflow(stream, None)
        elif is_ops_request(start):
            self._serve(stream, address, overflow=True)
        else:
            try:
                sock.send(BUSY_ANSWER)  # a fresh socket's send buffer takes it whole
                # What the client sent is read, so that the close sends a FIN, not a reset
                # that could destroy the answer before the client reads it.
                for _ in range(16):
                    if not sock.recv(65536):
                        break
            except OSError:
                pass
            self._close_overflow(stream, "503")
        return True

    def _close_overflow(self, stream: tornado.iostream.IOStream, refusal: str | None) -> None:
        if refusal:
            metrics.CONNECTIONS_REFUSED.labels(refusal).inc()
        stream.close()
        self.overflow -= 1
        metrics.OPEN_CONNECTIONS.set(self.open + self.overflow)

    # -- serving -----------------------------------------------------------------------------

    def start_request(self, server_conn, request_conn):
        conn: _Connection = server_conn
        conn.requests += 1
        conn.headers_in = False
        conn.waiting_since = time.monotonic()
        if conn.requests == 2 and not conn.overflow:
            conn.params.header_timeout = self.keepalive_timeout  # read from now on
        return _Request(super().start_request(server_conn, request_conn), conn, request_conn)

    def on_close(self, server_conn) -> None:
        super().on_close(server_conn)
        conn: _Connection = server_conn
        if conn.overflow:
            self.overflow -= 1
        else:
            self.open -= 1
        limit = conn.params.header_timeout
        if not conn.headers_in and limit and time.monotonic() - conn.waiting_since >= limit - 0.05:
            metrics.CONNECTIONS_TIMED_OUT.labels("header" if conn.requests <= 1 else "keepalive").inc()
        metrics.OPEN_CONNECTIONS.set(self.open + self.overflow)

    async def close_all_connections(self) -> None:
        for stream in list(self._looking):
            self._stop_looking(stream, stream.socket.fileno())
            self._close_overflow(stream, None)
        await super().close_all_connections()


def make_server(app, settings: Settings) -> Server:
    """The server for ``app`` with the settings' limits (the open-file limit raised first)."""
    cap, open_files = max_connections(settings)
    log.info(
        "at most %d connections (open-file limit %d); headers within %g s, kept-alive connections "
        "idle up to %g s",
        cap,
        open_files,
        settings.header_timeout,
        settings.keepalive_timeout,
    )
    return Server(
        app,
        header_timeout=settings.header_timeout,
        keepalive_timeout=settings.keepalive_timeout,
        max_connections=cap,
        # Streamed routes lift it (IngestHandler): BODY_IDLE_TIMEOUT applies between their bytes.
        body_timeout=settings.body_idle_timeout or None,
    )
