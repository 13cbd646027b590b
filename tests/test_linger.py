"""An early answer reaches a client that is still sending (lingering close).

The server refuses a batch as soon as it sees the problem. A server that then closed at once
would reset the connection of a client still sending its body, and the reset destroys the answer
before the client reads it. So the rest of the body is read and dropped, for at most LINGER_SECONDS
and LINGER_BYTES, and only then is the connection closed. These clients stream a chunked body that
is refused at its first run and keep sending while they wait for the answer.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import uuid

import pytest

from handler.server.auth import hash_key
from tests.server import start_server

KEY = "linger-test-key"
TRACE = str(uuid.uuid4())
BAD_RUN = json.dumps({"trace_id": TRACE, "name": "bad", "end_time": "yesterday"}).encode()
GOOD_RUN = json.dumps({"trace_id": TRACE, "name": "good", "inputs": {"text": "x" * 2000}}).encode()
FILLER = b"," + b",".join([GOOD_RUN] * 30)  # ~60 KB of valid runs per chunk
# What the client sends after the refused run: more than loopback's socket buffers hold (several
# MB), so that the sending itself fails if the server stops reading and closes.
TOTAL = 24 * 1024 * 1024


@pytest.fixture(scope="module")
def lingering(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("linger"), "linger", API_KEYS=f"t:{hash_key(KEY)}")
    yield srv
    srv.stop()
    assert srv.process.returncode == 0, open(srv.log_path).read()[-3000:]


@pytest.fixture(scope="module")
def short_linger(tmp_path_factory):
    srv = start_server(
        tmp_path_factory.mktemp("short-linger"),
        "short-linger",
        API_KEYS=f"t:{hash_key(KEY)}",
        LINGER_BYTES=str(1024 * 1024),
        LINGER_SECONDS="2",
    )
    yield srv
    srv.stop()


class Streamer:
    """A raw HTTP/1.1 client: sends the head and a first chunk, then keeps sending chunks from a
    thread (until ``total`` bytes, or the server stops reading) while the caller reads."""

    def __init__(self, port: int, head: bytes, first: bytes, filler: bytes, total: int | None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(head + b"%x\r\n%s\r\n" % (len(first), first))
        self.sent = len(first)
        self.send_error: OSError | None = None
        self.ended = False  # the terminating chunk went out
        self._chunk = b"%x\r\n%s\r\n" % (len(filler), filler)
        self._filler = len(filler)
        self._total = total
        self._thread = threading.Thread(target=self._send, daemon=True)
        self._thread.start()

    def _send(self) -> None:
        if self._total == 0:
            return  # a client that stops sending but keeps its connection
        try:
            while self._total is None or self.sent < self._total:
                self.sock.sendall(self._chunk)
                self.sent += self._filler
            self.sock.sendall(b"0\r\n\r\n")
            self.ended = True
        except OSError as e:
            self.send_error = e

    def join(self) -> None:
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the server stopped reading without closing"

    def read_answer(self) -> tuple[int, dict, bytes]:
        """The status, the JSON body and the raw head of the answer; fails on a reset."""
        data = b""
        while True:
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep:
                length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
                if len(rest) >= length:
                    status = int(head.split(b" ", 2)[1])
                    return status, json.loads(rest[:length]), head
            more = self.sock.recv(65536)  # ConnectionResetError here is the bug this file is about
            assert more, f"closed before a whole answer: {data!r}"
            data += more

    def wait_closed(self) -> bytes:
        """Read until the server closes the connection; what came after the answer."""
        after = b""
        while True:
            try:
                more = self.sock.recv(65536)
            except ConnectionResetError:
                return after
            if not more:
                return after
            after += more

    def close(self) -> None:
        self.sock.close()
        self._thread.join(timeout=30)


def _head(path: str, content_type: str = "application/json", key: str = KEY, method: str = "POST") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
        f"x-api-key: {key}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()


BOUNDARY = "lingerboundary"
RUN_ID = str(uuid.uuid4())


def _multipart_first() -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="post.{RUN_ID}"\r\n'
            f"Content-Type: application/json\r\n\r\n"
        ).encode()
        + BAD_RUN
        + b"\r\n"
    )


def _multipart_filler() -> bytes:
    return (
        (
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; "
            f'name="attachment.{RUN_ID}.f{uuid.uuid4().hex}"\r\n'
            f"Content-Type: text/plain\r\n\r\n"
        ).encode()
        + b"y" * 60_000
        + b"\r\n"
    )


ROUTES = {
    "runs": (_head("/runs"), b"[" + BAD_RUN, FILLER, "run 0: end_time must be"),
    "batch": (_head("/runs/batch"), b'{"post": [' + BAD_RUN, FILLER, "run 0: end_time must be"),
    "multipart": (
        _head("/runs/multipart", f"multipart/form-data; boundary={BOUNDARY}"),
        _multipart_first() + _multipart_filler(),
        _multipart_filler(),
        f"post.{RUN_ID}: end_time must be",
    ),
    "wrong-key": (_head("/runs", key="not-the-key"), b"[" + GOOD_RUN, FILLER, "x-api-key"),
}


@pytest.mark.parametrize("route", ROUTES)
def test_a_client_still_sending_gets_the_early_answer(lingering, route):
    head, first, filler, words = ROUTES[route]
    client = Streamer(lingering.client.port, head, first, filler, TOTAL)
    try:
        # Like Node's fetch with a streamed body: the whole body is sent before the answer is read.
        # A server that closed at once would reset the connection, failing the sending and
        # destroying the answer the client had not read yet.
        client.join()
        assert client.send_error is None and client.ended, client.send_error
        status, answer, _ = client.read_answer()
        assert status in (400, 401), answer
        assert words in answer["error"], answer
        assert client.wait_closed() == b""
    finally:
        client.close()
    # The server is still well and stored nothing of the refused batch.
    assert lingering.client.get(f"/runs/{RUN_ID}", headers={"x-api-key": KEY}).status == 404


def test_the_linger_ends_after_linger_bytes(short_linger):
    """A client that never stops sending is cut off once LINGER_BYTES have been dropped."""
    head, first, filler, words = ROUTES["runs"]
    client = Streamer(short_linger.client.port, head, first, filler, None)
    try:
        status, answer, raw_head = client.read_answer()
        assert status == 400 and words in answer["error"]
        assert b"\r\nconnection: close" in raw_head.lower()  # told before the body ended
        client.wait_closed()
        client._thread.join(timeout=30)
        assert isinstance(client.send_error, OSError)
        # Sent: what the server dropped (at most LINGER_BYTES after the answer) plus what the two
        # sockets' buffers held.
        assert client.sent < 1024 * 1024 + 16 * 1024 * 1024
    finally:
        client.close()


def test_the_linger_ends_after_linger_seconds(short_linger):
    """A client that stops sending (but keeps its connection) is closed after LINGER_SECONDS."""
    head, first, _, words = ROUTES["runs"]
    client = Streamer(short_linger.client.port, head, first, b" ", 0)  # sends nothing more
    try:
        status, answer, _ = client.read_answer()
        assert status == 400 and words in answer["error"]
        # Without a time limit the server would keep the connection until the client ends it.
        assert client.wait_closed() == b""  # the socket's 30 s timeout would raise instead
    finally:
        client.close()


def test_a_body_that_ends_ends_the_linger_and_the_next_request_works(lingering):
    """The common case: the client sends its whole (refused) body; the answer was waiting."""
    body = b"[" + BAD_RUN + FILLER + b"]"
    response = lingering.client.post(
        [body[i : i + 65536] for i in range(0, len(body), 65536)], headers={"x-api-key": KEY}
    )
    assert response.status == 400 and "end_time must be" in response.json()["error"]
    ok = lingering.client.post([b"[" + GOOD_RUN + b"]"], headers={"x-api-key": KEY})
    assert ok.status == 201, ok.body
