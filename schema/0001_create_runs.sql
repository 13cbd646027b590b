-- One row per stored run; the run itself lives in object storage under object_key.
CREATE TABLE runs (
    id uuid PRIMARY KEY,
    trace_id uuid NOT NULL,
    name text NOT NULL,
    object_key text NOT NULL,
    size_bytes bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX runs_trace_id_idx ON runs (trace_id);
