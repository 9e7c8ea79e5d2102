"""`GET /docs`: an interactive reference (Swagger UI) rendered from `/openapi.json`, working
offline: its assets ship in the `swagger-ui-py` package and are served from `/docs/assets`, never
fetched from a CDN. Links are relative, so it also works behind a path prefix."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>AgentOS API reference</title>
  <link rel="stylesheet" href="docs/assets/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/assets/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/assets/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true,
      persistAuthorization: false, displayRequestDuration: true, tryItOutEnabled: false,
    });
  </script>
</body>
</html>
"""


def assets_dir() -> Path:
    """Swagger UI's files as the `swagger-ui-py` package ships them (found without importing
    the package, whose handlers we do not use)."""
    spec = find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed; `pip install agentos` installs it")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


async def docs_page(request: Request) -> Response:
    return HTMLResponse(PAGE, headers={"Cache-Control": "no-cache"})


def routes() -> list[BaseRoute]:
    return [Route("/docs", docs_page, methods=["GET"]),
            Mount("/docs/assets", StaticFiles(directory=assets_dir()), name="docs-assets")]
