"""The read side: a run's bytes, a trace's runs, run queries, and projects (LangSmith's sessions)."""
