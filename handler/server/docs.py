"""The OpenAPI document and the Swagger UI / ReDoc pages that render it.

- ``GET /openapi.json``: the API's OpenAPI 3.1 document, ``handler/openapi.json`` (package data).
- ``GET /docs``: Swagger UI. ``GET /redoc``: ReDoc.
- ``GET /docs/static/...``: their JavaScript and CSS, from the ``drf-spectacular-sidecar`` wheel,
  served by this process: the pages work without Internet access and load nothing from a CDN.

The pages run no inline script (Swagger UI's initializer is a file of its own), so a
``script-src 'self'`` Content-Security-Policy fits them. Their URLs are relative, so the docs also
work behind a proxy that mounts the service under a path prefix. None of these routes needs an API
key.
"""

from __future__ import annotations

import html
import importlib.resources
import importlib.util
import json
from pathlib import Path

import tornado.web

from handler import __version__


def _load_document() -> dict:
    document = json.loads(importlib.resources.files(__package__).joinpath("openapi.json").read_bytes())
    document["info"]["version"] = __version__
    return document


def _sidecar_static() -> Path:
    """The folder of Swagger UI and ReDoc builds inside the installed ``drf_spectacular_sidecar``.

    The package is located without being imported: its ``__init__`` imports Django, which this
    service neither needs nor wants to load. ``module_from_spec`` makes a module object without
    running its code, and that is all ``importlib.resources`` needs to find the package's files.
    """
    spec = importlib.util.find_spec("drf_spectacular_sidecar")
    if spec is None:
        raise RuntimeError("drf-spectacular-sidecar is not installed: it provides the /docs assets")
    root = importlib.resources.files(importlib.util.module_from_spec(spec))
    static = root / "static" / "drf_spectacular_sidecar"
    # StaticFileHandler serves from the file system; a wheel is always installed unpacked.
    if not isinstance(static, Path) or not static.is_dir():
        raise RuntimeError(f"the drf-spectacular-sidecar assets are not a folder on disk: {static}")
    return static


DOCUMENT = _load_document()
_DOCUMENT_BYTES = json.dumps(DOCUMENT, ensure_ascii=False, indent=2).encode()
STATIC_DIR = _sidecar_static()

# Relative URLs: /docs and /redoc are at the root, so "docs/static/..." is /docs/static/... and
# "openapi.json" is /openapi.json, under whatever prefix a proxy adds.
_SWAGGER_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title} - Swagger UI</title>
  <link rel="stylesheet" href="docs/static/swagger-ui-dist/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/static/swagger-ui-dist/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/static/swagger-ui-dist/swagger-ui-bundle.js"></script>
  <script src="docs/swagger-initializer.js"></script>
</body>
</html>
"""

_SWAGGER_INITIALIZER = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
"""

# The ReDoc bundle renders every <redoc spec-url> element itself: no script of ours is needed.
_REDOC_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title} - ReDoc</title>
  <style>body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
  <redoc spec-url="openapi.json"></redoc>
  <script src="docs/static/redoc/bundles/redoc.standalone.js"></script>
</body>
</html>
"""


class _Fixed(tornado.web.RequestHandler):
    """Answers GET with one fixed body."""

    def initialize(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type

    def get(self) -> None:
        self.set_header("Content-Type", self.content_type)
        self.set_header("Cache-Control", "no-cache")
        self.finish(self.body)

    def write_error(self, status_code: int, **kwargs) -> None:
        self.finish({"error": self._reason})


class _Assets(tornado.web.StaticFileHandler):
    def write_error(self, status_code: int, **kwargs) -> None:
        self.finish({"error": self._reason})


def _fixed(body: str | bytes, content_type: str) -> dict:
    return {"body": body.encode() if isinstance(body, str) else body, "content_type": content_type}


def routes() -> list[tuple]:
    title = html.escape(DOCUMENT["info"]["title"])
    page = "text/html; charset=utf-8"
    return [
        (r"/openapi\.json", _Fixed, _fixed(_DOCUMENT_BYTES, "application/json")),
        (r"/docs", _Fixed, _fixed(_SWAGGER_PAGE.format(title=title), page)),
        (r"/docs/swagger-initializer\.js", _Fixed, _fixed(_SWAGGER_INITIALIZER, "text/javascript")),
        (r"/docs/static/(.+)", _Assets, {"path": str(STATIC_DIR)}),
        (r"/redoc", _Fixed, _fixed(_REDOC_PAGE.format(title=title), page)),
    ]
