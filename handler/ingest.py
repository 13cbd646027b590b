"""One ingesting request (a batch, a multipart body, a patch): objects are uploaded while the body
streams in, rows are written at the end.

All or nothing: until the rows are committed nothing is visible, and a request that fails deletes
the objects it uploaded -- at once, or, when the database broke during the commit and cannot say
whether it committed, as soon as it can (gc.py catches what a crash leaves). Nothing stored is
ever overwritten: a patch writes a new object and the row is repointed in the same transaction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from handler.config import Settings
from handler.db import Attachment, CommitUnknown, Database, PostedAfterPatch, Replacement, RunRow
from handler.errors import RunError
from handler.merge import build_object, merged, object_fields
from handler.storage import ObjectStore
from handler.stream import REQUIRED, Run, RunPart, parse_run

log = logging.getLogger(__name__)

# Batches whose insert had an unknown outcome, being settled after their request ended.
_SETTLING: set[asyncio.Task] = set()
_SETTLE_EVERY_S = 2
_SETTLE_FOR_S = 600
_ABORT_WAIT_S = 10


def run_object_key(tenant: str, run_id: uuid.UUID) -> str:
    """A fresh key per upload, so a batch that reuses an existing id can never overwrite the
    stored run: it fails with 409 and its own object is deleted. The tenant is a checked name
    (auth.TENANT_NAME) and the rest is generated, so no client input can leave the tenant's prefix."""
    return f"{tenant}/runs/{run_id}/{uuid.uuid4().hex}.json"


def attachment_object_key(tenant: str, run_id: uuid.UUID) -> str:
    return f"{tenant}/runs/{run_id}/{uuid.uuid4().hex}.bin"


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
    """The runs, patches and attachments of one request, stored all or nothing.

    Runs are uploaded as they arrive. A patch is merged into its run's current object (a new
    object: nothing stored is ever overwritten) and the run is repointed at commit; a patch that
    comes before its run's post is stored alone and the post is merged under it later.
    """

    def __init__(self, store: ObjectStore, db: Database, settings: Settings, tenant: str) -> None:
        self.tenant = tenant
        self._store = store
        self._db = db
        self._settings = settings
        self._window = UploadWindow(settings.upload_concurrency, settings.upload_window_bytes)
        self._rows: dict[uuid.UUID, RunRow] = {}  # runs new to the database
        self._replaced: dict[uuid.UUID, Replacement] = {}  # runs the database has, rewritten
        self._attachments: list[Attachment] = []
        self._index: dict[uuid.UUID, int] = {}  # where each run or patch was in the request
        self._posted: list[uuid.UUID] = []  # in request order
        self._patched: list[uuid.UUID] = []
        self._uploads: dict[str, asyncio.Task] = {}  # key -> its upload, while it runs
        self._keys: list[str] = []  # every object this request uploads: deleted if it fails
        self._in_parts: dict[int, PartsUpload] = {}  # by run index, while the run arrives
        self._parts_uploads: list[PartsUpload] = []  # all of them: dropped if the request fails
        self._superseded: list[str] = []  # objects no run points at once this request commits
        self._failure: RunError | None = None
        self._aborted = False

    @property
    def aborted(self) -> bool:
        return self._aborted

    @property
    def run_count(self) -> int:
        return len(self._rows) + len(self._replaced)

    async def add_run(self, run: Run) -> None:
        """A run to create; its upload starts now."""
        earlier = self._rows.get(run.id) or (self._replaced[run.id].row if run.id in self._replaced else None)
        if earlier is not None and earlier.posted:
            where = "is repeated in the batch" if run.id in self._rows else "already exists"
            raise RunError(409, f"run {run.index}: id {run.id} {where}", run.index)
        self._index.setdefault(run.id, run.index)
        self._posted.append(run.id)
        if earlier is None:
            if run.parts:
                key = await self._finish_in_parts(run)
            else:
                key = await self._upload(run_object_key(self.tenant, run.id), run.body)
            self._rows[run.id] = RunRow.of(run, key)
            return
        # Patches of this run came first, in this request: the post goes under them.
        post = run.body
        if run.parts:  # most of it is in S3 already: joined there, then read back
            key = await self._finish_in_parts(run)
            post = await self._read(key)
            self._superseded.append(key)
        row = await self._post_under_patches(post, earlier.object_key, f"run {run.index}")
        if run.id in self._rows:
            self._rows[run.id] = row
        else:
            self._replaced[run.id] = self._replaced[run.id]._replace(row=row)

    async def add_part(self, part: RunPart) -> None:
        """Bytes of a run too large to hold, uploaded now as a part of the run's object."""
        upload = self._in_parts.get(part.run.index)
        if upload is None:
            key = run_object_key(self.tenant, part.run.id)
            upload = PartsUpload(key, await self._store.start_parts(key))
            self._parts_uploads.append(upload)
            if self._aborted:  # the request ended while the upload was being created
                await self._drop_parts()
                raise RunError(499, "batch aborted")
            self._keys.append(key)
            self._in_parts[part.run.index] = upload
        await self._upload_part(upload, upload.next_number, part.data)
        upload.next_number += 1

    async def _finish_in_parts(self, run: Run) -> str:
        """The run has ended: send its head and its last bytes, then join the parts."""
        upload = self._in_parts.pop(run.index)
        await self._upload_part(upload, 1, run.head)
        await self._upload_part(upload, upload.next_number, run.body)

        async def finish() -> None:
            await asyncio.wait(upload.sending)
            if self._failure is None:
                await self._store.finish_parts(upload.key, upload.upload_id, upload.parts)
                upload.finished = True

        await self._start(upload.key, 0, finish)
        return upload.key

    async def _upload_part(self, upload: PartsUpload, number: int, data: bytes) -> None:
        async def put() -> None:
            upload.parts.append(await self._store.put_part(upload.key, upload.upload_id, number, data))

        upload.sending.append(await self._start(f"{upload.key}#{number}", len(data), put))

    async def _drop_parts(self) -> None:
        for upload in self._parts_uploads:
            if not upload.finished:
                try:
                    await self._store.drop_parts(upload.key, upload.upload_id)
                except RunError as e:
                    log.error("could not drop an upload in parts (gc drops it): %s", e.reason)

    async def add_patch(self, run_id: uuid.UUID, patch: bytes, index: int) -> None:
        """Fields to set on a run (given as a checked JSON object); nulls mean "not given"."""
        updates = [(k, raw) for k, raw in object_fields(patch) if raw != "null" and k != "id"]
        label = f"patch {index} of run {run_id}"
        if run_id in self._rows:
            base_key, old_key, posted = self._rows[run_id].object_key, None, self._rows[run_id].posted
        elif run_id in self._replaced:
            previous = self._replaced[run_id]
            base_key, old_key, posted = previous.row.object_key, previous.old_key, previous.row.posted
        else:
            found = await self._db.find_current(self.tenant, run_id)
            if found is None:  # the patch came first: stored alone until the post comes
                body = build_object([("id", json.dumps(str(run_id))), *updates])
                run = self._parse(body, label, posted=False)
                self._index.setdefault(run_id, index)
                key = await self._upload(run_object_key(self.tenant, run_id), run.body)
                self._rows[run_id] = RunRow.of(run, key, posted=False)
                self._patched.append(run_id)
                return
            base_key, posted = found
            old_key = base_key
        base = object_fields(await self._read(base_key))
        run = self._parse(merged(base, updates), label, posted)
        trace_id = dict(base).get("trace_id")
        if trace_id is not None and uuid.UUID(json.loads(trace_id)) != run.trace_id:
            raise RunError(400, f"{label}: trace_id of a run cannot change", index)
        self._index.setdefault(run_id, index)
        key = await self._upload(run_object_key(self.tenant, run_id), run.body)
        self._superseded.append(base_key)
        row = RunRow.of(run, key, posted)
        if old_key is None:
            self._rows[run_id] = row
        else:
            self._replaced[run_id] = Replacement(row, old_key)
        self._patched.append(run_id)

    async def add_attachment(self, run_id: uuid.UUID, name: str, content_type: str, data: bytes) -> None:
        key = await self._upload(attachment_object_key(self.tenant, run_id), data, content_type)
        self._attachments.append(Attachment(run_id, name, key, content_type, len(data)))

    async def commit(self) -> dict[str, list[str]]:
        """The request has ended: wait for the uploads, then write every row in one transaction.

        Returns the ids of the runs created and of the runs patched."""
        await self._wait_uploads()
        try:
            await self._write()
        except PostedAfterPatch as e:  # posts of runs whose patches came first: merge, then retry
            await self._merge_posts_under_patches(e.patches)
            await self._wait_uploads()
            await self._write()
        if self._superseded:
            await self._delete(self._superseded)
        return {
            "ids": [str(i) for i in self._posted],
            "patched": [str(i) for i in dict.fromkeys(self._patched)],
        }

    async def _wait_uploads(self) -> None:
        if self._uploads:
            await asyncio.wait(list(self._uploads.values()))
        self._raise_failure()
        if self._aborted:  # never write rows for objects that abort() deleted
            raise RunError(499, "batch aborted")

    async def _write(self) -> None:
        try:
            await self._db.write_batch(
                self.tenant, list(self._rows.values()), list(self._replaced.values()), self._attachments
            )
        except RunError as e:
            index = self._index.get(e.run_id)
            if e.index is None and index is not None:
                raise RunError(e.status, f"run {index}: {e.reason}", index) from e
            raise

    async def _merge_posts_under_patches(self, patches: dict[uuid.UUID, str]) -> None:
        """Runs posted now whose patches were stored by earlier requests."""
        for run_id, patch_key in patches.items():
            posted = self._rows.pop(run_id)
            row = await self._post_under_patches(
                await self._read(posted.object_key), patch_key, f"run {run_id}"
            )
            self._superseded.append(posted.object_key)
            self._replaced[run_id] = Replacement(row, patch_key)

    async def _post_under_patches(self, post: bytes, patches_key: str, label: str) -> RunRow:
        """A run's post merged with the patches stored before it (their fields win), uploaded."""
        updates = object_fields(await self._read(patches_key))
        fields = object_fields(post)
        run = self._parse(merged(fields, updates), label)
        if uuid.UUID(json.loads(dict(fields)["trace_id"])) != run.trace_id:
            raise RunError(400, f"{label}: a patch sent before it gave the run another trace_id")
        key = await self._upload(run_object_key(self.tenant, run.id), run.body)
        self._superseded.append(patches_key)
        return RunRow.of(run, key)

    def _parse(self, body: bytes, label: str, posted: bool = True) -> Run:
        s = self._settings
        return parse_run(body, s.max_run_bytes, s.max_depth, label, REQUIRED if posted else ())

    async def abort(self, error: BaseException | None = None) -> None:
        """Stop the uploads and delete every object this batch may have written."""
        if self._aborted:
            return
        self._aborted = True
        if self._uploads:
            # Let the PUTs in flight end rather than cut them: a PUT whose body the server already
            # has may still be stored after our delete. Only one that hangs is cut (gc removes
            # its object if it lands after all).
            _, hung = await asyncio.wait(list(self._uploads.values()), timeout=_ABORT_WAIT_S)
            for task in hung:
                task.cancel()
            if hung:
                log.warning("cut %d uploads that did not end in %d s", len(hung), _ABORT_WAIT_S)
                await asyncio.wait(hung)
        await self._drop_parts()
        if isinstance(error, CommitUnknown):
            log.error("commit outcome unknown; settling %d objects in the background", len(self._keys))
            task = asyncio.create_task(self._settle_later(error.backend))
            _SETTLING.add(task)
            task.add_done_callback(_SETTLING.discard)
            return
        await self._delete(self._keys)

    async def _delete(self, keys: list[str]) -> None:
        if not keys:
            return
        try:
            await self._store.delete(keys)
        except RunError as e:
            log.error("could not delete %d objects (gc removes them): %s", len(keys), e.reason)

    async def _settle_later(self, backend: tuple[int, int]) -> None:
        """Once the database answers again: delete what the request wrote if it did not commit,
        or what it replaced if it did."""
        keys = [r.object_key for r in self._rows.values()] + [
            r.row.object_key for r in self._replaced.values()
        ]
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
                await self._delete(self._keys)
                log.info("settled: the batch had not committed; %d objects deleted", len(self._keys))
            else:
                await self._delete(self._superseded)
                log.warning("settled: the batch had committed (%d of %d rows)", found, len(keys))
            return
        log.error(
            "could not settle %d runs in %d s; gc will remove their objects if unused",
            len(keys),
            _SETTLE_FOR_S,
        )

    async def _upload(self, key: str, body: bytes, content_type: str = "application/json") -> str:
        """Start uploading ``body`` under ``key`` once the window has room; returns the key."""
        # Recorded before the upload starts, so abort() deletes it even if the upload is cut short.
        self._keys.append(key)
        await self._start(key, len(body), lambda: self._store.put(key, body, content_type))
        return key

    async def _start(self, name: str, size: int, send: Callable[[], Awaitable[None]]) -> asyncio.Task:
        """Run ``send`` (an upload of ``size`` bytes) as a task, named so that commit, abort and
        ``_read`` can wait for it, once the window has room; returns the task."""
        await self._window.acquire(size)
        if self._aborted:  # the request ended while we waited for room
            self._window.release(size)
            raise RunError(499, "batch aborted")
        task = asyncio.create_task(self._send(name, size, send))
        self._uploads[name] = task
        task.add_done_callback(lambda _: self._uploads.pop(name, None))
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

    async def _read(self, key: str) -> bytes:
        """A whole object: a run being patched (bounded by the run size limit)."""
        upload = self._uploads.get(key)
        if upload is not None:
            await asyncio.wait([upload])
        self._raise_failure()
        return b"".join([chunk async for chunk in self._store.read(key)])

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure
