"""OTLP/HTTP trace export: spans stored as runs."""
