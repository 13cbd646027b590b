"""The ``langsmith`` SDK in its OpenTelemetry mode (``LANGSMITH_OTEL_ENABLED=true``), pointed at the
server: what it really sends is OTLP protobuf to /otel/v1/traces, with ``langsmith.*`` attributes,
its runs' inputs and outputs as whole JSON strings in ``gen_ai.prompt`` / ``gen_ai.completion``,
``gen_ai.operation.name`` set to the run type, and OpenTelemetry's own trace and span ids (not the
run tree's). Its runs must list by trace with the names, types and parents of the same pipeline in
the SDK's usual mode -- which its hybrid mode sends to the server beside the spans."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from handler.server.auth import hash_key
from handler.server.config import REPO_ROOT
from tests.pipelines import STEPS
from tests.runs import list_trace
from tests.server import start_server

API_KEY = "otel-langsmith-key"
AUTH = {"x-api-key": API_KEY}
EXPECTED = [  # (name, run_type, parent's name), in dotted_order
    ("answer_question", "chain", None),
    ("retrieve_docs", "retriever", "answer_question"),
    ("format_prompt", "prompt", "answer_question"),
    ("chat_model", "llm", "answer_question"),
    ("parse_answer", "parser", "answer_question"),
    ("check_citations", "tool", "answer_question"),
]


@pytest.fixture(scope="module")
def sdk_server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("otel-ls"), "otel-ls", API_KEYS=f"ls:{hash_key(API_KEY)}")
    yield srv
    srv.stop()
    assert srv.process.returncode == 0, open(srv.log_path).read()[-3000:]


def traced(server, project: str, otel_only: bool) -> uuid.UUID:
    env = {
        **os.environ,
        "LANGSMITH_TRACING": "true",
        "LANGSMITH_OTEL_ENABLED": "true",
        "LANGSMITH_ENDPOINT": f"http://{server.client.host}:{server.client.port}",
        "LANGSMITH_API_KEY": API_KEY,
        "LANGSMITH_PROJECT": project,
    }
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_HEADERS",
    ):
        env.pop(name, None)
    if otel_only:
        env["LANGSMITH_OTEL_ONLY"] = "true"
    done = subprocess.run(
        [sys.executable, "-m", "tests.otel_langsmith"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return uuid.UUID(done.stdout.strip().splitlines()[-1])


def tree(server, trace_id) -> list[tuple]:
    runs = list_trace(server.client, str(trace_id), headers=AUTH)
    names = {r["id"]: r["name"] for r in runs}
    return [(r["name"], r["run_type"], names.get(r["parent_run_id"])) for r in runs]


def otel_traces(db, project: str) -> list[str]:
    """The traces of the project's runs made of spans (ids by the span rule: 8 zero bytes first)."""
    with db.cursor() as cur:
        cur.execute(
            "SELECT DISTINCT trace_id::text FROM runs"
            " WHERE session_name = %s AND id::text LIKE '00000000-0000-0000-%%'",
            (project,),
        )
        return [row[0] for row in cur.fetchall()]


def test_hybrid_mode_matches_the_usual_mode(sdk_server, db):
    project = f"otel-hybrid-{uuid.uuid4().hex[:8]}"
    root = traced(sdk_server, project, otel_only=False)
    usual = tree(sdk_server, root)
    assert usual == EXPECTED  # the multipart copy, the SDK's usual mode
    [span_trace] = otel_traces(db, project)
    assert span_trace != str(root)  # OpenTelemetry's trace id, not the run tree's
    assert tree(sdk_server, span_trace) == usual
    runs = {r["name"]: r for r in list_trace(sdk_server.client, span_trace, headers=AUTH)}
    assert runs["check_citations"]["status"] == "error"
    # Inputs and outputs, sent as whole JSON strings, come back as the usual mode's JSON.
    usual_runs = {r["name"]: r for r in list_trace(sdk_server.client, str(root), headers=AUTH)}
    for name in ("answer_question", "retrieve_docs", "format_prompt", "chat_model", "parse_answer"):
        span_run = sdk_server.client.get(f"/runs/{runs[name]['id']}", AUTH).json()
        usual_run = sdk_server.client.get(f"/runs/{usual_runs[name]['id']}", AUTH).json()
        assert span_run["inputs"] == usual_run["inputs"], name
        assert span_run["outputs"] == usual_run["outputs"], name
    chat = sdk_server.client.get(f"/runs/{runs['chat_model']['id']}", AUTH).json()
    assert chat["outputs"]["choices"][0]["message"]["role"] == "assistant"
    assert chat["extra"]["metadata"]["ls_model_name"] == "tiny-test-model"
    assert chat["session_name"] == project
    root_run = sdk_server.client.get(f"/runs/{runs['answer_question']['id']}", AUTH).json()
    assert root_run["tags"] == ["demo"]
    assert root_run["extra"]["metadata"]["user"] == "ada"


def test_otel_only_mode(sdk_server, db):
    project = f"otel-only-{uuid.uuid4().hex[:8]}"
    root = traced(sdk_server, project, otel_only=True)
    assert list_trace(sdk_server.client, str(root), headers=AUTH) == []  # nothing but spans came
    [span_trace] = otel_traces(db, project)
    assert tree(sdk_server, span_trace) == EXPECTED
    assert [name for name, _, _ in EXPECTED] == STEPS
