"""One OTLP span as one run: its ids, times, status, events, run type, inputs and outputs, model,
parameters and token usage, by the conventions in conventions.py. Nothing is dropped: every
attribute that no rule takes goes to the run's metadata, with the resource's attributes and the
scope.
"""

from __future__ import annotations

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from handler.otel.conventions import (
    INDEXED,
    INDEXED_PREFIXES,
    KINDS,
    MESSAGE_PREFIX,
    METADATA,
    MODEL,
    NAMES,
    PROVIDER,
    REQUEST_PARAM,
    TOKENS,
    run_type_of,
)
from handler.otel.ids import span_text, trace_text
from handler.otel.values import as_json, attributes, iso


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
        for key in NAMES:
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
                if key.startswith(INDEXED_PREFIXES):
                    match = INDEXED.fullmatch(key)
                    if match is not None:
                        self._indexed.setdefault(match.group(1), []).append((key, match, v))
        items = self._indexed.get(prefix)
        if not items:
            return None
        found: dict[int, dict] = {}
        for key, match, v in items:
            field = match.group(3)
            if field.startswith(MESSAGE_PREFIX):
                field = field[len(MESSAGE_PREFIX) :]
            _set_path(found.setdefault(int(match.group(2)), {}), field.split("."), as_json(v))
            self.taken.add(key)
        return [found[i] for i in sorted(found)]

    def _usage(self) -> dict:
        usage = {}
        for name, keys in TOKENS:
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
        model = self.first(MODEL)
        if model is not None:
            metadata["ls_model_name"] = model
        provider = self.first(PROVIDER)
        if provider is not None:
            metadata["ls_provider"] = provider
        params: dict = {}
        raw = self.attrs.get("llm.invocation_parameters")
        parsed = as_json(raw)
        if isinstance(parsed, dict):
            self.taken.add("llm.invocation_parameters")
            params.update(parsed)
        taken = self.taken
        for key, v in self.attrs.items():  # one pass: the parameters, then what no rule took
            if key in taken:
                continue
            if key.startswith(REQUEST_PARAM):
                params[key[len(REQUEST_PARAM) :]] = v
                taken.add(key)
            elif key.startswith(METADATA):
                metadata[key[len(METADATA) :]] = as_json(v)
            else:
                metadata[key] = as_json(v)
        if model is not None:
            params.setdefault("model", model)
        span = self.span
        otel: dict = {
            "trace_id": span.trace_id.hex(),
            "span_id": span.span_id.hex(),
            "span_kind": KINDS.get(span.kind, str(span.kind)),
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
