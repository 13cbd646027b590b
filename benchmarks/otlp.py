"""OTLP export against the /runs path: the same spans, ~4 KB each, sent as 512-span requests (an
exporter's default batch) in OTLP protobuf, in the OTLP JSON encoding, and as a /runs JSON batch
of the runs they become, to one server process in the same session.

    RUN_HANDLER_ENV=test python -m benchmarks.otlp [requests per round] [rounds] [clients]

Reports spans stored per second (wall, with that many clients sending at once) and the
server's CPU per span (its process CPU time over the spans), and each format's CPU per span
against /runs. The formats take turns, round after round, so a busy machine weighs on each alike.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from benchmarks.cpu import process_cpu
from handler.otel.ids import parent_of
from handler.otel.mapping import SpanRun
from tests.server import start_server

SPANS = 512
PROMPT = "Summarize the quarterly report for the board, in plain words. " * 50  # ~3 KB


def attribute(key: str, value) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def export_request(seed: int) -> ExportTraceServiceRequest:
    """512 spans of ~4 KB: traces of 8 (a chain and its llm and tool steps), GenAI attributes."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(
        [attribute("service.name", "bench"), attribute("host.name", "h1")]
    )
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name, scope_spans.scope.version = "bench", "1.0"
    start = 1_760_000_000_000_000_000 + seed * 1_000_000_000
    for t in range(SPANS // 8):
        trace_id, root = os.urandom(16), os.urandom(8)
        for i in range(8):
            span = Span(
                trace_id=trace_id,
                span_id=root if i == 0 else os.urandom(8),
                parent_span_id=b"" if i == 0 else root,
                name="agent" if i == 0 else f"step {i}",
                kind=Span.SPAN_KIND_INTERNAL,
                start_time_unix_nano=start + t * 10_000 + i,
                end_time_unix_nano=start + t * 10_000 + i + 5_000_000,
            )
            span.attributes.extend(
                [
                    attribute("gen_ai.operation.name", "chat" if i % 2 else "execute_tool"),
                    attribute("gen_ai.request.model", "gpt-4o-mini"),
                    attribute("gen_ai.provider.name", "openai"),
                    attribute("gen_ai.request.temperature", 0.2),
                    attribute("gen_ai.usage.input_tokens", 812),
                    attribute("gen_ai.usage.output_tokens", 95),
                    attribute("gen_ai.input.messages", json.dumps([{"role": "user", "content": PROMPT}])),
                    attribute(
                        "gen_ai.output.messages", json.dumps([{"role": "assistant", "content": PROMPT[:600]}])
                    ),
                    attribute("app.request_id", uuid.uuid4().hex),
                ]
            )
            scope_spans.spans.append(span)
    return request


def otlp_json(request: ExportTraceServiceRequest) -> bytes:
    """The OTLP JSON encoding: protobuf's JSON mapping with the ids in hex."""
    document = json_format.MessageToDict(request)
    for rs in document["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = bytes.fromhex(_b64_to_hex(span[key])).hex()
    return json.dumps(document).encode()


def _b64_to_hex(text: str) -> str:
    import base64

    return base64.b64decode(text).hex()


def runs_batch(request: ExportTraceServiceRequest) -> bytes:
    """The runs the spans become, as one POST /runs body (the OTLP path adds only the dotted_order,
    to the rows)."""
    runs = []
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                run = SpanRun(span, {}, {"name": ss.scope.name}, None)
                body = run.build(parent_of(span, run.attrs))
                runs.append(body)
    return json.dumps(runs).encode()


def main(per_round: int, rounds: int, clients: int) -> None:
    n = per_round * rounds + 1  # each format its own spans (ids are unique), of the same shape
    bodies = {
        "OTLP protobuf": (
            "/otel/v1/traces",
            "application/x-protobuf",
            [export_request(i).SerializeToString() for i in range(n)],
        ),
        "OTLP JSON": (
            "/otel/v1/traces",
            "application/json",
            [otlp_json(export_request(i)) for i in range(n)],
        ),
        "/runs JSON": ("/runs", "application/json", [runs_batch(export_request(i)) for i in range(n)]),
    }
    sizes = {name: sum(map(len, b[2])) / len(b[2]) / SPANS for name, b in bodies.items()}
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), "otlp-bench")
        try:
            client = server.client
            totals = {name: [0.0, 0.0, 0] for name in bodies}  # wall, server CPU, spans
            next_body = dict.fromkeys(bodies, 0)
            path, ctype, warm = bodies["OTLP protobuf"]
            client.post(warm[0], path, ctype)  # warm: connections, imports, caches
            next_body["OTLP protobuf"] = 1
            for _ in range(rounds):
                for name, (path, ctype, items) in bodies.items():
                    batch = items[next_body[name] : next_body[name] + per_round]
                    next_body[name] += per_round

                    def send(body: bytes, path=path, ctype=ctype, name=name) -> None:
                        response = client.post(body, path, ctype)
                        assert response.status in (200, 201), (name, response.status, response.body[:300])

                    cpu, wall = process_cpu(server.process.pid), time.perf_counter()
                    with ThreadPoolExecutor(clients) as pool:
                        list(pool.map(send, batch))
                    totals[name][0] += time.perf_counter() - wall
                    totals[name][1] += process_cpu(server.process.pid) - cpu
                    totals[name][2] += per_round * SPANS
        finally:
            server.stop()
    base = totals["/runs JSON"][1] / totals["/runs JSON"][2]
    print(
        f"{SPANS}-span requests, {rounds} rounds of {per_round} requests per format,"
        f" {clients} clients at once, one server process"
    )
    print(f"{'format':<14} {'bytes/span':>10} {'spans/s':>9} {'server CPU/span':>16} {'vs /runs':>9}")
    for name, (wall, cpu, spans) in totals.items():
        per_span = cpu / spans
        print(
            f"{name:<14} {sizes[name]:>10.0f} {spans / wall:>9.0f}"
            f" {per_span * 1e6:>13.0f} µs {per_span / base:>8.2f}×"
        )


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:4]]
    main(*args, *(8, 3, 4)[len(args) :])
