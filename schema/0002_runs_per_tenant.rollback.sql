-- Fails if two tenants use the same id: they cannot share one primary key again.
DROP INDEX runs_object_key_idx;
DROP INDEX runs_tenant_trace_id_idx;
CREATE INDEX runs_trace_id_idx ON runs (trace_id);
ALTER TABLE runs DROP CONSTRAINT runs_pkey;
ALTER TABLE runs ADD PRIMARY KEY (id);
ALTER TABLE runs DROP COLUMN tenant;
