# ruff: noqa: E501  (SDK calls and cases read best on one line)
"""The SDK's other v2 resources that replace calls this server serves, with the pinned ``langsmith``:
``client.sessions`` (list_v2, create_v2, retrieve_v2, update_v2 -> /api/v2/sessions) and
``client.traces`` (query -> POST /api/v2/traces/query, list_runs -> GET /api/v2/traces/{id}/runs).

In langsmith 0.15.1 these are the asynchronous resources, so each test runs its own event loop."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from langsmith import Client
from langsmith._exceptions import BadRequestError, ConflictError, NotFoundError

from handler.read.sessions import session_id_for
from handler.server.auth import hash_key
from tests.server import start_server
from tests.test_query_api import T0, _run, post_runs

KEY = "query-key"  # post_runs sends it
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("v2res"), "v2-resources", API_KEYS=f"querier:{hash_key(KEY)}")
    yield srv
    srv.stop()
    assert srv.process.returncode == 0, open(srv.log_path).read()[-3000:]


def with_client(server, test) -> None:
    async def main():
        await test(Client(api_url=f"http://127.0.0.1:{server.client.port}", api_key=KEY))

    asyncio.run(main())


async def items(paginator) -> list:
    return [item async for item in paginator]


@pytest.fixture(scope="module")
def traces(server):
    """Three traces in one project: A (tagged prod, an LLM call of 10 tokens and one of 5 costing
    0.25), B (an error), and one older than a day."""
    name = f"traces-{uuid.uuid4().hex[:8]}"
    a, b, old = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    usage = {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
    runs = [
        _run("root-a", a, 0, 10, name, id=a, tags=["prod"], inputs={"q": "hi"}),
        _run("llm-1", a, 1, 2, name, parent_run_id=str(a), run_type="llm", outputs={"usage_metadata": usage}),
        _run(
            "llm-2", a, 3, 2, name, parent_run_id=str(a), run_type="llm",
            outputs={"usage_metadata": {"total_tokens": 5, "total_cost": 0.25}},
        ),
        _run("root-b", b, 5, 1, name, id=b, error="boom"),
        _run("tool-b", b, 5.5, 0.2, name, parent_run_id=str(b), run_type="tool"),
    ]  # fmt: skip
    was = _run("root-old", old, 0, 1, name, id=old)
    was["start_time"] = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    was.pop("end_time")
    post_runs(server, [*runs, was])
    ids = {r["name"]: r["id"] for r in [*runs, was]}
    return server, str(session_id_for("querier", name)), ids


def test_traces_query(traces):
    server, project_id, ids = traces

    async def test(client):
        found = await items(client.traces.query(project_id=project_id))
        assert [t.root_run.id for t in found] == [ids["root-b"], ids["root-a"]]  # newest first, a day
        assert found[0].root_run.name is None and found[0].trace_aggregates is None  # selects: ID alone
        (a,) = await items(
            client.traces.query(
                project_id=project_id,
                trace_filter='has(tags, "prod")',
                selects=["NAME", "INPUTS", "TOTAL_TOKENS", "TOTAL_COST", "LATENCY_SECONDS"],
            )
        )
        assert (a.root_run.name, a.root_run.inputs, a.root_run.latency_seconds) == ("root-a", {"q": "hi"}, 10)
        assert (a.trace_aggregates.total_tokens, a.trace_aggregates.total_cost) == (15, 0.25)
        (b,) = await items(client.traces.query(project_id=project_id, tree_filter='eq(run_type, "tool")'))
        assert b.root_run.id == ids["root-b"]
        by_id = await items(client.traces.query(project_id=project_id, trace_ids=[ids["root-a"]]))
        assert [t.root_run.id for t in by_id] == [ids["root-a"]]
        since = (datetime.now(UTC) - timedelta(days=4)).isoformat()
        every = await items(client.traces.query(project_id=project_id, min_start_time=since, page_size=1))
        assert [t.root_run.id for t in every] == [ids["root-b"], ids["root-a"], ids["root-old"]]
        until = (T0 + timedelta(seconds=5)).isoformat()  # exclusive: B starts then
        early = await items(client.traces.query(project_id=project_id, max_start_time=until))
        assert [t.root_run.id for t in early] == [ids["root-a"]]
        first = await client.traces.query(project_id=project_id, page_size=1)
        assert len(first.items) == 1 and first.next_cursor
        for bad in ({"ai_search": "slow ones"}, {"trace_filter": "eq(name"}, {"page_size": 101}):
            with pytest.raises(BadRequestError):
                await items(client.traces.query(project_id=project_id, **bad))
        with pytest.raises(BadRequestError):
            await items(client.traces.query())

    with_client(server, test)


def test_trace_list_runs(traces):
    server, project_id, ids = traces

    async def test(client):
        answer = await client.traces.list_runs(
            ids["root-a"], project_id=project_id, selects=["NAME", "TOTAL_TOKENS"]
        )
        assert [(r.name, r.total_tokens) for r in answer.items] == [
            ("root-a", None),
            ("llm-1", 10),
            ("llm-2", 5),
        ]
        llms = await client.traces.list_runs(
            ids["root-a"], project_id=project_id, filter='eq(run_type, "llm")'
        )
        assert [r.id for r in llms.items] == [ids["llm-1"], ids["llm-2"]]
        low, high = T0 + timedelta(seconds=0.5), T0 + timedelta(seconds=1)  # inclusive
        window = await client.traces.list_runs(
            ids["root-a"],
            project_id=project_id,
            min_start_time=low.isoformat(),
            max_start_time=high.isoformat(),
        )
        assert [r.id for r in window.items] == [ids["llm-1"]]
        other = await client.traces.list_runs(ids["root-a"], project_id=str(uuid.uuid4()))
        assert other.items == []
        with pytest.raises(BadRequestError):  # one bound alone
            await client.traces.list_runs(
                ids["root-a"], project_id=project_id, min_start_time=low.isoformat()
            )
        with pytest.raises(BadRequestError):
            await client.traces.list_runs("not-a-uuid", project_id=project_id)

    with_client(server, test)


def test_sessions_create_retrieve_update_list(traces):
    server, traced_id, _ = traces
    name = f"v2-project-{uuid.uuid4().hex[:8]}"

    async def test(client):
        made = await client.sessions.create_v2(
            type="PROJECT", name=name, description="first", extra={"metadata": {"team": name}, "keep": 1},
            trace_tier="LONG_LIVED", longlived_ttl_days=400,
        )  # fmt: skip
        assert made.id == str(session_id_for("querier", name)) and made.type == "PROJECT"
        assert (made.trace_tier, made.longlived_ttl_days, made.description) == ("LONG_LIVED", 400, "first")
        with pytest.raises(ConflictError):
            await client.sessions.create_v2(type="PROJECT", name=name)
        again = await client.sessions.create_v2(type="PROJECT", name=name, description="second", upsert=True)
        assert again.id == made.id and again.description == "second"
        got = await client.sessions.retrieve_v2(made.id)
        assert (got.name, got.extra, got.start_time.tzinfo is not None) == (name, made.extra, True)
        changed = await client.sessions.update_v2(
            made.id, extra={"keep": None, "added": True}, trace_tier="SHORT_LIVED"
        )
        assert (
            changed.extra == {"metadata": {"team": name}, "added": True}
            and changed.trace_tier == "SHORT_LIVED"
        )
        assert changed.description == "second"  # left out: unchanged
        cleared = await client.sessions.update_v2(made.id, description=None)
        assert cleared.description is None and cleared.extra == changed.extra
        counted = await client.sessions.retrieve_v2(traced_id, include_stats=True)
        assert counted.run_count == 6 and (await client.sessions.retrieve_v2(traced_id)).run_count is None
        listed = await items(client.sessions.list_v2(name=name))
        assert [p.id for p in listed] == [made.id]
        assert [p.id for p in await items(client.sessions.list_v2(metadata=json.dumps({"team": name})))] == [
            made.id
        ]
        assert await items(client.sessions.list_v2(name=name, type=["EXPERIMENT"])) == []
        both = [made.id, traced_id]
        paged = await items(client.sessions.list_v2(id=both, page_size=1, sort_by="NAME", sort_order="asc"))
        assert [p.name for p in paged] == sorted(p.name for p in paged) and {p.id for p in paged} == set(both)
        with pytest.raises(NotFoundError):
            await client.sessions.retrieve_v2(str(uuid.uuid4()))
        with pytest.raises(BadRequestError):
            await client.sessions.update_v2(made.id, name="renamed")
        with pytest.raises(BadRequestError):
            await client.sessions.create_v2(type="EXPERIMENT", name="exp")
        with pytest.raises(BadRequestError):
            await client.sessions.create_v2(type="PROJECT", name="x", reference_dataset_id=str(uuid.uuid4()))
        with pytest.raises(BadRequestError):
            await items(client.sessions.list_v2(sort_by="LATENCY_P50"))
        with pytest.raises(BadRequestError):
            await items(client.sessions.list_v2(filter="eq(name, 'x')"))

    with_client(server, test)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "reason"),
    [
        ("POST", "/api/v2/sessions", b"[]", 400, "JSON object"),
        ("POST", "/api/v2/sessions", b'{"type": "PROJECT", "name": ""}', 400, "name must be"),
        ("POST", "/api/v2/sessions", b'{"type": "PROJECT", "name": "a", "trace_tier": "x"}', 400, "trace_tier"),
        ("POST", "/api/v2/sessions", b'{"type": "PROJECT", "name": "a", "frob": 1}', 400, "unsupported fields"),
        ("GET", "/api/v2/sessions?page_size=0", None, 400, "page_size"),
        ("GET", "/api/v2/sessions?cursor=zz", None, 400, "cursor"),
        ("GET", "/api/v2/sessions?metadata=%5B%5D", None, 400, "metadata"),
        ("GET", "/api/v2/sessions?name=%00", None, 400, "NUL"),
        ("GET", "/api/v2/sessions/nope", None, 400, "UUID"),
        ("PATCH", f"/api/v2/sessions/{uuid.uuid4()}", b"{}", 404, "not found"),
        ("POST", "/api/v2/traces/query", b'{"project_id": "x"}', 400, "project_id must be a UUID"),
        ("POST", "/api/v2/traces/query", b'{"project_ids": []}', 400, "unsupported query fields"),
        ("POST", "/api/v2/traces/query", b'{"project_id": "%s", "cursor": 1}' % str(uuid.uuid4()).encode(), 400, "cursor"),
        ("GET", f"/api/v2/traces/{uuid.uuid4()}/runs", None, 400, "project_id is required"),
        ("GET", f"/api/v2/traces/{uuid.uuid4()}/runs?project_id={uuid.uuid4()}&filter=and(", None, 400, "filter"),
        ("GET", f"/api/v2/traces/{uuid.uuid4()}/runs?project_id={uuid.uuid4()}&selects=NOPE", None, 400, "selects"),
    ],
)  # fmt: skip
def test_mistakes(server, method, path, body, status, reason):
    if method == "GET":
        response = server.client.get(path, headers={"x-api-key": KEY})
    else:
        response = server.client.post(body, path, headers={"x-api-key": KEY}, method=method)
    assert response.status == status and reason in json.loads(response.body)["error"], response.body


def test_streaming_is_refused(server):
    response = server.client.post(
        json.dumps({"project_id": str(uuid.uuid4())}).encode(),
        "/api/v2/traces/query",
        headers={"x-api-key": KEY, "Accept": "text/event-stream"},
    )
    assert response.status == 406, response.body
