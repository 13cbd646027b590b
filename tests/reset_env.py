"""Give the tests a clean slate: drop and recreate the test database and bucket, then migrate.

Refuses to run unless RUN_HANDLER_ENV=test, so it can never touch the development data.
"""

from __future__ import annotations

import os
import sys

import botocore.session
import psycopg2
from botocore.exceptions import ClientError

from handler.server.config import Settings
from handler.store.migrations import migrate


def reset_database(settings: Settings) -> None:
    conn = psycopg2.connect(
        host=settings.db_host,
        port=settings.db_port,
        user=settings.db_user,
        password=settings.db_password,
        dbname="postgres",
    )
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{settings.db_name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{settings.db_name}"')
    conn.close()


def s3_client(settings: Settings):
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
    )


def empty_bucket(client, bucket: str) -> None:
    """Drop every unfinished upload in parts, delete every object and the bucket itself, if it
    exists."""
    try:
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
            for upload in page.get("Uploads", []):
                client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objects:
                client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
        client.delete_bucket(Bucket=bucket)
    except ClientError as e:
        if e.response["Error"]["Code"] != "NoSuchBucket":
            raise


def main() -> None:
    if os.environ.get("RUN_HANDLER_ENV") != "test":
        sys.exit("reset_env.py only runs with RUN_HANDLER_ENV=test")
    settings = Settings.from_env()
    reset_database(settings)
    client = s3_client(settings)
    empty_bucket(client, settings.s3_bucket_name)
    client.create_bucket(Bucket=settings.s3_bucket_name)
    applied = migrate(settings)
    print(
        f"test environment reset: database {settings.db_name} ({applied} migrations), "
        f"bucket {settings.s3_bucket_name}"
    )


if __name__ == "__main__":
    main()
