"""The LangSmith JavaScript SDK's ``createFeedback`` (``langsmith`` from npm, pinned in tests/js)
against the server: tests/js/feedback.mjs traces a pipeline that records feedback with a
``traceId`` (sent as a ``feedback.<id>`` part of ``/runs/multipart``) and without one
(``POST /feedback``), then lists and reads it back. Skipped, saying so, without Node 18+.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from handler.server.auth import hash_key
from tests.runs import list_trace
from tests.server import start_server
from tests.test_js_sdk import JS, _node_or_skip

API_KEY = "js-feedback-test-key"


@pytest.fixture(scope="module")
def js_server(tmp_path_factory):
    node = _node_or_skip()
    srv = start_server(
        tmp_path_factory.mktemp("js-feedback"), "js-feedback", API_KEYS=f"jsfb:{hash_key(API_KEY)}"
    )
    yield node, srv
    srv.stop()
    assert srv.process.returncode == 0, open(srv.log_path).read()[-3000:]


def test_create_feedback_with_and_without_trace_id(js_server):
    node, server = js_server
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LANGSMITH_", "LANGCHAIN_"))},
        "API_URL": f"http://127.0.0.1:{server.client.port}",
        "API_KEY": API_KEY,
    }
    done = subprocess.run(
        [node, "feedback.mjs"], cwd=JS, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["logged"] == [], out["logged"]
    requests = out["requests"]
    assert all(200 <= r["status"] < 300 for r in requests), requests
    # The batched feedback rode in a multipart body with the runs; the other was its own POST.
    assert [r["path"] for r in requests if r["path"] == "/feedback" and r["method"] == "POST"] == [
        "/feedback"
    ]
    assert any(r["path"] == "/runs/multipart" for r in requests), requests

    ids = out["ids"]
    listed = {f["id"]: f for f in out["listed"]}
    assert set(listed) == {ids["feedback"]["batched"], ids["feedback"]["direct"]}
    assert listed[ids["feedback"]["batched"]] == {
        "id": ids["feedback"]["batched"],
        "run_id": ids["step"],
        "key": "correctness",
        "score": 1,
    }
    read = out["read"]
    assert (read["run_id"], read["key"], read["score"], read["value"]) == (
        ids["root"],
        "helpfulness",
        0.5,
        "somewhat",
    )
    assert read["session_id"] == out["project"]
    runs = list_trace(server.client, ids["root"], 100, {"x-api-key": API_KEY})
    assert sorted(r["name"] for r in runs) == ["pipeline", "step"]  # no run was lost
