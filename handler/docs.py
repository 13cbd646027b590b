"""The OpenAPI document and the Swagger UI / ReDoc pages that render it (filled in next)."""

from __future__ import annotations


def routes() -> list[tuple]:
    return []
