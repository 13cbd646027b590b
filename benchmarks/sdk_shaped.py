"""The requests of ``python -m benchmarks.load --sdk``: what the langsmith SDK sends when it flushes its
queue -- POST /runs/multipart, zstd-compressed, a post and a patch of each run, 1 to 10 runs a
request -- built with the SDK's own serializer (the pinned langsmith of the test extra), so the
parts, their names, headers and order are the SDK's.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta

import zstandard
from langsmith._internal._operations import (
    encode_multipart_parts_and_context,
    serialize_run_dict,
    serialized_run_operation_to_multipart_parts_and_context,
)

BOUNDARY = uuid.uuid4().hex
PATH = "/runs/multipart"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
HEADERS = {"Content-Encoding": "zstd"}
STATUS = 202
_LEVEL = 1  # the SDK's default RUN_COMPRESSION_LEVEL


def sdk_request(rng: random.Random, run_kb: float, label: str, text) -> tuple[bytes, list[tuple[str, bytes]]]:
    """One request's compressed body, and per run its id and the JSON (inputs, outputs, name) that
    GET must give back. ``text(rng, size)`` makes the words."""
    count = rng.randint(1, 10)
    size = max(64, int(run_kb * 1024 / 2))
    trace_id = uuid.uuid4()
    start = datetime.now(UTC)
    chunks: list[bytes] = []
    expected: list[tuple[str, bytes]] = []
    for i in range(count):
        run_id = uuid.uuid4()
        began = start + timedelta(microseconds=i)
        dotted = f"{began:%Y%m%dT%H%M%S%fZ}{trace_id}"
        if i:
            dotted = f"{dotted}.{began:%Y%m%dT%H%M%S%fZ}{run_id}"
        name = f"{label} run {i}"
        inputs = {"messages": [{"role": "user", "content": text(rng, size)}], "temperature": 0.1}
        outputs = {"generations": [{"text": text(rng, size)}], "llm_output": {"tokens": rng.randint(1, 4000)}}
        post = {
            "id": run_id,
            "trace_id": trace_id,
            "dotted_order": dotted,
            "parent_run_id": trace_id if i else None,
            "name": name,
            "run_type": "llm" if i else "chain",
            "start_time": began.isoformat(),
            "session_name": "load-sdk",
            "inputs": inputs,
            "extra": {"metadata": {"ls_model_name": "gpt-4", "client": label}},
            "tags": ["load"],
        }
        if not i:
            post["id"] = trace_id
            run_id = trace_id
        patch = {
            "id": run_id,
            "trace_id": trace_id,
            "dotted_order": post["dotted_order"],
            "parent_run_id": post["parent_run_id"],
            "end_time": (began + timedelta(milliseconds=5)).isoformat(),
            "outputs": outputs,
        }
        for operation, payload in (("post", post), ("patch", patch)):
            parts, _ = serialized_run_operation_to_multipart_parts_and_context(
                serialize_run_dict(operation, dict(payload))
            )
            for head, data in encode_multipart_parts_and_context(parts, BOUNDARY):
                chunks += [head, data, b"\r\n"]
        expected.append(
            (str(run_id), json.dumps({"name": name, "inputs": inputs, "outputs": outputs}).encode())
        )
    chunks.append(f"--{BOUNDARY}--\r\n".encode())
    # A compressor per request: one shared between client threads is not thread-safe.
    return zstandard.ZstdCompressor(level=_LEVEL).compress(b"".join(chunks)), expected


def matches(got: bytes, expected: bytes) -> str | None:
    """None if the stored run has the name, inputs and outputs that were sent."""
    try:
        stored = json.loads(got)
    except ValueError as e:
        return f"not JSON: {e}"
    for field, value in json.loads(expected).items():
        if stored.get(field) != value:
            return f"{field}: got {json.dumps(stored.get(field))[:80]}, sent {json.dumps(value)[:80]}"
    return None
