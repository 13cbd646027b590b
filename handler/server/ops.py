"""Operations: /health, /ready, /metrics and the access log.

These routes are unauthenticated: load balancers, orchestrators and Prometheus call them without
an API key, and they reveal nothing about any tenant's runs.
"""

from __future__ import annotations

import asyncio
import logging
import re

import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST

from handler.base.metrics import REQUESTS, exposition
from handler.server.auth import ApiKeys
from handler.server.config import Settings
from handler.store.db import Database
from handler.store.objects import ObjectStore

log = logging.getLogger(__name__)
access_log = logging.getLogger("handler.access")

# A dependency slower than this is not ready to take batches either. A probe's own timeout must
# be longer (Kubernetes' timeoutSeconds defaults to 1 s), or a slow answer reads as no answer.
READY_TIMEOUT_S = 2.0

# Methods outside this set are counted as "other": the method label must not let a client create
# unbounded metric series.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Control characters, spaces and DEL in the request line would break a key=value log line (or
# forge one); they are percent-encoded.
_UNSAFE = re.compile(r"[\x00-\x20\x7f-\x9f]")


class OpsHandler(tornado.web.RequestHandler):
    """JSON answers, errors included, never cached: a probe must see the present state."""

    SUPPORTED_METHODS = ("GET",)

    def initialize(self, settings: Settings, store: ObjectStore, db: Database, keys: ApiKeys) -> None:
        self.store = store
        self.db = db

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")

    def write_error(self, status_code: int, **kwargs) -> None:
        self.finish({"error": self._reason})


class HealthHandler(OpsHandler):
    """GET /health: liveness. The process answers; dependencies are /ready's business, so that an
    outage of PostgreSQL or S3 does not get every replica restarted."""

    def get(self) -> None:
        self.finish({"status": "ok"})


class ReadyHandler(OpsHandler):
    """GET /ready: can this process take batches now? Both PostgreSQL and S3 must answer."""

    async def get(self) -> None:
        postgres, s3 = await asyncio.gather(_check(self.db.ping()), _check(self.store.ping()))
        ready = postgres == "ok" and s3 == "ok"
        if not ready:
            log.warning("not ready: postgres: %s; s3: %s", postgres, s3)
            self.set_status(503)
        self.finish({"status": "ready" if ready else "unavailable", "postgres": postgres, "s3": s3})


class MetricsHandler(OpsHandler):
    """GET /metrics: the Prometheus text format, for the whole server (all its workers)."""

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(exposition())


async def _check(ping) -> str:
    """ "ok", or why not, on one line."""
    try:
        await asyncio.wait_for(ping, READY_TIMEOUT_S)
    except TimeoutError:
        return f"no answer in {READY_TIMEOUT_S:g} s"
    except Exception as e:
        return " ".join(str(e).split()) or type(e).__name__
    return "ok"


def routes(deps: dict) -> list[tuple]:
    return [
        (r"/health", HealthHandler, deps),
        (r"/ready", ReadyHandler, deps),
        (r"/metrics", MetricsHandler, deps),
    ]


def _safe(text: str) -> str:
    return _UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", text)


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's ``log_function``: one key=value access-log line per request, and the request count.

    The query string is left out: it may carry ids or keys that do not belong in logs.
    """
    request = handler.request
    status = handler.get_status()
    body_bytes = getattr(handler, "body_bytes", None)
    if body_bytes is None:
        body_bytes = len(request.body or b"")
    runs = getattr(handler, "run_count", 0)
    objects = getattr(handler, "object_count", 0)
    group = getattr(handler, "group_id", None)  # the group commit it was in (store/group.py)
    if status < 400:
        level = logging.INFO
    elif status < 500 or status == 501:  # 501: a route not served (server/info.py), the client's call
        level = logging.WARNING
    else:
        level = logging.ERROR
    access_log.log(
        level,
        "%s %s %d bytes=%d runs=%d objects=%d duration_ms=%.1f%s",
        _safe(request.method or "-"),
        _safe(request.path or "-"),
        status,
        body_bytes,
        runs,
        objects,
        1000.0 * request.request_time(),
        f" group={group}" if group else "",
    )
    method = request.method if request.method in _KNOWN_METHODS else "other"
    REQUESTS.labels(type(handler).__name__, method, str(status)).inc()
