"""Ingestion and retrieval through the real server, each beside its storage floor.

The service side streams the body over a socket in 64 KB chunks (chunked transfer encoding) and
asserts every run was stored, so a broken path cannot look fast. The floor PUTs the same per-run
objects straight to MinIO with the service's own upload code at the service's concurrency, then
inserts the same rows in one statement: no HTTP, no parsing.
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
from handler.auth import OPEN_TENANT
from handler.db import RunRow
from handler.ingest import run_object_key
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


def test_create_batch_runs(benchmark, server, workload):
    name, heads, body, _ = workload
    chunks = split(body, CHUNK)

    cpu = CpuMeter(server.process.pid)

    def ingest():
        with cpu:
            response = server.client.post(chunks)
        assert response.status == 201, response.body
        assert len(response.json()["ids"]) == len(heads)

    benchmark.group = name
    benchmark.name = f"create_batch_runs_{name}"
    benchmark.pedantic(ingest, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    record(name, benchmark, len(body), len(heads), cpu)


def test_storage_floor(benchmark, loop, backends, settings, workload):
    name, heads, body, parts = workload
    store, db = backends

    def prepare():
        objects, rows = [], []
        for raw, (trace_id, run_name) in zip(parts, heads, strict=True):
            run_id = uuid.uuid4()
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
    benchmark.name = f"floor_{name}"
    benchmark.pedantic(
        floor,
        setup=prepare,
        rounds=ROUNDS,
        iterations=1,
        warmup_rounds=1,
    )
    record(f"floor_{name}", benchmark, len(body), len(heads), cpu)


GET_ROUNDS, GET_WARMUP = 200, 10


@pytest.fixture(scope="module", params=[10, 100])
def stored_runs(request, server, loop, backends):
    """Runs of the 10 KB or 100 KB workload's shape, posted in one batch, each with its size and
    a signed URL of its object (valid 15 minutes, longer than the GET benchmarks take)."""
    store, db = backends
    runs = make_runs(GET_ROUNDS + GET_WARMUP + 1, request.param, seed=request.param)
    response = server.client.post(split(encode(runs)[0], CHUNK))
    assert response.status == 201
    stored = []
    for run_id in response.json()["ids"]:
        key, size = loop.run_until_complete(db.find_run(OPEN_TENANT, uuid.UUID(run_id)))
        stored.append((run_id, size, store.signed_url("GET", key)))
    return f"{request.param}kb", stored


@pytest.fixture(params=["once", "again"])
def reads(request, stored_runs):
    """What a GET benchmark reads, in turn: every run once (the server has never read any of
    them, so each GET goes to S3), or one run again and again (from the server's cache after
    the first)."""
    size_name, stored = stored_runs
    if request.param == "once":
        return f"get_run_{size_name}", itertools.cycle(stored[1:]), stored[1][1]
    return f"get_run_{size_name}_cached", itertools.repeat(stored[0]), stored[0][1]


def http_get(host: str, port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection(host, port)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        data = response.read()
        assert response.status == 200, data[:200]
        return data
    finally:
        conn.close()


def test_get_run(benchmark, server, reads):
    name, targets, nbytes = reads
    cpu = CpuMeter(server.process.pid)

    def get():
        run_id, size, _ = next(targets)
        with cpu:
            data = http_get(server.client.host, server.client.port, f"/runs/{run_id}")
        assert len(data) == size

    benchmark.group = name
    benchmark.name = name
    benchmark.pedantic(get, rounds=GET_ROUNDS, iterations=1, warmup_rounds=GET_WARMUP)
    record(name, benchmark, nbytes, 1, cpu)


def test_bare_s3_get(benchmark, server, reads):
    """The floor for GET: the same objects straight from MinIO with the same plain HTTP client."""
    name, targets, nbytes = reads
    cpu = CpuMeter(server_pid=None)

    def get():
        _, size, url = next(targets)
        parts = urlsplit(url)
        with cpu:
            data = http_get(parts.hostname, parts.port, f"{parts.path}?{parts.query}")
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
