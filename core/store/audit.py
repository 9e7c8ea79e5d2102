"""Audit log: who did what to which resource."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from core.ids import new_id

INSERT_AUDIT_SQL = """
INSERT INTO audit_logs (id, org_id, actor, action, target_type, target_id, details, trace_id)
VALUES (%s, agentos_current_org(), %s, %s, %s, %s, %s, %s)
"""


async def record(
    conn: AsyncConnection[DictRow],
    actor: str,
    action: str,
    target_type: str,
    target_id: str | None,
    details: dict[str, Any] | None = None,
    trace_id: str | None = None,
) -> None:
    await conn.execute(
        INSERT_AUDIT_SQL,
        (new_id("audit"), actor, action, target_type, target_id, Jsonb(details or {}), trace_id),
    )
