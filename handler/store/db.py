"""PostgreSQL through aiopg: one row per run pointing at its bytes (a whole object, or a range of a
segment)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence

import aiopg
import psycopg2
import psycopg2.errors

from handler.base.errors import RunError
from handler.feedback.schema import FeedbackRow
from handler.feedback.store import INSERT as INSERT_FEEDBACK
from handler.feedback.store import insert_params
from handler.read.sessions import UPSERT as UPSERT_SESSIONS
from handler.read.sessions import with_sessions
from handler.retention.policy import MARK_FEEDBACK, feedback_marks
from handler.server.config import Settings
from handler.store import outcome
from handler.store.outcome import database_error, statement_error
from handler.store.rows import (
    INSERT,
    INSERT_ATTACHMENTS,
    STORED_COLUMNS,
    SUMMARY_COLUMNS,
    UPDATE,
    Attachment,
    Replacement,
    RunRow,
    StoredRun,
    columns,
    stored_run,
)

# PostgreSQL gives up on a statement before the client does, so a slow insert ends as an error
# from the server (the statement was rolled back), not as a client timeout (outcome unknown).
_STATEMENT_TIMEOUT_MS = 30_000
_CLIENT_TIMEOUT_S = 60


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

    def connect(self):
        """A connection of its own, outside the pool (``async with db.connect() as conn``): for work
        that holds one for long, such as a retention sweep and its advisory lock."""
        return aiopg.connect(**self._connect_args())

    async def start(self) -> None:
        self._pool = await aiopg.create_pool(
            minsize=1, maxsize=self._settings.db_pool_size, **self._connect_args()
        )

    async def acquire(self) -> tuple[aiopg.Connection, tuple[int, int]]:
        """A pooled connection and its backend (for ``settle``); 503 if none can be had. Give it
        back with ``release``."""
        try:
            conn = await self._pool.acquire()
        except (psycopg2.Error, OSError, TimeoutError) as e:
            raise database_error(e) from e
        try:
            return conn, outcome.backend_of(conn)
        except OSError as e:
            self._pool.release(conn)
            raise database_error(e) from e

    def release(self, conn: aiopg.Connection) -> None:
        self._pool.release(conn)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            await self._pool.wait_closed()

    async def write_batch(
        self,
        tenant: str,
        rows: Sequence[RunRow],
        replacements: Sequence[Replacement] = (),
        attachments: Sequence[Attachment] = (),
        feedback: Sequence[FeedbackRow] = (),
    ) -> None:
        """Insert the new runs, repoint the patched ones and add the attachments and the
        feedback, all or none.

        New runs alone take one statement, which is its own transaction (one round trip); with
        patches, attachments or feedback the statements run in one transaction.

        Raises RunError 409 if an id already exists or a patched run changed meanwhile,
        WrittenMeanwhile for runs that another request stored meanwhile and that can be merged
        (a post and a patch of one run, sent apart and at once) or patched runs that a sweep
        deleted meanwhile (lost_patch_race), 503 if nothing was
        written, and CommitUnknown if the connection broke while the commit may have happened
        and the outcome could not be settled.
        """
        if not (rows or replacements or attachments or feedback):
            return
        # Each run's project: its id filled in, and created with the rows if it is new.
        resolved, projects = with_sessions(tenant, [*rows, *(r.row for r in replacements)])
        rows = resolved[: len(rows)]
        replaced = resolved[len(rows) :]
        replacements = [r._replace(row=row) for r, row in zip(replacements, replaced, strict=True)]
        sessions = (tenant, *columns(projects)) if projects else None
        feedback_ids = [f.id for f in feedback]
        keys = outcome.committed_keys(rows, replacements, attachments)
        try:
            conn = await self._pool.acquire()
            backend = outcome.backend_of(conn)
        except (psycopg2.Error, OSError, TimeoutError) as e:
            raise database_error(e) from e  # nothing was sent
        try:
            async with conn.cursor() as cur:
                if replacements or attachments or feedback:
                    await self._begin_and_write(
                        cur, tenant, rows, replacements, attachments, sessions, feedback
                    )
                    committing: tuple = ("COMMIT", None)
                elif sessions:  # still one statement: the projects' upsert is a CTE of the insert
                    statement = f"WITH s AS ({UPSERT_SESSIONS}) {INSERT}"
                    committing = (statement, (*sessions, tenant, *columns(rows)))
                else:
                    committing = (INSERT, (tenant, *columns(rows)))
                try:
                    await cur.execute(*committing)
                except psycopg2.errors.UniqueViolation as e:
                    await outcome.conflict(self._fetch, tenant, rows, e)
                except psycopg2.Error as e:
                    if e.pgcode is not None and not e.pgcode.startswith(outcome.CONNECTION_ERROR_CLASSES):
                        raise statement_error(e) from e  # the server rolled it back
                    await outcome.settle(self.connect, keys, backend, e, tenant, feedback_ids)
                except (OSError, TimeoutError) as e:
                    await outcome.settle(self.connect, keys, backend, e, tenant, feedback_ids)
        finally:
            self._pool.release(conn)

    async def _begin_and_write(
        self,
        cur: aiopg.Cursor,
        tenant: str,
        rows: Sequence[RunRow],
        replacements: Sequence[Replacement],
        attachments: Sequence[Attachment],
        sessions: tuple | None,
        feedback: Sequence[FeedbackRow] = (),
    ) -> None:
        """Every statement of write_batch but the COMMIT, in a transaction that is rolled back if
        any fails: until COMMIT is sent nothing can be stored."""
        try:
            await cur.execute("BEGIN")
            if sessions:
                await cur.execute(UPSERT_SESSIONS, sessions)
            if rows:
                await cur.execute(INSERT, (tenant, *columns(rows)))
            if replacements:
                new_rows = [r.row for r in replacements]
                old_keys, old_offsets = columns([r.old for r in replacements])
                await cur.execute(UPDATE, (old_keys, old_offsets, *columns(new_rows), tenant))
                if cur.rowcount != len(replacements):
                    raise await outcome.lost_patch_race(cur, tenant, replacements)
            if attachments:
                await cur.execute(INSERT_ATTACHMENTS, (tenant, *columns(attachments)))
            if feedback:  # after the runs: a feedback without a trace_id takes its run's
                await cur.execute(INSERT_FEEDBACK, insert_params(tenant, feedback))
                marks = feedback_marks(tenant, feedback)
                if marks is not None:  # the trace moves to the long tier (handler/retention)
                    await cur.execute(MARK_FEEDBACK, marks)
        except BaseException as e:
            with contextlib.suppress(psycopg2.Error, OSError, TimeoutError):
                await cur.execute("ROLLBACK")
            if isinstance(e, psycopg2.errors.UniqueViolation):
                await outcome.conflict(self._fetch, tenant, rows, e)
            if isinstance(e, psycopg2.errors.ForeignKeyViolation):
                raise RunError(404, "an attachment's run does not exist") from e
            if isinstance(e, psycopg2.Error | OSError | TimeoutError):
                raise statement_error(e) from e
            raise

    async def find_run(self, tenant: str, run_id: uuid.UUID) -> StoredRun | None:
        """A tenant's posted run, or None."""
        rows = await self._fetch(
            f"SELECT {STORED_COLUMNS} FROM runs WHERE tenant = %s AND id = %s AND posted",
            (tenant, str(run_id)),
        )
        return stored_run(rows[0]) if rows else None

    async def find_current(self, tenant: str, run_id: uuid.UUID) -> StoredRun | None:
        """A tenant's run, posted or patched only; or None."""
        rows = await self._fetch(
            f"SELECT {STORED_COLUMNS} FROM runs WHERE tenant = %s AND id = %s", (tenant, str(run_id))
        )
        return stored_run(rows[0]) if rows else None

    async def find_attachment(self, tenant: str, run_id: uuid.UUID, name: str) -> tuple[str, str, int] | None:
        """The object key, content type and size of a run's attachment, or None."""
        rows = await self._fetch(
            "SELECT a.object_key, a.content_type, a.size_bytes FROM run_attachments a"
            " JOIN runs r ON r.tenant = a.tenant AND r.id = a.run_id"
            " WHERE a.tenant = %s AND a.run_id = %s AND a.name = %s AND r.posted",
            (tenant, str(run_id), name),
        )
        return rows[0] if rows else None

    async def list_trace(
        self, tenant: str, trace_id: uuid.UUID, limit: int, after: tuple[str, str] | None
    ) -> list[dict]:
        """A page of a trace's runs in dotted_order (then id), after the (dotted_order, id) given."""
        where = "tenant = %s AND trace_id = %s AND posted"
        params: tuple = (tenant, str(trace_id))
        if after is not None:
            where += " AND (coalesce(dotted_order, ''), id) > (%s, %s::uuid)"
            params += after
        order = "ORDER BY coalesce(dotted_order, ''), id"
        rows = await self._fetch(
            f"SELECT {SUMMARY_COLUMNS} FROM runs WHERE {where} {order} LIMIT %s", (*params, limit)
        )
        names = SUMMARY_COLUMNS.replace(" ", "").split(",")
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def stored_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of these object keys belong to a committed run or attachment."""
        rows = await self._fetch(
            "SELECT object_key FROM runs WHERE object_key = ANY(%s)"
            " UNION ALL SELECT object_key FROM run_attachments WHERE object_key = ANY(%s)",
            (list(keys), list(keys)),
        )
        return {row[0] for row in rows}

    async def segment_runs(self, key: str) -> list[tuple[str, uuid.UUID, int, int]]:
        """The runs that point into a segment, in object order: (tenant, id, offset, size)."""
        rows = await self._fetch(
            "SELECT tenant, id, object_offset, size_bytes FROM runs"
            " WHERE object_key = %s AND object_offset IS NOT NULL ORDER BY object_offset",
            (key,),
        )
        return [(tenant, uuid.UUID(str(run_id)), offset, size) for tenant, run_id, offset, size in rows]

    async def move_runs(self, old_key: str, new_key: str, moves: Sequence[tuple[uuid.UUID, int, int]]) -> int:
        """Repoint runs from ``old_key`` to ``new_key`` in one transaction, each (id, old offset,
        new offset) only if the run still points where it was: a patch meanwhile wins. Returns
        how many moved."""
        ids, old_offsets, new_offsets = columns(moves)
        rows = await self._fetch(
            "UPDATE runs AS r SET object_key = %s, object_offset = m.new_offset"
            " FROM unnest(%s::uuid[], %s::bigint[], %s::bigint[]) AS m(id, old_offset, new_offset)"
            " WHERE r.id = m.id AND r.object_key = %s AND r.object_offset = m.old_offset"
            " RETURNING r.id",
            (new_key, ids, old_offsets, new_offsets, old_key),
        )
        return len(rows)

    async def fetch(self, sql: str, params: tuple) -> list[tuple]:
        """A query's rows; RunError 400 for a value the database cannot take, 503 when it fails."""
        return await self._fetch(sql, params, statement_error)

    async def fetch_bounded(self, sql: str, params: tuple, timeout_ms: int) -> list[tuple]:
        """A read that may cost much (a filter, handler/query/): cancelled by the server after
        ``timeout_ms``, which is a RunError 400 saying so; otherwise as fetch."""
        too_long = RunError(
            400,
            f"the query took longer than {timeout_ms} ms and was stopped:"
            " narrow it (a project, a time window)",
        )
        try:
            async with self._pool.acquire() as conn, conn.cursor() as cur:
                await cur.execute("BEGIN; SET LOCAL statement_timeout = %s", (timeout_ms,))
                try:
                    await cur.execute(sql, params)
                    return await cur.fetchall()
                finally:
                    with contextlib.suppress(psycopg2.Error, OSError, TimeoutError):
                        await cur.execute("ROLLBACK")  # read only: nothing to commit
        except psycopg2.errors.QueryCanceled as e:
            raise too_long from e
        except asyncio.CancelledError:
            # aiopg turns the server's cancel (statement_timeout) into CancelledError; a real
            # cancellation of this task is told apart by the task's own count.
            if asyncio.current_task().cancelling():
                raise
            raise too_long from None
        except (psycopg2.Error, OSError, TimeoutError) as e:
            raise statement_error(e) from e

    async def _fetch(self, sql: str, params: tuple, error=database_error) -> list[tuple]:
        """A query's rows; its failure as the RunError ``error`` makes of it (503 by default)."""
        try:
            async with self._pool.acquire() as conn, conn.cursor() as cur:
                await cur.execute(sql, params)
                return await cur.fetchall()
        except (psycopg2.Error, OSError, TimeoutError) as e:
            raise error(e) from e

    @contextlib.asynccontextmanager
    async def transaction(self):
        """A cursor whose statements commit together at the end of the block (roll back on an
        error); the database failing is a RunError 503."""
        try:
            async with self._pool.acquire() as conn, conn.cursor() as cur:
                await cur.execute("BEGIN")
                try:
                    yield cur
                except BaseException:
                    await cur.execute("ROLLBACK")
                    raise
                await cur.execute("COMMIT")
        except (psycopg2.Error, OSError, TimeoutError) as e:
            raise database_error(e) from e

    async def ping(self) -> None:
        """A round trip through the pool, for GET /ready; raises the driver's error as it is."""
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT 1")
            await cur.fetchone()
