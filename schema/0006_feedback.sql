-- Feedback (LangSmith's): what evaluators and users record about runs (handler/feedback/).
-- depends: 0005_sessions
-- No foreign key to runs: feedback may come before its run, or for a run that never comes; it is
-- found by (tenant, run_id) and counted in the run's feedback_stats once the run is there.
CREATE TABLE feedback (
    tenant text NOT NULL,
    id uuid NOT NULL,
    run_id uuid,
    trace_id uuid,
    session_id uuid,
    key text NOT NULL,
    score double precision,
    value jsonb,
    comment text,
    correction jsonb,
    feedback_source jsonb,
    feedback_config jsonb,
    extra jsonb,
    error boolean,
    comparative_experiment_id uuid,
    feedback_group_id uuid,
    start_time timestamptz,
    created_at timestamptz NOT NULL,
    modified_at timestamptz NOT NULL,
    PRIMARY KEY (tenant, id)
);
-- By run (list_feedback(run_ids=), feedback_stats), by trace (a trace's feedback, deleted with it),
-- by key and by time (newest first, the listing's order).
CREATE INDEX feedback_tenant_run_idx ON feedback (tenant, run_id);
CREATE INDEX feedback_tenant_trace_idx ON feedback (tenant, trace_id);
CREATE INDEX feedback_tenant_key_created_idx ON feedback (tenant, key, created_at DESC);
CREATE INDEX feedback_tenant_created_idx ON feedback (tenant, created_at DESC, id DESC);
