"""The splitter alone: boundaries, fidelity and validation, fed in every way a socket may cut a body."""

from __future__ import annotations

import json
import random
import uuid

import pytest

from handler.base.errors import RunError
from handler.runs.splitter import RunSplitter
from tests.runs import FIDELITY_RUN, batch, run, split, split_all, with_id


def test_runs_come_back_byte_for_byte_with_the_id_put_first():
    body = b"[" + FIDELITY_RUN + b" ,\n" + FIDELITY_RUN + b"]"
    runs = split_all([body])
    assert [r.index for r in runs] == [0, 1]
    for r in runs:
        assert r.body == with_id(FIDELITY_RUN, str(r.id))
        json.loads(r.body)  # still valid JSON


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_any_chunking_gives_the_same_runs(size):
    supplied = run(id=str(uuid.uuid4()))
    body = b"[" + FIDELITY_RUN + b"," + batch(supplied, run(name='}]{["x'))[1:]
    whole = split_all([body])
    cut = split_all(split(body, size))
    assert len(cut) == 3
    # Generated ids differ between the two feeds; everything after the id must not.
    assert [r.body.split(b",", 1)[1] for r in cut] == [r.body.split(b",", 1)[1] for r in whole]
    assert cut[0].body == with_id(FIDELITY_RUN, str(cut[0].id))
    assert str(cut[1].id) == supplied["id"] and cut[1].body == json.dumps(supplied).encode()


def test_random_chunking_matches_whole_feed():
    rng = random.Random(7)
    body = batch(*[run(inputs={"text": "x" * rng.randint(0, 300), "n": [1, {"}": "{"}]}) for _ in range(40)])
    expected = [r.body.split(b",", 1)[1] for r in split_all([body])]
    for _ in range(20):
        chunks, pos = [], 0
        while pos < len(body):
            step = rng.randint(1, 200)
            chunks.append(body[pos : pos + step])
            pos += step
        assert [r.body.split(b",", 1)[1] for r in split_all(chunks)] == expected


def test_supplied_id_is_used_and_body_untouched():
    supplied = str(uuid.uuid4())
    raw = json.dumps(run(id=supplied)).encode()
    (r,) = split_all([b"[" + raw + b"]"])
    assert str(r.id) == supplied and r.body == raw


def test_empty_array_gives_no_runs():
    assert split_all([b" [ ] "]) == []


T = b'"trace_id": "6f1c0b52-7f59-4a3e-8d39-2c3b8f7f1a10"'


@pytest.mark.parametrize(
    "body, status, index, words",
    [
        (b"", 400, None, "invalid JSON"),
        (b'{"a": 1}', 400, None, "array"),
        (b"5", 400, None, "array"),
        (b"[1]", 400, 0, "must be an object"),
        (b"[[]]", 400, 0, "must be an object"),
        (b'[{"name": "x"}]', 400, 0, "trace_id is required"),
        (b"[{" + T + b"}]", 400, 0, "name is required"),
        (b'[{"trace_id": "nope", "name": "x"}]', 400, 0, "trace_id must be a UUID"),
        (b'[{"trace_id": 5, "name": "x"}]', 400, 0, "trace_id must be a UUID"),
        (b'[{"id": "x", ' + T + b', "name": "x"}]', 400, 0, "id must"),
        (b"[{" + T + b', "name": 1}]', 400, 0, "name must be"),
        (b"[{" + T + b', "name": "\\u0000"}]', 400, 0, "NUL"),
        (b"[{" + T + b', "name": "x", "inputs": []}]', 400, 0, "inputs"),
        (b"[{" + T + b', "name": "x", "name": "y"}]', 400, 0, "duplicate"),
        (b"[{" + T + b', "name": "x"}, {"a": }]', 400, 1, "invalid JSON"),
        (b"[{" + T + b', "name": "x"}', 400, None, "invalid JSON"),
        (b"[] []", 400, None, "invalid JSON"),
        (b"[NaN]", 400, 0, "run 0 must be an object"),
        (b'["\xff"]', 400, 0, "run 0 must be an object"),
    ],
)
def test_rejections_name_the_run_and_reason(body, status, index, words):
    for chunks in ([body], split(body, 1)):
        with pytest.raises(RunError) as e:
            split_all(chunks)
        assert e.value.status == status
        assert e.value.index == index
        assert words in e.value.reason


def test_run_size_limit_is_checked_while_the_run_streams_in():
    splitter = RunSplitter(max_run_bytes=1000, max_runs=10)
    splitter.feed(b"[{" + T + b', "name": "')
    with pytest.raises(RunError) as e:
        for _ in range(100):
            splitter.feed(b"x" * 100)  # the run never ends; the limit must still bite
    assert e.value.status == 413 and e.value.index == 0


def test_run_count_limit():
    with pytest.raises(RunError) as e:
        split_all([batch(*[run() for _ in range(4)])], max_runs=3)
    assert e.value.status == 413 and e.value.index == 3


def test_nesting_deeper_than_the_limit_is_refused_early():
    splitter = RunSplitter(max_run_bytes=1 << 30, max_runs=10, max_depth=64)
    splitter.feed(b"[{" + T + b', "name": "x", "inputs": {"a": ' + b"[" * 61)  # depth 64: fine
    with pytest.raises(RunError) as e:
        splitter.feed(b"[" * 100_000)
    assert e.value.status == 400 and "deeper than 64" in e.value.reason and e.value.index == 0


@pytest.mark.parametrize("start", [b'["', b"[1", b'"', b"1", b"[{" + T + b', "name": "x"}, "'])
def test_a_token_between_runs_is_refused_before_it_is_buffered(start):
    """Strings and numbers are never runs: refused at once, however long they go on."""
    splitter = RunSplitter(max_run_bytes=1 << 30, max_runs=10)
    with pytest.raises(RunError) as e:
        splitter.feed(start)
        for _ in range(1000):
            splitter.feed(b"1" * 1000)
    assert e.value.status == 400
    assert splitter._unfed == b"" and splitter._pending == b""  # nothing held


def test_long_names_are_refused():
    body = b"[{" + T + b', "name": "' + b"n" * 1025 + b'"}]'
    with pytest.raises(RunError) as e:
        split_all([body])
    assert e.value.status == 400 and "longer than 1024" in e.value.reason


class CountingParser:
    """Stands in front of ijson's push parser and counts what it is given."""

    def __init__(self, parser) -> None:
        self.parser, self.sends = parser, 0

    def send(self, data: bytes) -> None:
        self.sends += 1
        self.parser.send(data)

    def close(self) -> None:
        self.parser.close()


def test_a_string_full_of_braces_goes_to_the_parser_in_a_few_pieces():
    """JSON kept as a string has a "}" every few bytes. Cut there, yajl would re-read the string
    from its start on every piece: quadratic (a 200 KB string took 3 s of CPU)."""
    inner = json.dumps({f"k{i}": {"v": i} for i in range(8000)})
    body = batch(run(outputs={"text": inner, "after": "}"}), run(name="b}"))
    splitter = RunSplitter(1 << 30, 10)
    splitter._parser = CountingParser(splitter._parser)
    runs = []
    for chunk in split(body, 64 * 1024):
        runs += splitter.feed(chunk)
    runs += splitter.close()
    assert [json.loads(r.body)["outputs"]["text"] for r in runs[:1]] == [inner]
    assert json.loads(runs[1].body)["name"] == "b}"
    assert body.count(b"}") > 8000
    assert splitter._parser.sends < 40


def test_random_strings_of_braces_quotes_and_backslashes_split_exactly():
    """Strings made of the bytes that steer the splitter ("}" ends pieces, a quote after an even
    run of backslashes ends a string), escaped or raw UTF-8, cut into 1-30 byte chunks: every run
    comes back as exactly its element, held whole and in parts alike (split_all checks both)."""
    rng = random.Random(11)
    alphabet = ["}", '"', "\\", "{", "]", "[", ",", "a", " ", "é", "\U0001f600", ":", "\n"]

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))

    def value(depth: int = 0):
        pick = rng.random()
        if depth > 3 or pick < 0.4:
            return text()
        if pick < 0.7:
            return {text()[:5]: value(depth + 1) for _ in range(rng.randint(0, 4))}
        return [value(depth + 1) for _ in range(rng.randint(0, 4))]

    for _ in range(500):
        runs = [run(name=text(), inputs={"v": value()}) for _ in range(rng.randint(1, 4))]
        elements = [json.dumps(r, ensure_ascii=rng.random() < 0.5).encode() for r in runs]
        body = b"[" + b",".join(elements) + b"]"
        chunks, pos = [], 0
        while pos < len(body):
            step = rng.randint(1, 30)
            chunks.append(body[pos : pos + step])
            pos += step
        runs_back = split_all(chunks)
        assert [r.body for r in runs_back] == [
            with_id(e, str(r.id)) for e, r in zip(elements, runs_back, strict=True)
        ]
