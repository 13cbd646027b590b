"""Operations: /health, /ready, /metrics and the access log (filled in next)."""

from __future__ import annotations

import tornado.web


def routes(deps: dict) -> list[tuple]:
    return []


def log_request(handler: tornado.web.RequestHandler) -> None:
    tornado.web.Application.log_request(handler.application, handler)
