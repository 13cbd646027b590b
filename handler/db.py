"""PostgreSQL through aiopg: one row per run pointing at its object."""

from __future__ import annotations

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


def database_error(error: Exception) -> RunError:
    return RunError(503, f"database unavailable: {error}".strip())


class CommitUnknown(RunError):
    """The connection failed while the insert was in flight and the outcome could not be checked:
    the rows may be committed, so their objects must not be deleted (`make gc` removes them later
    if they are not)."""


class Database:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pool: aiopg.Pool | None = None

    async def start(self) -> None:
        s = self._settings
        self._pool = await aiopg.create_pool(
            host=s.db_host,
            port=s.db_port,
            user=s.db_user,
            password=s.db_password,
            dbname=s.db_name,
            minsize=1,
            maxsize=s.db_pool_size,
            timeout=30,
        )

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            await self._pool.wait_closed()

    async def insert_runs(self, tenant: str, rows: Sequence[RunRow]) -> None:
        """Insert all rows of a tenant's batch, or none.

        Raises RunError 409 if an id already exists, 503 if nothing was written, and
        CommitUnknown if the connection broke mid-statement and the rows could not be looked up.
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
        except (psycopg2.Error, OSError, TimeoutError) as e:
            raise database_error(e) from e
        try:
            async with conn.cursor() as cur:
                await cur.execute(_INSERT, columns)
        except psycopg2.errors.UniqueViolation:
            await self._raise_conflict(tenant, rows)
        except psycopg2.Error as e:
            if e.pgcode is not None:
                raise database_error(e) from e  # the server aborted the statement
            await self._settle_unknown_commit(tenant, rows, e)
        except (OSError, TimeoutError) as e:
            await self._settle_unknown_commit(tenant, rows, e)
        finally:
            self._pool.release(conn)

    async def _settle_unknown_commit(self, tenant: str, rows: Sequence[RunRow], error: Exception) -> None:
        """Look the rows up on a new connection: all there means the insert committed."""
        try:
            found = await self._fetch(
                "SELECT count(*) FROM runs WHERE tenant = %s AND id = ANY(%s::uuid[])",
                (tenant, [str(r.id) for r in rows]),
            )
        except RunError:
            raise CommitUnknown(503, f"database unavailable: {error}".strip()) from error
        if found[0][0] == len(rows):
            return
        raise database_error(error) from error

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
