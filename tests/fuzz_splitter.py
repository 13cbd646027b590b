"""Coverage-guided fuzzing of RunSplitter with atheris (not a pytest module: no ``test_`` prefix).

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz_splitter.py -runs=100000
    .venv/bin/python tests/fuzz_splitter.py -max_total_time=300 -max_len=4096 corpus/

Any body, cut into chunks chosen by the fuzzer, must end in RunError 400/413 or in runs whose bytes
are exactly the array's elements (with ``{"id":"<uuid>",`` put first when the run had none), each
strict RFC 8259 JSON. Whatever jsonbytes.surely_valid takes (a multipart part checked in C) ijson
must take too. And the service's splitter (FastSplitter, fastpath.py) must end exactly as
RunSplitter (every byte through ijson's events, the old path) does: the same runs, fields, ids and
query columns (under each query setting), or the same error, word for word. Anything else --
another exception, a 5xx, a run that is not its element, a difference -- is a crash that
libFuzzer reports with the input that caused it.

It found, within seconds, the bugs now kept as REGRESSIONS in tests/test_hostile_input.py.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import tempfile
import uuid

import atheris

with atheris.instrument_imports():
    from handler.base.errors import RunError
    from handler.query import extract
    from handler.query.extract import query_columns
    from handler.runs.fastpath import FastSplitter
    from handler.runs.jsonbytes import ijson_error, surely_valid
    from handler.runs.splitter import RunSplitter

HEADER = b'[{"trace_id":"6f1c0b52-7f59-4a3e-8d39-2c3b8f7f1a10","name":"x",'
SEPARATOR = re.compile(rb"[ \t\n\r]*")
GENERATED_ID = re.compile(rb'\{"id":"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",')


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def strict_json(data: bytes) -> None:
    text = data.decode("utf-8")  # strict
    json.loads(text, parse_constant=_no_constant, parse_int=str, parse_float=str)


def sent_bytes(body: bytes, generated: bool) -> bytes:
    if not generated:
        return body
    match = GENERATED_ID.match(body)
    assert match, body[:80]
    return b"{" + body[match.end() :]


def check_elements(body: bytes, runs) -> None:
    """The runs are the array's elements, in order, with only JSON separators between them."""
    pos = SEPARATOR.match(body).end()
    assert body[pos : pos + 1] == b"[", body[:80]
    pos = SEPARATOR.match(body, pos + 1).end()
    for i, run in enumerate(runs):
        assert run.index == i
        if i:
            assert body[pos : pos + 1] == b",", (i, body[pos : pos + 20])
            pos = SEPARATOR.match(body, pos + 1).end()
        # As sent when the run had an id, else with the generated one put first.
        raw = sent_bytes(run.body, run.id_added)
        assert body.startswith(raw, pos), (i, raw[:80], body[pos : pos + 80])
        pos = SEPARATOR.match(body, pos + len(raw)).end()
        strict_json(run.body)
    assert body[pos : pos + 1] == b"]", body[pos : pos + 20]
    assert SEPARATOR.match(body, pos + 1).end() == len(body), f"accepted trailing data {body[pos:][:40]!r}"


def split_all(chunks: list[bytes], max_run_bytes: int, kind=FastSplitter):
    counter = itertools.count(1)  # the same ids from both splitters
    splitter = kind(max_run_bytes, 1000, 64, new_id=lambda: uuid.UUID(int=next(counter)))
    runs = []
    for chunk in chunks:
        runs += splitter.feed(chunk)
    return runs + splitter.close()


def outcome(chunks: list[bytes], max_run_bytes: int, kind) -> tuple:
    try:
        runs = split_all(chunks, max_run_bytes, kind)
    except RunError as e:
        return "error", e.status, e.index, e.reason
    return "runs", [
        (*(getattr(r, name) for name in r.__slots__ if name != "tap"), query_columns(r)) for r in runs
    ]


QUERY_SETTINGS = [(0, 0), (8, 0), (0, 2), (8, 2)]  # (SEARCH_TEXT_CHARS, IO_KEYS)


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    with_header = fdp.ConsumeBool()
    small_limit = fdp.ConsumeBool()
    # The query columns' settings: search text and inputs'/outputs' keys tap more of each run.
    extract.configure(*QUERY_SETTINGS[fdp.ConsumeIntInRange(0, len(QUERY_SETTINGS) - 1)])
    cuts = [fdp.ConsumeIntInRange(1, 64) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    body = (HEADER if with_header else b"") + fdp.ConsumeBytes(fdp.remaining_bytes())
    chunks, pos = [], 0
    for size in cuts:
        chunks.append(body[pos : pos + size])
        pos += size
    chunks.append(body[pos:])
    limit = 256 if small_limit else 1 << 30
    new, old = outcome(chunks, limit, FastSplitter), outcome(chunks, limit, RunSplitter)
    if new != old:
        raise AssertionError(f"the fast path differs from RunSplitter: {new!r:.300} != {old!r:.300}")
    # A multipart payload part that simdjson is sure of is taken without asking ijson.
    value = body[len(HEADER) :] if with_header else body
    if surely_valid(value) and ijson_error(value) is not None:
        raise AssertionError(f"surely_valid takes what ijson refuses: {value!r:.300}")
    try:
        runs = split_all(chunks, limit)
    except RunError as e:
        if e.status not in (400, 413) or (e.status == 413 and not small_limit):
            raise AssertionError(f"RunError {e.status}: {e.reason}") from e
        return
    check_elements(body, runs)


# JSON and hostile tokens for libFuzzer's mutations: the parser is C, uninstrumented, so coverage
# alone does not lead the fuzzer into strings, escapes and numbers.
TOKENS = [
    b"[", b"]", b"{", b"}", b",", b":", b'"', b'""', b"\\", b"\\u", b"\\ud83d\\ude00", b"\\ud800", b"\\udc00",
    b"\\u0000", b'"trace_id":', b'"name":', b'"id":', b'"inputs":{', b'"outputs":', b'"metadata":',
    b'"tags":[', b'"extra":{"metadata":{', b'"usage_metadata":{"input_tokens":', b'"llm_output":', b"0.5",
    b'"6f1c0b52-7f59-4a3e-8d39-2c3b8f7f1a10"', b"true", b"false", b"null", b"-0.5e-3", b"1e400",
    b"9" * 40, b"e1000000000000000000", b"NaN", b"Infinity", b"\xc3\xa9", b"\xe2\x98\x83",
    b"\xf0\x9f\x98\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xef\xbb\xbf", b"\x0b", b"\x0c",
    b" ", b"\t", b"\n", b"\r", b"\x00", b"\x7f",
]  # fmt: skip


def write_dictionary() -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".dict", delete=False) as f:
        for i, token in enumerate(TOKENS):
            f.write(f't{i}="' + "".join(f"\\x{b:02x}" for b in token) + '"\n')
    return f.name


def main() -> None:
    argv = list(sys.argv)
    if not any(arg.startswith("-dict=") for arg in argv):
        argv.append(f"-dict={write_dictionary()}")
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
