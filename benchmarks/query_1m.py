"""The filter language against 1 million runs made by generate_series (not by ingesting): the
common filters of POST /runs/query over one project's last day, and cursor paging through 10,000
results, each timed (median of ROUNDS) with its EXPLAIN (ANALYZE, BUFFERS) plan.

    RUN_HANDLER_ENV=test python -m benchmarks.query_1m [runs]     (default 1,000,000)

Uses its own database (``<DB_NAME>_query_bench``, made and migrated here, kept between runs: the
rows are made once). The SQL timed is the handler's own (read/query.Query with filters compiled
by handler/query/), executed with psycopg2. The shape of the data:

- 10 projects, start times spread evenly over the last 7 days (one project's day: ~14,000 runs);
- traces of 5 runs: a root chain and 4 children (llm, tool, retriever, llm);
- 2% of runs have an error (1 in 47); latency 0 to 20 s;
- tags: "prod" on 4% of runs (1 in 23), "rare" on 0.1% (1 in 997); metadata on roots: user_id
  (5,000 users, each in every project), env;
- llm runs have total/prompt/completion tokens (0 to 10,000).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

import psycopg2

from handler.read.query import Query, encode_cursor
from handler.read.sessions import session_id_for
from handler.server.config import Settings
from handler.store.migrations import migrate

TENANT = "bench"
PROJECTS = 10
ROUNDS = 15
MAKE = """
INSERT INTO runs (tenant, id, trace_id, name, object_key, size_bytes, run_type, start_time, end_time,
    parent_run_id, session_id, status, error, tags, metadata, prompt_tokens, completion_tokens,
    total_tokens, query_fields)
SELECT %(tenant)s, g.id, g.trace, 'run-' || (g.i %% 1000), 'bench/' || g.i, 1000,
    (ARRAY['chain', 'llm', 'tool', 'retriever', 'llm'])[(g.i %% 5 + 1)::int],
    g.start, g.start + make_interval(secs => (g.i * 7919 %% 20000) / 1000.0),
    CASE WHEN g.i %% 5 = 0 THEN NULL ELSE g.trace END,
    (%(projects)s::uuid[])[(g.i / 5 %% %(count)s + 1)::int],
    CASE WHEN g.i %% 47 = 7 THEN 'error' ELSE 'success' END,
    CASE WHEN g.i %% 47 = 7 THEN 'TimeoutError: upstream ' || g.i END,
    CASE WHEN g.i %% 997 = 3 THEN '["prod", "rare"]'::jsonb WHEN g.i %% 23 = 3 THEN '["prod"]'::jsonb
        ELSE '[]'::jsonb END,
    CASE WHEN g.i %% 5 = 0 THEN jsonb_build_object('user_id', 'u-' || (g.i / 50 %% 5000), 'env', 'prod')
        ELSE '{}'::jsonb END,
    CASE WHEN g.i %% 5 IN (1, 4) THEN g.i * 31 %% 7000 END,
    CASE WHEN g.i %% 5 IN (1, 4) THEN g.i * 17 %% 3000 END,
    CASE WHEN g.i %% 5 IN (1, 4) THEN g.i * 31 %% 7000 + g.i * 17 %% 3000 END,
    1
FROM (
    SELECT i, md5('run' || i)::uuid AS id, md5('run' || (i / 5 * 5))::uuid AS trace,
        %(now)s::timestamptz - make_interval(secs => (%(total)s - i / 5 * 5) * 604800.0 / %(total)s) AS start
    FROM generate_series(%(low)s::bigint, %(high)s::bigint - 1) AS i
) AS g
"""


def connect(settings: Settings):
    conn = psycopg2.connect(
        host=settings.db_host,
        port=settings.db_port,
        user=settings.db_user,
        password=settings.db_password,
        dbname=settings.db_name,
    )
    conn.autocommit = True
    return conn


def prepare(settings: Settings, total: int) -> tuple[Settings, list[str], datetime]:
    bench = dataclasses.replace(settings, db_name=f"{settings.db_name}_query_bench")
    admin = connect(settings)
    with admin.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (bench.db_name,))
        if not cur.fetchone():
            cur.execute(f'CREATE DATABASE "{bench.db_name}"')
    admin.close()
    migrate(bench)
    projects = [str(session_id_for(TENANT, f"project-{p}")) for p in range(PROJECTS)]
    conn = connect(bench)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE tenant = %s", (TENANT,))
        if cur.fetchone()[0] != total or "--remake" in sys.argv:
            cur.execute("DELETE FROM runs WHERE tenant = %s", (TENANT,))
            started = time.perf_counter()
            now = datetime.now(UTC)
            step = 100_000
            for low in range(0, total, step):
                params = {
                    "tenant": TENANT,
                    "projects": projects,
                    "count": PROJECTS,
                    "now": now,
                    "total": total,
                }
                cur.execute(MAKE, {**params, "low": low, "high": min(low + step, total)})
            cur.execute("VACUUM ANALYZE runs")
            print(f"made {total:,} runs in {time.perf_counter() - started:.0f} s", flush=True)
        cur.execute("SELECT max(start_time) FROM runs WHERE tenant = %s", (TENANT,))
        latest = cur.fetchone()[0]
    conn.close()
    return bench, projects, latest


def timed(cur, sql: str, params: tuple) -> tuple[float, int]:
    started = time.perf_counter()
    cur.execute(sql, params)
    rows = cur.fetchall()
    return (time.perf_counter() - started) * 1000, len(rows)


def main() -> None:
    numbers = [a for a in sys.argv[1:] if a.isdigit()]
    total = int(numbers[0]) if numbers else 1_000_000
    bench, projects, latest = prepare(Settings.from_env(), total)
    day = (latest - timedelta(days=1)).isoformat()
    base = {"session": [projects[3]], "start_time": day, "select": ["id", "name", "run_type", "start_time"]}
    cases = {
        "run_type": {"filter": 'eq(run_type, "retriever")'},
        "error": {"filter": "neq(error, null)"},
        "tag": {"filter": 'has(tags, "rare")'},
        "metadata pair": {"filter": 'and(eq(metadata_key, "user_id"), eq(metadata_value, "u-42"))'},
        "latency >": {"filter": 'gt(latency, "19.5s")'},
        "total_tokens >": {"filter": "gt(total_tokens, 9500)"},
        "trace_filter": {"trace_filter": 'eq(metadata_value, "u-4242")'},
        "tree_filter": {"tree_filter": 'has(tags, "rare")', "filter": "eq(is_root, true)"},
        "search (name, error)": {"filter": 'search("upstream 4711")'},
    }
    conn = connect(bench)
    out = [f"# {total:,} runs, {PROJECTS} projects, 7 days; one project's last day; median of {ROUNDS}", ""]
    out.append("| filter | median ms | max ms | runs found |")
    out.append("|---|--:|--:|--:|")
    plans = []
    with conn.cursor() as cur:
        for name, filters in cases.items():
            query = Query(TENANT, {**base, **filters})
            times = []
            for _ in range(ROUNDS):
                ms, found = timed(cur, query.sql, query.params)
                times.append(ms)
            text = next(iter(filters.values()))
            out.append(f"| {name}: `{text}` | {statistics.median(times):.1f} | {max(times):.1f} | {found} |")
            cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + query.sql, query.params)
            plans.append(f"## {name}\n" + "\n".join(row[0] for row in cur.fetchall()))
        # Cursor paging: 100 pages of 100, all non-root runs of the project's last day.
        pages, cursor, seen = [], None, 0
        while seen < 10_000:
            body = {
                **base,
                "filter": "eq(is_root, false)",
                "limit": 100,
                **({"cursor": cursor} if cursor else {}),
            }
            query = Query(TENANT, body)
            ms, found = timed(cur, query.sql, query.params)
            cur.execute(query.sql, query.params)
            rows = cur.fetchall()[:100]
            pages.append(ms)
            seen += len(rows)
            if len(rows) < 100:
                break
            cursor = encode_cursor(rows[-1][3], rows[-1][0])
        out.append(
            f"| cursor paging: {len(pages)} pages of 100 (`eq(is_root, false)`)"
            f" | {statistics.median(pages):.1f} per page | {max(pages):.1f} | {seen} |"
        )
    conn.close()
    report = "\n".join(out) + "\n\n" + "\n\n".join(plans) + "\n"
    print("\n".join(out))
    os.makedirs(".benchmarks", exist_ok=True)
    with open(".benchmarks/query_1m.txt", "w") as f:
        f.write(report)
    print("plans: .benchmarks/query_1m.txt")


if __name__ == "__main__":
    main()
