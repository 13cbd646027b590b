"""What retention sweeps deleted, in /metrics (the service's registry, base/metrics.py)."""

from __future__ import annotations

from prometheus_client import Counter

from handler.base.metrics import REGISTRY

SWEEPS = Counter(
    "run_handler_retention_sweeps_total",
    "Retention sweeps by result: done, busy (another process held the lock), failed.",
    ["result"],
    registry=REGISTRY,
)
for _result in ("done", "busy", "failed"):  # each series from 0, in every process
    SWEEPS.labels(_result)
TRACES_DELETED = Counter(
    "run_handler_retention_traces_deleted_total", "Expired traces deleted by sweeps.", registry=REGISTRY
)
RUNS_DELETED = Counter(
    "run_handler_retention_runs_deleted_total", "Runs of expired traces deleted by sweeps.", registry=REGISTRY
)
BYTES_DELETED = Counter(
    "run_handler_retention_bytes_deleted_total",
    "Bytes of the runs and attachments of expired traces deleted by sweeps (a segment's share of"
    " them leaves the bucket once no run is left in it, or compact rewrites it).",
    registry=REGISTRY,
)
OBJECTS_DELETED = Counter(
    "run_handler_retention_objects_deleted_total",
    "Objects deleted from the bucket by sweeps (whole runs, attachments, segments left with no live run).",
    registry=REGISTRY,
)
