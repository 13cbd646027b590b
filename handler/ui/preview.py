"""The first line of a root run's input, for the trace list: traces told apart without opening them.

Read from the stored run, streamed: ijson stops at the first string under ``inputs`` (roles and
ids skipped), so a trace with a 2 MB input costs a few chunks, and at most ``MAX_READ_BYTES``
are read for one run. Any failure (storage, a run without inputs) gives an empty preview: the
list never fails for it. When the query issue's ``search_text`` column lands, this can read the
column instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import ijson

from handler.base.errors import RunError
from handler.store.objects import Location, ObjectStore

log = logging.getLogger(__name__)

MAX_READ_BYTES = 256 * 1024
MAX_CHARS = 200
_SKIP = {"role", "type", "id", "name", "tool_call_id", "lc"}  # labels, not what was asked


def first_line(text: str) -> str:
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line[:MAX_CHARS] + ("…" if len(line) > MAX_CHARS else "")


async def input_preview(store: ObjectStore, location: Location, size: int) -> str:
    events = ijson.sendable_list()
    parser = ijson.parse_coro(events)
    read = 0
    try:
        async with contextlib.aclosing(store.read(location.key, location.offset, size)) as chunks:
            async for chunk in chunks:
                parser.send(chunk)
                for prefix, event, value in events:
                    if event == "string" and (prefix == "inputs" or prefix.startswith("inputs.")):
                        if prefix.rsplit(".", 1)[-1] not in _SKIP and value.strip():
                            return first_line(value)
                del events[:]
                read += len(chunk)
                if read >= MAX_READ_BYTES:
                    return ""
    except (RunError, ijson.JSONError) as e:
        log.info("no input preview for %s: %s", location.key, e)
    return ""


async def previews(store: ObjectStore, stored: list[tuple[Location, int]]) -> list[str]:
    """Each run's preview, read concurrently (a page is at most MAX_TRACES runs)."""
    return list(await asyncio.gather(*(input_preview(store, loc, size) for loc, size in stored)))
