"""Hostile bodies: cut short, bit-flipped, malformed, deep, huge, endless -- and what is left behind.

In process against RunSplitter where that is cheap, end to end against the real server (the
``server`` / ``limited_server`` fixtures) where the answer and what stays in PostgreSQL and MinIO
matter. "Valid" is decided by ``oracle()`` below: RFC 8259 (Python's json module with its
extensions switched off, on a strictly decoded UTF-8 text) plus the run rules of README.md.

The bugs these tests found when they were written (500s on invalid UTF-8 and huge numbers, \v and
\f taken as whitespace, an open string after the array, lone surrogates, a run size limit counting
bytes outside the run) are fixed; their cases stay here as REGRESSIONS, each with what used to go
wrong.
"""

from __future__ import annotations

import json
import re
import select
import socket
import uuid
from datetime import datetime

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from handler.base.errors import RunError
from handler.runs.splitter import RunSplitter
from tests.conftest import Store
from tests.runs import FIDELITY_RUN, run, sent_bytes, split, split_all, with_id

T = "6f1c0b52-7f59-4a3e-8d39-2c3b8f7f1a10"
TB = T.encode()
HEAD = b'{"trace_id":"' + TB + b'","name":"x"'  # a run's start; add fields and b"}"
MIB = 1024 * 1024
DEFAULT_MAX_RUN_BYTES = 100 * MIB  # MAX_RUN_BYTES default (README)
DEFAULT_MAX_DEPTH = 512

# -- the reference oracle ---------------------------------------------------------------------------

UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class _Obj(dict):
    """A JSON object that remembers its first repeated key."""

    duplicate: str | None = None


# After a strict UTF-8 decode, a surrogate code point can only come from an unpaired \u escape.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _pairs(pairs: list) -> _Obj:
    obj = _Obj()
    for key, value in pairs:
        if _SURROGATE.search(key) or (_is_string(value) and _SURROGATE.search(value)):
            raise ValueError("an unpaired surrogate escape")
        if key in obj and obj.duplicate is None:
            obj.duplicate = key
        obj[key] = value
    return obj


class _Number(str):
    """A JSON number, kept as its text."""


def _is_string(value) -> bool:
    return isinstance(value, str) and not isinstance(value, _Number)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _depth(value) -> int:
    """How deep the value nests; raises ValueError for a string in an array with an unpaired
    surrogate (object members are checked by _pairs)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if _is_string(item) and _SURROGATE.search(item):
            raise ValueError("an unpaired surrogate escape")
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def strict_loads(text: str):
    """RFC 8259 JSON: no NaN/Infinity; numbers kept as text, so no size limit and no float rounding."""
    return json.loads(
        text, parse_constant=_no_constant, object_pairs_hook=_pairs, parse_int=_Number, parse_float=_Number
    )


# What each optional field must be when it is not null (the checks of stream.py, simplified: the
# formats of ids, times and run types are covered by explicit cases below).
FIELD_TYPES = {
    **dict.fromkeys(("inputs", "outputs", "metadata", "extra", "serialized"), dict),
    **dict.fromkeys(("events", "tags"), list),
    **dict.fromkeys(
        (
            "error",
            "run_type",
            "start_time",
            "end_time",
            "parent_run_id",
            "session_id",
            "reference_example_id",
            "dotted_order",
            "session_name",
        ),
        str,
    ),
}


def _well_formed(field: str, value: str) -> bool:
    if field in ("parent_run_id", "session_id", "reference_example_id"):
        return bool(UUID_RE.fullmatch(value))
    if field == "run_type":
        return value in ("tool", "chain", "llm", "retriever", "embedding", "prompt", "parser")
    if field in ("start_time", "end_time"):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return False
    if field == "dotted_order":
        return len(value.encode("utf-8", "surrogatepass")) <= 2048 and "\x00" not in value
    if field == "session_name":
        return len(value) <= 1024 and "\x00" not in value
    return True


def oracle(body: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> tuple[int, str | list[str | None]]:
    """(400, why) for a body the service must refuse, else (201, the runs' ids: supplied (lower
    case) or None). Repeated or existing ids (409) are the caller's business."""
    try:
        text = body.decode("utf-8")  # strict: no overlong forms, no surrogates, nothing over U+10FFFF
    except UnicodeDecodeError:
        return 400, "invalid UTF-8"
    if text.startswith("\ufeff"):
        return 400, "BOM"
    try:
        value = strict_loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: far deeper than max_depth anyway
        return 400, f"invalid JSON: {e}"
    if not isinstance(value, list):
        return 400, "not an array"
    try:
        if _depth(value) > max_depth:
            return 400, "too deep"
    except ValueError as e:
        return 400, str(e)
    ids: list[str | None] = []
    for i, r in enumerate(value):
        if not isinstance(r, dict):
            return 400, f"run {i} not an object"
        if r.duplicate is not None:
            return 400, f"run {i} duplicate key"
        for field in ("trace_id", "id"):
            if field in r and not (_is_string(r[field]) and UUID_RE.fullmatch(r[field])):
                return 400, f"run {i} {field}"
        if "trace_id" not in r:
            return 400, f"run {i} trace_id missing"
        name = r.get("name")
        if not _is_string(name) or "\x00" in name:
            return 400, f"run {i} name"
        for field, kind in FIELD_TYPES.items():
            value = r.get(field)
            if value is not None and not (_is_string(value) if kind is str else isinstance(value, kind)):
                return 400, f"run {i} {field}"
            if _is_string(value) and not _well_formed(field, value):
                return 400, f"run {i} {field}"
        if not all(_is_string(tag) for tag in r.get("tags") or ()):
            return 400, f"run {i} tags"
        if not all(isinstance(event, dict) for event in r.get("events") or ()):
            return 400, f"run {i} events"
        ids.append(r["id"].lower() if "id" in r else None)
    return 201, ids


def element_spans(body: bytes) -> list[tuple[int, int]]:
    """Byte spans of the top-level array's elements, for a body the oracle accepts."""
    text = body.decode("utf-8")
    decoder = json.JSONDecoder(object_pairs_hook=_pairs, parse_int=_Number, parse_float=_Number)
    spans, i = [], text.index("[") + 1
    to_byte = lambda k: len(text[:k].encode("utf-8"))  # noqa: E731
    while True:
        while text[i] in " \t\n\r,":
            i += 1
        if text[i] == "]":
            return spans
        _, end = decoder.raw_decode(text, i)
        spans.append((to_byte(i), to_byte(end)))
        i = end


# -- helpers -------------------------------------------------------------------------------------


def assert_error(response, status: int) -> dict:
    assert response.status == status, (response.status, response.body[:300])
    answer = response.json()
    assert isinstance(answer, dict) and isinstance(answer.get("error"), str) and answer["error"], answer
    return answer


def with_run(*fields: bytes) -> bytes:
    """A one-run batch: HEAD plus the given raw ``"key": value`` fields."""
    return b"[" + HEAD + b"".join(b"," + f for f in fields) + b"}]"


def object_keys(store, ids) -> set[str]:
    with store.db.cursor() as cur:
        cur.execute("SELECT object_key FROM runs WHERE id = ANY(%s::uuid[])", (sorted(ids),))
        return {row[0] for row in cur.fetchall()}


def forget(store, ids) -> None:
    """Remove the runs a test stored, rows and objects, so the bucket stays small."""
    if ids:
        store.remove(set(ids), object_keys(store, ids))


def check_stored(client, body: bytes, ids: list[str]) -> None:
    """Every run of an accepted body comes back from GET byte for byte."""
    spans = element_spans(body)
    supplied = oracle(body)[1]
    assert len(ids) == len(spans) == len(supplied)
    for run_id, given_id, (start, end) in zip(ids, supplied, spans, strict=True):
        raw = body[start:end]
        assert given_id in (None, run_id)
        got = client.get(f"/runs/{run_id}")
        assert got.status == 200
        assert got.body == (raw if given_id else with_id(raw, run_id)), (got.body, raw)


# -- 1. a valid batch cut at every byte ----------------------------------------------------------

# Three small runs: escapes, non-ASCII, a surrogate pair, numbers, nesting, a supplied id, \r\n\t.
SMALL_BATCH = (
    b'[{"trace_id":"' + TB + b'","name":"caf\xc3\xa9 \\ud83d\\ude00 \\"q\\"",'
    b'"inputs":{"n":[1,-2.5e3,1e400,true,null],"s":"} ]"},"outputs":{}},\r\n\t'
    b'{"id":"0c2d3e4f-5a6b-4c7d-8e9f-a0b1c2d3e4f5","trace_id":"'
    + TB
    + b'","name":"b","metadata":{"k":{"a":[]}}} ,'
    b'{"trace_id":"' + TB.upper() + b'","name":"","x":"\\u0000"}]'
)


def test_small_batch_is_valid():
    status, ids = oracle(SMALL_BATCH)
    assert status == 201 and len(ids) == 3
    assert [r.body for r in split_all([SMALL_BATCH])][1] == SMALL_BATCH[slice(*element_spans(SMALL_BATCH)[1])]


def test_every_truncation_is_400_and_leaves_nothing(client, store):
    spans = element_spans(SMALL_BATCH)
    before = store.snapshot()
    wrong = []
    for i in range(len(SMALL_BATCH)):
        body = SMALL_BATCH[:i]
        assert oracle(body)[0] == 400
        response = client.post(body)
        # The run the cut went through, if any, is named.
        cut = [k for k, (start, end) in enumerate(spans) if start < i < end]
        try:
            answer = assert_error(response, 400)
            assert answer.get("index") == (cut[0] if cut else None), answer
        except (AssertionError, ValueError) as e:
            wrong.append((i, response.status, response.body[:200], str(e)[:200]))
    assert not wrong, f"{len(wrong)} of {len(SMALL_BATCH)} truncations answered wrongly, first: {wrong[:5]}"
    store.assert_unchanged(before, timeout=10)


def test_every_truncation_in_process_in_one_byte_chunks():
    for i in range(len(SMALL_BATCH)):
        with pytest.raises(RunError) as e:
            split_all(split(SMALL_BATCH[:i], 1))
        assert e.value.status == 400


# -- 2. a valid batch with single bits flipped ---------------------------------------------------

# Only ASCII and spaces: a flip here cannot reach the bugs pinned further down (VT/FF whitespace,
# unchecked UTF-8, lone surrogates), so this test holds today. FLIP_RICH below has them all.
FLIP_ASCII = (
    b'[{"trace_id":"' + TB + b'","name":"n \\"1\\" \\u00e9","id":"0c2d3e4f-5a6b-4c7d-8e9f-a0b1c2d3e4f5",'
    b'"inputs":{"a":[1,-2.5e3,true,null,"x"]},"z":0}, {"trace_id":"'
    + TB
    + b'","name":"b","outputs":{"o":{}},"metadata":{"m":"v"}}]'
)
FLIP_RICH = SMALL_BATCH
FLIP_BITS = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80)


def flip_all(client, store, base: bytes, bits: tuple[int, ...]) -> None:
    """Post every single-bit flip of ``base``; compare each answer with the oracle. The flips the
    server stored must have added exactly their runs' rows and objects, checked at the end (listing
    the bucket is slow)."""
    flips = []
    for pos in range(len(base)):
        for bit in bits:
            body = base[:pos] + bytes([base[pos] ^ bit]) + base[pos + 1 :]
            flips.append((pos, bit, body, *oracle(body)))
    # The ids the flips supply are this test's own: drop any an interrupted earlier run left.
    forget(store, {i for *_, expected, detail in flips if expected == 201 for i in detail if i})
    before = store.snapshot()
    committed: set[str] = set()  # ids of the flips the server stored
    wrong, seen = [], set()
    try:
        for pos, bit, body, expected, detail in flips:
            if expected == 201:
                supplied = [i for i in detail if i is not None]
                if len(set(supplied)) < len(supplied) or committed & set(supplied):
                    expected = 409
            response = client.post(body)
            seen.add(response.status)
            ok = response.status == expected
            if response.status == 201:
                ids = response.json()["ids"]
                if expected == 201:  # new, distinct ids, the supplied ones as sent
                    ok = ok and len(set(ids)) == len(ids) == len(detail) and not committed & set(ids)
                    ok = ok and all(s is None or s == i for s, i in zip(detail, ids, strict=True))
                committed |= set(ids)
            else:
                try:
                    assert_error(response, response.status)
                except (AssertionError, ValueError):
                    ok = False
            if not ok:
                around = body[max(0, pos - 12) : pos + 12]
                wrong.append((pos, hex(bit), around, expected, response.status, response.body[:100]))
        assert not wrong, (
            f"{len(wrong)} flips answered against the oracle: (pos, bit, around, want, got) {wrong[:8]}"
        )
        assert {201, 400, 409} <= seen, seen  # the flips reached every outcome
        # Exactly the stored flips' runs were added, once the refused batches' objects are deleted.
        rows = store.row_ids()
        assert committed <= rows, "rows missing for stored runs"
        stored_in = object_keys(store, committed)
        assert stored_in <= store.keys(), "stored runs point at objects that do not exist"
        assert not stored_in & before[1], "stored runs point at objects of earlier requests"
        store.assert_unchanged((before[0] | committed, before[1] | stored_in), timeout=10)
    finally:
        forget(store, committed)


def test_flipped_bits_answer_as_the_oracle_says(client, store):
    flip_all(client, store, FLIP_ASCII, FLIP_BITS)


def test_flipped_bits_of_non_ascii_and_line_breaks(client, store):
    flip_all(client, store, FLIP_RICH, (0x01, 0x02, 0x80))


# -- 3. explicit hostile cases, in process and end to end -----------------------------------------

RUN0 = json.dumps(run(trace_id=T)).encode()


def _types(field: str, values: list) -> list:
    return [
        pytest.param(
            b"[" + RUN0 + b"," + json.dumps({**run(trace_id=T), field: v}).encode() + b"]",
            400,
            1,
            field,
            id=f"{field}-{i}={json.dumps(v)[-16:]}",
        )
        for i, v in enumerate(values)
    ]


NOT_UUIDS = [
    "",
    "not-a-uuid",
    T.replace("-", ""),
    "{" + T + "}",
    "urn:uuid:" + T,
    " " + T,
    T + " ",
    T + "\n",
    T[:-1],
    T + "0",
    T[:-1] + "g",
    T.replace("-", "_"),
    "\uff16" + T[1:],  # fullwidth digit six
    T + "\x00",
    "6f1c0b52-7f59-4a3e-8d39-2c3b8f7f1a1\u0660",  # arabic-indic zero
]

REJECTED = [
    pytest.param(
        with_run(b'"s":"\\ud800"'), 400, 0, "unpaired surrogate", id="lone-high-surrogate-outside-name"
    ),
    # invalid UTF-8 that yajl itself refuses (the other kinds are in REGRESSIONS)
    pytest.param(with_run(b'"s":"\x80"'), 400, 0, "invalid JSON", id="utf8-lone-continuation"),
    pytest.param(with_run(b'"s":"\xc3"'), 400, 0, "invalid JSON", id="utf8-truncated-2"),
    pytest.param(with_run(b'"s":"\xe2\x98"'), 400, 0, "invalid JSON", id="utf8-truncated-3"),
    pytest.param(with_run(b'"s":"\xf0\x9f\x98"'), 400, 0, "invalid JSON", id="utf8-truncated-4"),
    pytest.param(with_run(b'"s":"\xf8\x88\x80\x80\x80"'), 400, 0, "invalid JSON", id="utf8-5-byte"),
    pytest.param(with_run(b'"s":"\xfe\xff"'), 400, 0, "invalid JSON", id="utf8-fe-ff"),
    pytest.param(b"[" + HEAD + b',"s":1}, \xc3\xa9]', 400, 1, "invalid JSON", id="utf8-outside-strings"),
    pytest.param(b"\xef\xbb\xbf[" + RUN0 + b"]", 400, None, "invalid JSON", id="utf8-bom"),
    pytest.param(b"\xfe\xff\x00[\x00]", 400, None, "invalid JSON", id="utf16-bom"),
    pytest.param(b"\x00[\x00]", 400, None, "invalid JSON", id="utf16-be"),
    # NaN and infinities, in each place a value goes
    pytest.param(with_run(b'"s":NaN'), 400, 0, "invalid JSON", id="nan"),
    pytest.param(with_run(b'"s":Infinity'), 400, 0, "invalid JSON", id="infinity"),
    pytest.param(with_run(b'"s":-Infinity'), 400, 0, "invalid JSON", id="minus-infinity"),
    pytest.param(with_run(b'"inputs":{"a":[1,NaN]}'), 400, 0, "invalid JSON", id="nan-nested"),
    pytest.param(with_run(b'"s":nan'), 400, 0, "invalid JSON", id="nan-lower"),
    pytest.param(with_run(b'"s":inf'), 400, 0, "invalid JSON", id="inf"),
    pytest.param(b"[" + RUN0 + b",NaN]", 400, 1, "invalid JSON", id="nan-as-run"),
    # other grammar RFC 8259 does not have
    pytest.param(with_run(b'"s":01'), 400, 0, "invalid JSON", id="leading-zero"),
    pytest.param(with_run(b'"s":+1'), 400, 0, "invalid JSON", id="plus-sign"),
    pytest.param(with_run(b'"s":.5'), 400, 0, "invalid JSON", id="no-integer-part"),
    pytest.param(with_run(b'"s":1.'), 400, 0, "invalid JSON", id="no-fraction"),
    pytest.param(with_run(b'"s":0x10'), 400, 0, "invalid JSON", id="hex-number"),
    pytest.param(with_run(b'"s":"a\tb"'), 400, 0, "invalid JSON", id="raw-tab-in-string"),
    pytest.param(with_run(b'"s":"a\x1fb"'), 400, 0, "invalid JSON", id="raw-control-in-string"),
    pytest.param(with_run(b'"s":"\\x41"'), 400, 0, "invalid JSON", id="bad-escape"),
    pytest.param(with_run(b'"s":"\\u00g1"'), 400, 0, "invalid JSON", id="bad-unicode-escape"),
    pytest.param(with_run(b"'s':1"), 400, 0, "invalid JSON", id="single-quotes"),
    pytest.param(with_run(b"s:1"), 400, 0, "invalid JSON", id="bare-key"),
    pytest.param(with_run(b'"s":1,'), 400, 0, "invalid JSON", id="trailing-comma-object"),
    pytest.param(b"[" + RUN0 + b",]", 400, None, "invalid JSON", id="trailing-comma-array"),
    pytest.param(b"[" + RUN0 + b",,]", 400, None, "invalid JSON", id="double-comma"),
    pytest.param(b"[/**/" + RUN0 + b"]", 400, 0, "invalid JSON", id="comment"),
    pytest.param(b"[" + RUN0 + b"]//", 400, None, "invalid JSON", id="line-comment-after"),
    pytest.param(b"[\x00" + RUN0 + b"]", 400, 0, "invalid JSON", id="nul-as-whitespace"),
    pytest.param(b"[\xc2\xa0" + RUN0 + b"]", 400, 0, "invalid JSON", id="nbsp-as-whitespace"),
    pytest.param(with_run(b'"s":True'), 400, 0, "invalid JSON", id="capital-true"),
    pytest.param(with_run(b'"s":nul'), 400, 0, "invalid JSON", id="short-null"),
    pytest.param(with_run(b'"s":truex'), 400, 0, "invalid JSON", id="true-with-tail"),
    # duplicate keys at a run's top level, however spelled
    pytest.param(with_run(b'"name":"y"'), 400, 0, "duplicate key 'name'", id="dup-name"),
    pytest.param(
        with_run(b'"trace_id":"' + TB + b'"'), 400, 0, "duplicate key 'trace_id'", id="dup-trace-id"
    ),
    pytest.param(
        with_run(b'"id":"' + TB + b'","id":"' + TB + b'"'),
        400,
        0,
        "duplicate key 'id'",
        id="dup-id-same-value",
    ),
    pytest.param(with_run(b'"inputs":{},"inputs":{}'), 400, 0, "duplicate key 'inputs'", id="dup-inputs"),
    pytest.param(with_run(b'"zz":1,"zz":1'), 400, 0, "duplicate key 'zz'", id="dup-extra-key"),
    pytest.param(with_run(b'"na\\u006de":"y"'), 400, 0, "duplicate key 'name'", id="dup-escaped-key"),
    # trailing data and several top-level values
    pytest.param(b"[" + RUN0 + b"] [" + RUN0 + b"]", 400, None, "invalid JSON", id="two-arrays"),
    pytest.param(b"[][]", 400, None, "invalid JSON", id="two-empty-arrays"),
    pytest.param(b"[" + RUN0 + b"]]", 400, None, "invalid JSON", id="extra-bracket"),
    pytest.param(b"[" + RUN0 + b"]}", 400, None, "invalid JSON", id="extra-brace"),
    pytest.param(b"[" + RUN0 + b"],", 400, None, "invalid JSON", id="trailing-comma"),
    pytest.param(b"[" + RUN0 + b"] " + RUN0, 400, None, "invalid JSON", id="run-after-array"),
    pytest.param(b"[" + RUN0 + b"] 1", 400, None, "invalid JSON", id="number-after-array"),
    pytest.param(b"[" + RUN0 + b"] null", 400, None, "invalid JSON", id="null-after-array"),
    pytest.param(b"[" + RUN0 + b'] "x"', 400, None, "invalid JSON", id="string-after-array"),
    pytest.param(b"[" + RUN0 + b"]\x00", 400, None, "invalid JSON", id="nul-after-array"),
    pytest.param(b"[" + RUN0 + b"] x", 400, None, "invalid JSON", id="garbage-after-array"),
    # top level and runs of the wrong kind
    pytest.param(RUN0, 400, None, "array", id="object-not-array"),
    pytest.param(b'"[]"', 400, None, "array", id="string-top-level"),
    pytest.param(b"null", 400, None, "array", id="null-top-level"),
    pytest.param(b"[" + RUN0 + b',"run"]', 400, 1, "must be an object", id="string-run"),
    pytest.param(b"[" + RUN0 + b",null]", 400, 1, "must be an object", id="null-run"),
    pytest.param(b"[" + RUN0 + b",{}]", 400, 1, "trace_id is required", id="empty-run"),
    # names: NUL, however escaped
    pytest.param(b'[{"trace_id":"' + TB + b'","name":"a\\u0000b"}]', 400, 0, "NUL", id="name-nul"),
    # wrong types for each field
    *_types("trace_id", [5, None, True, [], {}, 1.5]),
    *_types("name", [5, None, False, [], {}, ["x"]]),
    *_types("id", [5, None, True, [], {}]),
    *_types("inputs", ["x", 1, True, [], [{}]]),
    *_types("outputs", ["x", 0, False, []]),
    *_types("metadata", ["{}", -1, True, [1]]),
    *_types("extra", ["x", 1, []]),
    *_types("serialized", ["{}", False]),
    *_types("events", [{}, "[]", 1, [1], ["x"], [{}, []], [None]]),
    *_types("tags", [{}, "a", [1], ["a", {}], [[]], [None]]),
    *_types("error", [{}, [], 1, True]),
    *_types("run_type", ["agent", "", 1, "LLM"]),
    *_types("start_time", ["yesterday", "2024-13-01T00:00:00", -1700000000, 1e16, ""]),
    *_types("end_time", ["2024-01-01T25:00:00Z", []]),
    *_types("parent_run_id", ["x", 5, NOT_UUIDS[1]]),
    *_types("session_id", ["x"]),
    *_types("reference_example_id", [1]),
    *_types("dotted_order", [1, [], "x" * 8193]),
    *_types("session_name", [1, "a\x00b", "x" * 1025]),
    # ids and trace ids that are not UUIDs
    *_types("id", NOT_UUIDS),
    *_types("trace_id", NOT_UUIDS[:8]),
]


@pytest.mark.parametrize("body, status, index, words", REJECTED)
def test_rejected_in_process(body, status, index, words):
    assert oracle(body)[0] == 400, oracle(body)
    for chunks in ([body], split(body, 1), split(body, 5)):
        with pytest.raises(RunError) as e:
            split_all(chunks)
        assert (e.value.status, e.value.index) == (status, index), e.value.reason
        assert words in e.value.reason


def test_rejected_end_to_end_leaves_nothing(client, store):
    """All of REJECTED against the server, whole and in small chunks (one listing of the bucket
    before and one after: it is slow)."""
    before = store.snapshot()
    wrong = []
    for case in REJECTED:
        if case.id == "object-not-array":
            continue  # POST /runs takes one run as an object too (readers.ArrayReader); the splitter does not
        body, status, index, words = case.values
        for chunks in ([body], split(body, 7)):
            response = client.post(chunks)
            try:
                answer = assert_error(response, status)
                assert answer.get("index") == index and words in answer["error"], answer
            except (AssertionError, ValueError) as e:
                wrong.append((case.id, len(chunks), str(e)[:200]))
    assert not wrong, f"{len(wrong)} answers wrong: {wrong[:10]}"
    store.assert_unchanged(before, timeout=10)


ACCEPTED = [
    pytest.param(with_run(b'"inputs":{"a":1,"a":2,"a":{"b":1,"b":1}}'), id="nested-duplicates-kept"),
    pytest.param(with_run(b'"s":"a\x7fb"'), id="raw-del-in-string"),
    pytest.param(with_run(b'"s":"\\u0000","\\u0000":0'), id="escaped-nul-outside-name"),
    pytest.param(
        b'[{"trace_id":"' + TB + b'","name":"\\ud83d\\ude00\\uD83D\\uDE00"}]', id="name-surrogate-pair"
    ),
    pytest.param(b'[{"trace_id":"' + TB + b'","name":"} ] { [ \\" ,"}]', id="name-with-brackets"),
    pytest.param(b'[{"trace_id":"' + TB.upper() + b'","name":"x"}]', id="uppercase-trace-id"),
    pytest.param(
        b'[{"trace_id":"6f1c0b52\\u002d7f59-4a3e-8d39-2c3b8f7f1a10","name":"x"}]', id="escaped-uuid"
    ),
    pytest.param(
        b'[{"\\u0069d":"' + str(uuid.uuid4()).encode() + b'",' + HEAD[1:] + b"}]", id="escaped-id-key"
    ),
    pytest.param(with_run(b'"inputs":{"id":"no","trace_id":5,"name":null}'), id="nested-field-names"),
    pytest.param(with_run(b'"Name":5,"ID":"x","trace id":1,"":""'), id="near-field-names"),
    pytest.param(with_run(b'"a":1e999999999999999999,"b":-1E-400,"c":-0,"d":0.0e-0'), id="extreme-numbers"),
    pytest.param(with_run(b'"a":' + b"9" * 4300 + b',"b":0.' + b"1" * 5000), id="4300-digit-integer"),
    pytest.param(b" \t\r\n[ \t\r\n" + HEAD + b" \t\r\n} \t\r\n] \t\r\n", id="all-four-whitespaces"),
    pytest.param(b"[" + HEAD + b',"s":"\xef\xbb\xbf"}]', id="bom-inside-string"),
    pytest.param(b"[" + FIDELITY_RUN + b"]", id="fidelity-run"),
]


@pytest.mark.parametrize("body", ACCEPTED)
def test_accepted_edge_cases_in_process(body):
    status, ids = oracle(body)
    assert status == 201
    spans = element_spans(body)
    for chunks in ([body], split(body, 1), split(body, 5)):
        runs = split_all(chunks)
        assert [sent_bytes(r) for r in runs] == [body[s:e] for s, e in spans]
        for r, supplied in zip(runs, ids, strict=True):
            assert supplied is None or str(r.id) == supplied
            strict_loads(r.body.decode())


@pytest.mark.parametrize("body", ACCEPTED)
def test_accepted_edge_cases_end_to_end(client, store, body):
    response = client.post(split(body, 7))
    assert response.status == 201, response.body
    try:
        check_stored(client, body, response.json()["ids"])
    finally:
        forget(store, response.json()["ids"])


# -- regressions: bugs these tests found, now fixed; each reason says what used to go wrong ------

BUG_UTF8 = (
    "bug: yajl only checks the shape of a UTF-8 sequence, and ijson then decodes it strictly: "
    "UnicodeDecodeError escapes RunSplitter (handler/stream.py _parse catches only ijson.JSONError) "
    "and the server answers 500 instead of 400"
)
BUG_LOW_SURROGATE = (
    "bug: yajl turns an unpaired \\udc00-\\udfff escape into the UTF-8 bytes of a surrogate, ijson's "
    "decode raises UnicodeDecodeError out of RunSplitter: 500 (RFC 8259 8.2 allows it; 201 or 400 expected)"
)
BUG_HIGH_SURROGATE = (
    "bug: yajl replaces an unpaired high surrogate escape with '?' (or pairs it with any following "
    "\\u escape), so the name check in stream.py _check_field never sees it: 201 instead of 400, and "
    "the row's name differs from the stored body"
)
BUG_VT_FF = (
    "bug: yajl treats \\v (0x0b) and \\f (0x0c) as whitespace; RFC 8259 allows only space, \\t, \\n, \\r: "
    "201 instead of 400, and the stored run is not valid JSON"
)
BUG_TRAILING_STRING = (
    "bug: an unterminated string after the array is not reported by yajl's trailing-garbage check "
    "(it is an incomplete token at close): RunSplitter.close() accepts it, 201 instead of 400"
)
BUG_BIG_NUMBER = (
    "bug: ijson converts every number (int/Decimal); an integer over Python's 4300-digit limit "
    "(SystemError) or an exponent of 10**18 or more (decimal.InvalidOperation) escapes RunSplitter: "
    "500 (RFC 8259 6 allows a 400 here, or 201 keeping the bytes)"
)


def _regression(body: bytes, allowed: tuple[int, ...], reason: str, name: str):
    return pytest.param(body, allowed, id=name)


NAME = b'[{"trace_id":"' + TB + b'","name":"'
REGRESSIONS = [
    _regression(NAME + b'\xc0\x80"}]', (400,), BUG_UTF8, "utf8-overlong-nul-in-name"),
    _regression(with_run(b'"s":"\xc1\xbf"'), (400,), BUG_UTF8, "utf8-overlong-2"),
    _regression(with_run(b'"s":"\xe0\x80\xaf"'), (400,), BUG_UTF8, "utf8-overlong-3"),
    _regression(with_run(b'"s":"\xf0\x80\x80\xaf"'), (400,), BUG_UTF8, "utf8-overlong-4"),
    _regression(with_run(b'"s":"\xed\xa0\x80"'), (400,), BUG_UTF8, "utf8-encoded-surrogate"),
    _regression(with_run(b'"s":"\xf4\x90\x80\x80"'), (400,), BUG_UTF8, "utf8-above-10ffff"),
    _regression(with_run(b'"s":"\xf5\x80\x80\x80"'), (400,), BUG_UTF8, "utf8-f5-lead"),
    _regression(with_run(b'"\xc0\xaf":1'), (400,), BUG_UTF8, "utf8-overlong-in-key"),
    _regression(with_run(b'"inputs":{"a":["\xed\xbf\xbf"]}'), (400,), BUG_UTF8, "utf8-surrogate-nested"),
    _regression(NAME + b'\\udc00"}]', (400,), BUG_LOW_SURROGATE, "name-lone-low-surrogate"),
    _regression(with_run(b'"s":"\\udc00"'), (201, 400), BUG_LOW_SURROGATE, "lone-low-surrogate-outside-name"),
    _regression(
        with_run(b'"s":"\\ud83d\\ud83d\\ude00\\ude00"'), (201, 400), BUG_LOW_SURROGATE, "surrogates-misnested"
    ),
    _regression(NAME + b'\\ud800"}]', (400,), BUG_HIGH_SURROGATE, "name-lone-high-surrogate"),
    _regression(NAME + b'\\ud800\\u0041"}]', (400,), BUG_HIGH_SURROGATE, "name-high-surrogate-then-letter"),
    _regression(b"[\x0c]", (400,), BUG_VT_FF, "form-feed-as-whitespace"),
    _regression(b"[" + HEAD + b",\x0b" + b'"s":1}]', (400,), BUG_VT_FF, "vertical-tab-inside-run"),
    _regression(b"[" + RUN0 + b",\x0c" + RUN0 + b"]\x0b", (400,), BUG_VT_FF, "ff-vt-between-runs"),
    _regression(b"[" + RUN0 + b']"', (400,), BUG_TRAILING_STRING, "quote-after-array"),
    _regression(b"[" + RUN0 + b'] "unterminated', (400,), BUG_TRAILING_STRING, "open-string-after-array"),
    _regression(with_run(b'"a":' + b"9" * 4301), (201, 400), BUG_BIG_NUMBER, "4301-digit-integer"),
    _regression(with_run(b'"a":-' + b"1" * 10000), (201, 400), BUG_BIG_NUMBER, "10000-digit-integer"),
    _regression(with_run(b'"a":1e1000000000000000000'), (201, 400), BUG_BIG_NUMBER, "exponent-10e18"),
    _regression(b"9" * 5000, (400,), BUG_BIG_NUMBER, "huge-number-as-the-body"),
    _regression(b'"\xe0\x80\x80"', (400,), BUG_UTF8, "overlong-string-as-the-body"),
    _regression(with_run(b'"a":1.5E+99999999999999999999'), (201, 400), BUG_BIG_NUMBER, "exponent-20-digits"),
]


@pytest.mark.parametrize("body, allowed", REGRESSIONS)
def test_regressions_in_process(body, allowed):
    expected = oracle(body)[0]
    assert expected in allowed  # the oracle's answer is one of the allowed ones
    for chunks in ([body], split(body, 1)):
        try:
            runs = split_all(chunks)
        except RunError as e:
            assert e.status in allowed, e.reason
        else:
            assert 201 in allowed, f"accepted: {[r.body for r in runs]}"
            for r in runs:
                strict_loads(r.body.decode("utf-8"))


@pytest.mark.parametrize("body, allowed", REGRESSIONS)
def test_regressions_end_to_end(client, store, body, allowed):
    response = client.post(body)
    if response.status == 201:
        ids = response.json()["ids"]
        try:
            assert 201 in allowed, f"stored {ids}"
            check_stored(client, body, ids)
        finally:
            forget(store, ids)
    else:
        assert_error(response, response.status)
        assert response.status in allowed


def test_regression_bodies_leave_nothing_behind(client, store):
    """Whatever the answer, even 500, a refused batch is undone, and one that is stored (wrongly,
    for some) adds exactly its runs. Each body is also sent after a valid run, in small chunks, so
    that a run is uploaded before the bad bytes arrive."""
    before = store.snapshot()
    stored: set[str] = set()
    try:
        for case in REGRESSIONS:
            body = case.values[0]
            sends = [[body]]
            if body.startswith(b"[") and not body.startswith(b"[]"):
                sends.append(split(b"[" + RUN0 + b"," + body[1:], 16))
            for chunks in sends:
                response = client.post(chunks)
                if response.status == 201:
                    stored |= set(response.json()["ids"])
                else:
                    assert_error(response, response.status)
        after = (before[0] | stored, before[1] | object_keys(store, stored))
        assert len(after[1]) == len(before[1]) + len(stored)
        store.assert_unchanged(after, timeout=10)
    finally:
        forget(store, stored)


# -- the run size limit counts only the run (it used to count bytes around it) ---------------------

LIMITED_RUN = 2000  # limited_server's MAX_RUN_BYTES


def _small_run(size: int) -> bytes:
    raw = json.dumps({"trace_id": T, "name": "n", "inputs": {"t": ""}, "z": 1}).encode()
    raw = raw.replace(b'"t": ""', b'"t": "' + b"x" * (size - len(raw)) + b'"')
    assert len(raw) == size
    return raw


SIZE_CASES = [
    # 1500 spaces before a 700-byte run: the run's nested "}" ends a piece while the spaces are
    # still counted as its bytes (stream.py _feed_piece: len(self._pending) includes them).
    pytest.param([b"[" + b" " * 1500 + _small_run(700) + b"]"], id="whitespace-before-run"),
    # A string held back (stream.py feed: "input is held back until it has doubled") then a chunk
    # with the end of run 0 and all of run 1: feed() checks len(pending) + len(unfed), which
    # counts run 1's bytes as run 0's.
    pytest.param(
        [b'[{"trace_id":"' + TB + b'","name":"', b"x" * 700, b'"},' + _small_run(1300) + b"]"],
        id="held-back-input-counts-the-next-run",
    ),
]


@pytest.mark.parametrize("chunks", SIZE_CASES)
def test_run_limit_counts_only_the_run_in_process(chunks):
    body = b"".join(chunks)
    assert all(e - s <= LIMITED_RUN for s, e in element_spans(body))
    runs = split_all(chunks, max_run_bytes=LIMITED_RUN, max_runs=5)
    assert [sent_bytes(r) for r in runs] == [body[s:e] for s, e in element_spans(body)]


def test_run_limit_counts_only_the_run_end_to_end(limited_server, s3, db):
    # Only the whitespace case: the server's Tornado coalesces HTTP chunks that arrive together, so
    # the held-back case depends on network timing there (in process it is deterministic).
    (chunks,) = SIZE_CASES[0].values
    response = limited_server.client.post(chunks)
    if response.status == 201:
        forget(Store(s3, db, limited_server.bucket), response.json()["ids"])
    assert response.status == 201, response.body


# -- nesting ---------------------------------------------------------------------------------------

DEEP = 100_000
DEEP_BODIES = [
    pytest.param(with_run(b'"inputs":{"a":' + b"[" * DEEP + b"]" * DEEP + b"}"), 0, "deeper", id="arrays"),
    pytest.param(with_run(b'"inputs":' + b'{"a":' * DEEP + b"1" + b"}" * DEEP), 0, "deeper", id="objects"),
    pytest.param(
        with_run(b'"z":' + b'[{"a":' * (DEEP // 2) + b"1" + b"}]" * (DEEP // 2)), 0, "deeper", id="mixed"
    ),
    pytest.param(
        b"[" + RUN0 + b"," + b"[" * DEEP + b"]" * DEEP + b"]", 1, "must be an object", id="run-array"
    ),
    pytest.param(b"[" + RUN0 + b"," + HEAD + b',"z":' + b"[" * DEEP, 1, "deeper", id="unclosed"),
]


@pytest.mark.parametrize("body, index, words", DEEP_BODIES)
def test_nesting_100000_deep_is_400_in_process(body, index, words):
    for chunks in ([body], split(body, 4096)):
        with pytest.raises(RunError) as e:
            split_all(chunks)  # the default max_depth; and no RecursionError
        assert (e.value.status, e.value.index) == (400, index) and words in e.value.reason, e.value.reason


def test_nesting_end_to_end(client, store):
    # array 1, run 2, inputs 3, then k arrays: depth 3 + k
    deepest = with_run(b'"inputs":{"a":' + b"[" * 509 + b"]" * 509 + b"}")
    too_deep = with_run(b'"inputs":{"a":' + b"[" * 510 + b"]" * 510 + b"}")
    assert oracle(deepest)[0] == 201 and oracle(too_deep)[0] == 400
    assert [sent_bytes(r) for r in split_all([deepest])] == [deepest[1:-1]]
    with pytest.raises(RunError) as e:
        split_all([too_deep])
    assert e.value.status == 400 and "deeper than 512" in e.value.reason
    before = store.snapshot()
    for case in [*DEEP_BODIES, pytest.param(too_deep, 0, "deeper than 512", id="513")]:
        body, index, words = case.values
        answer = assert_error(client.post(split(body, 65536)), 400)
        assert answer.get("index") == index and words in answer["error"], (case.id, answer)
    store.assert_unchanged(before, timeout=10)
    response = client.post(deepest)
    assert response.status == 201, response.body
    try:
        check_stored(client, deepest, response.json()["ids"])
    finally:
        forget(store, response.json()["ids"])


# -- a huge string --------------------------------------------------------------------------------


def test_huge_string_is_413_at_the_default_limit():
    splitter = RunSplitter(DEFAULT_MAX_RUN_BYTES, 100_000)
    assert splitter.feed(b"[" + HEAD + b',"inputs":{"text":"') == []
    piece = b"x" * MIB  # the same bytes object every time: nothing near the limit is allocated here
    fed = 0
    with pytest.raises(RunError) as e:
        while fed < 3 * DEFAULT_MAX_RUN_BYTES:
            assert splitter.feed(piece) == []
            fed += len(piece)
    assert (e.value.status, e.value.index) == (413, 0)
    assert fed <= DEFAULT_MAX_RUN_BYTES + len(piece), "refused only well after the limit"


def test_huge_string_end_to_end(limited_server, s3, db):
    store = Store(s3, db, limited_server.bucket)
    before = store.snapshot()
    # 18 KB in all, under MAX_BODY_BYTES, however the server's Tornado groups the chunks
    chunks = [b"[" + RUN0 + b"," + HEAD + b',"s":"'] + [b"\\u0041" * 50] * 60 + [b'"}]']
    answer = assert_error(limited_server.client.post(chunks), 413)
    assert answer.get("index") == 1 and "larger than 2000" in answer["error"]
    store.assert_unchanged(before, timeout=10)


# -- 4. endless bodies: answered, then the connection is closed -----------------------------------


def _endless(server, head: bytes, filler: bytes, cap: int = 5 * MIB) -> tuple[bytes, bool, int]:
    """Send ``head`` then ``filler`` chunks until the server answers (or stops reading).

    Returns the bytes read, whether the server closed the connection, and the bytes sent."""
    sock = socket.create_connection((server.client.host, server.client.port), timeout=10)
    try:
        sock.sendall(
            b"POST /runs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(head), head)
        )
        sent = len(head)
        chunk = b"%x\r\n%s\r\n" % (len(filler), filler)
        # A short wait after each chunk (not an assertion) lets the server see the chunks one by
        # one; Tornado joins chunks that are waiting together, which could hide the first error
        # behind the body limit.
        pause = 0.5
        while True:
            assert sent < cap, f"no answer after {sent} bytes of body"
            if select.select([sock], [], [], pause)[0]:
                break
            pause = 0.02
            readable, writable, _ = select.select([sock], [sock], [], 10)
            if readable:
                break
            assert writable, "the server neither reads nor answers"
            try:
                sock.sendall(chunk)
            except OSError:
                break  # the server closed on us; its answer may still be readable
            sent += len(filler)
        data, closed = b"", False
        while True:
            try:
                more = sock.recv(65536)
            except ConnectionResetError:
                closed = True
                break
            except TimeoutError:
                break  # left hanging
            if not more:
                closed = True
                break
            data += more
        return data, closed, sent
    finally:
        sock.close()


def _parse_response(data: bytes) -> tuple[int, dict]:
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    assert length, head
    return status, json.loads(body[: int(length.group(1))])


@pytest.mark.parametrize(
    "head, filler, status, words",
    [
        pytest.param(b"[", b" " * 1000, 413, "body is larger than 20000", id="body-too-big"),
        pytest.param(b"[" + RUN0 + b",", (RUN0 + b",") * 5, 413, "more than 5 runs", id="too-many-runs"),
        pytest.param(
            b"[" + HEAD + b',"s":"', b"x" * 1000, 413, "run 0 is larger than 2000", id="run-too-big"
        ),
        pytest.param(b"[" + RUN0 + b",{]", b" " * 1000, 400, "invalid JSON", id="malformed"),
    ],
)
def test_endless_body_is_answered_and_the_connection_closed(
    limited_server, s3, db, head, filler, status, words
):
    store = Store(s3, db, limited_server.bucket)
    before = store.snapshot()
    data, closed, sent = _endless(limited_server, head, filler)
    assert data, f"no answer at all after {sent} bytes"
    got, answer = _parse_response(data)
    # If the server fell behind and read many chunks at once, the body limit may speak first.
    assert (got, words in answer["error"]) == (status, True) or (
        status == 413 and "body is larger than 20000" in answer["error"]
    ), answer
    assert closed, "the server answered but left the connection open"
    store.assert_unchanged(before, timeout=10)


# -- 3. property-based, in process ----------------------------------------------------------------

# How many examples, and whether they are drawn from a fixed seed, come from the Hypothesis profile
# tests/conftest.py loads: "ci" (fixed, for make test and tox) or "fuzz" (random, many; make fuzz).
PROPERTY = settings(
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# For the properties over tricky tokens: the first failure is enough, no time spent shrinking it.
FIND_ONLY = settings(PROPERTY, phases=[Phase.explicit, Phase.generate], report_multiple_bugs=False)

WS = st.text(alphabet=" \t\n\r", max_size=3)
UUIDS = st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper())
NUMBER_LITERALS = st.from_regex(
    r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,4})?", fullmatch=True
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | NUMBER_LITERALS.map(lambda s: _Raw(s))
)
VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.lists(st.tuples(st.text(max_size=6), children), max_size=4)
    ),
    max_leaves=12,
)


class _Raw(str):
    """A number literal to emit exactly as written."""


@st.composite
def json_text(draw, value) -> str:
    """``value`` as JSON with random whitespace and escaping; a list of tuples is an object
    (so keys may repeat in nested objects, as clients may send)."""
    ascii_only = draw(st.booleans())
    ws = lambda: draw(WS)  # noqa: E731

    def emit(v) -> str:
        if isinstance(v, _Raw):
            return str(v)
        if isinstance(v, list) and v and all(isinstance(x, tuple) for x in v) or v == ():
            return (
                "{" + ",".join(f"{ws()}{emit_str(k)}{ws()}:{ws()}{emit(x)}{ws()}" for k, x in v) + ws() + "}"
            )
        if isinstance(v, list):
            return "[" + ",".join(f"{ws()}{emit(x)}{ws()}" for x in v) + ws() + "]"
        if isinstance(v, str):
            return emit_str(v)
        return json.dumps(v)

    def emit_str(s: str) -> str:
        return json.dumps(s, ensure_ascii=ascii_only)

    return emit(value)


OBJECTS = st.lists(st.tuples(st.text(max_size=6), VALUES), max_size=4).map(lambda v: v or ())
EXTRA_KEYS = st.text(max_size=8).filter(lambda k: k not in ("id", "trace_id", "name", *FIELD_TYPES))


@st.composite
def valid_runs(draw) -> tuple[bytes, str | None, str, str]:
    """One run as raw bytes, with its id (or None), trace id and name."""
    trace_id = draw(UUIDS)
    name = draw(
        st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=12)
    )
    run_id = draw(st.none() | UUIDS)
    fields = [("trace_id", trace_id), ("name", name)] + ([("id", run_id)] if run_id else [])
    for field in ("inputs", "outputs", "metadata"):
        if draw(st.booleans()):
            fields.append((field, draw(OBJECTS)))
    extra = draw(st.dictionaries(EXTRA_KEYS, VALUES, max_size=3))
    fields += list(extra.items())
    fields = draw(st.permutations(fields))
    raw = draw(json_text(fields or ())).encode()
    return raw, run_id, trace_id, name


@st.composite
def valid_batches(draw):
    runs = draw(st.lists(valid_runs(), max_size=5))
    spans = []
    body = (draw(WS) + "[").encode()
    for i, (raw, *_) in enumerate(runs):
        body += (("," if i else "") + draw(WS)).encode()
        spans.append((len(body), len(body) + len(raw)))
        body += raw + draw(WS).encode()
    body += ("]" + draw(WS)).encode()
    return body, runs, spans


@st.composite
def chunkings(draw, body: bytes) -> list[bytes]:
    if draw(st.integers(0, 9)) == 0:
        return split(body, 1)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=12))))
    edges = [0, *cuts, len(body)]
    return [body[a:b] for a, b in zip(edges, edges[1:], strict=False)]


@pytest.mark.property
@PROPERTY
@given(st.data())
def test_valid_batches_come_back_byte_for_byte(data):
    body, runs, spans = data.draw(valid_batches())
    chunks = data.draw(chunkings(body))
    assert oracle(body)[0] == 201
    assert element_spans(body) == spans
    got = split_all(chunks)
    assert [r.index for r in got] == list(range(len(runs)))
    for r, (raw, run_id, trace_id, name), (start, end) in zip(got, runs, spans, strict=True):
        assert body[start:end] == raw
        assert r.body == (raw if run_id else with_id(raw, str(r.id)))
        assert (str(r.trace_id), r.name) == (trace_id.lower(), name)
        assert run_id is None or str(r.id) == run_id.lower()
        assert strict_loads(r.body.decode()) == strict_loads(
            raw.decode() if run_id else with_id(raw, str(r.id)).decode()
        )


# Pieces of JSON and of hostile input to build bodies from. TRICKY_TOKENS reach the bugs listed in
# REGRESSIONS above; they have a property test of their own.
# fmt: off
SOUP = [
    b"[", b"]", b"{", b"}", b",", b":", b" ", b"\n", b"\t", b"\r",
    b'"trace_id"', b'"name"', b'"id"', b'"inputs"', b'"outputs"', b'"metadata"', b'"x"', b'""',
    b'"' + TB + b'"', b'"' + TB.upper() + b'"', b"1", b"-0.5e3", b"01", b"1e400", b"true", b"null", b"tru",
    b'"\\u00e9"', b'"\\ud83d\\ude00"', b'"\\u0000"', b"\xc3\xa9", b"\xff", b"\x00", b"\x80", b"\xef\xbb\xbf",
    b"\\", b"NaN", b"-Infinity", b"/", b"\x7f",
    b"[" + RUN0, RUN0, b"," + RUN0 + b"]", b"[" + HEAD, b"[" + HEAD + b"}]",
]
TRICKY_TOKENS = [
    b"\x0b", b"\x0c", b'"', b'"a', b'"\xc0\x80"', b'"\xed\xa0\x80"', b'"\\udc00"', b'"\\ud800"',
    b"9" * 4301, b"1e9999999999999999999",
]
# fmt: on


def soup(tokens: list[bytes]):
    return st.lists(st.sampled_from(tokens), max_size=40).map(b"".join)


def mutated(tokens: list[bytes]):
    """A valid batch with a few tokens put in, swapped in, or bytes taken out."""

    @st.composite
    def build(draw) -> bytes:
        body = bytearray(draw(valid_batches())[0])
        for _ in range(draw(st.integers(1, 3))):
            pos = draw(st.integers(0, len(body)))
            op = draw(st.sampled_from(["insert", "replace", "delete"]))
            if op == "insert":
                body[pos:pos] = draw(st.sampled_from(tokens))
            elif op == "replace":
                body[pos : pos + 1] = draw(st.sampled_from(tokens))
            else:
                del body[pos : pos + draw(st.integers(1, 4))]
        return bytes(body)

    return build()


def check_any_body(body: bytes, chunks: list[bytes], max_run_bytes: int) -> None:
    """The splitter's contract for any input, fed whole and in ``chunks``: only RunError 400/413;
    a 400 only for what the oracle refuses; success only for what it accepts, with each run's exact
    bytes; and with the run limit out of reach, the same answer however the body is cut."""
    outcomes = []
    for feed in ([body], chunks):
        try:
            outcomes.append(split_all(feed, max_run_bytes=max_run_bytes))
        except RunError as e:
            assert e.status in (400, 413), (e.status, e.reason)
            outcomes.append(e.status)
    expected, ids = oracle(body)
    if max_run_bytes >= len(body):
        assert 413 not in outcomes
        assert [isinstance(o, list) for o in outcomes] == [expected == 201] * 2, (outcomes, ids)
    if 400 in outcomes:
        assert expected == 400, ids
    runs_lists = [o for o in outcomes if isinstance(o, list)]
    if runs_lists:
        assert expected == 201, ids
        spans = element_spans(body)
        assert all(e - s <= max_run_bytes for s, e in spans)
    for runs in runs_lists:
        assert [sent_bytes(r) for r in runs] == [body[s:e] for s, e in spans]
        for r, supplied in zip(runs, ids, strict=True):
            strict_loads(r.body.decode("utf-8"))
            assert supplied is None or str(r.id) == supplied


def _any_bodies(tokens: list[bytes]):
    return st.binary(max_size=200) | soup(tokens) | mutated(tokens)


def _tricky_bodies():
    """Mostly valid batches with a token that once reached a bug put in."""
    return mutated(TRICKY_TOKENS) | _any_bodies(SOUP + TRICKY_TOKENS)


@pytest.mark.property
@PROPERTY
@given(st.data())
def test_any_bytes_any_chunking(data):
    body = data.draw(_any_bodies(SOUP), label="body")
    chunks = data.draw(chunkings(body), label="chunks")
    check_any_body(body, chunks, max_run_bytes=1 << 40)


@pytest.mark.property
@PROPERTY
@given(st.data())
def test_any_bytes_with_a_small_run_limit(data):
    body = data.draw(_any_bodies(SOUP), label="body")
    chunks = data.draw(chunkings(body), label="chunks")
    check_any_body(body, chunks, max_run_bytes=64)


@pytest.mark.property
@FIND_ONLY
@given(st.data())
def test_any_bytes_with_the_known_bug_tokens(data):
    body = data.draw(_tricky_bodies(), label="body")
    chunks = data.draw(chunkings(body), label="chunks")
    check_any_body(body, chunks, max_run_bytes=1 << 40)


@pytest.mark.property
@FIND_ONLY
@given(st.data())
def test_run_limit_depends_only_on_run_sizes(data):
    body, runs, spans = data.draw(valid_batches().filter(lambda b: b[1]))
    chunks = data.draw(chunkings(body))
    largest = max(e - s for s, e in spans)
    got = split_all(chunks, max_run_bytes=largest)
    assert [sent_bytes(r) for r in got] == [raw for raw, *_ in runs]
    with pytest.raises(RunError) as e:
        split_all(chunks, max_run_bytes=largest - 1)
    assert e.value.status == 413
    assert e.value.index == next(i for i, (s, e_) in enumerate(spans) if e_ - s == largest)


def test_a_run_sent_with_its_own_id_first_keeps_its_bytes():
    """A client may send its id first and compact, exactly as the splitter writes the id it adds:
    such a run is kept as sent, and Run.id_added tells the two apart (a property test once failed
    on this draw, guessing from the bytes)."""
    own = str(uuid.uuid4())
    sent = b'{"id":"' + own.encode() + b'","name":"x","trace_id":"' + TB + b'"}'
    added = b'{"name":"x","trace_id":"' + TB + b'"}'
    got = split_all([b"[" + sent + b"," + added + b"]"])
    assert [(r.id_added, sent_bytes(r)) for r in got] == [(False, sent), (True, added)]
    assert got[0].body == sent and str(got[0].id) == own
    assert got[1].body == with_id(added, str(got[1].id))
