"""`/console`: the web console, a static single-page app (plain ES modules and CSS in `static/`,
shipped as package data: no build step, no CDN, works offline) that calls this API with the
key its user pastes. `AGENTOS_API__CONSOLE=false` leaves the routes out.

Every answer carries a strict Content-Security-Policy: only this origin's scripts, styles and
connections (the API itself, its streams), no inline code, no framing. The page is never cached
without revalidation, so a deploy shows at once; assets revalidate by ETag."""

from __future__ import annotations

import html
import os
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Scope

from core.settings import ApiSettings

STATIC = Path(__file__).resolve().parent / "static"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class ConsoleAssets(StaticFiles):
    """The console's files, with the console's security headers and revalidation by ETag."""

    def file_response(self, full_path: PathLike, stat_result: os.stat_result, scope: Scope,
                      status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update({**HEADERS, "Cache-Control": "no-cache"})
        return response


def page(settings: ApiSettings) -> str:
    """index.html with the operator's trace UI link (if any) for the run page."""
    trace_url = html.escape(settings.console_trace_url or "", quote=True)
    return (STATIC / "index.html").read_text().replace("{{trace_url}}", trace_url)


def routes(settings: ApiSettings) -> list[BaseRoute]:
    if not settings.console:
        return []
    body = page(settings)

    async def index(request: Request) -> Response:
        return HTMLResponse(body, headers={**HEADERS, "Cache-Control": "no-cache"})

    async def to_index(request: Request) -> Response:
        # Relative, so it also works behind a path prefix; the page's links are relative to /console/.
        return RedirectResponse("console/", status_code=308)

    return [Route("/console", to_index, methods=["GET"]),
            Route("/console/", index, methods=["GET"]),
            Mount("/console/assets", ConsoleAssets(directory=STATIC), name="console-assets")]
