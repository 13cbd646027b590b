"""/health, /ready, /metrics and the access log, against real servers.

/ready's failures are provoked without touching the shared PostgreSQL and MinIO: a second server
reaches them through TCP proxies that the test cuts (connection refused) or stalls (no answer).
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
import uuid
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from handler.server.auth import hash_key
from handler.server.config import Settings
from tests.runs import batch, run
from tests.server import Server, start_server

KEY = "ops-secret-key"


def wait_for_log(server: Server, pattern: str, timeout: float = 5) -> str:
    """The first log line matching ``pattern``: Tornado logs a request after sending its answer."""
    deadline = time.monotonic() + timeout
    while True:
        with open(server.log_path) as log:
            for line in log:
                if re.search(pattern, line):
                    return line
        if time.monotonic() >= deadline:
            raise AssertionError(f"no log line matches {pattern!r}")
        time.sleep(0.05)


def scrape(server: Server) -> dict:
    """{(sample name, labels as a sorted tuple): value} from GET /metrics."""
    response = server.client.get("/metrics")
    assert response.status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.body.decode())
        for sample in family.samples
    }


def test_health(client):
    response = client.get("/health")
    assert response.status == 200
    assert response.json() == {"status": "ok"}


def test_ready(client):
    response = client.get("/ready")
    assert response.status == 200
    assert response.json() == {"status": "ready", "postgres": "ok", "s3": "ok"}


# Every metric family /metrics shows, with its type (tests/test_workers.py: the same with WORKERS > 1).
FAMILIES = {
    "run_handler_buffered_bytes": "gauge",
    "run_handler_budget_waiting_requests": "gauge",
    "run_handler_budget_refused": "counter",
    "run_handler_requests": "counter",
    "run_handler_runs_ingested": "counter",
    "run_handler_ingested_bytes": "counter",
    "run_handler_upload_seconds": "histogram",
    "run_handler_batches_in_flight": "gauge",
    "run_handler_object_cache_reads": "counter",
    "run_handler_objects_written": "counter",
    "run_handler_object_bytes": "histogram",
    "run_handler_open_connections": "gauge",
    "run_handler_connections_refused": "counter",
    "run_handler_connections_timed_out": "counter",
    "run_handler_retention_sweeps": "counter",
    "run_handler_retention_traces_deleted": "counter",
    "run_handler_retention_runs_deleted": "counter",
    "run_handler_retention_bytes_deleted": "counter",
    "run_handler_retention_objects_deleted": "counter",
    "run_handler_group_requests": "histogram",
    "run_handler_group_runs": "histogram",
    "run_handler_group_puts": "counter",
    "run_handler_group_waiting_requests": "gauge",
}


def test_metrics_are_exposed_with_their_types(server):
    conn = http.client.HTTPConnection(server.client.host, server.client.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read().decode()
    finally:
        conn.close()
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/plain; version=")
    # The text parser reports each counter's and histogram's _created timestamp as a gauge of its own.
    families = {
        f.name: f.type for f in text_string_to_metric_families(body) if not f.name.endswith("_created")
    }
    assert families == FAMILIES


def test_requests_are_counted_by_handler_method_and_status(server):
    health = (
        "run_handler_requests_total",
        (("handler", "HealthHandler"), ("method", "GET"), ("status", "200")),
    )
    missing = (
        "run_handler_requests_total",
        (("handler", "NotFoundHandler"), ("method", "GET"), ("status", "404")),
    )
    before = scrape(server)
    for _ in range(3):
        assert server.client.get("/health").status == 200
    assert server.client.get(f"/nope-{uuid.uuid4()}").status == 404
    after = scrape(server)
    assert after[health] == before.get(health, 0) + 3
    assert after[missing] == before.get(missing, 0) + 1


def test_unknown_methods_share_one_label(server):
    """A client must not be able to create metric series at will."""
    other = (
        "run_handler_requests_total",
        (("handler", "HealthHandler"), ("method", "other"), ("status", "405")),
    )
    method = f"X{uuid.uuid4().hex[:8].upper()}"
    before = scrape(server)
    conn = http.client.HTTPConnection(server.client.host, server.client.port, timeout=10)
    try:
        conn.request(method, "/health")
        assert conn.getresponse().status == 405
    finally:
        conn.close()
    after = scrape(server)
    assert after[other] == before.get(other, 0) + 1
    assert not any(method in str(key) for key in after)


def test_one_access_log_line_per_request(server):
    path, secret = f"/nope-{uuid.uuid4()}", uuid.uuid4().hex
    assert server.client.get(f"{path}?token={secret}").status == 404
    line = wait_for_log(server, re.escape(path))
    assert re.search(
        rf"WARNING handler\.access: GET {re.escape(path)} 404 bytes=0 runs=0 objects=0 duration_ms=\d+\.\d$",
        line,
    )
    with open(server.log_path) as log:
        text = log.read()
    assert secret not in text  # the query string stays out
    assert text.count(path) == 1


def test_access_log_counts_request_body_bytes(server):
    marker = uuid.uuid4().hex
    body = b"x" * 1234
    response = server.client.post(body, path=f"/health?{marker}")  # /health takes only GET
    assert response.status == 405
    wait_for_log(
        server, r"WARNING handler\.access: POST /health 405 bytes=1234 runs=0 objects=0 duration_ms="
    )


def test_success_is_logged_at_info(server):
    (run_id,) = server.client.post(batch(run())).json()["ids"]
    assert server.client.get(f"/runs/{run_id}").status == 200
    wait_for_log(
        server, rf"INFO handler\.access: GET /runs/{run_id} 200 bytes=0 runs=0 objects=0 duration_ms="
    )


# --- /ready when a dependency fails -------------------------------------------------------------


class TcpProxy:
    """Forwards connections to a shared service until the test cuts it (connections drop, the
    port refuses) or stalls it (bytes go nowhere, so every request waits)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.stalled = False
        self.closed = False
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not self.stalled:
                    target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stall(self) -> None:
        self.stalled = True

    def cut(self) -> None:
        self.closed = True
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


@pytest.fixture
def proxied(tmp_path, settings: Settings):
    """A keyed server that reaches PostgreSQL and S3 through proxies: (server, pg proxy, s3 proxy)."""
    endpoint = urlsplit(settings.s3_endpoint_url)
    pg = TcpProxy((settings.db_host, settings.db_port))
    s3 = TcpProxy((endpoint.hostname, endpoint.port or 80))
    srv = start_server(
        tmp_path,
        "unready",
        DB_HOST="127.0.0.1",
        DB_PORT=str(pg.port),
        S3_ENDPOINT_URL=f"http://127.0.0.1:{s3.port}",
        API_KEYS=f"ops:{hash_key(KEY)}",
    )
    try:
        yield srv, pg, s3
    finally:
        pg.cut()
        s3.cut()
        srv.stop()


def test_ops_routes_need_no_api_key(proxied):
    srv, _, _ = proxied
    assert srv.client.post(batch(run())).status == 401  # this server does require keys
    assert srv.client.get("/health").status == 200
    assert srv.client.get("/ready").json() == {"status": "ready", "postgres": "ok", "s3": "ok"}
    assert srv.client.get("/metrics").status == 200


def test_ready_is_503_when_s3_is_unreachable(proxied):
    srv, _, s3 = proxied
    assert srv.client.get("/ready").status == 200
    s3.cut()
    response = srv.client.get("/ready")
    assert response.status == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["postgres"] == "ok"
    # Refused connections are retried by botocore with backoff, which may outlast the 2 s limit.
    assert "Could not connect to the endpoint URL" in body["s3"] or body["s3"] == "no answer in 2 s"
    assert srv.client.get("/health").status == 200  # liveness does not depend on S3
    wait_for_log(srv, r"ERROR handler\.access: GET /ready 503 ")


def test_ready_is_503_when_postgres_is_unreachable(proxied):
    srv, pg, _ = proxied
    assert srv.client.get("/ready").status == 200
    pg.cut()
    response = srv.client.get("/ready")
    assert response.status == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["s3"] == "ok"
    # The pool's connection breaks first; a new one is refused.
    assert re.search("server closed the connection|Connection refused", body["postgres"]), body
    assert srv.client.get("/health").status == 200


def test_ready_gives_up_on_silent_dependencies_after_2_s_both_at_once(proxied):
    srv, pg, s3 = proxied
    assert srv.client.get("/ready").status == 200
    pg.stall()
    s3.stall()
    started = time.monotonic()
    response = srv.client.get("/ready")
    elapsed = time.monotonic() - started
    assert response.status == 503
    assert response.json() == {
        "status": "unavailable",
        "postgres": "no answer in 2 s",
        "s3": "no answer in 2 s",
    }
    assert 1.9 < elapsed < 3.5  # one timeout, not one after the other
