"""Finding runs: LangSmith's filter language (parser, fields, SQL compiler, a Python evaluator), the query
columns filled at ingest, and the v2 read routes."""
