"""The reference workloads, generated exactly as the earlier service's benchmarks did."""

from __future__ import annotations

import json
import random
import string
import uuid

ALPHABET = string.ascii_letters + string.digits


def field(size_kb: int, rng: random.Random) -> dict[str, str]:
    """``key_0, key_1, ...`` mapping to consecutive 100-character slices of a random string of
    ``size_kb * 1024`` letters and digits (10 KB -> 103 keys, 100 KB -> 1024 keys)."""
    text = "".join(rng.choices(ALPHABET, k=size_kb * 1024))
    return {f"key_{i}": text[i * 100 : (i + 1) * 100] for i in range((len(text) + 99) // 100)}


def make_runs(count: int, size_kb: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "trace_id": str(uuid.uuid4()),
            "name": f"Benchmark Run {uuid.uuid4()}",
            "inputs": field(size_kb, rng),
            "outputs": field(size_kb, rng),
            "metadata": field(size_kb, rng),
        }
        for _ in range(count)
    ]


def one_big_run(size_mb: int) -> list[dict]:
    text = "".join(random.Random(1).choices(ALPHABET, k=size_mb * 1024 * 1024))
    return [{"trace_id": str(uuid.uuid4()), "name": "Benchmark Run big", "inputs": {"blob": text}}]


# name -> (runs factory); the body of each is json.dumps of the list.
WORKLOADS = {
    "500_10kb": lambda: make_runs(500, 10),
    "50_100kb": lambda: make_runs(50, 100),
    "5000_1kb": lambda: make_runs(5000, 1),
    "one_run_50mb": lambda: one_big_run(50),
}


def encode(runs: list[dict]) -> tuple[bytes, list[bytes]]:
    """The request body, and each run's own bytes as they appear in it."""
    parts = [json.dumps(run).encode() for run in runs]
    return b"[" + b", ".join(parts) + b"]", parts
