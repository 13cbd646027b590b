-- The projects' retention settings and long-tier marks are lost; runs are untouched.
DROP TRIGGER runs_usage_delete ON runs;
DROP TRIGGER runs_usage_update ON runs;
DROP TRIGGER runs_usage_insert ON runs;
DROP FUNCTION session_usage_count();
DROP TABLE session_usage;
DROP TABLE retention_pending_objects;
DROP TABLE retention_long_traces;
DROP INDEX runs_unposted_received_idx;
DROP INDEX runs_tenant_session_received_idx;
ALTER TABLE sessions DROP COLUMN longlived_ttl_days, DROP COLUMN retention_days, DROP COLUMN trace_tier;
