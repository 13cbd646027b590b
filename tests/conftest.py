"""Fixtures: real servers (``python -m handler`` subprocesses) against the real PostgreSQL and MinIO.

The subprocess suite speaks HTTP over a real socket to a server in its own process, as in
production, and checks the database and the bucket directly: it is the layer for what needs a real
process (signals, kill -9, disconnects, memory). The in-process layer, tests/test_app_inprocess.py,
uses pytest-tornado's fixtures (``app``, ``http_client``, ``gen_test``) on the same application
object; pytest-tornado imports ``pkg_resources``, so the ``test`` extra pins setuptools below 81.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time

import psycopg2
import pytest
from hypothesis import settings as hypothesis_settings

from handler.server.config import Settings
from tests.client import HttpClient
from tests.reset_env import s3_client
from tests.server import Server, start_server

if os.environ.get("RUN_HANDLER_ENV") != "test":
    pytest.exit("run the tests with RUN_HANDLER_ENV=test (make test does)", returncode=2)

# Hypothesis profiles for the property tests. "ci", the default, draws the same examples on every
# run (make test, tox): CI does not fail at random. "fuzz" (make fuzz: --hypothesis-profile=fuzz
# with a --hypothesis-seed it prints) draws new ones, many more, to find new cases; a failure
# prints the example and the @reproduce_failure blob that replays it.
hypothesis_settings.register_profile("ci", derandomize=True, max_examples=150, database=None, print_blob=True)
hypothesis_settings.register_profile(
    "fuzz",
    derandomize=False,
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "3000")),
    database=None,
    print_blob=True,
)
hypothesis_settings.load_profile("ci")  # --hypothesis-profile, read after this file, overrides it


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    srv = start_server(tmp_path_factory.mktemp("server"), "server")
    yield srv
    srv.stop()
    assert srv.process.returncode == 0, open(srv.log_path).read()[-3000:]


@pytest.fixture(scope="session")
def limited_server(tmp_path_factory) -> Server:
    """A second server with tiny limits, to hit each one cheaply."""
    srv = start_server(
        tmp_path_factory.mktemp("limited"),
        "limited",
        MAX_BODY_BYTES="20000",
        MAX_RUN_BYTES="2000",
        MAX_RUNS_PER_BATCH="5",
        # A client that stops sending after an early answer is closed on this soon (test_endless_*).
        LINGER_SECONDS="2",
    )
    yield srv
    srv.stop()


@pytest.fixture
def client(server: Server) -> HttpClient:
    return server.client


@pytest.fixture(scope="session")
def s3(settings: Settings):
    return s3_client(settings)


class FreshConnections:
    """``with db.cursor() as cur:`` on a new autocommit connection each time, so the tests keep
    working after a fault test has restarted PostgreSQL."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @contextlib.contextmanager
    def cursor(self):
        s = self.settings
        conn = psycopg2.connect(
            host=s.db_host, port=s.db_port, user=s.db_user, password=s.db_password, dbname=s.db_name
        )
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                yield cur
        finally:
            conn.close()


@contextlib.contextmanager
def scratch_database(settings: Settings, suffix: str, before: str | None = None):
    """Settings of a database of its own for a migration test (``<DB_NAME><suffix>``), made empty,
    migrated up to the migration ``before`` when one is named, and dropped afterwards."""
    from yoyo import get_backend, read_migrations

    from handler.store.migrations import SCHEMA_DIR

    scratch = dataclasses.replace(settings, db_name=f"{settings.db_name}{suffix}")
    admin = FreshConnections(settings)
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{scratch.db_name}"')
        cur.execute(f'CREATE DATABASE "{scratch.db_name}"')
    try:
        if before is not None:
            backend = get_backend(scratch.db_url)
            with backend.lock():
                earlier = read_migrations(str(SCHEMA_DIR)).filter(lambda m: m.id < before)
                backend.apply_migrations(backend.to_apply(earlier))
        yield scratch
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{scratch.db_name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def db(settings: Settings) -> FreshConnections:
    return FreshConnections(settings)


class Store:
    """What is really stored: rows in Postgres and objects in the bucket."""

    def __init__(self, s3, db, bucket: str) -> None:
        self.s3, self.db, self.bucket = s3, db, bucket

    def keys(self) -> set[str]:
        keys: set[str] = set()
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            keys.update(o["Key"] for o in page.get("Contents", []))
        return keys

    def runs_in(self, keys: set[str]) -> int:
        """How many runs these objects hold: a segment (a JSON array) one per element, any other
        object one."""
        count = 0
        for key in keys:
            if "/segments/" not in key:
                count += 1
                continue
            try:
                data = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except self.s3.exceptions.NoSuchKey:  # deleted since it was listed (a refused batch's)
                continue
            count += len(json.loads(data))
        return count

    def row_ids(self) -> set[str]:
        with self.db.cursor() as cur:
            cur.execute("SELECT id::text FROM runs")
            return {r[0] for r in cur.fetchall()}

    def remove(self, row_ids: set[str], keys: set[str]) -> None:
        """Drop what a bulky test stored, so later tests list a small bucket."""
        keys = sorted(keys)
        for i in range(0, len(keys), 1000):
            objects = [{"Key": k} for k in keys[i : i + 1000]]
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
        with self.db.cursor() as cur:
            cur.execute("DELETE FROM runs WHERE id = ANY(%s::uuid[])", (sorted(row_ids),))

    def snapshot(self) -> tuple[set[str], set[str]]:
        return self.row_ids(), self.keys()

    def assert_unchanged(self, before: tuple[set[str], set[str]], timeout: float = 0) -> None:
        """No row and no object was added since ``before`` (waiting up to ``timeout`` for cleanup)."""
        deadline = time.monotonic() + timeout
        while True:
            rows, keys = self.snapshot()
            if rows == before[0] and keys == before[1]:
                return
            if time.monotonic() >= deadline:
                assert rows - before[0] == set(), "rows left behind"
                assert keys - before[1] == set(), "objects left behind"
                return
            time.sleep(0.1)


@pytest.fixture
def store(s3, db, server: Server) -> Store:
    return Store(s3, db, server.bucket)
