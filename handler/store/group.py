"""Group commit: requests that end together share one segment, one PUT and one transaction.

A request's runs that are not yet in an uploaded segment -- its open segment, the tail -- are
handed here when its body ends, with the rows it writes. The requests of one group have their
tails appended to one shared segment, which is uploaded with one PUT, and all their rows are
written in one transaction (db.write_group); each request is answered once the group committed,
so an acknowledged run is as durable as before. Big batches still upload their full segments while
their bodies arrive (segments.py); only what is left at the end comes here.

Natural batching: while no flush of the tenant is in flight a group flushes at once, so a lone
client waits no longer than before; while one is, the next group fills, and flushes when that
flush ends, or earlier once it holds GROUP_MAX_BYTES, GROUP_MAX_REQUESTS or has waited
GROUP_MAX_WAIT_MS. A group holds one tenant's requests: a segment lives under its tenant's prefix.

All or nothing per request: a member that fails on its own (a repeated id, a patch that lost a
race) leaves no row and does not fail the others; its bytes in the shared segment are dead space
for compaction and gc. A fault (S3 or PostgreSQL away, an unknown commit outcome) fails every
member with 503; an unknown outcome is settled once for the whole group. Members are never
changed by a group: their rows are relocated into the shared segment as they are written, so a
member that has to merge and retry (WrittenMeanwhile) takes its tail back untouched.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from handler.base.errors import RunError
from handler.base.metrics import (
    GROUP_PUTS,
    GROUP_REQUESTS,
    GROUP_RUNS,
    GROUP_WAITING,
    OBJECT_BYTES,
    OBJECTS_WRITTEN,
)
from handler.server.config import Settings
from handler.store.db import Database
from handler.store.objects import Location, ObjectStore
from handler.store.outcome import CommitUnknown, count_when_back
from handler.store.segments import CLOSE, SEPARATOR, Segment, segment_key
from handler.store.transaction import Writes, write_group

log = logging.getLogger(__name__)

_RUNNING: set[asyncio.Task] = set()

Relocate = Callable[[Location], Location]


class Member(Protocol):
    """A request in a group (BatchIngest)."""

    group_id: str | None  # set when it joins

    @property
    def tail(self) -> Segment | None: ...

    @property
    def run_count(self) -> int: ...

    def writes(self, relocate: Relocate) -> Writes:
        """Its rows, with the locations in its tail moved by ``relocate``."""

    async def settled(self, committed: bool) -> None:
        """The group's unknown commit outcome is known now."""


class GroupCommitUnknown(CommitUnknown):
    """The group's commit outcome is unknown; the group settles it for all its members."""


def _relocator(old_key: str, new_key: str, shift: int) -> Relocate:
    def relocate(location: Location) -> Location:
        if location.key != old_key:
            return location
        return Location(new_key, location.offset + shift)

    return relocate


def unmoved(location: Location) -> Location:
    return location


@dataclass
class _Group:
    id: str
    members: list[Member] = field(default_factory=list)
    answers: list[asyncio.Future] = field(default_factory=list)
    bytes: int = 0
    flushing: bool = False
    timer: asyncio.TimerHandle | None = None


@dataclass
class _Tenant:
    filling: _Group | None = None
    flushes: int = 0  # in flight


class GroupCommitter:
    """The groups of one process (one per Database: see ``committer``)."""

    def __init__(self, store: ObjectStore, db: Database, settings: Settings) -> None:
        self._store = store
        self._db = db
        self._max_bytes = settings.group_max_bytes
        self._max_requests = max(1, settings.group_max_requests)
        self._max_wait_s = settings.group_max_wait_ms / 1000
        self._tenants: dict[str, _Tenant] = {}

    async def commit(self, tenant: str, member: Member) -> str:
        """Join the tenant's filling group; returns the group's id once it committed, or raises
        this member's error (its own, or the group's fault)."""
        state = self._tenants.setdefault(tenant, _Tenant())
        size = len(member.tail.data) if member.tail is not None else 0
        group = state.filling
        if group is not None and group.members and group.bytes + size > self._max_bytes:
            self._flush_soon(tenant, state, group)
            group = None
        if group is None:
            group = state.filling = _Group(uuid.uuid4().hex[:16])
        answer = asyncio.get_running_loop().create_future()
        member.group_id = group.id
        group.members.append(member)
        group.answers.append(answer)
        group.bytes += size
        full = len(group.members) >= self._max_requests or group.bytes >= self._max_bytes
        if full and state.filling is group:
            state.filling = None  # the next request starts the next group
        if state.flushes == 0 or full:
            self._flush_soon(tenant, state, group)
        elif group.timer is None and self._max_wait_s > 0:
            loop = asyncio.get_running_loop()
            group.timer = loop.call_later(self._max_wait_s, self._flush_soon, tenant, state, group)
        GROUP_WAITING.inc()
        try:
            return await answer
        finally:
            GROUP_WAITING.dec()

    def _flush_soon(self, tenant: str, state: _Tenant, group: _Group) -> None:
        """Start the group's flush (it still takes requests until the flush task runs)."""
        if group.flushing:
            return
        group.flushing = True
        if group.timer is not None:
            group.timer.cancel()
            group.timer = None
        state.flushes += 1
        task = asyncio.create_task(self._flush(tenant, state, group))
        _RUNNING.add(task)  # held until done, like the settling tasks
        task.add_done_callback(_RUNNING.discard)

    async def _flush(self, tenant: str, state: _Tenant, group: _Group) -> None:
        if state.filling is group:
            state.filling = None
        try:
            outcomes = await self._write(tenant, group)
        except BaseException as e:  # noqa: BLE001 -- every member gets the group's failure
            # An unknown commit still knows which requests were refused (rolled back to their
            # savepoints): those get their own error (a 409 stays a 409), the others the group's.
            own = e.outcomes if isinstance(e, CommitUnknown) and e.outcomes else [None] * len(group.answers)
            for answer, outcome in zip(group.answers, own, strict=True):
                if not answer.done():
                    answer.set_exception(outcome or e)
        else:
            for answer, outcome in zip(group.answers, outcomes, strict=True):
                if answer.done():
                    continue
                if outcome is None:
                    answer.set_result(group.id)
                else:
                    answer.set_exception(outcome)
        finally:
            state.flushes -= 1
            waiting = state.filling
            if waiting is not None and waiting.members and not waiting.flushing:
                self._flush_soon(tenant, state, waiting)

    async def _write(self, tenant: str, group: _Group) -> list[BaseException | None]:
        members = group.members
        GROUP_REQUESTS.observe(len(members))
        GROUP_RUNS.observe(sum(m.run_count for m in members))
        key, data, moves = _shared_segment(tenant, [m.tail for m in members])
        writes = [m.writes(move) for m, move in zip(members, moves, strict=True)]
        try:
            if key is not None:
                await self._store.put(key, data, "application/json")
                GROUP_PUTS.inc()
                OBJECTS_WRITTEN.labels("segment").inc()
                OBJECT_BYTES.observe(len(data))
            outcomes = await write_group(self._db, tenant, writes)
        except CommitUnknown as e:
            log.error("group %s: commit outcome unknown; settling %d requests", group.id, len(members))
            outcomes = e.outcomes or [None] * len(members)
            task = asyncio.create_task(self._settle_later(tenant, writes, outcomes, members, key, e.backend))
            _RUNNING.add(task)
            task.add_done_callback(_RUNNING.discard)
            unknown = GroupCommitUnknown(e.__cause__ or e, e.backend)
            unknown.outcomes = outcomes
            raise unknown from e
        except BaseException:
            if key is not None:
                await self._delete(key)  # nothing committed: no row points at it
            raise
        holders = [o for o, move in zip(outcomes, moves, strict=True) if move is not unmoved]
        if key is not None and all(o is not None for o in holders):
            await self._delete(key)  # each request with runs in it was refused: none points at it
        return outcomes

    async def _settle_later(
        self,
        tenant: str,
        writes: Sequence[Writes],
        outcomes: Sequence[BaseException | None],
        members: Sequence[Member],
        key: str | None,
        backend: tuple[int, int],
    ) -> None:
        """Once the database answers again: did the group's transaction commit?"""
        keys = [k for w, o in zip(writes, outcomes, strict=True) if o is None for k in w.keys()]
        feedback = [i for w, o in zip(writes, outcomes, strict=True) if o is None for i in w.feedback_ids]
        found = await count_when_back(self._db.connect, keys, backend, tenant, feedback)
        if found is None:
            return
        committed = found > 0
        if not committed and key is not None:
            await self._delete(key)
        for member, outcome in zip(members, outcomes, strict=True):
            if outcome is None:  # the refused were answered their own error, and cleaned up
                await member.settled(committed)
        log.warning("settled: the group had %scommitted", "" if committed else "not ")

    async def _delete(self, key: str) -> None:
        try:
            await self._store.delete([key])
        except RunError as e:
            log.error("could not delete a group's segment (gc removes it): %s", e.reason)


def _shared_segment(tenant: str, tails: Sequence[Segment | None]) -> tuple[str | None, bytes, list[Relocate]]:
    """The shared segment's key and bytes, and how each member's tail locations move into it
    (a tail's runs keep their order and separators, so each moves by one constant)."""
    if not any(t is not None and t.runs for t in tails):
        return None, b"", [unmoved] * len(tails)
    key = segment_key(tenant)
    pieces: list[bytes | bytearray | memoryview] = [b"["]
    position = 1
    moves: list[Relocate] = []
    for tail in tails:
        if tail is None or not tail.runs:
            moves.append(unmoved)
            continue
        if position > 1:
            pieces.append(SEPARATOR)
            position += len(SEPARATOR)
        runs = memoryview(tail.data)[1:]  # after its "["
        moves.append(_relocator(tail.key, key, position - 1))
        pieces.append(runs)
        position += len(runs)
    pieces.append(CLOSE)
    return key, b"".join(pieces), moves


_COMMITTERS: weakref.WeakKeyDictionary[Database, GroupCommitter] = weakref.WeakKeyDictionary()


def committer(store: ObjectStore, db: Database, settings: Settings) -> GroupCommitter | None:
    """The process's group committer for this database, or None with GROUP_MAX_BYTES=0."""
    if not settings.group_max_bytes:
        return None
    found = _COMMITTERS.get(db)
    if found is None:
        found = _COMMITTERS[db] = GroupCommitter(store, db, settings)
    return found
