"""Delete objects that no committed run points at: segments and single objects alike.

A batch uploads its runs before it writes their rows. A batch that fails deletes its objects,
but a process killed mid-batch (or a failure of the delete itself, or an insert whose outcome
was unknown) leaves objects without rows; so does a patched run's old object when deleting it
fails. They are invisible -- GET finds runs through their
rows -- and this removes them. So are unfinished uploads in parts (large runs) that a killed
process left; this drops them too. Only what is older than the grace period is touched, so batches
still streaming are safe as long as none lasts longer than that.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta

from handler.server.config import Settings
from handler.store.db import Database
from handler.store.objects import ObjectStore

log = logging.getLogger(__name__)

# Only keys that ingest.py and segments.py make (runs .json, attachments .bin, segments) are
# considered: nothing else in the bucket is touched.
RUN_OBJECT_KEY = re.compile(
    r"[a-z0-9][a-z0-9_-]{0,62}/"
    r"(runs/[0-9a-f-]{36}/[0-9a-f]{32}\.(json|bin)|segments/\d{4}-\d{2}-\d{2}/[0-9a-f]{32}\.json)"
)


async def collect_garbage(settings: Settings, grace_seconds: int, dry_run: bool = False) -> tuple[int, int]:
    """Returns (objects scanned, objects without a row and unfinished uploads removed, or found
    with ``dry_run``)."""
    if grace_seconds < 0:
        raise ValueError("the grace period cannot be negative")
    store, db = ObjectStore(settings), Database(settings)
    await store.start()
    await db.start()
    scanned = removed = 0
    cutoff = datetime.now(UTC) - timedelta(seconds=grace_seconds)
    try:
        async for page in store.list_objects():
            scanned += len(page)
            old = [
                o["Key"] for o in page if o["LastModified"] < cutoff and RUN_OBJECT_KEY.fullmatch(o["Key"])
            ]
            if not old:
                continue
            orphans = sorted(set(old) - await db.stored_keys(old))
            for key in orphans:
                log.info("%s %s", "would delete" if dry_run else "deleting", key)
            if orphans and not dry_run:
                await store.delete(orphans)
            removed += len(orphans)
        async for page in store.list_part_uploads():
            for upload in page:
                if upload["Initiated"] < cutoff and RUN_OBJECT_KEY.fullmatch(upload["Key"]):
                    log.info(
                        "%s unfinished upload of %s", "would drop" if dry_run else "dropping", upload["Key"]
                    )
                    if not dry_run:
                        await store.drop_parts(upload["Key"], upload["UploadId"])
                    removed += 1
    finally:
        await db.close()
        await store.close()
    return scanned, removed
