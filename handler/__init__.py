"""run-handler: streaming ingestion of tracing runs into S3 and PostgreSQL."""
