"""start_time and end_time: an ISO 8601 string or a JSON number of milliseconds since the Unix epoch
(what the JavaScript SDK sends), parsed into the UTC instant of the column; the run's bytes stay
as sent. In process, through the splitter every route uses."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from handler.base.errors import RunError
from handler.runs.schema import EPOCH_MILLIS_LIMIT
from handler.runs.splitter import parse_run
from tests.runs import split, split_all

TRACE = "944ce838-b5c5-4628-8f23-089fbda8b9e3"


def _run_with(field: str, raw: bytes) -> bytes:
    return b'{"trace_id": "' + TRACE.encode() + b'", "name": "t", "' + field.encode() + b'": ' + raw + b"}"


def _parsed(field: str, raw: bytes):
    return parse_run(_run_with(field, raw), 1 << 20, 64, "post.x")


ACCEPTED = {
    # strings
    '"2026-12-02T01:16:46.269Z"': datetime(2026, 12, 2, 1, 16, 46, 269000, UTC),
    '"2026-12-02T01:16:46.269123Z"': datetime(2026, 12, 2, 1, 16, 46, 269123, UTC),
    '"2026-12-02T03:16:46.269+02:00"': datetime(2026, 12, 2, 1, 16, 46, 269000, UTC),
    '"2026-12-01T20:16:46-05:00"': datetime(2026, 12, 2, 1, 16, 46, tzinfo=UTC),
    '"2026-12-02T01:16:46.269"': datetime(2026, 12, 2, 1, 16, 46, 269000, UTC),  # no zone: UTC
    '"2026-12-02T23:30:00-23:59"': datetime(2026, 12, 3, 23, 29, tzinfo=UTC),
    # numbers: milliseconds since 1970-01-01T00:00:00Z
    "1796174206269": datetime(2026, 12, 2, 1, 16, 46, 269000, UTC),
    "1796174206269.5": datetime(2026, 12, 2, 1, 16, 46, 269500, UTC),
    "1796174206269.123": datetime(2026, 12, 2, 1, 16, 46, 269123, UTC),
    "1796174206269.0004": datetime(2026, 12, 2, 1, 16, 46, 269000, UTC),  # below a microsecond
    "1.7961742062695e12": datetime(2026, 12, 2, 1, 16, 46, 269500, UTC),
    "0": datetime(1970, 1, 1, tzinfo=UTC),
    "0.0": datetime(1970, 1, 1, tzinfo=UTC),
    "-0": datetime(1970, 1, 1, tzinfo=UTC),
    "0.001": datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=1),
    "1e-400": datetime(1970, 1, 1, tzinfo=UTC),
    # the largest accepted: the last microsecond before the year 10000
    str(EPOCH_MILLIS_LIMIT - 1): datetime(9999, 12, 31, 23, 59, 59, 999000, UTC),
    f"{EPOCH_MILLIS_LIMIT - 1}.999": datetime(9999, 12, 31, 23, 59, 59, 999999, UTC),
}

REFUSED = {
    "-1": "must not be a negative number",
    "-0.001": "must not be a negative number",
    "-1796174206269": "must not be a negative number",
    str(EPOCH_MILLIS_LIMIT): "must be less than 253402300800000 milliseconds",
    f"{EPOCH_MILLIS_LIMIT - 1}.9996": "must be less than",  # rounds up to the limit
    "1e15": "must be less than",
    "1e400": "must be less than",  # not an infinity, and not built as an integer either
    "-1e400": "must not be a negative number",
    "true": "must be an ISO 8601 date-time string or a number of milliseconds",
    "{}": "must be an ISO 8601 date-time string or a number of milliseconds",
    "[1796174206269]": "must be an ISO 8601 date-time string or a number of milliseconds",
    '"1796174206269"': "must be an ISO 8601 date-time string or a number of milliseconds",
    '"yesterday"': "must be an ISO 8601 date-time string or a number of milliseconds",
    '"10000-01-01T00:00:00Z"': "must be an ISO 8601 date-time string",
}


@pytest.mark.parametrize("field", ["start_time", "end_time"])
@pytest.mark.parametrize("raw", ACCEPTED)
def test_accepted_times_give_the_utc_instant_and_keep_the_bytes(field, raw):
    run = _parsed(field, raw.encode())
    moment = getattr(run, field)
    assert moment == ACCEPTED[raw] and moment.utcoffset() == timedelta(0)
    assert run.body == _run_with(field, raw.encode())  # as sent: only the column is derived


@pytest.mark.parametrize("field", ["start_time", "end_time"])
@pytest.mark.parametrize("raw", REFUSED)
def test_refused_times_are_a_400_naming_the_field_and_the_run(field, raw):
    with pytest.raises(RunError) as refused:
        _parsed(field, raw.encode())
    assert refused.value.status == 400
    assert refused.value.reason.startswith(f"post.x: {field} "), refused.value.reason
    assert REFUSED[raw] in refused.value.reason


def test_a_number_split_across_chunks_is_read_whole():
    """A number cut between two socket reads is still one number (yajl holds the token)."""
    body = b"[" + _run_with("end_time", b"1796174206269.5") + b"," + _run_with("start_time", b"0") + b"]"
    for size in (1, 3, 7, 13):
        first, second = split_all(split(body, size))
        assert first.end_time == datetime(2026, 12, 2, 1, 16, 46, 269500, UTC)
        assert second.start_time == datetime(1970, 1, 1, tzinfo=UTC)


def test_a_batch_error_names_the_run_by_index():
    body = b"[" + _run_with("end_time", b"1") + b"," + _run_with("end_time", b"-5") + b"]"
    with pytest.raises(RunError) as refused:
        split_all([body])
    assert refused.value.reason == "run 1: end_time must not be a negative number of milliseconds"
    assert refused.value.index == 1


def test_js_sdk_times_round_trip():
    """What the JavaScript SDK sends: a start_time string with microseconds, an end_time number."""
    start = "2026-12-02T01:16:46.269001Z"
    fields = {"id": str(uuid.uuid4()), "trace_id": TRACE, "name": "js"}
    raw = json.dumps({**fields, "start_time": start, "end_time": 1796174206500}).encode()
    run = parse_run(raw, 1 << 20, 64, "post.x")
    assert run.body == raw
    assert run.start_time == datetime(2026, 12, 2, 1, 16, 46, 269001, UTC)
    assert run.end_time == datetime(2026, 12, 2, 1, 16, 46, 500000, UTC)
    assert run.end_time.astimezone(timezone(timedelta(hours=5))).hour == 6
