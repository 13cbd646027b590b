"""The fast path against RunSplitter: the same runs, parts and errors, word for word, for any body,
however it is cut, in every mode the service uses (fastpath.py). tests/runs.py's split_all compares
them too, for every case of test_hostile_input.py and test_stream.py; here the settings vary."""

from __future__ import annotations

import decimal
import itertools
import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.workloads import WORKLOADS, encode
from handler.base.errors import RunError
from handler.query import extract
from handler.query.extract import query_columns
from handler.runs import fastpath
from handler.runs.fastpath import FastSplitter
from handler.runs.jsonbytes import ijson_error, long_exponent, surely_valid
from handler.runs.merge import object_fields
from handler.runs.splitter import RunPart, RunSplitter
from tests.runs import run, split_all
from tests.test_hostile_input import (
    ACCEPTED,
    FIND_ONLY,
    PROPERTY,
    REGRESSIONS,
    REJECTED,
    SOUP,
    TRICKY_TOKENS,
    _any_bodies,
    _tricky_bodies,
    chunkings,
    valid_batches,
)

# Settings the service uses, and small ones that put every limit within reach of short bodies.
SETTINGS = [
    {},
    {"max_run_bytes": 300},
    {"max_runs": 2},
    {"max_depth": 6},
    {"part_bytes": 40},
    {"long_string_bytes": 30},
    {"nested": True},
    {"required": (), "new_id": None, "noun": "patch", "nested": True},
    {"label": "post.x", "max_runs": 1},
]


def outcome(kind, chunks: list[bytes], settings: dict) -> tuple:
    """Everything a splitter hands out, in order, or its error; ids drawn from a counter so that
    both splitters' generated ids agree."""
    counter = itertools.count(1)
    args = {"max_run_bytes": 1 << 30, "max_runs": 1000, "new_id": lambda: uuid.UUID(int=next(counter))}
    splitter = kind(**(args | settings))
    out = []
    try:
        for items in [*(splitter.feed(chunk) for chunk in chunks), splitter.close()]:
            for item in items:
                if isinstance(item, RunPart):
                    out.append(("part", item.run.index, item.data))
                else:
                    fields = {name: getattr(item, name) for name in item.__slots__ if name != "tap"}
                    fields["query"] = query_columns(item)
                    out.append(("run", fields))
    except RunError as e:
        return "error", e.status, e.index, e.reason, out
    return "ok", out, splitter.rest


def assert_same(chunks: list[bytes], settings: dict) -> None:
    new, old = outcome(FastSplitter, chunks, settings), outcome(RunSplitter, chunks, settings)
    if new[0] == "error":
        # Before an error, what was handed out may differ in timing (the fast path can find a run's
        # end a chunk later); the error itself may not.
        assert old[:4] == new[:4], (old[:4], new[:4])
    else:
        assert old == new


def cuts(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)] or [b""]


CASES = [case.values[0] for case in (*REJECTED, *ACCEPTED, *REGRESSIONS)]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(s) or "defaults")
def test_hostile_cases_in_every_setting(settings):
    for body in CASES:
        for size in (len(body) or 1, 7, 64):
            assert_same(cuts(body, size), settings)


@pytest.mark.property
@given(st.data())
@PROPERTY
def test_any_body_any_setting(data):
    body = data.draw(_any_bodies(SOUP), label="body")
    chunks = data.draw(chunkings(body), label="chunks")
    assert_same(chunks, data.draw(st.sampled_from(SETTINGS), label="settings"))


@pytest.mark.property
@given(st.data())
@FIND_ONLY
def test_tricky_bodies_any_setting(data):
    body = data.draw(_tricky_bodies(), label="body")
    chunks = data.draw(chunkings(body), label="chunks")
    assert_same(chunks, data.draw(st.sampled_from(SETTINGS), label="settings"))


@pytest.mark.property
@given(st.data())
@PROPERTY
def test_valid_batches_any_setting(data):
    body = data.draw(valid_batches(), label="batch")[0]
    chunks = data.draw(chunkings(body), label="chunks")
    assert_same(chunks, data.draw(st.sampled_from(SETTINGS), label="settings"))


@pytest.mark.property
@given(st.data())
@PROPERTY
def test_a_value_simdjson_is_sure_of_is_one_ijson_takes(data):
    """check_json_value (multipart payload parts) takes what surely_valid takes without asking
    ijson: it must be nothing ijson refuses."""
    value = data.draw(_tricky_bodies() | valid_batches().map(lambda batch: batch[0]), label="value")
    value = data.draw(st.sampled_from([b"", b" ", b"\xef\xbb\xbf"]), label="before") + value
    if surely_valid(value):
        assert ijson_error(value) is None, value


def json_value(body: bytes) -> list:
    """The value as Python's json module reads it: objects as lists of pairs (repeated keys kept),
    numbers exact (Decimal)."""
    return json.loads(body, object_pairs_hook=list, parse_float=decimal.Decimal, parse_constant=str)


def assert_fields(body: bytes) -> None:
    fields = object_fields(body)
    assert [(k, json_value(raw.encode())) for k, raw in fields] == json_value(body)
    assert all(raw.encode() in body for _, raw in fields)  # as sent


@pytest.mark.property
@given(st.data())
@PROPERTY
def test_a_runs_fields_are_its_top_level_keys_and_their_values_as_sent(data):
    """A patch merges a run's top-level fields (merge.object_fields, msgspec): the keys in order,
    each with its value's bytes as sent."""
    body = data.draw(valid_batches(), label="batch")[0]
    splitter = RunSplitter(1 << 30, 1000)
    for item in [*splitter.feed(body), *splitter.close()]:
        assert_fields(item.body)


def test_fields_of_the_accepted_hostile_runs():
    for case in ACCEPTED:
        for item in split_all(cuts(case.values[0], 1 << 20)):
            assert_fields(item.body)


def test_what_simdjson_takes_and_ijson_does_not_is_screened():
    for value in [b"\xef\xbb\xbf{}", b"[0e1000000000000000000]", b"[1e-99999999999999999999]"]:
        assert ijson_error(value) is not None and not surely_valid(value)
    assert surely_valid(b' {"a": [1, -0.5e3, "\\ud83d\\ude00", null]} ') and not surely_valid(b"1e400")


def test_tricky_tokens_in_a_large_batch():
    """Each token once reached a bug; in the middle of a batch of ordinary runs, cut as a socket
    would, the fast path must hand over exactly there."""
    ordinary = [json.dumps(run(inputs={"text": "x" * 300, "n": [1, 2.5, None]})).encode() for _ in range(40)]
    for token in [*TRICKY_TOKENS, b"1e-99999999999999999999", b"0e1000000000000000000", b"1.5"]:
        bad = ordinary[20].replace(b'"n": [1,', b'"n": [' + token + b",")
        body = b"[" + b", ".join([*ordinary[:20], bad, *ordinary[21:]]) + b"]"
        for size in (100, 4096, 65536):
            assert_same(cuts(body, size), {})


@pytest.mark.parametrize("name", ["500_10kb", "5000_1kb"])
def test_ordinary_bodies_stay_on_the_fast_path(name):
    """A test that can fail: the benchmark bodies, in 64 KB chunks, never reach RunSplitter."""
    body, parts = encode(WORKLOADS[name]())
    splitter = FastSplitter(1 << 30, 10**6)
    runs = [r for i in range(0, len(body), 65536) for r in splitter.feed(body[i : i + 65536])]
    runs += splitter.close()
    assert splitter._slow is None
    assert [r.body.split(b",", 1)[1] for r in runs] == [p[1:] for p in parts]


def test_a_long_exponent_is_found():
    assert long_exponent(b'{"a":1e-' + b"9" * 18 + b"}")
    assert long_exponent(b'{"a":0.0E+' + b"1" * 18 + b"}")
    assert not long_exponent(b'{"a":1e-' + b"9" * 17 + b',"b":"6f1c0b52-7f59-4a3e-8d39"}')


def test_the_fast_path_takes_the_body_back_after_a_run_it_handed_over():
    """A run the fast path is not sure of (1e400: simdjson refuses it, ijson keeps it as a
    Decimal) is read by RunSplitter; the run after it is the fast path's again."""
    ordinary = [json.dumps(run(inputs={"text": "x" * 3000})).encode() for _ in range(30)]
    odd = ordinary[10].replace(b'"inputs": {', b'"inputs": {"huge": 1e400, ')
    body = b"[" + b", ".join([*ordinary[:10], odd, *ordinary[11:]]) + b"]"
    chunks = cuts(body, 16384)
    assert_same(chunks, {})
    splitter = FastSplitter(1 << 30, 1000)
    handed_over = []
    for chunk in chunks:
        splitter.feed(chunk)
        handed_over.append(splitter._slow is not None)
    assert any(handed_over) and not handed_over[-1]
    assert len(splitter.close()) == 0


def test_runs_handed_over_one_after_another_leave_the_rest_of_the_body_to_run_splitter():
    """From the second hand-over in a body RunSplitter keeps it; bodies where every third run, or
    every run, is odd (an integer past 64 bits, 1e400) come out as from RunSplitter alone, at any
    chunk size; a body whose one odd run came first is still taken back after it."""
    ordinary = [json.dumps(run(inputs={"text": "x" * 200, "n": [1, 2]})).encode() for _ in range(30)]
    odd = [r.replace(b'"n": [1,', b'"n": [123456789012345678901234567890, 1e400,') for r in ordinary]
    for every in (1, 3):
        mixed = [odd[i] if i % every == 0 else ordinary[i] for i in range(30)]
        body = b"[" + b", ".join(mixed) + b"]"
        for size in (97, 1000, 4096, len(body)):
            assert_same(cuts(body, size), {})
        splitter = FastSplitter(1 << 30, 1000)
        assert len([r for c in cuts(body, 1000) for r in splitter.feed(c)] + splitter.close()) == 30
        assert splitter._handovers == fastpath._KEEP_SLOW_AFTER and splitter._slow is not None
    body = b"[" + b", ".join([odd[0], *ordinary[1:]]) + b"]"
    splitter = FastSplitter(1 << 30, 1000)
    assert len([r for c in cuts(body, 1000) for r in splitter.feed(c)] + splitter.close()) == 30
    assert splitter._handovers == 1 and splitter._slow is None


QUERY_RUNS = [
    run(
        tags=["a", "b\u00e9", "x" * 300],
        extra={"metadata": {"user": "u1", "n": 3, "ok": True, "none": None, "f": 0.5, "d": {"x": 1}}},
        outputs={"usage_metadata": {"input_tokens": 10, "output_tokens": 5, "total_cost": 0.002}},
    ),
    run(outputs={"llm_output": {"token_usage": {"prompt_tokens": 7, "completion_tokens": 2}}, "text": "hi"}),
    run(outputs={"generations": [[{"message": {"kwargs": {"usage_metadata": {"input_tokens": 4}}}}]]}),
    run(extra={"metadata": {"usage_metadata": {"input_tokens": 1, "output_tokens": 2}, "k": "v"}}),
    run(outputs={"a": {"b": [1, 2, {"c": "d"}]}, "usage_metadata": {"total_tokens": 9}}, inputs={"q": "x"}),
]


# Runs written by hand: what json.dumps never writes. Floats whose text is not their repr (ijson
# gives the Decimal of the text: a cost of 2.50 is "2.50"), repeated keys (events give each, in
# order: the first wins), a NUL in a key, keys past IO_KEYS, a key longer than KV_KEY_CHARS.
_TRACE = b'{"trace_id":"6f1c0b52-7f59-4a3e-8d39-2c3b8f7f1a10","name":"x",'
_MANY = b",".join(b'"k%d":"v%d"' % (i, i) for i in range(40))
RAW_QUERY_RUNS = [
    _TRACE + b'"outputs":{"usage_metadata":{"input_tokens":1,"input_tokens":2}},'
    b'"extra":{"metadata":{"a":1,"a":"2"}}}',
    _TRACE + b'"outputs":{"usage_metadata":{"input_tokens":3,"total_cost":2.50}}}',
    _TRACE + b'"outputs":{"usage_metadata":{"total_cost":0.1000000000000000055511151231257827}}}',
    _TRACE + b'"extra":{"metadata":{"a\\u0000b":"v","c":"d\\u0000e"}}}',
    _TRACE
    + b'"inputs":{"q":"x","q":"y","n":1.50,"m":-0,"o":{"p":1},"a\\u0000":2,"l":[1]},"outputs":{"a":1}}',
    _TRACE + b'"inputs":{"' + b"k" * 300 + b'":"long key","k1":1,"k2":true,"k3":null,"k4":"v4","k5":"v5"}}',
    _TRACE + b'"outputs":{"k1":"v1","k2":"v2","k3":"v3","k4":"v4","usage_metadata":{"input_tokens":5}}}',
    # Objects with many keys, which tapwalk first asks for their path keys: none, one written with an
    # escape, one after a key that only starts like it, or a key that is a path key and a NUL.
    _TRACE + b'"outputs":{' + _MANY + b"}}",
    _TRACE + b'"outputs":{' + _MANY + b',"usage\\u005fmetadata":{"input_tokens":6}}}',
    _TRACE + b'"outputs":{' + _MANY + b',"usage_metadatax":{"input_tokens":7},"llm_output":{"usage":'
    b'{"input_tokens":8}}},"extra":{"metadata":{' + _MANY + b"}}}",
    _TRACE + b'"outputs":{' + _MANY + b',"usage_metadata\\u0000":{"input_tokens":9}}}',
]


@pytest.mark.parametrize("search_text_chars,io_keys", [(0, 0), (40, 0), (0, 3), (40, 3)])
def test_query_columns_are_the_same_on_both_paths(search_text_chars, io_keys):
    """The query columns (handler/query/extract.py) come from the Tap whichever path read the run:
    events.py's events, or tapwalk.py's walk of the simdjson document (a float reaching the Tap,
    or a repeated key in a walked object, makes the run RunSplitter's)."""
    bodies = [json.dumps(r).encode() for r in QUERY_RUNS] + RAW_QUERY_RUNS
    body = b"[" + b", ".join(bodies) + b"]"
    before = extract.SEARCH_TEXT_CHARS, extract.IO_KEYS
    extract.configure(search_text_chars, io_keys)
    try:
        for size in (len(body), 97, 4096):
            assert_same(cuts(body, size), {})
        got = [fields["query"] for _, fields in outcome(FastSplitter, [body], {})[1]]
        assert got[1][2] == 7  # prompt_tokens
        assert got[5][2] == 1 and got[6][7] == "2.50"  # the first of two keys; the cost's text
        assert [row[2] for row in got[-4:]] == [None, 6, 8, None]
        if io_keys:
            assert json.loads(got[11][10]) == {"k1": "v1", "k2": "v2", "k3": "v3"}  # outputs_kv
    finally:
        extract.configure(*before)


def test_whitespace_after_a_run_at_the_end_of_the_input_is_not_the_run():
    """msgspec takes a value followed by whitespace alone as whole: the run still ends at its "}"
    (make test once found this: a run's body with a space after it)."""
    raw = json.dumps(run()).encode()
    for chunks in ([b"[" + raw + b" ", b"]"], [b"[" + raw + b"\n\t ", b",", raw + b"]"]):
        assert_same(chunks, {})
        assert outcome(FastSplitter, chunks, {})[1][0][1]["body"].endswith(b"}")


def test_fast_splitter_0_gives_every_body_to_run_splitter(monkeypatch):
    from handler.runs.readers import ArrayReader
    from handler.server.config import Settings

    monkeypatch.setenv("FAST_SPLITTER", "0")
    settings = Settings.from_env()
    assert settings.fast_splitter is False
    try:
        fastpath.configure(settings.fast_splitter)
        assert type(ArrayReader(None, settings)._splitter) is RunSplitter
        assert type(fastpath.splitter(1 << 20, 10)) is RunSplitter
    finally:
        fastpath.configure(True)
    assert type(ArrayReader(None, settings)._splitter) is FastSplitter
