"""OTLP/HTTP trace export: ``POST /otel/v1/traces`` (LangSmith's path), ``/v1/traces`` (the OTLP
default) and ``/api/v1/otel/v1/traces`` (self-hosted LangSmith's). The body streams in like any
ingest (decoding, the memory budget, the idle timeout, lingering), is held whole by the reader, and
its spans are stored as runs; the answer is in the request's encoding, as the specification says."""

from __future__ import annotations

import logging
import re

from handler.base.errors import RunError
from handler.otel import decode, tree
from handler.otel.reader import OtlpReader
from handler.runs.ingest import BatchIngest
from handler.runs.ingest_handler import IngestHandler

log = logging.getLogger(__name__)

_DIGITS = re.compile(r"[0-9]+")
PATHS = ("/otel/v1/traces", "/v1/traces", "/api/v1/otel/v1/traces")
RELINK_RETRY_AFTER_S = 1


class TracesHandler(IngestHandler):
    SUPPORTED_METHODS = ("POST",)

    def encoding(self) -> str:
        """The request's encoding, which the answer uses (JSON when it names neither)."""
        given = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        return given if given in decode.CONTENT_TYPES else decode.JSON

    def check_content_type(self, content_type: str) -> None:
        if content_type.split(";")[0].strip().lower() not in decode.CONTENT_TYPES:
            raise RunError(415, f"Content-Type must be {decode.PROTOBUF} or {decode.JSON}")
        length = self.request.headers.get("Content-Length")
        limit = self.config.otlp_max_body_bytes
        if length is not None and _DIGITS.fullmatch(length) and int(length) > limit:
            raise RunError(413, f"an OTLP body is larger than {limit} bytes (OTLP_MAX_BODY_BYTES)")

    def make_reader(self, ingest: BatchIngest) -> OtlpReader:
        project = self.request.headers.get("Langsmith-Project") or None
        return OtlpReader(ingest, self.db, self.config, self.claim, self.encoding(), project)

    async def post(self) -> None:
        result = await self.commit()
        if result is None:  # answered already (refused), or nothing was read
            return
        reader = self.reader
        try:
            await tree.relink(self.db, self.ingest.tenant, reader.nodes, reader.provisional)
        except RunError as e:
            # The runs are stored, but their trees may hold stand-ins no later arrival repairs: a
            # retryable answer has the exporter send the request again, whose spans, stored
            # already, are refused one by one and relinked (reader.py).
            log.warning("could not relink %d runs: %s", len(reader.nodes), e.reason)
            error = RunError(503, f"the spans are stored, but not yet linked into their traces: {e.reason}")
            error.retry_after = RELINK_RETRY_AFTER_S
            self.fail(error)
            return
        except Exception:  # a bug, still after the commit: the export succeeded
            log.exception("could not relink %d runs", len(reader.nodes))
        self.set_status(200)
        self.set_header("Content-Type", self.encoding())
        self.finish(decode.response(self.encoding(), reader.rejected, reader.message))

    def error_answer(self, error: RunError) -> tuple[bytes, str]:
        return decode.status(self.encoding(), error), self.encoding()


def routes(deps: dict) -> list:
    return [(path, TracesHandler, deps) for path in PATHS]
