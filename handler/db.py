"""PostgreSQL through aiopg: one row per run pointing at its object."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Sequence
from typing import NamedTuple

import aiopg
import psycopg2
import psycopg2.errors

from handler.config import Settings
from handler.errors import RunError


class RunRow(NamedTuple):
    id: uuid.UUID
    trace_id: uuid.UUID
    name: str
    object_key: str
    size_bytes: int


# One statement, so one round trip and one transaction, however many rows: the rows travel as
# five arrays and unnest() turns them back into rows.
_INSERT = """
INSERT INTO runs (tenant, id, trace_id, name, object_key, size_bytes)
SELECT %s, * FROM unnest(%s::uuid[], %s::uuid[], %s::text[], %s::text[], %s::bigint[])
"""


# PostgreSQL gives up on a statement before the client does, so a slow insert ends as an error
# from the server (the statement was rolled back), not as a client timeout (outcome unknown).
_STATEMENT_TIMEOUT_MS = 30_000
_CLIENT_TIMEOUT_S = 60
# SQLSTATE classes that say the connection or the server failed, not the statement: a statement
# that gets one of these may still have committed.
_CONNECTION_ERROR_CLASSES = ("08", "57P")
_BACKEND_EXIT_WAIT_S = 10


def database_error(error: Exception) -> RunError:
    return RunError(503, f"database unavailable: {error}".strip())


class CommitUnknown(RunError):
    """The connection failed while the insert was in flight and the outcome could not be checked:
    the rows may be committed, so their objects must not be deleted yet (ingest.py settles it
    later, and `make gc` removes them if they never got rows)."""

    def __init__(self, error: Exception, backend: tuple[int, int]) -> None:
        super().__init__(503, f"database unavailable, the batch may or may not be stored: {error}")
        self.backend = backend


def _backend_of(conn: aiopg.Connection) -> tuple[int, int]:
    """The server process of a connection and our local port: what identifies it in
    pg_stat_activity (taken before use: once the connection breaks the socket is gone)."""
    sock = socket.socket(fileno=os.dup(conn.raw.fileno()))  # a copy: closing it leaves ours open
    try:
        port = sock.getsockname()[1] if sock.family in (socket.AF_INET, socket.AF_INET6) else -1
    finally:
        sock.close()
    return conn.raw.get_backend_pid(), port


class Database:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pool: aiopg.Pool | None = None

    def _connect_args(self) -> dict:
        s = self._settings
        return {
            "host": s.db_host,
            "port": s.db_port,
            "user": s.db_user,
            "password": s.db_password,
            "dbname": s.db_name,
            "timeout": _CLIENT_TIMEOUT_S,
            "options": f"-c statement_timeout={_STATEMENT_TIMEOUT_MS}",
        }

    async def start(self) -> None:
        self._pool = await aiopg.create_pool(
            minsize=1, maxsize=self._settings.db_pool_size, **self._connect_args()
        )

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            await self._pool.wait_closed()

    async def insert_runs(self, tenant: str, rows: Sequence[RunRow]) -> None:
        """Insert all rows of a tenant's batch, or none.

        Raises RunError 409 if an id already exists, 503 if nothing was written, and
        CommitUnknown if the connection broke mid-statement and the outcome could not be settled.
        """
        columns = (
            tenant,
            [str(r.id) for r in rows],
            [str(r.trace_id) for r in rows],
            [r.name for r in rows],
            [r.object_key for r in rows],
            [r.size_bytes for r in rows],
        )
        try:
            conn = await self._pool.acquire()
            backend = _backend_of(conn)
        except (psycopg2.Error, OSError, TimeoutError) as e:
            raise database_error(e) from e  # nothing was sent
        try:
            async with conn.cursor() as cur:
                await cur.execute(_INSERT, columns)
        except psycopg2.errors.UniqueViolation:
            await self._raise_conflict(tenant, rows)
        except psycopg2.Error as e:
            if e.pgcode is not None and not e.pgcode.startswith(_CONNECTION_ERROR_CLASSES):
                raise database_error(e) from e  # the server rolled the statement back
            await self._settle(rows, backend, e)
        except (OSError, TimeoutError) as e:
            await self._settle(rows, backend, e)
        finally:
            self._pool.release(conn)

    async def _settle(self, rows: Sequence[RunRow], backend: tuple[int, int], error: Exception) -> None:
        """Returns if the insert committed after all, raises database_error if it surely did not,
        CommitUnknown if that cannot be told now."""
        try:
            found = await self.count_committed([r.object_key for r in rows], backend)
        except (psycopg2.Error, OSError, TimeoutError, RunError):
            raise CommitUnknown(error, backend) from error
        if found == len(rows):
            return
        if found == 0:
            raise database_error(error) from error
        raise CommitUnknown(error, backend) from error

    async def count_committed(self, keys: Sequence[str], backend: tuple[int, int]) -> int:
        """How many of these object keys have rows, once the backend that ran the insert is gone.

        The backend may still be running the statement after our side of the connection broke;
        it is terminated and waited for, so it cannot commit after we have looked. ``backend`` is
        (pid, client port): the port makes sure a reused pid is not mistaken for ours.
        """
        pid, port = backend
        async with aiopg.connect(**self._connect_args()) as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s AND client_port = %s",
                (pid, port),
            )
            for _ in range(_BACKEND_EXIT_WAIT_S * 10):
                await cur.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND client_port = %s", (pid, port)
                )
                if not await cur.fetchall():
                    break
                await asyncio.sleep(0.1)
            else:
                raise RunError(503, f"backend {pid} did not exit")
            await cur.execute("SELECT count(*) FROM runs WHERE object_key = ANY(%s)", (list(keys),))
            return (await cur.fetchone())[0]

    async def _raise_conflict(self, tenant: str, rows: Sequence[RunRow]) -> None:
        found = await self._fetch(
            "SELECT id FROM runs WHERE tenant = %s AND id = ANY(%s::uuid[])",
            (tenant, [str(r.id) for r in rows]),
        )
        existing = {uuid.UUID(str(row[0])) for row in found}
        for index, row in enumerate(rows):
            if row.id in existing:
                raise RunError(409, f"run {index}: id {row.id} already exists", index)
        raise RunError(409, "a run id already exists")

    async def find_run(self, tenant: str, run_id: uuid.UUID) -> tuple[str, int] | None:
        """The object key and size of a tenant's run, or None."""
        rows = await self._fetch(
            "SELECT object_key, size_bytes FROM runs WHERE tenant = %s AND id = %s", (tenant, str(run_id))
        )
        return (rows[0][0], rows[0][1]) if rows else None

    async def stored_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of these object keys belong to a committed run."""
        rows = await self._fetch("SELECT object_key FROM runs WHERE object_key = ANY(%s)", (list(keys),))
        return {row[0] for row in rows}

    async def _fetch(self, sql: str, params: tuple) -> list[tuple]:
        try:
            async with self._pool.acquire() as conn, conn.cursor() as cur:
                await cur.execute(sql, params)
                return await cur.fetchall()
        except (psycopg2.Error, OSError, TimeoutError) as e:
            raise database_error(e) from e
