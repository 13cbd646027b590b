"""A run's field rules: for each top-level field, its type, limits, null handling and the column it
feeds. Every route that takes runs checks them here: the streamed splitter (splitter.py), multipart
parts and PATCH bodies (through ``parse_run``), and later spans and feedback.

| field | type | limits | null | column |
|---|---|---|---|---|
| ``id`` | UUID string | | refused | ``id`` (one is made when absent) |
| ``trace_id`` | UUID string | required | refused (required) | ``trace_id`` |
| ``name`` | string | 1,024 characters, no NUL; required | refused (required) | ``name`` |
| ``run_type`` | one of RUN_TYPES | | as absent | ``run_type`` |
| ``start_time``, ``end_time`` | ISO 8601 string, or epoch ms | before year 10000 | as absent | same, UTC |
| ``parent_run_id``, ``session_id``, ``reference_example_id`` | UUID string | | as absent | same names |
| ``session_name`` | string | 1,024 characters, no NUL | as absent | the project (``session_id``) |
| ``dotted_order`` | string | 2,048 bytes of UTF-8, no NUL | as absent | ``dotted_order`` |
| ``error`` | string | | as absent | ``status`` = error, ``error`` (its first 2,000 characters) |
| ``inputs``, ``outputs``, ``extra`` | object | | as absent | query columns (below) |
| ``metadata``, ``serialized`` | object | | as absent | none |
| ``tags`` | array of strings | | as absent | ``tags`` (the first 100, 256 characters each) |
| ``events`` | array of objects | | as absent | none |

The query columns (schema/0007: ``tags``, ``metadata``, token counts and costs, ``search_text``)
come from paths inside ``tags``, ``extra``, ``outputs`` and ``inputs`` that handler/query/extract.py
names (PATHS), gathered from the parser's events as the run is parsed (events.py hands them over).

A field without a column is kept only in the run's bytes; any other field is kept there
unchecked. The bytes themselves (grammar, depth, duplicate keys, surrogates, sizes) are the
splitter's to check.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from handler.query import extract
from handler.query.extract import Tap

MAX_NAME_CHARS = 1024
UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Bytes, not characters: PostgreSQL's btree index on (tenant, trace_id, dotted_order, id) takes
# entries of at most 2704 bytes, and a longer one fails the whole batch's INSERT.
MAX_DOTTED_ORDER_BYTES = 2048
RUN_TYPES = frozenset({"tool", "chain", "llm", "retriever", "embedding", "prompt", "parser"})
OBJECT_FIELDS = frozenset({"inputs", "outputs", "metadata", "extra", "serialized"})
ARRAY_FIELDS = frozenset({"events", "tags"})
# The first event each item of an array field may have, and the error when another comes.
ITEM_EVENTS = {"tags": frozenset({"string"}), "events": frozenset({"start_map"})}
ITEM_ERRORS = {"tags": "tags must be an array of strings", "events": "events must be an array of objects"}
# Optional scalar fields kept in PostgreSQL columns, so runs can be listed without their payloads.
_UUID_FIELDS = frozenset({"parent_run_id", "session_id", "reference_example_id"})
_TIME_FIELDS = frozenset({"start_time", "end_time"})
_TEXT_FIELDS = {"session_name": MAX_NAME_CHARS, "dotted_order": MAX_DOTTED_ORDER_BYTES}
REQUIRED = ("trace_id", "name")
# How much of a run's error text its row keeps (the whole text stays in the run's bytes).
ERROR_PREVIEW_CHARS = 2000
# A time given as a number is milliseconds since the Unix epoch (what the JavaScript SDK sends:
# Date.now()), from 0 up to, not including, the year 10000 (datetime's range).
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EPOCH_MILLIS_LIMIT = 253_402_300_800_000  # 10000-01-01T00:00:00Z


class FieldError(ValueError):
    """A field breaks its rule; the message says how, and the caller says which run."""


@dataclass(slots=True)
class Run:
    """One run: its fields as parsed, and its bytes once complete."""

    index: int
    id: uuid.UUID | None = None
    trace_id: uuid.UUID | None = None
    name: str | None = None
    run_type: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    parent_run_id: uuid.UUID | None = None
    dotted_order: str | None = None
    session_name: str | None = None
    session_id: uuid.UUID | None = None
    reference_example_id: uuid.UUID | None = None
    has_error: bool = False
    error: str | None = None  # its first ERROR_PREVIEW_CHARS characters, for listings
    # The splitter put ``{"id":"<id>",`` before the bytes the client sent (the run came without an
    # id); without it, ``head`` + parts + ``body`` are exactly the client's bytes.
    id_added: bool = False
    # What GET will return: ``body``; or, for a run handed out in parts (RunPart) while it arrived,
    # ``head`` + the parts + ``body``.
    body: bytes = b""
    head: bytes = b""
    parts: int = 0  # RunParts handed out
    size: int = 0  # bytes in all
    # What the query columns take from its nested fields (handler/query/extract.py), once one of
    # the fields it reads has come.
    tap: Tap | None = None

    @property
    def status(self) -> str:
        if self.has_error:
            return "error"
        return "success" if self.end_time is not None else "pending"


def check_field(run: Run, key: str, event: str, value: object, required: tuple[str, ...] = REQUIRED) -> None:
    """Check a top-level field from its first parser event (ijson's ``event``, ``value``) and set
    the run's column for it. A container's content is not seen here: only that it is one."""
    if event == "null" and key != "id":  # null is the same as absent, for all but the id
        if key in required:
            raise FieldError(f"{key} is required")
        return
    if key == "id" or key == "trace_id":
        if event != "string" or not UUID_TEXT.fullmatch(value):
            raise FieldError(f"{key} must be a UUID string")
        setattr(run, key, uuid.UUID(value))
    elif key == "name":
        if event != "string":
            raise FieldError("name must be a string")
        run.name = _text(key, value, MAX_NAME_CHARS)
    elif key in OBJECT_FIELDS:
        if event != "start_map":
            raise FieldError(f"{key} must be an object")
    elif key in ARRAY_FIELDS:
        if event != "start_array":
            raise FieldError(f"{key} must be an array")
    elif key == "error":
        if event != "string":
            raise FieldError("error must be a string")
        run.has_error = True
        # A lone surrogate or a NUL cannot be stored as text (the run's bytes keep them)
        run.error = value[:ERROR_PREVIEW_CHARS].encode("utf-8", "replace").decode().replace("\x00", "")
    elif key in _UUID_FIELDS:
        if event != "string" or not UUID_TEXT.fullmatch(value):
            raise FieldError(f"{key} must be a UUID string")
        setattr(run, key, uuid.UUID(value))
    elif key in _TIME_FIELDS:
        setattr(run, key, _time(key, event, value))
    elif key in _TEXT_FIELDS:
        if event != "string":
            raise FieldError(f"{key} must be a string")
        setattr(run, key, _text(key, value, _TEXT_FIELDS[key]))
    elif key == "run_type":
        if event != "string" or value not in RUN_TYPES:
            raise FieldError(f"run_type must be one of {', '.join(sorted(RUN_TYPES))}")
        run.run_type = value


def check_required(run: Run, required: tuple[str, ...] = REQUIRED) -> None:
    """Once the run has ended: every required field came."""
    for field in required:
        if getattr(run, field) is None:
            raise FieldError(f"{field} is required")


def event_of(value: object) -> str:
    """The parser event a decoded JSON value starts with, for runs built as values rather than
    parsed from bytes (spans): the same rules then apply through ``check_field``."""
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, dict):
        return "start_map"
    if isinstance(value, list | tuple):
        return "start_array"
    raise FieldError(f"a {type(value).__name__} is no JSON value")


def run_of(fields: dict, index: int, required: tuple[str, ...] = REQUIRED) -> Run:
    """A run whose top-level fields are given as decoded values (JSON written by the caller): each
    checked by its rule, its columns set, and its query columns gathered (``Tap.values``) as the
    splitter gathers them from its events. Its bytes are the caller's (``body``, ``size``)."""
    run = Run(index)
    for key, value in fields.items():
        event = event_of(value)
        check_field(run, key, event, value, required)
        if key in ITEM_EVENTS and event == "start_array":
            if any(event_of(item) not in ITEM_EVENTS[key] for item in value):
                raise FieldError(ITEM_ERRORS[key])
        if key in extract.TAPPED and event in ("start_map", "start_array"):
            run.tap = run.tap or Tap()
            run.tap.values(key, value)
    check_required(run, required)
    return run


def _text(key: str, value: str, limit: int) -> str:
    if "\x00" in value:
        raise FieldError(f"{key} must not contain NUL characters")
    if key == "dotted_order":
        # (a character is at most 4 bytes: a short one needs no encoding to be judged)
        if len(value) > limit // 4 and len(value.encode("utf-8", "surrogatepass")) > limit:
            raise FieldError(f"{key} is longer than {limit} bytes of UTF-8")
    elif len(value) > limit:
        raise FieldError(f"{key} is longer than {limit} characters")
    return value


def _time(key: str, event: str, value: object) -> datetime:
    if event == "number":
        try:
            return epoch_millis(value)
        except ValueError as e:
            raise FieldError(f"{key} {e}") from None
    try:
        if event != "string":
            raise ValueError
        moment = datetime.fromisoformat(value)
        # In UTC: PostgreSQL takes offsets up to 15:59 only, RFC 3339 up to 23:59.
        return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise FieldError(
            f"{key} must be an ISO 8601 date-time string or a number of milliseconds since the Unix epoch"
        ) from None


def epoch_millis(value: int | float | Decimal) -> datetime:
    """The UTC instant ``value`` milliseconds after the Unix epoch, to the microsecond (a fraction
    below that is rounded half to even). ijson gives a JSON number as an int or a Decimal, so
    ``1796174206269.5`` is exact and ``1e400`` is a Decimal, not an infinity. Raises ValueError,
    with the reason, for a number that is negative, not finite or not before the year 10000."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError("must be a number")
    number = Decimal(value) if isinstance(value, float) else value
    if isinstance(number, Decimal) and not number.is_finite():
        raise ValueError("must be a finite number of milliseconds")
    if number < 0:
        raise ValueError("must not be a negative number of milliseconds")
    too_late = f"must be less than {EPOCH_MILLIS_LIMIT} milliseconds (the year 10000)"
    if number >= EPOCH_MILLIS_LIMIT:  # checked before scaling: 1e400 is no integer to build
        raise ValueError(too_late)
    micros = number * 1000
    if isinstance(micros, Decimal):
        micros = int(micros.to_integral_value(ROUND_HALF_EVEN))
    if micros >= EPOCH_MILLIS_LIMIT * 1000:  # rounded up to the limit
        raise ValueError(too_late)
    return _EPOCH + timedelta(microseconds=micros)
