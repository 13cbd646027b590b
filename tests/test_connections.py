"""Hostile clients at the connection level (handler/server/connections.py): slow headers, idle
kept-alive connections, a server at MAX_CONNECTIONS, refusals instead of "100 Continue", and
refusals that arrive while a client with a declared Content-Length is still sending.

Raw sockets against real servers on loopback; every loop is bounded in count and time.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid

import pytest

from handler.server.auth import hash_key
from handler.server.config import Settings
from handler.server.connections import LOOK_SECONDS, derive_max_connections, is_ops_request
from tests.runs import batch, run
from tests.server import Server, start_server
from tests.test_ops import scrape

KEY = "connections-test-key"
MIB = 1024 * 1024
CAP = 20
BUDGET = 5 * MIB + 65536


def connect(server: Server, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.client.port), timeout=timeout)


def read_answer(sock: socket.socket) -> tuple[int, dict, bytes]:
    """The first answer on ``sock``: status, JSON body, raw head (fails on a close before it)."""
    data = b""
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            length = int(found.group(1)) if found else 0
            if len(rest) >= length:
                body = json.loads(rest[:length]) if length else {}
                return int(head.split(b" ", 2)[1]), body, head
        more = sock.recv(65536)
        assert more, f"closed before a whole answer: {data!r}"
        data += more


def closed_by_server(sock: socket.socket) -> bool:
    """Read until the server closes (True), or the socket's timeout passes (False)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def request(path: str, method: str = "GET", headers: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n".encode()


def test_max_connections_is_derived_from_the_open_file_limit(settings: Settings):
    assert derive_max_connections(20_000, settings) == 18_000
    low = derive_max_connections(1024, settings)
    assert 0 < low < 1024 - settings.db_pool_size - 4 * settings.upload_concurrency - 64


def test_ops_requests_are_told_apart_by_their_first_bytes():
    assert is_ops_request(b"GET /health HTTP/1.1\r\n")
    assert is_ops_request(b"HEAD /metrics?x=1 HTTP/1.1\r\n")
    assert is_ops_request(b"GET /hea")  # may yet be: Tornado parses the rest
    assert not is_ops_request(b"GET /healthz HTTP/1.1\r\n")
    assert not is_ops_request(b"POST /health HTTP/1.1\r\n")
    assert not is_ops_request(b"POST /runs HTTP/1.1\r\nHost: x\r\n")


# -- timeouts ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timeouts(tmp_path_factory):
    srv = start_server(
        tmp_path_factory.mktemp("timeouts"), "timeouts", HEADER_TIMEOUT="1", KEEPALIVE_TIMEOUT="4"
    )
    yield srv
    srv.stop()


def test_slow_headers_are_closed_after_header_timeout(timeouts):
    before = scrape(timeouts)
    silent = connect(timeouts)
    trickling = connect(timeouts)
    try:
        silent.sendall(b"POST /runs HTTP/1.1\r\nHost: localhost\r\n")
        # A byte now and then does not keep a connection whose headers never end.
        trickling.settimeout(0.2)
        trickled = 0
        for byte in b"POST /runs HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            try:
                trickling.sendall(bytes([byte]))
                trickled += 1
                if trickling.recv(1) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        assert trickled < 100, "the server kept reading headers for 20 s"
        silent.settimeout(10)
        assert closed_by_server(silent)
    finally:
        silent.close()
        trickling.close()
    after = scrape(timeouts)
    key = ("run_handler_connections_timed_out_total", (("wait", "header"),))
    assert after[key] >= before[key] + 2
    assert timeouts.client.get("/health").status == 200


def test_a_kept_alive_connection_waits_keepalive_timeout_between_requests(timeouts):
    sock = connect(timeouts)
    try:
        sock.sendall(request("/health"))
        assert read_answer(sock)[0] == 200
        time.sleep(2)  # past HEADER_TIMEOUT (1 s), within KEEPALIVE_TIMEOUT (4 s)
        sock.sendall(request("/health"))
        assert read_answer(sock)[0] == 200
        sock.settimeout(20)
        assert closed_by_server(sock)  # idle past KEEPALIVE_TIMEOUT
    finally:
        sock.close()


# -- the connection cap ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("capped"), "capped", MAX_CONNECTIONS=str(CAP))
    yield srv
    srv.stop()


def fill(server: Server, count: int) -> list[socket.socket]:
    """``count`` connections that have sent nothing (held until HEADER_TIMEOUT, 60 s)."""
    return [connect(server) for _ in range(count)]


def open_connections(server: Server) -> float:
    return scrape(server)[("run_handler_open_connections", ())]


def quiet(server: Server) -> bool:
    """Wait until the server counts no connection but the scrape's own: on a loaded machine it may
    still be closing those of the test before, which would free slots under the cap mid-test."""
    return wait_until(lambda: open_connections(server) <= 1)


def hold_the_cap(server: Server, held: list[socket.socket]) -> None:
    """Wait until ``held`` (and any request in flight) fill every slot under the cap, adding silent
    connections while one is free. A /metrics scrape that comes before the server has accepted
    them all takes a slot itself, and frees it once answered; the held connection pushed past the
    cap meanwhile is closed after LOOK_SECONDS. So the count must still be the cap plus the
    scrape's own connection after that time."""
    for _ in range(5):
        if wait_until(lambda: open_connections(server) >= CAP + 1):
            time.sleep(LOOK_SECONDS + 0.5)
            if open_connections(server) >= CAP + 1:
                return
        held += fill(server, 1)
    raise AssertionError("the held connections do not fill the cap")


def wait_until(condition, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_at_the_cap_health_answers_a_batch_in_flight_completes_and_new_requests_get_503(capped):
    assert quiet(capped)
    before = scrape(capped)
    first, second = run(), run(id=str(uuid.uuid4()))
    in_flight = capped.client.start_post()
    held: list[socket.socket] = []
    try:
        capped.client.send_chunk(in_flight, b"[" + json.dumps(first).encode())
        held = fill(capped, CAP - 1)
        # /metrics itself is served past the cap; the count includes its own connection.
        hold_the_cap(capped, held)

        assert capped.client.get("/health").status == 200  # how fast: make connections

        refused = connect(capped)
        try:
            json_post = request("/runs", "POST", "Content-Type: application/json\r\nContent-Length: 2\r\n")
            refused.sendall(json_post + b"[]")
            status, body, head = read_answer(refused)
            assert status == 503 and "too many connections" in body["error"]
            assert re.search(rb"(?im)^retry-after: \d+", head)
            assert closed_by_server(refused)
        finally:
            refused.close()

        capped.client.send_chunk(in_flight, b"," + json.dumps(second).encode() + b"]")
        response = capped.client.finish(in_flight)
        assert response.status == 201, response.body
    finally:
        in_flight.close()
        for sock in held:
            sock.close()
    after = scrape(capped)
    assert after[("run_handler_connections_refused_total", (("answer", "503"),))] >= (
        before[("run_handler_connections_refused_total", (("answer", "503"),))] + 1
    )
    assert capped.client.get(f"/runs/{second['id']}").status == 200


def test_past_the_cap_silent_connections_are_closed_and_the_server_recovers(capped):
    assert quiet(capped)
    held = fill(capped, CAP)
    extra = []
    try:
        hold_the_cap(capped, held)
        extra = fill(capped, 5)  # past the cap and sending nothing: closed within about 1 s
        for sock in extra:
            sock.settimeout(10)
            assert closed_by_server(sock)
    finally:
        for sock in held + extra:
            sock.close()

    def accepted() -> bool:
        return capped.client.post(batch(run())).status == 201

    assert wait_until(accepted)
    assert wait_until(lambda: open_connections(capped) <= 2)


# -- refusals instead of "100 Continue" ---------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A memory budget of 5 MiB + 64 KiB, the least these limits allow, so that one paused
    large run fills it."""
    srv = start_server(
        tmp_path_factory.mktemp("guarded"),
        "guarded",
        API_KEYS=f"t:{hash_key(KEY)}",
        MAX_BODY_BYTES=str(64 * MIB),
        MAX_RUN_BYTES=str(4 * MIB),
        UPLOAD_WINDOW_BYTES="65536",
        SEGMENT_BYTES="0",
        STREAM_PART_BYTES="0",
        MAX_BUFFERED_BYTES=str(BUDGET),
    )
    yield srv
    srv.stop()


def open_run() -> bytes:
    """The start of a run whose input is one long string, up to its opening quote."""
    head = json.dumps({"id": str(uuid.uuid4()), "trace_id": str(uuid.uuid4()), "name": "long"})
    return head[:-1].encode() + b', "inputs": {"text": "'


def expect_continue(server: Server, headers: str) -> socket.socket:
    sock = connect(server)
    sock.sendall(request("/runs", "POST", headers + "Expect: 100-continue\r\n"))
    return sock


def assert_refused_without_continue(sock: socket.socket, status: int) -> dict:
    """The first thing the server sends is the refusal, never "100 Continue", and it closes:
    the body is never asked for (this client never sends it)."""
    try:
        answer, body, head = read_answer(sock)
        assert not head.startswith(b"HTTP/1.1 100"), head
        assert answer == status, (answer, body)
        assert closed_by_server(sock)
        return {"head": head, **body}
    finally:
        sock.close()


GOOD = "Content-Type: application/json\r\nx-api-key: " + KEY + "\r\n"


def test_an_acceptable_request_gets_100_continue_then_its_answer(guarded):
    body = batch(run())
    sock = expect_continue(guarded, GOOD + f"Content-Length: {len(body)}\r\n")
    try:
        sock.settimeout(10)
        assert sock.recv(25).startswith(b"HTTP/1.1 100")
        sock.sendall(body)
        assert read_answer(sock)[0] == 201
    finally:
        sock.close()


@pytest.mark.parametrize(
    "headers, status",
    [
        ("Content-Type: application/json\r\nContent-Length: 1000000\r\n", 401),
        ("Content-Type: text/plain\r\nx-api-key: " + KEY + "\r\nContent-Length: 1000000\r\n", 415),
        (GOOD + f"Content-Length: {64 * MIB + 1}\r\n", 413),
    ],
    ids=["no-key", "content-type", "content-length"],
)
def test_a_refused_request_gets_its_status_instead_of_100_continue(guarded, headers, status):
    assert_refused_without_continue(expect_continue(guarded, headers), status)


def test_a_full_memory_budget_answers_503_instead_of_100_continue(guarded):
    """A paused run of 2 MiB, then a younger one of 3.5 MiB: together more than the budget, so
    the younger waits for room (or, counted as it arrived, fills the budget). Either way a request
    expecting 100-continue then gets 503 with Retry-After, without sending its body. (How much of
    one paused run the budget counts depends on how its bytes arrive, so one run alone does not
    reliably fill it; and an older request that needs room refuses younger ones, so the larger
    run comes second.)"""
    older, younger = (guarded.client.start_post(headers={"x-api-key": KEY}) for _ in range(2))
    held, waiting = ("run_handler_buffered_bytes", ()), ("run_handler_budget_waiting_requests", ())

    def send(holder, chunks: int) -> None:
        try:
            guarded.client.send_chunk(holder, b"[" + open_run())
            for _ in range(chunks):
                guarded.client.send_chunk(holder, b"x" * 65536)
        except OSError:  # closed at the end of the test while the server held it back
            pass

    try:
        send(older, 32)
        assert wait_until(lambda: scrape(guarded)[held] >= 2 * MIB)
        # Its sending blocks once the server stops reading it.
        threading.Thread(target=send, args=(younger, 56), daemon=True).start()
        assert wait_until(lambda: (m := scrape(guarded))[held] > BUDGET - 65536 or m[waiting] > 0)
        sock = expect_continue(guarded, GOOD + "Content-Length: 5000000\r\n")
        answer = assert_refused_without_continue(sock, 503)
        assert re.search(rb"(?im)^retry-after: \d+", answer["head"]) and "busy" in answer["error"]
    finally:
        older.close()
        younger.close()


# -- refusals that arrive: lingering up to a declared Content-Length ---------------------------


@pytest.fixture(scope="module")
def short_linger(tmp_path_factory):
    srv = start_server(
        tmp_path_factory.mktemp("declared-linger"),
        "declared-linger",
        LINGER_BYTES=str(MIB),
        LINGER_SECONDS="1",
    )
    yield srv
    srv.stop()


class Sender:
    """Sends a head with ``Content-Length: length``, then ``sent`` body bytes in all (the given
    start, then filler) from a thread, while the caller reads."""

    def __init__(self, server: Server, start: bytes, length: int, sent: int) -> None:
        self.sock = connect(server, timeout=30)
        self.sock.sendall(
            request("/runs", "POST", f"Content-Type: application/json\r\nContent-Length: {length}\r\n")
            + start
        )
        self.error: OSError | None = None
        self._rest = sent - len(start)
        self._thread = threading.Thread(target=self._send, daemon=True)
        self._thread.start()

    def _send(self) -> None:
        try:
            while self._rest > 0:
                piece = min(self._rest, 65536)
                self.sock.sendall(b" " * piece)
                self._rest -= piece
        except OSError as e:
            self.error = e

    def join(self) -> None:
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the server stopped reading without closing"


BAD = b'[{"trace_id": "%s", "name": "bad", "end_time": "yesterday"}' % str(uuid.uuid4()).encode()


def test_a_refused_body_of_declared_length_is_read_to_its_end(short_linger):
    """Refused at its first run, a 24 MiB body is read and dropped to its declared end, far past
    LINGER_BYTES (1 MiB): the client sends it all, then reads its 400 -- no reset."""
    length = 24 * MIB
    sender = Sender(short_linger, BAD, length, length)
    try:
        sender.join()
        assert sender.error is None, sender.error
        status, body, _ = read_answer(sender.sock)
        assert status == 400 and "end_time" in body["error"]
        assert closed_by_server(sender.sock)
    finally:
        sender.sock.close()


def test_a_client_that_stops_sending_is_closed_after_linger_seconds(short_linger):
    """The declared length does not keep a connection whose client has stopped sending."""
    sender = Sender(short_linger, BAD, 24 * MIB, 4 * MIB)
    try:
        sender.join()
        status, _, _ = read_answer(sender.sock)
        assert status == 400
        sender.sock.settimeout(20)
        assert closed_by_server(sender.sock)  # about LINGER_SECONDS after the last byte
    finally:
        sender.sock.close()


def test_large_runs_at_once_get_201_or_503_and_every_client_sends_its_whole_body(tmp_path):
    """The issue's 32 clients x 90 MB, scaled down: 8 clients, one run of a 12 MB string each,
    with Content-Length, against a budget that cannot take them all in BUDGET_WAIT_SECONDS."""
    srv = start_server(
        tmp_path,
        "large-runs",
        MAX_RUN_BYTES=str(16 * MIB),
        STREAM_PART_BYTES=str(5 * MIB),
        UPLOAD_WINDOW_BYTES=str(10 * MIB),
        SEGMENT_BYTES="0",
        MAX_BUFFERED_BYTES=str(27 * MIB),
        BUDGET_WAIT_SECONDS="1",
        LINGER_BYTES=str(MIB),
    )
    results: list = []

    def client() -> None:
        head = open_run()
        tail = b'"}}]'
        filler = 12 * MIB
        length = 1 + len(head) + filler + len(tail)
        sock = connect(srv, timeout=120)
        sent_all = False
        try:
            sock.sendall(
                request("/runs", "POST", f"Content-Type: application/json\r\nContent-Length: {length}\r\n")
                + b"["
                + head
            )
            for _ in range(filler // 65536):
                sock.sendall(b"y" * 65536)
            sock.sendall(tail)
            sent_all = True
            status, _, raw = read_answer(sock)
            results.append((status, sent_all, bool(re.search(rb"(?im)^retry-after:", raw))))
        except (OSError, AssertionError) as e:
            results.append((repr(e), sent_all, False))
        finally:
            sock.close()

    try:
        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert len(results) == 8
        for status, sent_all, retry_after in results:
            assert sent_all and status in (201, 503), results
            assert status == 201 or retry_after, results
    finally:
        srv.stop()
