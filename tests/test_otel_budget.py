"""An OTLP body counts against the memory budget (MAX_BUFFERED_BYTES): held whole, then decoded
beside itself. With the budget held by another request, an export is refused 503 with Retry-After
(which OTLP exporters honour, retrying later), in its own encoding, and leaves nothing; once the
budget is free, the same export is stored."""

from __future__ import annotations

import http.client
import os

import pytest
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from handler.server.config import MIB
from tests.conftest import Store
from tests.server import Server, start_server
from tests.test_budget import big_run, hold_most_of_the_budget
from tests.test_otel_hostile import proto_request, proto_span

MAX_RUN = 16 * MIB
WINDOW = 8 * MIB
SEGMENT = MIB
BUDGET = MAX_RUN + WINDOW + 2 * SEGMENT + MIB  # the least the server starts with


@pytest.fixture(scope="module")
def budget_server(tmp_path_factory) -> Server:
    srv = start_server(
        tmp_path_factory.mktemp("otel-budget"),
        "otel-budget",
        MAX_RUN_BYTES=str(MAX_RUN),
        UPLOAD_WINDOW_BYTES=str(WINDOW),
        SEGMENT_BYTES=str(SEGMENT),
        STREAM_PART_BYTES=str(5 * MIB),
        MAX_BUFFERED_BYTES=str(BUDGET),
        OTLP_MAX_BODY_BYTES=str(5 * MIB),  # three times it is below MAX_RUN: the budget is the least
        BUDGET_WAIT_SECONDS="2",
    )
    yield srv
    srv.stop()


def export(server: Server, body: bytes) -> tuple[int, str | None, bytes]:
    conn = http.client.HTTPConnection(server.client.host, server.client.port, timeout=60)
    try:
        conn.request("POST", "/otel/v1/traces", body, {"Content-Type": "application/x-protobuf"})
        response = conn.getresponse()
        return response.status, response.getheader("Retry-After"), response.read()
    finally:
        conn.close()


def test_busy_export_is_retried_later(budget_server, s3, db):
    store = Store(s3, db, budget_server.bucket)
    trace = os.urandom(16)
    body = proto_request(proto_span(trace, os.urandom(8), "big", text="z" * (4 * MIB))).SerializeToString()
    before = store.snapshot()
    held, rest = hold_most_of_the_budget(budget_server, b'{"post":[' + big_run(MAX_RUN - MIB) + b"]}")
    status, retry_after, answer = export(budget_server, body)
    assert status == 503, answer[:300]
    assert retry_after == "2"
    assert "busy" in Status.FromString(answer).message
    store.assert_unchanged(before, timeout=5)
    budget_server.client.send_chunk(held, rest)
    assert budget_server.client.finish(held).status == 202
    status, _, answer = export(budget_server, body)
    assert status == 200, answer[:300]
    assert ExportTraceServiceResponse.FromString(answer) == ExportTraceServiceResponse()
