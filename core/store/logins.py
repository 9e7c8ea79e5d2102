"""Sign-in sessions and their rotating refresh tokens, and password reset tokens (global rows,
like users). Tokens are random and only their SHA-256 is stored; each refresh token works once:
using it again means it leaked, so the whole session (its family) is revoked."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from core.ids import new_id

REFRESH_PREFIX = "aosr_"
RESET_PREFIX = "aosp_"
VERIFY_PREFIX = "aosv_"

INSERT_SESSION_SQL = """
INSERT INTO login_sessions (id, user_id, org_id, method, expires_at) VALUES (%s, %s, %s, %s, now() + %s)
"""
INSERT_REFRESH_SQL = "INSERT INTO refresh_tokens (token_hash, session_id) VALUES (%s, %s)"
# The token's row and its session, locked: two refreshes racing with one token are one reuse.
USE_REFRESH_SQL = """
SELECT r.used_at, s.id AS session_id, s.user_id, s.org_id, s.revoked_at, s.expires_at <= now() AS expired
FROM refresh_tokens r JOIN login_sessions s ON s.id = r.session_id WHERE r.token_hash = %s FOR UPDATE
"""
MARK_USED_SQL = "UPDATE refresh_tokens SET used_at = now() WHERE token_hash = %s"
REVOKE_SQL = """
UPDATE login_sessions SET revoked_at = now(), revoked_reason = %s WHERE id = %s AND revoked_at IS NULL
"""
LIVE_SQL = "SELECT user_id, org_id FROM login_sessions WHERE id = %s AND revoked_at IS NULL AND expires_at > now()"
INSERT_RESET_SQL = """
INSERT INTO password_resets (token_hash, user_id, expires_at, purpose) VALUES (%s, %s, now() + %s, %s)
"""
USE_RESET_SQL = """
UPDATE password_resets SET used_at = now()
WHERE token_hash = %s AND purpose = %s AND used_at IS NULL AND expires_at > now() RETURNING user_id
"""
REVOKE_USER_SESSIONS_SQL = """
UPDATE login_sessions SET revoked_at = now(), revoked_reason = %s WHERE user_id = %s AND revoked_at IS NULL
"""


class RefreshReused(Exception):
    """A refresh token was presented again after it was used: its session is now revoked."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


async def start(conn: AsyncConnection[DictRow], *, user_id: str, org_id: str, method: str,
                lifetime: timedelta) -> tuple[str, str]:
    """A new session of the user in the org; returns (session id, its first refresh token)."""
    session_id = new_id("login_session")
    await conn.execute(INSERT_SESSION_SQL, (session_id, user_id, org_id, method, lifetime))
    refresh = new_token(REFRESH_PREFIX)
    await conn.execute(INSERT_REFRESH_SQL, (token_hash(refresh), session_id))
    return session_id, refresh


async def rotate(conn: AsyncConnection[DictRow], refresh: str) -> tuple[dict[str, Any], str] | None:
    """Use a refresh token: (its live session, the next refresh token), or None when it names no
    live session. Raises RefreshReused (after revoking the session) if it was used before; the
    caller must commit that revocation."""
    row = await (await conn.execute(USE_REFRESH_SQL, (token_hash(refresh),))).fetchone()
    if row is None or row["revoked_at"] is not None or row["expired"]:
        return None
    if row["used_at"] is not None:
        await conn.execute(REVOKE_SQL, ("refresh_token_reused", row["session_id"]))
        raise RefreshReused(row["session_id"])
    await conn.execute(MARK_USED_SQL, (token_hash(refresh),))
    nxt = new_token(REFRESH_PREFIX)
    await conn.execute(INSERT_REFRESH_SQL, (token_hash(nxt), row["session_id"]))
    return row, nxt


async def revoke(conn: AsyncConnection[DictRow], session_id: str, reason: str) -> None:
    await conn.execute(REVOKE_SQL, (reason, session_id))


async def revoke_user(conn: AsyncConnection[DictRow], user_id: str, reason: str) -> None:
    """End every session of the user, in every org (a password reset)."""
    await conn.execute(REVOKE_USER_SESSIONS_SQL, (reason, user_id))


async def live(conn: AsyncConnection[DictRow], session_id: str) -> dict[str, Any] | None:
    return await (await conn.execute(LIVE_SQL, (session_id,))).fetchone()


MailedPurpose = Literal["reset", "verify"]


async def new_reset(conn: AsyncConnection[DictRow], user_id: str, lifetime: timedelta,
                    purpose: MailedPurpose = "reset") -> str:
    """A single-use token to mail: a password reset (`aosp_…`) or an email verification (`aosv_…`)."""
    token = new_token(RESET_PREFIX if purpose == "reset" else VERIFY_PREFIX)
    await conn.execute(INSERT_RESET_SQL, (token_hash(token), user_id, lifetime, purpose))
    return token


async def use_reset(conn: AsyncConnection[DictRow], token: str, purpose: MailedPurpose = "reset") -> str | None:
    """The user a live, unused token of this purpose is for (and the token is used up), or None."""
    row = await (await conn.execute(USE_RESET_SQL, (token_hash(token), purpose))).fetchone()
    return None if row is None else str(row["user_id"])


# Inside tenant_tx of the token's org: the member's current role while the session is live.
SESSION_ROLE_SQL = """
SELECT m.role FROM login_sessions s JOIN memberships m ON m.user_id = s.user_id AND m.org_id = s.org_id
WHERE s.id = %s AND s.user_id = %s AND s.org_id = agentos_current_org()
  AND s.revoked_at IS NULL AND s.expires_at > now()
"""


async def session_role(conn: AsyncConnection[DictRow], session_id: str, user_id: str) -> str | None:
    """The role of a live session's user in the current org, or None (revoked, expired, removed)."""
    row = await (await conn.execute(SESSION_ROLE_SQL, (session_id, user_id))).fetchone()
    return None if row is None else str(row["role"])
