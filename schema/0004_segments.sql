-- depends: 0003_langsmith_fields
-- Small runs are packed into shared segment objects: a run is the byte range
-- [object_offset, object_offset + size_bytes) of its object. NULL: the run is the whole object
-- (every row written before segments, large runs, runs written with SEGMENT_BYTES=0).
ALTER TABLE runs ADD COLUMN object_offset bigint CHECK (object_offset >= 0);
-- Many rows now share one object key: the unique index becomes one per range. gc and the commit
-- check still look rows up by key alone, which this index serves too.
DROP INDEX runs_object_key_idx;
CREATE UNIQUE INDEX runs_object_range_idx ON runs (object_key, (coalesce(object_offset, -1)));
