"""The monitor page's query (handler/ui/monitor.py) over RUNS generated runs of one project.

Rows are generated in PostgreSQL (generate_series) into the test database's runs table, with its
real indexes and triggers, for a tenant of their own: RUNS runs in the last 22 hours, one root
run in five, 5 % of roots failed, latencies spread over 0-2 s. The one INSERT fills the monitor's
rollup too (runs_hourly, schema/0009: its statement trigger), so its time includes the trigger's.
After VACUUM ANALYZE, each window (1, 7, 30 days; all RUNS runs are in each) is asked of
``monitor()`` (the API's code, through the service's connection pool) once to warm the cache,
then ROUNDS times; the median and the fastest are printed, with the plans of the 1 day
statements. The rows (and their rollup) are deleted at the end.
Usage: RUN_HANDLER_ENV=test python -m benchmarks.monitor_query [RUNS] (make benchmark).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime

import psycopg2

from handler.server.config import Settings
from handler.store.db import Database
from handler.ui import monitor

TENANT = "bench-monitor"
ROUNDS = 7
_GENERATE = """
INSERT INTO runs (tenant, id, trace_id, name, object_key, size_bytes, start_time, end_time,
                  parent_run_id, session_id, status, posted)
SELECT %(tenant)s, g.id, g.trace, 'bench', 'bench-monitor/' || g.i, 100, g.start,
       g.start + make_interval(secs => random() * 2), CASE WHEN g.root THEN NULL ELSE g.trace END,
       %(session)s, CASE WHEN g.root AND random() < 0.05 THEN 'error' ELSE 'success' END, true
FROM (SELECT i, md5('bm' || i)::uuid AS id, md5('bm' || (i / 5 * 5))::uuid AS trace, i %% 5 = 0 AS root,
             now() - make_interval(secs => (i / 5 * 5) * 79200.0 / %(runs)s) AS start
      FROM generate_series(0, %(runs)s - 1) AS i) AS g
"""


async def measure(settings: Settings, session: str, runs: int) -> None:
    """What the page waits for: monitor() through the service's pool, its statements at once."""
    db = Database(settings)
    await db.start()
    try:
        for days in (1, 7, 30):
            answer = await monitor.monitor(db, TENANT, session, days)  # warms the cache
            assert answer["totals"]["runs"] == runs, "the window must hold every generated run"
            times = []
            for _ in range(ROUNDS):
                t = time.perf_counter()
                await monitor.monitor(db, TENANT, session, days)
                times.append((time.perf_counter() - t) * 1000)
            print(f"  {days:>2} days: median {statistics.median(times):.1f} ms, fastest {min(times):.1f} ms")
    finally:
        await db.close()


def main(runs: int) -> None:
    s = Settings.from_env()
    conn = psycopg2.connect(
        host=s.db_host, port=s.db_port, user=s.db_user, password=s.db_password, dbname=s.db_name
    )
    conn.autocommit = True
    session = str(uuid.uuid4())
    try:
        with conn.cursor() as cur:
            cur.execute("DELETE FROM runs WHERE tenant = %s", (TENANT,))
            t0 = time.perf_counter()
            cur.execute(_GENERATE, {"tenant": TENANT, "session": session, "runs": runs})
            cur.execute("VACUUM (ANALYZE) runs")
            cur.execute("VACUUM (ANALYZE) runs_hourly")
            print(f"generated {runs:,} runs ({runs // 5:,} traces) in {time.perf_counter() - t0:.1f} s")
            cur.execute("SELECT count(*) FROM runs_hourly WHERE tenant = %s", (TENANT,))
            print(f"the monitor's rollup holds {cur.fetchone()[0]:,} rows for them (runs_hourly)")
            print(f"monitor query over {runs:,} runs of one project (PostgreSQL {conn.server_version}):")
            asyncio.run(measure(s, session, runs))
            cur.execute(*monitor.features_sql())
            sql = monitor.statements(monitor.features_of(cur.fetchone()))
            params = {**monitor.window(1, datetime.now(UTC)), "tenant": TENANT, "session": session}
            for name, statement in (("counts", sql.counts), ("latency", sql.latency)):
                cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
                print(f"plan of the 1 day {name} statement:")
                print("\n".join("  " + row[0] for row in cur.fetchall()))
    finally:
        with conn.cursor() as cur:
            cur.execute("DELETE FROM runs WHERE tenant = %s", (TENANT,))
            cur.execute("DELETE FROM runs_hourly WHERE tenant = %s", (TENANT,))
            cur.execute("VACUUM runs")
        conn.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
