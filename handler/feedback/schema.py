"""A feedback's field rules, for ``POST /feedback`` and the ``feedback.<id>`` parts of
``/runs/multipart`` alike (one function, ``parse``, checks both), and for ``PATCH /feedback/{id}``.

| field | type | null | column |
|---|---|---|---|
| ``id`` | UUID string (a multipart part's: its name's) | made when absent | ``id`` |
| ``run_id``, ``trace_id``, ``session_id`` | UUID string; one of the three required | as absent | same |
| ``comparative_experiment_id``, ``feedback_group_id`` | UUID string | as absent | same |
| ``key`` | string, 1 to 1,024 characters | refused (required) | ``key`` |
| ``score`` | number within ±1e100, or boolean (1 or 0) | as absent | ``score`` (double) |
| ``value`` | string, number, boolean or object | as absent | ``value`` (jsonb) |
| ``comment`` | string | as absent | ``comment`` |
| ``correction`` | string or object | as absent | ``correction`` (jsonb) |
| ``feedback_source`` | object; its ``type`` a string | as absent | jsonb |
| ``feedback_config``, ``extra`` | object | as absent | jsonb |
| ``error`` | boolean | as absent | ``error`` |
| ``created_at``, ``modified_at``, ``start_time`` | ISO 8601 string or epoch ms | as absent | timestamptz |
| ``extend_trace_retention``, ``_skip_trace_upgrade`` | boolean | as absent | none |
| ``address`` | string | as absent | none |

``created_at`` defaults to now, ``modified_at`` to ``created_at``. A feedback given a ``trace_id``
alone is the trace's root run's (``run_id`` = ``trace_id``), as the SDKs do. Any other field is
ignored, not refused: a newer SDK's field (or the JS SDK's ``feedbackConfig``) must not fail a
multipart body and the runs in it. The JSON itself is held to the rules of a run's bytes: UTF-8,
no lone surrogate, no NUL in a string (PostgreSQL's text and jsonb cannot hold one), no duplicate
key, finite numbers, nesting at most ``MAX_DEPTH``.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime
from typing import NamedTuple

from handler.base.errors import RunError
from handler.runs.jsonbytes import has_lone_surrogate
from handler.runs.schema import UUID_TEXT, epoch_millis

MAX_KEY_CHARS = 1024
# A score's magnitude: the sums behind feedback_stats (avg, stdev) then never overflow a double.
MAX_SCORE = 1e100
_UUIDS = ("run_id", "trace_id", "session_id", "comparative_experiment_id", "feedback_group_id")
_TIMES = ("created_at", "modified_at", "start_time")
_OBJECTS = ("feedback_source", "feedback_config", "extra")
_FLAGS = ("error", "extend_trace_retention", "_skip_trace_upgrade")
# What PATCH /feedback/{id} may change (LangSmith's FeedbackUpdate); null clears it.
UPDATABLE = ("score", "value", "correction", "comment", "feedback_config")


class FieldError(ValueError):
    """A field breaks its rule; the message says how, the caller says which feedback."""


class FeedbackRow(NamedTuple):
    """A feedback as its row holds it; the jsonb fields as JSON text."""

    id: uuid.UUID
    run_id: uuid.UUID | None
    trace_id: uuid.UUID | None
    session_id: uuid.UUID | None
    key: str
    score: float | None
    value: str | None
    comment: str | None
    correction: str | None
    feedback_source: str | None
    feedback_config: str | None
    extra: str | None
    error: bool | None
    comparative_experiment_id: uuid.UUID | None
    feedback_group_id: uuid.UUID | None
    start_time: datetime | None
    created_at: datetime
    modified_at: datetime
    # Not a column: the trace should be kept longer (the retention's to act on).
    extend_trace_retention: bool = True


COLUMNS = FeedbackRow._fields[:-1]


def parse(
    data: bytes, label: str, max_depth: int, index: int | None = None, part_id: uuid.UUID | None = None
) -> FeedbackRow:
    """One feedback, checked; RunError 400 naming ``label`` and the field otherwise. ``part_id``
    is the id in a multipart part's name, which the body's ``id`` (if any) must repeat."""
    try:
        body = load(data, max_depth)
        if not isinstance(body, dict):
            raise FieldError("must be a JSON object")
        return _row(body, part_id)
    except FieldError as e:
        raise RunError(400, f"{label}: {e}", index) from None


def parse_update(data: bytes, max_depth: int) -> dict[str, object]:
    """A PATCH body: the fields to set (column -> value as stored), each checked as on create."""
    try:
        body = load(data, max_depth)
        if not isinstance(body, dict):
            raise FieldError("must be a JSON object")
        unknown = sorted(k for k in body if k not in UPDATABLE)
        if unknown:
            raise FieldError(f"cannot change {', '.join(unknown)}; only {', '.join(UPDATABLE)}")
        checks = {
            "score": _score,
            "value": _value,
            "comment": _comment,
            "correction": _correction,
            "feedback_config": lambda v: _object("feedback_config", v),
        }
        return {k: checks[k](v) for k, v in body.items()}
    except FieldError as e:
        raise RunError(400, f"feedback update: {e}") from None


def load(data: bytes, max_depth: int) -> object:
    """Strict JSON: what a run's bytes may hold, and what PostgreSQL can store."""
    if has_lone_surrogate(data):
        raise FieldError("a \\u escape is an unpaired surrogate")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FieldError("invalid UTF-8") from None
    try:
        value = json.loads(text, object_pairs_hook=_object_of, parse_constant=_no_constant)
    except FieldError:
        raise
    except RecursionError:
        raise FieldError(f"nested deeper than {max_depth}") from None
    except ValueError as e:  # JSONDecodeError, or an integer of more digits than Python converts
        raise FieldError(f"invalid JSON: {e}") from None
    _check_tree(value, max_depth)
    return value


def _object_of(pairs: list[tuple[str, object]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        repeated = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise FieldError(f"duplicate key {repeated!r}")
    return result


def _no_constant(name: str) -> float:
    raise FieldError(f"invalid JSON: {name} is not a JSON number")


def _check_tree(value: object, max_depth: int) -> None:
    """No NUL in any string or key (text and jsonb refuse it), no number out of a double's range
    (``1e400``), nesting within ``max_depth``; an error names the top-level field it is in."""
    fields = value.items() if isinstance(value, dict) else [("the body", value)]
    for field, top in fields:
        if "\x00" in field:
            raise FieldError("a key contains a NUL character (\\u0000)")
        stack = [(top, 2 if isinstance(value, dict) else 1)]
        while stack:
            item, depth = stack.pop()
            if isinstance(item, str):
                if "\x00" in item:
                    raise FieldError(f"{field}: a string contains a NUL character (\\u0000)")
            elif isinstance(item, float):
                if not math.isfinite(item):
                    raise FieldError(f"{field}: a number is out of range")
            elif isinstance(item, dict | list):
                if depth > max_depth:
                    raise FieldError(f"{field}: nested deeper than {max_depth}")
                if isinstance(item, dict):
                    stack.extend((k, depth) for k in item)
                    stack.extend((v, depth + 1) for v in item.values())
                else:
                    stack.extend((v, depth + 1) for v in item)


def _row(body: dict, part_id: uuid.UUID | None) -> FeedbackRow:
    given = {k: v for k, v in body.items() if v is not None}
    feedback_id = _uuid("id", given["id"]) if "id" in given else None
    if part_id is not None and feedback_id not in (None, part_id):
        raise FieldError(f"id {feedback_id} is not the part's id {part_id}")
    ids = {name: _uuid(name, given[name]) if name in given else None for name in _UUIDS}
    ids["run_id"] = ids["run_id"] or ids["trace_id"]
    if ids["run_id"] is None and ids["session_id"] is None:
        raise FieldError("one of run_id, trace_id or session_id is required")
    key = given.get("key")
    if not isinstance(key, str) or not key:
        raise FieldError("key is required: a non-empty string")
    if len(key) > MAX_KEY_CHARS:
        raise FieldError(f"key is longer than {MAX_KEY_CHARS} characters")
    times = {name: _time(name, given[name]) if name in given else None for name in _TIMES}
    for name in _OBJECTS:
        _object(name, given.get(name))
    source = given.get("feedback_source") or {}
    if source.get("type") is not None and not isinstance(source["type"], str):
        raise FieldError("feedback_source.type must be a string")
    if source.get("metadata") is not None and not isinstance(source["metadata"], dict):
        raise FieldError("feedback_source.metadata must be an object")
    flags = {name: _flag(name, given.get(name)) for name in _FLAGS}
    if given.get("address") is not None and not isinstance(given["address"], str):
        raise FieldError("address must be a string")
    created = times["created_at"] or datetime.now(UTC)
    return FeedbackRow(
        id=feedback_id or part_id or uuid.uuid4(),
        run_id=ids["run_id"],
        trace_id=ids["trace_id"],
        session_id=ids["session_id"],
        key=key,
        score=_score(given.get("score")),
        value=_value(given.get("value")),
        comment=_comment(given.get("comment")),
        correction=_correction(given.get("correction")),
        feedback_source=_json(given.get("feedback_source")),
        feedback_config=_json(given.get("feedback_config")),
        extra=_json(given.get("extra")),
        error=flags["error"],
        comparative_experiment_id=ids["comparative_experiment_id"],
        feedback_group_id=ids["feedback_group_id"],
        start_time=times["start_time"],
        created_at=created,
        modified_at=times["modified_at"] or created,
        extend_trace_retention=flags["extend_trace_retention"] is not False,
    )


def _uuid(name: str, value: object) -> uuid.UUID:
    if not isinstance(value, str) or not UUID_TEXT.fullmatch(value):
        raise FieldError(f"{name} must be a UUID string")
    return uuid.UUID(value)


def _time(name: str, value: object) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return epoch_millis(value)
        except ValueError as e:
            raise FieldError(f"{name} {e}") from None
    try:
        if not isinstance(value, str):
            raise ValueError
        moment = datetime.fromisoformat(value)
        return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError):  # OverflowError: 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise FieldError(
            f"{name} must be an ISO 8601 date-time string or a number of milliseconds since the Unix epoch"
        ) from None


def _flag(name: str, value: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise FieldError(f"{name} must be a boolean")
    return value


def _object(name: str, value: object) -> str | None:
    if value is not None and not isinstance(value, dict):
        raise FieldError(f"{name} must be an object")
    return _json(value)


def _score(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if not isinstance(value, int | float):
        raise FieldError("score must be a number or a boolean")
    try:
        score = float(value)
    except OverflowError:
        score = math.inf
    if not -MAX_SCORE <= score <= MAX_SCORE:
        raise FieldError(f"score must be within -{MAX_SCORE:g} and {MAX_SCORE:g}")
    return score


def _value(value: object) -> str | None:
    if value is not None and not isinstance(value, str | int | float | dict):  # bool is an int
        raise FieldError("value must be a string, a number, a boolean or an object")
    return _json(value)


def _comment(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise FieldError("comment must be a string")
    return value


def _correction(value: object) -> str | None:
    if value is not None and not isinstance(value, str | dict):
        raise FieldError("correction must be a string or an object")
    return _json(value)


def _json(value: object) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)
