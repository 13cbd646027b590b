"""Long strings are checked by the splitter itself, not buffered whole by yajl (stream.py).

In process: a string past ``long_string_bytes`` must be judged exactly as yajl judges it whole,
whatever it holds (escapes, control characters, broken UTF-8, lone surrogates, quotes and
backslashes) and however the body is chunked; and yajl must be given only a bounded part of it.
"""

from __future__ import annotations

import json
import random

import pytest

from handler.base.errors import RunError
from handler.runs.splitter import LONG_STRING_BYTES, RunPart, RunSplitter
from tests.runs import TINY_PART, run, split, with_id
from tests.test_hostile_input import oracle

MIB = 1024 * 1024


def outcome(chunks: list[bytes], long_string_bytes: int, part_bytes: int = 0):
    """The runs' bytes (the generated ids put back as given), or (status, index) of the error."""
    splitter = Watched(1 << 40, 10**6, part_bytes=part_bytes, long_string_bytes=long_string_bytes)
    runs, parts = [], {}
    try:
        for items in [*(splitter.feed(chunk) for chunk in chunks), splitter.close()]:
            for item in items:
                if isinstance(item, RunPart):
                    parts.setdefault(id(item.run), []).append(item.data)
                else:
                    body = item.head + b"".join(parts.pop(id(item), [])) + item.body
                    runs.append(body.replace(str(item.id).encode(), b"<id>") if item.id_added else body)
    except RunError as e:
        return e.status, e.index
    return runs


# The bytes that steer string handling, valid and not: escapes of every kind, surrogate halves,
# raw control characters, quotes, backslashes, multi-byte UTF-8 whole and broken, braces.
VALID = [
    b"a",
    b"b c",
    b"}",
    b"{",
    b"]",
    b",",
    b":",
    b'\\"',
    b"\\\\",
    b"\\/",
    b"\\n",
    b"\\t",
    b"\\b",
    b"\\u00e9",
    b"\\u0000",
    b"\\ud83d\\ude00",
    b"\\uD83D\\uDE00",
    b"\x7f",
    b"\xc3\xa9",
    b"\xe4\xbd\xa0",
    b"\xf0\x9f\x98\x80",
    b"0123456789",
    b"  ",
]
PIECES = VALID + [
    b"\\ud83d",
    b"\\ude00",
    b"\\x",
    b"\\u12g4",
    b"\\u00",
    b"\\u0",
    b"\x01",
    b"\x1f",
    b"\xc3",
    b"\xa9",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"\xff",
    b'"',
    b"\\",
]


def hostile_string(rng: random.Random) -> bytes:
    pieces = VALID if rng.random() < 0.5 else PIECES  # half of them valid
    return b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 120)))


class Watched(RunSplitter):
    """Counts the string bytes checked by the splitter itself."""

    checked = 0

    def _check_string(self, content: bytes) -> None:
        Watched.checked += len(content)
        super()._check_string(content)


def test_long_strings_are_judged_as_yajl_judges_them_whole():
    """Strings checked here (a threshold of 40 bytes makes most strings long, but not the run's
    checked fields: a UUID is 36 bytes) against the same bodies parsed by yajl alone, chunked at
    random, held whole and in parts; and against the oracle of tests/test_hostile_input.py."""
    rng = random.Random(7)
    checked, Watched.checked = 0, 0
    for _ in range(1500):
        fields = []
        for k in range(rng.randint(1, 3)):
            raw = hostile_string(rng)
            if rng.random() < 0.2:
                fields.append(b'"k' + raw + b'":1')  # a long key
            else:
                fields.append(b'"f%d":{"s":"' % k + raw + b'"}')
        body = b'[{"trace_id":"6f1c0b52-7f59-4a3e-8d39-2c3b8f7f1a10","name":"x",' + b",".join(fields) + b"}]"
        chunks, pos = [], 0
        while pos < len(body):
            step = rng.randint(1, 40)
            chunks.append(body[pos : pos + step])
            pos += step
        expected = outcome(chunks, 0)
        for part_bytes in (0, TINY_PART):
            assert outcome(chunks, 40, part_bytes) == expected, (body, part_bytes)
        want = oracle(body)[0]
        assert (want == 201) == isinstance(expected, list), body
        checked += isinstance(expected, list)
    assert checked > 300  # enough valid bodies among them
    assert Watched.checked > 50_000  # and the splitter checked much of them itself


class CountingParser:
    """Stands in front of ijson's push parser and counts the bytes it is given."""

    def __init__(self, parser) -> None:
        self.parser, self.given = parser, 0

    def send(self, data: bytes) -> None:
        self.given += len(data)
        self.parser.send(data)

    def close(self) -> None:
        self.parser.close()


@pytest.mark.parametrize("text", ["y", "zh", "json"])
def test_a_long_string_is_not_given_to_yajl(text):
    """yajl holds the token it is in; it is given a bounded start of the string, not all of it,
    and the splitter holds about a part."""
    size = 60 * MIB if text == "y" else 20 * MIB  # (building the others takes long)
    if text == "y":
        value = "y" * size
    elif text == "zh":
        value = "你好世界，这是一个测试句子。" * (size // 84)  # \u escapes once dumped
    else:
        value = json.dumps({f"k{i}": {"v": '}"\\'} for i in range(size // 30)})
    big = run(name="big", inputs={"text": value, "after": "}"})
    body = json.dumps([big, run(name="b}")]).encode()
    splitter = RunSplitter(1 << 30, 10, part_bytes=8 * MIB)
    splitter._parser = CountingParser(splitter._parser)
    runs, parts, most = [], [], 0
    for chunk in split(body, 64 * 1024):
        for item in splitter.feed(chunk):
            (parts if isinstance(item, RunPart) else runs).append(item)
        most = max(most, splitter.buffered)
    runs += splitter.close()
    assert len(body) > size
    assert splitter._parser.given < 4 * LONG_STRING_BYTES + 1 * MIB
    assert most < 4 * 8 * MIB  # the head, a part or two being gathered, what yajl holds
    whole = runs[0].head + b"".join(p.data for p in parts) + runs[0].body
    assert whole == with_id(json.dumps(big).encode(), str(runs[0].id))
    assert json.loads(runs[1].body)["name"] == "b}"
