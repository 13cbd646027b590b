"""OTLP values as JSON holds them: attribute values (AnyValue), JSON kept in strings, and unix
nanoseconds as ISO 8601 times. Called for every attribute of every span, so written for speed."""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime

import orjson
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

_STRING = "string_value"
_SECONDS: dict[int, tuple[str, str]] = {}  # unix second -> its texts (a batch's spans share a few)
_MAX_SECONDS = 4096


def value(v: AnyValue, kind: str | None = None):
    """An attribute value as JSON can hold it: bytes as base64, a non-finite double as its name."""
    kind = kind or v.WhichOneof("value")
    if kind == _STRING:
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "double_value":
        d = v.double_value
        return d if math.isfinite(d) else str(d)
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return None


def attributes(kvs) -> dict:
    """Key-value pairs as a dict (a key repeated: the last one wins)."""
    out = {}
    for kv in kvs:
        v = kv.value
        kind = v.WhichOneof("value")
        out[kv.key] = v.string_value if kind == _STRING else value(v, kind)
    return out


def as_json(v):
    """A string that holds a JSON object or array, as that JSON; anything else as it is."""
    if isinstance(v, str) and v[:1] in ("{", "["):
        try:
            return orjson.loads(v)
        except orjson.JSONDecodeError:  # not JSON (or numbers past 64 bits): kept as the string
            return v
    return v


def second(seconds: int) -> tuple[str, str]:
    """A unix second as ``YYYY-MM-DDTHH:MM:SS`` and as ``YYYYMMDDTHHMMSS`` (UTC), remembered."""
    texts = _SECONDS.get(seconds)
    if texts is None:
        if len(_SECONDS) >= _MAX_SECONDS:
            _SECONDS.clear()
        moment = datetime.fromtimestamp(seconds, UTC)
        texts = _SECONDS[seconds] = (f"{moment:%Y-%m-%dT%H:%M:%S}", f"{moment:%Y%m%dT%H%M%S}")
    return texts


def iso(nanos: int) -> str:
    """Unix nanoseconds as an ISO 8601 UTC time, to the microsecond (as datetime.isoformat writes
    it: no fraction when the microseconds are zero)."""
    seconds, micros = divmod(nanos // 1000, 1_000_000)
    text = second(seconds)[0]
    return f"{text}.{micros:06d}+00:00" if micros else f"{text}+00:00"


def compact(nanos: int) -> str:
    """Unix nanoseconds as dotted_order writes a time: ``%Y%m%dT%H%M%S%f``."""
    seconds, micros = divmod(nanos // 1000, 1_000_000)
    return f"{second(seconds)[1]}{micros:06d}"
