"""Request bodies read as they stream in, handed to a BatchIngest: one reader per body format.

Each has ``feed(chunk)`` for every (decoded) chunk and ``close()`` at the end of the body. The
multipart reader has its own module (multipart.py).
"""

from __future__ import annotations

import uuid

from handler.base.errors import RunError
from handler.runs.fastpath import FastSplitter, splitter
from handler.runs.ingest import BatchIngest
from handler.runs.schema import Run
from handler.runs.splitter import RunPart, RunSplitter, parse_run
from handler.server.config import Settings

_WHITESPACE = b" \t\r\n"
_QUOTE, _BACKSLASH, _OPEN_BRACE = ord('"'), ord("\\"), ord("{")
_SHAPE = '{"post": [...], "patch": [...]}'
# The object around the arrays: (state, byte) -> next state.
_MOVES = {
    ("start", ord("{")): "first_key",
    ("first_key", _QUOTE): "key_text",
    ("first_key", ord("}")): "end",
    ("key", _QUOTE): "key_text",
    ("colon", ord(":")): "value",
    ("value", ord("[")): "array",
    ("next", ord(",")): "key",
    ("next", ord("}")): "end",
}


class ArrayReader:
    """POST /runs: a JSON array of runs, streamed; or a single run (a JSON object), which is what
    LangSmith clients send when they do not batch, held until it ends (it is one run)."""

    def __init__(self, ingest: BatchIngest, settings: Settings) -> None:
        self._ingest = ingest
        self._settings = settings
        self._splitter = splitter(
            settings.max_run_bytes,
            settings.max_runs_per_batch,
            settings.max_depth,
            part_bytes=settings.stream_part_bytes,
        )
        self._single: bytearray | None = None
        self._decided = False

    @property
    def buffered(self) -> int:
        return self._splitter.buffered + (len(self._single) if self._single is not None else 0)

    async def feed(self, chunk: bytes) -> None:
        if not self._decided:
            head = chunk.lstrip(_WHITESPACE)
            if not head:  # only whitespace so far: the splitter takes it either way
                self._splitter.feed(chunk)
                return
            self._decided = True
            if head[0] == _OPEN_BRACE:
                self._single = bytearray()
        if self._single is None:
            await self._add(self._splitter.feed(chunk))
            return
        self._single += chunk
        if len(self._single) > self._settings.max_run_bytes:
            raise RunError(413, f"run 0 is larger than {self._settings.max_run_bytes} bytes", 0)

    async def close(self) -> None:
        if self._single is None:
            await self._add(self._splitter.close())
            return
        s = self._settings
        await self._ingest.add_run(
            parse_run(bytes(self._single), s.max_run_bytes, s.max_depth, "run 0", new_id=uuid.uuid4)
        )

    async def _add(self, items: list[Run | RunPart]) -> None:
        for item in items:
            if isinstance(item, RunPart):
                await self._ingest.add_part(item)
            else:
                await self._ingest.add_run(item)


class PatchReader:
    """PATCH /runs/{id}: one JSON object, held until it ends (bounded by the run size limit)."""

    def __init__(self, ingest: BatchIngest, settings: Settings, run_id: uuid.UUID) -> None:
        self._ingest = ingest
        self._settings = settings
        self._run_id = run_id
        self._body = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._body)

    async def feed(self, chunk: bytes) -> None:
        self._body += chunk
        if len(self._body) > self._settings.max_run_bytes:
            raise RunError(413, f"patch is larger than {self._settings.max_run_bytes} bytes")

    async def close(self) -> None:
        s = self._settings
        patch = parse_run(bytes(self._body), s.max_run_bytes, s.max_depth, "patch", ())
        if patch.id not in (None, self._run_id):
            raise RunError(400, f"patch: id {patch.id} is not the run's id {self._run_id}")
        await self._ingest.add_patch(self._run_id, patch.body, 0)


class BatchReader:
    """POST /runs/batch: ``{"post": [runs], "patch": [patches]}``, either key optional.

    The object around the arrays is read here, byte by byte (it is a few bytes); each array is
    read by a splitter (fastpath.py), which says where the array ends.
    """

    def __init__(self, ingest: BatchIngest, settings: Settings) -> None:
        self._ingest = ingest
        self._settings = settings
        self._state = "start"  # see _MOVES; "array" while a splitter reads
        self._key = bytearray()
        self._seen: set[str] = set()
        self._section: str | None = None
        self._splitter: FastSplitter | RunSplitter | None = None
        self._count = 0  # runs and patches so far: they share the batch's limit

    @property
    def buffered(self) -> int:
        return self._splitter.buffered if self._splitter is not None else 0

    async def feed(self, chunk: bytes) -> None:
        while chunk:
            if self._state == "array":
                await self._take(self._splitter.feed(chunk))
                chunk = self._end_of_array()
            else:
                chunk = self._read_object(chunk)

    async def close(self) -> None:
        # The splitter may hold back the end of a large array until the body ends: what follows
        # it (``,"patch":[...]}``) is then read here, and may open another array to close.
        while self._state == "array":
            await self._take(self._splitter.close())
            await self.feed(self._end_of_array())
        if self._state != "end":
            raise RunError(400, f"invalid JSON in body: it ends before the {_SHAPE} object does")

    def _end_of_array(self) -> bytes:
        """What follows the array, once it has ended."""
        if self._splitter.rest is None:
            return b""
        self._state = "next"
        return self._splitter.rest

    def _read_object(self, chunk: bytes) -> bytes:
        """Read the object's own tokens up to the start of an array; returns the input left."""
        for i, byte in enumerate(chunk):
            if self._state == "key_text":
                if byte == _QUOTE:
                    self._state = "colon"
                elif byte == _BACKSLASH or len(self._key) >= 16:
                    raise RunError(400, 'invalid body: only the keys "post" and "patch" are allowed')
                else:
                    self._key.append(byte)
            elif byte in _WHITESPACE:
                continue
            elif (self._state, byte) in _MOVES:
                self._state = _MOVES[self._state, byte]
                if self._state == "value":
                    self._open_section()
                elif self._state == "array":
                    return chunk[i:]
            elif self._state == "value":
                raise RunError(400, f"invalid body: {self._section} must be an array")
            else:
                raise RunError(400, f"invalid JSON in body: unexpected {chr(byte)!r}; expected {_SHAPE}")
        return b""

    def _open_section(self) -> None:
        section = self._key.decode("utf-8", "replace")
        self._key.clear()
        if section not in ("post", "patch"):
            raise RunError(400, f'invalid body: unknown key {section!r}; only "post" and "patch" are allowed')
        if section in self._seen:
            raise RunError(400, f"invalid body: duplicate key {section!r}")
        self._seen.add(section)
        self._section = section
        s = self._settings
        if section == "post":
            self._splitter = splitter(s.max_run_bytes, s.max_runs_per_batch, s.max_depth, nested=True)
        else:
            self._splitter = splitter(
                s.max_run_bytes,
                s.max_runs_per_batch,
                s.max_depth,
                required=(),
                new_id=None,
                noun="patch",
                nested=True,
            )

    async def _take(self, runs: list[Run]) -> None:
        for run in runs:
            self._count += 1
            if self._count > self._settings.max_runs_per_batch:
                limit = self._settings.max_runs_per_batch
                raise RunError(413, f"batch has more than {limit} runs and patches", run.index)
            if self._section == "post":
                await self._ingest.add_run(run)
            elif run.id is None:
                raise RunError(400, f"patch {run.index}: id is required", run.index)
            else:
                await self._ingest.add_patch(run.id, run.body, run.index)
