"""The ``/feedback`` routes: LangSmith's feedback API, as its SDKs' ``create_feedback``,
``list_feedback``, ``read_feedback``, ``update_feedback`` and ``delete_feedback`` call it.

``POST /feedback`` is an ingesting route like ``/runs``: its body streams into a BatchIngest and
is written by the same ``write_batch`` as the ``feedback.<id>`` parts of ``/runs/multipart``, so
both are checked by one function (schema.parse) and stored the same way. A feedback may name a
run that has not arrived (or never will): it is kept, listed by its run id, and counted in the
run's ``feedback_stats`` once the run is there. It never answers 404: the SDKs retry a 404 of
``POST /feedback`` for minutes.
"""

from __future__ import annotations

import re

from handler.base.errors import RunError
from handler.base.handlers import JSONHandler
from handler.feedback import store
from handler.feedback.schema import parse, parse_update
from handler.read.runs import uuid_argument
from handler.runs.ingest import BatchIngest
from handler.runs.ingest_handler import IngestHandler
from handler.runs.schema import UUID_TEXT
from handler.server.config import Settings

MAX_PAGE = 100
MAX_IDS = 1000
_DIGITS = re.compile(r"[0-9]{1,9}")
# The SDK's list_feedback sends its enum as requests writes it: FeedbackSourceType.API.
_SOURCES = {"api": "api", "model": "model", "app": "app"}
_SOURCES |= {f"FeedbackSourceType.{k.upper()}": v for k, v in _SOURCES.items()}
_FLAGS = {"true": True, "false": False}
LIST_PARAMETERS = ("run", "key", "source", "session", "has_comment", "has_score", "limit", "offset")


class FeedbackReader:
    """POST /feedback: one feedback, held until the body ends (at most MAX_FEEDBACK_BYTES)."""

    def __init__(self, ingest: BatchIngest, settings: Settings) -> None:
        self._ingest = ingest
        self._settings = settings
        self._body = bytearray()
        self.row = None

    @property
    def buffered(self) -> int:
        return len(self._body)

    async def feed(self, chunk: bytes) -> None:
        self._body += chunk
        if len(self._body) > self._settings.max_feedback_bytes:
            raise RunError(413, f"a feedback is at most {self._settings.max_feedback_bytes} bytes")

    async def close(self) -> None:
        self.row = parse(bytes(self._body), "feedback", self._settings.max_depth)
        self._ingest.add_feedback(self.row, len(self._body))


class FeedbackHandler(IngestHandler):
    """POST /feedback: create one. GET /feedback: list them, newest first, in offset pages."""

    SUPPORTED_METHODS = ("GET", "POST")

    def check_content_type(self, content_type: str) -> None:
        super().check_content_type(content_type)
        length = self.request.headers.get("Content-Length", "")
        limit = self.config.max_feedback_bytes
        if length.isascii() and length.isdigit() and int(length) > limit:
            raise RunError(413, f"a feedback is at most {limit} bytes")

    def make_reader(self, ingest: BatchIngest) -> FeedbackReader:
        return FeedbackReader(ingest, self.config)

    async def post(self) -> None:
        reader = self.reader if self.ingest is not None else None
        result = await self.commit()
        if result is not None:
            self.finish(store.row_json(reader.row))

    async def get(self) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        try:
            where, params, limit, offset = self.filters()
            found = await store.listing(self.db, tenant, where, params, limit, offset)
        except RunError as e:
            return self.fail(e)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(store.dumps(found))

    def filters(self) -> tuple[list[str], list, int, int]:
        arguments = self.request.query_arguments
        unknown = sorted(k for k in arguments if k not in LIST_PARAMETERS)
        if unknown:
            raise RunError(
                400, f"unsupported parameters: {', '.join(unknown)}; known: {', '.join(LIST_PARAMETERS)}"
            )
        where, params = [], []
        values = {name: self.get_query_arguments(name) for name in arguments}
        for name, column in (("run", "run_id"), ("session", "session_id")):
            if name in values:
                ids = values[name]
                if len(ids) > MAX_IDS or not all(UUID_TEXT.fullmatch(i) for i in ids):
                    raise RunError(400, f"{name} must be at most {MAX_IDS} UUIDs")
                where.append(f"{column} = ANY(%s::uuid[])")
                params.append(ids)
        if "key" in values:
            if any("\x00" in k for k in values["key"]):
                raise RunError(400, "key must not contain NUL characters")
            where.append("key = ANY(%s)")
            params.append(values["key"])
        if "source" in values:
            sources = [_SOURCES.get(s) for s in values["source"]]
            if None in sources:
                raise RunError(400, "source must be api, model or app")
            where.append("feedback_source ->> 'type' = ANY(%s)")
            params.append(sources)
        for name, column in (("has_comment", "comment"), ("has_score", "score")):
            if name in values:
                flag = _FLAGS.get(values[name][-1].lower())
                if flag is None:
                    raise RunError(400, f"{name} must be true or false")
                where.append(f"{column} IS {'NOT ' if flag else ''}NULL")
        limit, offset = self._number("limit", MAX_PAGE), self._number("offset", 0)
        if not 1 <= limit <= MAX_PAGE:
            raise RunError(400, f"limit must be an integer from 1 to {MAX_PAGE}")
        return where, params, limit, offset

    def _number(self, name: str, default: int) -> int:
        text = self.get_query_argument(name, None)
        if text is None:
            return default
        if not _DIGITS.fullmatch(text):
            raise RunError(400, f"{name} must be a non-negative integer below 10**9")
        return int(text)


class FeedbackItemHandler(JSONHandler):
    """GET, PATCH and DELETE /feedback/{id}."""

    SUPPORTED_METHODS = ("GET", "PATCH", "DELETE")

    async def get(self, feedback_id: str) -> None:
        await self._answer(feedback_id, lambda tenant, i: store.find(self.db, tenant, i))

    async def patch(self, feedback_id: str) -> None:
        async def update(tenant, i):
            body = self.request.body
            if len(body) > self.config.max_feedback_bytes:
                raise RunError(413, f"a feedback is at most {self.config.max_feedback_bytes} bytes")
            content_type = self.request.headers.get("Content-Type", "")
            if content_type.split(";")[0].strip().lower() != "application/json":
                raise RunError(415, "Content-Type must be application/json")
            changes = parse_update(body, self.config.max_depth)
            if not changes:
                return await store.find(self.db, tenant, i)
            return await store.update(self.db, tenant, i, changes)

        await self._answer(feedback_id, update)

    async def delete(self, feedback_id: str) -> None:
        async def delete(tenant, i):
            return {"id": str(i)} if await store.delete(self.db, tenant, i) else None

        await self._answer(feedback_id, delete)

    async def _answer(self, feedback_id: str, act) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        try:
            found = await act(tenant, uuid_argument(feedback_id, "feedback id"))
        except RunError as e:
            return self.fail(e)
        if found is None:
            return self.fail(RunError(404, f"feedback {feedback_id} not found"))
        self.finish(found)


def routes(ingest_deps: dict) -> list[tuple]:
    deps = {k: v for k, v in ingest_deps.items() if k not in ("in_flight", "budget")}
    return [
        (r"/feedback", FeedbackHandler, ingest_deps),
        (r"/feedback/([^/]+)", FeedbackItemHandler, deps),
    ]
