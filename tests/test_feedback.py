"""Feedback through the real ``langsmith`` SDK (0.15.1), against a live server.

``create_feedback`` with a ``trace_id`` goes, after our /info, into the SDK's background queue
and out as ``feedback.<id>`` parts of ``/runs/multipart`` bodies, beside the runs; without one it
is a ``POST /feedback``. Both are driven inside a traced pipeline whose runs must all be stored,
then read back with ``list_feedback``, ``read_feedback``, ``update_feedback``, ``delete_feedback``,
``read_run`` and ``list_runs`` (``feedback_stats``). The server's access log says which requests
the SDK made: none may fail, none may be retried.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from datetime import UTC, datetime

import pytest
from langsmith import Client, get_current_run_tree, traceable, tracing_context
from langsmith._exceptions import APIStatusError
from langsmith.schemas import FeedbackSourceType
from langsmith.utils import LangSmithConflictError, LangSmithNotFoundError

from handler.read.sessions import session_id_for
from handler.server.auth import hash_key
from tests.server import start_server

SESSION = uuid.uuid4().hex[:8]
TENANT, OTHER = f"fb-{SESSION}", f"fb-other-{SESSION}"
KEY, OTHER_KEY = f"key-{TENANT}", f"key-{OTHER}"
# The SDK asks for session_id on run feedback (a warning without it); the pipeline test gives it,
# the others leave it out, as most programs still do. list_runs/read_run warn of their deprecation.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Creating feedback for a run without session_id"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
_ACCESS = re.compile(r"\b(GET|POST|PATCH|DELETE|PUT) (/\S*) (\d{3}) ")


@pytest.fixture(scope="module")
def server(tmp_path_factory, db):
    srv = start_server(
        tmp_path_factory.mktemp("feedback"),
        "feedback",
        API_KEYS=f"{TENANT}:{hash_key(KEY)},{OTHER}:{hash_key(OTHER_KEY)}",
    )
    yield srv
    srv.stop()
    assert srv.process.returncode == 0, open(srv.log_path).read()[-3000:]
    with db.cursor() as cur:
        cur.execute("DELETE FROM feedback WHERE tenant = ANY(%s)", ([TENANT, OTHER],))
        cur.execute("DELETE FROM runs WHERE tenant = ANY(%s)", ([TENANT, OTHER],))


def _client(server, key: str = KEY) -> Client:
    return Client(api_url=f"http://127.0.0.1:{server.client.port}", api_key=key)


def _requests(server) -> list[tuple[str, str, int]]:
    """(method, path, status) of every request the server has answered, from its access log."""
    with open(server.log_path) as log:
        return [(m, p, int(s)) for m, p, s in _ACCESS.findall(log.read())]


def _requests_since(server, before: int, at_least: int) -> list[tuple[str, str, int]]:
    """The requests answered after the first ``before``, once ``at_least`` of them are logged (a
    line is written just after its answer is sent, so the client may see the answer first)."""
    deadline = time.monotonic() + 10
    while len(found := _requests(server)[before:]) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _runs(client: Client, project: str, expected: int) -> list:
    """list_runs once the background sender's last request has committed."""
    deadline = time.monotonic() + 15
    while True:
        try:
            runs = list(client.list_runs(project_name=project))
        except LangSmithNotFoundError:
            runs = []
        if len(runs) >= expected and all(r.end_time for r in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.2)


@traceable(run_type="llm", name="answer")
def answer(question: str) -> str:
    return question.upper()


@traceable(run_type="tool", name="check")
def check(text: str) -> None:
    raise ValueError(f"unchecked: {text[:8]}")


@traceable(run_type="chain", name="pipeline")
def pipeline(client: Client, question: str, session_id: uuid.UUID) -> dict:
    """Records feedback while it runs, as an application storing a user's rating does."""
    root = get_current_run_tree()
    reply = answer(question)
    try:
        check(reply)
    except ValueError:
        pass
    ids = {"root": root.id, "answer": root.child_runs[0].id, "check": root.child_runs[1].id}
    # With trace_id: queued, sent as multipart parts with the runs.
    client.create_feedback(
        ids["answer"], key="correctness", score=1, trace_id=root.id, session_id=session_id, comment="right"
    )
    client.create_feedback(ids["root"], key="thumbs", score=True, trace_id=root.id, session_id=session_id)
    # Without: one POST /feedback each, made now, before the runs have been sent.
    client.create_feedback(ids["check"], key="correctness", score=0, session_id=session_id, comment="wrong")
    client.create_feedback(ids["root"], key="label", value="good", session_id=session_id)
    return {"reply": reply, **ids}


def test_a_traced_pipeline_recording_feedback_loses_no_run_and_retries_nothing(server, caplog):
    client = _client(server)
    project = f"fb-pipeline-{SESSION}"
    session = session_id_for(TENANT, project)  # the id the project gets from its first run
    caplog.set_level(logging.WARNING, logger="langsmith")
    with tracing_context(enabled=True, client=client, project_name=project):
        out = pipeline(client, "is it stored?", session)
    client.flush()
    runs = _runs(client, project, 3)
    assert sorted(r.name for r in runs) == ["answer", "check", "pipeline"]
    assert {r.id for r in runs} == {out["root"], out["answer"], out["check"]}

    feedback = list(client.list_feedback(run_ids=[out["root"], out["answer"], out["check"]]))
    got = {(str(f.run_id), f.key): f for f in feedback}
    assert set(got) == {
        (str(out["answer"]), "correctness"),
        (str(out["root"]), "thumbs"),
        (str(out["check"]), "correctness"),
        (str(out["root"]), "label"),
    }
    assert got[(str(out["answer"]), "correctness")].score == 1
    assert got[(str(out["answer"]), "correctness")].trace_id == out["root"]
    assert got[(str(out["root"]), "thumbs")].score == 1  # True is stored as 1
    assert got[(str(out["check"]), "correctness")].comment == "wrong"
    assert got[(str(out["root"]), "label")].value == "good"
    assert all(f.session_id == session for f in feedback)

    sent = _requests(server)
    assert [s for _, _, s in sent if s >= 400] == [], sent  # nothing failed, so nothing was retried
    assert [p for m, p, _ in sent if m == "POST" and p == "/feedback"] == ["/feedback"] * 2
    assert {p for m, p, _ in sent if m == "POST"} <= {"/feedback", "/runs/multipart", "/runs/query"}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records


def test_feedback_reads_back_updates_and_deletes(server):
    client = _client(server)
    run_id, source_run = uuid.uuid4(), uuid.uuid4()
    group, experiment = uuid.uuid4(), uuid.uuid4()
    created = client.create_feedback(
        run_id,
        key="quality",
        score=0.12345,
        value={"label": "fine", "votes": [1, 2]},
        correction={"answer": "42"},
        comment="close enough",
        feedback_source_type=FeedbackSourceType.MODEL,
        source_info={"judge": "tiny-model"},
        source_run_id=source_run,
        feedback_config={"type": "continuous", "min": 0, "max": 1},
        feedback_group_id=group,
        comparative_experiment_id=experiment,
        extra={"note": "é ☃"},
        error=False,
    )
    read = client.read_feedback(created.id)
    assert (read.id, read.run_id, read.trace_id, read.key) == (created.id, run_id, None, "quality")
    assert read.score == 0.1235  # the SDK rounds to 4 places
    assert read.value == {"label": "fine", "votes": [1, 2]} and read.correction == {"answer": "42"}
    assert read.comment == "close enough" and read.extra == {"note": "é ☃"}
    assert read.feedback_source.type == "model"
    assert read.feedback_source.metadata == {"judge": "tiny-model", "__run": {"run_id": str(source_run)}}
    assert (read.feedback_group_id, read.comparative_experiment_id) == (group, experiment)
    assert read.created_at == created.created_at

    client.update_feedback(created.id, score=0, value="changed", comment=None, correction=None)
    updated = client.read_feedback(created.id)
    assert (updated.score, updated.value, updated.comment, updated.correction) == (0, "changed", None, None)
    assert updated.key == "quality" and updated.extra == {"note": "é ☃"}
    assert updated.modified_at > read.modified_at and updated.created_at == read.created_at

    assert [f.id for f in client.list_feedback(run_ids=[run_id])] == [created.id]
    client.delete_feedback(created.id)
    assert list(client.list_feedback(run_ids=[run_id])) == []
    for call in (
        lambda: client.read_feedback(created.id),
        lambda: client.delete_feedback(created.id),
        lambda: client.update_feedback(created.id, score=1),
    ):
        with pytest.raises(LangSmithNotFoundError):
            call()


def test_feedback_before_its_run_is_kept_and_counted_once_the_run_comes(server):
    client = _client(server)
    project = f"fb-early-{SESSION}"
    root = uuid.uuid4()
    client.create_feedback(root, key="early", score=0, comment="before the run")  # POST /feedback
    client.create_feedback(root, key="early", score=1, trace_id=root)  # a multipart body of its own
    client.flush()
    assert sorted(f.score for f in client.list_feedback(run_ids=[root])) == [0, 1]
    with pytest.raises(LangSmithNotFoundError):
        client.read_run(root)

    with tracing_context(enabled=True, client=client, project_name=project):
        answer("late run", langsmith_extra={"run_id": root})
    client.flush()
    [run] = _runs(client, project, 1)
    stats = client.read_run(root).feedback_stats
    assert stats == {
        "early": {
            "n": 2,
            "avg": 0.5,
            "stdev": pytest.approx(0.5**0.5),
            "min": 0,
            "max": 1,
            "errors": 0,
            "values": {},
            "comments": ["before the run"],
            "sources": ["api"],
            "contains_thread_feedback": False,
        }
    }
    assert run.feedback_stats == stats


def test_feedback_for_a_run_that_never_comes_stays_listable(server):
    client = _client(server)
    missing = uuid.uuid4()
    created = client.create_feedback(missing, key="orphan", value="kept")
    assert [f.id for f in client.list_feedback(run_ids=[missing])] == [created.id]
    with pytest.raises(LangSmithNotFoundError):
        client.read_run(missing)


def test_listing_filters_and_pages(server):
    client = _client(server)
    run_id = uuid.uuid4()
    for i in range(130):  # queued with trace_id: a few multipart bodies
        client.create_feedback(
            run_id,
            key="even" if i % 2 == 0 else "odd",
            score=i,
            trace_id=run_id,
            feedback_source_type=FeedbackSourceType.MODEL if i < 10 else FeedbackSourceType.API,
        )
    client.flush()
    every = list(client.list_feedback(run_ids=[run_id]))  # pages of 100 and 30
    assert sorted(f.score for f in every) == list(range(130))
    assert len({f.id for f in every}) == 130
    assert [f.created_at for f in every] == sorted((f.created_at for f in every), reverse=True)
    odd = list(client.list_feedback(run_ids=[run_id], feedback_key=["odd"]))
    assert sorted(f.score for f in odd) == list(range(1, 130, 2))
    by_model = list(client.list_feedback(run_ids=[run_id], feedback_source_type=[FeedbackSourceType.MODEL]))
    assert sorted(f.score for f in by_model) == list(range(10))
    assert len(list(client.list_feedback(run_ids=[run_id], limit=7))) == 7


def test_another_tenant_sees_none_of_it_and_may_reuse_the_id(server):
    client, other = _client(server), _client(server, OTHER_KEY)
    run_id = uuid.uuid4()
    created = client.create_feedback(run_id, key="private", score=1)
    assert list(other.list_feedback(run_ids=[run_id])) == []
    for call in (
        lambda: other.read_feedback(created.id),
        lambda: other.update_feedback(created.id, score=0),
        lambda: other.delete_feedback(created.id),
    ):
        with pytest.raises(LangSmithNotFoundError):
            call()
    other.create_feedback(run_id, key="theirs", score=0, feedback_id=created.id)  # no 409 across tenants
    assert client.read_feedback(created.id).key == "private"
    assert other.read_feedback(created.id).key == "theirs"


def test_a_repeated_feedback_id_is_a_conflict(server):
    client = _client(server)
    run_id, feedback_id = uuid.uuid4(), uuid.uuid4()
    client.create_feedback(run_id, key="first", score=1, feedback_id=feedback_id)
    with pytest.raises(LangSmithConflictError):
        client.create_feedback(run_id, key="second", score=0, feedback_id=feedback_id)
    assert client.read_feedback(feedback_id).key == "first"


def test_info_version_turns_on_what_is_served_and_the_rest_fails_fast(server, caplog):
    client = _client(server)
    assert client.info.version == "0.16.0"
    caplog.set_level(logging.WARNING, logger="langsmith")
    resources = [client.runs, client.traces, client.threads, client.datasets]
    assert all(resources)
    assert not [r for r in caplog.records if "older than the minimum" in r.getMessage()]

    async def list_datasets():
        return await client.datasets.list_v2()

    before = len(_requests(server))
    with pytest.raises(APIStatusError) as refused:
        asyncio.run(list_datasets())
    assert refused.value.status_code == 501
    assert "does not implement" in refused.value.response.json()["error"]
    assert _requests_since(server, before, 1) == [("GET", "/api/v2/datasets", 501)]  # once: not retried

    before = len(_requests(server))
    with pytest.raises(LangSmithNotFoundError):  # a hand-written call to a route not served
        client.read_dataset(dataset_name="nope")
    assert [(m, s) for m, _, s in _requests_since(server, before, 1)] == [("GET", 404)]


def test_feedback_times_are_kept(server):
    client = _client(server)
    start = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    created = client.create_feedback(uuid.uuid4(), key="timed", score=1, start_time=start)
    assert client.read_feedback(created.id).start_time == start
