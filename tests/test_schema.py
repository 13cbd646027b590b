"""A run's field rules (handler/runs/schema.py), called directly as every route calls them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from handler.runs.schema import (
    ERROR_PREVIEW_CHARS,
    MAX_NAME_CHARS,
    FieldError,
    Run,
    check_field,
    check_required,
)

ID = "0b9f3c0e-8f4a-4c4e-9d3a-2b1c0e9f8a7d"


def test_columns_are_set_from_the_first_event():
    run = Run(0)
    check_field(run, "id", "string", ID)
    check_field(run, "trace_id", "string", ID.upper())
    check_field(run, "name", "string", "step")
    check_field(run, "run_type", "string", "llm")
    check_field(run, "start_time", "string", "2026-12-04T10:00:00+02:00")
    check_field(run, "end_time", "number", 1796174206269)
    check_field(run, "dotted_order", "string", "20261204T080000000000Z" + ID)
    check_field(run, "error", "string", "x" * (ERROR_PREVIEW_CHARS + 5) + "\x00")
    assert run.id == run.trace_id == uuid.UUID(ID)
    assert (run.name, run.run_type) == ("step", "llm")
    assert run.start_time == datetime(2026, 12, 4, 8, tzinfo=UTC)
    assert run.end_time.year == 2026 and run.end_time.tzinfo is UTC
    assert run.status == "error" and run.error == "x" * ERROR_PREVIEW_CHARS


@pytest.mark.parametrize(
    ("key", "event", "value", "message"),
    [
        ("id", "null", None, "id must be a UUID string"),
        ("trace_id", "null", None, "trace_id is required"),
        ("trace_id", "string", "not-a-uuid", "trace_id must be a UUID string"),
        ("name", "number", 3, "name must be a string"),
        ("name", "string", "n" * (MAX_NAME_CHARS + 1), f"name is longer than {MAX_NAME_CHARS} characters"),
        ("session_name", "string", "a\x00b", "session_name must not contain NUL characters"),
        ("inputs", "start_array", None, "inputs must be an object"),
        ("tags", "start_map", None, "tags must be an array"),
        ("run_type", "string", "agent", "run_type must be one of"),
        ("start_time", "string", "yesterday", "start_time must be an ISO 8601 date-time string"),
        ("end_time", "number", -1, "end_time must not be a negative number of milliseconds"),
        ("parent_run_id", "number", 1, "parent_run_id must be a UUID string"),
    ],
)
def test_a_broken_rule_names_the_field(key, event, value, message):
    with pytest.raises(FieldError, match=message.replace("(", r"\(")):
        check_field(Run(0), key, event, value)


def test_null_is_absent_except_for_the_id_and_required_fields():
    run = Run(0)
    for key in ("run_type", "start_time", "parent_run_id", "error", "inputs", "tags", "unknown"):
        check_field(run, key, "null", None)
    assert run == Run(0)
    check_field(run, "name", "null", None, required=("trace_id",))  # not required there


def test_required_fields_are_checked_when_the_run_ends():
    run = Run(0, trace_id=uuid.UUID(ID))
    with pytest.raises(FieldError, match="name is required"):
        check_required(run)
    run.name = "step"
    check_required(run)
    check_required(Run(0), required=())


def test_dotted_order_is_bounded_in_bytes_of_utf8():
    """PostgreSQL indexes dotted_order: its limit is 2048 bytes however few characters they make."""
    run = Run(0)
    check_field(run, "dotted_order", "string", "é" * 1024)  # 2048 bytes
    with pytest.raises(FieldError, match="dotted_order is longer than 2048 bytes of UTF-8"):
        check_field(run, "dotted_order", "string", "é" * 1024 + "x")
    with pytest.raises(FieldError, match="dotted_order is longer than 2048 bytes of UTF-8"):
        check_field(run, "dotted_order", "string", "\U0001f600" * 513)  # 513 characters, 2052 bytes
