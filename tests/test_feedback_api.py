"""The feedback API with hand-built bodies, against a live server, PostgreSQL and MinIO.

- ``feedback.<id>`` parts of ``/runs/multipart``: written with the body's runs, all or nothing; a
  bad part fails its body with 400 naming the part, and nothing of that body is stored;
- ``POST /feedback`` refusals naming the field, its limits, ``GET /feedback`` parameters,
  ``PATCH /feedback/{id}`` refusals;
- ``GET /runs/{id}`` of a run with feedback: its bytes with ``feedback_stats`` added last;
- what is not served: ``/api/v1|v2/...`` answers 501 with ``x-should-retry: false``;
- the migration rolls back and applies again.

The server writes to a bucket and a tenant of this module's own, removed at the end.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from handler.server.auth import hash_key
from handler.store import outcome
from handler.store.db import Database
from handler.store.migrations import migrate, rollback_last
from tests.client import HttpClient, Response
from tests.conftest import FreshConnections, scratch_database
from tests.reset_env import empty_bucket
from tests.runs import split
from tests.server import start_server

SESSION = uuid.uuid4().hex[:8]
BUCKET = f"runs-test-feedback-{SESSION}"
TENANT = f"fbapi-{SESSION}"
KEY = f"key-{TENANT}"
HEADERS = {"x-api-key": KEY}
MAX_FEEDBACK = 4096
BOUNDARY = "fbapi-boundary-7c1e"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
OTHER_ID = str(uuid.uuid4()).encode()
CHUNK = 11  # bytes per HTTP chunk: parts and fields cross chunk boundaries


@pytest.fixture(scope="module")
def api(tmp_path_factory, s3, db):
    srv = start_server(
        tmp_path_factory.mktemp("feedback-api"),
        "feedback-api",
        S3_BUCKET_NAME=BUCKET,
        API_KEYS=f"{TENANT}:{hash_key(KEY)}",
        MAX_FEEDBACK_BYTES=str(MAX_FEEDBACK),
    )
    yield srv
    srv.stop()
    assert srv.process.returncode == 0, open(srv.log_path).read()[-3000:]
    with db.cursor() as cur:
        cur.execute("DELETE FROM feedback WHERE tenant = %s", (TENANT,))
        cur.execute("DELETE FROM runs WHERE tenant = %s", (TENANT,))
    empty_bucket(s3, BUCKET)


@pytest.fixture
def http(api) -> HttpClient:
    return api.client


class Stored:
    """What the tenant has: run rows, feedback rows, and the bucket's objects."""

    def __init__(self, s3, db) -> None:
        self.s3, self.db = s3, db

    def snapshot(self) -> tuple[set, set, set]:
        with self.db.cursor() as cur:
            cur.execute("SELECT id::text FROM runs WHERE tenant = %s", (TENANT,))
            runs = {r[0] for r in cur.fetchall()}
            cur.execute("SELECT id::text FROM feedback WHERE tenant = %s", (TENANT,))
            feedback = {r[0] for r in cur.fetchall()}
        keys = set()
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            keys.update(o["Key"] for o in page.get("Contents", []))
        return runs, feedback, keys

    def feedback_row(self, feedback_id: str) -> dict | None:
        with self.db.cursor() as cur:
            cur.execute(
                "SELECT run_id::text, trace_id::text, key, score, comment FROM feedback"
                " WHERE tenant = %s AND id = %s",
                (TENANT, feedback_id),
            )
            row = cur.fetchone()
        return dict(zip(("run_id", "trace_id", "key", "score", "comment"), row, strict=True)) if row else None


@pytest.fixture
def stored(api, s3, db) -> Stored:
    return Stored(s3, db)


def new_id() -> str:
    return str(uuid.uuid4())


def part(name: str, data: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\nContent-Type: {content_type}\r\n'
    )
    return head.encode() + b"\r\n" + data + b"\r\n"


def post_multipart(http: HttpClient, *parts: bytes) -> Response:
    body = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
    return http.post(split(body, CHUNK), "/runs/multipart", MULTIPART, HEADERS)


def run_part(run_id: str, trace_id: str | None = None) -> bytes:
    body = {"trace_id": trace_id or run_id, "name": "step", "run_type": "chain"}
    return part(f"post.{run_id}", json.dumps(body).encode())


def feedback(**fields) -> bytes:
    return json.dumps({"key": "correctness", "score": 1, **fields}).encode()


def post_feedback(http: HttpClient, body: bytes, content_type: str = "application/json") -> Response:
    return http.post(split(body, CHUNK), "/feedback", content_type, HEADERS)


def assert_refused(response: Response, status: int, words: str) -> None:
    assert response.status == status, response.body
    assert words in response.json()["error"], response.json()


# -- feedback parts of /runs/multipart -----------------------------------------------------------


def test_feedback_parts_are_written_with_the_runs_of_their_body(http, stored):
    run_id, trace_id, child = new_id(), new_id(), new_id()
    first, second, third = new_id(), new_id(), new_id()
    response = post_multipart(
        http,
        run_part(run_id, trace_id),
        part(f"feedback.{first}", feedback(run_id=run_id, comment="no trace_id: its run's")),
        part(f"feedback.{second}", feedback(id=second, trace_id=trace_id, score=0.5)),
        run_part(child, trace_id),
        part(f"feedback.{third}", feedback(run_id=new_id(), key="elsewhere", score=False)),
    )
    assert response.status == 202, response.body
    assert response.json() == {"ids": [run_id, child], "patched": [], "feedback": [first, second, third]}
    assert stored.feedback_row(first) == {
        "run_id": run_id,
        "trace_id": trace_id,  # from the run's row, written before it in the same transaction
        "key": "correctness",
        "score": 1.0,
        "comment": "no trace_id: its run's",
    }
    assert stored.feedback_row(second)["run_id"] == trace_id  # a trace's feedback is its root's
    assert stored.feedback_row(third)["score"] == 0.0


_DEEP = b'{"key": "k", "run_id": "%s", "extra": {"a": ' + b"[" * 520 + b"]" * 520 + b"}}"
HOSTILE = {
    "truncated JSON": (b'{"key": "k", "score": 1', "invalid JSON"),
    "not an object": (b"[1, 2]", "must be a JSON object"),
    "no key": (b'{"run_id": "%s", "score": 1}', "key is required"),
    "empty key": (b'{"run_id": "%s", "key": ""}', "key is required"),
    "key too long": (b'{"run_id": "%s", "key": "' + b"k" * 1025 + b'"}', "key is longer than 1024"),
    "key a number": (b'{"run_id": "%s", "key": 7}', "key is required"),
    "score a string": (b'{"run_id": "%s", "key": "k", "score": "high"}', "score must be a number"),
    "score too large": (b'{"run_id": "%s", "key": "k", "score": 1e400}', "score: a number is out of range"),
    "score NaN": (b'{"run_id": "%s", "key": "k", "score": NaN}', "invalid JSON: NaN is not a JSON number"),
    "value an array": (b'{"run_id": "%s", "key": "k", "value": [1]}', "value must be a string"),
    "run_id not a UUID": (b'{"run_id": "run-1", "key": "k"}', "run_id must be a UUID string"),
    "no run, trace or session": (b'{"key": "k", "score": 1}', "one of run_id, trace_id or session_id"),
    "another id": (
        b'{"id": "%s", "key": "k", "run_id": "%s"}'.replace(b"%s", OTHER_ID, 1),
        f"id {OTHER_ID.decode()} is not the part's id",
    ),
    "NUL in a comment": (
        b'{"run_id": "%s", "key": "k", "comment": "a\\u0000b"}',
        "comment: a string contains a NUL",
    ),
    "lone surrogate": (
        b'{"run_id": "%s", "key": "k", "comment": "\\ud800"}',
        "a \\u escape is an unpaired surrogate",
    ),
    "invalid UTF-8": (b'{"run_id": "%s", "key": "k\xff"}', "invalid UTF-8"),
    "duplicate key": (b'{"run_id": "%s", "key": "k", "key": "j"}', "duplicate key 'key'"),
    "nested too deep": (_DEEP, "extra: nested deeper than 512"),
    "bad created_at": (b'{"run_id": "%s", "key": "k", "created_at": "yesterday"}', "created_at must be"),
    "source not an object": (
        b'{"run_id": "%s", "key": "k", "feedback_source": "api"}',
        "feedback_source must be an object",
    ),
    "error not a boolean": (b'{"run_id": "%s", "key": "k", "error": "yes"}', "error must be a boolean"),
    "correction a number": (b'{"run_id": "%s", "key": "k", "correction": 3}', "correction must be"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_bad_feedback_part_fails_its_body_and_leaves_nothing(http, stored, case):
    template, words = HOSTILE[case]
    feedback_id = new_id()
    body = template.replace(b"%s", feedback_id.encode(), 1).replace(b"%s", new_id().encode())
    before = stored.snapshot()
    response = post_multipart(
        http, run_part(new_id()), part(f"feedback.{feedback_id}", body), run_part(new_id())
    )
    assert_refused(response, 400, f"part 1 (feedback.{feedback_id}): {words}")
    assert response.json()["index"] == 1
    assert stored.snapshot() == before


@pytest.mark.parametrize(
    "name, words",
    [
        ("feedback.not-a-uuid", "unknown part name"),
        (f"feedback.{uuid.uuid4()}.extra", "unknown part name"),
        ("feedback", "unknown part name"),
    ],
)
def test_a_feedback_part_with_a_bad_name_fails_its_body(http, stored, name, words):
    before = stored.snapshot()
    assert_refused(
        post_multipart(http, run_part(new_id()), part(name, feedback(run_id=new_id()))), 400, words
    )
    assert stored.snapshot() == before


def test_a_feedback_id_repeated_or_taken_is_409_and_the_body_leaves_nothing(http, stored):
    feedback_id, run_id = new_id(), new_id()
    before = stored.snapshot()
    repeated = part(f"feedback.{feedback_id}", feedback(run_id=run_id))
    response = post_multipart(http, run_part(new_id()), repeated, repeated)
    assert_refused(response, 409, f"feedback {feedback_id} is repeated in the body")
    assert stored.snapshot() == before

    assert post_feedback(http, feedback(id=feedback_id, run_id=run_id)).status == 200
    before = stored.snapshot()
    response = post_multipart(
        http, run_part(new_id()), part(f"feedback.{feedback_id}", feedback(run_id=run_id))
    )
    assert_refused(response, 409, f"feedback {feedback_id} already exists")
    assert stored.snapshot() == before


def test_a_bad_run_after_a_good_feedback_part_leaves_neither(http, stored):
    before = stored.snapshot()
    bad_run = part(f"post.{new_id()}", b'{"trace_id": "nope", "name": "x"}')
    response = post_multipart(http, part(f"feedback.{new_id()}", feedback(run_id=new_id())), bad_run)
    assert_refused(response, 400, "trace_id must be a UUID")
    assert stored.snapshot() == before


def test_a_feedback_part_over_the_limit_is_413(http, stored):
    feedback_id = new_id()
    before = stored.snapshot()
    big = feedback(run_id=new_id(), comment="x" * MAX_FEEDBACK)
    response = post_multipart(http, run_part(new_id()), part(f"feedback.{feedback_id}", big))
    assert_refused(
        response, 413, f"part 1 (feedback.{feedback_id}): a feedback is at most {MAX_FEEDBACK} bytes"
    )
    assert stored.snapshot() == before


# -- POST, GET, PATCH /feedback -------------------------------------------------------------------


def test_post_feedback_answers_what_it_stored(http, stored):
    trace_id = new_id()
    response = post_feedback(
        http, feedback(trace_id=trace_id, unknown_field={"ignored": True}, feedbackConfig=1)
    )
    assert response.status == 200, response.body
    answer = response.json()
    assert (answer["run_id"], answer["trace_id"], answer["key"], answer["score"]) == (
        trace_id,
        trace_id,
        "correctness",
        1.0,
    )
    assert "unknown_field" not in answer and answer["created_at"] == answer["modified_at"]
    assert stored.feedback_row(answer["id"])["run_id"] == trace_id


@pytest.mark.parametrize(
    "body, content_type, status, words",
    [
        (b'{"run_id": "%s", "key": 3}', "application/json", 400, "feedback: key is required"),
        (
            b'{"run_id": "%s", "key": "k", "session_id": "x"}',
            "application/json",
            400,
            "session_id must be a UUID",
        ),
        (b"", "application/json", 400, "feedback: invalid JSON"),
        (b'{"run_id": "%s", "key": "k"}', "text/plain", 415, "Content-Type must be application/json"),
        (
            b'{"run_id": "%s", "key": "' + b"k" * MAX_FEEDBACK + b'"}',
            "application/json",
            413,
            "at most 4096 bytes",
        ),
    ],
)
def test_post_feedback_refusals(http, stored, body, content_type, status, words):
    before = stored.snapshot()
    assert_refused(post_feedback(http, body.replace(b"%s", new_id().encode()), content_type), status, words)
    assert stored.snapshot() == before


def test_post_feedback_over_the_limit_by_its_length_is_refused_before_its_body(http):
    conn = http.start_post("/feedback", headers={**HEADERS, "Content-Length": str(MAX_FEEDBACK + 1)})
    response = http.finish(conn, chunked=False)  # not a byte of the body sent
    assert_refused(response, 413, f"a feedback is at most {MAX_FEEDBACK} bytes")


@pytest.mark.parametrize(
    "query, words",
    [
        ("user=me", "unsupported parameters: user"),
        ("run=nope", "run must be at most 1000 UUIDs"),
        ("limit=0", "limit must be an integer from 1 to 100"),
        ("limit=101", "limit must be an integer from 1 to 100"),
        ("offset=-1", "offset must be a non-negative integer"),
        ("source=human", "source must be api, model or app"),
        ("has_score=maybe", "has_score must be true or false"),
    ],
)
def test_listing_refuses_what_it_cannot_filter_by(http, query, words):
    assert_refused(http.get(f"/feedback?{query}", HEADERS), 400, words)


def test_listing_by_comment_and_score(http):
    run_id = new_id()
    for body in (feedback(run_id=run_id, comment="c"), feedback(run_id=run_id, score=None, value="v")):
        assert post_feedback(http, body).status == 200
    listed = http.get(f"/feedback?run={run_id}&has_comment=true", HEADERS).json()
    assert [f["comment"] for f in listed] == ["c"]
    listed = http.get(f"/feedback?run={run_id}&has_score=false", HEADERS).json()
    assert [f["value"] for f in listed] == ["v"]
    assert len(http.get(f"/feedback?run={run_id}&run={new_id()}", HEADERS).json()) == 2


@pytest.mark.parametrize(
    "body, content_type, status, words",
    [
        (b'{"key": "renamed"}', "application/json", 400, "cannot change key"),
        (b'{"score": "high"}', "application/json", 400, "score must be a number"),
        (b'{"comment": 1}', "application/json", 400, "comment must be a string"),
        (b"[]", "application/json", 400, "must be a JSON object"),
        (b'{"score": 1}', "text/plain", 415, "Content-Type must be application/json"),
    ],
)
def test_patch_refusals_change_nothing(http, body, content_type, status, words):
    created = post_feedback(http, feedback(run_id=new_id(), comment="kept")).json()
    conn = http.start_post(f"/feedback/{created['id']}", content_type, HEADERS, method="PATCH")
    http.send_chunk(conn, body)
    assert_refused(http.finish(conn), status, words)
    assert http.get(f"/feedback/{created['id']}", HEADERS).json() == created


def test_feedback_ids_must_be_uuids(http):
    for method in ("GET", "DELETE"):
        conn = http.connect()
        conn.request(method, "/feedback/nope", headers=HEADERS)
        response = conn.getresponse()
        assert response.status == 400 and b"feedback id must be a UUID" in response.read()
        conn.close()


# -- a run's bytes with its feedback_stats ---------------------------------------------------------


def test_a_run_with_feedback_comes_back_with_its_stats_added_last(http):
    run_id = new_id()
    run = b'{"id": "%s", "trace_id": "%s",  "name": "rated", "n": 1e400 }' % ((run_id.encode(),) * 2)
    assert http.post(run, "/runs", headers=HEADERS).status == 201
    assert http.get(f"/runs/{run_id}", HEADERS).body == run  # no feedback: the bytes as sent
    for score, value in ((1, "good"), (0, "good"), (None, "bad")):
        assert post_feedback(http, feedback(run_id=run_id, score=score, value=value)).status == 200
    body = http.get(f"/runs/{run_id}", HEADERS).body
    assert body.startswith(run[:-1] + b',"feedback_stats":{') and body.endswith(b"}")
    stats = json.loads(body)["feedback_stats"]["correctness"]
    assert (stats["n"], stats["avg"], stats["min"], stats["max"]) == (3, 0.5, 0.0, 1.0)
    assert stats["values"] == {"good": 2, "bad": 1} and stats["sources"] == []


# -- what is not served ----------------------------------------------------------------------------


@pytest.mark.parametrize("method, path", [("GET", "/api/v2/datasets"), ("POST", "/api/v1/examples/bulk")])
def test_langsmith_api_routes_not_served_answer_501_not_to_be_retried(http, method, path):
    conn = http.connect()
    conn.request(method, path, body=b"{}" if method == "POST" else None, headers=HEADERS)
    response = conn.getresponse()
    assert response.status == 501
    assert response.getheader("x-should-retry") == "false"
    assert "does not implement" in json.loads(response.read())["error"]
    conn.close()


def test_other_routes_not_served_answer_404_saying_so(http):
    response = http.get("/datasets?name=x", HEADERS)
    assert_refused(response, 404, "GET /datasets: no such route on this server")


def test_an_unknown_commit_is_settled_by_its_feedback_too(http, settings):
    """A body of feedback alone writes no object: when its commit's outcome is unknown (the
    connection broke), what settles it is the count of its feedback ids (outcome.count_committed)."""
    stored = post_feedback(http, feedback(run_id=new_id())).json()["id"]

    async def count(ids: list[str]) -> int:
        database = Database(settings)
        await database.start()
        try:  # (0, 0): no backend to wait for
            feedback_ids = [uuid.UUID(i) for i in ids]
            return await outcome.count_committed(database.connect, [], (0, 0), TENANT, feedback_ids)
        finally:
            await database.close()

    assert asyncio.run(count([stored, new_id()])) == 1
    assert asyncio.run(count([new_id()])) == 0


def test_a_broken_commit_with_nothing_to_count_is_never_taken_as_done(settings):
    """Settling counts what the transaction wrote; with nothing countable (no run, attachment or
    feedback id) a count of 0 proves nothing, so the outcome stays unknown (503), never success."""

    async def settle() -> None:
        database = Database(settings)  # not started: it must not need to ask
        with pytest.raises(outcome.CommitUnknown):
            await outcome.settle(database.connect, [], (0, 0), OSError("connection broke"))

    asyncio.run(settle())


# -- the migration ---------------------------------------------------------------------------------


def test_the_feedback_migration_rolls_back_and_applies_again(settings):
    with scratch_database(settings, "_feedback") as scratch:
        migrate(scratch)
        with FreshConnections(scratch).cursor() as cur:

            def has_table() -> bool:
                cur.execute("SELECT to_regclass('feedback') IS NOT NULL")
                return cur.fetchone()[0]

            cur.execute(
                "INSERT INTO feedback (tenant, id, run_id, key, created_at, modified_at)"
                " VALUES ('t', %s, %s, 'k', now(), now())",
                (new_id(), new_id()),
            )
            rolled_back = 0
            while has_table():  # 0006_feedback, and whatever came after it
                assert rollback_last(scratch) == 1
                rolled_back += 1
            cur.execute("SELECT to_regclass('runs') IS NOT NULL")
            assert cur.fetchone()[0]  # the runs stay
            assert migrate(scratch) == rolled_back and has_table()
