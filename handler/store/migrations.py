"""Schema migrations with yoyo, from the repository's schema/ folder."""

from __future__ import annotations

from yoyo import get_backend, read_migrations

from handler.server.config import REPO_ROOT, Settings

SCHEMA_DIR = REPO_ROOT / "schema"


def migrate(settings: Settings) -> int:
    """Apply every pending migration; returns how many ran."""
    backend = get_backend(settings.db_url)
    migrations = read_migrations(str(SCHEMA_DIR))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return len(pending)


def rollback_last(settings: Settings) -> int:
    """Roll back the most recently applied migration; returns how many were rolled back."""
    backend = get_backend(settings.db_url)
    migrations = read_migrations(str(SCHEMA_DIR))
    with backend.lock():
        applied = backend.to_rollback(migrations)[:1]
        backend.rollback_migrations(applied)
    return len(applied)
