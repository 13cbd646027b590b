-- Runs belong to a tenant, the owner of the API key that wrote them. Ids are unique per tenant,
-- so one tenant can never learn (through a 409) which ids another tenant uses.
-- depends: 0001_create_runs
ALTER TABLE runs ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE runs DROP CONSTRAINT runs_pkey;
ALTER TABLE runs ADD PRIMARY KEY (tenant, id);
DROP INDEX runs_trace_id_idx;
CREATE INDEX runs_tenant_trace_id_idx ON runs (tenant, trace_id);
-- `python -m handler gc` looks objects up by key.
CREATE UNIQUE INDEX runs_object_key_idx ON runs (object_key);
