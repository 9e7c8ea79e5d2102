"""Tool calls a run made (or proposed): what was called, with which arguments, and the outcome."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

COLUMNS = "id, run_id, session_id, agent_id, name, args, sensitive, status, output, error, created_at, finished_at"

INSERT_SQL = f"""
INSERT INTO tool_calls (id, org_id, run_id, session_id, agent_id, name, args, sensitive, status)
VALUES (%s, agentos_current_org(), %s, %s, %s, %s, %s, %s, %s) RETURNING {COLUMNS}
"""
FINISH_SQL = f"""
UPDATE tool_calls SET status = %s, output = %s, error = %s, finished_at = now()
WHERE id = %s RETURNING {COLUMNS}
"""
LIST_FOR_RUN_SQL = f"SELECT {COLUMNS} FROM tool_calls WHERE run_id = %s ORDER BY id"


async def start(
    conn: AsyncConnection[DictRow],
    tool_call_id: str,
    *,
    run_id: str,
    session_id: str,
    agent_id: str,
    name: str,
    args: dict[str, Any],
    sensitive: bool,
    status: str = "running",
) -> dict[str, Any]:
    row = await (await conn.execute(
        INSERT_SQL, (tool_call_id, run_id, session_id, agent_id, name, Jsonb(args), sensitive, status)
    )).fetchone()
    assert row is not None
    return row


async def finish(
    conn: AsyncConnection[DictRow], tool_call_id: str, *, output: Any = None, error: str | None = None
) -> dict[str, Any] | None:
    status = "failed" if error is not None else "succeeded"
    return await (await conn.execute(FINISH_SQL, (
        status, Jsonb(output) if error is None else None, Jsonb({"message": error}) if error is not None else None,
        tool_call_id,
    ))).fetchone()


async def list_for_run(conn: AsyncConnection[DictRow], run_id: str) -> list[dict[str, Any]]:
    return list(await (await conn.execute(LIST_FOR_RUN_SQL, (run_id,))).fetchall())


LIST_SQL = f"""
SELECT {COLUMNS} FROM tool_calls
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(cursor)s::text IS NULL OR id < %(cursor)s)
ORDER BY id DESC LIMIT %(limit)s
"""
STATUSES = ("pending", "approved", "rejected", "running", "succeeded", "failed")


async def list_calls(
    conn: AsyncConnection[DictRow], status: str | None, cursor: str | None, limit: int
) -> list[dict[str, Any]]:
    """The org's tool calls, newest first, optionally of one status."""
    params = {"status": status, "cursor": cursor, "limit": limit + 1}
    return list(await (await conn.execute(LIST_SQL, params)).fetchall())
