-- input_key / input_value / output_key / output_value of the filter language (handler/query/):
-- the first top-level keys of a run's inputs and outputs with their plain values as text (null
-- for an object or array value), filled at ingest by handler/query/extract.py (KV_KEYS,
-- KV_VALUE_CHARS). No index: a filter on them is answered within the project's start-time
-- window, like search(); an index would cost every ingested run (README, "Finding runs").
-- Rows kept without them (before this migration, or while IO_KEYS is 0) have query_fields 1 (2:
-- with them); `python -m handler backfill-query` under IO_KEYS > 0 fills them from the runs'
-- bytes, finding the rows by the index below.
-- depends: 0008_retention
ALTER TABLE runs
    ADD COLUMN inputs_kv jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN outputs_kv jsonb NOT NULL DEFAULT '{}';
DROP INDEX runs_query_backfill_idx;
CREATE INDEX runs_query_backfill_idx ON runs (tenant, id) WHERE query_fields IS NULL OR query_fields < 2;
