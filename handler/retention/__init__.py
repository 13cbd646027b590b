"""Retention: how long traces are kept (policy.py), the sweep that deletes expired ones (sweep.py),
and the routes that set and show a project's retention (handlers.py)."""
