-- Projects (LangSmith's "sessions"), and what POST /runs/query filters and orders by.
-- depends: 0004_segments
-- A project's id is derived from its tenant and name (handler/sessions.py: uuid3 of the name in
-- the tenant's namespace), so a run naming its project gets the project's id without a lookup, and
-- ingestion creates the project in the statement that writes the run.
CREATE TABLE sessions (
    tenant text NOT NULL,
    id uuid NOT NULL,
    name text NOT NULL,
    description text,
    extra jsonb,
    start_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, name)
);

-- Python's uuid.uuid3(namespace, name), for the rows written before this migration.
CREATE FUNCTION pg_temp.uuid3(ns uuid, name text) RETURNS uuid LANGUAGE sql IMMUTABLE AS $$
    SELECT (substr(h, 1, 12) || '3' || substr(h, 14, 3)
            || to_hex((('x' || substr(h, 17, 1))::bit(4)::int & 3) | 8) || substr(h, 18))::uuid
    FROM (SELECT md5(decode(replace(ns::text, '-', ''), 'hex') || convert_to(name, 'UTF8')) AS h) AS d
$$;
-- As ingestion does (sessions.with_sessions): a run without a session_id is in the project its
-- session_name (or "default") names, whose id is uuid3(the tenant's namespace, name), the tenant's
-- namespace being uuid3(NAMESPACE_URL, 'run-handler:tenant:' || tenant); a run with a session_id
-- keeps it, in a project named by its session_name (or the id).
CREATE FUNCTION pg_temp.project_id(tenant text, name text) RETURNS uuid LANGUAGE sql IMMUTABLE AS $$
    SELECT pg_temp.uuid3(
        pg_temp.uuid3('6ba7b811-9dad-11d1-80b4-00c04fd430c8', 'run-handler:tenant:' || tenant), name)
$$;
INSERT INTO sessions (tenant, id, name)
SELECT DISTINCT tenant, pg_temp.project_id(tenant, coalesce(session_name, 'default')),
    coalesce(session_name, 'default')
FROM runs WHERE posted AND session_id IS NULL
ON CONFLICT DO NOTHING;
INSERT INTO sessions (tenant, id, name)
SELECT DISTINCT ON (tenant, session_id) tenant, session_id, coalesce(session_name, session_id::text)
FROM runs WHERE posted AND session_id IS NOT NULL ORDER BY tenant, session_id, session_name NULLS LAST
ON CONFLICT DO NOTHING;
UPDATE runs SET session_id = pg_temp.project_id(tenant, coalesce(session_name, 'default'))
WHERE session_id IS NULL;

-- The start of a run's error text, so that listings show it without reading the run.
ALTER TABLE runs ADD COLUMN error text;
-- A project's runs, newest first; and its root runs (its traces).
CREATE INDEX runs_tenant_session_start_idx
    ON runs (tenant, session_id, (coalesce(start_time, '-infinity')) DESC, id DESC);
CREATE INDEX runs_tenant_session_roots_idx
    ON runs (tenant, session_id, (coalesce(start_time, '-infinity')) DESC, id DESC)
    WHERE parent_run_id IS NULL;
