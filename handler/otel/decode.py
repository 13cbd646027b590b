"""OTLP/HTTP bodies and answers, in its two encodings: binary protobuf and the OTLP JSON encoding
(hex ids, lowerCamelCase names, 64-bit integers as strings), both through the official generated
classes (opentelemetry-proto) on protobuf's upb backend. Answers are in the request's encoding:
an ExportTraceServiceResponse, or a google.rpc.Status for an error, as the specification says."""

from __future__ import annotations

import base64
import binascii
import functools
import json

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
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
        request = ExportTraceServiceRequest(**_fields(ExportTraceServiceRequest.DESCRIPTOR, document))
        # Through the binary form once: the same nesting limit as a protobuf body (upb's decoder).
        return ExportTraceServiceRequest.FromString(request.SerializeToString())
    except (DecodeError, RecursionError, ValueError, TypeError) as e:
        raise RunError(400, f"the body is not an OTLP ExportTraceServiceRequest: {_first_line(e)}") from None


# The OTLP JSON encoding is protobuf's JSON mapping (lowerCamelCase or original field names, 64-bit
# integers as strings or numbers, enums as numbers or names, unknown fields ignored, null as unset)
# but for trace and span ids, which are hex, not base64. A document becomes the generated class's
# constructor arguments, field by field as the descriptors say; the C-backed constructor checks
# types and ranges. (json_format.ParseDict does the same in pure Python, ~5x slower.)
_HEX_IDS = frozenset({"trace_id", "span_id", "parent_span_id"})
_INTEGERS = frozenset(
    {
        FieldDescriptor.CPPTYPE_INT32,
        FieldDescriptor.CPPTYPE_INT64,
        FieldDescriptor.CPPTYPE_UINT32,
        FieldDescriptor.CPPTYPE_UINT64,
    }
)
_FLOATS = frozenset({FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT})
_UNKNOWN = object()  # an enum name this version does not know
_PLANS: dict = {}  # message descriptor -> {JSON key: (field name, converter, repeated)}


def _fields(descriptor, document) -> dict:
    """A JSON object as keyword arguments of the message's constructor."""
    if not isinstance(document, dict):
        raise TypeError(f"{descriptor.name} must be a JSON object")
    plan = _PLANS.get(descriptor) or _plan(descriptor)
    kwargs = {}
    for key, item in document.items():
        step = plan.get(key)
        if step is None or item is None:  # an unknown field, or null: unset
            continue
        name, convert, repeated = step
        if repeated:
            if not isinstance(item, list):
                raise TypeError(f"{key} must be an array")
            kwargs[name] = [x for x in map(convert, item) if x is not _UNKNOWN]
        else:
            item = convert(item)
            if item is not _UNKNOWN:
                kwargs[name] = item
    return kwargs


def _plan(descriptor) -> dict:
    plan = {}
    for field in descriptor.fields:
        step = (field.name, _converter(field), _repeated(field))
        plan[field.name] = plan[field.camelcase_name] = plan[field.json_name] = step
    _PLANS[descriptor] = plan
    return plan


def _repeated(field) -> bool:
    is_repeated = getattr(field, "is_repeated", None)  # protobuf 7 has no label
    return is_repeated if is_repeated is not None else field.label == FieldDescriptor.LABEL_REPEATED


def _converter(field):
    kind = field.cpp_type
    if kind == FieldDescriptor.CPPTYPE_MESSAGE:
        return functools.partial(_fields, field.message_type)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return _hex if field.name in _HEX_IDS else _base64
    if kind == FieldDescriptor.CPPTYPE_STRING:
        return _string
    if kind in _INTEGERS:
        return _integer
    if kind in _FLOATS:
        return _float
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        return _bool
    return functools.partial(_enum, frozenset(field.enum_type.values_by_name))


def _string(v):
    if not isinstance(v, str):
        raise TypeError("a string was expected")
    return v


def _hex(v):
    if not isinstance(v, str):
        raise TypeError("an id must be a hex string")
    try:
        return bytes.fromhex(v)
    except ValueError:
        raise ValueError(f"an id is not hex: {v[:40]!r}") from None


def _base64(v):
    if not isinstance(v, str):
        raise TypeError("bytes must be a base64 string")
    try:  # standard or URL-safe alphabet, padding optional, as protobuf's JSON mapping reads it
        return base64.b64decode(v.replace("-", "+").replace("_", "/") + "=" * (-len(v) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"not base64: {v[:40]!r}") from None


def _integer(v):
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        return int(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    raise TypeError("an integer was expected")


def _float(v):
    if isinstance(v, int | float) and not isinstance(v, bool):
        return v
    if isinstance(v, str):  # "NaN", "Infinity", "-Infinity", or a number as a string
        return float(v)
    raise TypeError("a number was expected")


def _bool(v):
    if not isinstance(v, bool):
        raise TypeError("true or false was expected")
    return v


def _enum(names: frozenset, v):
    """A number, or a name (one this version does not know: unset, as ParseDict's
    ignore_unknown_fields has it)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        return v if v in names else _UNKNOWN
    raise TypeError("an enum must be a number or a name")


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
