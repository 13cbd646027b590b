"""Feedback: what evaluations and users record about runs (LangSmith's /feedback API)."""
