"""The console's cookie session: what a sign-in with `"cookie": true` sets, and the CSRF check every
write signed in by cookie passes (docs/api.md, "Cookie sessions").

Three cookies, all `SameSite=Strict` and `Secure` outside development and test:

- `agentos_access`: the access token (the same short-lived JWT a bearer gets), `HttpOnly`, path `/`,
  living as long as the token. Scripts never see it, so an injected script cannot carry it off.
- `agentos_refresh`: the rotating refresh token, `HttpOnly`, sent only to `POST /v1/auth/refresh`.
- `agentos_csrf`: readable by the page's script, which echoes it in `X-CSRF-Token` on every write.
  It is an HMAC of the sign-in's id under the JWT secret, so a cookie planted by a sibling
  subdomain or left from another sign-in does not pass (the signed double-submit cookie).

A write (any method but GET, HEAD, OPTIONS) authenticated by the access cookie must carry that
header, equal to both the cookie and the sign-in's HMAC, and, if the browser sent `Origin`, come
from this server's own origin. A request with `Authorization` is judged by that header alone and
never by cookies, so API keys and bearer tokens are unaffected."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from core.errors import ApiError
from core.settings import Settings

ACCESS_COOKIE = "agentos_access"
REFRESH_COOKIE = "agentos_refresh"
CSRF_COOKIE = "agentos_csrf"
CSRF_HEADER = "X-CSRF-Token"
REFRESH_PATH = "/v1/auth/refresh"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(secret: str, session_id: str) -> str:
    """The CSRF token of a sign-in: bound to it, unguessable without the server's secret."""
    return hmac.new(secret.encode(), f"agentos-csrf:{session_id}".encode(), hashlib.sha256).hexdigest()


def by_cookie(request: Request) -> bool:
    """Whether this request is (to be) authenticated by the access cookie: it has one and no
    `Authorization` header, which always wins."""
    return "authorization" not in request.headers and ACCESS_COOKIE in request.cookies


def _secure(settings: Settings) -> bool:
    chosen = settings.people.cookie_secure
    return settings.env == "production" if chosen is None else chosen


def set_session(response: Response, settings: Settings, tokens: dict[str, Any], csrf: str) -> None:
    """Put a sign-in's tokens in the cookies (the body then carries none)."""
    secure = _secure(settings)
    response.set_cookie(ACCESS_COOKIE, tokens["access_token"], max_age=int(tokens["expires_in"]), path="/",
                        secure=secure, httponly=True, samesite="strict")
    response.set_cookie(REFRESH_COOKIE, tokens["refresh_token"], max_age=settings.people.session_ttl_s,
                        path=REFRESH_PATH, secure=secure, httponly=True, samesite="strict")
    response.set_cookie(CSRF_COOKIE, csrf, max_age=settings.people.session_ttl_s, path="/", secure=secure,
                        httponly=False, samesite="strict")


def clear_session(response: Response, settings: Settings) -> None:
    secure = _secure(settings)
    response.delete_cookie(ACCESS_COOKIE, path="/", secure=secure, httponly=True, samesite="strict")
    response.delete_cookie(REFRESH_COOKIE, path=REFRESH_PATH, secure=secure, httponly=True, samesite="strict")
    response.delete_cookie(CSRF_COOKIE, path="/", secure=secure, httponly=False, samesite="strict")


def _refused(why: str) -> ApiError:
    return ApiError("CSRF_FAILED", f"{why} A request signed in by cookie must send the {CSRF_HEADER} header with "
                                   f"the {CSRF_COOKIE} cookie's value, from this server's own pages.")


def check_origin_and_header(request: Request) -> str:
    """The first half of the check, before the sign-in is known: same origin, and the header
    equals the cookie. The header's value."""
    sent_origin = request.headers.get("origin")
    if sent_origin is not None and urlsplit(sent_origin).netloc != request.headers.get("host", ""):
        raise _refused(f"The request comes from another origin ({sent_origin}).")
    header = request.headers.get(CSRF_HEADER.lower(), "")
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not header or not hmac.compare_digest(header.encode(), cookie.encode()):
        raise _refused(f"The {CSRF_HEADER} header is missing or does not match the {CSRF_COOKIE} cookie.")
    return header


def check_csrf(request: Request, secret: str, session_id: str) -> None:
    """Refuse (403 CSRF_FAILED) a cookie-authenticated write that fails the check."""
    header = check_origin_and_header(request)
    if not hmac.compare_digest(header.encode(), csrf_token(secret, session_id).encode()):
        raise _refused(f"The {CSRF_HEADER} header belongs to another sign-in.")
