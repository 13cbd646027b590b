"""Building batches for the tests."""

from __future__ import annotations

import json
import uuid

from handler.base.errors import RunError
from handler.runs.fastpath import FastSplitter
from handler.runs.schema import Run
from handler.runs.splitter import RunPart, RunSplitter
from tests.client import HttpClient

# Values a float round trip would change, escapes, non-ASCII, odd key order and nesting.
FIDELITY_RUN = (
    b'{"trace_id": "8f0d6a6e-3b7c-4a53-9f1e-2d6c1b0a9e11",  '
    b'"name":"fidelity \\u00e9 \xc3\xa9 \\ud83d\\ude00",\n'
    b' "zeta": 1, "alpha": 2,\n'
    b' "inputs": {"big": 123456789012345678901234567890, "over53": 9007199254740993,'
    b' "tenth": 0.1, "huge": 1e400, "tiny": 1E-400, "neg": -0.0, "exp": 2.50e+3},\n'
    b' "outputs": {"nested": [[1, [2, [3, {"deep": [null, true, false]}]]], []],'
    b' "escapes": "quote \\" backslash \\\\ slash \\/ tab \\t nl \\n ctl \\u0001 brace } ]"},\n'
    b' "metadata": {"\xe2\x98\x83": "snowman", "": "empty key", "b": {}, "a": []},\n'
    b' "extra_field": {"kept": "as sent"}}'
)


def run(**fields) -> dict:
    body = {
        "trace_id": str(uuid.uuid4()),
        "name": "test run",
        "inputs": {"question": "what?"},
        "outputs": {"answer": "that"},
        "metadata": {"model": "m", "tokens": 3},
    }
    body.update(fields)
    return body


def batch(*runs: dict) -> bytes:
    return json.dumps(list(runs)).encode()


def with_id(raw_run: bytes, run_id: str) -> bytes:
    """What GET returns for a run posted without an id: the same bytes with the id put first."""
    return b'{"id":"' + run_id.encode() + b'",' + raw_run[1:]


def split(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def list_trace(http: HttpClient, trace_id: str, limit: int = 100, headers: dict | None = None) -> list[dict]:
    """Every run of a trace, page by page; checks that each page but the last is full."""
    runs, cursor = [], ""
    while True:
        response = http.get(f"/runs?trace_id={trace_id}&limit={limit}{cursor}", headers=headers)
        assert response.status == 200, response.body
        page = response.json()
        runs += page["runs"]
        if page["next_cursor"] is None:
            return runs
        assert len(page["runs"]) == limit
        cursor = f"&cursor={page['next_cursor']}"


# Parts this small make the splitter hand out nearly every run of the test bodies in parts, as it
# does with runs of many megabytes.
TINY_PART = 48


def split_all(chunks, max_run_bytes: int = 1 << 40, max_runs: int = 10**6, max_depth: int = 512) -> list[Run]:
    """Split a body fed in ``chunks`` four times: by the splitter the service uses (FastSplitter)
    and by RunSplitter, its judge of what it is not sure of (fastpath.py), each holding every run
    whole and handing runs out in parts of TINY_PART bytes. All must end alike: the same runs,
    byte for byte (the generated ids aside), or a RunError with the same status for the same run;
    the two splitters with the same message too. The RunError is raised."""
    chunks = list(chunks)
    results = {
        (kind, size): _split(kind, chunks, max_run_bytes, max_runs, max_depth, size)
        for kind in (FastSplitter, RunSplitter)
        for size in (0, TINY_PART)
    }
    whole = results[FastSplitter, 0]
    for (kind, size), result in results.items():
        assert _outcome(result) == _outcome(whole), (kind.__name__, size, result, whole)
        if size == 0 and isinstance(result, RunError):
            assert result.reason == whole.reason, (result.reason, whole.reason)
    if isinstance(whole, RunError):
        raise whole
    return whole


def _split(kind, chunks, max_run_bytes, max_runs, max_depth, part_bytes) -> list[Run] | RunError:
    splitter = kind(max_run_bytes, max_runs, max_depth, part_bytes=part_bytes)
    runs, parts = [], {}
    try:
        for items in [*(splitter.feed(chunk) for chunk in chunks), splitter.close()]:
            for item in items:
                if isinstance(item, RunPart):
                    parts.setdefault(id(item.run), []).append(item.data)
                    continue
                item.body = item.head + b"".join(parts.pop(id(item), [])) + item.body
                assert len(item.body) == item.size
                runs.append(item)
    except RunError as e:
        return e
    return runs


def _outcome(result: list[Run] | RunError) -> tuple:
    if isinstance(result, RunError):
        return "refused", result.status, result.index
    return "runs", [(r.index, sent_bytes(r)) for r in result]


def sent_bytes(r: Run) -> bytes:
    """The element as the client sent it: Run.body without the id the splitter put first, when
    the splitter says it did (Run.id_added) -- never guessed from the bytes: a client may send its
    own id first, compact, exactly as the splitter would write it."""
    if not r.id_added:
        return r.body
    prefix = b'{"id":"' + str(r.id).encode() + b'",'
    assert r.body.startswith(prefix), r.body[:80]
    return b"{" + r.body[len(prefix) :]
