"""GET /info: what LangSmith clients read before they send: the limits this server enforces, and
the LangSmith version whose behaviour they may expect.

The SDKs compare ``version`` with fixed versions (langsmith 0.15.1 Python, 0.12.0 JavaScript):
- Python sends feedback that has a ``trace_id`` as ``feedback.<id>`` parts of ``/runs/multipart``
  (with the runs, in the background) only from 0.8.10; below, each is a ``POST /feedback``.
- Both warn, when a program touches ``client.runs``, ``traces``, ``threads``, ``datasets`` (and
  ``evaluators``, ``sandboxes``, ``public``), that the server is older than 0.16.0; ``annotation_queues``
  below 0.16.14, the v2 ``sessions`` below 0.18.0.
LANGSMITH_VERSION is 0.16.0: multipart feedback, and no warning for the four resources the issue
names. What those resources call (``/api/v1/...``, ``/api/v2/...``) is not served here, but for
``client.runs.query`` / ``retrieve``, ``client.traces.query`` / ``list_runs`` (handler/query/) and
the v2 ``client.sessions`` calls (handler/read/projects_v2.py), routed before this: it answers
501 with ``x-should-retry: false`` (below), which no SDK retries. Annotation queues and the v2
sessions still warn (the SDK asks 0.18.0 for the latter; raising the version would claim the rest
of 0.18 too).
"""

from __future__ import annotations

from handler import __version__
from handler.base.handlers import JSONHandler
from handler.server.config import MIB

LANGSMITH_VERSION = "0.16.0"


class InfoHandler(JSONHandler):
    """The SDKs size their batches and choose their endpoints from this answer."""

    def get(self) -> None:
        s = self.config
        self.finish(
            {
                "version": LANGSMITH_VERSION,
                "run_handler_version": __version__,
                "batch_ingest_config": {
                    "use_multipart_endpoint": True,
                    "size_limit": min(100, s.max_runs_per_batch),
                    "size_limit_bytes": min(20 * MIB, s.max_body_bytes),
                    "scale_up_qsize_trigger": 1000,
                    "scale_up_nthreads_limit": 16,
                    "scale_down_nempty_trigger": 4,
                },
                "instance_flags": {"zstd_compression_enabled": True, "gzip_body_enabled": True},
            }
        )


class NotImplementedHandler(JSONHandler):
    """``/api/v1/...`` and ``/api/v2/...``: the LangSmith API the SDKs' generated resources call
    (``threads``, ``datasets``, ...), which this server does not implement (but for the v2 runs,
    traces and sessions routed before this). 501 at once, never a 404 or a
    5xx they would retry: their httpx client retries every 5xx unless told ``x-should-retry:
    false``; the hand-written clients do not retry a 501."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    def initialize(self) -> None:
        pass

    def prepare(self) -> None:
        what = f"{self.request.method} {self.request.path}"
        self.set_status(501)
        self.set_header("x-should-retry", "false")
        self.finish(
            {
                "error": f"{what} is LangSmith's API, which this server does not implement; it serves"
                " /runs, /runs/multipart, /runs/batch, /runs/query, /feedback, /sessions, /info and of"
                " /api/v2 the runs, traces and sessions calls"
                " (see /openapi.json)"
            }
        )


def routes(deps: dict) -> list[tuple]:
    return [(r"/info", InfoHandler, deps), (r"/api/v[0-9]+/.*", NotImplementedHandler)]
