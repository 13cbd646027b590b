"""OTLP/HTTP trace export into the server, from the OpenTelemetry SDK's own exporter (protobuf) and
the OTLP JSON encoding (gzip): spans come back as runs with the README's ids, types, inputs and
outputs, model, tokens, errors and metadata, listed in dotted_order whatever order they came in."""

from __future__ import annotations

import json
import time

from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.trace import StatusCode

from tests.otel import json_request, json_span, post_json, provider, random_hex, run_id, trace_uuid
from tests.runs import list_trace


def get_run(client, rid: str) -> dict:
    response = client.get(f"/runs/{rid}")
    assert response.status == 200, response.body
    return response.json()


def wait_for_trace(client, trace_id: str, count: int, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        runs = list_trace(client, trace_id)
        if len(runs) >= count or time.monotonic() > deadline:
            return runs
        time.sleep(0.2)


def traced_pipeline(tp) -> dict:
    """A trace with GenAI, OpenInference, Traceloop and error spans; returns name -> span context."""
    tracer = tp.get_tracer("pipeline-test", "1.2.3")
    seen = {}
    with tracer.start_as_current_span("agent") as root:
        root.set_attribute("openinference.span.kind", "AGENT")
        root.set_attribute("input.value", json.dumps({"question": "weather in Paris?"}))
        root.set_attribute("input.mime_type", "application/json")
        root.set_attribute("output.value", "It is sunny.")
        root.set_attribute("app.user", "u-42")
        seen["agent"] = root.get_span_context()
        with tracer.start_as_current_span("chat gpt-4o") as chat:
            chat.set_attribute("gen_ai.operation.name", "chat")
            chat.set_attribute("gen_ai.provider.name", "openai")
            chat.set_attribute("gen_ai.request.model", "gpt-4o")
            chat.set_attribute("gen_ai.request.temperature", 0.2)
            chat.set_attribute("gen_ai.request.max_tokens", 200)
            chat.set_attribute("gen_ai.usage.input_tokens", 12)
            chat.set_attribute("gen_ai.usage.output_tokens", 3)
            chat.set_attribute(
                "gen_ai.input.messages",
                json.dumps([{"role": "user", "parts": [{"type": "text", "content": "hi"}]}]),
            )
            chat.set_attribute(
                "gen_ai.output.messages",
                json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": "hello"}]}]),
            )
            seen["chat gpt-4o"] = chat.get_span_context()
        with tracer.start_as_current_span("retrieve") as retrieve:
            retrieve.set_attribute("openinference.span.kind", "RETRIEVER")
            retrieve.set_attribute("input.value", "paris weather")
            retrieve.set_attribute("output.value", json.dumps({"documents": ["doc1"]}))
            seen["retrieve"] = retrieve.get_span_context()
            with tracer.start_as_current_span("embed") as embed:
                embed.set_attribute("openinference.span.kind", "EMBEDDING")
                embed.set_attribute("llm.model_name", "text-embedding-3-small")
                seen["embed"] = embed.get_span_context()
        with tracer.start_as_current_span("oi-llm") as llm:
            llm.set_attribute("openinference.span.kind", "LLM")
            llm.set_attribute("llm.model_name", "claude-x")
            llm.set_attribute("llm.provider", "anthropic")
            llm.set_attribute("llm.invocation_parameters", json.dumps({"temperature": 0.5}))
            llm.set_attribute("llm.input_messages.0.message.role", "user")
            llm.set_attribute("llm.input_messages.0.message.content", "hi")
            llm.set_attribute("llm.output_messages.0.message.role", "assistant")
            llm.set_attribute("llm.output_messages.0.message.content", "hey")
            llm.set_attribute("llm.token_count.prompt", 5)
            llm.set_attribute("llm.token_count.completion", 7)
            llm.set_attribute("llm.token_count.total", 12)
            seen["oi-llm"] = llm.get_span_context()
        with tracer.start_as_current_span("workflow-task") as task:
            task.set_attribute("traceloop.span.kind", "task")
            task.set_attribute("traceloop.entity.name", "summarize")
            task.set_attribute("traceloop.entity.input", json.dumps({"inputs": {"text": "long"}}))
            task.set_attribute("traceloop.entity.output", json.dumps({"outputs": "short"}))
            seen["summarize"] = task.get_span_context()
        try:
            with tracer.start_as_current_span("lookup") as tool:
                tool.set_attribute("gen_ai.operation.name", "execute_tool")
                tool.add_event("progress", {"step": 1})
                seen["lookup"] = tool.get_span_context()
                raise KeyError("no such city")
        except KeyError:
            pass
    return seen


def check_pipeline(client, seen: dict, project: str = "default") -> None:
    trace_id = trace_uuid(seen["agent"].trace_id)
    runs = wait_for_trace(client, trace_id, len(seen))
    assert len(runs) == len(seen)
    by_name = {r["name"]: r for r in runs}
    for name, ctx in seen.items():
        assert by_name[name]["id"] == run_id(ctx.span_id)
        assert by_name[name]["trace_id"] == trace_id
        assert by_name[name]["session_name"] == project
    root = run_id(seen["agent"].span_id)
    assert by_name["agent"]["parent_run_id"] is None
    for name in ("chat gpt-4o", "retrieve", "oi-llm", "summarize", "lookup"):
        assert by_name[name]["parent_run_id"] == root
    assert by_name["embed"]["parent_run_id"] == run_id(seen["retrieve"].span_id)
    # Listed depth first, siblings by start time, as SDK traces are.
    assert [r["name"] for r in runs] == [
        "agent",
        "chat gpt-4o",
        "retrieve",
        "embed",
        "oi-llm",
        "summarize",
        "lookup",
    ]
    orders = [r["dotted_order"] for r in runs]
    assert orders == sorted(orders)
    assert by_name["embed"]["dotted_order"].startswith(by_name["retrieve"]["dotted_order"] + ".")
    assert by_name["retrieve"]["dotted_order"].startswith(by_name["agent"]["dotted_order"] + ".")
    assert {r["name"]: r["run_type"] for r in runs} == {
        "agent": "chain",
        "chat gpt-4o": "llm",
        "retrieve": "retriever",
        "embed": "embedding",
        "oi-llm": "llm",
        "summarize": "chain",
        "lookup": "tool",
    }
    assert by_name["lookup"]["status"] == "error"

    agent = get_run(client, root)
    assert agent["inputs"] == {"question": "weather in Paris?"}
    assert agent["outputs"] == {"output": "It is sunny."}
    assert agent["extra"]["metadata"]["app.user"] == "u-42"
    assert agent["extra"]["metadata"]["otel"]["scope"] == {"name": "pipeline-test", "version": "1.2.3"}
    assert agent["extra"]["metadata"]["otel"]["resource"]["service.name"] == "otel-test"
    assert agent["start_time"].startswith(by_name["agent"]["start_time"][:19])

    chat = get_run(client, by_name["chat gpt-4o"]["id"])
    assert chat["inputs"]["messages"][0]["parts"][0]["content"] == "hi"  # JSON kept as JSON
    assert chat["outputs"]["messages"][0]["role"] == "assistant"
    assert chat["outputs"]["usage_metadata"] == {"input_tokens": 12, "output_tokens": 3, "total_tokens": 15}
    assert chat["extra"]["metadata"]["ls_model_name"] == "gpt-4o"
    assert chat["extra"]["metadata"]["ls_provider"] == "openai"
    assert chat["extra"]["invocation_params"] == {"temperature": 0.2, "max_tokens": 200, "model": "gpt-4o"}
    assert "gen_ai.request.model" not in chat["extra"]["metadata"]  # taken, not repeated

    retrieve = get_run(client, by_name["retrieve"]["id"])
    assert retrieve["inputs"] == {"input": "paris weather"}
    assert retrieve["outputs"] == {"documents": ["doc1"]}
    embed = get_run(client, by_name["embed"]["id"])
    assert embed["extra"]["metadata"]["ls_model_name"] == "text-embedding-3-small"

    llm = get_run(client, by_name["oi-llm"]["id"])
    assert llm["inputs"] == {"messages": [{"role": "user", "content": "hi"}]}
    assert llm["outputs"]["messages"] == [{"role": "assistant", "content": "hey"}]
    assert llm["outputs"]["usage_metadata"] == {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}
    assert llm["extra"]["metadata"]["ls_provider"] == "anthropic"
    assert llm["extra"]["invocation_params"]["temperature"] == 0.5

    task = get_run(client, by_name["summarize"]["id"])
    assert task["inputs"] == {"inputs": {"text": "long"}}
    assert task["outputs"] == {"outputs": "short"}

    tool = get_run(client, by_name["lookup"]["id"])
    assert tool["error"].startswith("KeyError: 'no such city'\n\nTraceback")
    assert [e["name"] for e in tool["events"]] == ["progress", "exception"]
    assert tool["events"][0]["kwargs"] == {"step": 1}


def test_sdk_exporter_batch(server, client):
    """BatchSpanProcessor: the whole trace in one export, children listed before their parents."""
    tp = provider(server)
    seen = traced_pipeline(tp)
    assert tp.force_flush(30_000)
    tp.shutdown()
    check_pipeline(client, seen)


def test_sdk_exporter_children_first_in_other_requests(server, client):
    """SimpleSpanProcessor: one export per span as it ends -- every child in a request before its
    parent's; gzip-compressed; the project from Langsmith-Project; the /v1/traces path."""
    tp = provider(
        server,
        simple=True,
        path="/v1/traces",
        headers={"Langsmith-Project": "otel-simple"},
        compression=Compression.Gzip,
    )
    seen = traced_pipeline(tp)
    tp.shutdown()
    check_pipeline(client, seen, project="otel-simple")


def test_json_gzip_and_late_parents(server, client):
    """The OTLP JSON encoding, gzipped, on LangSmith's self-hosted path: a grandchild, then its
    parent, then the root, each in its own request; the orders end as if they came root first."""
    trace, root, mid, leaf = random_hex(16), random_hex(8), random_hex(8), random_hex(8)
    t0 = 1_750_000_000_000_000_000
    spans = {
        "leaf": json_span(trace, leaf, "leaf", t0 + 2_000_000, mid, **{"langsmith.span.kind": "tool"}),
        "mid": json_span(trace, mid, "mid", t0 + 1_000_000, root, **{"langsmith.span.kind": "llm"}),
        "root": json_span(trace, root, "root", t0, **{"langsmith.span.kind": "chain"}),
    }
    for name in ("leaf", "mid", "root"):
        response = post_json(client, json_request(spans[name]), path="/api/v1/otel/v1/traces")
        assert response.status == 200, response.body
        assert response.json() == {}
    runs = list_trace(client, trace_uuid(trace))
    assert [r["name"] for r in runs] == ["root", "mid", "leaf"]
    r, m, lf = (f"20250615T150640{us:06d}Z" for us in (0, 1000, 2000))
    assert [x["dotted_order"] for x in runs] == [
        f"{r}{run_id(root)}",
        f"{r}{run_id(root)}.{m}{run_id(mid)}",
        f"{r}{run_id(root)}.{m}{run_id(mid)}.{lf}{run_id(leaf)}",
    ]
    assert [x["parent_run_id"] for x in runs] == [None, run_id(root), run_id(mid)]
    assert [x["run_type"] for x in runs] == ["chain", "llm", "tool"]


def test_json_children_and_parent_in_one_request_and_more_later(server, client):
    """A request with a child before its parent, whose own parent comes in a later request with
    a second child: all linked."""
    trace, root, a, b, c = random_hex(16), random_hex(8), random_hex(8), random_hex(8), random_hex(8)
    t0 = 1_760_000_000_000_000_000
    first = json_request(json_span(trace, b, "b", t0 + 3_000, a), json_span(trace, a, "a", t0 + 2_000, root))
    assert post_json(client, first, gzipped=False).status == 200
    second = json_request(json_span(trace, root, "root", t0), json_span(trace, c, "c", t0 + 1_000, root))
    assert post_json(client, second).status == 200
    runs = list_trace(client, trace_uuid(trace))
    assert [x["name"] for x in runs] == ["root", "c", "a", "b"]
    assert all(x["dotted_order"].startswith(runs[0]["dotted_order"]) for x in runs)


_FAULT = """
CREATE FUNCTION otel_relink_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.trace_id = '{trace}' THEN RAISE EXCEPTION 'injected: the database fails'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER otel_relink_fault BEFORE UPDATE OF dotted_order ON runs
    FOR EACH ROW EXECUTE FUNCTION otel_relink_fault();
"""


def test_relink_failing_after_the_commit_is_repaired_by_the_retry(server, client, db):
    """A child is stored before its parent (a stand-in segment for the parent). The parent's
    request commits, then its relink fails (a trigger refuses the repair, as the database failing
    between the two would): the answer is a retryable 503 with Retry-After, and the exporter's
    retry, whose span is refused as stored already, links the child all the same."""
    trace, root, child = random_hex(16), random_hex(8), random_hex(8)
    t0 = 1_760_000_000_000_000_000
    late = json_request(json_span(trace, child, "child", t0 + 1_000_000, root))
    assert post_json(client, late).status == 200
    parent = json.dumps(json_request(json_span(trace, root, "root", t0))).encode()
    with db.cursor() as cur:
        cur.execute(_FAULT.format(trace=trace_uuid(trace)))
    try:
        conn = client.connect()
        conn.request("POST", "/otel/v1/traces", parent, {"Content-Type": "application/json"})
        answer = conn.getresponse()
        body = answer.read()
        conn.close()
    finally:
        with db.cursor() as cur:
            cur.execute("DROP TRIGGER otel_relink_fault ON runs; DROP FUNCTION otel_relink_fault()")
    assert answer.status == 503 and answer.getheader("Retry-After"), body
    assert "not yet linked" in json.loads(body)["message"]
    runs = {r["name"]: r for r in list_trace(client, trace_uuid(trace))}  # both stored
    assert not runs["child"]["dotted_order"].startswith(runs["root"]["dotted_order"])  # a stand-in
    retry = client.post(parent, "/otel/v1/traces", "application/json")
    assert retry.status == 200 and retry.json()["partialSuccess"]["rejectedSpans"] == "1"
    runs = list_trace(client, trace_uuid(trace))
    assert [r["name"] for r in runs] == ["root", "child"]
    assert runs[1]["dotted_order"] == f"{runs[0]['dotted_order']}.20251009T085320001000Z{run_id(child)}"


def test_partial_success_and_protobuf_answers(server, client, store):
    """Spans with unusable ids are refused one by one (partial_success); the rest are stored. The
    answer is an ExportTraceServiceResponse in the request's encoding."""
    trace = random_hex(16)
    good = json_span(trace, random_hex(8), "good", 1_700_000_000_000_000_000)
    bad = [
        json_span(trace, "abcd", "short span id", 1),
        json_span(random_hex(8), random_hex(8), "short trace id", 1),
        json_span("0" * 32, random_hex(8), "zero trace id", 1),
        json_span(trace, random_hex(8), "parent of 3 bytes", 1, parent="abcdef"),
        json_span(trace, good["spanId"], "repeats good", 1),
    ]
    response = post_json(client, json_request(good, *bad))
    assert response.status == 200, response.body
    answer = response.json()
    assert answer["partialSuccess"]["rejectedSpans"] == "5"
    assert "span_id must be 8 bytes" in answer["partialSuccess"]["errorMessage"]
    assert [r["name"] for r in list_trace(client, trace_uuid(trace))] == ["good"]
    # The same request again: the good span is stored already -- refused alone, nothing added.
    before = store.snapshot()
    again = post_json(client, json_request(good))
    assert again.status == 200
    assert again.json()["partialSuccess"]["rejectedSpans"] == "1"
    assert "stored already" in again.json()["partialSuccess"]["errorMessage"]
    store.assert_unchanged(before)

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    response = client.post(b"\x0a\x05garbage", "/otel/v1/traces", "application/x-protobuf")
    assert response.status == 400
    status = Status.FromString(response.body)
    assert status.code == 3 and "ExportTraceServiceRequest" in status.message
    empty = client.post(b"", "/otel/v1/traces", "application/x-protobuf")
    assert empty.status == 200
    assert ExportTraceServiceResponse.FromString(empty.body) == ExportTraceServiceResponse()


def test_sdk_exporter_reports_success(server):
    """The exporter's own verdict: SUCCESS, so it neither retries nor drops."""
    from opentelemetry.sdk.trace.export import SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tests.otel import OTLPSpanExporter

    memory = InMemorySpanExporter()
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(memory))
    with tp.get_tracer("t").start_as_current_span("one") as span:
        span.set_status(StatusCode.OK)
    exporter = OTLPSpanExporter(endpoint=f"http://{server.client.host}:{server.client.port}/otel/v1/traces")
    assert exporter.export(memory.get_finished_spans()) == SpanExportResult.SUCCESS


def test_parent_and_child_sent_at_once(server, client):
    """A parent and its child (and grandchild) in requests sent at the same moment, many times:
    whichever commits and relinks first, every trace ends linked and ordered."""
    from concurrent.futures import ThreadPoolExecutor

    t0 = 1_770_000_000_000_000_000
    traces = []
    with ThreadPoolExecutor(6) as pool:
        for _ in range(12):
            trace, root, mid, leaf = random_hex(16), random_hex(8), random_hex(8), random_hex(8)
            traces.append((trace, root, mid, leaf))
            requests = [
                json_request(json_span(trace, leaf, "leaf", t0 + 2_000, mid)),
                json_request(json_span(trace, mid, "mid", t0 + 1_000, root)),
                json_request(json_span(trace, root, "root", t0)),
            ]
            answers = list(pool.map(lambda r: post_json(client, r, gzipped=False), requests))
            assert all(a.status == 200 for a in answers), [a.body for a in answers]
    for trace, root, mid, leaf in traces:
        runs = list_trace(client, trace_uuid(trace))
        assert [r["name"] for r in runs] == ["root", "mid", "leaf"]
        assert [r["id"] for r in runs] == [run_id(root), run_id(mid), run_id(leaf)]
        root_order = runs[0]["dotted_order"]
        assert runs[1]["dotted_order"] == f"{root_order}.{runs[1]['dotted_order'].rsplit('.', 1)[-1]}"
        assert runs[2]["dotted_order"].startswith(runs[1]["dotted_order"] + ".")
        assert runs[2]["dotted_order"].count(".") == 2


def test_query_columns_of_span_runs(server, client, db):
    """A span's run fills the query columns (tags, metadata, tokens) as a run posted to /runs does,
    so filters and the monitor see it."""
    trace, span = random_hex(16), random_hex(8)
    attrs = {
        "langsmith.span.tags": "alpha, beta",
        "langsmith.metadata.user": "ada",
        "gen_ai.operation.name": "chat",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 3,
    }
    assert (
        post_json(
            client, json_request(json_span(trace, span, "tagged", 1_750_000_000_000_000_000, **attrs))
        ).status
        == 200
    )
    with db.cursor() as cur:
        cur.execute(
            "SELECT tags, metadata->>'user', prompt_tokens, completion_tokens, total_tokens"
            " FROM runs WHERE id = %s",
            (run_id(span),),
        )
        tags, user, prompt, completion, total = cur.fetchone()
    assert (tags, user, prompt, completion, total) == (["alpha", "beta"], "ada", 12, 3, 15)


def test_query_columns_from_values_equal_the_splitters():
    """runs/schema.run_of gathers a run's query columns from its decoded values exactly as the
    splitter does from its bytes: tags, metadata, every token path, search text."""
    import orjson

    from handler.query import extract
    from handler.runs.schema import run_of
    from handler.runs.splitter import parse_run

    trace = "944ce838-b5c5-4628-8f23-089fbda8b9e3"
    runs = [
        {
            "trace_id": trace,
            "name": "a",
            "tags": ["x", "y"],
            "extra": {"metadata": {"user": "ada", "n": 2, "f": 0.5}},
        },
        {
            "trace_id": trace,
            "name": "b",
            "outputs": {"usage_metadata": {"input_tokens": 12, "output_tokens": 3}},
        },
        {
            "trace_id": trace,
            "name": "c",
            "outputs": {"generations": [[{"message": {"kwargs": {"usage_metadata": {"input_tokens": 7}}}}]]},
            "inputs": {"q": "hello", "deep": {"list": ["one", 2.5, None, True]}},
        },
        {
            "trace_id": trace,
            "name": "d",
            "extra": {"metadata": {"nested": {"no": 1}}, "other": [1, {"a": "b"}]},
        },
        {"trace_id": trace, "name": "e", "outputs": {"llm_output": {"token_usage": {"total_tokens": 1e3}}}},
        # a path's inner node holding a scalar (the splitter raised ValueError on these: a 500)
        {"trace_id": trace, "name": "f", "outputs": {"usage_metadata": None, "llm_output": {"usage": 3}}},
        {"trace_id": trace, "name": "g", "extra": {"metadata": {"usage_metadata": "x", "k": "v"}}},
        {
            "trace_id": trace,
            "name": "h",
            "inputs": {**{f"k{i}": [i] if i % 3 else i for i in range(10)}, "q": None, "s": "x" * 200},
            "outputs": {"a": 1.5, "b": {"c": 1}, **{f"o{i}": "v" for i in range(9)}, "usage_metadata": {}},
        },
    ]
    for chars, io_keys in ((0, 0), (40, 0), (0, 8), (40, 3)):
        extract.configure(chars, io_keys)
        try:
            for fields in runs:
                body = orjson.dumps(fields)
                expected = extract.query_columns(parse_run(body, 1 << 20, 512, "run"))
                assert extract.query_columns(run_of(fields, 0)) == expected, (chars, io_keys, fields)
        finally:
            extract.configure(0)


_TAP_KEYS = (
    "metadata",
    "usage_metadata",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "total_cost",
    "llm_output",
    "token_usage",
    "usage",
    "prompt_tokens",
    "generations",
    "message",
    "kwargs",
    "user",
    "other",
)


def _random_value(rng, depth: int):
    kind = rng.random()
    if depth < 6 and kind < 0.3:
        return {rng.choice(_TAP_KEYS): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if depth < 6 and kind < 0.45:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    scalars = [rng.randint(-5, 10**6), rng.random() * 100, "text " * rng.randint(0, 3), True, None, 1e3]
    return rng.choice(scalars)


def test_query_columns_from_random_values_equal_the_splitters():
    """The same, on seeded random nestings of the paths' keys: run_of's walk skips what the
    splitter's events pass over (values below both limits), and finds the same columns."""
    import random

    import orjson

    from handler.query import extract
    from handler.runs.schema import run_of
    from handler.runs.splitter import parse_run

    rng = random.Random(21)
    for chars, io_keys in ((0, 0), (40, 0), (0, 3), (40, 8)):
        extract.configure(chars, io_keys)
        try:
            for _ in range(400):
                fields = {"trace_id": "944ce838-b5c5-4628-8f23-089fbda8b9e3", "name": "r"}
                for key in ("extra", "outputs", "inputs"):
                    if rng.random() < 0.7:
                        fields[key] = {k: _random_value(rng, 1) for k in rng.sample(_TAP_KEYS, 4)}
                if rng.random() < 0.5:
                    fields["tags"] = [f"t{rng.randint(0, 9)}" for _ in range(rng.randint(0, 3))]
                expected = extract.query_columns(parse_run(orjson.dumps(fields), 1 << 20, 512, "run"))
                assert extract.query_columns(run_of(fields, 0)) == expected, (chars, io_keys, fields)
        finally:
            extract.configure(0)
