"""POST /runs/multipart: LangSmith's multipart/form-data ingestion, parsed as it streams in.

The parts of one run come together: ``post.<id>`` (the run without its payloads), then
``post.<id>.inputs``, ``.outputs``, ... (one payload field each), likewise ``patch.<id>...``,
``attachment.<id>.<name>`` (a file), and ``feedback.<id>`` (a feedback, checked by
feedback/schema.py, written in the body's transaction). A run is complete when a part of another
run (or the end) arrives; its parts are then joined into one JSON object and checked like any run
of a batch. Only the run being received is held in memory, bounded by the run size limit.
"""

from __future__ import annotations

import re
import uuid

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from handler.base.errors import RunError
from handler.feedback.schema import parse as parse_feedback
from handler.runs.ingest import BatchIngest
from handler.runs.jsonbytes import check_json_value
from handler.runs.schema import REQUIRED, UUID_TEXT
from handler.runs.splitter import parse_run
from handler.server.config import Settings

PAYLOAD_FIELDS = ("inputs", "outputs", "events", "error", "extra", "serialized")
_RUN_PART = re.compile(rf"(post|patch)\.({UUID_TEXT.pattern})(?:\.({'|'.join(PAYLOAD_FIELDS)}))?")
_ATTACHMENT_PART = re.compile(rf"attachment\.({UUID_TEXT.pattern})\.([^\x00-\x1f/\\]{{1,255}})")
_FEEDBACK_PART = re.compile(rf"feedback\.({UUID_TEXT.pattern})")
_NAME = re.compile(rb'(?:^|;)\s*name="([^"]*)"')
_CONTENT_TYPE = re.compile(r"[\x21-\x7e]+/[\x21-\x7e]+")


def boundary_of(content_type: str) -> bytes:
    """The boundary of a multipart/form-data Content-Type header; raises 415 or 400."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise RunError(415, "Content-Type must be multipart/form-data")
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise RunError(400, "multipart/form-data needs a boundary of 1 to 200 characters")
    return boundary


class _Part:
    def __init__(self, index: int) -> None:
        self.index = index
        self.headers: dict[bytes, bytes] = {}
        self.data = bytearray()


class MultipartReader:
    """Feed it the body's chunks; it hands runs, patches and attachments to a BatchIngest."""

    def __init__(self, boundary: bytes, ingest: BatchIngest, settings: Settings) -> None:
        self._ingest = ingest
        self._max_part_bytes = settings.max_run_bytes
        self._max_feedback_bytes = settings.max_feedback_bytes
        self._max_depth = settings.max_depth
        self._max_runs = settings.max_runs_per_batch
        self._runs = 0  # runs and patches begun
        self._parts: list[_Part] = []  # completed by the last chunk, in order
        self._part: _Part | None = None
        self._header = [bytearray(), bytearray()]
        self._count = 0
        self._run: tuple[str, uuid.UUID] | None = None  # ("post" or "patch", id) being gathered
        self._main: _Part | None = None
        self._fields: list[tuple[str, _Part]] = []
        self._gathered = 0
        self._ended = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": lambda d, s, e: self._header[0].extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._header[1].extend(d[s:e]),
                "on_header_end": self._header_end,
                "on_part_data": self._data,
                "on_part_end": lambda: self._parts.append(self._part),
                "on_end": self._end,
            },
        )

    @property
    def buffered(self) -> int:
        """Bytes of the parts held: the run being gathered and the part being received."""
        parts = {id(p): p for p in (self._part, self._main, *self._parts, *(p for _, p in self._fields)) if p}
        return sum(len(p.data) for p in parts.values())

    async def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as e:
            raise RunError(400, f"invalid multipart body: {e}") from None
        parts, self._parts = self._parts, []
        for part in parts:
            await self._take(part)

    async def close(self) -> None:
        if not self._ended:
            raise RunError(400, "invalid multipart body: it ends before its closing boundary")
        await self._flush_run()

    # -- parser callbacks (synchronous: they only collect) ---------------------------------------

    def _begin(self) -> None:
        self._part = _Part(self._count)
        self._count += 1

    def _header_end(self) -> None:
        field, value = (bytes(h).strip() for h in self._header)
        self._part.headers[field.lower()] = value
        for h in self._header:
            h.clear()

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        part.data += data[start:end]
        if len(part.data) > self._max_part_bytes:  # the whole run is checked once the part is in
            raise self._too_large(part)

    def _too_large(self, part: _Part) -> RunError:
        return RunError(
            413,
            f"part {part.index}: a run with its parts is larger than {self._max_part_bytes} bytes",
            part.index,
        )

    def _end(self) -> None:
        self._ended = True

    # -- runs ------------------------------------------------------------------------------------

    async def _take(self, part: _Part) -> None:
        disposition = part.headers.get(b"content-disposition", b"")
        name_match = _NAME.search(disposition)
        name = name_match.group(1).decode("utf-8", "replace") if name_match else ""
        if match := _RUN_PART.fullmatch(name):
            kind, run_id, field = match.group(1), uuid.UUID(match.group(2)), match.group(3)
            if self._run != (kind, run_id):
                await self._flush_run()
                self._run = (kind, run_id)
                self._runs += 1
                if self._runs > self._max_runs:
                    raise RunError(
                        413, f"part {part.index}: more than {self._max_runs} runs and patches", part.index
                    )
            if field is None:
                if self._main is not None:
                    raise RunError(400, f"part {part.index}: {name} is repeated", part.index)
                self._main = part
            else:
                check_json_value(bytes(part.data), f"part {part.index} ({name})", part.index)
                self._fields.append((field, part))
            self._gathered += len(part.data)
            if self._gathered > self._max_part_bytes:
                raise self._too_large(part)
        elif match := _ATTACHMENT_PART.fullmatch(name):
            await self._flush_run()
            content_type = part.headers.get(b"content-type", b"application/octet-stream").decode("latin-1")
            content_type = content_type.split(";")[0].strip()
            if not _CONTENT_TYPE.fullmatch(content_type):
                content_type = "application/octet-stream"
            await self._ingest.add_attachment(
                uuid.UUID(match.group(1)), match.group(2), content_type, bytes(part.data)
            )
        elif match := _FEEDBACK_PART.fullmatch(name):
            await self._flush_run()
            await self._take_feedback(part, name, uuid.UUID(match.group(1)))
        else:
            raise RunError(
                400,
                f"part {part.index}: unknown part name {name!r}; expected post.<id>[.<field>], "
                f"patch.<id>[.<field>], attachment.<id>.<name> or feedback.<id>, with <field> one of "
                f"{', '.join(PAYLOAD_FIELDS)}",
                part.index,
            )

    async def _take_feedback(self, part: _Part, name: str, feedback_id: uuid.UUID) -> None:
        """A feedback part, checked as POST /feedback checks its body."""
        self._runs += 1  # counts towards MAX_RUNS_PER_BATCH with the runs and patches
        if self._runs > self._max_runs:
            raise RunError(
                413, f"part {part.index}: more than {self._max_runs} runs, patches and feedback", part.index
            )
        label = f"part {part.index} ({name})"
        if len(part.data) > self._max_feedback_bytes:
            limit = self._max_feedback_bytes
            raise RunError(413, f"{label}: a feedback is at most {limit} bytes", part.index)
        row = parse_feedback(bytes(part.data), label, self._max_depth, part.index, feedback_id)
        self._ingest.add_feedback(row, len(part.data), part.index)

    async def _flush_run(self) -> None:
        """The parts of one run are all in: join them and hand the run on."""
        if self._run is None:
            return
        (kind, run_id), main, fields = self._run, self._main, self._fields
        self._run, self._main, self._fields, self._gathered = None, None, [], 0
        index = (main or fields[0][1]).index
        label = f"{kind}.{run_id}"
        if main is None:
            if kind == "post":
                raise RunError(400, f"part {index}: {label}.{fields[0][0]} came without {label}", index)
            main = _Part(index)
            main.data += b"{}"
        check_json_value(bytes(main.data), f"part {main.index} ({label})", main.index)
        body = _joined(bytes(main.data), [(field, bytes(part.data)) for field, part in fields])
        post = kind == "post"
        # A post without an id gets the part's; a patch's id is only checked.
        new_id = (lambda: run_id) if post else None
        run = parse_run(body, self._max_part_bytes, self._max_depth, label, REQUIRED if post else (), new_id)
        if run.id not in (None, run_id):
            raise RunError(400, f"part {index}: {label} has id {run.id}", index)
        if post:
            run.index = index
            await self._ingest.add_run(run)
        else:
            await self._ingest.add_patch(run_id, run.body, index)


def _joined(main: bytes, fields: list[tuple[str, bytes]]) -> bytes:
    """The main part's object with each payload part added as a field. Each payload part was
    checked to be one JSON value; the result is checked as a whole (a field given twice is a
    duplicate key there)."""
    if not fields:
        return main
    head = main.rstrip()
    if not head.endswith(b"}"):
        return main  # not an object: parse_run says so
    head = head[:-1].rstrip()
    members = b",".join(b'"' + field.encode() + b'":' + value for field, value in fields)
    separator = b"" if head.endswith(b"{") else b","
    return head + separator + members + b"}"
