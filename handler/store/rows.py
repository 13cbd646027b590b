"""A run's row as PostgreSQL keeps it, and how rows travel to it: one array per column.

db.py writes and reads them; ingest.py builds them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from handler.query.extract import QUERY_FIELDS_VERSION, fields_version, query_columns
from handler.runs.schema import Run
from handler.store.objects import Location


class RunRow(NamedTuple):
    """A run's row: where its object is, and the small fields that list a trace without it."""

    id: uuid.UUID
    trace_id: uuid.UUID
    name: str
    object_key: str
    size_bytes: int
    run_type: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    parent_run_id: uuid.UUID | None = None
    dotted_order: str | None = None
    session_name: str | None = None
    session_id: uuid.UUID | None = None
    reference_example_id: uuid.UUID | None = None
    status: str = "pending"
    posted: bool = True  # False: only patches have come, the run's post is still to come
    object_offset: int | None = None  # where in object_key the run starts; None: all of it
    error: str | None = None  # the start of the run's error text (stream.ERROR_PREVIEW_CHARS)
    # What filters read (schema/0007, handler/query/extract.py), as extract.Tap.columns gives them.
    tags: str = "[]"  # JSON
    metadata: str = "{}"  # JSON
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    prompt_cost: str | None = None  # decimal text
    completion_cost: str | None = None
    total_cost: str | None = None
    search_text: str | None = None
    inputs_kv: str = "{}"  # JSON (schema/0010)
    outputs_kv: str = "{}"
    query_fields: int | None = QUERY_FIELDS_VERSION

    @classmethod
    def of(cls, run: Run, location: Location, posted: bool = True) -> RunRow:
        return cls(
            run.id,
            run.trace_id,
            run.name,
            location.key,
            run.size,
            run.run_type,
            run.start_time,
            run.end_time,
            run.parent_run_id,
            run.dotted_order,
            run.session_name,
            run.session_id,
            run.reference_example_id,
            run.status,
            posted,
            location.offset,
            run.error,
            *query_columns(run),
            fields_version(),
        )

    @property
    def location(self) -> Location:
        return Location(self.object_key, self.object_offset)


class StoredRun(NamedTuple):
    """A run as the database has it: where its bytes are, how many, and whether it was posted."""

    location: Location
    size: int
    posted: bool

    @classmethod
    def of(cls, row: RunRow) -> StoredRun:
        return cls(row.location, row.size_bytes, row.posted)


class WrittenMeanwhile(Exception):
    """Runs this request writes as new whose ids another request stored meanwhile, and which can
    be merged rather than refused: ``posts``, posts of runs that only have patches stored (the
    patches win); ``patches``, patches stored alone here of runs stored meanwhile (posted, or
    patched alone too), to be applied to them. Each maps run id -> what is stored. ``gone``: runs
    this request patches that were deleted meanwhile (a retention sweep), whose patches are then
    stored as a patch of an unknown run is: alone, before its post."""

    def __init__(
        self,
        posts: dict[uuid.UUID, StoredRun],
        patches: dict[uuid.UUID, StoredRun],
        gone: frozenset[uuid.UUID] = frozenset(),
    ) -> None:
        count = len(posts) + len(patches) + len(gone)
        super().__init__(f"{count} runs were written or deleted by another request meanwhile")
        self.posts = posts
        self.patches = patches
        self.gone = gone


class Replacement(NamedTuple):
    """A patched run: its new row, written only if the run still points at ``old`` (so two
    patches racing on one run cannot both win)."""

    row: RunRow
    old: Location


class Attachment(NamedTuple):
    run_id: uuid.UUID
    name: str
    object_key: str
    content_type: str
    size_bytes: int


_TYPES = {
    "id": "uuid",
    "trace_id": "uuid",
    "size_bytes": "bigint",
    "start_time": "timestamptz",
    "end_time": "timestamptz",
    "parent_run_id": "uuid",
    "session_id": "uuid",
    "reference_example_id": "uuid",
    "posted": "boolean",
    "object_offset": "bigint",
    "tags": "jsonb",
    "metadata": "jsonb",
    "prompt_tokens": "bigint",
    "completion_tokens": "bigint",
    "total_tokens": "bigint",
    "prompt_cost": "numeric",
    "completion_cost": "numeric",
    "total_cost": "numeric",
    "inputs_kv": "jsonb",
    "outputs_kv": "jsonb",
    "query_fields": "smallint",
}
COLUMNS = ", ".join(RunRow._fields)
ARRAYS = ", ".join(f"%s::{_TYPES.get(name, 'text')}[]" for name in RunRow._fields)
# One statement per kind of change, however many rows: the rows travel as one array per column
# and unnest() turns them back into rows.
INSERT = f"INSERT INTO runs (tenant, {COLUMNS}) SELECT %s, * FROM unnest({ARRAYS})"
UPDATE = f"""
UPDATE runs AS r SET {", ".join(f"{name} = u.{name}" for name in RunRow._fields[1:])}
FROM unnest(%s::text[], %s::bigint[], {ARRAYS}) AS u(old_key, old_offset, {COLUMNS})
WHERE r.tenant = %s AND r.id = u.id AND r.object_key = u.old_key
    AND r.object_offset IS NOT DISTINCT FROM u.old_offset
"""
INSERT_ATTACHMENTS = """
INSERT INTO run_attachments (tenant, run_id, name, object_key, content_type, size_bytes)
SELECT %s, * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::bigint[])
"""
SUMMARY_COLUMNS = (
    "id, trace_id, name, run_type, start_time, end_time, parent_run_id, dotted_order, session_name,"
    " session_id, reference_example_id, status, size_bytes"
)


STORED_COLUMNS = "object_key, object_offset, size_bytes, posted"


def stored_run(row: Sequence) -> StoredRun:
    key, offset, size, posted = row
    return StoredRun(Location(key, offset), size, posted)


def columns(rows: Sequence[tuple]) -> list[list]:
    """Rows to one list per column, ids and datetimes as the text PostgreSQL casts from."""
    return [
        [v if v is None or isinstance(v, str | int) else str(v) for v in col]
        for col in zip(*rows, strict=True)
    ]
