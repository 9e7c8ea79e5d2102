"""Members of the caller's org. Role rules: nobody acts on a member who outranks them, nobody
grants a role above their own, and the org's last owner can be neither demoted nor removed.
Removing a member ends their sign-ins to the org and revokes the API keys they made there, in
the same transaction, so their next request is 401."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

from api.endpoint import Call, endpoint, resource, validation_failed
from api.schemas.base import page_of
from api.schemas.people import Member
from api.state import state_of
from core.errors import ApiError
from core.pagination import DEFAULT_LIMIT, MAX_LIMIT, encode_cursor
from core.principal import Principal, Role
from core.store import audit, memberships
from core.tenancy import tenant_tx

_MAX_USER_ID = 256


class MemberPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role


def _user_id(call: Call[Any]) -> str:
    value = str(call.request.path_params["user_id"])
    if not 0 < len(value) <= _MAX_USER_ID:
        raise ApiError("NOT_FOUND", f"No member with id {value!r} in this organisation.")
    return value


def _check_may_act(principal: Principal, target: dict[str, Any]) -> None:
    if not principal.allows(target["role"]):
        raise ApiError("FORBIDDEN", f"This member is {target['role']}, above your role ({principal.role}).")


def _last_owner(action: str) -> ApiError:
    return ApiError("CONFLICT", f"This is the organisation's last owner: {action} would leave nobody owning it. "
                                "Make another member owner first.", details={"reason": "last_owner"})


@endpoint("List the org's members with their roles.", paginated=True, response=page_of(Member))
async def list_members(call: Call[Any]) -> Response:
    # Members are ordered by user id, and an external JWT subject's id is any string: the cursor
    # is that string (base64), not one of our time-ordered ids, so it is read here.
    limit = _limit(call.request.query_params.get("limit"))
    cursor = _member_cursor(call.request.query_params.get("cursor"))
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        rows = await memberships.list_members(conn, cursor, limit)
    data = rows[:limit]
    next_cursor = encode_cursor(str(data[-1]["user_id"])) if len(rows) > limit and data else None
    return call.page(data, next_cursor)


def _limit(raw: str | None) -> int:
    try:
        limit = DEFAULT_LIMIT if raw is None else int(raw)
    except ValueError:
        limit = -1
    if not 1 <= limit <= MAX_LIMIT:
        raise validation_failed([{"field": "limit", "message": f"must be an integer from 1 to {MAX_LIMIT}"}])
    return limit


def _member_cursor(raw: str | None) -> str | None:
    if not raw:
        return None
    try:
        value = base64.urlsafe_b64decode((raw + "=" * (-len(raw) % 4)).encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        value = ""
    if not 0 < len(value) <= _MAX_USER_ID:
        raise validation_failed([{"field": "cursor", "message": "is not a cursor this API returned"}])
    return value


@endpoint("Change a member's role; never above your own, and the last owner stays owner.", role="admin",
          body=MemberPatch, response=Member, errors=("CONFLICT",))
async def update_member(call: Call[MemberPatch]) -> Response:
    user_id, role, principal = _user_id(call), call.body.role, call.principal
    if not principal.allows(role):
        raise ApiError("FORBIDDEN", f"You cannot grant the role {role}; it is above your own ({principal.role}).")
    async with tenant_tx(call.pool, principal.org_id) as conn:
        owners = await memberships.lock_owners(conn)
        target = await memberships.get(conn, user_id)
        if target is None:
            raise ApiError("NOT_FOUND", f"No member with id {user_id!r} in this organisation.")
        _check_may_act(principal, target)
        if target["role"] == "owner" and role != "owner" and owners == [user_id]:
            raise _last_owner("demoting them")
        await memberships.set_role(conn, user_id, role)
        await audit.record(conn, principal.actor, "member.update", "user", user_id,
                           {"role": role, "previous_role": target["role"]})
        row = await memberships.get(conn, user_id)
    return call.reply(row)


@endpoint("Remove a member: their sign-ins to this org end and the API keys they made here are revoked, at once.",
          role="admin", response=Member, errors=("CONFLICT",))
async def remove_member(call: Call[Any]) -> Response:
    user_id, principal = _user_id(call), call.principal
    async with tenant_tx(call.pool, principal.org_id) as conn:
        owners = await memberships.lock_owners(conn)
        target = await memberships.get(conn, user_id)
        if target is None:
            raise ApiError("NOT_FOUND", f"No member with id {user_id!r} in this organisation.")
        _check_may_act(principal, target)
        if owners == [user_id]:
            raise _last_owner("removing them")
        revoked = await memberships.remove(conn, user_id)
        await audit.record(conn, principal.actor, "member.remove", "user", user_id,
                           {"role": target["role"], "revoked_api_keys": revoked})
    # After the commit: no API process keeps trusting a cached key of theirs (core.auth_cache).
    await state_of(call.request).auth.invalidate(org_id=principal.org_id, user_id=user_id)
    return call.reply(target)


routes = [
    resource("/v1/members", GET=list_members),
    resource("/v1/members/{user_id}", PATCH=update_member, DELETE=remove_member),
]
