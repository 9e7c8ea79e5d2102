"""API keys of the caller's org. Admins and owners manage them; a key never outranks its maker,
only an owner revokes an owner's key, and the org's last live owner key cannot be revoked (so
nobody, not even an owner by mistake, locks the org out of its own administration)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from api.endpoint import Call, endpoint, resource
from api.schemas.api_keys import ApiKey, ApiKeyCreated
from api.schemas.base import page_of
from api.state import state_of
from core.errors import ApiError
from core.pagination import page
from core.principal import Role
from core.store import api_keys, audit
from core.tenancy import tenant_tx


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    role: Role = "member"
    expires_at: AwareDatetime | None = None

    @field_validator("expires_at")
    @classmethod
    def _future(cls, value: datetime | None) -> datetime | None:
        if value is not None and value <= datetime.now(UTC):
            raise ValueError("must be in the future")
        return value


@endpoint("Create an API key; the key itself is in this response only.", role="admin",
          body=ApiKeyCreate, status=201, response=ApiKeyCreated)
async def create_key(call: Call[ApiKeyCreate]) -> Response:
    body, principal = call.body, call.principal
    if not principal.allows(body.role):
        raise ApiError("FORBIDDEN", f"You cannot create a key with role {body.role}; it is above your own.")
    async with tenant_tx(call.pool, principal.org_id) as conn:
        row = await api_keys.create(
            conn, name=body.name, role=body.role, created_by=principal.user_id, expires_at=body.expires_at
        )
        await audit.record(conn, principal.actor, "api_key.create", "api_key", row["id"],
                           {"name": body.name, "role": body.role})
    return call.reply(row)


@endpoint("List the org's API keys (never their secrets).", role="admin", paginated=True,
          response=page_of(ApiKey))
async def list_keys(call: Call[Any]) -> Response:
    cursor, limit = call.page_params()
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        rows = await api_keys.list_keys(conn, cursor, limit)
    data, next_cursor = page(rows, limit)
    return call.page(data, next_cursor)


@endpoint("Revoke an API key; it stops working at once.", role="admin", response=ApiKey, errors=("CONFLICT",))
async def revoke_key(call: Call[Any]) -> Response:
    key_id = call.path_id("key_id", "api_key")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        target = await api_keys.get(conn, key_id)
        if target is None:
            raise ApiError("NOT_FOUND", f"No API key with id {key_id!r} in this organisation.")
        if target["role"] == "owner":
            if not call.principal.allows("owner"):
                raise ApiError("FORBIDDEN", "Only an owner may revoke an owner's API key; "
                                            f"your credential is {call.principal.role}.")
            if await api_keys.lock_live_owner_keys(conn) == [key_id]:
                raise ApiError("CONFLICT", "This is the organisation's last active owner key: revoking it would "
                                           "leave nobody able to manage the organisation. Create another owner "
                                           "key first, then revoke this one.", details={"reason": "last_owner_key"})
        row = await api_keys.revoke(conn, key_id)
        assert row is not None
        await audit.record(conn, call.principal.actor, "api_key.revoke", "api_key", key_id)
    # Committed: no API process may keep trusting the key it cached (core.auth_cache).
    await state_of(call.request).auth.invalidate(key_id=key_id)
    return call.reply(row)


routes = [
    resource("/v1/api-keys", POST=create_key, GET=list_keys),
    resource("/v1/api-keys/{key_id}", DELETE=revoke_key),
]
