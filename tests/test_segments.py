"""Segments: many small runs to one S3 object, each run a byte range of it (segments.py).

Real servers, PostgreSQL and MinIO. A segment must be a JSON array of the runs exactly as GET
returns them; a GET must return exactly its run's range or fail; refused batches leave nothing;
compaction rewrites mostly-dead segments without changing a byte of any run.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from handler.server.config import REPO_ROOT, Settings
from handler.store.db import Database
from handler.store.migrations import SCHEMA_DIR, migrate, rollback_last
from tests.client import HttpClient
from tests.conftest import FreshConnections, Store, scratch_database
from tests.runs import batch, run, split
from tests.server import Server, run_handler, start_server
from tests.test_ops import wait_for_log

SMALL_SEGMENT, SMALL_PACK, SHORT_WAIT_MS = 20_000, 5_000, 200


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Server:
    """Segments of 20 KB, runs over 5 KB in objects of their own, sealed after 200 ms."""
    srv = start_server(
        tmp_path_factory.mktemp("segments"),
        "small-segments",
        SEGMENT_BYTES=str(SMALL_SEGMENT),
        PACK_MAX_RUN_BYTES=str(SMALL_PACK),
        SEGMENT_MAX_WAIT_MS=str(SHORT_WAIT_MS),
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory) -> Server:
    srv = start_server(tmp_path_factory.mktemp("unpacked"), "unpacked", SEGMENT_BYTES="0")
    yield srv
    srv.stop()


def rows_of(store: Store, ids: list[str]) -> dict[str, tuple[str, int | None, int]]:
    """{id: (object_key, object_offset, size_bytes)}"""
    with store.db.cursor() as cur:
        cur.execute(
            "SELECT id::text, object_key, object_offset, size_bytes FROM runs WHERE id = ANY(%s::uuid[])",
            (ids,),
        )
        return {run_id: (key, offset, size) for run_id, key, offset, size in cur.fetchall()}


def read_object(store: Store, key: str) -> bytes:
    return store.s3.get_object(Bucket=store.bucket, Key=key)["Body"].read()


def posted(client: HttpClient, runs: list[dict]) -> list[str]:
    response = client.post(split(batch(*runs), 4096))
    assert response.status == 201, response.body
    return response.json()["ids"]


def test_a_segment_is_a_json_array_of_the_runs_as_get_returns_them(client, store):
    runs = [run(name=f"packed {i}", inputs={"i": i, "s": 'é\\"}' * i}) for i in range(20)]
    before = store.keys()
    ids = posted(client, runs)
    (segment,) = store.keys() - before
    assert segment.startswith("default/segments/") and segment.endswith(".json")
    assert segment.split("/")[2] == time.strftime("%Y-%m-%d", time.gmtime())  # expirable by day
    data = read_object(store, segment)
    bodies = [client.get(f"/runs/{run_id}").body for run_id in ids]
    assert json.loads(data) == [json.loads(body) for body in bodies]  # what jq would read
    rows = rows_of(store, ids)
    for run_id, body in zip(ids, bodies, strict=True):
        key, offset, size = rows[run_id]
        assert (key, size) == (segment, len(body))
        assert data[offset : offset + size] == body  # the row's range is exactly the run


def test_a_batch_fills_segments_up_to_segment_bytes(small, store):
    runs = [run(inputs={"text": "x" * 2000, "i": i}) for i in range(30)]
    big = run(inputs={"text": "y" * (SMALL_PACK + 100)})
    before = store.keys()
    ids = posted(small.client, [*runs[:15], big, *runs[15:]])
    new = store.keys() - before
    rows = rows_of(store, ids)
    segments = {key for key in new if "/segments/" in key}
    assert len(segments) >= 3  # ~62 KB of small runs in 20 KB segments
    for key in segments:
        assert len(read_object(store, key)) < SMALL_SEGMENT + SMALL_PACK
    own_key, own_offset, _ = rows[ids[15]]  # over PACK_MAX_RUN_BYTES: an object of its own
    assert "/runs/" in own_key and own_offset is None
    assert new == {key for key, _, _ in rows.values()}
    for run_id, sent in zip(ids, [*runs[:15], big, *runs[15:]], strict=True):
        assert small.client.get(f"/runs/{run_id}").json() == {"id": run_id, **sent}


def test_segment_bytes_0_keeps_one_object_per_run(unpacked, store):
    before = store.keys()
    ids = posted(unpacked.client, [run() for _ in range(4)])
    rows = rows_of(store, ids)
    assert len(store.keys() - before) == 4
    assert all("/runs/" in key and offset is None for key, offset, _ in rows.values())


def test_a_trickled_batch_has_its_runs_in_the_bucket_while_it_arrives(small, store):
    """Each run reaches the bucket SEGMENT_MAX_WAIT_MS after it came, though the body goes on: the
    request holds one open segment at a time, sealed by the wait."""
    runs = [run(inputs={"n": i}) for i in range(3)]
    before = store.keys()
    conn = small.client.start_post()
    small.client.send_chunk(conn, b"[")
    for i, one in enumerate(runs):
        small.client.send_chunk(conn, (b"," if i else b"") + json.dumps(one).encode())
        deadline = time.monotonic() + 10
        while store.runs_in(store.keys() - before) < i + 1:
            assert time.monotonic() < deadline, f"run {i} did not reach the bucket while the body was open"
            time.sleep(0.05)
    small.client.send_chunk(conn, b"]")
    response = small.client.finish(conn)
    assert response.status == 201
    assert len(store.keys() - before) == 3  # one segment per pause


def test_reads_of_runs_sharing_a_segment_each_get_their_own_range(client, store):
    """The object cache keys on the range: reading one run of a segment, then another, from the
    cache or not, never returns the first one's bytes."""
    runs = [run(name=f"neighbour {i}") for i in range(3)]
    ids = posted(client, runs)
    for _ in range(2):  # the second time from the cache
        for run_id, sent in zip(ids, runs, strict=True):
            assert client.get(f"/runs/{run_id}").json() == {"id": run_id, **sent}


def test_a_range_the_store_cannot_give_exactly_is_503_never_a_wrong_body(client, store):
    runs = [run(name=f"cut {i}", inputs={"text": "z" * 500}) for i in range(4)]
    before = store.keys()
    ids = posted(client, runs)
    (segment,) = store.keys() - before
    data = read_object(store, segment)
    rows = rows_of(store, ids)
    key, offset, size = rows[ids[2]]
    cut = offset + size // 2  # run 2 straddles the cut, run 3 is past it
    store.s3.put_object(Bucket=store.bucket, Key=segment, Body=data[:cut])
    for run_id in ids[2:]:
        response = client.get(f"/runs/{run_id}")
        assert response.status == 503, response.body
        assert "object storage unavailable" in response.json()["error"]
    assert client.get(f"/runs/{ids[0]}").json() == {"id": ids[0], **runs[0]}  # wholly before the cut


def test_a_refused_batch_deletes_its_segments(small, store):
    good = [run(inputs={"text": "x" * 3000, "i": i}) for i in range(20)]  # three segments' worth
    body = batch(*good)[:-1] + b', {"name": "no trace"}]'
    before = store.snapshot()
    cut = body.index(b', {"name": "no trace"}')
    conn = small.client.start_post()
    small.client.send_chunk(conn, body[:cut])
    deadline = time.monotonic() + 10
    while store.runs_in(store.keys() - before[1]) < 20:  # sealed segments really are in the bucket
        assert time.monotonic() < deadline
        time.sleep(0.05)
    small.client.send_chunk(conn, body[cut:])
    response = small.client.finish(conn)
    assert response.status == 400 and "trace_id is required" in response.json()["error"]
    store.assert_unchanged(before, timeout=10)


def test_objects_written_are_counted_and_logged(small, store):
    def written() -> float:
        body = small.client.get("/metrics").body.decode()
        line = [
            x for x in body.splitlines() if x.startswith('run_handler_objects_written_total{kind="segment"}')
        ]
        return float(line[0].split()[-1]) if line else 0.0

    before_count, before_keys = written(), store.keys()
    posted(small.client, [run(inputs={"text": "x" * 3000, "i": i}) for i in range(10)])
    new = store.keys() - before_keys
    assert written() - before_count == len(new) >= 2
    wait_for_log(small, rf"INFO handler\.access: POST /runs 201 bytes=\d+ runs=10 objects={len(new)} ")


# -- compaction ------------------------------------------------------------------------------------


def test_compaction_rewrites_a_mostly_dead_segment_byte_for_byte(client, store):
    runs = [run(name=f"compact {i}", inputs={"text": f"{i}" * 800}) for i in range(10)]
    before = store.keys()
    ids = posted(client, runs)
    (segment,) = store.keys() - before
    for run_id in ids[:6]:  # six of ten patched: their old ranges are dead
        assert client.patch(f"/runs/{run_id}", b'{"outputs": {"patched": true}}').status == 200
    bodies = {run_id: client.get(f"/runs/{run_id}").body for run_id in ids}
    old_size = len(read_object(store, segment))
    keys_before = store.keys()

    report = run_handler("compact", "--grace-seconds", "0", "--min-live", "0.5", "--dry-run")
    assert "would rewrite" in report and segment in report
    assert store.keys() == keys_before  # a dry run changes nothing

    run_handler("compact", "--grace-seconds", "0", "--min-live", "0.5")
    assert segment not in store.keys()  # the old segment is gone after the commit
    rows = rows_of(store, ids)
    (new_segment,) = {rows[run_id][0] for run_id in ids[6:]}
    assert new_segment not in keys_before and "/segments/" in new_segment
    assert len(read_object(store, new_segment)) < old_size / 2  # four of ten runs' bytes
    for run_id in ids:
        assert client.get(f"/runs/{run_id}").body == bodies[run_id]
    # No orphan: every object written since (here, or by compacting other tests' segments) holds
    # runs.
    new = sorted(store.keys() - before)
    with store.db.cursor() as cur:
        cur.execute("SELECT DISTINCT object_key FROM runs WHERE object_key = ANY(%s)", (new,))
        assert {row[0] for row in cur.fetchall()} == set(new)


def test_compaction_leaves_runs_that_moved_meanwhile_where_they_are(client, store, settings):
    """A run that a patch repointed after compaction read the segment keeps its patch."""
    ids = posted(client, [run(), run()])
    key, offset, _ = rows_of(store, ids)[ids[0]]
    patched = client.patch(f"/runs/{ids[0]}", b'{"outputs": {"won": true}}')
    assert patched.status == 200

    async def move() -> int:
        db = Database(settings)
        await db.start()
        try:
            return await db.move_runs(
                key, "default/segments/2000-01-01/" + "0" * 32 + ".json", [(uuid.UUID(ids[0]), offset, 1)]
            )
        finally:
            await db.close()

    assert asyncio.run(move()) == 0
    assert client.get(f"/runs/{ids[0]}").json()["outputs"] == {"won": True}


# -- the migration -------------------------------------------------------------------------------


def test_the_segments_migration_rolls_back_only_without_packed_runs(settings):
    with scratch_database(settings, "_rollback") as scratch:
        migrate(scratch)
        with FreshConnections(scratch).cursor() as cur:
            insert = (
                "INSERT INTO runs (id, trace_id, name, object_key, size_bytes, object_offset)"
                " VALUES (%s, %s, 'r', %s, 2, %s)"
            )
            cur.execute(insert, (str(uuid.uuid4()), str(uuid.uuid4()), "default/runs/x/whole.json", None))
            cur.execute(insert, (str(uuid.uuid4()), str(uuid.uuid4()), "default/segments/s.json", 1))
            later = [m for m in _migrations() if m > "0004_segments"]  # 0005_sessions, 0006_feedback...
            for _ in later:
                assert rollback_last(scratch) == 1
            with pytest.raises(Exception, match="stored in segments"):
                rollback_last(scratch)
            cur.execute("DELETE FROM runs WHERE object_offset IS NOT NULL")
            assert rollback_last(scratch) == 1  # whole-object rows survive the rollback
            cur.execute("SELECT count(*) FROM runs")
            assert cur.fetchone()[0] == 1
        assert migrate(scratch) == 1 + len(later)  # and the migrations apply again


def _migrations() -> list[str]:
    return sorted(p.stem for p in SCHEMA_DIR.glob("*.sql") if not p.stem.endswith(".rollback"))


def test_settings_are_documented():
    readme = (REPO_ROOT / "README.md").read_text()
    for name in ("SEGMENT_BYTES", "SEGMENT_MAX_WAIT_MS", "PACK_MAX_RUN_BYTES"):
        assert f"`{name}`" in readme, name
    assert Settings.from_env().segment_bytes > 0  # on by default
