"""run-handler: streaming ingestion of tracing runs into S3 and PostgreSQL."""

from importlib.metadata import version

__version__ = version("run-handler")
