"""Run by tests/test_otel_langsmith.py in a process of its own (the SDK sets the global OpenTelemetry
tracer provider once per process): tests/pipelines.py's pipeline traced by the ``langsmith`` SDK in
its OpenTelemetry mode, configured by the environment (LANGSMITH_OTEL_ENABLED=true, and
LANGSMITH_OTEL_ONLY=true for its OTel-only mode). Prints the root run's id."""

from __future__ import annotations

import uuid

from langsmith import Client, tracing_context
from opentelemetry import trace

from tests.pipelines import answer_question

if __name__ == "__main__":
    client = Client()
    root = uuid.uuid4()
    with tracing_context(enabled=True, client=client):
        answer_question("How does run-handler ingest spans?", langsmith_extra={"run_id": root})
    client.flush()
    provider = trace.get_tracer_provider()
    provider.force_flush(30_000)
    provider.shutdown()
    print(root)
