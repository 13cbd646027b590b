"""GET /info: what LangSmith clients read before they send: the limits this server enforces."""

from __future__ import annotations

from handler import __version__
from handler.base.handlers import JSONHandler
from handler.server.config import MIB


class InfoHandler(JSONHandler):
    """The SDKs size their batches and choose their endpoints from this answer."""

    def get(self) -> None:
        s = self.config
        self.finish(
            {
                "version": __version__,
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


def routes(deps: dict) -> list[tuple]:
    return [(r"/info", InfoHandler, deps)]
