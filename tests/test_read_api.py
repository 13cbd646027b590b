"""The SDK's read calls against the live server: projects (``/sessions``), ``list_runs``
(``POST /runs/query``) and ``read_run(load_child_runs=True)``, with the pinned ``langsmith``.

A nested pipeline with a failing step is traced into a fresh project, then read back through the
SDK; another tenant's key must see none of it.
"""

from __future__ import annotations

import time
import uuid

import pytest
from langsmith import Client, traceable, tracing_context
from langsmith.utils import LangSmithConflictError, LangSmithError, LangSmithNotFoundError
from yoyo import read_migrations

from handler.read.sessions import session_id_for
from handler.server.auth import hash_key
from handler.store.migrations import SCHEMA_DIR, migrate, rollback_last
from tests.conftest import FreshConnections, scratch_database
from tests.server import start_server

KEY, OTHER_KEY = "reader-key", "other-tenant-key"
INPUT = "some input text " * 100
# The SDK marks list_runs and read_run deprecated (for its newer API, which this server does not offer).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
PAGE = 100  # query.MAX_PAGE: the SDK asks for no limit, the server pages by this


@traceable(run_type="llm", name="generate")
def generate(prompt: str) -> dict:
    return {"completion": prompt[:10].upper()}


@traceable(run_type="tool", name="lookup")
def lookup(text: str) -> dict:
    return {"found": generate(text)}


@traceable(run_type="chain", name="validate")
def validate(text: str) -> dict:
    raise ValueError(f"invalid: {text[:8]!r}")


@traceable(run_type="chain", name="pipeline")
def pipeline(text: str) -> dict:
    found = lookup(text)
    try:
        validate(text)
    except ValueError:
        pass
    return {"found": found}


@traceable(run_type="tool", name="step")
def step(i: int) -> int:
    return i


@traceable(run_type="chain", name="many")
def many(n: int) -> int:
    return sum(step(i) for i in range(n))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(
        tmp_path_factory.mktemp("read"),
        "read-api",
        API_KEYS=f"reader:{hash_key(KEY)},other:{hash_key(OTHER_KEY)}",
    )
    yield srv
    srv.stop()
    assert srv.process.returncode == 0, open(srv.log_path).read()[-3000:]


def _client(server, key: str = KEY, **options) -> Client:
    return Client(api_url=f"http://127.0.0.1:{server.client.port}", api_key=key, **options)


def _runs_of(client: Client, project: str, expected: int, **filters) -> list:
    """list_runs, once the SDK's background sender has committed everything (flush() returns when
    the requests are sent; the last may still be committing)."""
    deadline = time.monotonic() + 15
    while True:
        try:
            runs = list(client.list_runs(project_name=project, **filters))
        except LangSmithNotFoundError:
            runs = []
        if len(runs) >= expected and all(r.end_time for r in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.2)


@pytest.fixture(scope="module")
def traced(server):
    client = _client(server)
    project = f"read-{uuid.uuid4().hex[:8]}"
    root = uuid.uuid4()
    with tracing_context(enabled=True, client=client, project_name=project):
        pipeline(INPUT, langsmith_extra={"run_id": root})
    client.flush()
    runs = _runs_of(client, project, 4)
    assert len(runs) == 4
    return client, project, root, runs


def test_the_project_exists_once_a_run_names_it(server, traced):
    client, project, _, _ = traced
    assert client.has_project(project)
    found = client.read_project(project_name=project)
    assert found.name == project and found.id == session_id_for("reader", project)
    assert client.read_project(project_id=str(found.id)).name == project
    assert project in {p.name for p in client.list_projects()}
    assert [p.name for p in client.list_projects(name=project)] == [project]
    assert not client.has_project(f"{project}-nope")


def test_list_runs_by_project_and_filters(server, traced):
    client, project, root, runs = traced
    assert {r.name for r in runs} == {"pipeline", "lookup", "generate", "validate"}
    assert all(r.trace_id == root and str(r.session_id) for r in runs)
    by_name = {r.name: r for r in runs}
    assert by_name["pipeline"].inputs == {"text": INPUT}  # the SDK's default select reads inputs
    assert by_name["generate"].outputs == {"completion": INPUT[:10].upper()}
    assert [r.name for r in client.list_runs(project_name=project, is_root=True)] == ["pipeline"]
    failed = list(client.list_runs(project_name=project, error=True))
    assert [r.name for r in failed] == ["validate"]
    assert "invalid" in failed[0].error and failed[0].status == "error"
    assert {r.name for r in client.list_runs(project_name=project, error=False)} == {
        "pipeline",
        "lookup",
        "generate",
    }
    assert [r.name for r in client.list_runs(project_name=project, run_type="llm")] == ["generate"]
    assert len(list(client.list_runs(trace_id=root))) == 4
    assert [r.name for r in client.list_runs(parent_run_id=by_name["lookup"].id)] == ["generate"]
    assert [r.name for r in client.list_runs(run_ids=[by_name["validate"].id])] == ["validate"]
    # Columns only: nothing read from the runs' bytes.
    slim = list(client.list_runs(project_name=project, select=["id", "name", "status"]))
    assert len(slim) == 4 and all(r.inputs == {} and r.outputs is None for r in slim)


def test_read_run_with_its_tree(server, traced):
    client, _, root, _ = traced
    run = client.read_run(root, load_child_runs=True)
    assert run.name == "pipeline"
    assert [c.name for c in run.child_runs] == ["lookup", "validate"]
    assert [c.name for c in run.child_runs[0].child_runs] == ["generate"]
    assert "invalid" in run.child_runs[1].error


def test_list_runs_pages_past_one_page(server):
    # One request per create and update: batches sent at once by the SDK's background threads can
    # carry a run's post and its patch concurrently, which the server may refuse with a 409.
    client = _client(server, auto_batch_tracing=False)
    project = f"paged-{uuid.uuid4().hex[:8]}"
    with tracing_context(enabled=True, client=client, project_name=project):
        many(PAGE + 30)
    client.flush()
    runs = _runs_of(client, project, PAGE + 31, select=["id", "name", "end_time"])
    assert len(runs) == PAGE + 31 and len({r.id for r in runs}) == PAGE + 31
    assert len(list(client.list_runs(project_name=project, limit=7))) == 7


def test_another_tenant_sees_none_of_it(server, traced):
    _, project, root, _ = traced
    other = _client(server, OTHER_KEY)
    assert not other.has_project(project)
    assert project not in {p.name for p in other.list_projects()}
    assert list(other.list_runs(project_id=str(session_id_for("reader", project)))) == []
    assert list(other.list_runs(trace_id=root)) == []
    with pytest.raises(LangSmithNotFoundError):
        other.read_run(root)
    with pytest.raises(LangSmithNotFoundError):
        other.read_project(project_id=str(session_id_for("reader", project)))


def test_create_project(server):
    client = _client(server)
    name = f"made-{uuid.uuid4().hex[:8]}"
    made = client.create_project(name, description="made by the SDK", metadata={"k": 1})
    assert made.name == name and made.description == "made by the SDK" and made.metadata == {"k": 1}
    assert client.read_project(project_name=name).id == made.id
    with pytest.raises(LangSmithConflictError):
        client.create_project(name)
    again = client.create_project(name, description="changed", upsert=True)
    assert again.id == made.id and again.description == "changed"


def test_the_filter_language_is_understood(server, traced):
    """The whole language is tested in test_query_api.py; here, on a traced pipeline."""
    client, project, _, _ = traced
    assert [r.name for r in client.list_runs(project_name=project, filter='eq(name, "pipeline")')] == [
        "pipeline"
    ]
    failing_trees = client.list_runs(
        project_name=project, tree_filter="neq(error, null)", filter="eq(is_root, true)"
    )
    assert [r.name for r in failing_trees] == ["pipeline"]
    with pytest.raises(LangSmithError, match="unknown field .*nope.* at position 3"):
        list(client.list_runs(project_name=project, filter='eq(nope, "pipeline")'))


def test_queries_a_client_gets_wrong_are_400(server):
    headers = {"x-api-key": KEY}
    for body in (b"[]", b"{", b'{"limit": 0}', b'{"trace": "x"}', b'{"nope": 1}', b'{"cursor": "zz"}'):
        response = server.client.post(body, "/runs/query", headers=headers)
        assert response.status == 400, (body, response.body)
    assert server.client.post(b"{}", "/runs/query", headers={"x-api-key": "bad"}).status == 401
    assert server.client.get("/sessions?limit=0", headers=headers).status == 400
    assert server.client.get("/sessions/not-a-uuid", headers=headers).status == 400
    assert server.client.get(f"/sessions/{uuid.uuid4()}", headers=headers).status == 404


def test_the_migration_gives_older_runs_their_projects(settings):
    """Rows written before 0005 get the project ids that ingestion derives (the SQL uuid3 matches
    Python's), and their projects exist."""
    with scratch_database(settings, "_sessions", before="0005_sessions") as scratch:
        migrations = read_migrations(str(SCHEMA_DIR))
        with FreshConnections(scratch).cursor() as cur:
            insert = (
                "INSERT INTO runs (tenant, id, trace_id, name, object_key, size_bytes, session_name)"
                " VALUES (%s, %s, %s, 'r', %s, 2, %s)"
            )
            for tenant, project in (("acme", "legacy é"), ("acme", None), ("zeta", "legacy é")):
                cur.execute(insert, (tenant, str(uuid.uuid4()), str(uuid.uuid4()), uuid.uuid4().hex, project))
            assert migrate(scratch) == len([m for m in migrations if m.id >= "0005_sessions"])
            cur.execute("SELECT tenant, id::text, name FROM sessions ORDER BY tenant, name")
            assert cur.fetchall() == [
                ("acme", str(session_id_for("acme", "default")), "default"),
                ("acme", str(session_id_for("acme", "legacy é")), "legacy é"),
                ("zeta", str(session_id_for("zeta", "legacy é")), "legacy é"),
            ]
            cur.execute("SELECT count(*) FROM runs WHERE session_id IS NULL")
            assert cur.fetchone()[0] == 0
            assert rollback_last(scratch) == 1 and migrate(scratch) == 1
