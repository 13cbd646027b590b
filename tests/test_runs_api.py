"""POST /runs and GET /runs/{id} end to end: a real server, real PostgreSQL, real MinIO."""

from __future__ import annotations

import json
import random
import socket
import time
import uuid

import pytest

from tests.conftest import Store, start_server
from tests.reset_env import empty_bucket
from tests.runs import FIDELITY_RUN, batch, run, split, with_id


def test_round_trip_keeps_order_and_values(client, store):
    runs = [run(name=f"run {i}", inputs={"i": i}) for i in range(5)]
    before = store.snapshot()
    response = client.post(batch(*runs))
    assert response.status == 201, response.body
    ids = response.json()["ids"]
    assert len(ids) == 5
    for run_id, sent in zip(ids, runs, strict=True):
        got = client.get(f"/runs/{run_id}")
        assert got.status == 200
        assert got.json() == {"id": run_id, **sent}
    rows, keys = store.snapshot()
    assert rows - before[0] == set(ids)
    (segment,) = keys - before[1]  # small runs go up together
    assert "/segments/" in segment and store.runs_in({segment}) == 5


def test_client_supplied_ids_are_kept(client):
    runs = [run(id=str(uuid.uuid4())), run(), run(id=str(uuid.uuid4()).upper())]
    response = client.post(batch(*runs))
    assert response.status == 201
    ids = response.json()["ids"]
    assert ids[0] == runs[0]["id"]
    assert ids[2] == runs[2]["id"].lower()
    assert client.get(f"/runs/{ids[0]}").json() == runs[0]
    assert client.get(f"/runs/{ids[2]}").json() == runs[2]  # stored exactly as sent


def test_a_dotted_order_within_the_index_limit_is_stored_and_a_longer_one_is_400(client):
    """PostgreSQL indexes dotted_order (entries up to 2704 bytes): the longest order the field rule
    takes is stored and listed; one byte more is the client's 400, not a retried 503."""
    trace_id = str(uuid.uuid4())
    longest = run(trace_id=trace_id, dotted_order="é" * 1023 + "x" * 2)  # 2048 bytes of UTF-8
    response = client.post(batch(longest))
    assert response.status == 201, response.body
    listed = client.get(f"/runs?trace_id={trace_id}").json()["runs"]
    assert [r["dotted_order"] for r in listed] == [longest["dotted_order"]]
    too_long = run(trace_id=trace_id, dotted_order="é" * 1024 + "x")  # 2049 bytes
    response = client.post(batch(too_long))
    assert response.status == 400
    assert "dotted_order is longer than 2048 bytes" in response.json()["error"]


def test_values_come_back_exactly_as_sent(client):
    response = client.post(b"[" + FIDELITY_RUN + b"]")
    assert response.status == 201
    (run_id,) = response.json()["ids"]
    got = client.get(f"/runs/{run_id}")
    assert got.status == 200
    assert got.body == with_id(FIDELITY_RUN, run_id)
    for literal in (b"123456789012345678901234567890", b"9007199254740993", b"0.1", b"1e400", b"-0.0"):
        assert literal in got.body


@pytest.mark.parametrize("chunking", ["1-byte", "random"])
def test_chunking_does_not_change_what_is_stored(client, chunking):
    supplied = [run(id=str(uuid.uuid4()), inputs={"text": '}{][\\"' * 10}) for _ in range(3)]
    body = b"[" + FIDELITY_RUN + b"," + batch(*supplied)[1:]
    if chunking == "1-byte":
        chunks = split(body, 1)
    else:
        rng = random.Random(11)
        chunks, pos = [], 0
        while pos < len(body):
            step = rng.randint(1, 97)
            chunks.append(body[pos : pos + step])
            pos += step
    response = client.post(chunks)
    assert response.status == 201, response.body
    ids = response.json()["ids"]
    assert ids[1:] == [r["id"] for r in supplied]
    assert client.get(f"/runs/{ids[0]}").body == with_id(FIDELITY_RUN, ids[0])
    for run_id, sent in zip(ids[1:], supplied, strict=True):
        assert client.get(f"/runs/{run_id}").body == json.dumps(sent).encode()


def test_single_50_mb_run(client):
    big = run(inputs={"blob": "".join(random.choices("abcdefgh\u00e9\u2603", k=50 * 1024 * 1024 // 2))})
    body = batch(big)
    assert len(body) > 50_000_000
    response = client.post(split(body, 1 << 20))
    assert response.status == 201, response.body
    (run_id,) = response.json()["ids"]
    got = client.get(f"/runs/{run_id}")
    assert got.status == 200
    assert got.body == with_id(body[1:-1], run_id)


def test_ten_thousand_tiny_runs(client, store):
    runs = [{"trace_id": str(uuid.uuid4()), "name": f"r{i}"} for i in range(10_000)]
    before = store.snapshot()
    response = client.post(split(batch(*runs), 64 * 1024))
    assert response.status == 201, response.body
    ids = response.json()["ids"]
    assert len(ids) == 10_000 and len(set(ids)) == 10_000
    rows, keys = store.snapshot()
    assert len(rows - before[0]) == 10_000
    assert store.runs_in(keys - before[1]) == 10_000
    assert len(keys - before[1]) < 10  # ~0.6 MB of runs: a segment or two, not 10,000 objects
    for i in (0, 4321, 9999):
        assert client.get(f"/runs/{ids[i]}").json() == {"id": ids[i], **runs[i]}
    store.remove(rows - before[0], keys - before[1])


def test_runs_are_in_the_bucket_before_the_body_ends(client, store):
    first_half = [run(inputs={"n": i}) for i in range(10)]
    before = store.keys()
    conn = client.start_post()
    client.send_chunk(conn, b"[" + batch(*first_half)[1:-1] + b",")
    deadline = time.monotonic() + 20
    while store.runs_in(store.keys() - before) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    # A segment is sealed once its oldest run has waited SEGMENT_MAX_WAIT_MS, body or no body.
    assert store.runs_in(store.keys() - before) == 10, "runs not uploaded while the body was still open"
    client.send_chunk(conn, batch(run())[1:])
    response = client.finish(conn)
    assert response.status == 201
    assert len(response.json()["ids"]) == 11


def test_empty_array_stores_nothing(client, store):
    before = store.snapshot()
    response = client.post(b"[]")
    assert (response.status, response.json()) == (201, {"ids": []})
    store.assert_unchanged(before)


VALID = batch(run(), run(), run())
REJECTED = [
    pytest.param(VALID[: len(VALID) // 2], 400, "invalid JSON", id="truncated"),
    pytest.param(VALID[:-1] + b", garbage]", 400, "invalid JSON", id="garbage-after-runs"),
    pytest.param(VALID + b"[]", 400, "invalid JSON", id="two-top-level-values"),
    pytest.param(b'{"runs": []}', 400, "run 0: trace_id is required", id="object-that-is-not-a-run"),
    pytest.param(b'"runs"', 400, "array", id="string-at-top-level"),
    pytest.param(
        VALID[:-1] + b', {"name": "no trace"}]', 400, "run 3: trace_id is required", id="invalid-run"
    ),
    pytest.param(VALID[:-1] + b", 7]", 400, "run 3 must be an object", id="not-an-object"),
]


@pytest.mark.parametrize("body, status, words", REJECTED)
def test_rejected_batch_leaves_nothing_behind(client, store, body, status, words):
    before = store.snapshot()
    response = client.post(split(body, 100))
    assert response.status == status
    assert words in response.json()["error"]
    store.assert_unchanged(before)


def test_existing_id_is_409_and_the_stored_run_is_untouched(client, store):
    original = run(id=str(uuid.uuid4()), name="original")
    assert client.post(batch(original)).status == 201
    before = store.snapshot()
    response = client.post(batch(run(), run(id=original["id"], name="impostor")))
    assert response.status == 409
    assert response.json() == {"error": f"run 1: id {original['id']} already exists", "index": 1}
    store.assert_unchanged(before)
    assert client.get(f"/runs/{original['id']}").json() == original


def test_id_repeated_in_batch_is_409(client, store):
    run_id = str(uuid.uuid4())
    before = store.snapshot()
    response = client.post(batch(run(id=run_id), run(), run(id=run_id)))
    assert response.status == 409
    assert response.json()["index"] == 2
    store.assert_unchanged(before)
    assert client.get(f"/runs/{run_id}").status == 404


def test_wrong_content_type_is_415(client, store):
    before = store.snapshot()
    response = client.post(batch(run()), content_type="application/x-www-form-urlencoded")
    assert response.status == 415
    store.assert_unchanged(before)


def test_client_disconnect_mid_body_leaves_nothing(client, store):
    before = store.snapshot()
    conn = client.start_post()
    client.send_chunk(conn, b"[" + batch(*[run() for _ in range(20)])[1:-1] + b",")
    deadline = time.monotonic() + 20
    while not store.keys() - before[1] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.keys() - before[1], "nothing was uploaded before the disconnect"
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    store.assert_unchanged(before, timeout=20)


@pytest.fixture(scope="module")
def impatient_server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("idle"), "idle", BODY_IDLE_TIMEOUT="1")
    yield srv
    srv.stop()


def test_a_client_that_stops_sending_mid_body_gets_408_and_leaves_nothing(impatient_server, s3, db):
    store = Store(s3, db, impatient_server.bucket)
    before = store.snapshot()
    client = impatient_server.client
    conn = client.start_post()
    client.send_chunk(conn, b"[" + batch(*[run() for _ in range(10)])[1:-1] + b",")
    conn.sock.settimeout(15)  # a server that never gives up fails the test instead of hanging it
    response = conn.getresponse()  # without sending the rest: the server gives up and answers
    assert (response.status, json.loads(response.read())) == (408, {"error": "no body data for 1 s"})
    conn.close()
    store.assert_unchanged(before, timeout=10)


def test_a_slow_client_that_keeps_sending_is_not_cut_off(impatient_server):
    """The timeout is for silence, not for the whole body: 3 s of small chunks, 0.25 s apart."""
    body = batch(*[run() for _ in range(12)])
    step = len(body) // 12 + 1
    conn = impatient_server.client.start_post()
    for i in range(0, len(body), step):
        impatient_server.client.send_chunk(conn, body[i : i + step])
        time.sleep(0.25)
    response = impatient_server.client.finish(conn)
    assert (response.status, len(response.json()["ids"])) == (201, 12)


@pytest.mark.parametrize(
    "body, words, index",
    [
        pytest.param(batch(*[run() for _ in range(6)]), "more than 5 runs", 5, id="too-many-runs"),
        pytest.param(
            batch(run(), run(inputs={"x": "y" * 3000})), "run 1 is larger than 2000", 1, id="run-too-big"
        ),
        pytest.param(
            batch(*[run(inputs={"x": "y" * 1500}) for _ in range(5)]) + b" " * 15000,
            "body is larger than 20000",
            None,
            id="body-too-big",
        ),
    ],
)
def test_limits_answer_413_and_leave_nothing(limited_server, s3, db, body, words, index):
    store = Store(s3, db, limited_server.bucket)
    before = store.snapshot()
    response = limited_server.client.post(split(body, 1000))
    assert response.status == 413
    assert words in response.json()["error"]
    assert response.json().get("index") == index
    store.assert_unchanged(before)


def test_content_length_over_the_limit_is_refused_before_reading(limited_server):
    conn = limited_server.client.start_post(headers={"Content-Length": "1000000"})
    response = limited_server.client.finish(conn, chunked=False)  # no body sent at all
    assert response.status == 413
    assert "larger than 20000" in response.json()["error"]


def test_storage_failure_is_503_and_a_retry_succeeds(tmp_path, s3, db):
    from tests.conftest import Store

    bucket = f"runs-test-fault-{uuid.uuid4().hex[:8]}"
    srv = start_server(tmp_path, "fault", S3_BUCKET_NAME=bucket)
    try:
        store = Store(s3, db, bucket)
        body = batch(*[run() for _ in range(5)])
        s3.delete_bucket(Bucket=bucket)  # the server's bucket vanishes under it
        rows_before = store.row_ids()
        response = srv.client.post(body)
        assert response.status == 503
        assert "object storage unavailable" in response.json()["error"]
        assert store.row_ids() == rows_before
        s3.create_bucket(Bucket=bucket)
        response = srv.client.post(body)
        assert response.status == 201
        assert store.runs_in(store.keys()) == 5
    finally:
        srv.stop()
        empty_bucket(s3, bucket)


@pytest.mark.parametrize(
    "path, status", [("/runs/not-a-uuid", 400), (f"/runs/{uuid.uuid4()}", 404), ("/nowhere", 404)]
)
def test_get_errors(client, path, status):
    response = client.get(path)
    assert response.status == status
    assert "error" in response.json()
