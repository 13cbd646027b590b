"""Span and trace ids as run ids, by the rule LangSmith uses (README "OpenTelemetry"): the trace
id's 16 bytes are the run's trace_id; a span id's 8 bytes, right-aligned in 16 zero bytes, are its
run's id (LangSmith's collector proxy's idToUUID, its JS SDK's getUuidFromOtelSpanId)."""

from __future__ import annotations

import uuid

from opentelemetry.proto.trace.v1.trace_pb2 import Span

_SPAN_ID_PAD = bytes(8)


def trace_uuid(trace_id: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=trace_id)


def span_uuid(span_id: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=_SPAN_ID_PAD + span_id)


def trace_text(trace_id: bytes) -> str:
    """str(trace_uuid(trace_id)), without the UUID (this is per span)."""
    h = trace_id.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def span_text(span_id: bytes) -> str:
    """str(span_uuid(span_id)), without the UUID."""
    h = span_id.hex()
    return f"00000000-0000-0000-{h[:4]}-{h[4:]}"


def span_fault(span: Span) -> str | None:
    """Why the span's ids cannot make a run, or None."""
    if len(span.trace_id) != 16 or not any(span.trace_id):
        return "trace_id must be 16 bytes, not all zero"
    if len(span.span_id) != 8 or not any(span.span_id):
        return "span_id must be 8 bytes, not all zero"
    if span.parent_span_id and len(span.parent_span_id) != 8:
        return "parent_span_id must be empty or 8 bytes"
    return None


def parent_of(span: Span, attrs: dict) -> str | None:
    """The span's parent run: none for a root (no parent span, or ``langsmith.is_root`` true, as
    LangSmith's collector proxy reads it)."""
    if not span.parent_span_id or attrs.get("langsmith.is_root") is True:
        return None
    return span_text(span.parent_span_id)
