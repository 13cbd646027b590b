"""CPU per PUT, in this process, for aiobotocore's put_object and for the service's upload path.

    RUN_HANDLER_ENV=test python -m benchmarks.put_cpu [count] [size_bytes]

Both upload the same objects at the service's concurrency to the real MinIO; process CPU time
(not wall time) divided by the number of PUTs is the client's own cost per call.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid

from handler.server.config import Settings
from handler.store.objects import ObjectStore


async def measure(count: int, size: int) -> None:
    settings = Settings.from_env()
    store = ObjectStore(settings)
    await store.start()
    body = os.urandom(size // 2).hex().encode()
    slots = asyncio.Semaphore(settings.upload_concurrency)
    prefix = f"put-cpu/{uuid.uuid4().hex}"

    async def put_object(key: str) -> None:
        async with slots:
            await store._client.put_object(
                Bucket=store.bucket, Key=key, Body=body, ContentType="application/json"
            )

    async def service_put(key: str) -> None:
        async with slots:
            await store.put(key, body)

    keys = []
    try:
        for label, put in (
            ("aiobotocore put_object", put_object),
            ("service path (signed URL + aiohttp)", service_put),
        ):
            batch = [f"{prefix}/{label[:7]}/{i}" for i in range(count)]
            keys += batch
            await put(batch[0])  # warm the connection pool
            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.gather(*(put(key) for key in batch))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            print(
                f"{label:<36} {cpu / count * 1000:6.3f} ms CPU per PUT   "
                f"{count / wall:7.0f} PUT/s   ({count} x {size} bytes, "
                f"concurrency {settings.upload_concurrency})"
            )
    finally:
        await store.delete(keys)
        await store.close()


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 35_000
    asyncio.run(measure(count, size))
