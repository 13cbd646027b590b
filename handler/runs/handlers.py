"""The ``/runs`` routes. Writes stream their bodies into a BatchIngest (ingest_handler.py) through
the reader of their format (readers.py, multipart.py); reads are read/runs.py's."""

from __future__ import annotations

from handler.base.errors import RunError
from handler.feedback.store import stats_tail
from handler.read.runs import relay, trace_page, uuid_argument
from handler.runs.ingest import BatchIngest
from handler.runs.ingest_handler import IngestHandler
from handler.runs.multipart import MultipartReader, boundary_of
from handler.runs.readers import ArrayReader, BatchReader, PatchReader
from handler.store.objects import Location


class RunsHandler(IngestHandler):
    """POST /runs: a JSON array of runs, streamed. GET /runs?trace_id=: a page of a trace."""

    SUPPORTED_METHODS = ("GET", "POST")

    def make_reader(self, ingest: BatchIngest) -> ArrayReader:
        return ArrayReader(ingest, self.config)

    async def post(self) -> None:
        result = await self.commit()
        if result is not None:
            self.set_status(201)
            self.finish({"ids": result["ids"]})

    async def get(self) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        try:
            page = await trace_page(
                self.db,
                tenant,
                self.get_query_argument("trace_id", None),
                self.get_query_argument("limit", "100"),
                self.get_query_argument("cursor", None),
            )
        except RunError as e:
            return self.fail(e)
        self.finish(page)


class AcceptedHandler(IngestHandler):
    """LangSmith's batch routes: 202 with the ids created and the ids patched."""

    SUPPORTED_METHODS = ("POST",)

    async def post(self) -> None:
        result = await self.commit()
        if result is not None:
            self.set_status(202)
            self.finish(result)


class MultipartHandler(AcceptedHandler):
    """POST /runs/multipart: LangSmith's multipart ingestion (multipart.py)."""

    def check_content_type(self, content_type: str) -> None:
        self.boundary = boundary_of(content_type)

    def make_reader(self, ingest: BatchIngest) -> MultipartReader:
        return MultipartReader(self.boundary, ingest, self.config)


class BatchHandler(AcceptedHandler):
    """POST /runs/batch: LangSmith's ``{"post": [...], "patch": [...]}`` (readers.BatchReader)."""

    def make_reader(self, ingest: BatchIngest) -> BatchReader:
        return BatchReader(ingest, self.config)


class RunHandler(IngestHandler):
    """GET /runs/{id}: the run's stored bytes, streamed from object storage. PATCH /runs/{id}:
    set some of its fields."""

    SUPPORTED_METHODS = ("GET", "PATCH")
    ingest_methods = ("PATCH",)

    def make_reader(self, ingest: BatchIngest) -> PatchReader:
        return PatchReader(ingest, self.config, uuid_argument(self.path_args[0], "run id"))

    async def patch(self, run_id: str) -> None:
        result = await self.commit()
        if result is not None:
            self.finish({"id": run_id.lower()})

    async def get(self, run_id: str) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        try:
            run = uuid_argument(run_id, "run id")
            found = await self.db.find_run(tenant, run)
            tail = await stats_tail(self.db, tenant, run_id) if found is not None else b""
        except RunError as e:
            return self.fail(e)
        if found is None:
            return self.fail(RunError(404, f"run {run_id} not found"))

        async def still_stored() -> bool:
            return await self.db.find_run(tenant, run) is not None

        await relay(self, self.store, found.location, found.size, "application/json", tail, still_stored)


class AttachmentHandler(IngestHandler):
    """GET /runs/{id}/attachments/{name}: an attachment's bytes, with the type it was sent with."""

    SUPPORTED_METHODS = ("GET",)
    ingest_methods = ()

    async def get(self, run_id: str, name: str) -> None:
        tenant = self.authenticate()
        if tenant is None:
            return
        try:
            run = uuid_argument(run_id, "run id")
            found = await self.db.find_attachment(tenant, run, name)
        except RunError as e:
            return self.fail(e)
        if found is None:
            return self.fail(RunError(404, f"run {run_id} has no attachment {name!r}"))
        key, content_type, size = found

        async def still_stored() -> bool:
            return await self.db.find_attachment(tenant, run, name) is not None

        await relay(self, self.store, Location(key), size, content_type, still_stored=still_stored)


def routes(ingest_deps: dict) -> list[tuple]:
    return [
        (r"/runs", RunsHandler, ingest_deps),
        (r"/runs/multipart", MultipartHandler, ingest_deps),
        (r"/runs/batch", BatchHandler, ingest_deps),
        (r"/runs/([^/]+)", RunHandler, ingest_deps),
        (r"/runs/([^/]+)/attachments/([^/]+)", AttachmentHandler, ingest_deps),
    ]
