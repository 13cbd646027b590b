"""One transaction for the rows of a group of requests (group.py), all or nothing per request.

The fast path sends every request's rows as one statement per kind (as db.write_batch does for
one request) with its BEGIN and COMMIT, in one round trip when there are no patches. If a
statement fails for a reason that belongs to a request -- a repeated id, a patch that lost its
race, a value PostgreSQL cannot store -- the transaction is rolled back and written again with a
savepoint per request: the requests that fail are rolled back to their savepoint and told why,
the others commit. A fault (the connection, the server) fails them all; a commit whose outcome the
broken connection hid is settled as db.write_batch settles it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg2
import psycopg2.errors

from handler.base.errors import RunError
from handler.read.sessions import UPSERT as UPSERT_SESSIONS
from handler.read.sessions import with_sessions
from handler.store import outcome
from handler.store.db import Database
from handler.store.outcome import (
    CONNECTION_ERROR_CLASSES,
    CommitUnknown,
    committed_keys,
    database_error,
    lost_patch_race,
)
from handler.store.rows import (
    INSERT,
    INSERT_ATTACHMENTS,
    UPDATE,
    Attachment,
    Replacement,
    RunRow,
    WrittenMeanwhile,
    columns,
)


@dataclass
class Writes:
    """What one request writes. ``extra`` holds further statements (sql, params) that belong to it
    and are written in its part of the transaction (for rows of other kinds, such as feedback)."""

    rows: Sequence[RunRow] = ()
    replacements: Sequence[Replacement] = ()
    attachments: Sequence[Attachment] = ()
    extra: Sequence[tuple[str, tuple]] = field(default_factory=tuple)
    # The feedback ids ``extra`` inserts: an unknown commit is settled by counting them too.
    feedback_ids: Sequence[uuid.UUID] = ()

    def __bool__(self) -> bool:
        return bool(self.rows or self.replacements or self.attachments or self.extra)

    def keys(self) -> list[str]:
        return committed_keys(self.rows, self.replacements, self.attachments)


def _statements(tenant: str, parts: Sequence[Writes]) -> tuple[list[str], list, int]:
    """The statements that write ``parts`` (their rows together), the UPDATE of patched runs last
    (RETURNING the ids it repointed); and how many runs that UPDATE must repoint."""
    rows = [r for w in parts for r in w.rows]
    replacements = [r for w in parts for r in w.replacements]
    attachments = [a for w in parts for a in w.attachments]
    resolved, projects = with_sessions(tenant, [*rows, *(r.row for r in replacements)])
    rows, replaced = resolved[: len(rows)], resolved[len(rows) :]
    sql: list[str] = []
    params: list = []
    if projects and rows:  # the projects' upsert as a CTE of the insert: one statement
        sql.append(f"WITH s AS ({UPSERT_SESSIONS}) {INSERT}")
        params += [tenant, *columns(projects), tenant, *columns(rows)]
    elif projects:
        sql.append(UPSERT_SESSIONS)
        params += [tenant, *columns(projects)]
    elif rows:
        sql.append(INSERT)
        params += [tenant, *columns(rows)]
    if attachments:
        sql.append(INSERT_ATTACHMENTS)
        params += [tenant, *columns(attachments)]
    for w in parts:
        for statement, values in w.extra:
            sql.append(statement)
            params += values
    if replacements:
        old_keys, old_offsets = columns([r.old for r in replacements])
        sql.append(UPDATE + " RETURNING r.id")
        params += [old_keys, old_offsets, *columns(replaced), tenant]
    return sql, params, len(replacements)


def _is_fault(error: BaseException) -> bool:
    """A failure of the connection or the server, not of a statement: it may have committed."""
    if isinstance(error, psycopg2.Error):
        return error.pgcode is None or error.pgcode.startswith(CONNECTION_ERROR_CLASSES)
    return isinstance(error, OSError | TimeoutError)


class _Refused(Exception):
    """A statement of the fast path was refused: written again with savepoints."""


async def write_group(db: Database, tenant: str, parts: Sequence[Writes]) -> list[BaseException | None]:
    """Write every request's rows in one transaction. Returns, per request, None (committed) or
    its own error (RunError, WrittenMeanwhile: nothing of it was written); raises RunError 503 if
    nothing was written, CommitUnknown (with ``outcomes``) if the outcome cannot be told now."""
    if not any(parts):
        return [None] * len(parts)
    conn, backend = await db.acquire()
    try:
        async with conn.cursor() as cur:
            try:
                await _fast(cur, tenant, parts, db, backend)
                return [None] * len(parts)
            except _Refused:
                pass
            return await _one_by_one(cur, tenant, parts, db, backend)
    finally:
        db.release(conn)


async def _fast(cur, tenant: str, parts: Sequence[Writes], db: Database, backend) -> None:
    sql, params, patched = _statements(tenant, parts)
    if not patched:
        sql.append("COMMIT")
    try:
        await cur.execute("; ".join(["BEGIN", *sql]), params)
        if patched:
            repointed = await cur.fetchall()
    except Exception as e:  # a cancellation (shutdown) is not a refusal: it goes up as it is
        if not _is_fault(e):
            await _rollback(cur)
            raise _Refused from e
        if patched:  # no COMMIT was sent
            await _rollback(cur)
            raise database_error(e) from e
        await _settle(db, tenant, parts, backend, e, [None] * len(parts))
        return
    if patched:
        if len(repointed) != patched:  # a patch lost its race (or two of the group patch one run)
            await _rollback(cur)
            raise _Refused
        await _commit(cur, db, tenant, parts, backend, [None] * len(parts))


async def _one_by_one(cur, tenant: str, parts: Sequence[Writes], db: Database, backend) -> list:
    outcomes: list[BaseException | None] = []
    try:
        await cur.execute("BEGIN")
        for i, part in enumerate(parts):
            if not part:
                outcomes.append(None)
                continue
            sql, params, patched = _statements(tenant, [part])
            try:
                await cur.execute("; ".join([f"SAVEPOINT m{i}", *sql]), params)
                if patched and len(await cur.fetchall()) != patched:
                    raise await lost_patch_race(cur, tenant, part.replacements)  # 409, or gone
            except (RunError, WrittenMeanwhile) as e:
                await cur.execute(f"ROLLBACK TO SAVEPOINT m{i}")
                outcomes.append(e)
                continue
            except psycopg2.Error as e:
                if _is_fault(e):
                    raise
                await cur.execute(f"ROLLBACK TO SAVEPOINT m{i}")
                outcomes.append(await _refusal(cur, db, tenant, part, e))
                continue
            outcomes.append(None)
    except BaseException as e:
        await _rollback(cur)
        if isinstance(e, RunError):
            raise
        if isinstance(e, psycopg2.Error | OSError | TimeoutError):
            raise database_error(e) from e
        raise
    if all(o is not None for o in outcomes):
        await _rollback(cur)
        return outcomes
    await _commit(cur, db, tenant, parts, backend, outcomes)
    return outcomes


async def _refusal(cur, db: Database, tenant: str, part: Writes, error: psycopg2.Error) -> BaseException:
    """Why a request's statements were refused, as its own error (looked up in this transaction, so
    the rows of the requests before it count)."""

    async def fetch(sql: str, params: tuple) -> list[tuple]:
        await cur.execute(sql, params)
        return await cur.fetchall()

    try:
        if isinstance(error, psycopg2.errors.UniqueViolation):
            await outcome.conflict(fetch, tenant, part.rows, error)
        if isinstance(error, psycopg2.errors.ForeignKeyViolation):
            raise RunError(404, "an attachment's run does not exist") from error
        if (error.pgcode or "").startswith("22"):
            raise RunError(400, f"a value cannot be stored: {error.diag.message_primary}") from error
    except (RunError, WrittenMeanwhile) as e:
        return e
    raise database_error(error) from error  # not the request's doing: the group fails


async def _commit(cur, db: Database, tenant: str, parts: Sequence[Writes], backend, outcomes: list) -> None:
    try:
        await cur.execute("COMMIT")
    except Exception as e:
        if not _is_fault(e):
            raise database_error(e) from e  # refused: rolled back
        await _settle(db, tenant, parts, backend, e, outcomes)


async def _settle(
    db: Database, tenant: str, parts: Sequence[Writes], backend, error: BaseException, outcomes: list
) -> None:
    """The connection broke with the COMMIT sent: returns if it committed, raises 503 if surely
    not, CommitUnknown (with the outcomes, for whoever settles it later) if that cannot be told."""
    ok = [p for p, o in zip(parts, outcomes, strict=True) if o is None]
    try:
        keys = [k for p in ok for k in p.keys()]
        feedback_ids = [i for p in ok for i in p.feedback_ids]
        await outcome.settle(db.connect, keys, backend, error, tenant, feedback_ids)
    except CommitUnknown as e:
        e.outcomes = outcomes
        raise


async def _rollback(cur) -> None:
    with contextlib.suppress(psycopg2.Error, OSError, TimeoutError):
        await cur.execute("ROLLBACK")
