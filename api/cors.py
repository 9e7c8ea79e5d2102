"""CORS for browser apps on other origins (`settings.api.cors_origins`), by Starlette's
`CORSMiddleware`: preflights are answered before routing, so without authentication.

Other origins get no cookies (credentials are bearer headers, or `?token=` on SSE; the console's
cookie session, api.cookies, is for its own origin only), so responses never say
`Access-Control-Allow-Credentials`: a page calls with `fetch(url, {headers:
{Authorization: ...}})` in the default credentials mode, and `new EventSource(url)` without
`withCredentials`.
"""

from __future__ import annotations

import re

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from core.settings import ApiSettings

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
REQUEST_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID", "traceparent", "tracestate")
# Response headers a page's script may read besides the CORS-safelisted ones (docs/api.md, "Headers").
EXPOSED_HEADERS = (
    "Location", "Idempotent-Replayed", "AgentOS-Deferred", "AgentOS-Deduplicated", "AgentOS-Wait",
    "AgentOS-Trace-Id", "RateLimit-Limit", "RateLimit-Remaining", "Retry-After", "WWW-Authenticate", "Allow",
)
MAX_AGE_S = 600


def _pattern_regex(pattern: str) -> str:
    """`http://localhost:*` -> any port (or none); `https://*.example.com` -> any subdomain."""
    regex = re.escape(pattern)
    if pattern.endswith(":*"):
        regex = regex[: -len(re.escape(":*"))] + r"(?::[0-9]{1,5})?"
    return regex.replace(re.escape("://*."), r"://(?:[a-z0-9-]+\.)+", 1)


def cors_middleware(settings: ApiSettings) -> Middleware | None:
    """The CORS middleware for the configured origins; None when none are (no CORS at all)."""
    origins = settings.cors_origins
    if not origins:
        return None
    exact = [o for o in origins if "*" not in o or o == "*"]
    patterns = [_pattern_regex(o) for o in origins if "*" in o and o != "*"]
    return Middleware(
        CORSMiddleware,
        allow_origins=exact,
        allow_origin_regex="|".join(f"(?:{p})" for p in patterns) or None,
        allow_methods=METHODS,
        allow_headers=REQUEST_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        allow_credentials=False,
        max_age=MAX_AGE_S,
    )
