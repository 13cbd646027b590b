"""Prometheus metrics, served at GET /metrics.

They live in their own registry, not prometheus_client's global one, so /metrics shows only what
this service defines and tests can import the module without clashing with other registrations.
With WORKERS > 1 each worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` (see
handler/workers.py) and /metrics, whichever worker answers it, reads and sums all of them.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

REGISTRY = CollectorRegistry()

REQUESTS = Counter(
    "run_handler_requests_total",
    "HTTP requests answered, by handler class, method and status: the error rate per route.",
    ["handler", "method", "status"],
    registry=REGISTRY,
)
"""Incremented once per request by ops.log_request."""

RUNS_INGESTED = Counter(
    "run_handler_runs_ingested_total",
    "Runs committed (object stored and row inserted).",
    registry=REGISTRY,
)
"""Throughput in runs, which request counts hide: one batch may hold 1 or 100,000 runs."""

INGESTED_BYTES = Counter(
    "run_handler_ingested_bytes_total",
    "Request body bytes received by the ingestion routes.",
    registry=REGISTRY,
)
"""Network-side throughput, counted as received, so aborted batches show up too."""

UPLOAD_SECONDS = Histogram(
    "run_handler_upload_seconds",
    "Duration of one S3 PUT (a run, an attachment, a part of a large run), retries included.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
"""Object storage latency is what bounds ingestion; buckets span 1 ms (small run, local MinIO)
to 10 s (a 100 MiB run, or retries against a throttling server)."""

BATCHES_IN_FLIGHT = Gauge(
    "run_handler_batches_in_flight",
    "POST /runs batches being received or committed.",
    registry=REGISTRY,
    multiprocess_mode="livesum",  # with WORKERS > 1: the sum over the workers alive
)
"""Load right now, and what a shutdown has to wait for."""

OBJECT_CACHE_READS = Counter(
    "run_handler_object_cache_reads_total",
    "Reads of a stored object, by whether the in-memory cache had it (hit) or S3 was asked (miss).",
    ["result"],
    registry=REGISTRY,
)
"""Whether OBJECT_CACHE_BYTES is sized for the runs clients read again."""

OBJECTS_WRITTEN = Counter(
    "run_handler_objects_written_total",
    "Objects stored in S3, by kind: segment (many small runs), run (one large run), attachment.",
    ["kind"],
    registry=REGISTRY,
)
"""Each PUT is a billed request on S3: with segments this grows with bytes, not with runs."""

OBJECT_BYTES = Histogram(
    "run_handler_object_bytes",
    "Size of each object stored in S3.",
    buckets=(1024, 16 * 1024, 64 * 1024, 256 * 1024, 1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20),
    registry=REGISTRY,
)
"""Whether segments fill up (SEGMENT_BYTES) or are sealed early by SEGMENT_MAX_WAIT_MS."""

BUFFERED_BYTES = Gauge(
    "run_handler_buffered_bytes",
    "Bytes held for requests against the process-wide budget (MAX_BUFFERED_BYTES).",
    registry=REGISTRY,
    multiprocess_mode="livesum",  # with WORKERS > 1: each worker has its own budget
)
"""How close the server is to pushing back on clients."""

BUDGET_WAITING = Gauge(
    "run_handler_budget_waiting_requests",
    "Requests waiting for room in the memory budget (their sockets are not being read).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)

BUDGET_REFUSED = Counter(
    "run_handler_budget_refused_total",
    "Requests answered 503 because no memory came free within BUDGET_WAIT_SECONDS.",
    registry=REGISTRY,
)

OPEN_CONNECTIONS = Gauge(
    "run_handler_open_connections",
    "Client connections open, those past MAX_CONNECTIONS being looked at or served included.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
"""How close each process is to MAX_CONNECTIONS (handler/server/connections.py)."""

CONNECTIONS_REFUSED = Counter(
    "run_handler_connections_refused_total",
    "Connections past MAX_CONNECTIONS refused: answered 503 with Retry-After, or closed unanswered.",
    ["answer"],
    registry=REGISTRY,
)
for _answer in ("503", "closed"):
    CONNECTIONS_REFUSED.labels(_answer)  # shown at 0 from the start, with WORKERS > 1 too

CONNECTIONS_TIMED_OUT = Counter(
    "run_handler_connections_timed_out_total",
    "Connections closed because a request's headers did not arrive within HEADER_TIMEOUT (a new "
    "connection) or KEEPALIVE_TIMEOUT (a kept-alive one).",
    ["wait"],
    registry=REGISTRY,
)
for _wait in ("header", "keepalive"):
    CONNECTIONS_TIMED_OUT.labels(_wait)

GROUP_REQUESTS = Histogram(
    "run_handler_group_requests",
    "Requests per group commit (store/group.py): its _count is the transactions of ingesting "
    "requests, its _sum the requests, so _count / _sum is transactions per request.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
    registry=REGISTRY,
)
"""How well small requests share their PUT and their transaction."""

GROUP_RUNS = Histogram(
    "run_handler_group_runs",
    "Runs per group commit.",
    buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384),
    registry=REGISTRY,
)

GROUP_PUTS = Counter(
    "run_handler_group_puts_total",
    "Shared segments uploaded by group commits (one PUT each); with objects_written_total and "
    "group_requests_sum this gives PUTs per request.",
    registry=REGISTRY,
)

GROUP_WAITING = Gauge(
    "run_handler_group_waiting_requests",
    "Requests whose body has ended, waiting for their group to commit.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)


def exposition() -> bytes:
    """The text format of every metric: this process's, or with WORKERS > 1, all workers' summed."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)
