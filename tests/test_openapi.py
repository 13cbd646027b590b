"""The OpenAPI document, the Swagger UI and ReDoc pages, and the API checked against its document.

The last test is a schemathesis run over every documented operation of the live server: requests
generated from the document, each answer checked for a 5xx and against the document (status code,
content type, body schema). Its budget is small and derandomized, so it is quick and repeatable.
"""

from __future__ import annotations

import gzip
import http.client
import json
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import jsonschema_rs
import pytest
import schemathesis
import zstandard
from schemathesis import GenerationMode
from schemathesis.core import NotSet
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from handler.server.docs import DOCUMENT
from tests.server import Server

# What the document must describe: every route of the API, no more.
OPERATIONS = {
    ("post", "/runs"),
    ("get", "/runs"),
    ("post", "/runs/batch"),
    ("post", "/runs/multipart"),
    ("get", "/runs/{run_id}"),
    ("patch", "/runs/{run_id}"),
    ("get", "/runs/{run_id}/attachments/{name}"),
    ("post", "/runs/query"),
    ("post", "/api/v2/runs/query"),
    ("get", "/api/v2/runs/{run_id}"),
    ("get", "/api/v2/sessions"),
    ("post", "/api/v2/sessions"),
    ("get", "/api/v2/sessions/{session_id}"),
    ("patch", "/api/v2/sessions/{session_id}"),
    ("post", "/api/v2/traces/query"),
    ("get", "/api/v2/traces/{trace_id}/runs"),
    ("get", "/sessions"),
    ("post", "/sessions"),
    ("get", "/sessions/{session_id}"),
    ("patch", "/sessions/{session_id}"),
    ("post", "/traces/{trace_id}/extend-retention"),
    ("post", "/feedback"),
    ("get", "/feedback"),
    ("get", "/feedback/{feedback_id}"),
    ("patch", "/feedback/{feedback_id}"),
    ("delete", "/feedback/{feedback_id}"),
    ("get", "/info"),
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
    ("post", "/otel/v1/traces"),
}
UNAUTHENTICATED = {"/info", "/health", "/ready", "/metrics"}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
EXAMPLES_PER_OPERATION = 50  # Hypothesis cases per operation, positive and negative together


def fetch(server: Server, path: str) -> tuple[int, str, bytes]:
    """GET ``path``: status, Content-Type and body."""
    conn = server.client.connect()
    try:
        conn.request("GET", path)
        response: http.client.HTTPResponse = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


def base_url(server: Server) -> str:
    return f"http://{server.client.host}:{server.client.port}"


@pytest.fixture(scope="module")
def document(server: Server) -> dict:
    status, content_type, body = fetch(server, "/openapi.json")
    assert status == 200
    assert content_type.split(";")[0] == "application/json"
    return json.loads(body)


# -- the document ------------------------------------------------------------------------------


def test_served_document_is_the_packaged_one(document):
    assert document == DOCUMENT


def test_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1.")
    # The OpenAPI 3.1 meta-schema, as shipped (and used) by schemathesis.
    errors = [
        f"{'/'.join(map(str, e.instance_path))}: {e.message}"
        for e in OPENAPI_31_VALIDATOR.iter_errors(document)
    ]
    assert errors == []
    # The meta-schema does not look inside schemas: each must be valid JSON Schema 2020-12.
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name


def _refs(node, path=""):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield path, node["$ref"]
        for key, value in node.items():
            yield from _refs(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _refs(value, f"{path}/{i}")


def test_every_reference_resolves(document):
    for where, ref in _refs(document):
        assert ref.startswith("#/"), where
        target = document
        for token in ref[2:].split("/"):
            token = token.replace("~1", "/").replace("~0", "~")
            assert isinstance(target, dict) and token in target, f"{where}: {ref} does not resolve"
            target = target[token]


def test_document_describes_the_whole_api(document):
    documented = {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert documented == OPERATIONS
    loaded = schemathesis.openapi.from_dict(document)
    schemes = document["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "apiKey", "in": "header", "name": "x-api-key"}
    for method, path in OPERATIONS:
        operation = document["paths"][path][method]
        if path in UNAUTHENTICATED:
            assert operation["security"] == [], (method, path)
        else:
            assert operation["security"] == [{"ApiKey": []}], (method, path)
            assert "401" in operation["responses"], (method, path)
        # schemathesis parses the operation: its parameters, bodies and responses make sense.
        loaded[path][method.upper()]


def _validator(document: dict, schema: dict) -> jsonschema_rs.Validator:
    """A validator for ``schema`` whose ``#/components/...`` references point into ``document``."""
    return jsonschema_rs.validator_for(
        {**schema, "components": document["components"]}, validate_formats=True
    )


def test_examples_match_their_schemas(document):
    checked = 0
    for item in document["paths"].values():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            for content in operation.get("requestBody", {}).get("content", {}).values():
                if "example" in content:
                    _validator(document, content["schema"]).validate(content["example"])
                    checked += 1
    for name, schema in document["components"]["schemas"].items():
        for example in schema.get("examples", []):
            _validator(document, {"$ref": f"#/components/schemas/{name}"}).validate(example)
            checked += 1
    assert checked > 0


def test_run_schemas_hold_the_documented_rules(document):
    def valid(name: str, instance) -> bool:
        return _validator(document, {"$ref": f"#/components/schemas/{name}"}).is_valid(instance)

    trace = "944ce838-b5c5-4628-8f23-089fbda8b9e3"
    assert valid("Run", {"trace_id": trace, "name": "n"})
    assert valid(
        "Run", {"trace_id": trace, "name": "n", "anything": {"else": [1]}, "inputs": None, "tags": None}
    )
    assert not valid("Run", {"trace_id": trace, "name": "n", "id": None})
    assert not valid("Run", {"name": "n"})
    assert not valid("Run", {"trace_id": trace})
    assert valid("Run", {"trace_id": trace, "name": ""})
    assert not valid("Run", {"trace_id": trace, "name": "x" * 1025})
    assert valid("Run", {"trace_id": trace, "name": "x" * 1024})
    assert not valid("Run", {"trace_id": trace, "name": "a\x00b"})
    assert not valid("Run", {"trace_id": trace, "name": "n", "run_type": "agent"})
    assert not valid("Run", {"trace_id": trace, "name": "n", "inputs": []})
    assert not valid("Run", {"trace_id": "not-a-uuid", "name": "n"})
    for moment in ("2025-01-01T12:00:00Z", "2025-01-01T12:00:00.123456+05:30", "2025-01-01T12:00:00-23:59"):
        assert valid("Run", {"trace_id": trace, "name": "n", "start_time": moment}), moment
    for moment in ("2025-01-01", "2016-12-31T23:59:60Z", "2025-01-01t12:00:00z", "2025-02-30T00:00:00Z"):
        assert not valid("Run", {"trace_id": trace, "name": "n", "end_time": moment}), moment
    assert not valid("Run", {"trace_id": trace, "name": "n", "dotted_order": "a\x00b"})
    assert valid("RunPatch", {})
    assert not valid("RunPatch", {"id": None})
    assert not valid("BatchPatch", {"end_time": "2025-01-01T00:00:00Z"})
    assert not valid("StoredRun", {"trace_id": trace, "name": "n"})
    assert not valid("MultipartRun", {"trace_id": trace, "name": "n", "inputs": {}})


# -- the docs pages ----------------------------------------------------------------------------


class _PageRefs(HTMLParser):
    """The scripts, stylesheets, other links and spec URLs a page refers to."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.inline_scripts = 0
        self.stylesheets: list[str] = []
        self.links: list[str] = []
        self.spec_urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self._in_script = True
            if attrs.get("src"):
                self.scripts.append(attrs["src"])
        elif tag == "link" and attrs.get("href"):
            (self.stylesheets if attrs.get("rel") == "stylesheet" else self.links).append(attrs["href"])
        elif tag == "redoc" and attrs.get("spec-url"):
            self.spec_urls.append(attrs["spec-url"])

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline_scripts += 1


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_loads_with_its_assets_from_the_service(server, page):
    status, content_type, body = fetch(server, page)
    assert status == 200
    assert content_type.split(";")[0] == "text/html"
    refs = _PageRefs()
    refs.feed(body.decode())
    assert refs.scripts, "the page loads no script"
    assert refs.inline_scripts == 0
    page_url = base_url(server) + page
    origin = urlsplit(page_url).netloc

    def resolve(ref: str) -> str:
        url = urlsplit(urljoin(page_url, ref))
        assert url.netloc == origin, f"{ref} is not served by the service"
        return url.path

    expected = {"script": ("text/javascript", "application/javascript"), "stylesheet": ("text/css",)}
    for kind, refs_of_kind in (("script", refs.scripts), ("stylesheet", refs.stylesheets)):
        for ref in refs_of_kind:
            path = resolve(ref)
            assert path.startswith("/docs/"), path
            status, content_type, body = fetch(server, path)
            assert status == 200, path
            assert content_type.split(";")[0] in expected[kind], (path, content_type)
            assert body, path
    for ref in refs.links:
        assert fetch(server, resolve(ref))[0] == 200, ref
    # The assets the pages need most are the sidecar's builds.
    static = [
        resolve(ref) for ref in refs.scripts + refs.stylesheets if resolve(ref).startswith("/docs/static/")
    ]
    assert static
    if page == "/redoc":
        assert [resolve(ref) for ref in refs.spec_urls] == ["/openapi.json"]
    else:
        initializer = next(resolve(ref) for ref in refs.scripts if "initializer" in ref)
        assert '"openapi.json"' in fetch(server, initializer)[2].decode()
        assert resolve("openapi.json") == "/openapi.json"


def test_docs_static_refuses_what_is_not_there(server):
    assert fetch(server, "/docs/static/no-such-file.js")[0] == 404
    assert fetch(server, "/docs/static/../../handler/__init__.py")[0] in (403, 404)


# -- the API against its document --------------------------------------------------------------


# The document as the package ships it (the one /openapi.json serves, checked above), loaded at import
# so that each operation is a test of its own; requests go to the live server. (A schema from a
# fixture, schemathesis.pytest.from_fixture, would fetch /openapi.json itself, but schemathesis
# 4.32.5 sets `request.node._nodeid` there, which pytest 9.2 no longer has.)
api = schemathesis.openapi.from_dict(DOCUMENT)
api.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=EXAMPLES_PER_OPERATION,
    deterministic=True,  # Hypothesis's derandomize: the same cases on every run
    database="none",
)


@schemathesis.serializer("application/x-protobuf")
def _protobuf(ctx, value) -> bytes:
    """An OTLP body in binary protobuf: the generated bytes as they are (mostly not a valid
    message, which must then be a 400 in protobuf, never a 5xx)."""
    return value if isinstance(value, bytes) else str(value).encode()


CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]


def _compress(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body)
    return zstandard.ZstdCompressor().compress(body)


@api.parametrize()
def test_api_conforms_to_its_document(case, server):
    kwargs = {}
    # A generated Content-Encoding header announces a compressed body: send one, so that the body
    # itself is tested rather than only the decompressor's refusal.
    encoding = (case.headers or {}).get("Content-Encoding")
    if encoding in ("gzip", "zstd") and not isinstance(case.body, NotSet):
        raw = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
        kwargs["data"] = _compress(raw, encoding)
    case.call_and_validate(base_url=base_url(server), checks=CHECKS, **kwargs)
