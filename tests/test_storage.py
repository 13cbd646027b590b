"""The S3 upload path against the real MinIO: URLs signed like botocore's own presigner, and a
server that verifies everything the URL signs (content type, checksum, key)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import uuid

import aiohttp
import botocore.auth
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from handler.base.errors import RunError
from handler.server.config import Settings
from handler.store.objects import ObjectStore, crc32_base64


def run(coroutine):
    return asyncio.run(coroutine)


async def started(settings: Settings) -> ObjectStore:
    store = ObjectStore(settings)
    await store.start()
    return store


def test_signed_urls_are_what_botocores_sigv4_presigner_makes(settings, monkeypatch):
    """The same instant gives the same URL, byte for byte, as ``generate_presigned_url`` with
    SigV4: the lean path changes who calls the signer, not what is signed."""
    moment = datetime.datetime(2026, 11, 28, 12, 0, 0)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *args, **kwargs: moment)
    store = ObjectStore(settings)
    key = "tenant/runs/a b+c/ü.json"
    checksum = crc32_base64(b"{}")
    headers = {"Content-Type": "application/json", "x-amz-checksum-crc32": checksum}

    async def presigned():
        config = AioConfig(signature_version="s3v4", s3={"addressing_style": "path"})
        async with get_session().create_client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key,
            aws_secret_access_key=settings.s3_secret_key,
            config=config,
        ) as client:
            params = {"Bucket": store.bucket, "Key": key}
            put = {
                **params,
                "ContentType": headers["Content-Type"],
                "ChecksumCRC32": headers["x-amz-checksum-crc32"],
            }
            part = {**params, "UploadId": "a/b+c=", "PartNumber": 3, "ChecksumCRC32": checksum}
            return (
                await client.generate_presigned_url("get_object", Params=params, ExpiresIn=900),
                await client.generate_presigned_url("put_object", Params=put, ExpiresIn=900),
                await client.generate_presigned_url("upload_part", Params=part, ExpiresIn=900),
            )

    get_url, put_url, part_url = run(presigned())
    assert store.signed_url("GET", key) == get_url
    assert store.signed_url("PUT", key, headers) == put_url
    part_query = "uploadId=a%2Fb%2Bc%3D&partNumber=3"
    assert store.signed_url("PUT", key, {"x-amz-checksum-crc32": checksum}, part_query) == part_url
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in put_url
    assert "X-Amz-SignedHeaders=content-type%3Bhost%3Bx-amz-checksum-crc32" in put_url


def test_put_then_read_gives_the_bytes_back(settings):
    body = bytes(range(256)) * 1000

    async def scenario():
        store = await started(settings)
        key = f"storage-test/{uuid.uuid4().hex}.bin"
        try:
            await store.put(key, body, "application/octet-stream")
            return b"".join([chunk async for chunk in store.read(key)])
        finally:
            await store.delete([key])
            await store.close()

    assert run(scenario()) == body


@pytest.mark.parametrize(
    "change, status",
    [
        ("body", 400),  # the bytes differ from the signed checksum
        ("content_type", 403),  # a signed header differs
        ("key", 403),  # the URL's path differs from the signed one
    ],
)
def test_minio_refuses_a_put_that_differs_from_what_was_signed(settings, change, status):
    """What the signature and checksum cover is enforced by the server, so a corrupted upload
    fails instead of storing wrong bytes."""
    body = b'{"inputs": "' + b"x" * 10_000 + b'"}'

    async def scenario():
        store = await started(settings)
        key = f"storage-test/{uuid.uuid4().hex}.json"
        headers = {"Content-Type": "application/json", "x-amz-checksum-crc32": crc32_base64(body)}
        url = store.signed_url("PUT", key, headers)
        sent, sent_headers = body, dict(headers)
        if change == "body":
            sent = body.replace(b"x", b"y", 1)
        elif change == "content_type":
            sent_headers["Content-Type"] = "text/plain"
        else:
            url = url.replace(key, key.replace(".json", "-other.json"))
        try:
            async with aiohttp.ClientSession() as http:
                async with http.put(url, data=sent, headers=sent_headers) as response:
                    answer = response.status
            stored = [obj["Key"] async for page in store.list_objects() for obj in page]
        finally:
            await store.close()
        return answer, [k for k in stored if k.startswith(key.removesuffix(".json"))]

    answer, stored = run(scenario())
    assert (answer, stored) == (status, [])


def test_a_put_to_a_missing_bucket_is_a_503_naming_the_s3_error(settings):
    missing = dataclasses.replace(settings, s3_bucket_name=f"missing-{uuid.uuid4().hex[:12]}")

    async def scenario():
        store = await started(missing)
        try:
            await store.put("k.json", b"{}")
        finally:
            await store.close()

    with pytest.raises(RunError) as raised:
        run(scenario())
    assert raised.value.status == 503
    assert "NoSuchBucket" in str(raised.value)
