"""One POST /runs batch: runs are uploaded while the body streams in, rows are written at the end.

All or nothing: until the rows are committed nothing is visible, and a batch that fails deletes
the objects it uploaded -- at once, or, when the database broke during the insert and cannot say
whether it committed, as soon as it can (gc.py catches what a crash leaves).
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from handler.config import Settings
from handler.db import CommitUnknown, Database, RunRow
from handler.errors import RunError
from handler.storage import ObjectStore
from handler.stream import Run, RunSplitter

log = logging.getLogger(__name__)

# Batches whose insert had an unknown outcome, being settled after their request ended.
_SETTLING: set[asyncio.Task] = set()
_SETTLE_EVERY_S = 2
_SETTLE_FOR_S = 600


def object_key(tenant: str, run_id: uuid.UUID) -> str:
    """A fresh key per upload, so a batch that reuses an existing id can never overwrite the
    stored run: it fails with 409 and its own object is deleted. The tenant is a checked name
    (auth.TENANT_NAME) and the rest is generated, so no client input can leave the tenant's prefix."""
    return f"{tenant}/runs/{run_id}/{uuid.uuid4().hex}.json"


class UploadWindow:
    """Bounds the uploads in flight by count and bytes.

    Waiting for room here is what makes ``data_received`` return a pending awaitable, so Tornado
    stops reading the socket instead of buffering the body.
    """

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.count = 0
        self.bytes = 0
        self._freed = asyncio.Event()

    async def acquire(self, size: int) -> None:
        # One upload always fits, so a run larger than the byte window still goes through.
        while self.count and (self.count >= self.max_count or self.bytes + size > self.max_bytes):
            self._freed.clear()
            await self._freed.wait()
        self.count += 1
        self.bytes += size

    def release(self, size: int) -> None:
        self.count -= 1
        self.bytes -= size
        self._freed.set()


class BatchIngest:
    def __init__(self, store: ObjectStore, db: Database, settings: Settings, tenant: str) -> None:
        self.tenant = tenant
        self._store = store
        self._db = db
        self._max_body_bytes = settings.max_body_bytes
        self._splitter = RunSplitter(settings.max_run_bytes, settings.max_runs_per_batch, settings.max_depth)
        self._window = UploadWindow(settings.upload_concurrency, settings.upload_window_bytes)
        self._rows: list[RunRow] = []
        self._ids: set[uuid.UUID] = set()
        self._uploads: set[asyncio.Task] = set()
        self._failure: RunError | None = None
        self._aborted = False
        self.bytes_received = 0

    async def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the body; returns once its runs' uploads have started."""
        self.bytes_received += len(chunk)
        if self.bytes_received > self._max_body_bytes:
            raise RunError(413, f"body is larger than {self._max_body_bytes} bytes")
        self._raise_failure()
        for run in self._splitter.feed(chunk):
            await self._start_upload(run)

    async def commit(self) -> list[str]:
        """The body has ended: wait for the uploads, then write every row in one statement."""
        for run in self._splitter.close():
            await self._start_upload(run)
        if self._uploads:
            await asyncio.wait(list(self._uploads))
        self._raise_failure()
        if self._aborted:  # never write rows for objects that abort() deleted
            raise RunError(499, "batch aborted")
        if self._rows:
            await self._db.insert_runs(self.tenant, self._rows)
        return [str(row.id) for row in self._rows]

    async def abort(self, error: BaseException | None = None) -> None:
        """Stop the uploads and delete every object this batch may have written."""
        if self._aborted:
            return
        self._aborted = True
        for task in self._uploads:
            task.cancel()
        if self._uploads:
            await asyncio.wait(list(self._uploads))
        if isinstance(error, CommitUnknown):
            log.error("insert outcome unknown; settling %d runs in the background", len(self._rows))
            task = asyncio.create_task(self._settle_later(error.backend))
            _SETTLING.add(task)
            task.add_done_callback(_SETTLING.discard)
            return
        await self._delete_objects()

    async def _delete_objects(self) -> None:
        keys = [row.object_key for row in self._rows]
        if not keys:
            return
        try:
            await self._store.delete(keys)
        except RunError as e:
            log.error(
                "could not delete %d objects of a failed batch (gc removes them): %s", len(keys), e.reason
            )

    async def _settle_later(self, backend: tuple[int, int]) -> None:
        """Once the database answers again: delete the objects if the insert did not commit."""
        keys = [row.object_key for row in self._rows]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _SETTLE_FOR_S
        while loop.time() < deadline:
            await asyncio.sleep(_SETTLE_EVERY_S)
            try:
                found = await self._db.count_committed(keys, backend)
            except Exception as e:  # the database is still away: try again
                log.debug("settling: %s", e)
                continue
            if found == 0:
                await self._delete_objects()
                log.info("settled: the insert had not committed; %d objects deleted", len(keys))
            else:
                log.warning("settled: the insert had committed (%d of %d rows)", found, len(keys))
            return
        log.error(
            "could not settle %d runs in %d s; gc will remove their objects if unused",
            len(keys),
            _SETTLE_FOR_S,
        )

    async def _start_upload(self, run: Run) -> None:
        if run.id in self._ids:
            raise RunError(409, f"run {run.index}: id {run.id} is repeated in the batch", run.index)
        self._ids.add(run.id)
        key = object_key(self.tenant, run.id)
        size = len(run.body)
        await self._window.acquire(size)
        if self._aborted:  # the request ended while we waited for room
            self._window.release(size)
            raise RunError(499, "batch aborted")
        # Recorded before the upload starts, so abort() deletes it even if the upload is cut short.
        self._rows.append(RunRow(run.id, run.trace_id, run.name, key, size))
        task = asyncio.create_task(self._upload(key, run.body, size))
        self._uploads.add(task)
        task.add_done_callback(self._uploads.discard)

    async def _upload(self, key: str, body: bytes, size: int) -> None:
        try:
            await self._store.put(key, body)
        except RunError as e:
            self._failure = self._failure or e
        except Exception as e:  # a bug must still fail the batch, not vanish in a task
            log.exception("upload of %s failed", key)
            self._failure = self._failure or RunError(503, f"upload failed: {e}")
        finally:
            self._window.release(size)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure
