"""Group commit (handler/store/group.py): requests that end together share one segment, one PUT and
one transaction, each stays all or nothing, and a fault fails the whole group leaving nothing.

Groups are made deterministic with a table lock: the test holds ``LOCK TABLE runs IN SHARE MODE``,
so the first group's flush blocks in its INSERT; the requests that end meanwhile gather in the next
group (GROUP_MAX_WAIT_MS is long here, so it waits for the flush in flight), as /metrics shows;
then the lock goes and that group flushes with one PUT and one transaction.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest

from handler.base.errors import RunError
from handler.store.db import Database
from handler.store.group import GroupCommitter, GroupCommitUnknown, _shared_segment
from handler.store.objects import Location
from handler.store.rows import RunRow
from handler.store.segments import Segment
from handler.store.transaction import Writes, write_group
from tests.client import HttpClient
from tests.runs import batch, run
from tests.server import Server, run_handler, start_server
from tests.test_faults import SERVICES, row_count, services, wait_for

GROUPED = {"GROUP_MAX_WAIT_MS": "60000"}
owns_services = pytest.mark.skipif(
    subprocess.run(["bash", str(SERVICES), "owns"], capture_output=True).returncode != 0,
    reason="the services were not started by scripts/services.sh",
)


def test_a_shared_segment_is_the_tails_joined_and_every_run_moves_to_its_bytes():
    tails, sent = [], []
    for t in range(3):
        segment = Segment(f"t/segments/2026-01-01/{t:032x}.json")
        for i in range(t + 1):
            body = json.dumps({"id": str(uuid.uuid4()), "i": i, "t": t, "é": "x" * i}).encode()
            sent.append((t, segment.append(body), body))
        tails.append(segment)
    key, data, moves = _shared_segment("t", [tails[0], None, tails[1], tails[2]])
    assert key.startswith("t/segments/") and len(json.loads(data)) == 6
    moves = [moves[0], moves[2], moves[3]]
    for t, offset, body in sent:
        moved = moves[t](Location(tails[t].key, offset))
        assert moved.key == key and data[moved.offset : moved.offset + len(body)] == body
    assert moves[0](Location("elsewhere", 5)) == Location("elsewhere", 5)
    assert _shared_segment("t", [None, None])[0] is None


def test_a_requests_extra_statements_commit_or_roll_back_with_its_rows(settings, db):
    """The extension point for rows of other kinds: each request's ``extra`` statements run in its
    part of the group's transaction; one that is refused takes its request's rows with it, and
    only those."""
    key = f"default/segments/2000-01-01/{uuid.uuid4().hex}.json"
    rows = [
        RunRow(uuid.uuid4(), uuid.uuid4(), f"extra {i}", key, 10, object_offset=1 + 20 * i) for i in range(2)
    ]
    project = uuid.uuid4()
    extra = (
        "INSERT INTO sessions (tenant, id, name) VALUES (%s, %s, %s)",
        ("default", str(project), str(project)),
    )
    ok = Writes([rows[0]], extra=[extra])
    refused = Writes([rows[1]], extra=[("SELECT 1 / %s", (0,))])  # division by zero: SQLSTATE 22012

    async def write() -> list:
        database = Database(settings)
        await database.start()
        try:
            return await write_group(database, "default", [ok, refused])
        finally:
            await database.close()

    try:
        outcomes = asyncio.run(write())
        assert outcomes[0] is None and outcomes[1].status == 400
        assert row_count(db, [str(rows[0].id)]) == 1 and row_count(db, [str(rows[1].id)]) == 0
        with db.cursor() as cur:
            cur.execute("SELECT count(*) FROM sessions WHERE id = %s", (str(project),))
            assert cur.fetchone()[0] == 1
    finally:
        with db.cursor() as cur:
            cur.execute("DELETE FROM runs WHERE object_key = %s", (key,))
            cur.execute("DELETE FROM sessions WHERE id = %s", (str(project),))


def test_an_unknown_group_commit_answers_a_request_its_savepoint_refused_with_its_own_error(settings):
    """The connection broke with the group's COMMIT sent: whether it committed is unknown (503 for
    the requests in it), but a request refused at its savepoint stored nothing either way, so it
    gets its own answer (a 409 stays a 409, which a client must not retry) and is not settled
    later with the group."""
    refused = RunError(409, "id already exists")

    class BrokenAtCommit(GroupCommitter):
        async def _write(self, tenant, group):
            unknown = GroupCommitUnknown(OSError("connection broke"), (0, 0))
            unknown.outcomes = [None, refused]
            raise unknown

    class Member:
        group_id, tail, run_count = None, None, 1

    async def commit_two() -> list:
        committer = BrokenAtCommit(None, None, settings)
        answers = [committer.commit("default", Member()) for _ in range(2)]
        return await asyncio.gather(*answers, return_exceptions=True)

    first, second = asyncio.run(commit_two())
    assert isinstance(first, GroupCommitUnknown) and first.status == 503
    assert second is refused


class TableLock:
    """Holds ``LOCK TABLE runs IN SHARE MODE`` (reads go on, writes wait) until ``release``."""

    def __init__(self, settings) -> None:
        s = settings
        self.conn = psycopg2.connect(
            host=s.db_host, port=s.db_port, user=s.db_user, password=s.db_password, dbname=s.db_name
        )
        with self.conn.cursor() as cur:
            cur.execute("LOCK TABLE runs IN SHARE MODE")

    def release(self) -> None:
        try:
            self.conn.rollback()
            self.conn.close()
        except psycopg2.Error:
            pass  # the server was stopped meanwhile: the lock went with it


def blocked_writes(db) -> int:
    with db.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%%runs%%'"
        )
        return cur.fetchone()[0]


def waiting_in_groups(client: HttpClient) -> int:
    text = client.get("/metrics").body.decode()
    found = re.search(r"^run_handler_group_waiting_requests (\S+)$", text, re.M)
    return int(float(found.group(1))) if found else 0


def answer(pool: ThreadPoolExecutor, client: HttpClient, body: bytes, path: str = "/runs", method="POST"):
    return pool.submit(client.post, body, path, "application/json", None, method)


def two_groups(srv: Server, db, settings, first: bytes, rest: list[tuple[str, str, bytes]], during=None):
    """Send ``first`` while the table is locked (its group blocks in its INSERT), then ``rest``
    ((method, path, body) each), which gather in the next group; ``during()`` runs while they
    wait; then the lock goes. Returns the answers: first's, then rest's."""
    lock = TableLock(settings)
    pool = ThreadPoolExecutor(len(rest) + 1)
    try:
        head = answer(pool, srv.client, first)
        assert wait_for(lambda: blocked_writes(db) >= 1), "the first group did not reach its INSERT"
        tail = [answer(pool, srv.client, body, path, method) for method, path, body in rest]
        assert wait_for(lambda: waiting_in_groups(srv.client) == len(rest) + 1), "requests not waiting"
        if during is not None:
            during()
    finally:
        lock.release()
    try:
        return [f.result(timeout=60) for f in [head, *tail]]
    finally:
        pool.shutdown()


def rows_of(db, ids: list[str]) -> dict[str, tuple]:
    with db.cursor() as cur:
        cur.execute(
            "SELECT id::text, object_key, object_offset, size_bytes FROM runs WHERE id = ANY(%s::uuid[])",
            (ids,),
        )
        return {r[0]: r[1:] for r in cur.fetchall()}


def group_ids(srv: Server) -> list[str]:
    return re.findall(r" group=([0-9a-f]+)", open(srv.log_path).read())


@pytest.fixture(scope="module")
def grouped(tmp_path_factory) -> Server:
    srv = start_server(tmp_path_factory.mktemp("grouped"), "grouped", **GROUPED)
    yield srv
    srv.stop()


def batches(count: int, runs_each: int = 2) -> list[list[dict]]:
    return [
        [run(id=str(uuid.uuid4()), inputs={"r": r, "i": i}) for i in range(runs_each)] for r in range(count)
    ]


def test_requests_that_end_together_share_one_segment_and_one_transaction(grouped, db, settings, s3):
    first, *rest = batches(5)
    answers = two_groups(grouped, db, settings, batch(*first), [("POST", "/runs", batch(*b)) for b in rest])
    assert [a.status for a in answers] == [201] * 5
    ids = [r["id"] for b in rest for r in b]
    rows = rows_of(db, ids)
    (key,) = {key for key, _, _ in rows.values()}  # four requests, one segment
    assert rows_of(db, [r["id"] for r in first])[first[0]["id"]][0] != key
    data = s3.get_object(Bucket=grouped.bucket, Key=key)["Body"].read()
    assert len(json.loads(data)) == 8
    for b in rest:
        for r in b:
            _, offset, size = rows[r["id"]]
            assert json.loads(data[offset : offset + size]) == r
            assert grouped.client.get(f"/runs/{r['id']}").body == data[offset : offset + size]
    last = group_ids(grouped)[-5:]  # the access log names each request's group
    assert sorted(last.count(g) for g in set(last)) == [1, 4]
    metrics = grouped.client.get("/metrics").body.decode()
    assert re.search(r'^run_handler_group_requests_bucket\{le="4.0"\} [1-9]', metrics, re.M)


def test_a_group_takes_at_most_group_max_requests(tmp_path, db, settings):
    srv = start_server(tmp_path, "group-cap", GROUP_MAX_REQUESTS="2", **GROUPED)
    try:
        first, *rest = batches(5)
        answers = two_groups(srv, db, settings, batch(*first), [("POST", "/runs", batch(*b)) for b in rest])
        assert [a.status for a in answers] == [201] * 5
        rows = rows_of(db, [r["id"] for b in rest for r in b])
        (first_key,) = {rows_of(db, [r["id"] for r in first])[r["id"]][0] for r in first}
        keys = []  # the shared segment of each request (one per group)
        for b in rest:
            (key,) = {rows[r["id"]][0] for r in b}
            keys.append(key)
        assert first_key not in keys and sorted(keys.count(k) for k in set(keys)) == [2, 2]
    finally:
        srv.stop()


def test_a_repeated_id_in_a_group_is_409_for_its_request_alone(grouped, db, settings):
    taken = run(id=str(uuid.uuid4()))
    assert grouped.client.post(batch(taken)).status == 201
    first, good, bad, other = batches(4)
    bad.append(taken)
    answers = two_groups(
        grouped, db, settings, batch(*first), [("POST", "/runs", batch(*b)) for b in (good, bad, other)]
    )
    assert [a.status for a in answers] == [201, 201, 409, 201]
    assert "already exists" in answers[2].json()["error"]
    assert row_count(db, [r["id"] for r in bad[:-1]]) == 0  # nothing of the refused request
    assert row_count(db, [r["id"] for r in good + other]) == 4
    assert len({key for key, _, _ in rows_of(db, [r["id"] for r in good + other]).values()}) == 1


def test_two_patches_of_one_run_in_a_group_one_wins_the_other_is_409(grouped, db, settings):
    target = run(id=str(uuid.uuid4()))
    assert grouped.client.post(batch(target)).status == 201
    first, good = batches(2)
    path = f"/runs/{target['id']}"
    answers = two_groups(
        grouped,
        db,
        settings,
        batch(*first),
        [
            ("PATCH", path, b'{"name": "one"}'),
            ("POST", "/runs", batch(*good)),
            ("PATCH", path, b'{"name": "two"}'),
        ],
    )
    statuses = sorted(a.status for a in (answers[1], answers[3]))
    assert statuses == [200, 409] and answers[2].status == 201
    name = json.loads(grouped.client.get(path).body)["name"]
    winner = b'{"name": "one"}' if answers[1].status == 200 else b'{"name": "two"}'
    assert name == json.loads(winner)["name"]
    assert row_count(db, [r["id"] for r in good]) == 2


def test_a_post_and_a_patch_of_one_run_in_a_group_are_merged(grouped, db, settings):
    """The patch finds no run when it comes (its post is not committed yet), so both write the
    id: inside the group one of them is told so (WrittenMeanwhile), merges with the other's bytes
    in the shared segment, and commits in the next group."""
    late = run(id=str(uuid.uuid4()), name="posted", outputs=None)
    first, good = batches(2)
    answers = two_groups(
        grouped,
        db,
        settings,
        batch(*first),
        [
            ("PATCH", f"/runs/{late['id']}", b'{"outputs": {"answer": "patched"}}'),
            ("POST", "/runs", batch(late, *good)),
        ],
    )
    assert [a.status for a in answers] == [201, 200, 201]
    stored = json.loads(grouped.client.get(f"/runs/{late['id']}").body)
    assert stored["name"] == "posted" and stored["outputs"] == {"answer": "patched"}
    assert row_count(db, [late["id"]] + [r["id"] for r in good]) == 3


@owns_services
def test_postgres_stopped_mid_flush_fails_the_group_503_and_leaves_nothing(tmp_path, store, db, settings):
    srv = start_server(tmp_path, "group-pg", **GROUPED)
    first, *rest = batches(4)
    before = store.snapshot()
    try:

        def stop() -> None:
            services("stop-postgres")

        try:
            answers = two_groups(
                srv, db, settings, batch(*first), [("POST", "/runs", batch(*b)) for b in rest], stop
            )
            # The shutdown ends the test's lock first: the first group may commit before its
            # backend is stopped (then it is answered 201); the waiting group never does.
            assert answers[0].status in (201, 503)
            assert [a.status for a in answers[1:]] == [503] * 3
            assert all("database unavailable" in a.json()["error"] for a in answers[1:])
        finally:
            services("start-postgres")
        first_ids = [r["id"] for r in first]
        assert row_count(db, first_ids) == (len(first) if answers[0].status == 201 else 0)
        assert row_count(db, [r["id"] for b in rest for r in b]) == 0
        kept = set(rows_of(db, first_ids))
        kept_keys = {key for key, _, _ in rows_of(db, first_ids).values()}
        # An unknown outcome is settled once PostgreSQL is back: nothing else is left.
        store.assert_unchanged((before[0] | kept, before[1] | kept_keys), timeout=30)
        assert srv.client.post(batch(*rest[0])).status == 201
    finally:
        srv.stop()


@owns_services
def test_minio_stopped_before_a_groups_put_fails_it_503_and_writes_no_row(tmp_path, store, db, settings):
    srv = start_server(tmp_path, "group-minio", **GROUPED)
    first, *rest = batches(4)
    try:
        try:
            answers = two_groups(
                srv,
                db,
                settings,
                batch(*first),
                [("POST", "/runs", batch(*b)) for b in rest],
                lambda: services("stop-minio"),
            )
            assert answers[0].status == 201  # its segment was up before MinIO stopped
            assert [a.status for a in answers[1:]] == [503] * 3
            assert all("object storage unavailable" in a.json()["error"] for a in answers[1:])
            assert row_count(db, [r["id"] for b in rest for r in b]) == 0
        finally:
            services("start-minio")
        assert srv.client.post(batch(*rest[0])).status == 201
    finally:
        srv.stop()


@owns_services
def test_kill_9_mid_flush_loses_no_acknowledged_run_and_leaves_waiting_requests_out(
    tmp_path, store, db, settings
):
    acked, first, *rest = batches(5)
    before = store.snapshot()
    srv = start_server(tmp_path, "group-kill9", **GROUPED)
    lock = pool = None
    try:
        assert srv.client.post(batch(*acked)).status == 201
        sent = {r["id"]: srv.client.get(f"/runs/{r['id']}").body for r in acked}
        lock = TableLock(settings)
        pool = ThreadPoolExecutor(4)
        futures = [answer(pool, srv.client, batch(*first))]
        assert wait_for(lambda: blocked_writes(db) >= 1)
        futures += [answer(pool, srv.client, batch(*b)) for b in rest]
        assert wait_for(lambda: waiting_in_groups(srv.client) == 4)
    finally:
        srv.process.kill()  # the fault under test; and no server is left if the test failed earlier
        srv.process.wait()
        if lock is not None:
            lock.release()
        if pool is not None:
            pool.shutdown()
    for f in futures:
        assert f.exception() is not None or f.result().status >= 500  # none was acknowledged
    restarted = start_server(tmp_path, "group-kill9-restarted")
    try:
        # The first group's COMMIT had been sent with its INSERT: it may have committed, whole.
        assert row_count(db, [r["id"] for r in first]) in (0, len(first))
        assert row_count(db, [r["id"] for b in rest for r in b]) == 0  # never flushed
        run_handler("gc", "--grace-seconds", "0")
        for run_id, body in sent.items():
            assert restarted.client.get(f"/runs/{run_id}").body == body
        rows, keys = store.snapshot()
        with db.cursor() as cur:
            cur.execute(
                "SELECT DISTINCT object_key FROM runs WHERE object_key = ANY(%s)", (sorted(keys - before[1]),)
            )
            assert {r[0] for r in cur.fetchall()} == keys - before[1]  # gc left no object without rows
    finally:
        restarted.stop()
