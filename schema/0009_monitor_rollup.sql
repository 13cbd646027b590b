-- The monitor page's numbers per project and hour (handler/ui/monitor.py, README "Monitor"), kept
-- by statement-level triggers on runs like session_usage (0008), so that every writer (POST,
-- multipart, PATCH, OTLP, group commit, retention's deletes, a rolled-back batch) keeps them right
-- without code of its own. The monitor then sums a few thousand rows instead of reading 1M runs.
-- depends: 0007_query_fields 0008_retention

-- What a run counts as on the monitor: a posted run of a project, in the hour its start_time is in
-- (UTC, whole hours; runs without a start_time are in no window). An ended root run is also in its
-- latency's bucket; -1 holds every other run (children, roots still running).
-- Bucket b >= 1 holds root latencies in [2^((b-1)/8), 2^(b/8)) / 16 ms: 8 buckets per doubling,
-- so the bucket's middle, 2^((b-1/2)/8) / 16 ms, is within 2^(1/16) - 1 = 4.4 % of any latency in
-- it. Bucket 0 holds latencies under 1/16 ms (negative ones, from clocks that disagree, too).
CREATE FUNCTION runs_latency_bucket(parent_run_id uuid, start_time timestamptz, end_time timestamptz)
RETURNS smallint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN parent_run_id IS NOT NULL OR end_time IS NULL THEN -1
        WHEN extract(epoch FROM end_time - start_time)::float8 < 1 / 16000.0 THEN 0
        ELSE 1 + floor(ln(extract(epoch FROM end_time - start_time)::float8 * 16000) * (8 / ln(2)))
    END::smallint
$$;

-- runs: the project's runs; traces: its root runs; errors: root runs with status 'error'; tokens:
-- sum(total_tokens). Summed over shards and buckets they are the monitor's counts; the traces of
-- buckets >= 0 are its latency histogram. The shard is the writing server process's pid modulo
-- 16, as in session_usage, so concurrent ingesting connections do not wait on one row.
CREATE TABLE runs_hourly (
    tenant text NOT NULL,
    session_id uuid NOT NULL,
    hour timestamptz NOT NULL,
    latency_bucket smallint NOT NULL,
    shard smallint NOT NULL,
    runs bigint NOT NULL,
    traces bigint NOT NULL,
    errors bigint NOT NULL,
    tokens bigint NOT NULL,
    PRIMARY KEY (tenant, session_id, hour, latency_bucket, shard)
);

-- One aggregated upsert per statement: each changed run's old row is taken out (-1) and its new row
-- put in (+1); keys whose sums do not move are left alone (a PATCH of the inputs, the query
-- backfill, a segment compaction's moves).
CREATE FUNCTION runs_hourly_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- PL/pgSQL plans a statement when it first runs it: each branch names only the transition
    -- tables its trigger declares.
    IF TG_OP = 'INSERT' THEN
        INSERT INTO runs_hourly AS h (tenant, session_id, hour, latency_bucket, shard, runs, traces, errors, tokens)
        SELECT tenant, session_id, date_bin('1 hour', start_time, '2000-01-01 00:00+00'),
            runs_latency_bucket(parent_run_id, start_time, end_time), pg_backend_pid() % 16, count(*),
            count(*) FILTER (WHERE parent_run_id IS NULL),
            count(*) FILTER (WHERE parent_run_id IS NULL AND status = 'error'), coalesce(sum(total_tokens), 0)
        FROM new_runs WHERE posted AND session_id IS NOT NULL AND start_time IS NOT NULL
        GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (tenant, session_id, hour, latency_bucket, shard) DO UPDATE
            SET runs = h.runs + excluded.runs, traces = h.traces + excluded.traces,
                errors = h.errors + excluded.errors, tokens = h.tokens + excluded.tokens;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO runs_hourly AS h (tenant, session_id, hour, latency_bucket, shard, runs, traces, errors, tokens)
        SELECT tenant, session_id, date_bin('1 hour', start_time, '2000-01-01 00:00+00'),
            runs_latency_bucket(parent_run_id, start_time, end_time), pg_backend_pid() % 16, -count(*),
            -count(*) FILTER (WHERE parent_run_id IS NULL),
            -count(*) FILTER (WHERE parent_run_id IS NULL AND status = 'error'), -coalesce(sum(total_tokens), 0)
        FROM old_runs WHERE posted AND session_id IS NOT NULL AND start_time IS NOT NULL
        GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (tenant, session_id, hour, latency_bucket, shard) DO UPDATE
            SET runs = h.runs + excluded.runs, traces = h.traces + excluded.traces,
                errors = h.errors + excluded.errors, tokens = h.tokens + excluded.tokens;
    ELSIF TG_OP = 'TRUNCATE' THEN
        DELETE FROM runs_hourly;
    ELSE
        INSERT INTO runs_hourly AS h (tenant, session_id, hour, latency_bucket, shard, runs, traces, errors, tokens)
        SELECT tenant, session_id, hour, latency_bucket, pg_backend_pid() % 16,
            sum(n), sum(root), sum(root * failed), sum(tokens)
        FROM (
            SELECT tenant, session_id, date_bin('1 hour', start_time, '2000-01-01 00:00+00') AS hour,
                runs_latency_bucket(parent_run_id, start_time, end_time) AS latency_bucket, 1 AS n,
                (parent_run_id IS NULL)::int AS root, (status = 'error')::int AS failed,
                coalesce(total_tokens, 0) AS tokens
            FROM new_runs WHERE posted AND session_id IS NOT NULL AND start_time IS NOT NULL
            UNION ALL
            SELECT tenant, session_id, date_bin('1 hour', start_time, '2000-01-01 00:00+00'),
                runs_latency_bucket(parent_run_id, start_time, end_time), -1,
                -(parent_run_id IS NULL)::int, (status = 'error')::int, -coalesce(total_tokens, 0)
            FROM old_runs WHERE posted AND session_id IS NOT NULL AND start_time IS NOT NULL
        ) AS change
        GROUP BY 1, 2, 3, 4
        HAVING sum(n) <> 0 OR sum(root) <> 0 OR sum(root * failed) <> 0 OR sum(tokens) <> 0
        ORDER BY 1, 2, 3, 4
        ON CONFLICT (tenant, session_id, hour, latency_bucket, shard) DO UPDATE
            SET runs = h.runs + excluded.runs, traces = h.traces + excluded.traces,
                errors = h.errors + excluded.errors, tokens = h.tokens + excluded.tokens;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER runs_hourly_insert AFTER INSERT ON runs REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION runs_hourly_count();
CREATE TRIGGER runs_hourly_update AFTER UPDATE ON runs REFERENCING OLD TABLE AS old_runs NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION runs_hourly_count();
CREATE TRIGGER runs_hourly_delete AFTER DELETE ON runs REFERENCING OLD TABLE AS old_runs
    FOR EACH STATEMENT EXECUTE FUNCTION runs_hourly_count();
CREATE TRIGGER runs_hourly_truncate AFTER TRUNCATE ON runs
    FOR EACH STATEMENT EXECUTE FUNCTION runs_hourly_count();

-- The runs already there, counted after the triggers exist: CREATE TRIGGER's lock on runs, held
-- until this migration commits, keeps writers out meanwhile, so no run is missed or counted twice.
INSERT INTO runs_hourly (tenant, session_id, hour, latency_bucket, shard, runs, traces, errors, tokens)
SELECT tenant, session_id, date_bin('1 hour', start_time, '2000-01-01 00:00+00'),
    runs_latency_bucket(parent_run_id, start_time, end_time), 0, count(*),
    count(*) FILTER (WHERE parent_run_id IS NULL),
    count(*) FILTER (WHERE parent_run_id IS NULL AND status = 'error'), coalesce(sum(total_tokens), 0)
FROM runs WHERE posted AND session_id IS NOT NULL AND start_time IS NOT NULL
GROUP BY 1, 2, 3, 4;
