"""The OTLP JSON encoding decoded through the generated classes' constructors (handler/otel/decode.py)
gives the very message protobuf's own JSON parser (json_format.ParseDict, ids rewritten from hex)
gives, for every field kind of a trace export; and what that parser refuses, it refuses. Also the
span times as values.py writes them. No server."""

from __future__ import annotations

import base64
import copy
import json

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from handler.base.errors import RunError
from handler.otel.decode import JSON, decode
from tests.otel import json_request, json_span

TRACE, SPAN, PARENT = "5b8aa5a2d2c872e8321cf37308d69df2", "051581bf3cb55c13", "eee19b7ec3c1b174"


def reference(document: dict) -> ExportTraceServiceRequest:
    """protobuf's JSON mapping, with the OTLP encoding's hex ids made base64 first."""
    document = copy.deepcopy(document)
    for rs in document.get("resourceSpans", document.get("resource_spans", [])):
        for ss in rs.get("scopeSpans", rs.get("scope_spans", [])):
            for span in ss.get("spans", []):
                for item in (span, *span.get("links", [])):
                    for key in ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"):
                        if isinstance(item.get(key), str):
                            item[key] = base64.b64encode(bytes.fromhex(item[key])).decode()
    return json_format.ParseDict(document, ExportTraceServiceRequest(), ignore_unknown_fields=True)


def every_kind() -> dict:
    span = json_span(TRACE, SPAN, "all", 1_700_000_000_123_456_789, PARENT, s="x", i=2**62, f=0.5, b=True)
    span["attributes"] += [
        {"key": "bytes", "value": {"bytesValue": base64.b64encode(b"\x00\xff raw").decode()}},
        {"key": "urlsafe", "value": {"bytesValue": "-_8"}},
        {"key": "nan", "value": {"doubleValue": "NaN"}},
        {"key": "inf", "value": {"doubleValue": "-Infinity"}},
        {"key": "int number", "value": {"intValue": -7}},
        {"key": "empty", "value": {}},
        {"key": "list", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "1"}]}}},
        {"key": "map", "value": {"kvlistValue": {"values": [{"key": "k", "value": {"boolValue": False}}]}}},
    ]
    span.update(
        kind="SPAN_KIND_CLIENT",  # enums by name or by number; a name not known: unset
        status={"code": "NO_SUCH_CODE", "message": "boom"},
        traceState="a=b",
        flags=257,
        droppedAttributesCount=3,
        dropped_events_count=1,  # original field names too
        unknownField={"ignored": True},
        events=[{"timeUnixNano": "1700000000200000000", "name": "exception", "attributes": []}],
        links=[{"traceId": TRACE, "spanId": PARENT, "attributes": [], "flags": 1}],
    )
    child = json_span(TRACE, PARENT, "root", 1_700_000_000_000_000_000, status=None)
    child["parentSpanId"] = None  # null: unset
    document = json_request(span, child, resource={"service.name": "svc"})
    document["resourceSpans"][0]["schemaUrl"] = "https://opentelemetry.io/schemas/1.26.0"
    document["resourceSpans"][0]["scopeSpans"][0]["scope"] = {
        "name": "lib",
        "version": "1.0",
        "attributes": [{"key": "a", "value": {"stringValue": "b"}}],
        "droppedAttributesCount": 0,
    }
    return document


@pytest.mark.parametrize(
    "document",
    [
        every_kind(),
        json_request(json_span(TRACE, SPAN, "plain", 1)),
        {"resource_spans": [{"scope_spans": [{"spans": [json_span(TRACE, SPAN, "snake", 5)]}]}]},
        {},
        {"resourceSpans": []},
    ],
)
def test_json_decodes_as_protobufs_parser(document):
    expected = reference(document)
    got = decode(json.dumps(document).encode(), JSON)
    assert got == expected
    assert got.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


def spans_with(**fields) -> dict:
    span = json_span(TRACE, SPAN, "x", 1)
    span.update(fields)
    return json_request(span)


@pytest.mark.parametrize(
    "document",
    [
        spans_with(traceId=5),
        spans_with(spanId="zz"),
        spans_with(startTimeUnixNano="abc"),
        spans_with(startTimeUnixNano=str(2**64)),
        spans_with(startTimeUnixNano=-1),
        spans_with(droppedAttributesCount=True),
        spans_with(kind=[1]),
        spans_with(name=5),
        spans_with(status=5),
        spans_with(attributes="x"),
        spans_with(attributes=[{"key": "k", "value": {"intValue": "1.5"}}]),
        spans_with(attributes=[{"key": "k", "value": {"bytesValue": "not base64!"}}]),
        spans_with(attributes=[{"key": "k", "value": {"boolValue": "true"}}]),
        spans_with(attributes=[{"key": "k", "value": {"doubleValue": "x"}}]),
        {"resourceSpans": "x"},
        {"resourceSpans": [{"scopeSpans": [{"spans": ["x"]}]}]},
    ],
)
def test_json_refused_as_protobufs_parser_refuses(document):
    with pytest.raises((json_format.ParseError, ValueError, AttributeError)):  # (or its hex step)
        reference(document)
    with pytest.raises(RunError) as refused:
        decode(json.dumps(document).encode(), JSON)
    assert refused.value.status == 400 and "ExportTraceServiceRequest" in refused.value.reason


def test_a_string_for_an_object_refused():
    """Stricter than ParseDict, which takes a string where an AnyValue object belongs as unset."""
    with pytest.raises(RunError):
        decode(json.dumps(spans_with(attributes=[{"key": "k", "value": "x"}])).encode(), JSON)


def test_times_as_datetime_writes_them():
    """values.iso and values.compact (a per-second cache) write what datetime writes, for whole
    seconds, the edges of unix nanoseconds and seeded random ones."""
    import random
    from datetime import UTC, datetime, timedelta

    from handler.otel.values import compact, iso

    rng = random.Random(21)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for nanos in [0, 1, 999, 1000, 10**18, 1_760_000_000_123_456_789, 2**64 - 1] + [
        rng.randrange(2**64) for _ in range(2000)
    ]:
        moment = epoch + timedelta(microseconds=nanos // 1000)
        assert iso(nanos) == moment.isoformat(), nanos
        assert compact(nanos) == f"{moment:%Y%m%dT%H%M%S%f}", nanos
