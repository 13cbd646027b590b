"""Rewrite segments that are mostly dead space: ``python -m handler compact``.

A patched run is stored anew, so the range it had in its old segment is dead: no row points at it
any more, but the segment is kept for the runs that still live in it. A segment older than the
grace period whose live bytes are below ``min_live`` of its size is rewritten: its live runs are
copied byte for byte into a new segment, their rows repointed in one statement -- only where they
still point at the old range, so a patch meanwhile wins -- and the old segment deleted after that
commit. A segment with no live run at all is gc's to delete (gc.py).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from handler.server.config import Settings
from handler.store.db import Database
from handler.store.objects import Location, ObjectStore
from handler.store.segments import Segment, segment_key

log = logging.getLogger(__name__)

SEGMENT_KEY = re.compile(r"([a-z0-9][a-z0-9_-]{0,62})/segments/\d{4}-\d{2}-\d{2}/[0-9a-f]{32}\.json")


@dataclass
class CompactReport:
    segments: int = 0  # segments looked at (older than the grace period)
    stored_bytes: int = 0  # their size
    live_bytes: int = 0  # bytes of runs that rows point at
    rewritten: int = 0  # segments rewritten (or, with dry_run, that would be)
    freed_bytes: int = 0  # bytes that rewriting them freed (or would free)


async def compact(
    settings: Settings, grace_seconds: int, min_live: float, dry_run: bool = False
) -> CompactReport:
    if grace_seconds < 0:
        raise ValueError("the grace period cannot be negative")
    if not 0 < min_live <= 1:
        raise ValueError("--min-live must be above 0 and at most 1")
    store, db = ObjectStore(settings), Database(settings)
    await store.start()
    await db.start()
    report = CompactReport()
    cutoff = datetime.now(UTC) - timedelta(seconds=grace_seconds)
    try:
        async for page in store.list_objects():
            for item in page:
                match = SEGMENT_KEY.fullmatch(item["Key"])
                if match is None or item["LastModified"] >= cutoff:
                    continue
                runs = await db.segment_runs(item["Key"])
                live = sum(size for _, _, _, size in runs)
                report.segments += 1
                report.stored_bytes += item["Size"]
                report.live_bytes += live
                if not runs or live >= min_live * item["Size"]:
                    continue
                log.info(
                    "%s %s: %d of %d bytes live",
                    "would rewrite" if dry_run else "rewriting",
                    item["Key"],
                    live,
                    item["Size"],
                )
                report.rewritten += 1
                if dry_run:
                    report.freed_bytes += item["Size"] - live
                else:
                    report.freed_bytes += await _rewrite(store, db, item["Key"], item["Size"], runs, match[1])
    finally:
        await db.close()
        await store.close()
    return report


async def _rewrite(store: ObjectStore, db: Database, key: str, size: int, runs: list, tenant: str) -> int:
    """Copy a segment's live runs into a new one and move their rows; returns the bytes freed."""
    data = await store.read_all(Location(key), size)
    segment = Segment(segment_key(tenant))
    moves = [
        (run_id, offset, segment.append(data[offset : offset + length])) for _, run_id, offset, length in runs
    ]
    sealed = segment.sealed()
    await store.put(segment.key, sealed)
    # If the UPDATE fails, both segments stay: it may have committed before the connection broke,
    # and gc deletes whichever of the two no row points at once the grace period is over.
    moved = await db.move_runs(key, segment.key, moves)
    if moved == 0:  # every run was patched meanwhile: the copy holds nothing live
        await store.delete([segment.key])
    elif moved < len(moves):
        log.info(
            "%s: %d runs were patched meanwhile and stay where their patch put them", key, len(moves) - moved
        )
    await store.delete([key])
    return size - (len(sealed) if moved else 0)
