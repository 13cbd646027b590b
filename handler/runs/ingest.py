"""One ingesting request (a batch, a multipart body, a patch): objects are uploaded while the body
streams in, rows are written at the end. Small runs are packed many to an object (segments.py),
larger ones get their own; uploads.py keeps the books of what is in flight.

All or nothing: until the rows are committed nothing is visible, and a request that fails deletes
the objects it uploaded -- at once, or, when the database broke during the commit and cannot say
whether it committed, as soon as it can (gc.py catches what a crash leaves). Nothing stored is
ever overwritten: a patch writes the run anew (into the request's segment, or a new object) and
the row is repointed in the same transaction; the range it replaced in a segment is dead space
until ``python -m handler compact`` rewrites the segment.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

from handler.base.errors import RunError
from handler.feedback.schema import FeedbackRow
from handler.feedback.store import INSERT as INSERT_FEEDBACK
from handler.feedback.store import insert_params
from handler.retention.policy import MARK_FEEDBACK, feedback_marks
from handler.runs.patching import PatchMerging
from handler.runs.schema import Run
from handler.runs.splitter import RunPart
from handler.server.config import Settings
from handler.store.db import Database
from handler.store.group import GroupCommitUnknown, Relocate, committer, unmoved
from handler.store.objects import Location, ObjectStore
from handler.store.outcome import CommitUnknown, committed_keys, count_when_back
from handler.store.rows import Attachment, Replacement, RunRow, StoredRun, WrittenMeanwhile
from handler.store.segments import Packer, Segment
from handler.store.transaction import Writes, write_group
from handler.store.uploads import PartsUpload, Uploads

log = logging.getLogger(__name__)

# Batches whose insert had an unknown outcome, being settled after their request ended.
_SETTLING: set[asyncio.Task] = set()
# Writes retried after merging with what other requests wrote meanwhile (WrittenMeanwhile), at most.
_MERGE_ATTEMPTS = 3


def run_object_key(tenant: str, run_id: uuid.UUID) -> str:
    """A fresh key per upload, so a batch that reuses an existing id can never overwrite the
    stored run: it fails with 409 and its own object is deleted. The tenant is a checked name
    (auth.TENANT_NAME) and the rest is generated, so no client input can leave the tenant's prefix."""
    return f"{tenant}/runs/{run_id}/{uuid.uuid4().hex}.json"


def attachment_object_key(tenant: str, run_id: uuid.UUID) -> str:
    return f"{tenant}/runs/{run_id}/{uuid.uuid4().hex}.bin"


class BatchIngest(PatchMerging):
    """The runs, patches and attachments of one request, stored all or nothing.

    Runs are uploaded as they arrive. A patch is merged into its run's current bytes and stored
    anew (nothing stored is ever overwritten); the run is repointed at commit. A patch that comes
    before its run's post is stored alone and the post is merged under it later (patching.py).
    """

    def __init__(
        self,
        store: ObjectStore,
        db: Database,
        settings: Settings,
        tenant: str,
        on_freed: Callable[[], None] | None = None,
    ) -> None:
        """``on_freed`` is called whenever an upload ends (its bytes are no longer held)."""
        self.tenant = tenant
        self._on_freed = on_freed
        self._store = store
        self._db = db
        self._settings = settings
        self._uploads = Uploads(store, settings.upload_concurrency, settings.upload_window_bytes, on_freed)
        self._packer = (
            Packer(self._uploads, tenant, settings.segment_bytes, settings.segment_max_wait_ms / 1000)
            if settings.segment_bytes
            else None
        )
        self._rows: dict[uuid.UUID, RunRow] = {}  # runs new to the database
        self._replaced: dict[uuid.UUID, Replacement] = {}  # runs the database has, rewritten
        self._attachments: list[Attachment] = []
        self._index: dict[uuid.UUID, int] = {}  # where each run or patch was in the request
        self._posted: list[uuid.UUID] = []  # in request order
        self._patched: list[uuid.UUID] = []
        self._in_parts: dict[int, PartsUpload] = {}  # by run index, while the run arrives
        self._superseded: list[Location] = []  # what no run points at once this request commits
        # This request's own fields of each run it patches in the database (later patches win): its
        # patch alone, should the run be deleted before the commit (``_store_patches_of_gone``).
        self._patch_fields: dict[uuid.UUID, list[tuple[str, str]]] = {}
        self._feedback: dict[uuid.UUID, FeedbackRow] = {}  # written with the rows, held until then
        self._feedback_bytes = 0
        self._group = committer(store, db, settings)  # None: group commit is off
        self._tail: Segment | None = None  # the open segment, handed to a group
        self._tail_keys: set[str] = set()  # keys of tails given to groups (never uploaded as such)
        self.group_id: str | None = None  # the group it joined last (access log)
        # Further statements (sql, params) written with this request's rows, in its part of the
        # group's transaction: the way for rows of other kinds (feedback) to be all or nothing with it.
        self.extra_statements: list[tuple[str, tuple]] = []

    @property
    def aborted(self) -> bool:
        return self._uploads.aborted

    @property
    def run_count(self) -> int:
        return len(self._rows) + len(self._replaced)

    @property
    def object_count(self) -> int:
        """Its own objects, and each shared segment that its tail went into."""
        return self._uploads.objects + len(self._tail_keys)

    @property
    def held_bytes(self) -> int:
        """Bytes held for this request's uploads (in flight, waiting to start, the open segment, or
        the tail waiting in its group) and its feedback."""
        packed = self._packer.held_bytes if self._packer is not None else 0
        tail = len(self._tail.data) if self._tail is not None else 0
        return self._uploads.held_bytes + packed + tail + self._feedback_bytes

    @property
    def tail(self) -> Segment | None:
        """For the group: the runs not yet in an uploaded segment."""
        return self._tail

    async def add_run(self, run: Run) -> None:
        """A run to create; its upload starts now (or when its segment is sealed)."""
        earlier = self._rows.get(run.id) or (self._replaced[run.id].row if run.id in self._replaced else None)
        if earlier is not None and earlier.posted:
            where = "is repeated in the batch" if run.id in self._rows else "already exists"
            raise RunError(409, f"run {run.index}: id {run.id} {where}", run.index)
        self._index.setdefault(run.id, run.index)
        self._posted.append(run.id)
        if earlier is None:
            if run.parts:
                location = await self._finish_in_parts(run)
            else:
                location = await self._store_run(run.id, run.body)
            self._rows[run.id] = RunRow.of(run, location)
            return
        # Patches of this run came first, in this request: the post goes under them.
        post = run.body
        if run.parts:  # most of it is in S3 already: joined there, then read back
            location = await self._finish_in_parts(run)
            post = await self._read(location, run.size)
            self._superseded.append(location)
        row = await self._post_under_patches(post, StoredRun.of(earlier), f"run {run.index}")
        if run.id in self._rows:
            self._rows[run.id] = row
        else:
            self._replaced[run.id] = self._replaced[run.id]._replace(row=row)

    async def add_part(self, part: RunPart) -> None:
        """Bytes of a run too large to hold, uploaded now as a part of the run's own object."""
        upload = self._in_parts.get(part.run.index)
        if upload is None:
            upload = await self._uploads.begin_parts(run_object_key(self.tenant, part.run.id))
            self._in_parts[part.run.index] = upload
        await self._uploads.put_part(upload, upload.next_number, part.data)
        upload.next_number += 1

    async def _finish_in_parts(self, run: Run) -> Location:
        """The run has ended: send its head and its last bytes, then join the parts."""
        upload = self._in_parts.pop(run.index)
        await self._uploads.put_part(upload, 1, run.head)
        await self._uploads.put_part(upload, upload.next_number, run.body)
        await self._uploads.finish_parts(upload, run.size)
        return Location(upload.key)

    async def add_attachment(self, run_id: uuid.UUID, name: str, content_type: str, data: bytes) -> None:
        key = attachment_object_key(self.tenant, run_id)
        await self._uploads.put(key, data, "attachment", content_type)
        self._attachments.append(Attachment(run_id, name, key, content_type, len(data)))

    def add_feedback(self, row: FeedbackRow, size: int, index: int | None = None) -> None:
        """A feedback (checked by feedback/schema.py), written in the transaction of the rows and
        held until then: at most MAX_RUN_BYTES of it per request, as one run."""
        where = f"part {index}: " if index is not None else ""
        if row.id in self._feedback:
            raise RunError(409, f"{where}feedback {row.id} is repeated in the body", index)
        self._feedback_bytes += size
        if self._feedback_bytes > self._settings.max_run_bytes:
            limit = self._settings.max_run_bytes
            raise RunError(413, f"{where}the feedback of one body is more than {limit} bytes", index)
        self._feedback[row.id] = row

    async def commit(self) -> dict[str, list[str]]:
        """The request has ended: wait for the uploads, then write every row in one transaction.

        Returns the ids of the runs created and of the runs patched."""
        for attempt in range(_MERGE_ATTEMPTS):
            try:
                await self._upload_and_write()
                break
            except WrittenMeanwhile as e:  # a post and a patch of one run came apart: merge, retry
                if attempt == _MERGE_ATTEMPTS - 1:
                    raise RunError(409, "runs were written by other requests meanwhile; retry") from e
                await self._merge_posts_under_patches(e.posts)
                await self._apply_patches_stored_alone(e.patches)
                await self._store_patches_of_gone(e.gone)
        await self._drop_superseded()
        result = {
            "ids": [str(i) for i in self._posted],
            "patched": [str(i) for i in dict.fromkeys(self._patched)],
        }
        if self._feedback:
            result["feedback"] = [str(i) for i in self._feedback]
        return result

    async def _upload_and_write(self) -> None:
        """Alone: seal the open segment, wait for every upload, write the rows. In a group
        (store/group.py): wait for the uploads, then hand the open segment and the rows to the
        group, which answers once it has committed; a tail it gives back comes back untouched."""
        try:
            if self._group is None:
                if self._packer is not None:
                    await self._packer.flush()
                await self._uploads.wait_all()
                if self.extra_statements:  # written in one transaction with the rows
                    (refused,) = await write_group(self._db, self.tenant, [self.writes(unmoved)])
                    if refused is not None:
                        raise refused
                    return
                await self._db.write_batch(
                    self.tenant,
                    list(self._rows.values()),
                    list(self._replaced.values()),
                    self._attachments,
                    list(self._feedback.values()),
                )
                return
            self._tail = await self._packer.detach() if self._packer is not None else None
            if self._tail is not None:
                self._tail_keys.add(self._tail.key)
            try:
                await self._uploads.wait_all()
                await self._group.commit(self.tenant, self)
            except WrittenMeanwhile:
                if self._tail is not None:
                    self._packer.restore(self._tail)
                raise
            finally:
                self._tail = None
                if self._on_freed is not None:
                    self._on_freed()
        except RunError as e:
            index = self._index.get(e.run_id)
            if e.index is None and index is not None:
                raise RunError(e.status, f"run {index}: {e.reason}", index) from e
            raise

    def writes(self, relocate: Relocate) -> Writes:
        """For the group: the rows to write, those in the tail moved into the shared segment."""

        def moved(row: RunRow) -> RunRow:
            location = row.location
            new = relocate(location)
            return row if new is location else row._replace(object_key=new.key, object_offset=new.offset)

        extra = list(self.extra_statements)
        feedback = list(self._feedback.values())
        if feedback:  # after the runs: a feedback without a trace_id takes its run's
            extra.append((INSERT_FEEDBACK, insert_params(self.tenant, feedback)))
            marks = feedback_marks(self.tenant, feedback)
            if marks is not None:  # the trace moves to the long tier (handler/retention)
                extra.append((MARK_FEEDBACK, marks))
        return Writes(
            [moved(r) for r in self._rows.values()],
            [r._replace(row=moved(r.row)) for r in self._replaced.values()],
            list(self._attachments),
            extra,
            [f.id for f in feedback],
        )

    async def abort(self, error: BaseException | None = None) -> None:
        """Stop the uploads and delete every object this batch may have written."""
        if self._uploads.aborted:
            return
        if self._packer is not None:
            self._packer.close()
        self._tail = None
        await self._uploads.abort()
        if isinstance(error, GroupCommitUnknown):
            return  # the group settles it for all its requests (settled)
        if isinstance(error, CommitUnknown):
            log.error("commit outcome unknown; settling %d objects in the background", self.object_count)
            task = asyncio.create_task(self._settle_later(error.backend))
            _SETTLING.add(task)
            task.add_done_callback(_SETTLING.discard)
            return
        await self._uploads.delete(self._uploads.keys)

    async def _settle_later(self, backend: tuple[int, int]) -> None:
        """Once the database answers again: delete what the request wrote if it did not commit,
        or what it replaced if it did."""
        keys = committed_keys(list(self._rows.values()), list(self._replaced.values()), self._attachments)
        found = await count_when_back(self._db.connect, keys, backend, self.tenant, list(self._feedback))
        if found is None:
            return
        await self.settled(found > 0)
        if found == 0:
            log.info("settled: the batch had not committed; %d objects deleted", self.object_count)
        else:
            log.warning("settled: the batch had committed (%d of %d rows)", found, len(keys))

    async def settled(self, committed: bool) -> None:
        """An unknown commit outcome is known now: delete what the request wrote if it did not
        commit, or what it replaced if it did."""
        if committed:
            await self._drop_superseded()
        else:
            await self._uploads.delete(self._uploads.keys)

    async def _drop_superseded(self) -> None:
        """Once committed: delete the objects that held only what this request replaced -- a run's
        own object, or a segment no run points into any more (the rest stay for their live runs,
        and compaction reclaims their dead ranges)."""
        whole = {location.key for location in self._superseded if location.offset is None}
        segments = {location.key for location in self._superseded if location.offset is not None}
        # A tail's own key was never uploaded: what it superseded there is dead space in its group's
        # shared segment, which holds live runs.
        segments -= self._tail_keys
        if segments:
            try:
                segments -= await self._db.stored_keys(sorted(segments))
            except RunError as e:
                log.warning(
                    "could not check %d segments for live runs (gc will): %s", len(segments), e.reason
                )
                segments = set()
        await self._uploads.delete(sorted(whole | segments))

    async def _store_run(self, run_id: uuid.UUID, body: bytes) -> Location:
        """Upload a run's bytes: packed into the request's segment when it is small, else as its
        own object. Returns where they will be."""
        if self._packer is not None and len(body) <= self._settings.pack_max_run_bytes:
            return await self._packer.add(body)
        key = run_object_key(self.tenant, run_id)
        await self._uploads.put(key, body, "run")
        return Location(key)

    async def _read(self, location: Location, size: int) -> bytes:
        """A run's stored bytes (a run being patched: bounded by the run size limit), from the open
        segment if it is still here, else from S3 once its upload has ended."""
        if self._packer is not None:
            data = self._packer.read(location, size)
            if data is not None:
                return data
        await self._uploads.wait(location.key)
        return await self._store.read_all(location, size)
