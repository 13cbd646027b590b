-- The monitor reads runs_hourly: roll back the code with it. Runs are untouched.
DROP TRIGGER runs_hourly_truncate ON runs;
DROP TRIGGER runs_hourly_delete ON runs;
DROP TRIGGER runs_hourly_update ON runs;
DROP TRIGGER runs_hourly_insert ON runs;
DROP FUNCTION runs_hourly_count();
DROP TABLE runs_hourly;
DROP FUNCTION runs_latency_bucket(uuid, timestamptz, timestamptz);
