"""People: global users (email, name, verified flag, an argon2 password hash) and their first
sight as JWT subjects. A user belongs to orgs through `core.store.memberships`; API keys are not
users. The password hash never leaves this module's callers in `core.passwords`/sign-in code:
`PUBLIC_COLUMNS` is what any response may show."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from core.ids import new_id
from core.store import audit

PUBLIC_COLUMNS = "id, email, name, email_verified, created_at"

ENSURE_USER_SQL = "INSERT INTO users (id) VALUES (%s) ON CONFLICT (id) DO NOTHING"
FIRST_SEEN_SQL = """
INSERT INTO memberships (org_id, user_id, role) VALUES (agentos_current_org(), %s, %s)
ON CONFLICT (org_id, user_id) DO NOTHING RETURNING user_id
"""
GET_USER_SQL = f"SELECT {PUBLIC_COLUMNS} FROM users WHERE id = %s"
BY_EMAIL_SQL = f"SELECT {PUBLIC_COLUMNS}, password_hash FROM users WHERE email = %s"
INSERT_USER_SQL = f"""
INSERT INTO users (id, email, name, email_verified, password_hash) VALUES (%s, %s, %s, %s, %s)
RETURNING {PUBLIC_COLUMNS}
"""
SET_PASSWORD_SQL = "UPDATE users SET password_hash = %s, updated_at = now() WHERE id = %s"
VERIFY_EMAIL_SQL = "UPDATE users SET email_verified = true, updated_at = now() WHERE id = %s"
# Whoever proves the mailbox first owns an account made by open registration: the password its
# registrant chose (maybe not the mailbox's owner) goes, and so do its sign-ins.
CLAIM_UNVERIFIED_SQL = """
UPDATE users SET email_verified = true, password_hash = %s, updated_at = now()
WHERE id = %s AND NOT email_verified RETURNING id
"""
END_SESSIONS_SQL = """
UPDATE login_sessions SET revoked_at = now(), revoked_reason = 'email_claimed' WHERE user_id = %s AND revoked_at IS NULL
"""


def normal_email(email: str) -> str:
    return email.strip().lower()


async def seen(conn: AsyncConnection[DictRow], user_id: str, role: str, actor: str) -> bool:
    """Record an external JWT subject as a user and a member of the current org if it is new to
    the org, with its login in the audit log; True if it was new."""
    await conn.execute(ENSURE_USER_SQL, (user_id,))
    if await (await conn.execute(FIRST_SEEN_SQL, (user_id, role))).fetchone() is None:
        return False
    await audit.record(conn, actor, "auth.login", "user", user_id, {"first_seen": True, "credential": "jwt",
                                                                    "role": role})
    return True


async def get(conn: AsyncConnection[DictRow], user_id: str) -> dict[str, Any] | None:
    return await (await conn.execute(GET_USER_SQL, (user_id,))).fetchone()


async def by_email(conn: AsyncConnection[DictRow], email: str) -> dict[str, Any] | None:
    """The user with this email, its password hash included (for sign-in only)."""
    return await (await conn.execute(BY_EMAIL_SQL, (normal_email(email),))).fetchone()


async def create(conn: AsyncConnection[DictRow], *, email: str, name: str | None, verified: bool,
                 password_hash: str | None) -> dict[str, Any]:
    row = await (await conn.execute(
        INSERT_USER_SQL, (new_id("user"), normal_email(email), name, verified, password_hash))).fetchone()
    assert row is not None
    return row


async def set_password(conn: AsyncConnection[DictRow], user_id: str, password_hash: str) -> None:
    await conn.execute(SET_PASSWORD_SQL, (password_hash, user_id))


async def mark_verified(conn: AsyncConnection[DictRow], user_id: str) -> None:
    await conn.execute(VERIFY_EMAIL_SQL, (user_id,))


async def claim_unverified(conn: AsyncConnection[DictRow], user_id: str, password_hash: str | None) -> bool:
    """The mailbox's owner proved it (an invitation, a provider's verified email) for an account
    whose email was never verified: verify it, set `password_hash` in place of the registrant's
    and end the account's sign-ins. False (nothing changed) if the email was verified already."""
    if await (await conn.execute(CLAIM_UNVERIFIED_SQL, (password_hash, user_id))).fetchone() is None:
        return False
    await conn.execute(END_SESSIONS_SQL, (user_id,))
    return True
