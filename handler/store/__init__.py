"""Where runs are kept: PostgreSQL rows (aiopg), S3 objects and segments, the object cache, migrations."""
