"""The application in this process, on pytest-tornado's fixtures: ``app`` is the object the server
itself serves (``handler.server.app.make_app``, with a real ObjectStore and Database started against the
PostgreSQL and MinIO of ``.env.test``), ``http_client`` speaks HTTP to it over a local socket, and
each test is a coroutine run by ``@pytest.mark.gen_test`` on the test's own ``io_loop``.

This layer is for the routes where a separate process adds nothing: error answers and their JSON
shape, the operations routes, the OpenAPI document and docs pages, authentication, GET 400/404,
small POST round trips, and a streamed POST whose runs must reach the bucket before its body
ends. What needs a real process -- signals, kill -9, disconnects, memory -- stays in the
subprocess suite (``server`` fixture, tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import re
import uuid
from urllib.parse import urljoin

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from handler.runs.ingest_handler import IngestHandler
from handler.server.app import make_app
from handler.server.auth import ApiKeys, hash_key
from handler.server.config import Settings
from handler.server.docs import DOCUMENT
from handler.store.db import Database
from handler.store.objects import ObjectStore
from tests.runs import FIDELITY_RUN, batch, run, with_id

ALPHA = "alpha-in-process-key"


@pytest.fixture
def overrides() -> dict:
    """Settings to change for one test's app: a test parametrizes ``overrides`` (and names it among
    its arguments, as pytest-tornado's http_server looks ``app`` up only at run time)."""
    return {}


@pytest.fixture
def app(io_loop, settings: Settings, overrides: dict):
    """pytest-tornado's ``app``: the server's own application object, its store and database
    started on this test's loop, closed after it."""
    config = dataclasses.replace(settings, **overrides)
    store, db = ObjectStore(config), Database(config)
    io_loop.run_sync(store.start)
    io_loop.run_sync(store.ensure_bucket)
    io_loop.run_sync(db.start)
    yield make_app(config, store, db)
    io_loop.run_sync(db.close)
    io_loop.run_sync(store.close)


async def fetch(client: AsyncHTTPClient, url: str, **kwargs) -> HTTPResponse:
    """A request whose 4xx/5xx answer is returned, not raised."""
    return await client.fetch(url, raise_error=False, request_timeout=60, **kwargs)


def post_json(body: bytes, **headers: str) -> dict:
    return {"method": "POST", "body": body, "headers": {"Content-Type": "application/json", **headers}}


def error_of(response: HTTPResponse) -> dict:
    """A JSON error answer: ``{"error": "<reason>"}``, and ``index`` when a run is at fault."""
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    answer = json.loads(response.body)
    assert isinstance(answer.get("error"), str) and answer["error"], answer
    assert set(answer) <= {"error", "index"}, answer
    return answer


def keys(s3, bucket: str) -> set[str]:
    found: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        found.update(o["Key"] for o in page.get("Contents", []))
    return found


def in_bucket(s3, bucket: str, run_ids: list[str], since: set[str]) -> list[str]:
    """Which of these runs (committed or not) have their bytes in objects written since ``since``
    (segments hold many runs; with SEGMENT_BYTES=0 each run is an object of its own)."""
    data = b"".join(s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys(s3, bucket) - since)
    return [run_id for run_id in run_ids if run_id.encode() in data]


# -- operations and documents ---------------------------------------------------------------------


@pytest.mark.gen_test
async def test_health(http_client, base_url):
    response = await fetch(http_client, base_url + "/health")
    assert response.code == 200
    assert json.loads(response.body) == {"status": "ok"}
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.gen_test
async def test_ready_with_both_dependencies_up(http_client, base_url):
    response = await fetch(http_client, base_url + "/ready")
    assert response.code == 200
    assert json.loads(response.body) == {"status": "ready", "postgres": "ok", "s3": "ok"}


@pytest.mark.gen_test
async def test_metrics_count_this_apps_requests(http_client, base_url):
    await fetch(http_client, base_url + "/health")
    response = await fetch(http_client, base_url + "/metrics")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.body.decode()
    assert "# TYPE run_handler_requests_total counter" in text or "_requests_total" in text
    assert 'handler="HealthHandler"' in text


@pytest.mark.gen_test
async def test_info_gives_the_limits(http_client, base_url, settings):
    response = await fetch(http_client, base_url + "/info")
    assert response.code == 200
    info = json.loads(response.body)
    assert info["batch_ingest_config"]["size_limit"] == min(100, settings.max_runs_per_batch)
    assert info["instance_flags"] == {"zstd_compression_enabled": True, "gzip_body_enabled": True}


@pytest.mark.gen_test
async def test_openapi_document_is_the_packaged_one(http_client, base_url):
    response = await fetch(http_client, base_url + "/openapi.json")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert json.loads(response.body) == DOCUMENT


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
@pytest.mark.gen_test
async def test_docs_pages_are_served(http_client, base_url, page):
    response = await fetch(http_client, base_url + page)
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="([^"]+)"', response.body.decode())
    assert any(a.startswith("docs/static/") for a in assets), assets
    for asset in assets:  # relative to the page: served by the app itself, no CDN
        got = await fetch(http_client, urljoin(base_url + page, asset))
        assert got.code == 200 and got.body, asset


@pytest.mark.gen_test
async def test_docs_static_refuses_what_is_not_there(http_client, base_url):
    response = await fetch(http_client, base_url + "/docs/static/no-such-file.js")
    assert response.code == 404
    error_of(response)


# -- errors and their shape -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, status",
    [("/runs/not-a-uuid", 400), (f"/runs/{uuid.uuid4()}", 404), ("/nowhere", 404), ("/runs?limit=5", 400)],
)
@pytest.mark.gen_test
async def test_get_errors_are_json(http_client, base_url, path, status):
    response = await fetch(http_client, base_url + path)
    assert response.code == status
    error_of(response)


@pytest.mark.parametrize(
    "body, status, words, index",
    [
        (b"42", 400, "array", None),
        (b'[{"name": "x"}]', 400, "trace_id is required", 0),
        (batch(run(), run(trace_id="nope")), 400, "trace_id must be a UUID", 1),
        (b"[" + batch(run())[1:-1] + b",", 400, "invalid JSON", None),
        (b'[{"trace_id": "' + str(uuid.uuid4()).encode() + b'", "name": 5}]', 400, "name must be", 0),
    ],
)
@pytest.mark.gen_test
async def test_refused_batches_answer_json_with_the_runs_index(
    http_client, base_url, body, status, words, index
):
    response = await fetch(http_client, base_url + "/runs", **post_json(body))
    assert response.code == status
    answer = error_of(response)
    assert words in answer["error"], answer
    assert answer.get("index") == index


@pytest.mark.gen_test
async def test_wrong_content_type_is_415(http_client, base_url):
    response = await fetch(
        http_client,
        base_url + "/runs",
        method="POST",
        body=batch(run()),
        headers={"Content-Type": "text/plain"},
    )
    assert response.code == 415
    assert "Content-Type" in error_of(response)["error"]


@pytest.mark.gen_test
async def test_unsupported_method_is_405_json(http_client, base_url):
    response = await fetch(http_client, base_url + "/runs", method="DELETE")
    assert response.code == 405
    error_of(response)


# -- authentication ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{"api_keys": ApiKeys(f"alpha:{hash_key(ALPHA)}")}])
@pytest.mark.gen_test
async def test_a_keyed_app_answers_401_without_a_valid_key(http_client, base_url, overrides):
    for headers in ({}, {"x-api-key": "wrong"}, {"x-api-key": hash_key(ALPHA)}):
        response = await fetch(http_client, base_url + "/runs", **post_json(batch(run()), **headers))
        assert response.code == 401, headers
        assert "x-api-key" in error_of(response)["error"]
        response = await fetch(http_client, base_url + f"/runs/{uuid.uuid4()}", headers=headers)
        assert response.code == 401, headers
    # The operations routes need no key.
    assert (await fetch(http_client, base_url + "/health")).code == 200


@pytest.mark.parametrize("overrides", [{"api_keys": ApiKeys(f"alpha:{hash_key(ALPHA)}")}])
@pytest.mark.gen_test
async def test_a_keyed_app_takes_and_returns_a_run_with_the_key(http_client, base_url, overrides):
    key = {"x-api-key": ALPHA}
    response = await fetch(http_client, base_url + "/runs", **post_json(b"[" + FIDELITY_RUN + b"]", **key))
    assert response.code == 201, response.body
    (run_id,) = json.loads(response.body)["ids"]
    got = await fetch(http_client, base_url + f"/runs/{run_id}", headers=key)
    assert got.code == 200
    assert got.body == with_id(FIDELITY_RUN, run_id)


# -- small POST round trips -------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_post_then_get_gives_the_exact_bytes(http_client, base_url, s3, settings):
    since = keys(s3, settings.s3_bucket_name)
    own_id = str(uuid.uuid4())
    runs = [run(id=own_id, inputs={"n": 1}), run(inputs={"n": 2})]
    response = await fetch(http_client, base_url + "/runs", **post_json(batch(*runs)))
    assert response.code == 201, response.body
    ids = json.loads(response.body)["ids"]
    assert ids[0] == own_id
    first = await fetch(http_client, base_url + f"/runs/{own_id}")
    assert first.code == 200 and json.loads(first.body) == runs[0]
    second = await fetch(http_client, base_url + f"/runs/{ids[1]}")
    assert json.loads(second.body) == {"id": ids[1], **runs[1]}
    assert in_bucket(s3, settings.s3_bucket_name, ids, since) == ids


@pytest.mark.gen_test
async def test_list_a_trace(http_client, base_url):
    trace_id = str(uuid.uuid4())
    runs = [run(trace_id=trace_id, name=f"step {i}") for i in range(3)]
    response = await fetch(http_client, base_url + "/runs", **post_json(batch(*runs)))
    assert response.code == 201
    listed = await fetch(http_client, base_url + f"/runs?trace_id={trace_id}")
    assert listed.code == 200
    page = json.loads(listed.body)
    assert sorted(r["name"] for r in page["runs"]) == ["step 0", "step 1", "step 2"]
    assert page["next_cursor"] is None


@pytest.mark.gen_test
async def test_a_repeated_id_is_409_and_the_stored_run_is_untouched(http_client, base_url):
    own_id = str(uuid.uuid4())
    original = run(id=own_id, name="original")
    assert (await fetch(http_client, base_url + "/runs", **post_json(batch(original)))).code == 201
    again = await fetch(http_client, base_url + "/runs", **post_json(batch(run(id=own_id, name="again"))))
    assert again.code == 409
    error_of(again)
    stored = await fetch(http_client, base_url + f"/runs/{own_id}")
    assert json.loads(stored.body) == original


# -- streaming --------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=90)
async def test_streamed_runs_reach_the_bucket_before_the_body_ends(http_client, base_url, s3, settings):
    """The body is produced in two writes; between them the producer waits until the first ten
    runs are in the bucket, which happens only if the app uploads runs while the body streams."""
    first = [run(id=str(uuid.uuid4()), inputs={"n": i}) for i in range(10)]
    last = run(id=str(uuid.uuid4()))
    loop = asyncio.get_running_loop()
    uploaded_while_open: list[int] = []
    since = keys(s3, settings.s3_bucket_name)

    def uploaded() -> int:
        return len(in_bucket(s3, settings.s3_bucket_name, [r["id"] for r in first], since))

    async def producer(write) -> None:
        await write(b"[" + batch(*first)[1:-1] + b",")
        deadline = loop.time() + 60
        while (count := await loop.run_in_executor(None, uploaded)) < len(first) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        uploaded_while_open.append(count)
        await write(batch(last)[1:])

    response = await fetch(
        http_client,
        base_url + "/runs",
        method="POST",
        body_producer=producer,
        headers={"Content-Type": "application/json"},
    )
    assert uploaded_while_open == [len(first)], "runs not uploaded while the body was still open"
    assert response.code == 201, response.body
    assert json.loads(response.body)["ids"] == [r["id"] for r in first] + [last["id"]]
    assert await loop.run_in_executor(None, in_bucket, s3, settings.s3_bucket_name, [last["id"]], since)


@pytest.mark.gen_test
async def test_a_finished_batch_is_not_kept_in_memory(http_client, base_url):
    """Nothing scheduled by a request (the body idle watch) outlives it: once the batches are
    answered, no handler of theirs -- nor the batch it holds -- is alive."""
    for _ in range(5):
        response = await fetch(http_client, base_url + "/runs", **post_json(batch(run(), run())))
        assert response.code == 201
    await asyncio.sleep(0.1)  # the connections' close callbacks
    gc.collect()
    assert [o for o in gc.get_objects() if isinstance(o, IngestHandler)] == []
