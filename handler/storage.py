"""Object storage: one S3 object per run, through aiobotocore."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from handler.config import Settings
from handler.errors import RunError

READ_CHUNK_BYTES = 64 * 1024
_DELETE_BATCH = 1000  # the most keys one DeleteObjects call takes


def storage_error(action: str, error: Exception) -> RunError:
    return RunError(503, f"object storage unavailable ({action}): {error}")


class ObjectStore:
    """A bucket on an S3-compatible server; errors surface as 503 RunErrors."""

    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket_name
        self._settings = settings
        self._exit_stack = contextlib.AsyncExitStack()
        self._client = None

    async def start(self) -> None:
        s = self._settings
        config = AioConfig(
            max_pool_connections=s.upload_concurrency * 4,
            connect_timeout=5,
            read_timeout=60,
            retries={"mode": "standard", "max_attempts": 3},
            s3={"addressing_style": "path"},
        )
        self._client = await self._exit_stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=s.s3_endpoint_url,
                region_name=s.s3_region,
                aws_access_key_id=s.s3_access_key,
                aws_secret_access_key=s.s3_secret_key,
                config=config,
            )
        )

    async def close(self) -> None:
        await self._exit_stack.aclose()

    async def ensure_bucket(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise
            await self._client.create_bucket(Bucket=self.bucket)

    async def put(self, key: str, body: bytes) -> None:
        try:
            await self._client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType="application/json"
            )
        except (BotoCoreError, ClientError, OSError) as e:
            raise storage_error("put", e) from e

    async def delete(self, keys: Iterable[str]) -> None:
        """Delete the keys; a key that does not exist is not an error."""
        keys = list(keys)
        try:
            for i in range(0, len(keys), _DELETE_BATCH):
                objects = [{"Key": key} for key in keys[i : i + _DELETE_BATCH]]
                response = await self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                )
                if response.get("Errors"):
                    raise RuntimeError(f"could not delete {response['Errors'][:3]}")
        except (BotoCoreError, ClientError, OSError, RuntimeError) as e:
            raise storage_error("delete", e) from e

    async def read(self, key: str) -> AsyncIterator[bytes]:
        """Yield the object's bytes in chunks, without holding it whole."""
        try:
            response = await self._client.get_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError, OSError) as e:
            raise storage_error("get", e) from e
        async with response["Body"] as body:
            async for chunk in body.iter_chunks(READ_CHUNK_BYTES):
                yield chunk
