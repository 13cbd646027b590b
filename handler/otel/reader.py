"""An OTLP body into a BatchIngest: held whole (OTLP bodies cannot be parsed as a stream), bounded
by OTLP_MAX_BODY_BYTES and counted against the memory budget, then decoded, each span mapped to a
run (mapping.py), checked by the run field rules like any run, and stored the way every run is:
packed in segments, rows at the end, all or nothing for the request.

A span whose ids are unusable, that repeats a span of the request or one already stored, or whose
run breaks a field rule or the run size limit, is refused alone (``rejected``, the answer's
partial_success); everything else about the request refuses it whole.
"""

from __future__ import annotations

import asyncio
import json

import orjson

from handler.base.errors import RunError
from handler.otel import tree
from handler.otel.decode import decode
from handler.otel.ids import parent_of, span_fault, span_text, trace_text
from handler.otel.mapping import SpanRun
from handler.otel.values import attributes
from handler.runs.budget import Claim
from handler.runs.ingest import BatchIngest
from handler.runs.schema import FieldError, Run, check_field, run_of
from handler.runs.splitter import parse_run
from handler.server.config import Settings
from handler.store.db import Database

# Decoding holds the message and the runs made of it beside the body: counted as twice the body.
DECODE_FACTOR = 2
_YIELD_EVERY = 256  # spans mapped between two turns of the event loop
_MAX_REASONS = 5  # refusals named in the answer's message
_PROTOBUF_DEPTH = 128  # deeper than any value a decoded request holds (upb stops at 100)


class OtlpReader:
    """The reader of one OTLP request (``feed``, ``close``, ``buffered``, as runs/readers.py's); after
    ``close``, what the answer and the relink need: ``rejected``, ``message``, ``nodes``."""

    def __init__(
        self,
        ingest: BatchIngest,
        db: Database,
        settings: Settings,
        claim: Claim,
        content_type: str,
        project: str | None,
    ) -> None:
        self._ingest = ingest
        self._db = db
        self._settings = settings
        self._claim = claim
        self._content_type = content_type
        self._project = project
        self._body = bytearray()
        self._decoding = 0
        self.spans = 0
        self.rejected = 0
        self.reasons: list[str] = []
        self.nodes: dict[str, tree.Node] = {}  # by run id (text)
        self.provisional = False  # a parent was neither in the request nor stored

    @property
    def buffered(self) -> int:
        return len(self._body) + self._decoding

    async def feed(self, chunk: bytes) -> None:
        limit = self._settings.otlp_max_body_bytes
        if len(self._body) + len(chunk) > limit:
            raise RunError(413, f"an OTLP body is larger than {limit} bytes (OTLP_MAX_BODY_BYTES)")
        self._body += chunk

    def reject(self, reason: str) -> None:
        self.rejected += 1
        if len(self.reasons) < _MAX_REASONS:
            self.reasons.append(reason)

    @property
    def message(self) -> str:
        if not self.rejected:
            return ""
        more = self.rejected - len(self.reasons)
        return "; ".join(self.reasons) + (f"; and {more} more" if more > 0 else "")

    async def close(self) -> None:
        size = len(self._body)
        await self._claim.room(DECODE_FACTOR * size)
        self._decoding = DECODE_FACTOR * size
        self._claim.done_taking()
        try:
            request = decode(bytes(self._body), self._content_type)
            self._body = bytearray()
            await self._store(request)
        finally:
            self._body = bytearray()
            self._decoding = 0
            self._claim.settle()

    async def _store(self, request) -> None:
        count = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        limit = self._settings.max_runs_per_batch
        if count > limit:
            raise RunError(413, f"{count} spans are more than {limit} (MAX_RUNS_PER_BATCH)")
        self.spans = count
        runs: list[SpanRun] = []
        seen: set[bytes] = set()
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                s = scope_spans.scope
                scope = {"name": s.name, "version": s.version}
                if s.attributes:
                    scope["attributes"] = attributes(s.attributes)
                for span in scope_spans.spans:
                    fault = span_fault(span)
                    if fault is None and span.span_id in seen:
                        fault = f"span {span.span_id.hex()} is repeated in the request"
                    if fault is not None:
                        self.reject(fault)
                        continue
                    seen.add(span.span_id)
                    runs.append(SpanRun(span, resource, scope, self._project))
        ids = [span_text(r.span.span_id) for r in runs]
        parents = {r: parent_of(r.span, r.attrs) for r in runs}
        wanted = set(ids) | {p for p in parents.values() if p is not None}
        stored = await self._stored(sorted(wanted))
        nodes: dict[str, tree.Node] = {}
        again: dict[str, str | None] = {}  # runs of the request stored already: id -> dotted_order
        built = []
        for i, (run, run_id) in enumerate(zip(runs, ids, strict=True)):
            if i % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)
            order, posted, trace = stored.get(run_id, (None, False, None))
            if posted:
                self.reject(f"span {run.span.span_id.hex()} is stored already (run {run_id})")
                span = run.span
                if trace == trace_text(span.trace_id):  # sent again: its relink is done again
                    nodes[run_id] = tree.Node(run_id, trace, parents[run], span.start_time_unix_nano)
                    again[run_id] = order
                continue
            parent = parents[run]
            fields = run.build(parent)
            try:
                parsed = self._run(fields, run.span.span_id)
            except RunError as e:
                self.reject(e.reason)
                continue
            node = tree.Node(run_id, fields["trace_id"], parent, run.span.start_time_unix_nano)
            nodes[run_id] = node
            built.append((parsed, node))
        known = {i: order for i, (order, posted, _) in stored.items() if posted and i not in again}
        tree.dotted_orders(nodes, known, again)
        # A parent neither in the request nor stored, or a retry (whose first relink may have
        # failed after its commit): the relink cannot be skipped.
        self.provisional = bool(again) or any(
            n.parent is not None and n.parent not in nodes and n.parent not in known for n in nodes.values()
        )
        for index, (parsed, node) in enumerate(built):
            parsed.index = index
            order = node.dotted_order
            if order is not None:
                try:
                    check_field(parsed, "dotted_order", "string", order)
                except FieldError:
                    pass
            await self._ingest.add_run(parsed)
        self.nodes = nodes

    def _run(self, fields: dict, span_id: bytes) -> Run:
        """The run of these fields, checked by the run field rules and its query columns gathered
        (runs/schema.run_of, as the splitter does from a run's events). Its bytes are JSON written
        here, so they need no check of their grammar; their nesting is bounded by protobuf's
        recursion limit (100), so only a MAX_DEPTH below that has them parsed again."""
        label = f"span {span_id.hex()}"  # (a run refused is named by its span)
        try:
            body = _encode(fields)
        except UnicodeEncodeError:
            raise RunError(400, f"{label}: a string holds an unpaired surrogate") from None
        s = self._settings
        if len(body) > s.max_run_bytes:
            raise RunError(413, f"{label} is larger than {s.max_run_bytes} bytes as a run")
        if s.max_depth < _PROTOBUF_DEPTH:
            return parse_run(body, s.max_run_bytes, s.max_depth, label)
        try:
            run = run_of(fields, 0)
        except FieldError as e:
            raise RunError(400, f"{label}: {e}") from None
        run.body, run.size = body, len(body)
        return run

    async def _stored(self, ids: list[str]) -> dict[str, tuple[str | None, bool, str]]:
        """The request's run ids and parents that the database has: id -> (dotted_order, posted,
        trace_id)."""
        if not ids:
            return {}
        rows = await self._db.fetch(
            "SELECT id, dotted_order, posted, trace_id FROM runs WHERE tenant = %s AND id = ANY(%s::uuid[])",
            (self._ingest.tenant, ids),
        )
        return {str(run_id): (order, posted, str(trace)) for run_id, order, posted, trace in rows}


def _encode(fields: dict) -> bytes:
    try:
        return orjson.dumps(fields)
    except TypeError:  # orjson's JSONEncodeError: an integer past 64 bits, or a lone surrogate
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
