-- Retention (README "Retention"): each project's policy, what the sweep needs to find a project's
-- expired traces without reading the rest, and per-project usage kept current by triggers.
-- depends: 0005_sessions

-- LangSmith's names: trace_tier and longlived_ttl_days (days of the long tier); retention_days is
-- ours (days of the short tier). NULL: the server's RETENTION_DAYS / RETENTION_LONG_DAYS.
ALTER TABLE sessions
    ADD COLUMN trace_tier text CHECK (trace_tier IN ('shortlived', 'longlived')),
    ADD COLUMN retention_days integer CHECK (retention_days BETWEEN 1 AND 36500),
    ADD COLUMN longlived_ttl_days integer CHECK (longlived_ttl_days BETWEEN 1 AND 36500);

-- A trace's first-received time is the earliest created_at of its runs (the server's clock at
-- insert; patches keep it). The sweep reads one project's runs older than its cutoff, oldest
-- first (id breaks ties: a batch's rows share one time), and GET /sessions/{id} its oldest run, from this index.
CREATE INDEX runs_tenant_session_received_idx ON runs (tenant, session_id, created_at, id);
-- Runs that only patches have reached (their post still to come) may name a project that does
-- not exist yet; the sweep finds them here. Posted rows are not in this index.
CREATE INDEX runs_unposted_received_idx ON runs (created_at, id) WHERE NOT posted;

-- Traces moved to the long tier: feedback recorded on them, or asked for.
CREATE TABLE retention_long_traces (
    tenant text NOT NULL,
    trace_id uuid NOT NULL,
    reason text NOT NULL,
    since timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, trace_id)
);

-- Objects whose rows a sweep deleted, written in the transaction that deleted them: after the
-- commit each is deleted from the bucket if no row points at it any more, then its line here.
-- A sweep killed in between finds them here the next time (gc would find them too, later).
CREATE TABLE retention_pending_objects (
    object_key text PRIMARY KEY,
    since timestamptz NOT NULL DEFAULT now()
);

-- Runs and bytes per project, so GET /sessions/{id} need not count. Statement-level triggers add
-- what each INSERT, UPDATE and DELETE of runs changes, into a row per (project, shard); the shard
-- is the server process's pid modulo 16, so concurrent ingesting connections do not wait on one
-- row. run_count counts posted runs; bytes are the runs' own (attachments not counted).
CREATE TABLE session_usage (
    tenant text NOT NULL,
    session_id uuid NOT NULL,
    shard smallint NOT NULL,
    run_count bigint NOT NULL,
    bytes bigint NOT NULL,
    PRIMARY KEY (tenant, session_id, shard)
);

INSERT INTO session_usage (tenant, session_id, shard, run_count, bytes)
SELECT tenant, session_id, 0, count(*) FILTER (WHERE posted), coalesce(sum(size_bytes), 0)
FROM runs WHERE session_id IS NOT NULL GROUP BY tenant, session_id;

CREATE FUNCTION session_usage_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- PL/pgSQL plans a statement when it first runs it: each branch names only the transition
    -- tables its trigger declares.
    IF TG_OP = 'INSERT' THEN
        INSERT INTO session_usage AS u (tenant, session_id, shard, run_count, bytes)
        SELECT tenant, session_id, pg_backend_pid() % 16, count(*) FILTER (WHERE posted), sum(size_bytes)
        FROM new_runs WHERE session_id IS NOT NULL GROUP BY tenant, session_id ORDER BY tenant, session_id
        ON CONFLICT (tenant, session_id, shard) DO UPDATE
            SET run_count = u.run_count + excluded.run_count, bytes = u.bytes + excluded.bytes;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO session_usage AS u (tenant, session_id, shard, run_count, bytes)
        SELECT tenant, session_id, pg_backend_pid() % 16, -count(*) FILTER (WHERE posted), -sum(size_bytes)
        FROM old_runs WHERE session_id IS NOT NULL GROUP BY tenant, session_id ORDER BY tenant, session_id
        ON CONFLICT (tenant, session_id, shard) DO UPDATE
            SET run_count = u.run_count + excluded.run_count, bytes = u.bytes + excluded.bytes;
    ELSE
        INSERT INTO session_usage AS u (tenant, session_id, shard, run_count, bytes)
        SELECT tenant, session_id, pg_backend_pid() % 16, sum(n), sum(b)
        FROM (
            SELECT tenant, session_id, posted::int AS n, size_bytes AS b FROM new_runs
            UNION ALL
            SELECT tenant, session_id, -posted::int, -size_bytes FROM old_runs
        ) AS change
        WHERE session_id IS NOT NULL GROUP BY tenant, session_id
        HAVING sum(n) <> 0 OR sum(b) <> 0 ORDER BY tenant, session_id
        ON CONFLICT (tenant, session_id, shard) DO UPDATE
            SET run_count = u.run_count + excluded.run_count, bytes = u.bytes + excluded.bytes;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER runs_usage_insert AFTER INSERT ON runs REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION session_usage_count();
CREATE TRIGGER runs_usage_update AFTER UPDATE ON runs REFERENCING OLD TABLE AS old_runs NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION session_usage_count();
CREATE TRIGGER runs_usage_delete AFTER DELETE ON runs REFERENCING OLD TABLE AS old_runs
    FOR EACH STATEMENT EXECUTE FUNCTION session_usage_count();
