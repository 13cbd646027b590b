DROP TABLE run_attachments;
DROP INDEX runs_tenant_trace_order_idx;
CREATE INDEX runs_tenant_trace_id_idx ON runs (tenant, trace_id);
ALTER TABLE runs
    DROP COLUMN run_type,
    DROP COLUMN start_time,
    DROP COLUMN end_time,
    DROP COLUMN parent_run_id,
    DROP COLUMN dotted_order,
    DROP COLUMN session_name,
    DROP COLUMN session_id,
    DROP COLUMN reference_example_id,
    DROP COLUMN status,
    DROP COLUMN posted;
DELETE FROM runs WHERE trace_id IS NULL OR name IS NULL;
ALTER TABLE runs ALTER COLUMN trace_id SET NOT NULL, ALTER COLUMN name SET NOT NULL;
