"""The LangSmith-compatible API end to end, with hand-built bodies so that every byte is ours.

Covers, against real servers, PostgreSQL and MinIO:

- ``POST /runs/multipart``: how a run's parts are joined into the stored run (byte for byte, in
  7-byte chunks that cross every part boundary), the refusals that must leave nothing behind,
  attachments, 409 for an id already stored, the run size limit;
- patches (multipart ``patch.<id>``, ``POST /runs/batch`` and ``PATCH /runs/{id}``): fields
  replaced in place, other fields keeping their exact bytes, nulls ignored, the columns following,
  patches that come before their post, and refused patches that must change nothing;
- ``POST /runs/batch`` (``{"post": [...], "patch": [...]}``) and ``POST /runs`` with one object;
- ``GET /runs?trace_id=``: order, paging, summaries, refusals, tenants;
- ``Content-Encoding`` (gzip, zstd) on every ingesting route, corrupt bodies and bombs;
- ``GET /info``.

The servers here write to a bucket of their own and, through API keys, to tenants of their own
(all created and removed by this module): ``storage.snapshot()`` then lists a few hundred objects
rather than the whole shared test bucket, and rows that another test session writes meanwhile to
the shared database cannot be mistaken for ours.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import re
import time
import uuid
from datetime import datetime

import pytest
import zstandard

from handler import __version__
from handler.read.sessions import session_id_for
from handler.server.auth import hash_key
from handler.server.config import REPO_ROOT
from handler.server.info import LANGSMITH_VERSION
from tests.client import HttpClient, Response
from tests.conftest import Store
from tests.reset_env import empty_bucket
from tests.runs import list_trace, split
from tests.server import Server, start_server

SESSION = uuid.uuid4().hex[:8]
BUCKET = f"runs-test-langsmith-api-{SESSION}"
# Tenants of this session only: other sessions may write to the shared test database meanwhile.
TENANT, ALPHA, BETA = (f"lsapi-{name}-{SESSION}" for name in ("main", "alpha", "beta"))
KEY, ALPHA_KEY, BETA_KEY = (f"key-of-{tenant}" for tenant in (TENANT, ALPHA, BETA))
CHUNK = 7  # bytes per HTTP chunk: small enough to cross every part and field boundary
BOUNDARY = "lsapi-5f1d-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
END_TIME = "2025-01-01T00:00:01Z"
LIMITS = {"MAX_BODY_BYTES": "20000", "MAX_RUN_BYTES": "2000", "MAX_RUNS_PER_BATCH": "5"}


# -- servers and storage -------------------------------------------------------------------------


class Client(HttpClient):
    """An HttpClient that sends ``x-api-key: key`` with every request (a request's own headers
    win), with the two requests HttpClient lacks: PATCH, and GET with the response headers."""

    def __init__(self, server: Server, key: str | None) -> None:
        super().__init__(server.client.host, server.client.port)
        self.key = key

    def with_key(self, headers: dict | None) -> dict:
        return {**({"x-api-key": self.key} if self.key else {}), **(headers or {})}

    def start_post(self, path="/runs", content_type="application/json", headers=None, method="POST"):
        return super().start_post(path, content_type, self.with_key(headers), method)

    def get(self, path: str, headers: dict | None = None) -> Response:
        return super().get(path, self.with_key(headers))

    def patch(
        self, path: str, body: bytes, content_type: str = "application/json", headers: dict | None = None
    ) -> Response:
        """PATCH with a chunked body, in CHUNK-byte chunks."""
        headers = {"Content-Type": content_type, "Transfer-Encoding": "chunked", **self.with_key(headers)}
        conn = self.connect()
        conn.putrequest("PATCH", path)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        try:
            for chunk in split(body, CHUNK):
                self.send_chunk(conn, chunk)
        except OSError:
            pass  # answered early
        return self.finish(conn)

    def fetch(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """GET with the response headers (lowercased names)."""
        conn = self.connect()
        try:
            conn.request("GET", path, headers=self.with_key(None))
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()


class TenantStore(Store):
    """conftest's Store (every object of the bucket, rows posted or not), with the rows of this
    session's tenants only."""

    def row_ids(self) -> set[str]:
        with self.db.cursor() as cur:
            cur.execute("SELECT id::text FROM runs WHERE tenant = ANY(%s)", ([TENANT, ALPHA, BETA],))
            return {r[0] for r in cur.fetchall()}


@pytest.fixture(scope="module")
def storage(s3, db):
    """What the servers of this module store: their own bucket, and their tenants' rows in the
    shared database; all removed at the end."""
    s3.create_bucket(Bucket=BUCKET)
    yield TenantStore(s3, db, BUCKET)
    with db.cursor() as cur:
        cur.execute("DELETE FROM runs WHERE tenant = ANY(%s)", ([TENANT, ALPHA, BETA],))
    empty_bucket(s3, BUCKET)


def _server(tmp_path_factory, name: str, key: str | None, **env: str):
    srv = start_server(tmp_path_factory.mktemp(name), name, S3_BUCKET_NAME=BUCKET, **env)
    srv.client = Client(srv, key)
    yield srv
    srv.stop()
    assert srv.process.returncode == 0, open(srv.log_path).read()[-3000:]


@pytest.fixture(scope="module")
def api(tmp_path_factory, storage) -> Server:
    yield from _server(tmp_path_factory, "lsapi", KEY, API_KEYS=f"{TENANT}:{hash_key(KEY)}")


@pytest.fixture(scope="module")
def limited_api(tmp_path_factory, storage) -> Server:
    """Tiny limits, like conftest's ``limited_server``."""
    yield from _server(tmp_path_factory, "lsapi-limited", KEY, API_KEYS=f"{TENANT}:{hash_key(KEY)}", **LIMITS)


@pytest.fixture(scope="module")
def keyed_api(tmp_path_factory, storage) -> Server:
    """Two tenants; its client sends no key unless told."""
    keys = f"{ALPHA}:{hash_key(ALPHA_KEY)},{BETA}:{hash_key(BETA_KEY)}"
    yield from _server(tmp_path_factory, "lsapi-keyed", None, API_KEYS=keys)


@pytest.fixture
def http(api: Server) -> Client:
    return api.client


# -- bodies ---------------------------------------------------------------------------------------


def new_id() -> str:
    return str(uuid.uuid4())


def run_json(run_id: str | None, trace_id: str, name: str = "run", **fields) -> bytes:
    """A run as JSON bytes (json.dumps' spacing: ``{"id": "...", "trace_id": ...}``)."""
    head = {"id": run_id} if run_id else {}
    return json.dumps({**head, "trace_id": trace_id, "name": name, **fields}).encode()


def q(text: str) -> bytes:
    """A JSON string's bytes."""
    return json.dumps(text).encode()


def members(*fields: tuple[str, bytes]) -> bytes:
    """The object a patched run is rewritten as: its fields' raw values, no whitespace between."""
    return b"{" + b",".join(q(key) + b":" + raw for key, raw in fields) + b"}"


def with_id(body: bytes, run_id: str) -> bytes:
    return b'{"id":"' + run_id.encode() + b'",' + body[1:]


def part(name: str, data: bytes, content_type: str | None = None) -> bytes:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n'
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return head.encode() + b"\r\n" + data + b"\r\n"


def form(*parts: bytes) -> bytes:
    """A multipart/form-data body of these parts, with its closing boundary."""
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def batch_body(post: list[bytes] | None = None, patch: list[bytes] | None = None) -> bytes:
    sections = []
    if post is not None:
        sections.append(b'"post": [' + b", ".join(post) + b"]")
    if patch is not None:
        sections.append(b'"patch": [' + b", ".join(patch) + b"]")
    return b"{" + b", ".join(sections) + b"}"


def post_multipart(http: Client, *parts: bytes, headers: dict | None = None) -> Response:
    return http.post(split(form(*parts), CHUNK), "/runs/multipart", MULTIPART, headers)


def post_batch(http: Client, body: bytes, headers: dict | None = None) -> Response:
    return http.post(split(body, CHUNK), "/runs/batch", headers=headers)


def post_runs(http: Client, body: bytes, headers: dict | None = None) -> Response:
    return http.post(split(body, CHUNK), "/runs", headers=headers)


def patch_via(http: Client, route: str, run_id: str, patch: bytes) -> Response:
    """Send ``patch`` (a JSON object without id) by one of the three patch routes; checks the answer."""
    if route == "PATCH":
        response = http.patch(f"/runs/{run_id}", patch)
        assert (response.status, response.json()) == (200, {"id": run_id}), response.body
        return response
    if route == "batch":
        response = post_batch(http, batch_body(patch=[b'{"id": ' + q(run_id) + b", " + patch[1:]]))
    else:
        response = post_multipart(http, part(f"patch.{run_id}", patch))
    assert (response.status, response.json()) == (202, {"ids": [], "patched": [run_id]}), response.body
    return response


def post_via(http: Client, route: str, run: bytes, run_id: str) -> Response:
    """Post one run (with its id inside) by one of the four posting routes."""
    if route == "multipart":
        return post_multipart(http, part(f"post.{run_id}", run))
    if route == "batch":
        return post_batch(http, batch_body(post=[run]))
    if route == "runs-array":
        return post_runs(http, b"[" + run + b"]")
    return post_runs(http, run)


def objects_of(storage: Store, run_id: str, tenant: str = TENANT) -> set[str]:
    """The objects that hold a committed run now: its own or its segment, and its attachments'."""
    with storage.db.cursor() as cur:
        cur.execute(
            "SELECT object_key FROM runs WHERE tenant = %s AND id = %s"
            " UNION SELECT object_key FROM run_attachments WHERE tenant = %s AND run_id = %s",
            (tenant, run_id, tenant, run_id),
        )
        return {row[0] for row in cur.fetchall()}


def in_bucket(storage: Store, run_ids: list[str], since: set[str]) -> bool:
    """Whether the bytes of these runs (not committed yet) are in objects written since ``since``."""
    found = b"".join(
        storage.s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in storage.keys() - since
    )
    return all(run_id.encode() in found for run_id in run_ids)


def posted_flag(storage: Store, run_id: str) -> bool | None:
    with storage.db.cursor() as cur:
        cur.execute("SELECT posted FROM runs WHERE tenant = %s AND id = %s", (TENANT, run_id))
        rows = cur.fetchall()
    return rows[0][0] if rows else None


def assert_refused(response: Response, status: int, words: str) -> None:
    assert response.status == status, response.body
    assert words in response.json()["error"], response.body


# -- POST /runs/multipart: runs ---------------------------------------------------------------

# (main part, payload parts, what GET must return); {id} and {trace} are filled in per test.
JOINS = {
    "main-with-id": (
        b'{"id": "{id}", "trace_id": "{trace}", "name": "joined"}',
        [("inputs", b'{"q": "what?"}'), ("outputs", b'{"a": "that"}')],
        b'{"id": "{id}", "trace_id": "{trace}", "name": "joined"'
        b',"inputs":{"q": "what?"},"outputs":{"a": "that"}}',
    ),
    "main-without-id-trailing-whitespace": (
        b'  {"trace_id": "{trace}", "name": "no id" \t}\r\n ',
        [("inputs", b' {"big": 123456789012345678901234567890, "huge": 1e400} \n')],
        b'{"id":"{id}","trace_id": "{trace}", "name": "no id","inputs": '
        b'{"big": 123456789012345678901234567890, "huge": 1e400} \n}',
    ),
    "every-payload-field": (
        b'{"trace_id":"{trace}","name":"all \\u00e9 \xc3\xa9","run_type":"llm"}',
        [
            ("inputs", b'{"esc": "q \\" b \\\\ brace } ] \\u0001", "tenth": 0.1, "tiny": 1E-400}'),
            ("outputs", b'{"nested": [[1, [2, {"deep": [null, true, false]}]], []]}'),
            ("events", b'[{"name": "start", "time": "2025-01-01T00:00:00Z"}]'),
            ("error", b'"Traceback: boom \\n at line 1"'),
            ("extra", b'{"metadata": {"\xe2\x98\x83": "snowman", "": "empty key"}}'),
            ("serialized", b'{"over53": 9007199254740993, "neg": -0.0}'),
        ],
        b'{"id":"{id}","trace_id":"{trace}","name":"all \\u00e9 \xc3\xa9","run_type":"llm"'
        b',"inputs":{"esc": "q \\" b \\\\ brace } ] \\u0001", "tenth": 0.1, "tiny": 1E-400}'
        b',"outputs":{"nested": [[1, [2, {"deep": [null, true, false]}]], []]}'
        b',"events":[{"name": "start", "time": "2025-01-01T00:00:00Z"}]'
        b',"error":"Traceback: boom \\n at line 1"'
        b',"extra":{"metadata": {"\xe2\x98\x83": "snowman", "": "empty key"}}'
        b',"serialized":{"over53": 9007199254740993, "neg": -0.0}}',
    ),
    "payload-parts-before-main": (
        b'{"trace_id": "{trace}", "name": "late main"}',
        [("outputs", b"{}")],
        b'{"id":"{id}","trace_id": "{trace}", "name": "late main","outputs":{}}',
    ),
    "null-and-empty-payloads": (
        b'{"trace_id": "{trace}", "name": "m", "tags": ["a", "b"]}',
        [("extra", b"null"), ("events", b"[ ]")],
        b'{"id":"{id}","trace_id": "{trace}", "name": "m", "tags": ["a", "b"],"extra":null,"events":[ ]}',
    ),
}


def fill(template: bytes, run_id: str, trace_id: str) -> bytes:
    return template.replace(b"{id}", run_id.encode()).replace(b"{trace}", trace_id.encode())


@pytest.mark.parametrize("case", JOINS)
def test_multipart_run_is_its_main_part_with_each_payload_part_appended(http, storage, case):
    main, payloads, expected = JOINS[case]
    run_id, trace_id = new_id(), new_id()
    main_part = part(f"post.{run_id}", fill(main, run_id, trace_id), "application/json; length=99")
    payload_parts = [part(f"post.{run_id}.{field}", value) for field, value in payloads]
    parts = (
        [*payload_parts, main_part] if case == "payload-parts-before-main" else [main_part, *payload_parts]
    )
    before = storage.snapshot()
    response = post_multipart(http, *parts)
    assert (response.status, response.json()) == (202, {"ids": [run_id], "patched": []}), response.body
    assert http.get(f"/runs/{run_id}").body == fill(expected, run_id, trace_id)
    rows, keys = storage.snapshot()
    assert rows - before[0] == {run_id}
    assert keys - before[1] == objects_of(storage, run_id) and len(keys - before[1]) == 1


def test_multipart_runs_patches_and_attachments_in_one_body(http, storage):
    """Several runs, a patch of a stored run and attachments, cut into 7-byte chunks."""
    trace_id, stored_id = new_id(), new_id()
    stored = run_json(stored_id, trace_id, "stored before")
    assert post_runs(http, b"[" + stored + b"]").status == 201
    keys_before = storage.keys()
    ids = [new_id() for _ in range(3)]
    mains = [run_json(i, trace_id, f"run {n}") for n, i in enumerate(ids)]
    response = post_multipart(
        http,
        part(f"post.{ids[0]}", mains[0]),
        part(f"post.{ids[0]}.inputs", b'{"n": 0}'),
        part(f"attachment.{ids[0]}.first.txt", b"one", "text/plain"),
        part(f"post.{ids[1]}", mains[1]),
        part(f"patch.{stored_id}", b'{"end_time": "' + END_TIME.encode() + b'"}'),
        part(f"patch.{stored_id}.outputs", b'{"late": true}'),
        part(f"post.{ids[2]}", mains[2]),
        part(f"post.{ids[2]}.outputs", b'{"n": 2}'),
    )
    assert (response.status, response.json()) == (202, {"ids": ids, "patched": [stored_id]}), response.body
    assert http.get(f"/runs/{ids[0]}").body == mains[0][:-1] + b',"inputs":{"n": 0}}'
    assert http.get(f"/runs/{ids[1]}").body == mains[1]
    assert http.get(f"/runs/{ids[2]}").body == mains[2][:-1] + b',"outputs":{"n": 2}}'
    assert http.get(f"/runs/{ids[0]}/attachments/first.txt").body == b"one"
    expected = members(
        ("id", q(stored_id)),
        ("trace_id", q(trace_id)),
        ("name", q("stored before")),
        ("end_time", q(END_TIME)),
        ("outputs", b'{"late": true}'),
    )
    assert http.get(f"/runs/{stored_id}").body == expected
    # The patched run is stored anew in this request's segment, beside the new runs.
    (segment,) = objects_of(storage, stored_id)
    assert segment in storage.keys() - keys_before and objects_of(storage, ids[1]) == {segment}


A, B, T = new_id(), new_id(), new_id()
RUN_A, RUN_B = run_json(A, T, "a"), run_json(B, T, "b")
# Each body would store run A (and more) if it were accepted: nothing of it may stay.
MULTIPART_REFUSALS = {
    "field-in-main-and-as-a-part": (
        [part(f"post.{A}", run_json(A, T, inputs={"x": 1})), part(f"post.{A}.inputs", b"{}")],
        "duplicate key 'inputs'",
    ),
    "payload-adding-a-field": (
        [part(f"post.{A}", RUN_A), part(f"post.{A}.inputs", b'{"a": 1}, "injected": true')],
        "invalid JSON",
    ),
    "payload-closing-the-object": (
        [part(f"post.{A}", RUN_A), part(f"post.{A}.error", b'"boom"}, {"x": 1')],
        "invalid JSON",
    ),
    "payload-of-two-values": (
        [part(f"post.{A}", RUN_A), part(f"post.{A}.outputs", b"{} {}")],
        "invalid JSON",
    ),
    "empty-payload": ([part(f"post.{A}", RUN_A), part(f"post.{A}.outputs", b"")], "invalid JSON"),
    "payload-of-the-wrong-type": (
        [part(f"post.{A}", RUN_A), part(f"post.{A}.inputs", b"5")],
        "must be an object",
    ),
    "unknown-field-part": (
        [part(f"post.{A}", RUN_A), part(f"post.{A}.metadata", b"{}")],
        "unknown part name",
    ),
    "unknown-part": ([part(f"post.{A}", RUN_A), part("runs", b"[]")], "unknown part name"),
    "id-not-a-uuid": ([part(f"post.{A}", RUN_A), part("post.not-a-uuid", b"{}")], "unknown part name"),
    "payload-without-its-main-part": (
        [part(f"post.{B}.inputs", b"{}"), part(f"post.{A}", RUN_A)],
        "came without post.",
    ),
    "payload-without-main-at-the-end": (
        [part(f"post.{A}", RUN_A), part(f"post.{B}.inputs", b"{}")],
        "came without post.",
    ),
    "main-part-repeated": ([part(f"post.{A}", RUN_A), part(f"post.{A}", RUN_A)], "is repeated"),
    "main-part-with-another-id": ([part(f"post.{A}", RUN_B)], f"has id {B}"),
    "invalid-json-in-main": ([part(f"post.{B}", RUN_B), part(f"post.{A}", RUN_A[:-1])], "invalid JSON"),
    "invalid-json-in-payload": (
        [part(f"post.{A}", RUN_A), part(f"post.{A}.inputs", b'{"a": tru}')],
        "invalid JSON",
    ),
    "main-not-an-object": ([part(f"post.{B}", RUN_B), part(f"post.{A}", b"[]")], "must be an object"),
    "run-missing-a-field": ([part(f"post.{A}", b'{"name": "no trace"}')], "trace_id is required"),
    "invalid-patch-after-its-post": (
        [part(f"post.{A}", RUN_A), part(f"patch.{A}", b'{"end_time": "yesterday"}')],
        "end_time must be an ISO 8601",
    ),
}


@pytest.mark.parametrize("case", MULTIPART_REFUSALS)
def test_refused_multipart_body_leaves_nothing(http, storage, case):
    parts, words = MULTIPART_REFUSALS[case]
    before = storage.snapshot()
    assert_refused(post_multipart(http, *parts), 400, words)
    storage.assert_unchanged(before)
    assert http.get(f"/runs/{A}").status == 404


def test_multipart_without_its_closing_boundary_leaves_nothing(http, storage):
    body = form(part(f"post.{A}", RUN_A), part(f"post.{B}", RUN_B))
    before = storage.snapshot()
    for cut in (body[: -len(f"--{BOUNDARY}--\r\n")], body[:-4]):
        assert_refused(http.post(split(cut, CHUNK), "/runs/multipart", MULTIPART), 400, "closing boundary")
    storage.assert_unchanged(before)


def post_in_two_steps(
    http: Client, storage: Store, path: str, headers: dict, body: bytes, cut: int, uploaded: list[str]
) -> Response:
    """Send ``body[:cut]``, wait until the runs ``uploaded`` are in the bucket, then send the rest:
    a refusal in the rest must delete objects that were really there."""
    since = storage.keys()
    conn = http.start_post(path, headers["Content-Type"], headers)
    try:
        for chunk in split(body[:cut], CHUNK):
            http.send_chunk(conn, chunk)
        deadline = time.monotonic() + 10
        while not in_bucket(storage, uploaded, since):
            assert time.monotonic() < deadline, "the first runs were not uploaded while the body was open"
            time.sleep(0.02)
    except BaseException:
        conn.close()
        raise
    try:
        for chunk in split(body[cut:], CHUNK):
            http.send_chunk(conn, chunk)
    except OSError:
        pass  # answered early
    return http.finish(conn)


@pytest.mark.parametrize("route", ["multipart", "batch", "runs", "gzip-checksum"])
def test_refusal_after_runs_were_uploaded_deletes_them(http, storage, route):
    trace_id, first, second = new_id(), new_id(), new_id()
    runs = [run_json(first, trace_id), run_json(second, trace_id)]
    bad = b'{"trace_id": 5, "name": "bad"}'
    headers = {"Content-Type": "application/json"}
    if route == "multipart":
        path, headers, words = "/runs/multipart", {"Content-Type": MULTIPART}, "trace_id must be a UUID"
        # A run is handed on once the next run's part has been read: the fourth part completes the
        # third (bad) one only when the closing boundary comes.
        body = form(
            part(f"post.{first}", runs[0]),
            part(f"post.{second}", runs[1]),
            part(f"post.{new_id()}", bad),
            part(f"post.{new_id()}", run_json(None, trace_id)),
        )
        cut = len(body) - len(f"--{BOUNDARY}--\r\n")
    elif route == "batch":
        path, words, body = "/runs/batch", "run 2: trace_id", batch_body(post=[*runs, bad])
        cut = body.index(bad)
    elif route == "runs":
        path, words, body = "/runs", "run 2: trace_id", b"[" + b",".join([*runs, bad]) + b"]"
        cut = body.index(bad)
    else:  # the runs decode whole, then the gzip trailer's checksum is wrong
        path, words = "/runs", "invalid gzip body"
        headers["Content-Encoding"] = "gzip"
        body = _gzip_with_a_bad_checksum(b"[" + b",".join(runs) + b"]")
        cut = len(body) - 8
    before = storage.snapshot()
    response = post_in_two_steps(http, storage, path, headers, body, cut, uploaded=[first, second])
    assert_refused(response, 400, words)
    storage.assert_unchanged(before)
    assert http.get(f"/runs/{first}").status == 404


@pytest.mark.parametrize(
    "content_type, status",
    [
        ("application/json", 415),
        ("text/plain; boundary=x", 415),
        ("multipart/mixed; boundary=" + BOUNDARY, 415),
        ("multipart/form-data", 400),
        ("multipart/form-data; boundary=", 400),
        ("multipart/form-data; boundary=" + "b" * 201, 400),
    ],
)
def test_multipart_content_type_must_be_form_data_with_a_boundary(http, storage, content_type, status):
    before = storage.snapshot()
    response = http.post(form(part(f"post.{A}", RUN_A)), "/runs/multipart", content_type)
    assert response.status == status, response.body
    storage.assert_unchanged(before)


def test_multipart_run_over_the_run_limit_is_413(limited_api, storage):
    trace_id = new_id()
    good, big = new_id(), new_id()
    before = storage.snapshot()
    response = post_multipart(
        limited_api.client,
        part(f"post.{good}", run_json(good, trace_id)),
        part(f"post.{big}", run_json(big, trace_id)),
        part(f"post.{big}.inputs", json.dumps({"x": "y" * 1000}).encode()),
        part(f"post.{big}.outputs", json.dumps({"x": "y" * 1000}).encode()),
    )
    assert_refused(response, 413, "larger than 2000 bytes")
    storage.assert_unchanged(before)


def test_multipart_run_limit_counts_only_the_run(limited_api, storage):
    """The limit is per run: a run's size never counts the run before it, however the body is cut
    into reads (here: the next run's data arrives once the previous runs have been read)."""
    trace_id, small, first, second = new_id(), new_id(), new_id(), new_id()
    body = form(
        part(f"post.{small}", run_json(small, trace_id)),
        part(f"post.{first}", run_json(first, trace_id, inputs={"x": "y" * 1300})),
        part(f"post.{second}", run_json(second, trace_id, inputs={"x": "z" * 1300})),
    )
    cut = body.index(b"z" * 10)  # in the data of the last run's only part
    http = limited_api.client
    since = storage.keys()
    conn = http.start_post("/runs/multipart", MULTIPART)
    http.send_chunk(conn, body[:cut])
    deadline = time.monotonic() + 10  # the small run is uploaded once the first big run's part is read
    while not in_bucket(storage, [small], since) and time.monotonic() < deadline:
        time.sleep(0.02)
    http.send_chunk(conn, body[cut:])
    response = http.finish(conn)
    assert (response.status, response.json()) == (202, {"ids": [small, first, second], "patched": []})


def test_multipart_obeys_the_runs_per_batch_limit(limited_api, storage):
    trace_id = new_id()
    ids = [new_id() for _ in range(6)]
    before = storage.snapshot()
    response = post_multipart(limited_api.client, *[part(f"post.{i}", run_json(i, trace_id)) for i in ids])
    assert_refused(response, 413, "more than 5")
    storage.assert_unchanged(before)


@pytest.mark.parametrize("route", ["multipart", "batch", "runs-array", "runs-object"])
def test_posting_a_stored_id_again_is_409_and_changes_nothing(http, storage, route):
    run_id, trace_id = new_id(), new_id()
    original = run_json(run_id, trace_id, "original", inputs={"big": 10**30})
    assert post_runs(http, original).status == 201
    before = storage.snapshot()
    response = post_via(http, route, run_json(run_id, trace_id, "impostor"), run_id)
    assert_refused(response, 409, f"id {run_id} already exists")
    storage.assert_unchanged(before)
    assert http.get(f"/runs/{run_id}").body == original


# -- attachments ----------------------------------------------------------------------------------

BINARY = bytes(range(256)) + b"\r\n--not-the-boundary\r\n\r\n" + bytes(range(255, -1, -1))


def test_attachments_come_back_with_their_bytes_and_type(http, storage):
    run_id, trace_id = new_id(), new_id()
    name = "my file \u00e9.bin"
    response = post_multipart(
        http,
        part(f"post.{run_id}", run_json(run_id, trace_id)),
        part(f"attachment.{run_id}.notes.txt", b"abc", "text/plain; length=3"),
        part(f"attachment.{run_id}.{name}", BINARY, "image/png"),
        part(f"attachment.{run_id}.untyped", b"\x00\x01"),
        part(f"attachment.{run_id}.odd-type", b"x", "not a type"),
        part(f"attachment.{run_id}.empty", b"", "text/plain"),
    )
    assert (response.status, response.json()) == (202, {"ids": [run_id], "patched": []}), response.body
    quoted = "my%20file%20%C3%A9.bin"
    for path, content_type, data in [
        ("notes.txt", "text/plain", b"abc"),
        (quoted, "image/png", BINARY),
        ("untyped", "application/octet-stream", b"\x00\x01"),
        ("odd-type", "application/octet-stream", b"x"),
        ("empty", "text/plain", b""),
    ]:
        status, headers, body = http.fetch(f"/runs/{run_id}/attachments/{path}")
        assert (status, headers["content-type"], body) == (200, content_type, data), path
        assert headers["content-length"] == str(len(data))
    assert http.get(f"/runs/{run_id}/attachments/nothing.txt").status == 404
    assert http.get(f"/runs/{new_id()}/attachments/notes.txt").status == 404
    assert http.get("/runs/not-a-uuid/attachments/notes.txt").status == 400
    assert len(objects_of(storage, run_id)) == 6  # the run and five attachments


def test_attachment_may_come_before_its_run_or_in_a_later_request(http):
    run_id, trace_id = new_id(), new_id()
    response = post_multipart(
        http,
        part(f"attachment.{run_id}.early.txt", b"before the run", "text/plain"),
        part(f"post.{run_id}", run_json(run_id, trace_id)),
    )
    assert (response.status, response.json()) == (202, {"ids": [run_id], "patched": []}), response.body
    response = post_multipart(http, part(f"attachment.{run_id}.later.json", b'{"a": 1}', "application/json"))
    assert (response.status, response.json()) == (202, {"ids": [], "patched": []})
    assert http.fetch(f"/runs/{run_id}/attachments/early.txt")[::2] == (200, b"before the run")
    assert http.fetch(f"/runs/{run_id}/attachments/later.json")[::2] == (200, b'{"a": 1}')


def test_attachment_of_a_run_that_exists_nowhere_is_404(http, storage):
    trace_id, run_id = new_id(), new_id()
    before = storage.snapshot()
    response = post_multipart(
        http,
        part(f"post.{run_id}", run_json(run_id, trace_id)),
        part(f"attachment.{new_id()}.orphan.txt", b"orphan", "text/plain"),
    )
    assert_refused(response, 404, "run does not exist")
    storage.assert_unchanged(before)
    assert http.get(f"/runs/{run_id}").status == 404


def test_same_attachment_name_twice_is_409(http, storage):
    run_id, trace_id = new_id(), new_id()
    before = storage.snapshot()
    response = post_multipart(
        http,
        part(f"post.{run_id}", run_json(run_id, trace_id)),
        part(f"attachment.{run_id}.a.txt", b"first", "text/plain"),
        part(f"attachment.{run_id}.a.txt", b"second", "text/plain"),
    )
    assert_refused(response, 409, "already exists")
    storage.assert_unchanged(before)
    response = post_multipart(
        http,
        part(f"post.{run_id}", run_json(run_id, trace_id)),
        part(f"attachment.{run_id}.a.txt", b"first", "text/plain"),
    )
    assert response.status == 202
    before = storage.snapshot()
    response = post_multipart(http, part(f"attachment.{run_id}.a.txt", b"second", "text/plain"))
    assert_refused(response, 409, "already exists")
    storage.assert_unchanged(before)
    assert http.fetch(f"/runs/{run_id}/attachments/a.txt")[::2] == (200, b"first")


# -- patches --------------------------------------------------------------------------------------

PATCH_ROUTES = ["PATCH", "batch", "multipart"]
NAME_RAW = b'"fidelity \\u00e9 \xc3\xa9 \\ud83d\\ude00"'
INPUTS_RAW = (
    b'{"big": 123456789012345678901234567890, "huge": 1e400, "tiny": 1E-400,  "neg": -0.0,'
    b' "esc": "q \\" b \\\\ s \\/ t \\t u \\u0001 } ]" }'
)
OUTPUTS_RAW = b'{ "a" : [ 1 , 2 ] }'


def fidelity_run(run_id: str, trace_id: str) -> bytes:
    """A stored run whose values a JSON round trip would change, with odd spacing between fields."""
    return (
        b'{"id":"%s", "trace_id" : "%s",\n "name":%s, "inputs": %s ,\n "outputs" :  %s,'
        b'\t"parent_run_id": null, "end_time": null, "zeta": 1}'
    ) % (run_id.encode(), trace_id.encode(), NAME_RAW, INPUTS_RAW, OUTPUTS_RAW)


@pytest.mark.parametrize("route", [*PATCH_ROUTES, "multipart-payload-part"])
def test_patch_replaces_named_fields_in_place_and_keeps_the_others_bytes(http, storage, route):
    run_id, trace_id = new_id(), new_id()
    original = fidelity_run(run_id, trace_id)
    assert post_runs(http, b"[" + original + b"]").status == 201
    assert http.get(f"/runs/{run_id}").body == original
    fields = b'"end_time": "' + END_TIME.encode() + b'", "parent_run_id": null, "new": [1, 2.50]'
    rows_before = storage.row_ids()
    if route == "multipart-payload-part":
        response = post_multipart(
            http,
            part(f"patch.{run_id}", b"{" + fields + b"}"),
            part(f"patch.{run_id}.outputs", b'{"answer": 42}'),
        )
        assert (response.status, response.json()) == (202, {"ids": [], "patched": [run_id]}), response.body
    else:
        patch_via(http, route, run_id, b'{"outputs": {"answer": 42}, ' + fields + b"}")
    assert http.get(f"/runs/{run_id}").body == members(
        ("id", q(run_id)),
        ("trace_id", q(trace_id)),
        ("name", NAME_RAW),
        ("inputs", INPUTS_RAW),
        ("outputs", b'{"answer": 42}'),
        ("parent_run_id", b"null"),  # null in the patch: not given
        ("end_time", q(END_TIME)),
        ("zeta", b"1"),
        ("new", b"[1, 2.50]"),
    )
    assert storage.row_ids() == rows_before
    assert len(objects_of(storage, run_id)) == 1


def summary_of(http: Client, trace_id: str, run_id: str) -> dict:
    (summary,) = [r for r in list_trace(http, trace_id) if r["id"] == run_id]
    return summary


def test_columns_follow_the_patches(http):
    run_id, trace_id = new_id(), new_id()
    start = "2025-01-01T00:00:00Z"
    assert (
        post_runs(http, run_json(run_id, trace_id, "chain", run_type="chain", start_time=start)).status == 201
    )
    summary = summary_of(http, trace_id, run_id)
    assert (summary["status"], summary["end_time"], summary["name"]) == ("pending", None, "chain")
    patch_via(http, "batch", run_id, b'{"end_time": "2025-01-01T02:00:01+02:00", "name": "renamed"}')
    summary = summary_of(http, trace_id, run_id)
    assert (summary["status"], summary["name"]) == ("success", "renamed")
    assert datetime.fromisoformat(summary["end_time"]) == datetime.fromisoformat(END_TIME)
    response = post_multipart(http, part(f"patch.{run_id}.error", b'"ValueError: boom"'))
    assert (response.status, response.json()) == (202, {"ids": [], "patched": [run_id]})
    summary = summary_of(http, trace_id, run_id)
    assert summary["status"] == "error"
    assert summary["size_bytes"] == len(http.get(f"/runs/{run_id}").body)
    patch_via(http, "PATCH", run_id, b'{"error": null, "end_time": null}')  # nulls: nothing changes
    assert summary_of(http, trace_id, run_id) == summary


def cache_reads(http: Client, result: str) -> float:
    metrics = http.get("/metrics").body.decode()
    found = re.search(rf'run_handler_object_cache_reads_total{{result="{result}"}} (\S+)', metrics)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("route", PATCH_ROUTES)
def test_a_run_read_again_comes_from_the_cache_until_a_patch_changes_it(http, route):
    """The cache is keyed by object, and a patch makes a new object: the next GET sees the patch."""
    run_id, trace_id = new_id(), new_id()
    assert post_runs(http, run_json(run_id, trace_id, "cached", inputs={"x": "y" * 5000})).status == 201
    first = http.get(f"/runs/{run_id}").body
    hits = cache_reads(http, "hit")
    assert http.get(f"/runs/{run_id}").body == first
    assert cache_reads(http, "hit") == hits + 1
    patch_via(http, route, run_id, b'{"name": "renamed"}')
    patched = json.loads(http.get(f"/runs/{run_id}").body)
    assert (patched["name"], patched["inputs"]) == ("renamed", {"x": "y" * 5000})


POST_AFTER_PATCH = [
    ("multipart", "multipart"),
    ("PATCH", "runs-array"),
    ("batch", "runs-object"),
    ("PATCH", "batch"),
]


@pytest.mark.parametrize("patch_route, post_route", POST_AFTER_PATCH)
def test_patch_before_its_post_is_kept_and_wins_when_the_post_comes(http, storage, patch_route, post_route):
    run_id, trace_id = new_id(), new_id()
    before = storage.snapshot()
    patch_via(
        http, patch_route, run_id, b'{"outputs": {"from": "patch"}, "end_time": "' + END_TIME.encode() + b'"}'
    )
    assert http.get(f"/runs/{run_id}").status == 404
    assert list_trace(http, trace_id) == []
    assert posted_flag(storage, run_id) is False
    rows, keys = storage.snapshot()
    assert (rows - before[0], len(keys - before[1])) == ({run_id}, 1)

    post = run_json(run_id, trace_id, "posted later", inputs={"x": 1}, outputs={"from": "post"}, tags=["t"])
    if post_route == "multipart":
        main = run_json(run_id, trace_id, "posted later")
        response = post_multipart(
            http,
            part(f"post.{run_id}", main),
            part(f"post.{run_id}.inputs", b'{"x": 1}'),
            part(f"post.{run_id}.outputs", b'{"from": "post"}'),
            part(f"post.{run_id}.extra", b'{"tags": ["t"]}'),
        )
        tail = [("inputs", b'{"x": 1}'), ("outputs", b'{"from": "patch"}'), ("extra", b'{"tags": ["t"]}')]
    else:
        response = post_via(http, post_route, post, run_id)
        tail = [("inputs", b'{"x": 1}'), ("outputs", b'{"from": "patch"}'), ("tags", b'["t"]')]
    assert response.status in (201, 202), response.body
    assert response.json()["ids"] == [run_id]
    assert http.get(f"/runs/{run_id}").body == members(
        ("id", q(run_id)),
        ("trace_id", q(trace_id)),
        ("name", q("posted later")),
        *tail,
        ("end_time", q(END_TIME)),
    )
    assert posted_flag(storage, run_id) is True
    assert [r["status"] for r in list_trace(http, trace_id)] == ["success"]
    rows, keys = storage.snapshot()
    assert rows - before[0] == {run_id}
    assert keys - before[1] == objects_of(storage, run_id) and len(keys - before[1]) == 1


def test_two_patches_before_the_post(http):
    run_id, trace_id = new_id(), new_id()
    patch_via(http, "PATCH", run_id, b'{"outputs": {"n": 1}, "tags": ["first"]}')
    patch_via(http, "multipart", run_id, b'{"outputs": {"n": 2}}')
    assert post_runs(http, run_json(run_id, trace_id, "p", outputs={"n": 0})).status == 201
    assert http.get(f"/runs/{run_id}").json() == {
        "id": run_id,
        "trace_id": trace_id,
        "name": "p",
        "outputs": {"n": 2},
        "tags": ["first"],
    }


@pytest.mark.parametrize("order", ["post-first", "patch-first"])
@pytest.mark.parametrize("route", ["multipart", "batch"])
def test_patch_in_the_same_request_as_its_post_is_applied(http, storage, route, order):
    run_id, trace_id = new_id(), new_id()
    post = run_json(run_id, trace_id, "same request", outputs={"done": False})
    patch = b'{"end_time": "' + END_TIME.encode() + b'", "outputs": {"done": true}}'
    before = storage.snapshot()
    if route == "multipart":
        parts = [part(f"post.{run_id}", post), part(f"patch.{run_id}", patch)]
        response = post_multipart(http, *(parts if order == "post-first" else parts[::-1]))
    else:
        patches = b'"patch": [{"id": ' + q(run_id) + b", " + patch[1:] + b"]"
        posts = b'"post": [' + post + b"]"
        sections = [posts, patches] if order == "post-first" else [patches, posts]
        response = post_batch(http, b"{" + b", ".join(sections) + b"}")
    assert (response.status, response.json()) == (202, {"ids": [run_id], "patched": [run_id]}), response.body
    assert http.get(f"/runs/{run_id}").body == members(
        ("id", q(run_id)),
        ("trace_id", q(trace_id)),
        ("name", q("same request")),
        ("outputs", b'{"done": true}'),
        ("end_time", q(END_TIME)),
    )
    rows, keys = storage.snapshot()
    assert (rows - before[0], len(keys - before[1])) == ({run_id}, 1)
    assert list_trace(http, trace_id)[0]["status"] == "success"


BAD_PATCHES = {
    "trace-id-changed": (
        lambda run_id: b'{"trace_id": "' + new_id().encode() + b'"}',
        "trace_id of a run cannot",
    ),
    "name-not-a-string": (lambda run_id: b'{"name": 5}', "name must be a string"),
    "end-time-not-a-time": (lambda run_id: b'{"end_time": "yesterday"}', "end_time must be an ISO 8601"),
    "run-type-unknown": (lambda run_id: b'{"run_type": "banana"}', "run_type must be one of"),
    "inputs-not-an-object": (lambda run_id: b'{"inputs": [1]}', "inputs must be an object"),
    "duplicate-key": (lambda run_id: b'{"end_time": null, "end_time": null}', "duplicate key"),
}


@pytest.mark.parametrize("route", PATCH_ROUTES)
@pytest.mark.parametrize("case", BAD_PATCHES)
def test_refused_patch_changes_nothing(http, storage, route, case):
    run_id, trace_id = new_id(), new_id()
    original = fidelity_run(run_id, trace_id)
    assert post_runs(http, original).status == 201
    make_patch, words = BAD_PATCHES[case]
    patch = make_patch(run_id)
    before = storage.snapshot()
    if route == "PATCH":
        response = http.patch(f"/runs/{run_id}", patch)
    elif route == "batch":
        response = post_batch(http, batch_body(patch=[b'{"id": ' + q(run_id) + b", " + patch[1:]]))
    else:
        response = post_multipart(http, part(f"patch.{run_id}", patch))
    assert_refused(response, 400, words)
    storage.assert_unchanged(before)
    assert http.get(f"/runs/{run_id}").body == original


@pytest.mark.parametrize(
    "path_id, body, status, words",
    [
        pytest.param(
            None,
            b'{"id": "' + A.encode() + b'", "end_time": null}',
            400,
            "is not the run's id",
            id="other-id",
        ),
        pytest.param("not-a-uuid", b'{"end_time": null}', 400, "must be a UUID", id="url-id-not-a-uuid"),
        pytest.param(None, b"[]", 400, "must be an object", id="array"),
        pytest.param(None, b'"end_time"', 400, "must be an object", id="string"),
        pytest.param(None, b"", 400, "must be a JSON object", id="empty"),
        pytest.param(None, b'{"end_time": ', 400, "invalid JSON", id="truncated"),
        pytest.param(None, b'{"outputs": {}} {}', 400, "", id="two-values"),
    ],
)
def test_refused_patch_request_changes_nothing(http, storage, path_id, body, status, words):
    run_id, trace_id = new_id(), new_id()
    original = fidelity_run(run_id, trace_id)
    assert post_runs(http, original).status == 201
    before = storage.snapshot()
    assert_refused(http.patch(f"/runs/{path_id or run_id}", body), status, words)
    storage.assert_unchanged(before)
    assert http.get(f"/runs/{run_id}").body == original


def test_patch_with_a_wrong_content_type_is_415(http, storage):
    run_id = new_id()
    before = storage.snapshot()
    assert http.patch(f"/runs/{run_id}", b'{"name": "x"}', content_type="text/plain").status == 415
    storage.assert_unchanged(before)


def test_a_batch_with_one_bad_patch_applies_none(http, storage):
    run_id, trace_id = new_id(), new_id()
    original = fidelity_run(run_id, trace_id)
    assert post_runs(http, original).status == 201
    before = storage.snapshot()
    good = b'{"id": ' + q(run_id) + b', "outputs": {"fine": 1}}'
    bad = b'{"id": ' + q(run_id) + b', "end_time": "never"}'
    assert_refused(post_batch(http, batch_body(patch=[good, bad])), 400, "patch 1")
    storage.assert_unchanged(before)
    assert http.get(f"/runs/{run_id}").body == original


def test_trace_id_is_compared_as_a_uuid(http, storage):
    """A run posted with an uppercase trace_id can be patched, also with its trace_id in lowercase
    (the same UUID); the patch's spelling is what is stored."""
    run_id, trace_id = new_id(), new_id()
    assert post_runs(http, run_json(run_id, trace_id.upper())).status == 201
    patch_via(http, "PATCH", run_id, b'{"end_time": "' + END_TIME.encode() + b'"}')
    patch_via(http, "batch", run_id, b'{"trace_id": "' + trace_id.encode() + b'"}')
    assert http.get(f"/runs/{run_id}").body == members(
        ("id", q(run_id)), ("trace_id", q(trace_id)), ("name", q("run")), ("end_time", q(END_TIME))
    )
    before = storage.snapshot()
    other = new_id().upper()
    assert_refused(http.patch(f"/runs/{run_id}", b'{"trace_id": "' + other.encode() + b'"}'), 400, "trace_id")
    storage.assert_unchanged(before)


@pytest.mark.parametrize("field", ["name", "trace_id"])
def test_patch_with_a_null_required_field_leaves_it(http, field):
    """null is the same as absent in a patch, for name and trace_id too (LangSmith sends nulls)."""
    run_id, trace_id = new_id(), new_id()
    original = run_json(run_id, trace_id)
    assert post_runs(http, original).status == 201
    response = http.patch(f"/runs/{run_id}", b'{"' + field.encode() + b'": null}')
    assert response.status == 200, response.body
    assert http.get(f"/runs/{run_id}").json() == json.loads(original)


@pytest.mark.parametrize("route", ["runs-array", "multipart"])
def test_ids_stay_in_body_order_when_a_run_had_its_patch_first(http, route):
    trace_id = new_id()
    ids = [new_id() for _ in range(3)]
    patch_via(http, "PATCH", ids[1], b'{"end_time": "' + END_TIME.encode() + b'"}')
    if route == "multipart":
        response = post_multipart(http, *[part(f"post.{i}", run_json(i, trace_id)) for i in ids])
        assert (response.status, response.json()) == (202, {"ids": ids, "patched": []})
    else:
        response = post_runs(http, b"[" + b",".join(run_json(i, trace_id) for i in ids) + b"]")
        assert (response.status, response.json()) == (201, {"ids": ids})
    assert sorted(r["status"] for r in list_trace(http, trace_id)) == ["pending", "pending", "success"]


# -- POST /runs/batch -----------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["post-then-patch", "patch-then-post"])
def test_batch_posts_and_patches_in_either_order(http, storage, order):
    trace_id, stored_id, with_own_id = new_id(), new_id(), new_id()
    assert post_runs(http, run_json(stored_id, trace_id, "stored")).status == 201
    runs = [
        run_json(with_own_id, trace_id, "own id", inputs={"big": 10**25}),
        b'{"trace_id":"' + trace_id.encode() + b'",  "name" : "no id",\n "outputs": {"e": 1e400}}',
    ]
    patch = b'{"id": ' + q(stored_id) + b', "end_time": "' + END_TIME.encode() + b'", "parent_run_id": null}'
    body = batch_body(post=runs, patch=[patch])
    if order == "patch-then-post":
        body = b'{"patch": [' + patch + b'],\n"post": [' + b", ".join(runs) + b"]}"
    before = storage.snapshot()
    response = post_batch(http, body)
    assert response.status == 202, response.body
    ids = response.json()["ids"]
    assert (ids[0], len(ids), response.json()["patched"]) == (with_own_id, 2, [stored_id])
    assert http.get(f"/runs/{with_own_id}").body == runs[0]
    assert http.get(f"/runs/{ids[1]}").body == with_id(runs[1], ids[1])
    assert http.get(f"/runs/{stored_id}").body == members(
        ("id", q(stored_id)), ("trace_id", q(trace_id)), ("name", q("stored")), ("end_time", q(END_TIME))
    )
    rows, keys = storage.snapshot()
    assert rows - before[0] == set(ids)
    # One segment holds the new runs and the patched run's new bytes (its old ones are dead space
    # in the segment of the request that stored it, until compaction).
    assert keys - before[1] == objects_of(storage, with_own_id) | objects_of(storage, ids[1]) | objects_of(
        storage, stored_id
    )
    assert len(keys - before[1]) == 1


@pytest.mark.parametrize("body", [b"{}", b' { "post" : [ ] , "patch" : [ ] } \n', b'{"patch": []}'])
def test_empty_batches_store_nothing(http, storage, body):
    before = storage.snapshot()
    response = post_batch(http, body)
    assert (response.status, response.json()) == (202, {"ids": [], "patched": []})
    storage.assert_unchanged(before)


BATCH_REFUSALS = {
    "unknown-key": (b'{"post": [' + RUN_A + b'], "runs": []}', "unknown key 'runs'"),
    "unknown-key-first": (b'{"posts": [' + RUN_A + b"]}", "unknown key 'posts'"),
    "duplicate-key": (b'{"post": [' + RUN_A + b'], "post": [' + RUN_B + b"]}", "duplicate key 'post'"),
    "object-value": (b'{"post": [' + RUN_A + b'], "patch": {}}', "patch must be an array"),
    "null-value": (b'{"post": [' + RUN_A + b'], "patch": null}', "patch must be an array"),
    "data-after-the-object": (b'{"post": [' + RUN_A + b"]} []", "unexpected '['"),
    "second-object": (b'{"post": [' + RUN_A + b"]}{}", "unexpected '{'"),
    "truncated-in-array": (b'{"post": [' + RUN_A + b", " + RUN_B[:20], "invalid JSON"),
    "truncated-after-array": (b'{"post": [' + RUN_A + b"]", "ends before"),
    "patch-without-id": (
        b'{"post": [' + RUN_A + b'], "patch": [{"end_time": null}]}',
        "patch 0: id is required",
    ),
    "bad-run-after-good": (b'{"post": [' + RUN_A + b", " + RUN_B + b', {"name": 1}]}', "run 2"),
    "array-at-top": (b"[" + RUN_A + b"]", "expected"),
    "empty-body": (b"", "ends before"),
    "escaped-key": (b'{"po\\u0073t": [' + RUN_A + b"]}", "only the keys"),
}


@pytest.mark.parametrize("case", BATCH_REFUSALS)
def test_refused_batch_leaves_nothing(http, storage, case):
    body, words = BATCH_REFUSALS[case]
    before = storage.snapshot()
    assert_refused(post_batch(http, body), 400, words)
    storage.assert_unchanged(before)


def test_batch_posts_and_patches_share_the_runs_per_batch_limit(limited_api, storage):
    trace_id = new_id()
    ids = [new_id() for _ in range(3)]
    posts = [run_json(i, trace_id) for i in ids]
    patches = [b'{"id": ' + q(i) + b', "end_time": "' + END_TIME.encode() + b'"}' for i in ids]
    before = storage.snapshot()
    assert_refused(post_batch(limited_api.client, batch_body(post=posts, patch=patches)), 413, "more than")
    storage.assert_unchanged(before)
    response = post_batch(limited_api.client, batch_body(post=posts, patch=patches[:2]))
    assert (response.status, response.json()) == (202, {"ids": ids, "patched": ids[:2]})


# -- POST /runs with one object ------------------------------------------------------------------


@pytest.mark.parametrize("own_id", [True, False])
def test_one_run_as_an_object_is_stored_byte_for_byte(http, storage, own_id):
    run_id, trace_id = new_id(), new_id()
    head = b'{"id": "' + run_id.upper().encode() + b'",' if own_id else b"{"
    run = (
        head
        + b' "trace_id":"'
        + trace_id.encode()
        + b'" , "name": "single \\u2603",\n "inputs": '
        + INPUTS_RAW
        + b"}"
    )
    before = storage.snapshot()
    response = post_runs(http, b" \r\n" + run + b"\n\t ")
    assert response.status == 201, response.body
    (got_id,) = response.json()["ids"]
    if own_id:
        assert got_id == run_id
    assert http.get(f"/runs/{got_id}").body == (run if own_id else with_id(run, got_id))
    rows, keys = storage.snapshot()
    assert (rows - before[0], len(keys - before[1])) == ({got_id}, 1)


@pytest.mark.parametrize(
    "body, status, words",
    [
        (RUN_A + b" x", 400, "must be an object"),
        (RUN_A[:-1], 400, "invalid JSON"),
        (b'{"name": "no trace"}', 400, "trace_id is required"),
        (b'{"trace_id": "' + T.encode() + b'", "name": null}', 400, "name is required"),
        (RUN_A + RUN_B, 400, "invalid JSON"),
    ],
)
def test_refused_single_run_leaves_nothing(http, storage, body, status, words):
    before = storage.snapshot()
    assert_refused(post_runs(http, body), status, words)
    storage.assert_unchanged(before)


def test_two_objects_with_a_comma_are_not_json(http, storage):
    before = storage.snapshot()
    assert_refused(post_runs(http, RUN_A + b"," + RUN_B), 400, "")
    storage.assert_unchanged(before)


def test_single_run_over_the_run_limit_is_413(limited_api, storage):
    before = storage.snapshot()
    response = post_runs(limited_api.client, run_json(None, new_id(), inputs={"x": "y" * 2500}))
    assert_refused(response, 413, "larger than 2000")
    storage.assert_unchanged(before)


# -- GET /runs?trace_id= -------------------------------------------------------------------------


def dotted(*steps: tuple[int, str]) -> str:
    """A LangSmith dotted_order: one <start time>Z<run id> segment per ancestor."""
    return ".".join(f"20250101T0000{second:02d}000000Z{run_id}" for second, run_id in steps)


def test_trace_is_listed_in_dotted_order_page_by_page(http):
    trace_id = new_id()
    root, child1, child2, grandchild, tie1, tie2, unordered = (new_id() for _ in range(7))
    orders = {
        root: dotted((0, root)),
        child1: dotted((0, root), (1, child1)),
        child2: dotted((0, root), (2, child2)),
        grandchild: dotted((0, root), (1, child1), (3, grandchild)),
        tie1: dotted((0, root), (5, tie1)),
        unordered: None,
    }
    orders[tie2] = orders[tie1]  # the same dotted_order: the id decides
    runs = {
        run_id: run_json(
            run_id,
            trace_id,
            f"run {n}",
            run_type="chain" if run_id == root else "llm",
            start_time="2025-01-01T00:00:00Z",
            parent_run_id=None if run_id in (root, unordered) else root,
            dotted_order=order,
            session_name="project",
        )
        for n, (run_id, order) in enumerate(orders.items())
    }
    shuffled = list(runs)
    random.Random(3).shuffle(shuffled)
    assert post_runs(http, b"[" + b",".join(runs[i] for i in shuffled[:4]) + b"]").status == 201
    response = post_multipart(http, *[part(f"post.{i}", runs[i]) for i in shuffled[4:]])
    assert response.status == 202, response.body
    patch_via(http, "PATCH", new_id(), b'{"trace_id": "' + trace_id.encode() + b'", "dotted_order": ""}')
    assert post_runs(http, run_json(new_id(), new_id())).status == 201  # another trace

    expected = sorted(runs, key=lambda i: (orders[i] or "", i))
    assert expected[0] == unordered and expected[1] == root
    for limit in (3, 1, 6, 7, 1000):
        assert [r["id"] for r in list_trace(http, trace_id, limit)] == expected, limit

    schema = json.loads((REPO_ROOT / "handler" / "server" / "openapi.json").read_text())["components"][
        "schemas"
    ]
    listed = {r["id"]: r for r in list_trace(http, trace_id)}
    for summary in listed.values():
        assert (
            set(summary) == set(schema["RunSummary"]["required"]) == set(schema["RunSummary"]["properties"])
        )
    assert listed[child2] == {
        "id": child2,
        "trace_id": trace_id,
        "name": json.loads(runs[child2])["name"],
        "run_type": "llm",
        "start_time": "2025-01-01T00:00:00+00:00",
        "end_time": None,
        "parent_run_id": root,
        "dotted_order": orders[child2],
        "session_name": "project",
        "session_id": str(session_id_for(TENANT, "project")),  # the project the name resolves to
        "reference_example_id": None,
        "status": "pending",
        "size_bytes": len(runs[child2]),
    }


def cursor_of(value) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


@pytest.mark.parametrize(
    "query, words",
    [
        ("", "trace_id is required"),
        ("trace_id=not-a-uuid", "trace_id must be a UUID"),
        ("trace_id={t}&limit=0", "limit"),
        ("trace_id={t}&limit=1001", "limit"),
        ("trace_id={t}&limit=x", "limit"),
        ("trace_id={t}&limit=-1", "limit"),
        ("trace_id={t}&limit=2.5", "limit"),
        ("trace_id={t}&limit=", "limit"),
        ("trace_id={t}&cursor=not-a-cursor", "cursor"),
        ("trace_id={t}&cursor=" + cursor_of({"a": 1, "b": 2}), "cursor"),
        ("trace_id={t}&cursor=" + cursor_of(["", "not-a-uuid"]), "cursor"),
        ("trace_id={t}&cursor=" + cursor_of(["", 5]), "cursor"),
        ("trace_id={t}&cursor=" + cursor_of([1, A]), "cursor"),
        ("trace_id={t}&cursor=" + cursor_of(["", A, "x"]), "cursor"),
        ("trace_id={t}&cursor=" + cursor_of(7), "cursor"),
    ],
)
def test_listing_refusals(http, query, words):
    assert_refused(http.get("/runs?" + query.replace("{t}", T)), 400, words)


def test_listing_with_a_limit_of_5000_digits_is_400(http):
    assert_refused(http.get(f"/runs?trace_id={T}&limit={'9' * 5000}"), 400, "limit")


def test_listing_with_a_nul_in_the_cursor_is_400(http):
    cursor = cursor_of(["\x00", A])
    assert_refused(http.get(f"/runs?trace_id={T}&cursor={cursor}"), 400, "cursor")


def test_tenants_list_only_their_own_runs(keyed_api):
    http = keyed_api.client
    alpha, beta = {"x-api-key": ALPHA_KEY}, {"x-api-key": BETA_KEY}
    trace_id, shared, alpha_only = new_id(), new_id(), new_id()
    alpha_runs = [run_json(shared, trace_id, "alpha"), run_json(alpha_only, trace_id, "alpha 2")]
    assert post_runs(http, b"[" + b",".join(alpha_runs) + b"]", alpha).status == 201
    response = post_multipart(
        http,
        part(f"post.{shared}", run_json(shared, trace_id, "beta")),
        part(f"attachment.{shared}.f", b"B"),
        headers=beta,
    )
    assert response.status == 202, response.body
    assert {r["name"] for r in list_trace(http, trace_id, headers=alpha)} == {"alpha", "alpha 2"}
    assert [r["name"] for r in list_trace(http, trace_id, headers=beta)] == ["beta"]
    assert http.get(f"/runs?trace_id={trace_id}").status == 401
    # an attachment for a run of another tenant: that run does not exist for the sender
    response = post_multipart(http, part(f"attachment.{alpha_only}.g", b"x"), headers=beta)
    assert response.status == 404
    # beta's patch of alpha's run is beta's own (a patch waiting for its post), alpha's run is untouched
    assert http.patch(f"/runs/{alpha_only}", b'{"name": "hijacked"}', headers=beta).status == 200
    assert http.get(f"/runs/{alpha_only}", headers=alpha).body == alpha_runs[1]
    assert http.get(f"/runs/{alpha_only}", headers=beta).status == 404
    assert http.get(f"/runs/{shared}/attachments/f", headers=alpha).status == 404
    assert http.get(f"/runs/{shared}/attachments/f", headers=beta).body == b"B"


# -- Content-Encoding -----------------------------------------------------------------------------

ENCODERS = {"gzip": gzip.compress, "zstd": lambda data: zstandard.ZstdCompressor(level=3).compress(data)}


@pytest.mark.parametrize("encoding", ENCODERS)
@pytest.mark.parametrize("route", ["runs", "batch", "multipart", "PATCH"])
def test_compressed_bodies_store_the_uncompressed_bytes(http, storage, route, encoding):
    run_id, trace_id = new_id(), new_id()
    run = fidelity_run(run_id, trace_id)
    headers = {"Content-Encoding": encoding}
    expected = run
    if route == "runs":
        response = http.post(split(ENCODERS[encoding](b"[" + run + b"]"), CHUNK), "/runs", headers=headers)
    elif route == "batch":
        body = ENCODERS[encoding](batch_body(post=[run]))
        response = http.post(split(body, CHUNK), "/runs/batch", headers=headers)
    elif route == "multipart":
        body = ENCODERS[encoding](form(part(f"post.{run_id}", run), part(f"post.{run_id}.events", b"[{}]")))
        response = http.post(split(body, CHUNK), "/runs/multipart", MULTIPART, headers)
        expected = run[:-1] + b',"events":[{}]}'
    else:
        assert post_runs(http, run).status == 201
        body = ENCODERS[encoding](b'{"zeta": "patched"}')
        response = http.patch(f"/runs/{run_id}", body, headers=headers)
        expected = members(
            ("id", q(run_id)),
            ("trace_id", q(trace_id)),
            ("name", NAME_RAW),
            ("inputs", INPUTS_RAW),
            ("outputs", OUTPUTS_RAW),
            ("parent_run_id", b"null"),
            ("end_time", b"null"),
            ("zeta", b'"patched"'),
        )
    assert response.status in (200, 201, 202), response.body
    assert http.get(f"/runs/{run_id}").body == expected


def _gzip_with_a_bad_checksum(data: bytes) -> bytes:
    body = bytearray(gzip.compress(data))
    body[-8:-4] = bytes(b ^ 0xFF for b in body[-8:-4])  # CRC32 of the trailer
    return bytes(body)


THREE_RUNS = b"[" + b",".join(run_json(i, T) for i in (A, B, new_id())) + b"]"


@pytest.mark.parametrize(
    "encoding, body, status, words",
    [
        ("br", gzip.compress(THREE_RUNS), 415, "unsupported Content-Encoding"),
        ("gzip, zstd", gzip.compress(THREE_RUNS), 415, "unsupported Content-Encoding"),
        ("gzip", b"this is not gzip at all", 400, "invalid gzip body"),
        ("gzip", _gzip_with_a_bad_checksum(THREE_RUNS), 400, "invalid gzip body"),
        ("gzip", gzip.compress(THREE_RUNS)[:-3], 400, "ends before the compressed stream"),
        ("zstd", ENCODERS["zstd"](THREE_RUNS)[:-2], 400, "ends before the compressed stream"),
        ("zstd", THREE_RUNS, 400, "invalid zstd body"),
    ],
)
def test_refused_encodings_leave_nothing(http, storage, encoding, body, status, words):
    before = storage.snapshot()
    response = http.post(split(body, CHUNK), "/runs", headers={"Content-Encoding": encoding})
    assert_refused(response, status, words)
    storage.assert_unchanged(before)


def _bomb() -> bytes:
    return (
        b'[{"trace_id": "'
        + T.encode()
        + b'", "name": "bomb", "inputs": {"z": "'
        + b"0" * 10_000_000
        + b'"}}]'
    )


@pytest.mark.parametrize("route", ["runs", "multipart"])
@pytest.mark.parametrize("encoding", ENCODERS)
def test_a_compression_bomb_is_413_and_leaves_nothing(limited_api, storage, encoding, route):
    bomb = _bomb()
    if route == "multipart":
        bomb = form(part(f"post.{A}", RUN_A), part(f"post.{A}.inputs", bomb[1:-1]))
    body = ENCODERS[encoding](bomb)
    assert len(body) < 15_000  # it passes the raw body limit: only decoding finds it too big
    before = storage.snapshot()
    path, content_type = ("/runs", "application/json") if route == "runs" else ("/runs/multipart", MULTIPART)
    response = limited_api.client.post(split(body, 500), path, content_type, {"Content-Encoding": encoding})
    assert_refused(response, 413, "decompressed body is larger than 20000 bytes")
    storage.assert_unchanged(before)


# -- GET /info ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "which, runs, body_bytes", [("api", 100, 20 * 1024 * 1024), ("limited_api", 5, 20000)]
)
def test_info_gives_the_limits_a_client_must_keep(request, which, runs, body_bytes):
    response = request.getfixturevalue(which).client.get("/info")
    assert response.status == 200
    info = response.json()
    # The LangSmith version whose behaviour the SDKs may expect (server/info.py), and ours.
    assert info["version"] == LANGSMITH_VERSION and info["run_handler_version"] == __version__
    config = info["batch_ingest_config"]
    assert set(config) == {
        "use_multipart_endpoint",
        "size_limit",
        "size_limit_bytes",
        "scale_up_qsize_trigger",
        "scale_up_nthreads_limit",
        "scale_down_nempty_trigger",
    }
    assert config["use_multipart_endpoint"] is True
    assert (config["size_limit"], config["size_limit_bytes"]) == (runs, body_bytes)
    for key in ("scale_up_qsize_trigger", "scale_up_nthreads_limit", "scale_down_nempty_trigger"):
        assert isinstance(config[key], int) and config[key] > 0
    assert info["instance_flags"] == {"zstd_compression_enabled": True, "gzip_body_enabled": True}


def test_a_patch_whose_post_another_request_commits_meanwhile_is_applied_to_it(http, storage):
    """The SDKs send a run's post and its patch from different threads, in different requests at
    once: the patch's request finds no run and keeps the patch alone, then the post's request
    commits first. At its commit the patch is applied to the stored run instead of refused."""
    run_id, trace_id = new_id(), new_id()
    patch = b'{"id": ' + q(run_id) + b', "end_time": "' + END_TIME.encode() + b'", "outputs": {"late": true}}'
    since = storage.keys()
    conn = http.start_post("/runs/batch", "application/json")
    http.send_chunk(conn, b'{"patch": [' + patch + b'], "post": [')
    deadline = time.monotonic() + 10  # the patch was read, found no run, and is stored alone
    while not in_bucket(storage, [run_id], since):
        assert time.monotonic() < deadline, "the patch was not stored while its body was open"
        time.sleep(0.05)
    post = run_json(run_id, trace_id, "posted meanwhile", inputs={"x": 1})
    assert post_runs(http, b"[" + post + b"]").status == 201
    http.send_chunk(conn, b"]}")
    response = http.finish(conn)
    assert (response.status, response.json()) == (202, {"ids": [], "patched": [run_id]}), response.body
    got = http.get(f"/runs/{run_id}")
    assert list(got.json()) == ["id", "trace_id", "name", "inputs", "end_time", "outputs"]
    assert got.json()["outputs"] == {"late": True} and got.json()["inputs"] == {"x": 1}
    assert posted_flag(storage, run_id) is True
    assert [r["status"] for r in list_trace(http, trace_id)] == ["success"]
