"""Reading runs back: a run's stored bytes streamed to the client, and a trace's runs a page at a
time. The routes are the ``/runs`` ones (runs/handlers.py): one URL takes writes and reads."""

from __future__ import annotations

import base64
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime

import tornado.iostream
import tornado.web

from handler.base.errors import RunError
from handler.runs.schema import MAX_DOTTED_ORDER_BYTES, UUID_TEXT
from handler.store.db import Database
from handler.store.objects import Location, ObjectGone, ObjectStore

log = logging.getLogger(__name__)

MAX_PAGE = 1000
_DIGITS = re.compile(r"[0-9]+")  # str.isdigit() also takes "²", which int() refuses


def uuid_argument(value: str | None, name: str) -> uuid.UUID:
    """A UUID from the path or the query string; 400 naming it otherwise."""
    if value is None:
        raise RunError(400, f"{name} is required")
    if not UUID_TEXT.fullmatch(value):
        raise RunError(400, f"{name} must be a UUID")
    return uuid.UUID(value)


async def trace_page(db: Database, tenant: str, trace_id: str | None, limit: str, cursor: str | None) -> dict:
    """GET /runs?trace_id=&limit=&cursor=: a trace's runs in dotted order, as summaries."""
    trace = uuid_argument(trace_id, "trace_id")
    if not _DIGITS.fullmatch(limit) or len(limit) > 4 or not 1 <= int(limit) <= MAX_PAGE:
        raise RunError(400, f"limit must be an integer from 1 to {MAX_PAGE}")
    after = _decode_cursor(cursor) if cursor else None
    runs = await db.list_trace(tenant, trace, int(limit) + 1, after)
    page = runs[: int(limit)]
    more = len(runs) > len(page)
    return {
        "runs": [_summary(run) for run in page],
        "next_cursor": _encode_cursor(page[-1]) if more else None,
    }


async def relay(
    handler: tornado.web.RequestHandler,
    store: ObjectStore,
    location: Location,
    size: int,
    content_type: str,
    tail: bytes = b"",
    still_stored: Callable[[], Awaitable[bool]] | None = None,
) -> None:
    """Stream a run's bytes (an object, or its range of a segment) to the client; with ``tail``,
    the run's closing ``}`` is replaced by it (``,"feedback_stats":{...}}``: fields added last).

    A failure before the first byte is an error answer; after it, the status line is gone, so a
    short body and a closed connection tell the client. An object missing from the bucket whose
    row ``still_stored`` finds gone as well was deleted meanwhile (a retention sweep): 404."""
    chunks = store.read(location.key, location.offset, size)
    try:
        held = await anext(chunks, b"")
    except ObjectGone as e:
        if still_stored is not None and not await still_stored():
            return handler.fail(RunError(404, "not found: deleted while being read"))
        return handler.fail(e)
    except RunError as e:
        return handler.fail(e)
    handler.set_header("Content-Type", content_type)
    handler.set_header("Content-Length", size - 1 + len(tail) if tail else size)
    try:
        async for chunk in chunks:
            if chunk:
                handler.write(held)
                await handler.flush()
                held = chunk
        if tail:
            if not held.endswith(b"}"):
                raise ValueError(f"a stored run does not end with }}: {held[-20:]!r}")
            held = held[:-1] + tail
        handler.write(held)
    except tornado.iostream.StreamClosedError:
        return  # the client went away
    except Exception:
        log.exception("reading %s failed mid-stream", location.key)
        handler.request.connection.close()
        return
    handler.finish()


def _summary(run: dict) -> dict:
    return {k: v if v is None or isinstance(v, str | int) else _text(v) for k, v in run.items()}


def _text(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _encode_cursor(run: dict) -> str:
    position = json.dumps([run["dotted_order"] or "", str(run["id"])])
    return base64.urlsafe_b64encode(position.encode()).decode()


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        order, run_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not isinstance(order, str) or len(order) > MAX_DOTTED_ORDER_BYTES or "\x00" in order:
            raise ValueError
        if not UUID_TEXT.fullmatch(run_id):
            raise ValueError
    except (ValueError, TypeError, UnicodeError):
        raise RunError(400, "cursor is not one this server gave out") from None
    return order, run_id
