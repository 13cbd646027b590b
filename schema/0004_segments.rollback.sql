-- The schema before segments cannot say where in an object a run is: refuse while any row points
-- into a segment (compact or export those runs first) rather than lose runs.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM runs WHERE object_offset IS NOT NULL) THEN
        RAISE EXCEPTION 'runs are stored in segments (object_offset is set); this rollback would lose them';
    END IF;
END $$;
DROP INDEX runs_object_range_idx;
CREATE UNIQUE INDEX runs_object_key_idx ON runs (object_key);
ALTER TABLE runs DROP COLUMN object_offset;
