"""Batches generated on the fly, so neither side of a memory test ever holds a whole body."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator

from benchmarks.workloads import field


def batch_chunks(total_bytes: int, run_kb: int = 100) -> tuple[Iterator[bytes], int]:
    """Chunks of a JSON array of runs of the reference shape, about ``total_bytes`` long, and the
    number of runs in it. One run's fields are generated once and reused with fresh ids."""
    rng = random.Random(3)
    fields = {"inputs": field(run_kb, rng), "outputs": field(run_kb, rng), "metadata": field(run_kb, rng)}
    tail = json.dumps(fields)[1:].encode()  # '"inputs": ..., "metadata": {...}}'
    run_size = len(tail) + 120
    count = max(1, total_bytes // run_size)

    def chunks() -> Iterator[bytes]:
        yield b"["
        for i in range(count):
            head = f'{{"trace_id": "{uuid.uuid4()}", "name": "memory run {i}", '.encode()
            yield (b", " if i else b"") + head + tail
        yield b"]"

    return chunks(), count
