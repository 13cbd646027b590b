# ruff: noqa: E501  (the tables of cases read best one case a line)
"""LangSmith's filter language through the pinned SDK's ``list_runs`` (``POST /runs/query``): each
field and comparator, the three scopes, with the other parameters; hostile filters; and a property
test holding the SQL to a plain-Python reading of the same filter over the same runs.

The runs are posted as the SDKs write them (tags, ``extra.metadata``, token usage where OpenAI,
Anthropic and LangChain put it), so each test also checks what ingestion extracted.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langsmith import Client
from langsmith.utils import LangSmithError

from handler.base.errors import RunError
from handler.query import extract
from handler.query.compile import check
from handler.query.evaluate import evaluate
from handler.read.sessions import session_id_for
from handler.server.auth import hash_key
from handler.server.config import Settings
from handler.store.db import Database
from tests.server import start_server

KEY = "query-key"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


@pytest.fixture(scope="module", autouse=True)
def io_keys():
    """The server's IO_KEYS here too: check() refuses input_key ... without."""
    extract.configure(0, 8)
    yield
    extract.configure(0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Inputs' and outputs' text is searchable only when SEARCH_TEXT_CHARS asks for it (README).
    srv = start_server(
        tmp_path_factory.mktemp("query"),
        "query-api",
        API_KEYS=f"querier:{hash_key(KEY)}",
        SEARCH_TEXT_CHARS="1000",
        IO_KEYS="8",
    )
    yield srv
    srv.stop()
    assert srv.process.returncode == 0, open(srv.log_path).read()[-3000:]


def post_runs(server, runs: list[dict]) -> None:
    body = json.dumps({"post": runs}, default=str).encode()
    response = server.client.post(body, "/runs/batch", headers={"x-api-key": KEY})
    assert response.status in (200, 201, 202), response.body


def query(server, body: dict) -> tuple[int, dict]:
    response = server.client.post(json.dumps(body).encode(), "/runs/query", headers={"x-api-key": KEY})
    return response.status, json.loads(response.body)


def _run(name: str, trace: uuid.UUID, start: float, seconds: float | None, project: str, **fields) -> dict:
    run_id = fields.pop("id", uuid.uuid4())
    begin = T0 + timedelta(seconds=start)
    return {
        "id": str(run_id),
        "trace_id": str(trace),
        "name": name,
        "run_type": fields.pop("run_type", "chain"),
        "start_time": begin.isoformat(),
        **({"end_time": (begin + timedelta(seconds=seconds)).isoformat()} if seconds is not None else {}),
        "session_name": project,
        "inputs": fields.pop("inputs", {}),
        "outputs": fields.pop("outputs", {}),
        **fields,
    }


@pytest.fixture(scope="module")
def corpus(server):
    """Three traces: A (tagged prod, a 6,000-token LLM call, a failing tool), B (beta, LangChain's
    token_usage), C (still running, usage in extra.metadata.usage_metadata)."""
    project = f"query-{uuid.uuid4().hex[:8]}"
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    runs = [
        _run(
            "agent", a, 0, 10, project, id=a, tags=["prod"], inputs={"question": "hello there", "n": 3},
            extra={"metadata": {"user_id": "u-42", "env": "prod", "attempt": 2}},
        ),
        _run(
            "llm-a", a, 1, 6, project, parent_run_id=str(a), run_type="llm", tags=["prod", "gpt"],
            outputs={"usage_metadata": {"input_tokens": 4000, "output_tokens": 2000, "total_tokens": 6000}},
        ),
        _run("tool-a", a, 7, 1, project, parent_run_id=str(a), run_type="tool", error="TimeoutError: upstream"),
        _run("chat", b, 60, 2, project, id=b, tags=["beta"], extra={"metadata": {"user_id": "u-7"}}),
        _run(
            "llm-b", b, 60.2, 1.5, project, parent_run_id=str(b), run_type="llm",
            extra={"metadata": {"ls_model_name": "gpt-x"}},
            outputs={"llm_output": {"token_usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}},
        ),
        _run(
            "pending-one", c, 120, None, project, id=c, inputs={"question": "Where is Waldo?"},
            extra={"metadata": {"usage_metadata": {"input_tokens": 100, "output_tokens": 50}}},
        ),
    ]  # fmt: skip
    post_runs(server, runs)
    client = Client(api_url=f"http://127.0.0.1:{server.client.port}", api_key=KEY)
    ids = {r["name"]: r["id"] for r in runs}
    client.create_feedback(ids["tool-a"], key="correctness", score=0)
    client.create_feedback(ids["agent"], key="correctness", score=1)
    client.create_feedback(ids["agent"], key="note", comment="no score")
    client.create_feedback(ids["chat"], key="verdict", value="good")
    return client, project, ids


def names(client: Client, project: str, **kwargs) -> set[str]:
    return {r.name for r in client.list_runs(project_name=project, **kwargs)}


CASES = [
    ({"filter": 'eq(run_type, "llm")'}, {"llm-a", "llm-b"}),
    ({"filter": 'neq(run_type, "llm")'}, {"agent", "tool-a", "chat", "pending-one"}),
    ({"filter": 'in(run_type, ["tool", "llm"])'}, {"tool-a", "llm-a", "llm-b"}),
    ({"filter": 'eq(name, "chat")'}, {"chat"}),
    ({"filter": 'like(name, "llm-%")'}, {"llm-a", "llm-b"}),
    ({"filter": 'notlike(name, "%-%")'}, {"agent", "chat"}),
    ({"filter": 'eq(status, "error")'}, {"tool-a"}),
    ({"filter": 'eq(status, "pending")'}, {"pending-one"}),
    ({"filter": "neq(error, null)"}, {"tool-a"}),
    ({"filter": 'like(error, "Timeout%")'}, {"tool-a"}),
    ({"filter": "eq(is_root, true)"}, {"agent", "chat", "pending-one"}),
    ({"filter": "eq(is_root, false)"}, {"llm-a", "tool-a", "llm-b"}),
    ({"filter": "exists(end_time)"}, {"agent", "llm-a", "tool-a", "chat", "llm-b"}),
    (
        {"filter": f'gte(start_time, "{(T0 + timedelta(seconds=60)).isoformat()}")'},
        {"chat", "llm-b", "pending-one"},
    ),
    ({"filter": f'lt(end_time, "{(T0 + timedelta(seconds=7.5)).isoformat()}")'}, {"llm-a"}),
    ({"filter": 'gt(latency, "5s")'}, {"agent", "llm-a"}),
    ({"filter": "lt(latency, 2)"}, {"tool-a", "llm-b"}),
    ({"filter": 'lte(latency, "1500ms")'}, {"tool-a", "llm-b"}),
    ({"filter": 'has(tags, "prod")'}, {"agent", "llm-a"}),
    ({"filter": 'in(tags, ["gpt", "beta"])'}, {"llm-a", "chat"}),
    ({"filter": 'neq(tags, "prod")'}, {"tool-a", "chat", "llm-b", "pending-one"}),
    ({"filter": 'and(eq(metadata_key, "user_id"), eq(metadata_value, "u-42"))'}, {"agent"}),
    ({"filter": 'and(eq(metadata_key, "env"), eq(metadata_value, "u-42"))'}, set()),
    ({"filter": 'eq(metadata_key, "ls_model_name")'}, {"llm-b"}),
    ({"filter": 'eq(metadata_value, "u-7")'}, {"chat"}),
    ({"filter": 'and(eq(metadata_key, "attempt"), eq(metadata_value, 2))'}, {"agent"}),
    ({"filter": 'and(eq(metadata_key, "user_id"), like(metadata_value, "u-%"))'}, {"agent", "chat"}),
    ({"filter": 'has(metadata, \'{"env": "prod"}\')'}, {"agent"}),
    ({"filter": "gt(total_tokens, 5000)"}, {"llm-a"}),
    ({"filter": "eq(total_tokens, 15)"}, {"llm-b"}),
    ({"filter": "eq(total_tokens, 150)"}, {"pending-one"}),
    ({"filter": "gte(prompt_tokens, 100)"}, {"llm-a", "pending-one"}),
    ({"filter": "lt(completion_tokens, 10)"}, {"llm-b"}),
    ({"filter": "exists(total_tokens)"}, {"llm-a", "llm-b", "pending-one"}),
    ({"filter": 'search("timeout")'}, {"tool-a"}),
    ({"filter": 'search("waldo")'}, {"pending-one"}),
    ({"filter": 'search("u-42")'}, {"agent"}),
    ({"filter": 'search("GPT")'}, {"llm-a", "llm-b"}),
    ({"query": "waldo"}, {"pending-one"}),
    ({"filter": 'not(has(tags, "prod"))'}, {"tool-a", "chat", "llm-b", "pending-one"}),
    ({"filter": 'or(eq(name, "chat"), gt(total_tokens, 5000))'}, {"chat", "llm-a"}),
    ({"filter": 'and(eq(run_type, "llm"), not(eq(name, "llm-a")))'}, {"llm-b"}),
    ({"trace_filter": 'has(tags, "prod")'}, {"agent", "llm-a", "tool-a"}),
    ({"tree_filter": "neq(error, null)"}, {"agent", "llm-a", "tool-a"}),
    ({"tree_filter": 'eq(metadata_key, "ls_model_name")', "filter": "eq(is_root, true)"}, {"chat"}),
    ({"filter": 'eq(run_type, "llm")', "trace_filter": 'has(tags, "beta")'}, {"llm-b"}),
    ({"filter": 'and(eq(feedback_key, "correctness"), eq(feedback_score, 0))'}, {"tool-a"}),
    ({"filter": 'eq(feedback_key, "correctness")'}, {"agent", "tool-a"}),
    ({"filter": 'and(eq(feedback_key, "note"), neq(feedback_score, 1))'}, {"agent"}),
    ({"filter": 'not(eq(feedback_key, "correctness"))'}, {"llm-a", "chat", "llm-b", "pending-one"}),
    (
        {"trace_filter": 'and(eq(feedback_key, "correctness"), gte(feedback_score, 1))'},
        {"agent", "llm-a", "tool-a"},
    ),
    ({"tree_filter": "lt(feedback_score, 0.5)", "filter": "eq(is_root, true)"}, {"agent"}),
    ({"filter": 'eq(input_key, "question")'}, {"agent", "pending-one"}),
    ({"filter": 'and(eq(input_key, "question"), eq(input_value, "Where is Waldo?"))'}, {"pending-one"}),
    ({"filter": 'and(eq(input_key, "n"), eq(input_value, 3))'}, {"agent"}),
    ({"filter": 'like(input_value, "Where%")'}, {"pending-one"}),
    ({"filter": 'eq(output_key, "usage_metadata")'}, {"llm-a"}),
    ({"filter": 'and(eq(output_key, "llm_output"), neq(output_value, "x"))'}, {"llm-b"}),
    ({"filter": 'and(eq(output_key, "llm_output"), eq(output_value, "x"))'}, set()),
    ({"tree_filter": 'eq(input_value, "Where is Waldo?")'}, {"pending-one"}),
    ({"filter": 'and(eq(feedback_key, "verdict"), eq(feedback_value, "good"))'}, {"chat"}),
    ({"filter": 'in(feedback_value, ["good", "bad"])'}, {"chat"}),
    ({"filter": 'and(eq(feedback_key, "correctness"), neq(feedback_value, "good"))'}, {"agent", "tool-a"}),
    ({"run_type": "llm", "filter": "gt(total_tokens, 100)"}, {"llm-a"}),
    ({"is_root": True, "tree_filter": "gt(total_tokens, 1000)"}, {"agent"}),
    ({"error": False, "trace_filter": "gt(latency, 5)", "filter": 'neq(run_type, "chain")'}, {"llm-a"}),
]


@pytest.mark.parametrize(("kwargs", "expected"), CASES, ids=[json.dumps(k) for k, _ in CASES])
def test_list_runs_filters(corpus, kwargs, expected):
    client, project, _ = corpus
    assert names(client, project, **kwargs) == expected


def test_ids_and_what_ingestion_extracted(corpus):
    client, project, ids = corpus
    assert names(client, project, filter=f'eq(id, "{ids["tool-a"]}")') == {"tool-a"}
    assert names(client, project, filter=f'eq(trace_id, "{ids["chat"]}")') == {"chat", "llm-b"}
    assert names(client, project, filter=f'eq(parent_run_id, "{ids["agent"]}")') == {"llm-a", "tool-a"}
    assert names(client, project, filter=f'in(id, ["{ids["chat"]}", "{ids["agent"]}"])') == {"chat", "agent"}
    (llm,) = client.list_runs(project_name=project, filter='eq(name, "llm-a")')
    assert (llm.prompt_tokens, llm.completion_tokens, llm.total_tokens) == (4000, 2000, 6000)
    assert llm.tags == ["prod", "gpt"]


def test_filter_pages_with_the_cursor(server, corpus):
    _, project, _ = corpus
    session = str(session_id_for("querier", project))
    seen, cursor = [], None
    while True:
        status, page = query(
            server, {"session": [session], "filter": 'neq(name, "x")', "limit": 2, "cursor": cursor}
        )
        assert status == 200
        seen += [r["name"] for r in page["runs"]]
        cursor = page["cursors"]["next"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(["agent", "llm-a", "tool-a", "chat", "llm-b", "pending-one"])


HOSTILE = [
    "not(" * 40 + 'eq(name, "x")' + ")" * 40,
    "and(" * 1000,
    'eq(name, "' + "x" * 20_000 + '")',
    'eq(name, "' + "x" * 1_500 + '")',
    "in(name, [" + ",".join(['"x"'] * 500) + "])",
    "or(" + ",".join(['eq(name, "x")'] * 300) + ")",
    'eq(name; DROP TABLE runs; --, "x")',
    'eq("name) OR 1=1 --", "x")',
    "eq(name, 'x') OR 1=1",
    'eq(pg_sleep, "1")',
    'pg_sleep(name, "1")',
    'eq(name, "x", "y")',
    "eq(total_tokens, 1e999999)",
    "gt(total_tokens, " + "9" * 100 + ")",
    'gt(start_time, "99999-01-01")',
    'eq(name, "\\ud800")',
    'eq(name, "\\u0000")',
    "\x00",
    'eq(unknown_field, "x")',
    'eq(thread_id, "x")',
    'like(feedback_value, "x")',
    "eq(input_value, null)",
    'eq(output_key, ["a"])',
    'like(input_value, "x\\\\")',
    "gt(input_value, 3)",
    'like(error, "x\\\\")',
    "search()",
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_filters_are_400(server, corpus, text):
    _, project, _ = corpus
    session = str(session_id_for("querier", project))
    for scope in ("filter", "trace_filter", "tree_filter"):
        status, answer = query(server, {"session": [session], scope: text})
        assert status == 400, (scope, answer)
        assert answer["error"].startswith(f"{scope}: "), answer


def test_sql_in_values_is_only_a_value(server, corpus):
    _, project, _ = corpus
    session = str(session_id_for("querier", project))
    for value in ("x'); DROP TABLE runs; --", "%' OR '1'='1", "\\'; SELECT pg_sleep(10); --"):
        for text in (
            f"eq(name, {json.dumps(value)})",
            f"has(tags, {json.dumps(value)})",
            f"search({json.dumps(value)})",
        ):
            assert query(server, {"session": [session], "filter": text}) == (
                200,
                {"runs": [], "cursors": {"next": None, "prev": None}},
            )
    status, answer = query(server, {"session": [session], "filter": 'eq(name, "agent")'})
    assert [r["name"] for r in answer["runs"]] == ["agent"]  # the table is still there


def test_search_needs_a_bound(server):
    status, answer = query(server, {"filter": 'search("x")'})
    assert status == 400 and "search() and query need a project" in answer["error"]
    status, answer = query(server, {"query": "x"})
    assert status == 400
    assert query(server, {"filter": 'eq(name, "x")'})[0] == 200  # a filter alone is bounded by its indexes


def test_a_costly_query_is_stopped_with_400(settings: Settings):
    async def attempt():
        db = Database(settings)
        await db.start()
        try:
            await db.fetch_bounded("SELECT pg_sleep(2)", (), 50)
        finally:
            await db.close()

    with pytest.raises(RunError) as raised:
        asyncio.run(attempt())
    assert raised.value.status == 400 and "longer than 50 ms" in str(raised.value)


# -- the property test ------------------------------------------------------------------------

TAGS = ["a", "b", "c"]
META_KEYS = ["k1", "k2", "user"]
META_VALUES = ["x", "y", "7", "true"]
NAMES = ["alpha", "beta", "gamma", "Delta"]
IO_KEYS = ["q", "n", "k0", "k3", "k11", "answer", "usage_metadata", "k%"]
IO_VALUES = ["timeout", "7", "true", "1.5", "w" * 100, "w" * 150, "%o%", "3"]
FEEDBACK_KEYS = ["correctness", "verdict"]
FEEDBACK_VALUES = ["good", "bad", "1", "true"]
WORDS = ["timeout", "apple", "zebra", "Quota"]


def make_corpus(project: str, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    runs = []
    for t in range(12):
        trace = uuid.uuid4()
        parents = [trace]
        for i in range(rng.randint(1, 6)):
            run_id = trace if i == 0 else uuid.uuid4()
            fields: dict = {"id": run_id, "run_type": rng.choice(["llm", "chain", "tool"])}
            if i:
                fields["parent_run_id"] = str(rng.choice(parents))
            if rng.random() < 0.6:
                fields["tags"] = rng.sample(TAGS, rng.randint(0, 3))
            if rng.random() < 0.6:
                meta = {
                    k: rng.choice([*META_VALUES, 7, True, 1.5])
                    for k in rng.sample(META_KEYS, rng.randint(0, 3))
                }
                fields["extra"] = {"metadata": meta}
            if rng.random() < 0.3:
                fields["error"] = f"Error: {rng.choice(WORDS)}"
            usage = rng.random()
            if usage < 0.25:
                fields["outputs"] = {
                    "usage_metadata": {
                        "input_tokens": rng.randint(0, 99),
                        "output_tokens": rng.randint(0, 99),
                    }
                }
            elif usage < 0.4:
                fields["outputs"] = {
                    "llm_output": {
                        "token_usage": {
                            "prompt_tokens": rng.randint(0, 99),
                            "total_tokens": rng.randint(100, 199),
                        }
                    }
                }
            elif usage < 0.5:
                fields["extra"] = {
                    **fields.get("extra", {}),
                    "metadata": {
                        **fields.get("extra", {}).get("metadata", {}),
                        "usage_metadata": {"total_tokens": rng.randint(0, 199)},
                    },
                }
            if rng.random() < 0.5:
                fields["inputs"] = {"q": rng.choice(WORDS), "n": [rng.choice(WORDS)]}
            elif rng.random() < 0.5:  # more top-level keys than are kept, long values, plain values
                fields["inputs"] = {
                    f"k{j}": rng.choice([*WORDS, 7, True, None, 1.5, "w" * 150, {"x": 1}])
                    for j in rng.sample(range(12), rng.randint(1, 12))
                }
            if rng.random() < 0.3:
                fields["outputs"] = {**fields.get("outputs", {}), "answer": rng.choice([*WORDS, 3, None])}
            seconds = None if rng.random() < 0.15 else rng.choice([0.5, 1, 2.5, 5, 10])
            runs.append(_run(rng.choice(NAMES), trace, t * 10 + i, seconds, project, **fields))
            if i:
                parents.append(run_id)
    return runs  # fmt: skip


KV_KEYS, KV_VALUE_CHARS = 8, 100  # IO_KEYS as the server is started, extract.py's bound, restated


def kv_of(value: object) -> dict:
    """The first top-level keys of inputs or outputs and their plain values as text."""
    if not isinstance(value, dict):
        return {}
    return {
        k: None
        if v is None or isinstance(v, dict | list)
        else (v if isinstance(v, str) else json.dumps(v))[:KV_VALUE_CHARS]
        for k, v in list(value.items())[:KV_KEYS]
    }


def python_row(run: dict) -> dict:
    """What the filter sees of a run, worked out here from the run as sent (not by extract.py)."""
    meta = (run.get("extra") or {}).get("metadata") or {}
    sources = [
        (run.get("outputs") or {}).get("usage_metadata"),
        meta.get("usage_metadata"),
        ((run.get("outputs") or {}).get("llm_output") or {}).get("token_usage"),
    ]
    usage = next((s for s in sources if s), {})
    prompt = usage.get("input_tokens", usage.get("prompt_tokens"))
    completion = usage.get("output_tokens", usage.get("completion_tokens"))
    total = usage.get("total_tokens")
    if total is None and (prompt is not None or completion is not None):
        total = (prompt or 0) + (completion or 0)
    values = {
        k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items() if not isinstance(v, dict)
    }
    texts = []

    def strings(value):
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                strings(item)
        elif isinstance(value, list):
            for item in value:
                strings(item)

    strings(run.get("inputs"))
    strings(run.get("outputs"))
    tags = run.get("tags") or []
    return {
        "id": run["id"],
        "trace_id": run["trace_id"],
        "parent_run_id": run.get("parent_run_id"),
        "name": run["name"],
        "run_type": run["run_type"],
        "status": "error" if "error" in run else "success" if "end_time" in run else "pending",
        "error": run.get("error"),
        "start_time": datetime.fromisoformat(run["start_time"]),
        "end_time": datetime.fromisoformat(run["end_time"]) if "end_time" in run else None,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "tags": tags,
        "metadata": values,
        "search_text": "\n".join([*tags, *values.values(), *texts]) or None,
        "inputs_kv": kv_of(run.get("inputs")),
        "outputs_kv": kv_of(run.get("outputs")),
        "feedback": run.get("feedback", []),
    }


def leaf() -> st.SearchStrategy[str]:
    q = json.dumps
    return st.one_of(
        st.builds(lambda o, v: f"{o}(run_type, {q(v)})", st.sampled_from(["eq", "neq"]), st.sampled_from(["llm", "chain", "tool"])),
        st.builds(lambda o, v: f"{o}(name, {q(v)})", st.sampled_from(["eq", "neq"]), st.sampled_from(NAMES)),
        st.builds(lambda v: f"like(name, {q(v)})", st.sampled_from(["%a", "D%", "_eta", "%mm%"])),
        st.builds(lambda o: f"{o}(error, null)", st.sampled_from(["eq", "neq"])),
        st.builds(lambda v: f'eq(status, "{v}")', st.sampled_from(["success", "error", "pending"])),
        st.builds(lambda v: f"eq(is_root, {v})", st.sampled_from(["true", "false"])),
        st.builds(lambda o, v: f"{o}(latency, {v})", st.sampled_from(["gt", "gte", "lt", "lte", "eq", "neq"]), st.sampled_from(["1", "2.5", '"5s"', '"500ms"'])),
        st.builds(lambda f, o, v: f"{o}({f}, {v})", st.sampled_from(["total_tokens", "prompt_tokens", "completion_tokens"]), st.sampled_from(["gt", "lt", "eq", "neq", "gte"]), st.integers(0, 200)),
        st.builds(lambda f: f"exists({f})", st.sampled_from(["total_tokens", "end_time", "error", "tags"])),
        st.builds(lambda v: f"has(tags, {q(v)})", st.sampled_from(TAGS)),
        st.builds(lambda v: f"in(tags, {q(v)})", st.lists(st.sampled_from(TAGS), max_size=2)),
        st.builds(lambda v: f"eq(metadata_key, {q(v)})", st.sampled_from(META_KEYS)),
        st.builds(lambda v: f"eq(metadata_value, {q(v)})", st.sampled_from([*META_VALUES, "1.5"])),
        st.builds(lambda k, v: f"and(eq(metadata_key, {q(k)}), eq(metadata_value, {q(v)}))", st.sampled_from(META_KEYS), st.sampled_from(META_VALUES)),
        st.builds(lambda k, o, v: f"and(eq(metadata_key, {q(k)}), {o}(metadata_value, {q(v)}))", st.sampled_from(META_KEYS), st.sampled_from(["neq", "like"]), st.sampled_from(["x", "%", "7%"])),
        st.builds(lambda v: f"has(metadata, {q(json.dumps(v))})", st.dictionaries(st.sampled_from(META_KEYS), st.sampled_from([*META_VALUES, 7]), min_size=1, max_size=2)),
        st.builds(lambda v: f"search({q(v)})", st.sampled_from([*WORDS, "QUOTA", "a", "user"])),
        st.builds(lambda o, s: f'{o}(start_time, "{(T0 + timedelta(seconds=s)).isoformat()}")', st.sampled_from(["gt", "lt"]), st.integers(0, 120)),
        st.builds(lambda f, o, v: f"{o}({f}, {q(v)})", st.sampled_from(["input_key", "output_key"]), st.sampled_from(["eq", "neq", "like"]), st.sampled_from(IO_KEYS)),
        st.builds(lambda f, o, v: f"{o}({f}, {q(v)})", st.sampled_from(["input_value", "output_value"]), st.sampled_from(["eq", "neq", "like", "notlike"]), st.sampled_from(IO_VALUES)),
        st.builds(lambda p, k, o, v: f"and(eq({p}_key, {q(k)}), {o}({p}_value, {q(v)}))", st.sampled_from(["input", "output"]), st.sampled_from(IO_KEYS), st.sampled_from(["eq", "neq"]), st.sampled_from(IO_VALUES)),
        st.builds(lambda o, v: f"{o}(feedback_key, {q(v)})", st.sampled_from(["eq", "neq"]), st.sampled_from(FEEDBACK_KEYS)),
        st.builds(lambda o, v: f"{o}(feedback_score, {v})", st.sampled_from(["gt", "lt", "eq", "neq"]), st.sampled_from([0, 0.5, 1])),
        st.builds(lambda o, v: f"{o}(feedback_value, {q(v)})", st.sampled_from(["eq", "neq"]), st.sampled_from(FEEDBACK_VALUES)),
        st.builds(lambda k, o, v: f"and(eq(feedback_key, {q(k)}), {o}(feedback_value, {q(v)}))", st.sampled_from(FEEDBACK_KEYS), st.sampled_from(["eq", "neq"]), st.sampled_from(FEEDBACK_VALUES)),
    )  # fmt: skip


expressions = st.recursive(
    leaf(),
    lambda inner: st.one_of(
        st.builds(lambda xs: f"and({', '.join(xs)})", st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: f"or({', '.join(xs)})", st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda x: f"not({x})", inner),
    ),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def random_corpus(server):
    project = f"property-{uuid.uuid4().hex[:8]}"
    runs = make_corpus(project)
    post_runs(server, runs)
    rng = random.Random(11)
    for run in rng.sample(runs, len(runs) // 2):  # feedback: scores and values, some of neither
        for key in rng.sample(FEEDBACK_KEYS, rng.randint(1, 2)):
            score, value = rng.choice([0, 0.5, 1, None]), rng.choice(["good", "bad", 1, True, None])
            body = {"run_id": run["id"], "key": key, "score": score, "value": value}
            response = server.client.post(json.dumps(body).encode(), "/feedback", headers={"x-api-key": KEY})
            assert response.status in (200, 201), response.body
            text = None if value is None else value if isinstance(value, str) else json.dumps(value)
            run.setdefault("feedback", []).append((key, None if score is None else float(score), text))
    rows = [python_row(run) for run in runs]
    session = str(session_id_for("querier", project))
    deadline = time.monotonic() + 10
    while query(server, {"session": [session], "limit": 100})[1]["runs"].__len__() < len(runs):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return session, rows


def expected_ids(rows: list[dict], scope: str, tree) -> set[str]:
    by_trace: dict[str, list[dict]] = {}
    for row in rows:
        by_trace.setdefault(row["trace_id"], []).append(row)
    if scope == "filter":
        return {r["id"] for r in rows if evaluate(tree, r)}
    if scope == "trace_filter":
        roots = {r["trace_id"] for r in rows if r["id"] == r["trace_id"] and evaluate(tree, r)}
        return {r["id"] for r in rows if r["trace_id"] in roots}
    matching = {t for t, members in by_trace.items() if any(evaluate(tree, m) for m in members)}
    return {r["id"] for r in rows if r["trace_id"] in matching}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=expressions, scope=st.sampled_from(["filter", "filter", "trace_filter", "tree_filter"]))
def test_sql_agrees_with_python(server, random_corpus, text, scope):
    session, rows = random_corpus
    status, answer = query(server, {"session": [session], scope: text, "limit": 100, "select": ["id"]})
    assert status == 200, answer
    assert {r["id"] for r in answer["runs"]} == expected_ids(rows, scope, check(text)), text


def test_an_error_names_what_is_wrong(corpus):
    client, project, _ = corpus
    with pytest.raises(LangSmithError, match="filter: expected .*, found the end at position 12"):
        list(client.list_runs(project_name=project, filter='eq(name, "x"'))
    with pytest.raises(LangSmithError, match="trace_filter: unknown field .*colour.* at position 3"):
        list(client.list_runs(project_name=project, trace_filter='eq(colour, "red")'))


def every_comparison() -> list[str]:
    """Each comparator on each field, over values that hit the runs' edges (missing values too)."""
    q, ops = json.dumps, ("eq", "neq", "gt", "gte", "lt", "lte")
    times = [(T0 + timedelta(seconds=s)).isoformat() for s in (0, 35, 130)]
    leaves = [
        f"{o}({f}, {v})"
        for f in ("total_tokens", "prompt_tokens", "completion_tokens")
        for o in ops
        for v in (0, 50, 150)
    ]
    leaves += [f"{o}(latency, {v})" for o in ops for v in ("1", "2.5", '"5s"')]
    leaves += [f"{o}({f}, {q(t)})" for f in ("start_time", "end_time") for o in ops for t in times]
    leaves += [f"{o}(name, {q(v)})" for o in ("eq", "neq") for v in NAMES]
    leaves += [f"{o}(name, {q(v)})" for o in ("like", "notlike") for v in ("%a", "D%", "_eta", "%")]
    leaves += [f"{o}(run_type, {q(v)})" for o in ("eq", "neq") for v in ("llm", "tool")] + [
        'in(run_type, ["llm", "tool"])'
    ]
    leaves += [f'{o}(status, "{v}")' for o in ("eq", "neq") for v in ("success", "error", "pending")]
    leaves += [
        "eq(error, null)",
        "neq(error, null)",
        'like(error, "%timeout%")',
        'notlike(error, "Error: a%")',
        'eq(error, "Error: zebra")',
    ]
    leaves += ["eq(is_root, true)", "eq(is_root, false)", "neq(is_root, true)"]
    leaves += [f"{f}(tags, {q(t)})" for f in ("has", "neq") for t in TAGS] + [
        'in(tags, ["a", "c"])',
        "in(tags, [])",
        "exists(tags)",
    ]
    leaves += [f"{o}(metadata_key, {q(k)})" for o in ("eq", "neq", "like") for k in [*META_KEYS, "k%"]]
    leaves += [
        f"{o}(metadata_value, {q(v)})" for o in ("eq", "neq", "like") for v in [*META_VALUES, "1.5", "%"]
    ]
    leaves += ['in(metadata_value, ["x", "7"])', 'in(metadata_key, ["k1", "nope"])']
    leaves += [
        f"and(eq(metadata_key, {q(k)}), {o}(metadata_value, {q(v)}))"
        for k in META_KEYS
        for o in ("eq", "neq")
        for v in META_VALUES
    ]
    leaves += [f"has(metadata, {q(json.dumps({k: v}))})" for k in META_KEYS for v in [*META_VALUES, 7, True]]
    leaves += [f"search({q(w)})" for w in [*WORDS, "QUOTA", "user", "1.5"]]
    for p in ("input", "output"):
        leaves += [f"{o}({p}_key, {q(k)})" for o in ("eq", "neq", "like", "notlike") for k in IO_KEYS]
        leaves += [f"{o}({p}_value, {q(v)})" for o in ("eq", "neq", "like", "notlike") for v in IO_VALUES]
        leaves += [f'in({p}_value, ["timeout", "7"])', f'in({p}_key, ["q", "nope"])']
        leaves += [
            f"and(eq({p}_key, {q(k)}), {o}({p}_value, {q(v)}))"
            for k in IO_KEYS
            for o in ("eq", "neq")
            for v in IO_VALUES[:4]
        ]
    leaves += [f"{o}(feedback_key, {q(k)})" for o in ("eq", "neq") for k in FEEDBACK_KEYS]
    leaves += [f"{o}(feedback_score, {v})" for o in ("eq", "neq", "gt", "lte") for v in (0, 0.5, 1)]
    leaves += [f"{o}(feedback_value, {q(v)})" for o in ("eq", "neq") for v in FEEDBACK_VALUES]
    leaves += ['in(feedback_value, ["good", "1"])'] + [
        f"and(eq(feedback_key, {q(k)}), {o}(feedback_value, {q(v)}))"
        for k in FEEDBACK_KEYS
        for o in ("eq", "neq")
        for v in FEEDBACK_VALUES
    ]
    leaves += [f"exists({f})" for f in ("total_tokens", "end_time", "error", "parent_run_id", "latency")]
    return leaves + [f"not({leaf})" for leaf in leaves]  # fmt: skip


def test_every_comparison_agrees(server, random_corpus):
    session, rows = random_corpus
    for text in every_comparison():
        for scope in ("filter", "tree_filter") if "tags" in text or "tokens" in text else ("filter",):
            status, answer = query(
                server, {"session": [session], scope: text, "limit": 100, "select": ["id"]}
            )
            assert status == 200, answer
            assert {r["id"] for r in answer["runs"]} == expected_ids(rows, scope, check(text)), (scope, text)
