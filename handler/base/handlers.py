"""The base of every route's handler: JSON answers, errors included, and the caller's tenant."""

from __future__ import annotations

import json
import logging

import tornado.web

from handler.base.errors import RunError
from handler.server.auth import ApiKeys
from handler.server.config import Settings
from handler.store.db import Database
from handler.store.objects import ObjectStore

log = logging.getLogger(__name__)


class JSONHandler(tornado.web.RequestHandler):
    """Every response, errors included, is JSON."""

    def initialize(self, settings: Settings, store: ObjectStore, db: Database, keys: ApiKeys) -> None:
        self.config = settings
        self.store = store
        self.db = db
        self.keys = keys

    def authenticate(self) -> str | None:
        """The caller's tenant; answers 401 and returns None without a valid ``x-api-key``."""
        tenant = self.keys.tenant_for(self.request.headers.get("x-api-key"))
        if tenant is None:
            self.fail(RunError(401, "a valid x-api-key header is required"))
        return tenant

    def json_body(self, max_bytes: int) -> object:
        """A small body that is read whole (not streamed): 413 past ``max_bytes``, 400 if it is not
        JSON. An empty body is ``{}``."""
        if len(self.request.body) > max_bytes:
            raise RunError(413, f"a query body is at most {max_bytes} bytes")
        try:
            return json.loads(self.request.body or b"{}")
        except (ValueError, UnicodeError):
            raise RunError(400, "body must be a JSON object") from None

    def query_args(self) -> dict[str, list[str]]:
        """The query string's arguments, each name with all its values, as text (bytes that are
        not UTF-8 become U+FFFD, for the checks to refuse rather than fail on)."""
        return {k: [v.decode(errors="replace") for v in vs] for k, vs in self.request.query_arguments.items()}

    def fail(self, error: RunError) -> None:
        if error.status >= 500:
            log.error("%s %s -> %d: %s", self.request.method, self.request.path, error.status, error.reason)
        if self._finished:
            return
        self.clear()
        self.set_status(error.status)
        self.set_retry_after(error)
        body, content_type = self.error_answer(error)
        self.set_header("Content-Type", content_type)
        self.finish(body)  # on a closed connection this writes nothing and does not raise

    def error_answer(self, error: RunError) -> tuple[bytes, str]:
        """An error's body and Content-Type (a route with its own error format overrides it)."""
        return json.dumps(error.to_json()).encode(), "application/json; charset=UTF-8"

    def set_retry_after(self, error: RunError) -> None:
        retry_after = getattr(error, "retry_after", None)  # budget.Busy
        if retry_after is not None:
            self.set_header("Retry-After", str(retry_after))

    def write_error(self, status_code: int, **kwargs) -> None:
        self.finish({"error": self._reason})


class NotFoundHandler(JSONHandler):
    """A path no route takes: 404 at once, saying so. (LangSmith's own API paths, /api/v1/... and
    /api/v2/..., answer 501 instead: server/info.py.)"""

    def initialize(self) -> None:
        pass

    def prepare(self) -> None:
        what = f"{self.request.method} {self.request.path[:200]}"
        self.set_status(404)
        self.finish({"error": f"{what}: no such route on this server (see /openapi.json)"})
