-- The session ids that 0005 filled in on older rows stay (they name the project the run had).
DROP INDEX runs_tenant_session_roots_idx;
DROP INDEX runs_tenant_session_start_idx;
ALTER TABLE runs DROP COLUMN error;
DROP TABLE sessions;
