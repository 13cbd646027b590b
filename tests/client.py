"""A small HTTP/1.1 client that streams request bodies chunk by chunk, as tracing clients do."""

from __future__ import annotations

import http.client
import json
import select
import socket
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class Response:
    status: int
    body: bytes

    def json(self):
        return json.loads(self.body)


class HttpClient:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def start_post(
        self,
        path: str = "/runs",
        content_type: str = "application/json",
        headers: dict | None = None,
        method: str = "POST",
    ) -> http.client.HTTPConnection:
        """Send the request line and headers of a chunked POST (or ``method``); the caller sends
        the chunks."""
        headers = {"Content-Type": content_type, **(headers or {})}
        if "Content-Length" not in headers:
            headers["Transfer-Encoding"] = "chunked"
        conn = self.connect()
        conn.putrequest(method, path)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        return conn

    @staticmethod
    def send_chunk(conn: http.client.HTTPConnection, data: bytes) -> None:
        conn.send(b"%x\r\n%s\r\n" % (len(data), data))

    @staticmethod
    def finish(conn: http.client.HTTPConnection, chunked: bool = True) -> Response:
        """End the body and read the answer. An answer the server sent early (then closing the
        connection) is still read when our sending fails."""
        try:
            if chunked:
                conn.send(b"0\r\n\r\n")
        except OSError:
            pass
        try:
            response = conn.getresponse()
            return Response(response.status, response.read())
        finally:
            conn.close()

    def post(
        self,
        chunks: Iterable[bytes] | bytes,
        path: str = "/runs",
        content_type: str = "application/json",
        headers: dict | None = None,
        method: str = "POST",
    ) -> Response:
        """POST a body, chunked transfer encoding, one HTTP chunk per item of ``chunks``."""
        if isinstance(chunks, bytes):
            chunks = [chunks]
        conn = self.start_post(path, content_type, headers, method)
        try:
            for chunk in chunks:
                if chunk:
                    self.send_chunk(conn, chunk)
        except OSError:
            pass  # the server answered early and closed; read that answer
        return self.finish(conn)

    def patch(self, path: str, body: bytes) -> Response:
        return self.post(body, path, method="PATCH")

    def post_with_length(self, body: bytes, headers: dict | None = None) -> Response:
        """POST with Content-Length instead of chunking."""
        conn = self.start_post(headers={"Content-Length": str(len(body)), **(headers or {})})
        try:
            conn.send(body)
        except OSError:
            pass
        return self.finish(conn, chunked=False)

    def get(self, path: str, headers: dict | None = None) -> Response:
        conn = self.connect()
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return Response(response.status, response.read())
        finally:
            conn.close()


class KeepAliveClient(HttpClient):
    """One connection kept open from request to request, as the SDKs' HTTP pools do; a new one
    only when the server has closed it (checked before each request, as urllib3 does) or a request
    failed on it."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.conn: http.client.HTTPConnection | None = None
        self.connections = 0

    def connect(self) -> http.client.HTTPConnection:
        if self.conn is None or self._closed_by_server():
            self.close()
            self.conn = super().connect()
            self.connections += 1
        return self.conn

    def _closed_by_server(self) -> bool:
        sock = self.conn.sock if self.conn else None
        if sock is None:
            return True
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable)  # an idle kept connection is readable only at its end (or an error)

    def finish(self, conn: http.client.HTTPConnection, chunked: bool = True) -> Response:
        """As HttpClient.finish, the connection kept unless the server closes it."""
        try:
            if chunked:
                conn.send(b"0\r\n\r\n")
            response = conn.getresponse()
            answer = Response(response.status, response.read())
        except BaseException:
            self.close()
            raise
        if response.will_close:
            self.close()
        return answer

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
