"""The official LangSmith JavaScript SDK (``langsmith`` from npm, pinned in tests/js), pointed at
the server, traces into it unchanged: tests/js/trace.mjs runs a scenario in one of the SDK's
transports and prints the run ids and the requests it made; every run must then come back.

Needs Node 18+ and npm (``make test-setup`` runs ``npm ci`` in tests/js); skipped, saying so,
where they are absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from handler.server.auth import hash_key
from tests.runs import list_trace
from tests.server import start_server

JS = Path(__file__).parent / "js"
API_KEY = "js-sdk-test-key"
MODES = {
    "multipart-gzip": {},  # what the SDK picks from our /info on Node < 22.15 (no zstd in zlib)
    "multipart-stream": {"LANGSMITH_DISABLE_RUN_COMPRESSION": "true"},  # a streamed, chunked body
    "batch": {},  # trace.mjs answers /info without use_multipart_endpoint: POST /runs/batch
    "unbatched": {},  # autoBatchTracing: false: POST /runs, PATCH /runs/{id}
}
INGEST_PATHS = {
    "multipart-gzip": {"/runs/multipart"},
    "multipart-stream": {"/runs/multipart"},
    "batch": {"/runs/batch"},
    "unbatched": {"/runs"},
}


def _node_or_skip() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the JavaScript SDK tests need Node 18+ and npm (node/npm not found)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 18:
        pytest.skip(f"the JavaScript SDK tests need Node 18+ (found {version})")
    if not (JS / "node_modules" / "langsmith").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS, check=True)
    return node


@pytest.fixture(scope="module")
def node() -> str:
    return _node_or_skip()


@pytest.fixture(scope="module")
def js_server(tmp_path_factory, node):
    srv = start_server(tmp_path_factory.mktemp("js-sdk"), "js-sdk", API_KEYS=f"js:{hash_key(API_KEY)}")
    yield srv
    srv.stop()
    assert srv.process.returncode == 0, open(srv.log_path).read()[-3000:]


def _trace(node: str, server, scenario: str, mode: str) -> dict:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LANGSMITH_", "LANGCHAIN_"))},
        "API_URL": f"http://127.0.0.1:{server.client.port}",
        "API_KEY": API_KEY,
        **MODES[mode],
    }
    done = subprocess.run(
        [node, "trace.mjs", scenario, mode], cwd=JS, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (done.returncode, done.stdout[-2000:], done.stderr[-4000:])
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["logged"] == [], out["logged"]  # the SDK logged no failure
    sent = [r for r in out["requests"] if r["path"] is not None and r["path"] != "/info"]
    assert sent and all(200 <= r["status"] < 300 for r in sent), sent
    assert {r["path"] if r["method"] == "POST" else "/runs" for r in sent} == INGEST_PATHS[mode], sent
    if mode == "multipart-gzip":
        assert {r["content_encoding"] for r in sent} == {"gzip"}
    if mode == "multipart-stream":
        assert all(r["streamed"] for r in sent)
    return out


def _get(server, run_id: str) -> dict:
    response = server.client.get(f"/runs/{run_id}", headers={"x-api-key": API_KEY})
    assert response.status == 200, (run_id, response.body)
    return response.json()


def _list(server, trace_id: str, expected: int) -> list[dict]:
    deadline = time.monotonic() + 10  # the SDK has its answers; a commit may still be finishing
    while True:
        runs = list_trace(server.client, trace_id, 2, {"x-api-key": API_KEY})
        if len(runs) >= expected and all(r["end_time"] for r in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.2)


@pytest.mark.parametrize("mode", MODES)
def test_traceable_pipeline_comes_back(node, js_server, mode):
    out = _trace(node, js_server, "traceable", mode)
    ids = out["ids"]
    assert out["result"]["failure"] == "tool failed on q1"
    listed = _list(js_server, ids["trace_id"], 3)
    assert [r["name"] for r in listed] == ["pipeline", "llm_step", "failing_tool"]
    assert [r["id"] for r in listed] == [ids["pipeline"], ids["llm_step"], ids["failing_tool"]]
    assert [r["status"] for r in listed] == ["success", "success", "error"]
    assert all(r["trace_id"] == ids["trace_id"] for r in listed)
    assert listed[1]["parent_run_id"] == ids["pipeline"] == listed[2]["parent_run_id"]

    root = _get(js_server, ids["pipeline"])
    assert root["name"] == "pipeline" and root["run_type"] == "chain"
    # The JS SDK records positional arguments as {"args": [...]}: the 500 KB input comes back whole.
    assert root["inputs"] == {"args": ["large input " * 42_000, {"temperature": 0.5, "seed": 7}]}
    assert root["outputs"]["failure"] == "tool failed on q1"
    assert root["outputs"]["first"] == {"completion": "LARGE INPUT LARGE IN", "tokens": [1, 2, 3]}
    assert "js-e2e" in root["tags"] and root["extra"]["metadata"]["case"] == "nested"
    llm = _get(js_server, ids["llm_step"])
    assert (llm["name"], llm["run_type"]) == ("llm_step", "llm")
    assert llm["outputs"] == {"completion": "LARGE INPUT LARGE IN", "tokens": [1, 2, 3]}
    tool = _get(js_server, ids["failing_tool"])
    assert (tool["name"], tool["run_type"]) == ("failing_tool", "tool")
    assert "tool failed on q1" in tool["error"]
    # The JS SDK sends end_time as epoch milliseconds: kept as sent, the column is that instant.
    for stored, summary in ((root, listed[0]), (llm, listed[1]), (tool, listed[2])):
        assert isinstance(stored["end_time"], int | float), stored["end_time"]
        assert _millis(summary["end_time"]) == pytest.approx(stored["end_time"], abs=0.001)


@pytest.mark.parametrize("mode", MODES)
def test_run_tree_posted_then_patched_in_a_later_flush(node, js_server, mode):
    out = _trace(node, js_server, "runtree", mode)
    ids = out["ids"]
    marker = next(i for i, r in enumerate(out["requests"]) if r["method"] == "FLUSHED")
    before = [r for r in out["requests"][:marker] if r["path"] != "/info"]
    after = out["requests"][marker + 1 :]
    assert before and after, out["requests"]  # the posts and the patches went in separate requests
    listed = _list(js_server, ids["trace_id"], 2)
    assert [r["id"] for r in listed] == [ids["rt_root"], ids["rt_child"]]
    assert [r["status"] for r in listed] == ["success", "success"]
    root, child = _get(js_server, ids["rt_root"]), _get(js_server, ids["rt_child"])
    assert root["outputs"] == {"answer": 42} and root["inputs"] == {"question": "what is 6 * 7?"}
    assert child["outputs"] == {"completion": "42"} and child["parent_run_id"] == ids["rt_root"]
    for stored, summary in ((root, listed[0]), (child, listed[1])):
        assert stored["end_time"] is not None and summary["end_time"] is not None
        assert _millis(summary["end_time"]) == pytest.approx(stored["end_time"], abs=0.001)


def _millis(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp() * 1000


def test_node_fetch_streaming_a_refused_body_gets_the_answer(node, js_server):
    """Node's fetch with a streamed 2 MB body refused at its first run: the 400, not ECONNRESET."""
    env = {
        **os.environ,
        "API_URL": f"http://127.0.0.1:{js_server.client.port}",
        "API_KEY": API_KEY,
        "TOTAL_BYTES": str(2 * 1024 * 1024),
    }
    done = subprocess.run(
        [node, "early_answer.mjs"], cwd=JS, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out.get("status") == 400, out
    assert out["body"]["error"] == "run 0: end_time must not be a negative number of milliseconds"
