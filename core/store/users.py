"""Users: the JWT subjects an org has seen. A subject's first request records it (and its
`auth.login` audit entry); API keys are not users."""

from __future__ import annotations

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from core.store import audit

FIRST_SEEN_SQL = """
INSERT INTO users (org_id, id, role) VALUES (agentos_current_org(), %s, %s)
ON CONFLICT (org_id, id) DO NOTHING RETURNING id
"""


async def seen(conn: AsyncConnection[DictRow], user_id: str, role: str, actor: str) -> bool:
    """Record the subject if it is new to the org, with its login in the audit log; True if it was."""
    if await (await conn.execute(FIRST_SEEN_SQL, (user_id, role))).fetchone() is None:
        return False
    await audit.record(conn, actor, "auth.login", "user", user_id, {"first_seen": True, "credential": "jwt",
                                                                    "role": role})
    return True
