"""The fields a filter may name: each one's SQL expression (over a row alias), its kind, and how a
value given for it is checked and converted. One table for the SQL compiler and the Python
evaluator, so the two cannot disagree on what a field is."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from handler.base.errors import RunError
from handler.runs.schema import RUN_TYPES, UUID_TEXT

STATUSES = ("success", "error", "pending")
_DURATION = re.compile(r"\s*(-?[0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


@dataclass(frozen=True)
class Spec:
    sql: str  # with {r} for the row alias
    kind: str  # uuid, text, run_type, status, bool, time, seconds, int, number
    nullable: bool = True


FIELDS = {
    "id": Spec("{r}.id", "uuid", False),
    "trace_id": Spec("{r}.trace_id", "uuid", False),
    "parent_run_id": Spec("{r}.parent_run_id", "uuid"),
    "reference_example_id": Spec("{r}.reference_example_id", "uuid"),
    "name": Spec("{r}.name", "text"),
    "run_type": Spec("{r}.run_type", "run_type"),
    "status": Spec("{r}.status", "status", False),
    "error": Spec("{r}.error", "text"),
    "is_root": Spec("({r}.parent_run_id IS NULL)", "bool", False),
    "start_time": Spec("{r}.start_time", "time"),
    "end_time": Spec("{r}.end_time", "time"),
    "latency": Spec("extract(epoch FROM {r}.end_time - {r}.start_time)", "seconds"),
    "prompt_tokens": Spec("{r}.prompt_tokens", "int"),
    "completion_tokens": Spec("{r}.completion_tokens", "int"),
    "total_tokens": Spec("{r}.total_tokens", "int"),
    "prompt_cost": Spec("{r}.prompt_cost", "number"),
    "completion_cost": Spec("{r}.completion_cost", "number"),
    "total_cost": Spec("{r}.total_cost", "number"),
}
# Key/value fields: the jsonb column of (key, text) pairs each one reads, and which side.
PAIRS = {
    "metadata_key": ("metadata", "key"),
    "metadata_value": ("metadata", "value"),
    "input_key": ("inputs_kv", "key"),
    "input_value": ("inputs_kv", "value"),
    "output_key": ("outputs_kv", "key"),
    "output_value": ("outputs_kv", "value"),
}
# Fields with comparators of their own (compile.py).
SPECIAL = ("tags", "metadata", *PAIRS, "feedback_key", "feedback_score", "feedback_value")
NOT_SERVED = {
    "first_token_time": "first_token_time is not kept in a column",
    "thread_id": "threads are not kept by this server",
}
ORDERED_KINDS = frozenset({"time", "seconds", "int", "number"})


def field_error(name: str, reason: str, pos: int) -> RunError:
    return RunError(400, f"filter: {name} {reason} (at position {pos})")


def unknown_field(name: str, pos: int) -> RunError:
    if name in NOT_SERVED:
        return RunError(
            400, f"filter: the field {name} is not supported: {NOT_SERVED[name]} (at position {pos})"
        )
    known = ", ".join(sorted([*FIELDS, *SPECIAL]))
    return RunError(400, f"filter: unknown field {name!r} at position {pos}; fields are {known}")


def value_for(name: str, kind: str, value: object, pos: int) -> object:
    """A literal converted to what the field's column compares with; RunError 400 if it cannot be."""
    if kind == "uuid":
        if isinstance(value, str) and UUID_TEXT.fullmatch(value):
            return str(uuid.UUID(value))
        raise field_error(name, "takes a UUID string", pos)
    if kind == "text":
        if isinstance(value, str):
            return value
        raise field_error(name, "takes a string", pos)
    if kind == "run_type":
        if isinstance(value, str) and value in RUN_TYPES:
            return value
        raise field_error(name, f"is one of {', '.join(sorted(RUN_TYPES))}", pos)
    if kind == "status":
        if isinstance(value, str) and value.lower() in STATUSES:
            return value.lower()
        raise field_error(name, f"is one of {', '.join(STATUSES)}", pos)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise field_error(name, "takes true or false", pos)
    if kind == "time":
        return moment(name, value, pos)
    if kind == "seconds":
        return seconds(name, value, pos)
    if kind in ("int", "number"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise field_error(name, "takes a number", pos)
        return Decimal(str(value))
    raise AssertionError(kind)


def moment(name: str, value: object, pos: int) -> datetime:
    try:
        if not isinstance(value, str):
            raise ValueError
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise field_error(name, "takes an ISO 8601 date and time", pos) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def seconds(name: str, value: object, pos: int) -> Decimal:
    """A duration in seconds: a number, or a string such as "5s", "250ms", "2m", "1.5h"."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Decimal(str(value))
    found = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        raise field_error(name, 'takes seconds: a number, or a string such as "5s", "250ms", "2m"', pos)
    return Decimal(found.group(1)) * Decimal(str(_UNITS[found.group(2)]))
