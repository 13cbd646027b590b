"""Hostile OTLP bodies: truncated or garbage protobuf, wrong JSON types, huge attributes, ids of the
wrong length, too many spans, bombs. Each gets a clear 4xx or a partial_success, never a 5xx, and a
refused request stores nothing."""

from __future__ import annotations

import gzip
import json
import os

import pytest
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from handler.server.auth import hash_key
from tests.otel import json_request, json_span, post_json, random_hex, trace_uuid
from tests.runs import list_trace
from tests.server import start_server

KEY = "otel-hostile-key"
AUTH = {"x-api-key": KEY}
PROTOBUF = "application/x-protobuf"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Small limits, and API keys."""
    srv = start_server(
        tmp_path_factory.mktemp("otel-hostile"),
        "otel-hostile",
        API_KEYS=f"hostile:{hash_key(KEY)}",
        OTLP_MAX_BODY_BYTES="200000",
        MAX_RUN_BYTES="4000",
        MAX_RUNS_PER_BATCH="50",
    )
    yield srv
    srv.stop()
    log = open(srv.log_path).read()
    assert "unexpected error" not in log and "Traceback" not in log, log[-3000:]
    assert srv.process.returncode == 0


def proto_span(trace: bytes, span: bytes, name: str = "s", parent: bytes = b"", **attrs) -> Span:
    return Span(
        trace_id=trace,
        span_id=span,
        parent_span_id=parent,
        name=name,
        start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_000_100_000_000,
        attributes=[KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attrs.items()],
    )


def proto_request(*spans: Span) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.extend(spans)
    return request


def post_proto(client, body: bytes, headers: dict | None = None):
    return client.post(body, "/otel/v1/traces", PROTOBUF, {**AUTH, **(headers or {})})


def refused(response, status: int, encoding: str = PROTOBUF) -> str:
    """The answer is ``status`` with a google.rpc.Status in the request's encoding: its message."""
    assert response.status == status, response.body
    if encoding == PROTOBUF:
        return Status.FromString(response.body).message
    return response.json()["message"]


def rows_of(store, trace: bytes) -> int:
    with store.db.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE trace_id = %s", (trace_uuid(trace.hex()),))
        return cur.fetchone()[0]


def test_truncated_protobuf_never_5xx(small, store):
    """Every cut of a valid body: 400 (nothing stored), or 200 where the cut falls between two
    whole spans (what came is stored, as the specification's parsers also read it)."""
    trace = os.urandom(16)
    body = proto_request(
        *(proto_span(trace, os.urandom(8), f"s{i}", x="y" * 50) for i in range(4))
    ).SerializeToString()
    before = store.snapshot()
    statuses = set()
    for cut in range(1, len(body), 7):
        response = post_proto(small.client, body[:cut])
        statuses.add(response.status)
        assert response.status in (200, 400), (cut, response.status, response.body)
        if response.status == 400:
            assert "ExportTraceServiceRequest" in Status.FromString(response.body).message
    assert 400 in statuses
    assert rows_of(store, trace) == 0  # a cut inside a span never stores a half
    store.assert_unchanged(before)


def test_garbage_protobuf(small, store):
    before = store.snapshot()
    for body in (b"\xff" * 100, b"\x0a\xff\xff\xff\xff\x0f", os.urandom(64) + b"\x0a\x80", b"{}"):
        response = post_proto(small.client, body)
        assert response.status in (200, 400), response.body
    refused(post_proto(small.client, b"\x0a\x05\x12\x03\x0a\x01"), 400)
    store.assert_unchanged(before)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'"a string"',
        b'{"resourceSpans": "x"}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 5}]}]}]}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "abc"}]}]}]}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"kind": [1]}]}]}]}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"attributes": "x"}]}]}]}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": ["x"]}]}]}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "\xff"}]}]}]}',
        b'{"resourceSpans": [' * 5000 + b"]}" * 5000,
    ],
)
def test_json_wrong_types(small, store, body):
    before = store.snapshot()
    response = small.client.post(body, "/otel/v1/traces", "application/json", AUTH)
    message = refused(response, 400, "application/json")
    assert response.json()["code"] == 3 and message
    store.assert_unchanged(before)


def test_lone_surrogates_in_json(small, store):
    """JSON escapes of half a surrogate pair, in a name and in an attribute: refused, not a 5xx."""
    trace, before = random_hex(16), store.snapshot()
    for span in (
        json_span(trace, random_hex(8), "\ud800 alone", 1),
        json_span(trace, random_hex(8), "fine", 1, note="\udc00 alone"),
    ):
        body = json.dumps(json_request(span)).encode()
        response = small.client.post(body, "/otel/v1/traces", "application/json", AUTH)
        assert response.status in (200, 400), response.body
        assert response.status == 400 or response.json()["partialSuccess"]["rejectedSpans"] == "1"
    store.assert_unchanged(before)


def _delimited(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (to build a nesting no generated class would accept)."""
    size, length = b"", len(payload)
    while True:
        byte, length = length & 0x7F, length >> 7
        size += bytes([byte | (0x80 if length else 0)])
        if not length:
            return bytes([field << 3 | 2]) + size + payload


def test_deep_attribute_nesting(small, store):
    """AnyValue nested past protobuf's recursion limit: 400; less deep: stored."""

    def body(trace: bytes, depth: int) -> bytes:
        value = AnyValue(string_value="leaf").SerializeToString()
        for _ in range(depth):  # AnyValue.array_value (5) -> ArrayValue.values (1)
            value = _delimited(5, _delimited(1, value))
        attribute = KeyValue(key="deep").SerializeToString() + _delimited(2, value)
        span = proto_span(trace, os.urandom(8)).SerializeToString() + _delimited(9, attribute)
        return _delimited(1, _delimited(2, _delimited(2, span)))  # resource_spans.scope_spans.spans

    trace = os.urandom(16)
    before = store.snapshot()
    refused(post_proto(small.client, body(trace, 200)), 400)
    deep = {"stringValue": "leaf"}
    for _ in range(200):
        deep = {"arrayValue": {"values": [deep]}}
    span = json_span(trace.hex(), os.urandom(8).hex(), "deep", 1)
    span["attributes"] = [{"key": "deep", "value": deep}]
    response = post_json(small.client, json_request(span), headers=AUTH)
    assert "ExportTraceServiceRequest" in refused(response, 400, "application/json")
    store.assert_unchanged(before)
    assert post_proto(small.client, body(trace, 20)).status == 200
    assert rows_of(store, trace) == 1


def test_spans_refused_one_by_one(small, store):
    """Huge attributes (a run over MAX_RUN_BYTES), ids of the wrong length, a name the field rules
    refuse: each such span is refused alone; the request's other spans are stored."""
    trace = os.urandom(16)
    spans = [
        proto_span(trace, os.urandom(8), "fine"),
        proto_span(trace, os.urandom(8), "huge", big="x" * 10_000),
        proto_span(trace, os.urandom(4), "short id"),
        proto_span(trace[:8], os.urandom(8), "short trace"),
        proto_span(trace, os.urandom(8), "long parent", parent=os.urandom(16)),
        proto_span(trace, bytes(8), "zero id"),
        proto_span(trace, os.urandom(8), "n" * 1025),
        proto_span(trace, os.urandom(8), "nul \x00 in name"),
    ]
    response = post_proto(small.client, proto_request(*spans).SerializeToString())
    assert response.status == 200, response.body
    answer = ExportTraceServiceResponse.FromString(response.body)
    assert answer.partial_success.rejected_spans == 7
    assert "larger than 4000 bytes" in answer.partial_success.error_message
    assert "and 2 more" in answer.partial_success.error_message
    assert [r["name"] for r in list_trace(small.client, trace_uuid(trace.hex()), headers=AUTH)] == ["fine"]


def test_odd_values_are_stored(small):
    """NaN and infinite doubles, bytes values, a parent cycle, a start of 0: stored, not refused."""
    trace = os.urandom(16)
    a, b = os.urandom(8), os.urandom(8)
    first = proto_span(trace, a, "a", parent=b)
    first.attributes.add(key="nan", value=AnyValue(double_value=float("nan")))
    first.attributes.add(key="inf", value=AnyValue(double_value=float("-inf")))
    first.attributes.add(key="raw", value=AnyValue(bytes_value=b"\x00\xff"))
    second = proto_span(trace, b, "b", parent=a)
    second.start_time_unix_nano = 0
    response = post_proto(small.client, proto_request(first, second).SerializeToString())
    assert (
        response.status == 200
        and ExportTraceServiceResponse.FromString(response.body).partial_success.rejected_spans == 0
    )
    runs = list_trace(small.client, trace_uuid(trace.hex()), headers=AUTH)
    assert sorted(r["name"] for r in runs) == ["a", "b"]
    run = small.client.get(f"/runs/{runs[0]['id'] if runs[0]['name'] == 'a' else runs[1]['id']}", AUTH).json()
    assert run["extra"]["metadata"]["nan"] == "nan" and run["extra"]["metadata"]["raw"] == "AP8="


def test_limits(small, store):
    before = store.snapshot()
    trace = os.urandom(16)
    many = proto_request(*(proto_span(trace, os.urandom(8)) for _ in range(51))).SerializeToString()
    assert "MAX_RUNS_PER_BATCH" in refused(post_proto(small.client, many), 413)
    big = proto_request(proto_span(trace, os.urandom(8), pad="x" * 250_000)).SerializeToString()
    assert "OTLP_MAX_BODY_BYTES" in refused(post_proto(small.client, big), 413)
    bomb = gzip.compress(b'{"resourceSpans": []}' + b" " * 5_000_000)
    response = small.client.post(
        bomb, "/otel/v1/traces", "application/json", {**AUTH, "Content-Encoding": "gzip"}
    )
    assert "OTLP_MAX_BODY_BYTES" in refused(response, 413, "application/json")
    assert "Content-Type" in refused(
        small.client.post(b"{}", "/otel/v1/traces", "text/plain", AUTH), 415, "json"
    )
    response = small.client.post(
        b"{}", "/otel/v1/traces", "application/json", {**AUTH, "Content-Encoding": "br"}
    )
    assert response.status == 415
    response = small.client.post(b"{}", "/otel/v1/traces", "application/json")
    assert refused(response, 401, "application/json")
    response = small.client.post(b"", "/otel/v1/traces", PROTOBUF)
    assert response.status == 401 and Status.FromString(response.body).code == 16
    store.assert_unchanged(before)


def test_ten_thousand_spans(server, client, store):
    """Ten thousand spans in one request, a chain ten thousand deep: all stored, each linked to its
    parent; dotted_order where it fits its limit."""
    trace = random_hex(16)
    ids = [random_hex(8) for _ in range(10_000)]
    spans = [json_span(trace, ids[0], "s0", 1_700_000_000_000_000_000)]
    spans += [
        json_span(trace, ids[i], f"s{i}", 1_700_000_000_000_000_000 + i, ids[i - 1]) for i in range(1, 10_000)
    ]
    before = store.snapshot()
    response = post_json(client, json_request(*reversed(spans)))
    assert response.status == 200, response.body
    assert response.json() == {}
    runs = list_trace(client, trace_uuid(trace), limit=1000)
    assert len(runs) == 10_000
    ordered = [r["name"] for r in runs if r["dotted_order"]]
    assert len(ordered) >= 30 and ordered == [f"s{i}" for i in range(len(ordered))]
    assert sum(1 for r in runs if r["parent_run_id"] is None) == 1
    rows, keys = store.snapshot()
    store.remove(rows - before[0], keys - before[1])


def test_json_body_answers_json(small):
    trace = random_hex(16)
    response = post_json(small.client, json_request(json_span(trace, random_hex(8), "x", 1)), headers=AUTH)
    assert response.status == 200 and json.loads(response.body) == {}
