"""``python -m handler backfill-query``: fill the query columns (schema/0007, 0010) of runs stored
before them, from the runs' bytes, by the same rules as ingestion (the run is parsed by parse_run, whose
events feed extract.Tap).

Rows still to fill have ``query_fields`` NULL (before 0007) or, when IO_KEYS > 0, 1 (kept without
inputs' and outputs' keys: before 0010 or while IO_KEYS was 0); a partial index finds them. They are taken in
(tenant, id) order, a batch at a time, one run's bytes in memory at a time; a row is updated only
if it still points at the bytes that were read (a patch meanwhile has filled it already). A run
whose bytes cannot be read or parsed is logged and left for the next pass. Safe to run while the
service ingests, and to stop and start again.
"""

from __future__ import annotations

import logging

from handler.base.errors import RunError
from handler.query.extract import configure, fields_version, query_columns
from handler.runs import fastpath
from handler.runs.splitter import parse_run
from handler.server.config import Settings
from handler.store.db import Database
from handler.store.objects import Location, ObjectStore

log = logging.getLogger(__name__)
BATCH = 200
SELECT = (
    "SELECT tenant, id, object_key, object_offset, size_bytes FROM runs"
    " WHERE (query_fields IS NULL OR query_fields < %s) AND (tenant, id) > (%s, %s::uuid)"
    " ORDER BY tenant, id LIMIT %s"
)
UPDATE = """
UPDATE runs SET tags = %s::jsonb, metadata = %s::jsonb, prompt_tokens = %s, completion_tokens = %s,
    total_tokens = %s, prompt_cost = %s::numeric, completion_cost = %s::numeric, total_cost = %s::numeric,
    search_text = %s, inputs_kv = %s::jsonb, outputs_kv = %s::jsonb, query_fields = %s
WHERE tenant = %s AND id = %s AND object_key = %s AND object_offset IS NOT DISTINCT FROM %s
RETURNING id
"""


async def backfill(settings: Settings, batch: int = BATCH) -> tuple[int, int]:
    """Returns (rows filled, rows that could not be)."""
    configure(settings.search_text_chars, settings.io_keys)
    fastpath.configure(settings.fast_splitter)
    store, db = ObjectStore(settings), Database(settings)
    await store.start()
    await db.start()
    filled = failed = 0
    after: tuple = ("", "00000000-0000-0000-0000-000000000000")
    try:
        while rows := await db.fetch(SELECT, (fields_version(), *after, batch)):
            for tenant, run_id, key, offset, size in rows:
                try:
                    data = await store.read_all(Location(key, offset), size)
                    run = parse_run(data, max(size, 1), settings.max_depth, f"run {run_id}", required=())
                except (RunError, OSError, ValueError) as e:
                    log.warning("backfill-query: run %s of %s left as it is: %s", run_id, tenant, e)
                    failed += 1
                    continue
                values = (*query_columns(run), fields_version(), tenant, str(run_id), key, offset)
                filled += len(await db.fetch(UPDATE, values))
            after = (rows[-1][0], str(rows[-1][1]))
            log.info("backfill-query: %d filled, %d left as they are", filled, failed)
    finally:
        await db.close()
        await store.close()
    return filled, failed
