"""What became of a write: a taken key (409 or a merge), a statement refused, or a commit whose
answer the broken connection hid.

A transaction whose connection broke with its COMMIT sent may still commit. It is settled by
ending the backend that ran it, waiting for it to be gone, then counting what the write left: all
of it (committed), none of it (not), or the question stays open (CommitUnknown) and is asked again
once the database answers (``count_when_back``). db.write_batch and a group's transaction
(transaction.py, group.py) settle theirs the same way, here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence

import aiopg
import psycopg2

from handler.base.errors import RunError
from handler.feedback.store import conflict_message
from handler.store.rows import (
    STORED_COLUMNS,
    Attachment,
    Replacement,
    RunRow,
    WrittenMeanwhile,
    stored_run,
)

log = logging.getLogger(__name__)

# SQLSTATE classes that say the connection or the server failed, not the statement: a statement
# that gets one of these may still have committed.
CONNECTION_ERROR_CLASSES = ("08", "57P")
_BACKEND_EXIT_WAIT_S = 10
_SETTLE_EVERY_S = 2
_SETTLE_FOR_S = 600

STALE_PATCH = "a patched run was changed by another request meanwhile; retry"

Fetch = Callable[[str, tuple], Awaitable[list[tuple]]]


def database_error(error: Exception) -> RunError:
    return RunError(503, f"database unavailable: {error}".strip())


def statement_error(error: Exception) -> RunError:
    """A statement the server refused: a value it cannot store is the client's (SQLSTATE class 22,
    data exception); anything else is ours."""
    if isinstance(error, psycopg2.Error) and (error.pgcode or "").startswith("22"):
        return RunError(400, f"a value cannot be stored: {error.diag.message_primary}")
    return database_error(error)


class CommitUnknown(RunError):
    """The connection failed while the insert was in flight and the outcome could not be checked:
    the rows may be committed, so their objects must not be deleted yet (ingest.py settles it
    later, and `make gc` removes them if they never got rows)."""

    def __init__(self, error: Exception, backend: tuple[int, int]) -> None:
        super().__init__(503, f"database unavailable, the batch may or may not be stored: {error}")
        self.backend = backend
        self.outcomes: list | None = None  # a group's: each request's own outcome (transaction.py)


def backend_of(conn: aiopg.Connection) -> tuple[int, int]:
    """The server process of a connection and our local port: what identifies it in
    pg_stat_activity (taken before use: once the connection breaks the socket is gone)."""
    sock = socket.socket(fileno=os.dup(conn.raw.fileno()))  # a copy: closing it leaves ours open
    try:
        port = sock.getsockname()[1] if sock.family in (socket.AF_INET, socket.AF_INET6) else -1
    finally:
        sock.close()
    return conn.raw.get_backend_pid(), port


def committed_keys(
    rows: Sequence[RunRow], replacements: Sequence[Replacement], attachments: Sequence[Attachment]
) -> list[str]:
    """The object key of every row a batch writes: once it has committed, each has a row (keys
    repeat, one per run of a segment)."""
    return (
        [r.object_key for r in rows]
        + [r.row.object_key for r in replacements]
        + [a.object_key for a in attachments]
    )


async def lost_patch_race(cur: aiopg.Cursor, tenant: str, replacements: Sequence[Replacement]) -> Exception:
    """The UPDATE of patched runs repointed fewer than it patched, in the transaction of ``cur``.
    A run deleted meanwhile (a retention sweep) is no error: WrittenMeanwhile names it (``gone``)
    and the request stores its patch as a patch of an unknown run. Otherwise another patch won: 409."""
    ids = {r.row.id for r in replacements}
    sql = "SELECT id FROM runs WHERE tenant = %s AND id = ANY(%s::uuid[])"
    await cur.execute(sql, (tenant, [str(i) for i in ids]))
    gone = ids - {uuid.UUID(str(row[0])) for row in await cur.fetchall()}
    if gone:
        return WrittenMeanwhile({}, {}, frozenset(gone))
    return RunError(409, STALE_PATCH)


async def conflict(fetch: Fetch, tenant: str, rows: Sequence[RunRow], error: psycopg2.Error) -> None:
    """A unique key was taken (nothing was written): a 409 if a run was posted twice, else the
    runs to merge with what another request stored meanwhile (WrittenMeanwhile). ``fetch`` looks
    the runs up: a group's own transaction sees the rows of the requests written before in it."""
    if error.diag.constraint_name == "feedback_pkey":
        raise RunError(409, conflict_message(error.diag.message_detail)) from error
    if error.diag.constraint_name == "run_attachments_pkey":
        raise RunError(409, "an attachment of that name already exists for the run") from error
    found = await fetch(
        f"SELECT id, {STORED_COLUMNS} FROM runs WHERE tenant = %s AND id = ANY(%s::uuid[])",
        (tenant, [str(row.id) for row in rows]),
    )
    existing = {uuid.UUID(str(found_row[0])): stored_run(found_row[1:]) for found_row in found}
    posts, patches = {}, {}
    for row in rows:
        stored = existing.get(row.id)
        if stored is None:
            continue
        if stored.posted and row.posted:
            raise RunError(409, f"id {row.id} already exists", run_id=row.id) from error
        (posts if row.posted else patches)[row.id] = stored
    if not (posts or patches):  # taken by a request that has been undone since
        raise RunError(409, "a run id was being written by another request; retry") from error
    raise WrittenMeanwhile(posts, patches)


async def count_committed(
    connect: Callable,
    keys: Sequence[str],
    backend: tuple[int, int],
    tenant: str = "",
    feedback_ids: Sequence[uuid.UUID] = (),
) -> int:
    """How many rows (of runs and attachments) point at these object keys, plus how many of these
    feedback ids the tenant has, once the backend that ran the insert is gone.

    The backend may still be running the statement after our side of the connection broke; it is
    terminated and waited for, so it cannot commit after we have looked. ``backend`` is (pid,
    client port): the port makes sure a reused pid is not mistaken for ours. ``connect`` gives a
    connection of its own (Database.connect): the pool's may all be broken.
    """
    pid, port = backend
    async with connect() as conn, conn.cursor() as cur:
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
        await cur.execute(
            "SELECT (SELECT count(*) FROM runs WHERE object_key = ANY(%s))"
            " + (SELECT count(*) FROM run_attachments WHERE object_key = ANY(%s))"
            " + (SELECT count(*) FROM feedback WHERE tenant = %s AND id = ANY(%s::uuid[]))",
            (list(keys), list(keys), tenant, [str(i) for i in feedback_ids]),
        )
        return (await cur.fetchone())[0]


async def settle(
    connect: Callable,
    keys: Sequence[str],
    backend: tuple[int, int],
    error: Exception,
    tenant: str = "",
    feedback_ids: Sequence[uuid.UUID] = (),
) -> None:
    """Right after the connection broke: returns if the transaction committed after all, raises
    database_error if it surely did not, CommitUnknown if that cannot be told now."""
    if not keys and not feedback_ids:
        raise CommitUnknown(error, backend) from error
    try:
        found = await count_committed(connect, keys, backend, tenant, feedback_ids)
    except (psycopg2.Error, OSError, TimeoutError, RunError):
        raise CommitUnknown(error, backend) from error
    if found == len(keys) + len(feedback_ids):
        return
    if found == 0:
        raise database_error(error) from error
    raise CommitUnknown(error, backend) from error


async def count_when_back(
    connect: Callable,
    keys: Sequence[str],
    backend: tuple[int, int],
    tenant: str,
    feedback_ids: Sequence[uuid.UUID],
) -> int | None:
    """After a CommitUnknown: count_committed once the database answers again, trying every
    few seconds for ten minutes; None if it never did (gc removes the objects if they never got
    rows)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _SETTLE_FOR_S
    while loop.time() < deadline:
        await asyncio.sleep(_SETTLE_EVERY_S)
        try:
            return await count_committed(connect, keys, backend, tenant, feedback_ids)
        except Exception as e:  # the database is still away: try again
            log.debug("settling: %s", e)
    log.error(
        "could not settle %d rows in %d s; gc will remove their objects if unused", len(keys), _SETTLE_FOR_S
    )
    return None
