"""Rows at the speed PostgreSQL allows: a group's rows written three ways, each in its own transaction.

    RUN_HANDLER_ENV=test python -m benchmarks.row_write [--repeat 30]

``unnest``: what store/rows.INSERT sends, one array per column (one statement, any number of rows);
``VALUES``: a multi-row INSERT with a tuple per row; ``COPY``: COPY FROM STDIN (text format). Rows
like the load's (every column of a run's row filled) go into a temporary copy of ``runs`` on the
load test's database (``postgres_load``); median milliseconds per transaction, client and server
time together, over ``--repeat`` transactions. psycopg2 in the server's asynchronous mode (aiopg)
cannot run COPY at all; this uses a plain connection to see what it would gain.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime

from benchmarks.load import db_connect, ensure_database
from handler.server.config import Settings
from handler.store.rows import ARRAYS, COLUMNS, RunRow, columns


def rows(count: int) -> list[RunRow]:
    now = datetime.now(UTC)
    trace = uuid.uuid4()
    key = f"default/segments/2026-01-01/{uuid.uuid4().hex}.json"
    return [
        RunRow(
            uuid.uuid4(),
            trace,
            f"run {i}",
            key,
            4000,
            "llm",
            now,
            now,
            trace,
            f"{now:%Y%m%dT%H%M%S%fZ}{trace}",
            "default",
            uuid.uuid4(),
            None,
            "success",
            True,
            2 + i * 4002,
            None,
        )
        for i in range(count)
    ]


def unnest(cur, batch: list[RunRow]) -> None:
    cur.execute(
        f"INSERT INTO t (tenant, {COLUMNS}) SELECT %s, * FROM unnest({ARRAYS})", ("default", *columns(batch))
    )


def values(cur, batch: list[RunRow]) -> None:
    row = "(" + ", ".join(["%s"] * (len(RunRow._fields) + 1)) + ")"
    params = [
        v
        for r in batch
        for v in ("default", *(x if x is None or isinstance(x, str | int) else str(x) for x in r))
    ]
    cur.execute(f"INSERT INTO t (tenant, {COLUMNS}) VALUES " + ", ".join([row] * len(batch)), params)


def copy(cur, batch: list[RunRow]) -> None:
    def text(value) -> str:
        if value is None:
            return "\\N"
        if isinstance(value, bool):
            return "t" if value else "f"
        return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")

    data = "".join("\t".join(text(v) for v in ("default", *r)) + "\n" for r in batch)
    cur.copy_expert(f"COPY t (tenant, {COLUMNS}) FROM STDIN", io.StringIO(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.row_write", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args(argv)
    os.environ.update({"DB_NAME": "postgres_load"})
    settings = Settings.from_env()
    ensure_database(settings)
    conn = db_connect(settings)
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE t (LIKE runs INCLUDING ALL)")
        conn.commit()
        print("rows per transaction   unnest    VALUES    COPY   (median ms per transaction)")
        for count in (1, 16, 100, 1000):
            medians = []
            for write in (unnest, values, copy):
                times = []
                for _ in range(args.repeat):
                    batch = rows(count)
                    start = time.perf_counter()
                    with conn.cursor() as cur:
                        write(cur, batch)
                    conn.commit()
                    times.append(time.perf_counter() - start)
                medians.append(statistics.median(times) * 1000)
            print(f"{count:>20}   " + "  ".join(f"{m:7.2f}" for m in medians))
    finally:
        conn.rollback()
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
