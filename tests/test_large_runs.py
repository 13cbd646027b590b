"""Runs too large to hold: uploaded in parts (an S3 multipart upload) while they stream in, against
the real server and MinIO. A run larger than twice STREAM_PART_BYTES goes this way; the server here
uses the smallest part S3 allows, 5 MiB, so runs of 12-20 MB take several parts."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
import uuid

import pytest

from handler.maintenance.gc import collect_garbage
from handler.server.config import MIN_PART_BYTES
from tests.conftest import Store
from tests.runs import split
from tests.server import Server, start_server

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def parts_server(tmp_path_factory) -> Server:
    srv = start_server(tmp_path_factory.mktemp("parts"), "parts", STREAM_PART_BYTES=str(MIN_PART_BYTES))
    yield srv
    srv.stop()


@pytest.fixture
def storage(s3, db, parts_server) -> Store:
    return Store(s3, db, parts_server.bucket)


def open_uploads(storage: Store) -> list[dict]:
    return storage.s3.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", [])


def large(name: str, **fields) -> dict:
    """About 20 MB in 2000 string fields: many tokens, like a long conversation."""
    return {
        "trace_id": str(uuid.uuid4()),
        "name": name,
        "inputs": {f"k{i}": "x" * 10_000 for i in range(2000)},
        **fields,
    }


def post(server: Server, body: bytes):
    return server.client.post(split(body, CHUNK))


def stored_as(server: Server, storage: Store, run_id: str) -> tuple[bytes, str]:
    """The run's bytes from GET, and its object's ETag (an object uploaded in N parts has an ETag
    ending in -N)."""
    with storage.db.cursor() as cur:
        cur.execute("SELECT object_key FROM runs WHERE id = %s", (run_id,))
        (key,) = cur.fetchone()
    etag = storage.s3.head_object(Bucket=storage.bucket, Key=key)["ETag"].strip('"')
    return server.client.get(f"/runs/{run_id}").body, etag


def parts_in(etag: str) -> int:
    return int(etag.rsplit("-", 1)[1]) if "-" in etag else 1


@pytest.mark.parametrize(
    "shape",
    ["no id", "id first", "id last", "one long string"],
)
def test_a_large_run_is_stored_byte_for_byte_in_parts(parts_server, storage, shape):
    own_id = str(uuid.uuid4())
    if shape == "no id":
        run = large("big")
    elif shape == "id first":
        run = {"id": own_id, **large("big")}
    elif shape == "id last":
        run = {**large("big"), "id": own_id}
    else:
        run = {"trace_id": str(uuid.uuid4()), "name": "blob", "inputs": {"text": "y" * (16 * 1024 * 1024)}}
    sent = json.dumps(run).encode()
    response = post(parts_server, b"[" + sent + b"]")
    assert response.status == 201, response.body
    (run_id,) = response.json()["ids"]
    expected = sent if "id" in run else b'{"id":"' + run_id.encode() + b'",' + sent[1:]
    body, etag = stored_as(parts_server, storage, run_id)
    assert body == expected
    assert parts_in(etag) >= 3
    assert open_uploads(storage) == []


def test_small_and_large_runs_in_one_batch_keep_their_order(parts_server, storage):
    runs = [
        {"trace_id": str(uuid.uuid4()), "name": "a"},
        large("b"),
        {"trace_id": str(uuid.uuid4()), "name": "c"},
    ]
    sent = [json.dumps(r).encode() for r in runs]
    response = post(parts_server, b"[" + b",\n ".join(sent) + b"]")
    assert response.status == 201, response.body
    ids = response.json()["ids"]
    for run_id, run_bytes in zip(ids, sent, strict=True):
        body, etag = stored_as(parts_server, storage, run_id)
        assert body == b'{"id":"' + run_id.encode() + b'",' + run_bytes[1:]
        assert (parts_in(etag) > 1) == (len(run_bytes) > 2 * MIN_PART_BYTES)


def escaped_run(text: str) -> bytes:
    """A run whose inputs hold ``text`` as written, escapes and all (json.dumps would re-escape)."""
    return (
        b'{"trace_id": "'
        + str(uuid.uuid4()).encode()
        + b'", "name": "e", "inputs": {"t": "'
        + text.encode()
        + b'"}}'
    )


@pytest.mark.parametrize(
    "text",
    [
        "\\ud83d\\ude00" * 1_200_000,  # surrogate pairs everywhere: no cut may split one
        "\\\\ud800" * 2_000_000,  # an escaped backslash, then text: not a surrogate
        "\\\\" * 7_000_000,  # backslashes only: never cut cleanly, so held whole (still in bounds)
        "x" * 6_000_000 + "\\\\" * 3_000_000,  # a head can be cut, a part cannot: still one piece
    ],
    ids=["pairs", "escaped-backslash-then-ud800", "backslashes", "head-but-no-part"],
)
def test_escapes_across_part_boundaries_are_judged_like_whole_runs(parts_server, storage, text):
    sent = escaped_run(text)
    response = post(parts_server, b"[" + sent + b"]")
    assert response.status == 201, response.body
    (run_id,) = response.json()["ids"]
    body, _ = stored_as(parts_server, storage, run_id)
    assert body == b'{"id":"' + run_id.encode() + b'",' + sent[1:]
    assert open_uploads(storage) == []


def test_text_that_is_all_escapes_still_goes_up_in_parts(parts_server, storage):
    """json.dumps writes non-ASCII as \\u escapes, a backslash every 6 bytes: cuts fall before them."""
    run = {
        "trace_id": str(uuid.uuid4()),
        "name": "zh",
        "inputs": {"s": ["你好世界，这是一个测试句子。" * 3] * 80_000},
    }
    sent = json.dumps(run).encode()
    response = post(parts_server, b"[" + sent + b"]")
    assert response.status == 201, response.body
    (run_id,) = response.json()["ids"]
    body, etag = stored_as(parts_server, storage, run_id)
    assert body == b'{"id":"' + run_id.encode() + b'",' + sent[1:]
    assert parts_in(etag) >= 3


def refused_leaves_nothing(server: Server, storage: Store, body: bytes, status: int, words: str) -> None:
    before = storage.snapshot()
    response = post(server, body)
    assert response.status == status, response.body
    assert words in response.json()["error"]
    storage.assert_unchanged(before, timeout=10)
    assert open_uploads(storage) == []


@pytest.mark.parametrize(
    "tail, words",
    [
        (b', "name": "again"}', "duplicate key 'name'"),
        (b', "x": \\ud800}', "invalid JSON"),
        (b', "tags": [1]}', "tags must be an array of strings"),
    ],
)
def test_a_large_run_refused_at_its_end_leaves_nothing(parts_server, storage, tail, words):
    sent = json.dumps(large("big")).encode()[:-1] + tail
    refused_leaves_nothing(parts_server, storage, b"[" + sent + b"]", 400, words)


def test_an_unpaired_surrogate_inside_a_part_is_refused(parts_server, storage):
    text = "a" * 6_000_000 + "\\ud800" + "b" * 6_000_000
    refused_leaves_nothing(parts_server, storage, b"[" + escaped_run(text) + b"]", 400, "unpaired surrogate")


def test_a_large_run_with_a_taken_id_is_409_and_leaves_nothing(parts_server, storage):
    taken = str(uuid.uuid4())
    assert (
        post(
            parts_server, json.dumps([{"id": taken, "trace_id": str(uuid.uuid4()), "name": "a"}]).encode()
        ).status
        == 201
    )
    body = b"[" + json.dumps({**large("big"), "id": taken}).encode() + b"]"
    refused_leaves_nothing(parts_server, storage, body, 409, "already exists")


def test_a_client_gone_mid_run_leaves_nothing(parts_server, storage):
    before = storage.snapshot()
    sent = json.dumps(large("big")).encode()
    conn = parts_server.client.start_post()
    for chunk in split(b"[" + sent[: 15 * 1024 * 1024], CHUNK):
        parts_server.client.send_chunk(conn, chunk)
    time.sleep(0.5)  # parts are on their way
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    storage.assert_unchanged(before, timeout=15)
    deadline = time.monotonic() + 15
    while open_uploads(storage) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_uploads(storage) == []


def test_gc_drops_uploads_in_parts_left_by_a_crash(parts_server, storage, settings):
    """A process killed mid-run leaves an unfinished upload (invisible to listings of objects)."""
    key = f"default/runs/{uuid.uuid4()}/{uuid.uuid4().hex}.json"
    other = "not-ours/some-upload.bin"
    for k in (key, other):
        storage.s3.create_multipart_upload(Bucket=storage.bucket, Key=k)
    ours = dataclasses.replace(settings, s3_bucket_name=storage.bucket)
    asyncio.run(collect_garbage(ours, grace_seconds=0))
    left = [u["Key"] for u in open_uploads(storage)]
    assert left == [other]
    storage.s3.abort_multipart_upload(
        Bucket=storage.bucket, Key=other, UploadId=open_uploads(storage)[0]["UploadId"]
    )


def test_a_large_run_posted_after_its_patch_takes_the_patch(parts_server, storage):
    """The patch is stored first (a row not yet posted); the post's object, joined from parts, is
    read back at commit and merged under the patch."""
    run_id = str(uuid.uuid4())
    conn = parts_server.client.connect()
    try:
        conn.request("PATCH", f"/runs/{run_id}", b'{"name": "patched"}', {"Content-Type": "application/json"})
        answer = conn.getresponse()
        assert (answer.status, json.loads(answer.read())) == (200, {"id": run_id})
    finally:
        conn.close()
    run = {"id": run_id, **large("big")}
    response = post(parts_server, b"[" + json.dumps(run).encode() + b"]")
    assert (response.status, response.json()) == (201, {"ids": [run_id]}), response.body
    assert json.loads(parts_server.client.get(f"/runs/{run_id}").body) == {**run, "name": "patched"}
    assert open_uploads(storage) == []


def test_a_60_mb_string_goes_up_in_parts_while_it_arrives(parts_server, storage):
    """A single string is not held back until it ends (by yajl, or by the splitter's doubling
    feeds): with 50 of its 60 MB sent and the client pausing, all but the last few parts are in
    S3 already; the run is stored byte for byte once it ends."""
    run_id = str(uuid.uuid4())
    head = json.dumps({"id": run_id, "trace_id": str(uuid.uuid4()), "name": "s"})[:-1].encode()
    sent = head + b',"inputs":{"text":"' + b"z" * (60 * 1024 * 1024) + b'"}}'
    body = b"[" + sent + b"]"
    client = parts_server.client
    conn = client.start_post()
    pause = 50 * 1024 * 1024
    for i in range(0, pause, CHUNK):
        client.send_chunk(conn, body[i : min(i + CHUNK, pause)])
    # What the server may still hold: the run's head and two parts being gathered, the parts in
    # flight (polled, so those end), and a chunk or so.
    wanted = pause - 3 * MIN_PART_BYTES - 2 * CHUNK
    uploaded, deadline = 0, time.monotonic() + 60
    while uploaded < wanted and time.monotonic() < deadline:
        uploaded = 0
        for upload in open_uploads(storage):
            if run_id in upload["Key"]:
                key, upload_id = upload["Key"], upload["UploadId"]
                listed = storage.s3.list_parts(Bucket=storage.bucket, Key=key, UploadId=upload_id)
                uploaded += sum(part["Size"] for part in listed.get("Parts", []))
        time.sleep(0.2)
    assert uploaded >= wanted, (uploaded, wanted)
    for i in range(pause, len(body), CHUNK):
        client.send_chunk(conn, body[i : i + CHUNK])
    response = client.finish(conn)
    assert response.status == 201, response.body
    body_back, etag = stored_as(parts_server, storage, run_id)
    assert body_back == sent
    assert parts_in(etag) >= 10
