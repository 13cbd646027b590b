"""OpenTelemetry's own Node exporters (``@opentelemetry/exporter-trace-otlp-proto`` and
``-http``, pinned in tests/js/package-lock.json) export a trace to the server: tests/js/otel.mjs
exports each span as it ends, children first; every export must succeed and every span come back
as a run. Needs Node 18+ and npm, as tests/test_js_sdk.py (skipped, saying so, without them)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from handler.server.auth import hash_key
from tests.otel import run_id, trace_uuid
from tests.runs import list_trace
from tests.server import start_server
from tests.test_js_sdk import JS, _node_or_skip

API_KEY = "otel-js-key"
AUTH = {"x-api-key": API_KEY}


@pytest.fixture(scope="module")
def node() -> str:
    return _node_or_skip()


@pytest.fixture(scope="module")
def js_server(tmp_path_factory, node):
    srv = start_server(tmp_path_factory.mktemp("otel-js"), "otel-js", API_KEYS=f"js:{hash_key(API_KEY)}")
    yield srv
    srv.stop()
    assert srv.process.returncode == 0, open(srv.log_path).read()[-3000:]


@pytest.mark.parametrize("mode", ["proto", "json"])
def test_node_exporter(node, js_server, mode):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "URL": f"http://127.0.0.1:{js_server.client.port}/otel/v1/traces",
        "API_KEY": API_KEY,
    }
    done = subprocess.run(
        [node, "otel.mjs", mode], cwd=JS, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["results"] == [0, 0, 0]  # ExportResultCode.SUCCESS, one export per span
    ids = {name: run_id(span_id) for name, span_id in out["ids"].items()}
    runs = list_trace(js_server.client, trace_uuid(out["traceId"]), headers=AUTH)
    assert [(r["name"], r["id"], r["run_type"], r["parent_run_id"]) for r in runs] == [
        ("agent", ids["agent"], "chain", None),
        ("chat", ids["chat"], "llm", ids["agent"]),
        ("search", ids["search"], "tool", ids["agent"]),
    ]
    assert [r["status"] for r in runs] == ["success", "success", "error"]
    assert {r["session_name"] for r in runs} == {f"node-{mode}"}
    chat = js_server.client.get(f"/runs/{ids['chat']}", AUTH).json()
    assert chat["outputs"]["usage_metadata"] == {"input_tokens": 4, "output_tokens": 2, "total_tokens": 6}
    assert chat["extra"]["metadata"]["ls_model_name"] == "gpt-4o-mini"
    assert chat["extra"]["metadata"]["otel"]["resource"]["service.name"] == "node-otel-test"
    search = js_server.client.get(f"/runs/{ids['search']}", AUTH).json()
    assert search["error"].startswith("Error: search is down")
    assert search["extra"]["metadata"]["tool.args"] == ["a", "b"]
    agent = js_server.client.get(f"/runs/{ids['agent']}", AUTH).json()
    assert agent["inputs"] == {"input": "hi"}
