"""Retention at scale: a sweep of many expired runs while a client ingests, and batched deletes
against time partitions.

    RUN_HANDLER_ENV=test python -m benchmarks.retention_scale [--runs 1000000] [--seconds 20]

1. Sweep under ingest. A database and a bucket of its own (``postgres_retention_scale``,
   ``runs-retention-scale``) get ``--runs`` expired runs (traces of 10 runs of 5 KB, in segments of
   800 runs, written straight into PostgreSQL, their segment objects put in the bucket) and a
   tenth as many live ones. A real server ingests while one client posts traces of 10 runs of
   5 KB back to back: first ``--seconds`` without a sweep, then for the length of
   ``python -m handler retain``. Prints the ingest latency (p50, p99) of both, the sweep's time and
   rate, and the runs table's size before the sweep, after it, and after the same number of runs
   is written again (space freed by deletes is reused: the table does not grow without bound).
   ``--bloat-cycles N`` instead writes, expires, sweeps and vacuums ``--runs`` runs N times and
   prints the table's heap and index sizes after each cycle.
   ``--ingest-cost`` instead times ``--runs`` row inserts (500 a statement) with and without what
   migration 0008 adds to each insert.
2. Partitions. A scratch table partitioned by day on the received time, holding the same rows,
   against the unpartitioned one: dropping a day's partition against deleting its rows in batches,
   and 2,000 lookups by (tenant, id), the way GET /runs/{id} finds a run, with 30 partitions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg2

from handler.server.auth import hash_key
from handler.server.config import REPO_ROOT, Settings
from tests.reset_env import empty_bucket, s3_client
from tests.server import start_server

RUN_BYTES = 5000
TRACE_RUNS = 10
SEGMENT_RUNS = 800


def connect(settings: Settings, db_name: str | None = None):
    conn = psycopg2.connect(
        host=settings.db_host,
        port=settings.db_port,
        user=settings.db_user,
        password=settings.db_password,
        dbname=db_name or settings.db_name,
    )
    conn.autocommit = True
    return conn


@contextlib.contextmanager
def cursor(settings: Settings, db_name: str):
    conn = connect(settings, db_name)
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def fill(cur, tenant: str, project: str, runs: int, days_old: int) -> None:
    """``runs`` rows of traces of 10, in segments of 800 (keys under ``tenant/segments/``)."""
    cur.execute(
        "INSERT INTO sessions (tenant, id, name, retention_days) VALUES (%s, %s, %s, 1)"
        " ON CONFLICT DO NOTHING",
        (tenant, str(uuid.uuid5(uuid.NAMESPACE_URL, tenant + project)), project),
    )
    cur.execute(
        f"""
        INSERT INTO runs (tenant, id, trace_id, name, object_key, object_offset, size_bytes, session_id,
                          session_name, created_at)
        SELECT %(tenant)s, gen_random_uuid(), md5(%(project)s || (i / {TRACE_RUNS}))::uuid, 'r',
               %(tenant)s || '/segments/2026-01-01/' || md5(%(project)s || (i / {SEGMENT_RUNS})) || '.json',
               (i %% {SEGMENT_RUNS}) * {RUN_BYTES + 2} + 1, {RUN_BYTES}, %(session)s, %(project)s,
               now() - make_interval(days => %(days)s)
        FROM generate_series(0, %(runs)s - 1) AS i
        """,
        {
            "tenant": tenant,
            "project": project,
            "runs": runs,
            "days": days_old,
            "session": str(uuid.uuid5(uuid.NAMESPACE_URL, tenant + project)),
        },
    )


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def ingest(client, stop: threading.Event, latencies: list[float], errors: list) -> None:
    while not stop.is_set():
        root = str(uuid.uuid4())
        runs = [
            {
                "id": root if i == 0 else str(uuid.uuid4()),
                "trace_id": root,
                "name": f"r{i}",
                "session_name": "live",
                "inputs": {"text": "x" * (RUN_BYTES - 150)},
            }
            for i in range(TRACE_RUNS)
        ]
        started = time.perf_counter()
        response = client.post(json.dumps(runs).encode(), "/runs", headers={"x-api-key": "bench"})
        latencies.append(time.perf_counter() - started)
        if response.status != 201:
            errors.append(response.status)


def measure(
    client, seconds: float | None, during: subprocess.Popen | None = None
) -> tuple[list[float], list]:
    latencies, errors, stop = [], [], threading.Event()
    thread = threading.Thread(target=ingest, args=(client, stop, latencies, errors))
    thread.start()
    if during is not None:
        during.wait()
    else:
        time.sleep(seconds)
    stop.set()
    thread.join()
    return latencies, errors


def table_mb(cur) -> float:
    cur.execute("SELECT pg_total_relation_size('runs') / 1048576.0")
    return round(float(cur.fetchone()[0]), 1)


def sweep_under_ingest(settings: Settings, runs: int, seconds: float, tmp: str) -> dict:
    db_name, bucket = "postgres_retention_scale", "runs-retention-scale"
    admin = connect(settings)
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{db_name}"')
    s3 = s3_client(settings)
    empty_bucket(s3, bucket)
    env = {
        "DB_NAME": db_name,
        "S3_BUCKET_NAME": bucket,
        "RETENTION_SWEEP_SECONDS": "0",
        "API_KEYS": f"bench:{hash_key('bench')}",
    }
    server = start_server(Path(tmp), "retention-scale", **env)
    try:
        with cursor(settings, db_name) as cur:
            started = time.perf_counter()
            fill(cur, "bench", "expired", runs, 3)
            fill(cur, "bench", "kept", runs // 10, 0)
            fill_s = time.perf_counter() - started
            cur.execute("VACUUM ANALYZE runs")
            cur.execute("SELECT DISTINCT object_key FROM runs")
            for (key,) in cur.fetchall():
                s3.put_object(Bucket=bucket, Key=key, Body=b"[]")
            before_mb = table_mb(cur)
        base, base_errors = measure(server.client, seconds)
        sweep = subprocess.Popen(
            [sys.executable, "-m", "handler", "retain"],
            cwd=REPO_ROOT,
            env={**os.environ, "RUN_HANDLER_ENV": "test", **env},
            stderr=subprocess.PIPE,
            text=True,
        )
        started = time.perf_counter()
        during, during_errors = measure(server.client, None, sweep)
        sweep_s = time.perf_counter() - started
        log = sweep.stderr.read()
        assert sweep.returncode == 0, log
        with cursor(settings, db_name) as cur:
            cur.execute("SELECT count(*) FROM runs WHERE session_name = 'expired'")
            left = cur.fetchone()[0]
            after_mb = table_mb(cur)
            cur.execute("VACUUM runs")  # what autovacuum does on its own, soon after
            fill(cur, "bench", "again", runs, 0)
            refilled_mb = table_mb(cur)
        return {
            "expired_runs": runs,
            "fill_seconds": round(fill_s, 1),
            "sweep_seconds": round(sweep_s, 1),
            "sweep_runs_per_second": round(runs / sweep_s),
            "expired_left": left,
            "sweep_log": [line for line in log.splitlines() if "retain as of" in line],
            "ingest_without_sweep": {
                "posts": len(base),
                "p50_ms": round(1000 * statistics.median(base), 1),
                "p99_ms": round(1000 * percentile(base, 0.99), 1),
                "errors": len(base_errors),
            },
            "ingest_during_sweep": {
                "posts": len(during),
                "p50_ms": round(1000 * statistics.median(during), 1),
                "p99_ms": round(1000 * percentile(during, 0.99), 1),
                "errors": len(during_errors),
            },
            "runs_table_mb": {"before": before_mb, "after_sweep": after_mb, "after_refill": refilled_mb},
        }
    finally:
        server.stop()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        empty_bucket(s3, bucket)
        admin.close()


def partitions(settings: Settings, runs: int) -> dict:
    """Scratch tables in a scratch database: the same rows partitioned by day and not."""
    db_name = "postgres_retention_partitions"
    admin = connect(settings)
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{db_name}"')
    out = {}
    try:
        with cursor(settings, db_name) as cur:
            columns = "tenant text, id uuid, trace_id uuid, object_key text, size_bytes bigint,"
            columns += " created_at timestamptz"
            cur.execute(f"CREATE TABLE plain ({columns}, PRIMARY KEY (tenant, id))")
            cur.execute("CREATE INDEX ON plain (tenant, trace_id)")
            # The partition key must be in every unique index: (tenant, id) alone cannot be unique.
            cur.execute(
                f"CREATE TABLE parted ({columns}, PRIMARY KEY (tenant, id, created_at))"
                " PARTITION BY RANGE (created_at)"
            )
            cur.execute("CREATE INDEX ON parted (tenant, trace_id)")
            for day in range(30):
                cur.execute(
                    f"CREATE TABLE parted_{day} PARTITION OF parted FOR VALUES FROM"
                    f" (date_trunc('day', now()) - interval '{day} days')"
                    f" TO (date_trunc('day', now()) - interval '{day - 1} days')"
                )
            load = (
                "INSERT INTO {t} SELECT 'bench', gen_random_uuid(), md5((i / 10)::text)::uuid, 'k' || i,"
                " 5000,"
                " date_trunc('day', now()) - interval '3 days' + interval '1 hour'"
                " FROM generate_series(1, %s) AS i"
            )
            cur.execute(load.format(t="plain"), (runs,))
            cur.execute("INSERT INTO parted SELECT * FROM plain")
            cur.execute("ANALYZE plain; ANALYZE parted")
            cur.execute("SELECT id FROM plain ORDER BY random() LIMIT 2000")
            ids = [str(row[0]) for row in cur.fetchall()]
            for table in ("plain", "parted"):
                started = time.perf_counter()
                for run_id in ids:
                    cur.execute(
                        f"SELECT object_key FROM {table} WHERE tenant = 'bench' AND id = %s", (run_id,)
                    )
                    cur.fetchall()
                out[f"lookup_by_id_ms_{table}"] = round(1000 * (time.perf_counter() - started) / len(ids), 3)
            # Uniqueness of (tenant, id) is lost: the same id on another day goes in.
            cur.execute(
                "INSERT INTO parted SELECT tenant, id, trace_id, object_key, size_bytes, now()"
                " FROM parted LIMIT 1"
            )
            out["duplicate_id_accepted_by_partitions"] = cur.rowcount == 1
            started = time.perf_counter()
            cur.execute("ALTER TABLE parted DETACH PARTITION parted_3")
            cur.execute("DROP TABLE parted_3")
            out["drop_partition_seconds"] = round(time.perf_counter() - started, 2)
            started = time.perf_counter()
            while True:
                cur.execute(
                    "DELETE FROM plain WHERE (tenant, id) IN (SELECT tenant, id FROM plain LIMIT 20000)"
                )
                if cur.rowcount == 0:
                    break
            out["batched_delete_seconds"] = round(time.perf_counter() - started, 2)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        admin.close()
    return out


def bloat_cycles(settings: Settings, runs: int, cycles: int) -> list[dict]:
    """Write ``runs`` runs, expire and sweep them, vacuum, ``cycles`` times: the sizes of the runs
    table's heap and indexes after each cycle (they level off once freed space is reused)."""
    import asyncio
    import dataclasses

    from handler.retention.sweep import Sweep
    from handler.store.db import Database
    from handler.store.migrations import migrate
    from handler.store.objects import ObjectStore

    db_name = "postgres_retention_bloat"
    admin = connect(settings)
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{db_name}"')
    scratch = dataclasses.replace(settings, db_name=db_name)
    migrate(scratch)

    async def sweep() -> None:
        store = ObjectStore(scratch)
        await store.start()
        try:
            await Sweep(scratch, store, Database(scratch)).run()
        finally:
            await store.close()

    sizes = []
    try:
        with cursor(settings, db_name) as cur:
            fill(cur, "bench", "kept", runs // 10, 0)
            for cycle in range(cycles):
                fill(cur, "bench", f"cycle{cycle}", runs, 3)
                asyncio.run(sweep())
                cur.execute("VACUUM runs")
                cur.execute("SELECT pg_table_size('runs') / 1048576, pg_indexes_size('runs') / 1048576")
                heap, indexes = cur.fetchone()
                sizes.append({"cycle": cycle + 1, "heap_mb": int(heap), "indexes_mb": int(indexes)})
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        admin.close()
    return sizes


def ingest_cost(settings: Settings, runs: int) -> dict:
    """What 0008 adds to every insert (the index by received time and the usage triggers): ``runs``
    rows inserted 500 to a statement, as ingestion does, with them and with them dropped."""
    import dataclasses

    from handler.store.migrations import migrate

    db_name = "postgres_retention_cost"
    admin = connect(settings)
    result = {}
    try:
        for label in ("with_0008", "without"):
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
                cur.execute(f'CREATE DATABASE "{db_name}"')
            migrate(dataclasses.replace(settings, db_name=db_name))
            with cursor(settings, db_name) as cur:
                if label == "without":
                    cur.execute(
                        "DROP TRIGGER runs_usage_insert ON runs; DROP INDEX runs_tenant_session_received_idx;"
                        " DROP INDEX runs_unposted_received_idx"
                    )
                fill(cur, "bench", "warm", 5000, 0)
                started = time.perf_counter()
                for i in range(runs // 500):
                    fill(cur, "bench", f"p{i}", 500, 0)
                result[f"{label}_runs_per_second"] = round(runs / (time.perf_counter() - started))
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        admin.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--skip-partitions", action="store_true")
    parser.add_argument("--ingest-cost", action="store_true", help="only the insert cost of 0008")
    parser.add_argument("--bloat-cycles", type=int, default=0, help="only the table-size cycles, this many")
    args = parser.parse_args()
    settings = Settings.from_env()
    if args.ingest_cost:
        print(json.dumps(ingest_cost(settings, args.runs), indent=2))
        return
    if args.bloat_cycles:
        print(json.dumps(bloat_cycles(settings, args.runs, args.bloat_cycles), indent=2))
        return
    with tempfile.TemporaryDirectory() as tmp:
        result = {"sweep": sweep_under_ingest(settings, args.runs, args.seconds, tmp)}
    if not args.skip_partitions:
        result["partitions"] = partitions(settings, args.runs)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
