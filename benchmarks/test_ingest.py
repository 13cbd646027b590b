"""Ingestion and retrieval through the real server, each beside its storage floor.

The service side streams the body over a socket in 64 KB chunks (chunked transfer encoding) and
asserts every run was stored, so a broken path cannot look fast. It runs twice: with segments (the
default) and with ``SEGMENT_BYTES=0`` (one object per run, ``_per_run``), in the same session.

The floors use the service's own upload code at the service's concurrency, then insert the same
rows in one statement: no HTTP, no parsing. The bytes floor PUTs the body's bytes as
``SEGMENT_BYTES`` objects -- what storing those bytes costs at all; the per-run floor PUTs one
object per run, the old layout's reference.
"""

from __future__ import annotations

import asyncio
import gc
import http.client
import itertools
import uuid
from urllib.parse import urlsplit

import pytest

from benchmarks.conftest import CpuMeter, record
from benchmarks.workloads import WORKLOADS, encode, make_runs
from handler.runs.ingest import run_object_key
from handler.server.auth import OPEN_TENANT
from handler.store.rows import RunRow
from handler.store.segments import segment_key
from tests.runs import split, with_id

ROUNDS = 7
CHUNK = 64 * 1024


@pytest.fixture(scope="module", params=list(WORKLOADS))
def workload(request):
    """(name, [(trace_id, name)] per run, body, each run's bytes). The run dicts are dropped and
    the rest frozen out of the garbage collector, so this process's heap does not slow the floor."""
    runs = WORKLOADS[request.param]()
    body, parts = encode(runs)
    heads = [(uuid.UUID(run["trace_id"]), run["name"]) for run in runs]
    del runs
    gc.collect()
    gc.freeze()
    return request.param, heads, body, parts


LAYOUTS = ["segments", "per_run"]


def suffix(layout: str) -> str:
    return "" if layout == "segments" else f"_{layout}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_create_batch_runs(benchmark, server, unpacked_server, backends, loop, workload, layout):
    name, heads, body, _ = workload
    srv = server if layout == "segments" else unpacked_server
    chunks = split(body, CHUNK)
    cpu = CpuMeter(srv.process.pid)
    ids: list[str] = []

    def ingest():
        with cpu:
            response = srv.client.post(chunks)
        assert response.status == 201, response.body
        ids[:] = response.json()["ids"]
        assert len(ids) == len(heads)

    benchmark.group = name
    benchmark.name = f"create_batch_runs_{name}{suffix(layout)}"
    benchmark.pedantic(ingest, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    _, db = backends

    async def objects_of_last_batch() -> int:
        stored = await asyncio.gather(*(db.find_run(OPEN_TENANT, uuid.UUID(i)) for i in ids))
        return len({run.location.key for run in stored})

    benchmark.extra_info["objects"] = loop.run_until_complete(objects_of_last_batch())
    record(f"{name}{suffix(layout)}", benchmark, len(body), len(heads), cpu)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_storage_floor(benchmark, loop, backends, settings, workload, layout):
    name, heads, body, parts = workload
    store, db = backends

    def prepare():
        ids = [uuid.uuid4() for _ in heads]
        if layout == "segments":  # the body's bytes, in SEGMENT_BYTES objects
            size = settings.segment_bytes
            objects = [(segment_key(OPEN_TENANT), body[i : i + size]) for i in range(0, len(body), size)]
            rows, at = [], 1  # each run's place in the body: after "[", runs joined by ", "
            for run_id, raw, (trace_id, run_name) in zip(ids, parts, heads, strict=True):
                key = objects[at // size][0]
                rows.append(RunRow(run_id, trace_id, run_name, key, len(raw), object_offset=at % size))
                at += len(raw) + 2
        else:  # one object per run, as the service stores them with SEGMENT_BYTES=0
            objects, rows = [], []
            for run_id, raw, (trace_id, run_name) in zip(ids, parts, heads, strict=True):
                stored = with_id(raw, str(run_id))
                key = run_object_key(OPEN_TENANT, run_id)
                objects.append((key, stored))
                rows.append(RunRow(run_id, trace_id, run_name, key, len(stored)))
        return (objects, rows), {}

    async def put_all(objects, rows):
        slots = asyncio.Semaphore(settings.upload_concurrency)

        async def put(key, data):
            async with slots:
                await store.put(key, data)

        await asyncio.gather(*(put(key, data) for key, data in objects))
        await db.write_batch(OPEN_TENANT, rows)

    cpu = CpuMeter(server_pid=None)

    def floor(objects, rows):
        with cpu:
            loop.run_until_complete(put_all(objects, rows))

    benchmark.group = name
    benchmark.name = f"floor_{name}{suffix(layout)}"
    benchmark.pedantic(floor, setup=prepare, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    record(f"floor_{name}{suffix(layout)}", benchmark, len(body), len(heads), cpu)


GET_ROUNDS, GET_WARMUP = 200, 10


@pytest.fixture(scope="module", params=[10, 100])
def stored_runs(request, server, unpacked_server, loop, backends):
    """Runs of the 10 KB or 100 KB workload's shape, posted in one batch to each layout's server:
    packed in segments, and alone (``SEGMENT_BYTES=0``). Each with its size, and a signed URL and
    Range header of its bytes in S3 (valid 15 minutes, longer than the GET benchmarks take)."""
    store, db = backends
    runs = make_runs(GET_ROUNDS + GET_WARMUP + 1, request.param, seed=request.param)
    body = split(encode(runs)[0], CHUNK)
    stored = {}
    for layout, srv in (("packed", server), ("alone", unpacked_server)):
        response = srv.client.post(body)
        assert response.status == 201
        found = []
        for run_id in response.json()["ids"]:
            run = loop.run_until_complete(db.find_run(OPEN_TENANT, uuid.UUID(run_id)))
            key, offset = run.location
            span = {} if offset is None else {"Range": f"bytes={offset}-{offset + run.size - 1}"}
            found.append((run_id, run.size, store.signed_url("GET", key), span))
        stored[layout] = (srv, found)
    return f"{request.param}kb", stored


@pytest.fixture(params=["packed", "alone"])
def layout(request):
    return request.param


@pytest.fixture(params=["once", "again"])
def reads(request, stored_runs, layout):
    """What a GET benchmark reads, in turn: every run once (the server has never read any of
    them, so each GET goes to S3), or one run again and again (from the server's cache after
    the first)."""
    size_name, stored = stored_runs
    srv, found = stored[layout]
    alone = "_alone" if layout == "alone" else ""
    if request.param == "once":
        return srv, f"get_run_{size_name}{alone}", itertools.cycle(found[1:]), found[1][1]
    return srv, f"get_run_{size_name}_cached{alone}", itertools.repeat(found[0]), found[0][1]


def http_get(host: str, port: int, path: str, headers: dict | None = None) -> bytes:
    conn = http.client.HTTPConnection(host, port)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        assert response.status == (206 if headers else 200), data[:200]
        return data
    finally:
        conn.close()


def test_get_run(benchmark, reads):
    srv, name, targets, nbytes = reads
    cpu = CpuMeter(srv.process.pid)

    def get():
        run_id, size, _, _ = next(targets)
        with cpu:
            data = http_get(srv.client.host, srv.client.port, f"/runs/{run_id}")
        assert len(data) == size

    benchmark.group = name
    benchmark.name = name
    benchmark.pedantic(get, rounds=GET_ROUNDS, iterations=1, warmup_rounds=GET_WARMUP)
    record(name, benchmark, nbytes, 1, cpu)


def test_bare_s3_get(benchmark, reads):
    """The floor for GET: the same bytes straight from MinIO with the same plain HTTP client (a
    ranged GET of the segment for a packed run)."""
    _, name, targets, nbytes = reads
    cpu = CpuMeter(server_pid=None)

    def get():
        _, size, url, span = next(targets)
        parts = urlsplit(url)
        with cpu:
            data = http_get(parts.hostname, parts.port, f"{parts.path}?{parts.query}", span)
        assert len(data) == size

    benchmark.group = name
    benchmark.name = f"floor_{name}"
    benchmark.pedantic(get, rounds=GET_ROUNDS, iterations=1, warmup_rounds=GET_WARMUP)
    record(f"floor_{name}", benchmark, nbytes, 1, cpu)


def test_http_hop(benchmark, server):
    """Not a workload: GET /health, one request to the server with nothing behind it. It is the
    share of a GET that no storage or database work can remove."""
    cpu = CpuMeter(server.process.pid)

    def get():
        with cpu:
            data = http_get(server.client.host, server.client.port, "/health")
        assert data

    benchmark.group = "get_health"
    benchmark.name = "http_hop_health"
    benchmark.pedantic(get, rounds=GET_ROUNDS, iterations=1, warmup_rounds=GET_WARMUP)
    record(
        "http_hop_health", benchmark, len(http_get(server.client.host, server.client.port, "/health")), 1, cpu
    )
