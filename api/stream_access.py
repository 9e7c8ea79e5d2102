"""What a stream token (`core.stream_tokens`) opens: `GET` of its own resource's event stream,
nothing else. `Authenticator` hands a request carrying `?token=` here; the caller becomes a
read-only principal of the token's org, so the SSE handler still reads under that org's
row-level security."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from core.errors import ApiError
from core.principal import Principal
from core.settings import SecretsSettings
from core.stream_tokens import StreamKind, StreamTokenError, verify

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="agentos", error="invalid_token"'}
# The SSE route of each kind of resource, and its path parameter (api/routes/events.py).
STREAM_ROUTES: dict[StreamKind, tuple[str, str]] = {
    "run": ("/v1/runs/{run_id}/events", "run_id"),
    "session": ("/v1/sessions/{session_id}/events", "session_id"),
}
_READ_METHODS = ("GET", "HEAD")


def stream_path(kind: StreamKind, resource_id: str) -> str:
    template, param = STREAM_ROUTES[kind]
    return template.replace("{" + param + "}", resource_id)


def refused(code: str, message: str) -> ApiError:
    return ApiError(code, message, headers=_CHALLENGE)


def stream_principal(request: Request, token: str, keys: SecretsSettings) -> Principal:
    """The principal a `?token=` grants on this request, or 401 STREAM_TOKEN_INVALID / _EXPIRED."""
    try:
        grant = verify(keys, token)
    except StreamTokenError as exc:
        raise refused(exc.code, exc.message) from None
    template, param = STREAM_ROUTES[grant.kind]
    route = request.scope.get("route")
    on_its_stream = (isinstance(route, Route) and route.path == template and request.method in _READ_METHODS
                     and request.path_params.get(param) == grant.resource_id)
    if not on_its_stream:
        path = stream_path(grant.kind, grant.resource_id)
        raise refused("STREAM_TOKEN_INVALID", f"This stream token opens only GET {path}; use an API key or JWT in "
                      "the Authorization header for anything else.")
    return Principal(org_id=grant.org_id, user_id=grant.user_id, role="viewer", credential="stream_token",
                     credential_id=grant.token_id)
