"""Helpers for the OTLP tests: OpenTelemetry SDK providers pointed at a server, OTLP JSON bodies
written by hand, and the run ids the README's rule gives."""

from __future__ import annotations

import gzip
import json
import os
import uuid

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

from tests.client import HttpClient
from tests.server import Server


def run_id(span_id: int | str) -> str:
    """The README's rule: a span id's 8 bytes right-aligned in 16 zero bytes."""
    text = span_id if isinstance(span_id, str) else f"{span_id:016x}"
    return str(uuid.UUID("0" * 16 + text))


def trace_uuid(trace_id: int | str) -> str:
    text = trace_id if isinstance(trace_id, str) else f"{trace_id:032x}"
    return str(uuid.UUID(text))


def provider(
    server: Server,
    simple: bool = False,
    path: str = "/otel/v1/traces",
    headers: dict | None = None,
    compression: Compression = Compression.NoCompression,
    **resource: str,
) -> TracerProvider:
    """A TracerProvider exporting over OTLP/HTTP protobuf to ``server``: SimpleSpanProcessor (each
    span its own export, as it ends: children before their parents) or BatchSpanProcessor."""
    url = f"http://{server.client.host}:{server.client.port}{path}"
    exporter = OTLPSpanExporter(endpoint=url, headers=headers or {}, compression=compression, timeout=30)
    tp = TracerProvider(resource=Resource.create({"service.name": "otel-test", **resource}))
    tp.add_span_processor(SimpleSpanProcessor(exporter) if simple else BatchSpanProcessor(exporter))
    return tp


def any_value(v) -> dict:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, list):
        return {"arrayValue": {"values": [any_value(x) for x in v]}}
    if isinstance(v, dict):
        return {"kvlistValue": {"values": [{"key": k, "value": any_value(x)} for k, x in v.items()]}}
    return {"stringValue": v}


def json_span(trace_id: str, span_id: str, name: str, start: int, parent: str = "", **attrs) -> dict:
    """A span in the OTLP JSON encoding: hex ids, lowerCamelCase, 64-bit integers as strings."""
    return {
        "traceId": trace_id,
        "spanId": span_id,
        "parentSpanId": parent,
        "name": name,
        "kind": 1,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + 1_000_000),
        "attributes": [{"key": k, "value": any_value(v)} for k, v in attrs.items()],
        "status": {},
    }


def json_request(*spans: dict, resource: dict | None = None) -> dict:
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": k, "value": any_value(v)} for k, v in (resource or {}).items()]
                },
                "scopeSpans": [{"scope": {"name": "hand-written", "version": "1"}, "spans": list(spans)}],
            }
        ]
    }


def post_json(
    client: HttpClient,
    document: dict,
    gzipped: bool = True,
    headers: dict | None = None,
    path="/otel/v1/traces",
):
    body = json.dumps(document).encode()
    extra = {"Content-Encoding": "gzip"} if gzipped else {}
    return client.post(
        gzip.compress(body) if gzipped else body, path, "application/json", {**extra, **(headers or {})}
    )


def random_hex(n: int) -> str:
    return os.urandom(n).hex()
