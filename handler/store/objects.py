"""Object storage: runs in S3 objects, many small ones to a segment (segments.py) or one large run
to its own object, read back whole or as the byte range of one run.

aiobotocore is the S3 library: it makes the bucket, delete and multipart-upload calls, and
botocore's SigV4 signer signs everything. The hot calls, PUT and GET of a run and PUT of a part, go
out as URLs signed by that signer (``S3SigV4QueryAuth``, what ``generate_presigned_url`` uses
underneath) and sent with a plain aiohttp request (aiohttp is aiobotocore's own transport). That
skips botocore's per-call pipeline (parameter validation, endpoint rules, event hooks,
``Expect: 100-continue``), which costs several times the CPU of the request itself. What botocore
would add for integrity and resilience is kept: every PUT carries a CRC32 checksum, covered by the
signature, that the server verifies, and throttling or server errors are retried.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import time
import zlib
from collections.abc import AsyncIterator, Iterable
from typing import NamedTuple
from urllib.parse import quote

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError

from handler.base.errors import RunError
from handler.base.metrics import UPLOAD_SECONDS
from handler.server.config import Settings
from handler.store.cache import ObjectCache

READ_CHUNK_BYTES = 64 * 1024
_DELETE_BATCH = 1000  # the most keys one DeleteObjects call takes
_ATTEMPTS = 4  # for throttling (503 SlowDown), server errors and dropped connections
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
_URL_EXPIRES = 900
_ERROR_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_ERROR_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")


class S3Error(Exception):
    """An error answer from the S3 server, with its HTTP status and S3 error code."""

    def __init__(self, status: int, body: bytes) -> None:
        code = _ERROR_CODE.search(body)
        message = _ERROR_MESSAGE.search(body)
        self.status = status
        self.code = code.group(1).decode(errors="replace") if code else f"HTTP {status}"
        self.message = message.group(1).decode(errors="replace") if message else ""
        super().__init__(f"{self.code}: {self.message}" if self.message else self.code)


class Location(NamedTuple):
    """Where a run's bytes are: a whole object (``offset`` None), or the range of a segment that
    starts at ``offset`` (its length is the run's size)."""

    key: str
    offset: int | None = None


class ObjectGone(RunError):
    """The bucket has no such object (S3 404): deleted since its row was read (a retention sweep),
    or lost. A 503 unless the reader finds that the row is gone too (read/runs.py relay)."""

    def __init__(self, key: str) -> None:
        super().__init__(503, f"object storage unavailable (get): {key} is not in the bucket")


def storage_error(action: str, error: Exception) -> RunError:
    return RunError(503, f"object storage unavailable ({action}): {error}")


def crc32_base64(data: bytes | bytearray) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


class ObjectStore:
    """A bucket on an S3-compatible server; errors surface as 503 RunErrors."""

    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket_name
        self._settings = settings
        self._exit_stack = contextlib.AsyncExitStack()
        self._client = None
        self._http: aiohttp.ClientSession | None = None
        self._cache = ObjectCache(settings.object_cache_bytes)
        # Path-style URLs, as the client is configured below.
        self._bucket_url = f"{settings.s3_endpoint_url.rstrip('/')}/{self.bucket}/"
        self._signer = S3SigV4QueryAuth(
            Credentials(settings.s3_access_key, settings.s3_secret_key),
            "s3",
            settings.s3_region,
            expires=_URL_EXPIRES,
        )

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
        self._http = await self._exit_stack.enter_async_context(
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=s.upload_concurrency * 4, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60),
                auto_decompress=False,
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

    def signed_url(
        self, method: str, key: str, headers: dict[str, str] | None = None, query: str = ""
    ) -> str:
        """A SigV4 query-signed URL for one request; the headers given are signed too, so the
        request must send exactly them."""
        url = self._bucket_url + quote(key) + (f"?{query}" if query else "")
        request = AWSRequest(method=method, url=url, headers=headers)
        self._signer.add_auth(request)
        return request.url

    async def put(self, key: str, body: bytes | bytearray, content_type: str = "application/json") -> None:
        headers = {"Content-Type": content_type, "x-amz-checksum-crc32": crc32_base64(body)}
        await self._put(self.signed_url("PUT", key, headers), body, headers)

    async def _put(self, url: str, body: bytes | bytearray, headers: dict[str, str]) -> str:
        """PUT with retries on throttling, server errors and dropped connections; returns the ETag."""
        started = time.perf_counter()
        for attempt in range(_ATTEMPTS):
            try:
                async with self._http.put(url, data=body, headers=headers) as response:
                    if response.status == 200:
                        UPLOAD_SECONDS.observe(time.perf_counter() - started)
                        return response.headers.get("ETag", "")
                    error: Exception = S3Error(response.status, await response.read())
                    if response.status not in _RETRY_STATUSES:
                        break
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                error = e
            if attempt + 1 < _ATTEMPTS:
                await asyncio.sleep(0.05 * 4**attempt)
        raise storage_error("put", error)

    # -- objects uploaded in parts: runs too large to hold whole ---------------------------------

    async def start_parts(self, key: str, content_type: str = "application/json") -> str:
        """Begin an object uploaded in parts (S3 multipart upload); returns the upload's id."""
        try:
            response = await self._client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ContentType=content_type, ChecksumAlgorithm="CRC32"
            )
        except (BotoCoreError, ClientError, OSError) as e:
            raise storage_error("start upload", e) from e
        return response["UploadId"]

    async def put_part(self, key: str, upload_id: str, number: int, data: bytes) -> dict:
        """Part ``number`` (from 1) of the object; returns what ``finish_parts`` needs of it. Every
        part but the last must be at least 5 MiB."""
        headers = {"x-amz-checksum-crc32": crc32_base64(data)}
        query = f"uploadId={quote(upload_id, safe='')}&partNumber={number}"
        etag = await self._put(self.signed_url("PUT", key, headers, query), data, headers)
        return {"PartNumber": number, "ETag": etag, "ChecksumCRC32": headers["x-amz-checksum-crc32"]}

    async def finish_parts(self, key: str, upload_id: str, parts: list[dict]) -> None:
        """Join the parts into the object; only now does it exist."""
        try:
            await self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": sorted(parts, key=lambda part: part["PartNumber"])},
            )
        except (BotoCoreError, ClientError, OSError) as e:
            raise storage_error("finish upload", e) from e

    async def drop_parts(self, key: str, upload_id: str) -> None:
        """Discard an upload in parts that will not be finished (one already gone is not an error)."""
        try:
            await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise storage_error("drop upload", e) from e
        except (BotoCoreError, OSError) as e:
            raise storage_error("drop upload", e) from e

    async def list_part_uploads(self) -> AsyncIterator[list[dict]]:
        """Yield the bucket's unfinished uploads in parts a page at a time: Key, UploadId, Initiated."""
        paginator = self._client.get_paginator("list_multipart_uploads")
        async for page in paginator.paginate(Bucket=self.bucket):
            yield page.get("Uploads", [])

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

    async def list_objects(self) -> AsyncIterator[list[dict]]:
        """Yield the bucket's objects a page (up to 1000) at a time: dicts with Key and LastModified."""
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket):
            yield page.get("Contents", [])

    async def read(self, key: str, offset: int | None = None, size: int = 0) -> AsyncIterator[bytes]:
        """Yield the object's bytes, or with ``offset`` the ``size`` bytes from there (one run of a
        segment): small enough for the cache (see cache.py), whole, from there or read once and
        kept; larger, in chunks, never held whole. A range answered with anything but exactly its
        bytes is an error (503), never a wrong body."""
        cache_key = key if offset is None else f"{key}@{offset}"
        cached = self._cache.get(cache_key)
        if cached is not None:
            yield cached
            return
        url = self.signed_url("GET", key)
        span = None if offset is None else f"{offset}-{offset + size - 1}"
        try:
            async with self._http.get(url, headers={"Range": f"bytes={span}"} if span else {}) as response:
                if response.status != (206 if span else 200):
                    raise S3Error(response.status, await response.read())
                length = response.content_length
                answered = response.headers.get("Content-Range", "")
                if span and (length != size or not answered.startswith(f"bytes {span}/")):
                    wrong = f"asked for bytes {span}, got {length} bytes ({answered or 'no range'})"
                    raise storage_error("get", ValueError(wrong))
                if length is not None and length <= self._cache.max_item_bytes:
                    data = await response.read()
                    self._cache.put(cache_key, data)
                    yield data
                    return
                async for chunk in response.content.iter_chunked(READ_CHUNK_BYTES):
                    yield chunk
        except S3Error as e:
            raise (ObjectGone(key) if e.status == 404 else storage_error("get", e)) from e
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise storage_error("get", e) from e

    async def read_all(self, location: Location, size: int) -> bytes:
        """One run's bytes, whole (a run being patched: bounded by the run size limit)."""
        return b"".join([chunk async for chunk in self.read(location.key, location.offset, size)])

    async def ping(self) -> None:
        """HEAD the bucket, for GET /ready: the server answers and our credentials reach the bucket."""
        await self._client.head_bucket(Bucket=self.bucket)
