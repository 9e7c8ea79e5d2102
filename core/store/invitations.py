"""Invitations to an org: `aosi_<random>` tokens, single use, expiring; only their SHA-256 is
stored. At most one open invitation per email and org: inviting again (a resend) revokes the
open one, so its token stops working."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from core.ids import new_id
from core.store.logins import new_token, token_hash
from core.tenancy import AsyncPool, invitation_lookup_tx

TOKEN_PREFIX = "aosi_"
PUBLIC_COLUMNS = "id, email, role, invited_by, created_at, expires_at, accepted_at, accepted_by, revoked_at"

REVOKE_OPEN_SQL = f"""
UPDATE invitations SET revoked_at = now() WHERE email = %s AND accepted_at IS NULL AND revoked_at IS NULL
RETURNING {PUBLIC_COLUMNS}
"""
INSERT_SQL = f"""
INSERT INTO invitations (id, org_id, email, role, token_hash, invited_by, expires_at)
VALUES (%s, agentos_current_org(), %s, %s, %s, %s, now() + %s) RETURNING {PUBLIC_COLUMNS}
"""
LIST_SQL = f"""
SELECT {PUBLIC_COLUMNS} FROM invitations WHERE (%(cursor)s::text IS NULL OR id < %(cursor)s)
ORDER BY id DESC LIMIT %(limit)s
"""
GET_SQL = f"SELECT {PUBLIC_COLUMNS} FROM invitations WHERE id = %s"
REVOKE_SQL = f"""
UPDATE invitations SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s RETURNING {PUBLIC_COLUMNS}
"""
LOOKUP_SQL = """
SELECT id, org_id, email, role FROM invitations
WHERE token_hash = %s AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > now()
"""
# In tenant_tx of the invitation's org: claim it (once: a concurrent accept finds it taken).
ACCEPT_SQL = """
UPDATE invitations SET accepted_at = now(), accepted_by = %s
WHERE id = %s AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > now() RETURNING id
"""


async def create(conn: AsyncConnection[DictRow], *, email: str, role: str, invited_by: str | None,
                 lifetime: timedelta) -> tuple[dict[str, Any], str, bool]:
    """(the invitation, its token, whether it replaced an open one for the same email)."""
    replaced = await (await conn.execute(REVOKE_OPEN_SQL, (email,))).fetchone() is not None
    token = new_token(TOKEN_PREFIX)
    row = await (await conn.execute(
        INSERT_SQL, (new_id("invitation"), email, role, token_hash(token), invited_by, lifetime))).fetchone()
    assert row is not None
    return row, token, replaced


async def list_invitations(conn: AsyncConnection[DictRow], cursor: str | None, limit: int) -> list[dict[str, Any]]:
    return list(await (await conn.execute(LIST_SQL, {"cursor": cursor, "limit": limit + 1})).fetchall())


async def get(conn: AsyncConnection[DictRow], invitation_id: str) -> dict[str, Any] | None:
    return await (await conn.execute(GET_SQL, (invitation_id,))).fetchone()


async def revoke(conn: AsyncConnection[DictRow], invitation_id: str) -> dict[str, Any] | None:
    return await (await conn.execute(REVOKE_SQL, (invitation_id,))).fetchone()


async def lookup(pool: AsyncPool, token: str) -> dict[str, Any] | None:
    """The open invitation this token is for (any org), or None."""
    async with invitation_lookup_tx(pool, token_hash(token)) as conn:
        return await (await conn.execute(LOOKUP_SQL, (token_hash(token),))).fetchone()


async def accept(conn: AsyncConnection[DictRow], invitation_id: str, user_id: str) -> bool:
    return await (await conn.execute(ACCEPT_SQL, (user_id, invitation_id))).fetchone() is not None
