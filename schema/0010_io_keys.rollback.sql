DROP INDEX runs_query_backfill_idx;
CREATE INDEX runs_query_backfill_idx ON runs (tenant, id) WHERE query_fields IS NULL;
ALTER TABLE runs
    DROP COLUMN inputs_kv,
    DROP COLUMN outputs_kv;
