-- What LangSmith's filter language asks of a run beyond the columns it had (handler/query/):
-- its tags, extra.metadata's plain values, token counts and costs, and the text search() reads,
-- all filled at ingest by handler/query/extract.py while the run is parsed.
-- depends: 0006_feedback
ALTER TABLE runs
    ADD COLUMN tags jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN prompt_tokens bigint,
    ADD COLUMN completion_tokens bigint,
    ADD COLUMN total_tokens bigint,
    ADD COLUMN prompt_cost numeric,
    ADD COLUMN completion_cost numeric,
    ADD COLUMN total_cost numeric,
    ADD COLUMN search_text text,
    -- NULL: written before this migration, the columns above not yet filled from the run's bytes
    -- (`python -m handler backfill-query` fills them); 1: filled at ingest.
    ADD COLUMN query_fields smallint;
-- has(tags, ...), in(tags, [...]); metadata pairs and keys (@>, ?). jsonb_ops answers both.
CREATE INDEX runs_tags_idx ON runs USING gin (tags) WHERE tags <> '[]';
CREATE INDEX runs_metadata_idx ON runs USING gin (metadata) WHERE metadata <> '{}';
-- The rows the backfill still has to fill.
CREATE INDEX runs_query_backfill_idx ON runs (tenant, id) WHERE query_fields IS NULL;
