"""The objects one request writes: uploads in flight, bounded, and undone if the request fails.

This is the bookkeeping behind ``BatchIngest`` (ingest.py): every upload runs as a task once the
window has room, its first failure fails the request, and ``abort`` deletes every object the
request wrote -- or cuts the ones that hang and leaves them to gc.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from handler.base.errors import RunError
from handler.base.metrics import OBJECT_BYTES, OBJECTS_WRITTEN
from handler.store.objects import ObjectStore

log = logging.getLogger(__name__)

_ABORT_WAIT_S = 10


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


@dataclass
class PartsUpload:
    """The object of a run too large to hold, uploaded in parts while the run arrives. Part 1 is
    the run's head, sent when the run ends (its id may still have to be written into it)."""

    key: str
    upload_id: str
    parts: list[dict] = field(default_factory=list)  # those uploaded
    sending: list[asyncio.Task] = field(default_factory=list)  # every part's upload
    next_number: int = 2
    finished: bool = False


class Uploads:
    """Every object of one request: started as tasks within the window, waited for by name."""

    def __init__(
        self, store: ObjectStore, max_count: int, max_bytes: int, on_freed: Callable[[], None] | None = None
    ) -> None:
        self._store = store
        self._window = UploadWindow(max_count, max_bytes)
        self._on_freed = on_freed  # an upload ended: its bytes are no longer held
        self._queued = 0  # bytes of uploads waiting for window room
        self._tasks: dict[str, asyncio.Task] = {}  # name -> its upload, while it runs
        self.keys: list[str] = []  # every object this request uploads: deleted if it fails
        self._parts_uploads: list[PartsUpload] = []  # dropped if the request fails
        self._failure: RunError | None = None
        self.aborted = False

    @property
    def objects(self) -> int:
        """Objects this request has written or is writing (for the access log)."""
        return len(self.keys)

    @property
    def held_bytes(self) -> int:
        """Bytes of this request's uploads, in flight or waiting for window room."""
        return self._window.bytes + self._queued

    async def put(
        self, key: str, body: bytes | bytearray, kind: str, content_type: str = "application/json"
    ) -> None:
        """Start uploading ``body`` under ``key`` once the window has room; ``kind`` (segment, run,
        attachment) labels the metrics."""
        # Recorded before the upload starts, so abort() deletes it even if the upload is cut short.
        self.keys.append(key)

        async def put() -> None:
            await self._store.put(key, body, content_type)
            _written(kind, len(body))

        await self._start(key, len(body), put)

    async def begin_parts(self, key: str) -> PartsUpload:
        upload = PartsUpload(key, await self._store.start_parts(key))
        self._parts_uploads.append(upload)
        if self.aborted:  # the request ended while the upload was being created
            await self._drop_parts()
            raise RunError(499, "batch aborted")
        self.keys.append(key)
        return upload

    async def put_part(self, upload: PartsUpload, number: int, data: bytes) -> None:
        async def put() -> None:
            upload.parts.append(await self._store.put_part(upload.key, upload.upload_id, number, data))

        upload.sending.append(await self._start(f"{upload.key}#{number}", len(data), put))

    async def finish_parts(self, upload: PartsUpload, size: int) -> None:
        """Join the parts once they are all up (in the background, like any upload)."""

        async def finish() -> None:
            await asyncio.wait(upload.sending)
            if self._failure is None:
                await self._store.finish_parts(upload.key, upload.upload_id, upload.parts)
                upload.finished = True
                _written("run", size)

        await self._start(upload.key, 0, finish)

    async def wait(self, name: str) -> None:
        """Until the upload of ``name`` has ended (at once if it is not running); raises the
        request's first upload failure."""
        task = self._tasks.get(name)
        if task is not None:
            await asyncio.wait([task])
        self.raise_failure()

    async def wait_all(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()))
        self.raise_failure()
        if self.aborted:  # never write rows for objects that abort() deleted
            raise RunError(499, "batch aborted")

    def raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def abort(self) -> None:
        """Stop: let the uploads in flight end (or cut those that hang) and drop unfinished
        uploads in parts. Deleting the objects is the caller's call (see ``delete``)."""
        self.aborted = True
        if self._tasks:
            # Let the PUTs in flight end rather than cut them: a PUT whose body the server already
            # has may still be stored after our delete. Only one that hangs is cut (gc removes
            # its object if it lands after all).
            _, hung = await asyncio.wait(list(self._tasks.values()), timeout=_ABORT_WAIT_S)
            for task in hung:
                task.cancel()
            if hung:
                log.warning("cut %d uploads that did not end in %d s", len(hung), _ABORT_WAIT_S)
                await asyncio.wait(hung)
        await self._drop_parts()

    async def delete(self, keys: list[str]) -> None:
        if not keys:
            return
        try:
            await self._store.delete(keys)
        except RunError as e:
            log.error("could not delete %d objects (gc removes them): %s", len(keys), e.reason)

    async def _drop_parts(self) -> None:
        for upload in self._parts_uploads:
            if not upload.finished:
                try:
                    await self._store.drop_parts(upload.key, upload.upload_id)
                except RunError as e:
                    log.error("could not drop an upload in parts (gc drops it): %s", e.reason)

    async def _start(self, name: str, size: int, send: Callable[[], Awaitable[None]]) -> asyncio.Task:
        """Run ``send`` (an upload of ``size`` bytes) as a task named ``name`` once the window has
        room; returns the task."""
        self._queued += size
        try:
            await self._window.acquire(size)
        finally:
            self._queued -= size
        if self.aborted:  # the request ended while we waited for room
            self._window.release(size)
            raise RunError(499, "batch aborted")
        task = asyncio.create_task(self._send(name, size, send))
        self._tasks[name] = task
        task.add_done_callback(lambda _: self._tasks.pop(name, None))
        return task

    async def _send(self, name: str, size: int, send: Callable[[], Awaitable[None]]) -> None:
        try:
            await send()
        except RunError as e:
            self._failure = self._failure or e
        except Exception as e:  # a bug must still fail the batch, not vanish in a task
            log.exception("upload of %s failed", name)
            self._failure = self._failure or RunError(503, f"upload failed: {e}")
        finally:
            self._window.release(size)
            if self._on_freed is not None and size:
                self._on_freed()


def _written(kind: str, size: int) -> None:
    OBJECTS_WRITTEN.labels(kind).inc()
    OBJECT_BYTES.observe(size)
