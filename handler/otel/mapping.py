"""One OTLP span as one run: its ids, times, status, events, run type, inputs and outputs, model,
parameters and token usage, after the conventions LangSmith, the OpenTelemetry GenAI semantic
conventions, OpenInference and Traceloop (OpenLLMetry) use. Nothing is dropped: every attribute that
no rule takes goes to the run's metadata, with the resource's attributes and the scope.

The README's "OpenTelemetry" section has the table; the rules here are the table's.
"""

from __future__ import annotations

import base64
import math
import re
import uuid
from datetime import UTC, datetime, timedelta

import orjson
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

# Span ids become run ids as LangSmith makes them (its collector proxy's idToUUID, its JS SDK's
# getUuidFromOtelSpanId): the 8 bytes right-aligned in 16 zero bytes.
_SPAN_ID_PAD = bytes(8)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}

# run_type, in this order: langsmith.span.kind, gen_ai.operation.name, openinference.span.kind,
# traceloop.span.kind; otherwise chain.
_RUN_TYPES = frozenset({"tool", "chain", "llm", "retriever", "embedding", "prompt", "parser"})
_GEN_AI_OPERATIONS = {
    "chat": "llm",
    "text_completion": "llm",
    "generate_content": "llm",
    "completion": "llm",
    "embeddings": "embedding",
    "embedding": "embedding",
    "execute_tool": "tool",
    "invoke_agent": "chain",
    "create_agent": "chain",
}
_OPENINFERENCE_KINDS = {
    "LLM": "llm",
    "EMBEDDING": "embedding",
    "RETRIEVER": "retriever",
    "TOOL": "tool",
    "CHAIN": "chain",
    "AGENT": "chain",
    "RERANKER": "retriever",
    "GUARDRAIL": "chain",
    "EVALUATOR": "chain",
    "PROMPT": "prompt",
}
_TRACELOOP_KINDS = {"workflow": "chain", "task": "chain", "agent": "chain", "tool": "tool", "llm": "llm"}

# Where a run's model, provider, parameters and tokens are found, first found wins.
_MODEL = ("gen_ai.request.model", "gen_ai.response.model", "llm.model_name")
_PROVIDER = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
_INPUT_TOKENS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt")
_OUTPUT_TOKENS = (
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.token_count.completion",
)
_TOTAL_TOKENS = ("gen_ai.usage.total_tokens", "llm.usage.total_tokens", "llm.token_count.total")
_REQUEST_PARAM = "gen_ai.request."
# gen_ai.prompt.0.role, llm.input_messages.0.message.content ...
_INDEXED = re.compile(
    r"(gen_ai\.prompt|gen_ai\.completion|llm\.input_messages|llm\.output_messages)\.(\d+)\.(.+)"
)
_INDEXED_PREFIXES = ("gen_ai.prompt.", "gen_ai.completion.", "llm.input_messages.", "llm.output_messages.")
_MESSAGE_PREFIX = "message."


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


def value(v: AnyValue):
    """An attribute value as JSON can hold it: bytes as base64, a non-finite double as its name."""
    kind = v.WhichOneof("value")
    if kind == "string_value":
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
    return {kv.key: value(kv.value) for kv in kvs}


def as_json(v):
    """A string that holds a JSON object or array, as that JSON; anything else as it is."""
    if isinstance(v, str) and v[:1] in ("{", "["):
        try:
            return orjson.loads(v)
        except orjson.JSONDecodeError:  # not JSON (or numbers past 64 bits): kept as the string
            return v
    return v


def iso(nanos: int) -> str:
    """Unix nanoseconds as an ISO 8601 UTC time, to the microsecond."""
    return (_EPOCH + timedelta(microseconds=nanos // 1000)).isoformat()


def run_type_of(attrs: dict) -> str:
    kind = attrs.get("langsmith.span.kind")
    if isinstance(kind, str) and kind.lower() in _RUN_TYPES:
        return kind.lower()
    operation = attrs.get("gen_ai.operation.name")
    if isinstance(operation, str) and operation.lower() in _GEN_AI_OPERATIONS:
        return _GEN_AI_OPERATIONS[operation.lower()]
    kind = attrs.get("openinference.span.kind")
    if isinstance(kind, str) and kind.upper() in _OPENINFERENCE_KINDS:
        return _OPENINFERENCE_KINDS[kind.upper()]
    kind = attrs.get("traceloop.span.kind")
    if isinstance(kind, str) and kind.lower() in _TRACELOOP_KINDS:
        return _TRACELOOP_KINDS[kind.lower()]
    return "chain"


class SpanRun:
    """The run one span makes, as a dict ready for json.dumps; ``taken`` are the attributes a rule
    used, the rest go to metadata."""

    def __init__(self, span: Span, resource: dict, scope: dict, project: str | None) -> None:
        self.span = span
        self.attrs = attributes(span.attributes)
        self.taken: set[str] = set()
        self.resource = resource
        self.scope = scope
        self.project = project
        self._indexed: dict | None = None  # the indexed message attributes, by prefix

    def take(self, key: str):
        if key in self.attrs:
            self.taken.add(key)
            return self.attrs[key]
        return None

    def first(self, keys: tuple[str, ...]):
        for key in keys:
            if self.attrs.get(key) is not None:
                return self.take(key)
        return None

    def build(self, parent: str | None) -> dict:
        """The run's fields; ``parent``, its parent run's id (text), or None for a root."""
        span, attrs = self.span, self.attrs
        run: dict = {
            "id": span_text(span.span_id),
            "trace_id": trace_text(span.trace_id),
            "name": self._name(),
            "run_type": run_type_of(attrs),
            "start_time": iso(span.start_time_unix_nano),
        }
        self.taken.update(("langsmith.span.kind", "langsmith.is_root"))
        if span.end_time_unix_nano:
            run["end_time"] = iso(span.end_time_unix_nano)
        if parent is not None:
            run["parent_run_id"] = parent
        project = (
            self.project
            or self.take("langsmith.trace.session_name")
            or self.resource.get("langsmith.project")
        )
        run["session_name"] = project if isinstance(project, str) and project else "default"
        inputs, outputs = self._inputs(), self._outputs()
        usage = self._usage()
        if usage:
            outputs = dict(outputs or {})
            outputs.setdefault("usage_metadata", usage)
        if inputs is not None:
            run["inputs"] = inputs
        if outputs is not None:
            run["outputs"] = outputs
        error = self._error()
        if error is not None:
            run["error"] = error
        if span.events:
            run["events"] = [
                {"name": e.name, "time": iso(e.time_unix_nano), "kwargs": attributes(e.attributes)}
                for e in span.events
            ]
        tags = self.take("langsmith.span.tags")
        if isinstance(tags, str):
            tags = [t.strip() for t in tags.split(",") if t.strip()]
        if isinstance(tags, list) and all(isinstance(t, str) for t in tags):
            run["tags"] = tags
        elif tags is not None:
            self.taken.discard("langsmith.span.tags")
        run["extra"] = self._extra()
        return run

    def _name(self) -> str:
        for key in ("langsmith.trace.name", "traceloop.entity.name"):
            name = self.attrs.get(key)
            if isinstance(name, str) and name:
                self.taken.add(key)
                return name
        return self.span.name

    def _inputs(self):
        # The langsmith SDK: the run's whole inputs as one JSON string.
        whole = self.attrs.get("gen_ai.prompt")
        if whole is not None:
            return _object(self.take("gen_ai.prompt"), "input")
        messages = self._messages("gen_ai.prompt") or self._messages("llm.input_messages")
        if messages:
            return {"messages": messages}
        for key in ("gen_ai.input.messages",):
            if key in self.attrs:
                inputs = {"messages": as_json(self.take(key))}
                system = self.take("gen_ai.system_instructions")
                if system is not None:
                    inputs["system"] = as_json(system)
                return inputs
        for key in ("input.value", "traceloop.entity.input"):
            if key in self.attrs:
                self.take("input.mime_type")
                return _object(self.take(key), "input")
        return None

    def _outputs(self):
        whole = self.attrs.get("gen_ai.completion")
        if whole is not None:
            return _object(self.take("gen_ai.completion"), "output")
        messages = self._messages("gen_ai.completion") or self._messages("llm.output_messages")
        if messages:
            return {"messages": messages}
        if "gen_ai.output.messages" in self.attrs:
            return {"messages": as_json(self.take("gen_ai.output.messages"))}
        for key in ("output.value", "traceloop.entity.output"):
            if key in self.attrs:
                self.take("output.mime_type")
                return _object(self.take(key), "output")
        return None

    def _messages(self, prefix: str) -> list | None:
        """``<prefix>.N.<field>`` attributes (``message.`` before the field optional) as a list of
        message objects, in N's order."""
        if self._indexed is None:  # one pass over the attributes for the four prefixes
            self._indexed = {}
            for key, v in self.attrs.items():
                if key.startswith(_INDEXED_PREFIXES):
                    match = _INDEXED.fullmatch(key)
                    if match is not None:
                        self._indexed.setdefault(match.group(1), []).append((key, match, v))
        items = self._indexed.get(prefix)
        if not items:
            return None
        found: dict[int, dict] = {}
        for key, match, v in items:
            field = match.group(3)
            if field.startswith(_MESSAGE_PREFIX):
                field = field[len(_MESSAGE_PREFIX) :]
            _set_path(found.setdefault(int(match.group(2)), {}), field.split("."), as_json(v))
            self.taken.add(key)
        return [found[i] for i in sorted(found)]

    def _usage(self) -> dict:
        usage = {}
        for name, keys in (
            ("input_tokens", _INPUT_TOKENS),
            ("output_tokens", _OUTPUT_TOKENS),
            ("total_tokens", _TOTAL_TOKENS),
        ):
            tokens = self.first(keys)
            if isinstance(tokens, int | float) and not isinstance(tokens, bool):
                usage[name] = tokens
        if usage and "total_tokens" not in usage and {"input_tokens", "output_tokens"} <= usage.keys():
            usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        return usage

    def _error(self) -> str | None:
        status = self.span.status
        if status.code != Status.STATUS_CODE_ERROR:
            return None
        for event in self.span.events:
            if event.name == "exception":
                e = attributes(event.attributes)
                kind, message = e.get("exception.type"), e.get("exception.message")
                text = (
                    f"{kind}: {message}"
                    if kind and message
                    else str(kind or message or status.message or "error")
                )
                stack = e.get("exception.stacktrace")
                return f"{text}\n\n{stack}" if stack else text
        return status.message or "error"

    def _extra(self) -> dict:
        metadata: dict = {}
        model = self.first(_MODEL)
        if model is not None:
            metadata["ls_model_name"] = model
        provider = self.first(_PROVIDER)
        if provider is not None:
            metadata["ls_provider"] = provider
        params: dict = {}
        raw = self.attrs.get("llm.invocation_parameters")
        parsed = as_json(raw)
        if isinstance(parsed, dict):
            self.taken.add("llm.invocation_parameters")
            params.update(parsed)
        for key, v in self.attrs.items():
            if key.startswith(_REQUEST_PARAM) and key not in self.taken:
                params[key[len(_REQUEST_PARAM) :]] = v
                self.taken.add(key)
        if model is not None:
            params.setdefault("model", model)
        for key, v in self.attrs.items():
            if key in self.taken:
                continue
            if key.startswith("langsmith.metadata."):
                metadata[key[len("langsmith.metadata.") :]] = as_json(v)
            else:
                metadata[key] = as_json(v)
        span = self.span
        otel: dict = {
            "trace_id": span.trace_id.hex(),
            "span_id": span.span_id.hex(),
            "span_kind": _KINDS.get(span.kind, str(span.kind)),
        }
        if span.parent_span_id:
            otel["parent_span_id"] = span.parent_span_id.hex()
        if span.trace_state:
            otel["trace_state"] = span.trace_state
        if span.status.code or span.status.message:
            otel["status"] = {"code": span.status.code, "message": span.status.message}
        if span.links:
            otel["links"] = [
                {
                    "trace_id": link.trace_id.hex(),
                    "span_id": link.span_id.hex(),
                    "attributes": attributes(link.attributes),
                }
                for link in span.links
            ]
        dropped = span.dropped_attributes_count + span.dropped_events_count + span.dropped_links_count
        if dropped:
            otel["dropped"] = {
                "attributes": span.dropped_attributes_count,
                "events": span.dropped_events_count,
                "links": span.dropped_links_count,
            }
        otel["resource"] = self.resource
        otel["scope"] = self.scope
        if "otel" in metadata:  # a span attribute of that name: kept, inside
            otel["attribute"] = metadata["otel"]
        metadata["otel"] = otel
        extra: dict = {"metadata": metadata}
        if params:
            extra["invocation_params"] = params
        return extra


def _object(v, key: str):
    """inputs and outputs are objects: JSON that is one stays one, anything else is wrapped."""
    v = as_json(v)
    return v if isinstance(v, dict) else {key: v}


def _set_path(target: dict, path: list[str], v) -> None:
    """``tool_calls.0.function.name`` set as nested objects (indexes stay keys)."""
    for part in path[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = target[part] = {}
        target = nxt
    target[path[-1]] = v
