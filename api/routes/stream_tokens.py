"""`POST /v1/stream-tokens`: a short-lived token that opens one run's or one session's event
stream as `?token=`, for browsers (an `EventSource` cannot send `Authorization`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.responses import Response

from api.endpoint import Call, endpoint, resource
from api.run_streams import run_not_found, session_not_found
from api.schemas.stream_tokens import StreamToken
from api.stream_access import stream_path
from core import ids
from core.store import runs, sessions
from core.stream_tokens import StreamKind, issue
from core.tenancy import tenant_tx


class StreamTokenCreate(BaseModel):
    """Exactly one of `run_id` and `session_id`: the stream the token opens."""

    model_config = ConfigDict(extra="forbid")
    run_id: str | None = Field(default=None, min_length=1, max_length=64)
    session_id: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _one_resource(self) -> StreamTokenCreate:
        if (self.run_id is None) == (self.session_id is None):
            raise ValueError("give exactly one of run_id and session_id")
        return self


async def _visible(call: Call[StreamTokenCreate], kind: StreamKind, resource_id: str) -> bool:
    """Whether the caller's org has this run or session (row-level security decides)."""
    if not ids.looks_like(kind, resource_id):
        return False
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        if kind == "run":
            return await runs.get(conn, resource_id) is not None
        return await sessions.get(conn, resource_id) is not None


@endpoint("A short-lived token that opens one run's or session's event stream as `?token=` (for EventSource).",
          body=StreamTokenCreate, response=StreamToken, errors=("NOT_FOUND",))
async def create_stream_token(call: Call[StreamTokenCreate]) -> Response:
    body, principal = call.body, call.principal
    kind: StreamKind = "run" if body.run_id is not None else "session"
    resource_id = body.run_id or body.session_id or ""
    if not await _visible(call, kind, resource_id):
        raise run_not_found(resource_id) if kind == "run" else session_not_found(resource_id)
    settings = call.settings
    token, grant = issue(settings.secrets, principal.org_id, kind, resource_id, settings.api.stream_token_ttl_s,
                         user_id=principal.user_id)
    base = (settings.api.public_url or str(call.request.base_url)).rstrip("/")
    url = f"{base}{stream_path(kind, resource_id)}?token={token}"
    return call.reply({"token": token, "expires_at": grant.expires_at, "url": url})


routes = [resource("/v1/stream-tokens", POST=create_stream_token)]
