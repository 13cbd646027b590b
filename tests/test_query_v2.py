# ruff: noqa: E501  (calls with many selects read best on one line)
"""The SDK's v2 reads, ``client.runs.query`` (``POST /api/v2/runs/query``) and
``client.runs.retrieve`` (``GET /api/v2/runs/{id}``), with the pinned ``langsmith``: selects,
filters and their scopes, the start-time window, cursor paging and the errors.

In langsmith 0.15.1 ``Client().runs`` is the asynchronous resource (as ``AsyncClient``'s), so each
test runs in its own event loop with its own client."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from langsmith import Client
from langsmith._exceptions import APIStatusError, BadRequestError, NotFoundError

from handler.read.sessions import session_id_for
from handler.server.auth import hash_key
from handler.server.config import REPO_ROOT
from tests.server import start_server
from tests.test_query_api import _run, post_runs

KEY = "query-key"  # post_runs sends it
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("v2"), "query-v2", API_KEYS=f"querier:{hash_key(KEY)}")
    yield srv
    srv.stop()
    assert srv.process.returncode == 0, open(srv.log_path).read()[-3000:]


@pytest.fixture(scope="module")
def project(server):
    name = f"v2-{uuid.uuid4().hex[:8]}"
    a = uuid.uuid4()
    runs = [
        _run("agent", a, 0, 10, name, id=a, tags=["prod"], inputs={"q": "hi"}, extra={"metadata": {"user": "u-1"}}),
        _run(
            "llm", a, 1, 4, name, parent_run_id=str(a), run_type="llm", error="boom",
            dotted_order=f"20260101T000000000000Z{a}.20260101T000001000000Z{{id}}",
            outputs={"usage_metadata": {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}},
        ),
    ]  # fmt: skip
    runs[1]["dotted_order"] = runs[1]["dotted_order"].replace("{id}", runs[1]["id"])
    # Older than a day: outside the default window.
    old = _run("old", uuid.uuid4(), -3 * 86400, 1, name)
    old["start_time"] = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    old["end_time"] = (datetime.now(UTC) - timedelta(days=3) + timedelta(seconds=1)).isoformat()
    many = [
        _run(f"step-{i}", a, 2 + i / 1000, 0.1, name, parent_run_id=str(a), run_type="tool")
        for i in range(250)
    ]
    post_runs(server, [*runs, old, *many])
    return server, str(session_id_for("querier", name)), {r["name"]: r["id"] for r in [*runs, old]}


def run_with_client(server, test) -> None:
    """``test(runs)`` in a fresh event loop, ``runs`` the SDK's v2 runs resource."""

    async def main():
        client = Client(api_url=f"http://127.0.0.1:{server.client.port}", api_key=KEY)
        await test(client.runs)

    asyncio.run(main())


async def items(paginator) -> list:
    return [item async for item in paginator]


def test_query_with_selects_and_filters(project):
    server, project_id, ids = project

    async def test(runs):
        (agent,) = await items(
            runs.query(
                project_ids=[project_id],
                filter='has(tags, "prod")',
                selects=["NAME", "STATUS", "INPUTS", "METADATA", "TAGS", "LATENCY_SECONDS", "IS_ROOT"],
            )
        )
        assert (agent.id, agent.name, agent.status) == (ids["agent"], "agent", "SUCCESS")
        assert agent.inputs == {"q": "hi"} and agent.metadata == {"user": "u-1"} and agent.tags == ["prod"]
        assert agent.latency_seconds == 10 and agent.is_root is True
        assert agent.outputs is None  # not selected
        (llm,) = await items(
            runs.query(
                project_ids=[project_id], filter="gt(total_tokens, 5)", trace_filter='has(tags, "prod")',
                selects=["ERROR", "ERROR_PREVIEW", "TOTAL_TOKENS", "PROMPT_TOKENS", "COMPLETION_TOKENS", "PARENT_RUN_IDS", "OUTPUTS_PREVIEW", "TRACE_ID", "PROJECT_ID"],
            )
        )  # fmt: skip
        assert llm.error == "boom" and llm.error_preview == "boom"
        assert (llm.total_tokens, llm.prompt_tokens, llm.completion_tokens) == (10, 7, 3)
        assert (
            llm.parent_run_ids == [ids["agent"]]
            and llm.trace_id == ids["agent"]
            and llm.project_id == project_id
        )
        assert json.loads(llm.outputs_preview)["usage_metadata"]["total_tokens"] == 10
        only_ids = await items(runs.query(project_ids=[project_id], has_error=True))
        assert [r.id for r in only_ids] == [ids["llm"]] and only_ids[0].name is None  # selects: ID alone
        assert [r.id for r in await items(runs.query(project_ids=[project_id], is_root=True))] == [
            ids["agent"]
        ]
        found = await items(
            runs.query(project_ids=[project_id], run_type="llm", tree_filter='eq(name, "agent")')
        )
        assert len(found) == 1

    run_with_client(server, test)


def test_the_window_and_paging(project):
    server, project_id, ids = project

    async def test(runs):
        seen = [r.id for r in await items(runs.query(project_ids=[project_id], page_size=100))]
        assert len(seen) == len(set(seen)) == 252 and ids["old"] not in seen  # the last day by default
        since = (datetime.now(UTC) - timedelta(days=4)).isoformat()
        wide = {
            r.id
            for r in await items(runs.query(project_ids=[project_id], min_start_time=since, page_size=1000))
        }
        assert ids["old"] in wide and len(wide) == 253
        first = await runs.query(project_ids=[project_id], page_size=7)
        assert len(first.items) == 7 and first.next_cursor

    run_with_client(server, test)


def test_retrieve(project):
    server, project_id, ids = project

    async def test(runs):
        run = await runs.retrieve(
            ids["llm"], project_id=project_id, selects=["NAME", "OUTPUTS", "RUN_TYPE", "START_TIME"]
        )
        assert (run.id, run.name, run.run_type) == (ids["llm"], "llm", "llm")
        assert run.outputs["usage_metadata"]["input_tokens"] == 7 and run.start_time.tzinfo is not None
        with pytest.raises(NotFoundError):
            await runs.retrieve(ids["llm"], project_id=str(uuid.uuid4()))
        with pytest.raises(NotFoundError):
            await runs.retrieve(str(uuid.uuid4()), project_id=project_id)

    run_with_client(server, test)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "project_ids is required"),
        ({"project_ids": ["x"]}, "project_ids must be a UUID"),
        ({"project_ids": [], "filter": 'eq(nope, "x")'}, "filter: unknown field"),
        ({"project_ids": [], "tree_filter": "and("}, "tree_filter: expected"),
        ({"project_ids": [], "page_size": 0}, "page_size must be"),
        ({"project_ids": [], "page_size": 1001}, "page_size must be"),
        ({"project_ids": [], "selects": ["NOPE"]}, "unknown selects: NOPE"),
        ({"project_ids": [], "ai_search": "why"}, "AI search"),
        ({"project_ids": [], "reference_dataset_id": str(uuid.uuid4())}, "datasets"),
        ({"project_ids": [], "cursor": "zz"}, "cursor"),
        ({"project_ids": [], "min_start_time": "yesterday"}, "min_start_time"),
        ({"project_ids": [], "frobnicate": 1}, "unsupported query fields: frobnicate"),
    ],
)
def test_mistakes_are_400(server, body, reason):
    response = server.client.post(json.dumps(body).encode(), "/api/v2/runs/query", headers={"x-api-key": KEY})
    assert response.status == 400 and reason in json.loads(response.body)["error"], response.body


def test_sdk_sees_the_400(project):
    server, project_id, _ = project

    async def test(runs):
        with pytest.raises(BadRequestError):
            await items(runs.query(project_ids=[project_id], filter="eq(name"))
        with pytest.raises(APIStatusError):
            await runs.retrieve("not-a-uuid", project_id=project_id)

    run_with_client(server, test)


def test_backfill_fills_runs_stored_before_the_columns(server, db):
    """Rows as 0007 leaves older runs (defaults, query_fields NULL) get their columns from the runs'
    bytes: the filters find them again."""
    name = f"backfill-{uuid.uuid4().hex[:8]}"
    trace = uuid.uuid4()
    post_runs(
        server,
        [
            _run(
                "old-root", trace, 0, 1, name, id=trace, tags=["legacy"], extra={"metadata": {"team": "red"}}
            ),
            _run(
                "old-llm",
                trace,
                0.5,
                0.2,
                name,
                parent_run_id=str(trace),
                outputs={"usage_metadata": {"total_tokens": 42}},
            ),
        ],
    )
    project_id = str(session_id_for("querier", name))
    filters = {'has(tags, "legacy")': 1, "eq(total_tokens, 42)": 1, 'eq(metadata_value, "red")': 1}

    def found() -> dict:
        answer = {}
        for text in filters:
            body = json.dumps({"session": [project_id], "filter": text}).encode()
            response = server.client.post(body, "/runs/query", headers={"x-api-key": KEY})
            answer[text] = len(json.loads(response.body)["runs"])
        return answer

    assert found() == filters
    with db.cursor() as cur:
        cur.execute(
            "UPDATE runs SET tags = DEFAULT, metadata = DEFAULT, prompt_tokens = NULL, completion_tokens = NULL,"
            " total_tokens = NULL, search_text = NULL, query_fields = NULL WHERE session_id = %s",
            (project_id,),
        )
        assert cur.rowcount == 2
    assert found() == dict.fromkeys(filters, 0)
    done = subprocess.run(
        [sys.executable, "-m", "handler", "backfill-query"],
        cwd=REPO_ROOT, env={**os.environ, "RUN_HANDLER_ENV": "test"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "backfill-query:" in done.stderr
    assert found() == filters
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE query_fields IS NULL")
        assert cur.fetchone() == (0,)
        # Kept without inputs' and outputs' keys (IO_KEYS was 0): a backfill under IO_KEYS > 0 adds them.
        cur.execute(
            "SELECT name, query_fields, inputs_kv, outputs_kv FROM runs WHERE session_id = %s ORDER BY name",
            (project_id,),
        )
        assert cur.fetchall() == [("old-llm", 1, {}, {}), ("old-root", 1, {}, {})]
        # Only these two to refill: the other tests' rows count as refilled.
        cur.execute(
            "UPDATE runs SET query_fields = 2 WHERE query_fields = 1 AND session_id <> %s", (project_id,)
        )
    done = subprocess.run(
        [sys.executable, "-m", "handler", "backfill-query"],
        cwd=REPO_ROOT, env={**os.environ, "RUN_HANDLER_ENV": "test", "IO_KEYS": "4"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with db.cursor() as cur:
        cur.execute(
            "SELECT name, query_fields, inputs_kv, outputs_kv FROM runs WHERE session_id = %s ORDER BY name",
            (project_id,),
        )
        assert cur.fetchall() == [("old-llm", 2, {}, {"usage_metadata": None}), ("old-root", 2, {}, {})]
