"""OTLP/HTTP bodies and answers, in its two encodings: binary protobuf and the OTLP JSON encoding
(hex ids, lowerCamelCase names, 64-bit integers as strings), both through the official generated
classes (opentelemetry-proto) on protobuf's upb backend. Answers are in the request's encoding:
an ExportTraceServiceResponse, or a google.rpc.Status for an error, as the specification says."""

from __future__ import annotations

import base64
import json

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from handler.base.errors import RunError

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
CONTENT_TYPES = (PROTOBUF, JSON)
# google.rpc.Code for an HTTP status, as the OTLP/HTTP answers name them.
_CODES = {400: 3, 401: 16, 404: 5, 408: 4, 409: 6, 413: 8, 415: 3, 429: 8, 500: 13, 503: 14}
_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def decode(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    """The request, or RunError 400 saying why it does not parse."""
    request = ExportTraceServiceRequest()
    if content_type == PROTOBUF:
        try:
            request.ParseFromString(body)
        except (DecodeError, RecursionError, ValueError) as e:
            raise RunError(400, f"the body is not an OTLP ExportTraceServiceRequest: {e}") from None
        return request
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise RunError(400, f"the body is not JSON: {e}") from None
    if not isinstance(document, dict):
        raise RunError(400, "the body must be a JSON object (an ExportTraceServiceRequest)")
    try:
        _ids_to_base64(document)
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
        # Through the binary form once: the same nesting limit as a protobuf body (upb's decoder).
        return ExportTraceServiceRequest.FromString(request.SerializeToString())
    except (json_format.ParseError, DecodeError, RecursionError, ValueError, TypeError, AttributeError) as e:
        raise RunError(400, f"the body is not an OTLP ExportTraceServiceRequest: {_first_line(e)}") from None


def _ids_to_base64(document: dict) -> None:
    """The OTLP JSON encoding writes trace and span ids in hex where protobuf's JSON mapping has
    base64: rewrite them (in spans and their links) before the generic parser sees them."""
    for resource_spans in _list(document, "resourceSpans", "resource_spans"):
        for scope_spans in _list(resource_spans, "scopeSpans", "scope_spans"):
            for span in _list(scope_spans, "spans"):
                _hex_ids(span)
                for link in _list(span, "links"):
                    _hex_ids(link)


def _list(parent, *names: str) -> list:
    if not isinstance(parent, dict):
        raise ValueError("an object was expected")
    for name in names:
        items = parent.get(name)
        if items is not None:
            if not isinstance(items, list):
                raise ValueError(f"{name} must be an array")
            return items
    return []


def _hex_ids(item) -> None:
    if not isinstance(item, dict):
        raise ValueError("a span or link must be an object")
    for name in _ID_FIELDS:
        text = item.get(name)
        if text is None:
            continue
        if not isinstance(text, str):
            raise ValueError(f"{name} must be a hex string")
        try:
            item[name] = base64.b64encode(bytes.fromhex(text)).decode()
        except ValueError:
            raise ValueError(f"{name} is not hex: {text[:40]!r}") from None


def _first_line(error: Exception) -> str:
    return (str(error).splitlines() or ["invalid"])[0][:300]


def response(content_type: str, rejected: int, message: str) -> bytes:
    answer = ExportTraceServiceResponse()
    if rejected or message:
        answer.partial_success.rejected_spans = rejected
        answer.partial_success.error_message = message
    if content_type == PROTOBUF:
        return answer.SerializeToString()
    return json_format.MessageToJson(answer, indent=None).encode()


def status(content_type: str, error: RunError) -> bytes:
    """An error's answer: a google.rpc.Status (in JSON also with the "error" every route has)."""
    message = Status(code=_CODES.get(error.status, 2), message=error.reason)
    if content_type == PROTOBUF:
        return message.SerializeToString()
    return json.dumps({"code": message.code, "message": error.reason, "error": error.reason}).encode()
