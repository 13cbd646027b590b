"""Peak memory of ingesting a batch in process, under pytest-memray (``make memprofile``).

The handler runs in this process on a real socket against the real MinIO and PostgreSQL; the
client streams a generated body, so the only large allocations are the server's. The same
``limit_memory`` holds for a 20 MB and a 200 MB batch: memory does not grow with the batch.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import tornado.httpserver
import tornado.netutil

from benchmarks.streaming import batch_chunks
from handler.server.app import make_app
from handler.server.config import Settings
from handler.store.db import Database
from handler.store.objects import ObjectStore

MB = 1024 * 1024


async def ingest(total_bytes: int) -> tuple[int, int, int]:
    """Stream a generated batch to an in-process server: (status, ids answered, runs sent)."""
    settings = Settings.from_env()
    store, db = ObjectStore(settings), Database(settings)
    await store.start()
    await db.start()
    server = tornado.httpserver.HTTPServer(make_app(settings, store, db))
    [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets([sock])
    try:
        reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        writer.write(
            b"POST /runs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        chunks, count = batch_chunks(total_bytes)
        for chunk in chunks:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        response = await reader.read()
        writer.close()
        head, _, body = response.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), len(json.loads(body)["ids"]), count
    finally:
        server.stop()
        await db.close()
        await store.close()


@pytest.mark.limit_memory("48 MB")
@pytest.mark.parametrize("size_mb", [20, 200])
def test_ingest_memory_does_not_grow_with_the_batch(size_mb):
    status, ids, runs = asyncio.run(ingest(size_mb * MB))
    assert status == 201
    assert ids == runs
