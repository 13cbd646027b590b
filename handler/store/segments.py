"""Many small runs to one S3 object: a request's runs are packed into segments.

Each PUT costs about the same whatever its size, so one object per run made ingestion cost follow
the number of runs. A segment is a JSON array of runs, each one's bytes exactly as GET returns
them, so ``jq`` reads it as it is; a run is the byte range of its segment that its row records.

A request has at most one open segment. It is sealed and uploaded when it reaches
``SEGMENT_BYTES``, when its oldest run has waited ``SEGMENT_MAX_WAIT_MS`` (a slow client still
has its runs in the bucket while its body arrives), or when the body ends. A sealed segment
belongs to one request: a request that fails deletes its segments whole. With group commit the
open segment left when the body ends (the tail) is not sealed here: it joins the segment that
the requests of its group share (group.py).
"""

from __future__ import annotations

import asyncio
import os
import time

from handler.base.errors import RunError
from handler.store.objects import Location
from handler.store.uploads import Uploads

# A segment's bytes: "[" run ",\n" run ... "]\n" (group.py joins tails with the same separator).
OPEN, SEPARATOR, CLOSE = b"[", b",\n", b"]\n"


def segment_key(tenant: str) -> str:
    """A fresh key per segment under a date prefix (UTC), so bucket lifecycle rules can expire by
    day. The tenant is a checked name (auth.TENANT_NAME) and the rest is generated: 128 random bits,
    as a uuid4 has but without building one (a key is made for every request)."""
    return f"{tenant}/segments/{time.strftime('%Y-%m-%d', time.gmtime())}/{os.urandom(16).hex()}.json"


class Segment:
    """An open segment: the bytes so far, from its opening ``[``."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.data = bytearray(OPEN)
        self.runs = 0

    def append(self, body: bytes) -> int:
        """Add a run; returns its offset in the object."""
        if self.runs:
            self.data += SEPARATOR
        self.runs += 1
        offset = len(self.data)
        self.data += body
        return offset

    def sealed(self) -> bytearray:
        """The segment's object: closed, and no longer to be appended to (not copied: it may be
        megabytes)."""
        self.data += CLOSE
        return self.data


class Packer:
    """The open segment of one request, sealed into its ``Uploads``."""

    def __init__(self, uploads: Uploads, tenant: str, segment_bytes: int, max_wait_s: float) -> None:
        self._uploads = uploads
        self._tenant = tenant
        self._segment_bytes = segment_bytes
        self._max_wait_s = max_wait_s
        self._open: Segment | None = None
        self._waiting: dict[str, Segment] = {}  # sealed, their uploads waiting for window room
        self._timer: asyncio.TimerHandle | None = None
        self._sealing: set[asyncio.Task] = set()  # seals started by the timer

    @property
    def held_bytes(self) -> int:
        """The open segment (a sealed one waiting for upload room is the Uploads' to count: it
        is the same buffer)."""
        return len(self._open.data) if self._open is not None else 0

    async def add(self, body: bytes) -> Location:
        """Pack a run; returns where it will be. Waits for upload room when the segment fills, or
        while a segment sealed by the wait still waits for it (so at most one segment is open and
        one waits, however slowly S3 takes them)."""
        await self._wait_for_seals()
        if self._open is None:
            self._open = Segment(segment_key(self._tenant))
            if self._max_wait_s:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self._max_wait_s, self._seal_in_background)
        location = Location(self._open.key, self._open.append(body))
        if len(self._open.data) >= self._segment_bytes:
            await self._seal()
        return location

    def read(self, location: Location, size: int) -> bytes | None:
        """A run's bytes while its segment is still here (open, or sealed but not yet uploading),
        else None."""
        if self._open is not None and location.key == self._open.key:
            segment = self._open
        else:
            segment = self._waiting.get(location.key)
        if segment is None:
            return None
        return bytes(segment.data[location.offset : location.offset + size])

    async def flush(self) -> None:
        """The body has ended: seal the open segment, and wait until every seal has started."""
        await self._wait_for_seals()
        await self._seal()

    async def detach(self) -> Segment | None:
        """The body has ended and the request joins a group (group.py): the open segment, not
        sealed, is the group's to upload. Waits until every seal has started."""
        await self._wait_for_seals()
        segment, self._open = self._open, None
        self._cancel_timer()
        return segment

    def restore(self, segment: Segment) -> None:
        """A detached segment comes back (its group did not commit this request, which merges and
        tries again): open again, as it was."""
        if self._open is not None:
            raise RuntimeError("a segment is open already")
        self._open = segment

    def close(self) -> None:
        """The request failed: drop the open segment (nothing of it was uploaded)."""
        self._cancel_timer()
        self._open = None

    async def _seal(self) -> None:
        segment, self._open = self._open, None
        self._cancel_timer()
        if segment is None:
            return
        self._waiting[segment.key] = segment
        try:
            await self._uploads.put(segment.key, segment.sealed(), "segment")
        finally:
            del self._waiting[segment.key]

    def _seal_in_background(self) -> None:
        """The oldest run of the open segment has waited long enough."""
        self._timer = None

        async def seal() -> None:
            try:
                await self._seal()
            except RunError:  # the request was aborted meanwhile: abort() cleans up
                pass

        task = asyncio.create_task(seal())
        self._sealing.add(task)
        task.add_done_callback(self._sealing.discard)

    async def _wait_for_seals(self) -> None:
        while self._sealing:
            await asyncio.wait(list(self._sealing))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
