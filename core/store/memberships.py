"""Memberships: a user's role in one org (tenant rows, under row-level security). Role rules
live in `api.routes.members`; this module holds the queries, the owner count under lock, and
`remove`, which revokes what the member held in the org at once."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from core.store import api_keys

MEMBER_COLUMNS = """m.user_id, m.role, m.created_at, u.email, u.name, u.email_verified"""
LIST_SQL = f"""
SELECT {MEMBER_COLUMNS} FROM memberships m JOIN users u ON u.id = m.user_id
WHERE (%(cursor)s::text IS NULL OR m.user_id > %(cursor)s) ORDER BY m.user_id LIMIT %(limit)s
"""
GET_SQL = f"SELECT {MEMBER_COLUMNS} FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.user_id = %s"
ADD_SQL = """
INSERT INTO memberships (org_id, user_id, role) VALUES (agentos_current_org(), %s, %s)
ON CONFLICT (org_id, user_id) DO NOTHING RETURNING user_id
"""
SET_ROLE_SQL = "UPDATE memberships SET role = %s WHERE user_id = %s"
DELETE_SQL = "DELETE FROM memberships WHERE user_id = %s RETURNING user_id"
# The org's owners, locked in id order so two concurrent demotions queue and each sees the other.
LOCK_OWNERS_SQL = "SELECT user_id FROM memberships WHERE role = 'owner' ORDER BY user_id FOR UPDATE"
MEMBER_KEYS_SQL = "SELECT id FROM api_keys WHERE created_by = %s AND revoked_at IS NULL"
REVOKE_SESSIONS_SQL = """
UPDATE login_sessions SET revoked_at = now(), revoked_reason = %s
WHERE user_id = %s AND org_id = agentos_current_org() AND revoked_at IS NULL
"""
# Inside core.tenancy.user_memberships_tx: the user's memberships in every org.
MY_ORGS_SQL = """
SELECT m.org_id, o.name AS org_name, m.role, m.created_at FROM memberships m JOIN orgs o ON o.id = m.org_id
WHERE m.user_id = %s ORDER BY m.created_at, m.org_id
"""
MY_ROLE_SQL = "SELECT role FROM memberships WHERE user_id = %s AND org_id = %s"


async def list_members(conn: AsyncConnection[DictRow], cursor: str | None, limit: int) -> list[dict[str, Any]]:
    return list(await (await conn.execute(LIST_SQL, {"cursor": cursor, "limit": limit + 1})).fetchall())


async def get(conn: AsyncConnection[DictRow], user_id: str) -> dict[str, Any] | None:
    return await (await conn.execute(GET_SQL, (user_id,))).fetchone()


async def add(conn: AsyncConnection[DictRow], user_id: str, role: str) -> bool:
    """Make the user a member of the current org; False if it already was (its role unchanged)."""
    return await (await conn.execute(ADD_SQL, (user_id, role))).fetchone() is not None


async def set_role(conn: AsyncConnection[DictRow], user_id: str, role: str) -> None:
    await conn.execute(SET_ROLE_SQL, (role, user_id))


async def lock_owners(conn: AsyncConnection[DictRow]) -> list[str]:
    return [r["user_id"] for r in await (await conn.execute(LOCK_OWNERS_SQL)).fetchall()]


async def remove(conn: AsyncConnection[DictRow], user_id: str) -> list[str]:
    """Remove the member from the current org: its sign-in sessions there end and the API keys it
    made there are revoked (through `api_keys.revoke`, the one revocation path), in this
    transaction. Returns the revoked key ids."""
    await conn.execute(DELETE_SQL, (user_id,))
    await conn.execute(REVOKE_SESSIONS_SQL, ("removed", user_id))
    revoked = []
    for row in await (await conn.execute(MEMBER_KEYS_SQL, (user_id,))).fetchall():
        await api_keys.revoke(conn, row["id"])
        revoked.append(str(row["id"]))
    return revoked


async def orgs_of(conn: AsyncConnection[DictRow], user_id: str) -> list[dict[str, Any]]:
    """Inside `user_memberships_tx`: the orgs the user belongs to, oldest membership first."""
    return list(await (await conn.execute(MY_ORGS_SQL, (user_id,))).fetchall())


async def role_in(conn: AsyncConnection[DictRow], user_id: str, org_id: str) -> str | None:
    """Inside `user_memberships_tx`: the user's role in that org, or None."""
    row = await (await conn.execute(MY_ROLE_SQL, (user_id, org_id))).fetchone()
    return None if row is None else str(row["role"])
