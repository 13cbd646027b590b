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
import uuid
from urllib.parse import urlsplit

import pytest

from benchmarks.conftest import record
from benchmarks.workloads import WORKLOADS, encode
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

    def ingest():
        response = server.client.post(chunks)
        assert response.status == 201, response.body
        assert len(response.json()["ids"]) == len(heads)

    benchmark.group = name
    benchmark.name = f"create_batch_runs_{name}"
    benchmark.pedantic(ingest, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    record(name, benchmark, len(body), len(heads))


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

    benchmark.group = name
    benchmark.name = f"floor_{name}"
    benchmark.pedantic(
        lambda objects, rows: loop.run_until_complete(put_all(objects, rows)),
        setup=prepare,
        rounds=ROUNDS,
        iterations=1,
        warmup_rounds=1,
    )
    record(f"floor_{name}", benchmark, len(body), len(heads))


@pytest.fixture(scope="module", params=[10, 100])
def stored_run(request, server, loop, backends):
    """One run of the 10 KB or 100 KB workload, posted once, and a signed URL of its object (valid
    15 minutes, longer than the GET benchmarks take)."""
    store, db = backends
    runs = WORKLOADS[f"{'500_10kb' if request.param == 10 else '50_100kb'}"]()[:1]
    response = server.client.post(encode(runs)[0])
    assert response.status == 201
    (run_id,) = response.json()["ids"]
    key, size = loop.run_until_complete(db.find_run(OPEN_TENANT, uuid.UUID(run_id)))
    url = store.signed_url("GET", key)
    return f"{request.param}kb", run_id, size, url


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


def test_get_run(benchmark, server, stored_run):
    size_name, run_id, size, _ = stored_run

    def get():
        assert len(http_get(server.client.host, server.client.port, f"/runs/{run_id}")) == size

    benchmark.group = f"get_{size_name}"
    benchmark.name = f"get_run_{size_name}"
    benchmark.pedantic(get, rounds=200, iterations=1, warmup_rounds=10)
    record(f"get_run_{size_name}", benchmark, size, 1)


def test_bare_s3_get(benchmark, stored_run):
    """The floor for GET: the same object straight from MinIO with the same plain HTTP client."""
    size_name, _, size, url = stored_run
    parts = urlsplit(url)

    def get():
        assert len(http_get(parts.hostname, parts.port, f"{parts.path}?{parts.query}")) == size

    benchmark.group = f"get_{size_name}"
    benchmark.name = f"floor_get_run_{size_name}"
    benchmark.pedantic(get, rounds=200, iterations=1, warmup_rounds=10)
    record(f"floor_get_run_{size_name}", benchmark, size, 1)
