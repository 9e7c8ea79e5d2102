"""What `GET /v1/me` adds for a user: who they are and every org they belong to."""

from __future__ import annotations

from typing import Any

from core.store import memberships, users
from core.tenancy import AsyncPool, user_memberships_tx


async def whoami(pool: AsyncPool, user_id: str | None) -> dict[str, Any]:
    if user_id is None:
        return {"user": None, "orgs": []}
    async with user_memberships_tx(pool, user_id) as conn:
        return {"user": await users.get(conn, user_id), "orgs": await memberships.orgs_of(conn, user_id)}
