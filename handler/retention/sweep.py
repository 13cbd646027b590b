"""The sweep: expired traces' rows, then their objects (``python -m handler retain``, and every
RETENTION_SWEEP_SECONDS in the server).

Only one sweep runs at a time across every worker and instance: each holds a PostgreSQL advisory
lock on a connection of its own for its whole length (a killed sweep's connection closes, and the
lock goes with it).

Crash-safe by its order. A batch of expired traces is deleted in one transaction: their
attachments' rows, their runs' rows, their feedback and long-tier marks, and into
``retention_pending_objects`` the keys of every object those rows pointed at. Only after the
commit is an object deleted from the bucket, and only if no row points at it any more (a segment
that still holds live runs is kept whole: ``compact`` rewrites it later); then its journal line
goes. A sweep killed anywhere leaves at worst journal lines (the next sweep starts with them) and
objects without rows (which ``gc`` would remove too); never a row without its bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg2

from handler.retention import metrics
from handler.retention.policy import PERIOD_SQL, Defaults, period_days
from handler.server.config import Settings
from handler.store.db import Database
from handler.store.objects import ObjectStore

log = logging.getLogger(__name__)

LOCK_KEY = 0x72756E5F726574  # any constant; only sweeps take it
_MIN_DAYS = 1  # the shortest period anything can have


@dataclass
class SweepReport:
    traces: int = 0
    runs: int = 0
    bytes: int = 0  # runs' and attachments' sizes
    objects: int = 0  # deleted from the bucket (with dry_run: whole objects that would be)
    as_of: datetime = field(default_factory=lambda: datetime.now(UTC))

    def line(self, dry_run: bool) -> str:
        verb = "would delete" if dry_run else "deleted"
        return (
            f"retain as of {self.as_of.isoformat()}: {verb} {self.traces} traces, {self.runs} runs,"
            f" {self.bytes} bytes, {self.objects} objects"
        )


class SweepBusy(Exception):
    """Another sweep holds the lock."""


def _key_filter(alias: str = "") -> str:
    p = f"{alias}." if alias else ""
    return (
        f"{p}tenant = %(tenant)s AND ({p}trace_id = ANY(%(traces)s::uuid[])"
        f" OR ({p}trace_id IS NULL AND {p}id = ANY(%(lone)s::uuid[])))"
    )


# The traces among the candidates that have expired, by the whole rule (policy.py).
_EXPIRED = f"""
SELECT key, lone FROM (
    SELECT coalesce(r.trace_id, r.id) AS key, bool_and(r.trace_id IS NULL) AS lone,
        min(r.created_at) AS first_received, max({PERIOD_SQL}) AS period,
        bool_or(({PERIOD_SQL}) IS NULL) AS forever
    FROM runs r
    LEFT JOIN sessions s ON s.tenant = r.tenant AND s.id = r.session_id
    LEFT JOIN retention_long_traces l ON l.tenant = r.tenant AND l.trace_id = coalesce(r.trace_id, r.id)
    WHERE {_key_filter("r")}
    GROUP BY 1
) AS t
WHERE NOT forever AND first_received + make_interval(days => period) <= %(as_of)s
"""
_DELETE_ATTACHMENTS = f"""
DELETE FROM run_attachments a USING runs r
WHERE a.tenant = r.tenant AND a.run_id = r.id AND {_key_filter("r")}
RETURNING a.object_key, a.size_bytes
"""
_DELETE_RUNS = f"DELETE FROM runs WHERE {_key_filter()} RETURNING object_key, size_bytes, id"
_DELETE_MARKS = (
    "DELETE FROM retention_long_traces WHERE tenant = %(tenant)s AND trace_id = ANY(%(keys)s::uuid[])"
)
# Feedback (handler/feedback, migration 0006) goes with its trace, once that table exists.
_DELETE_FEEDBACK = (
    "DELETE FROM feedback WHERE tenant = %(tenant)s"
    " AND (trace_id = ANY(%(keys)s::uuid[]) OR run_id = ANY(%(runs)s::uuid[]))"
)
_JOURNAL = (
    "INSERT INTO retention_pending_objects (object_key) SELECT DISTINCT unnest(%s::text[])"
    " ON CONFLICT DO NOTHING"
)
_DEAD = """
SELECT k FROM unnest(%s::text[]) AS k
WHERE NOT EXISTS (SELECT 1 FROM runs WHERE object_key = k)
    AND NOT EXISTS (SELECT 1 FROM run_attachments WHERE object_key = k)
"""


class Sweep:
    """One sweep over every tenant's projects, as of a time."""

    def __init__(self, settings: Settings, store: ObjectStore, db: Database) -> None:
        self._settings = settings
        self._store = store
        self._db = db
        self.defaults = Defaults(settings.retention_days, settings.retention_long_days)
        self.page_rows = settings.retention_batch_rows

    async def run(
        self,
        as_of: datetime | None = None,
        dry_run: bool = False,
        after_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> SweepReport:
        """Sweep; raises SweepBusy if another sweep holds the lock. ``after_commit`` is awaited
        after each batch's commit, before its objects are deleted (tests kill the sweep there)."""
        report = SweepReport(as_of=as_of or datetime.now(UTC))
        async with self._db.connect() as conn, conn.cursor() as cur:
            if not dry_run:
                await cur.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))
                if not (await cur.fetchone())[0]:
                    raise SweepBusy("another retention sweep is running")
            try:
                if not dry_run:
                    await self._finish_pending(cur, None, report)
                for tenant, session_id, days in await self._projects(cur):
                    cutoff = report.as_of - timedelta(days=days)
                    await self._scan(cur, report, dry_run, after_commit, tenant, session_id, cutoff)
                # Runs reached only by patches so far may name a project that does not exist yet.
                cutoff = report.as_of - timedelta(days=_MIN_DAYS)
                await self._scan(cur, report, dry_run, after_commit, None, None, cutoff)
            finally:
                if not dry_run:
                    with contextlib.suppress(psycopg2.Error, OSError):
                        await cur.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        return report

    async def _projects(self, cur) -> list[tuple[str, uuid.UUID, int]]:
        """Every project with a finite period for its tier, and that period in days."""
        await cur.execute("SELECT tenant, id, trace_tier, retention_days, longlived_ttl_days FROM sessions")
        found = []
        for tenant, session_id, tier, days, long_days in await cur.fetchall():
            period = period_days(self.defaults, tier, days, long_days)
            if period is not None:
                found.append((tenant, session_id, period))
        return found

    async def _scan(self, cur, report, dry_run, after_commit, tenant, session_id, cutoff) -> None:
        """Candidates oldest first, a page at a time: runs of the project (or unposted runs of any)
        written before ``cutoff``; those whose traces expired go, the others are passed over."""
        after = (datetime.min.replace(tzinfo=UTC), uuid.UUID(int=0))
        while True:
            if session_id is not None:
                await cur.execute(
                    "SELECT tenant, trace_id, id, created_at FROM runs WHERE tenant = %s"
                    " AND session_id = %s AND created_at < %s AND (created_at, id) > (%s, %s)"
                    " ORDER BY created_at, id LIMIT %s",
                    (tenant, session_id, cutoff, after[0], after[1], self.page_rows),
                )
            else:
                await cur.execute(
                    "SELECT tenant, trace_id, id, created_at FROM runs"
                    " WHERE NOT posted AND created_at < %s AND (created_at, id) > (%s, %s)"
                    " ORDER BY created_at, id LIMIT %s",
                    (cutoff, after[0], after[1], self.page_rows),
                )
            rows = await cur.fetchall()
            if not rows:
                return
            after = (rows[-1][3], rows[-1][2])
            by_tenant: dict[str, tuple[set, set]] = {}
            for row_tenant, trace_id, run_id, _ in rows:
                traces, lone = by_tenant.setdefault(row_tenant, (set(), set()))
                (traces.add(str(trace_id)) if trace_id is not None else lone.add(str(run_id)))
            for row_tenant, (traces, lone) in by_tenant.items():
                await self._expire(cur, report, dry_run, after_commit, row_tenant, traces, lone)
            if len(rows) < self.page_rows:
                return

    async def _expire(self, cur, report, dry_run, after_commit, tenant, traces, lone) -> None:
        params = {
            "tenant": tenant,
            "traces": sorted(traces),
            "lone": sorted(lone),
            "as_of": report.as_of,
            "days": self.defaults.days,
            "long_days": self.defaults.long_days,
        }
        if dry_run:
            await cur.execute(_EXPIRED, params)
            expired = await cur.fetchall()
            await self._count_dry(cur, report, tenant, expired)
            return
        await cur.execute("BEGIN")
        try:
            # Checked again inside the transaction that deletes: the rule as it is now.
            await cur.execute(_EXPIRED, params)
            expired = await cur.fetchall()
            if not expired:
                await cur.execute("ROLLBACK")
                return
            params["traces"] = [str(k) for k, lone_run in expired if not lone_run]
            params["lone"] = [str(k) for k, lone_run in expired if lone_run]
            params["keys"] = [str(k) for k, _ in expired]
            await cur.execute(_DELETE_ATTACHMENTS, params)
            attachments = await cur.fetchall()
            await cur.execute(_DELETE_RUNS, params)
            runs = await cur.fetchall()
            params["runs"] = [str(run[2]) for run in runs]
            await cur.execute(_DELETE_MARKS, params)
            await cur.execute("SELECT to_regclass('feedback') IS NOT NULL")
            if (await cur.fetchone())[0]:
                await cur.execute(_DELETE_FEEDBACK, params)
            keys = sorted({key for key, _ in attachments} | {run[0] for run in runs})
            await cur.execute(_JOURNAL, (keys,))
            await cur.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(psycopg2.Error, OSError):
                await cur.execute("ROLLBACK")
            raise
        freed = sum(run[1] for run in runs) + sum(size for _, size in attachments)
        report.traces += len(expired)
        report.runs += len(runs)
        report.bytes += freed
        # Counted as each batch commits, so a sweep that fails later has its work counted.
        metrics.TRACES_DELETED.inc(len(expired))
        metrics.RUNS_DELETED.inc(len(runs))
        metrics.BYTES_DELETED.inc(freed)
        log.info("retain: deleted %d traces (%d runs) of tenant %s", len(expired), len(runs), tenant)
        if after_commit is not None:
            await after_commit()
        await self._finish_pending(cur, keys, report)

    async def _finish_pending(self, cur, keys: list[str] | None, report: SweepReport) -> None:
        """Delete the journal's objects that no row points at (``keys``; None: all of the journal,
        what a killed sweep left), then their journal lines."""
        if keys is None:
            await cur.execute("SELECT object_key FROM retention_pending_objects")
            keys = [row[0] for row in await cur.fetchall()]
            if keys:
                log.info("retain: %d objects left by an earlier sweep to look at", len(keys))
        if not keys:
            return
        await cur.execute(_DEAD, (keys,))
        dead = [row[0] for row in await cur.fetchall()]
        if dead:
            await self._store.delete(dead)
        await cur.execute("DELETE FROM retention_pending_objects WHERE object_key = ANY(%s)", (keys,))
        report.objects += len(dead)
        metrics.OBJECTS_DELETED.inc(len(dead))

    async def _count_dry(self, cur, report, tenant, expired) -> None:
        if not expired:
            return
        params = {
            "tenant": tenant,
            "traces": [str(k) for k, lone_run in expired if not lone_run],
            "lone": [str(k) for k, lone_run in expired if lone_run],
        }
        await cur.execute(
            f"SELECT count(*), coalesce(sum(size_bytes), 0), count(*) FILTER (WHERE object_offset IS NULL)"
            f" FROM runs WHERE {_key_filter()}",
            params,
        )
        runs, size, whole = await cur.fetchone()
        await cur.execute(
            f"SELECT count(*), coalesce(sum(a.size_bytes), 0) FROM run_attachments a JOIN runs r"
            f" ON a.tenant = r.tenant AND a.run_id = r.id WHERE {_key_filter('r')}",
            params,
        )
        attachments, attachment_bytes = await cur.fetchone()
        report.traces += len(expired)
        report.runs += runs
        report.bytes += size + attachment_bytes
        report.objects += whole + attachments


async def retain(settings: Settings, as_of: datetime | None = None, dry_run: bool = False) -> SweepReport:
    """``python -m handler retain``: one sweep, with the server's settings."""
    store, db = ObjectStore(settings), Database(settings)
    await store.start()
    try:
        report = await Sweep(settings, store, db).run(as_of, dry_run)
    finally:
        await store.close()
    return report


class Sweeper:
    """The server's sweep every RETENTION_SWEEP_SECONDS (0: never), in every process; the lock
    lets one at a time through, the others count a "busy" sweep and wait for the next turn."""

    def __init__(self, settings: Settings, store: ObjectStore, db: Database) -> None:
        self._sweep = Sweep(settings, store, db)
        self._every = settings.retention_sweep_seconds
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._every:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            try:
                report = await self._sweep.run()
            except SweepBusy:
                metrics.SWEEPS.labels("busy").inc()
                continue
            except Exception:  # the next turn tries again; the journal keeps what is half done
                log.exception("retention sweep failed")
                metrics.SWEEPS.labels("failed").inc()
                continue
            metrics.SWEEPS.labels("done").inc()
            if report.traces or report.objects:
                log.info("%s", report.line(False))
