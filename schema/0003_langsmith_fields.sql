-- The small fields of LangSmith runs, so a trace can be listed without reading payloads, and
-- attachments: files sent beside a run (multipart), each its own object.
-- depends: 0002_runs_per_tenant
ALTER TABLE runs
    ADD COLUMN run_type text,
    ADD COLUMN start_time timestamptz,
    ADD COLUMN end_time timestamptz,
    ADD COLUMN parent_run_id uuid,
    ADD COLUMN dotted_order text,
    ADD COLUMN session_name text,
    ADD COLUMN session_id uuid,
    ADD COLUMN reference_example_id uuid,
    ADD COLUMN status text NOT NULL DEFAULT 'pending',
    -- False while only patches of the run have arrived (clients may send a patch before its post).
    ADD COLUMN posted boolean NOT NULL DEFAULT true,
    ALTER COLUMN trace_id DROP NOT NULL,
    ALTER COLUMN name DROP NOT NULL;
-- GET /runs?trace_id= pages through a trace in dotted_order.
DROP INDEX runs_tenant_trace_id_idx;
CREATE INDEX runs_tenant_trace_order_idx ON runs (tenant, trace_id, (coalesce(dotted_order, '')), id);

CREATE TABLE run_attachments (
    tenant text NOT NULL,
    run_id uuid NOT NULL,
    name text NOT NULL,
    object_key text NOT NULL UNIQUE,
    content_type text NOT NULL,
    size_bytes bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, run_id, name),
    FOREIGN KEY (tenant, run_id) REFERENCES runs (tenant, id) ON DELETE CASCADE
);
