"""Tool calls a run made (or proposed): what was called, with which arguments, and the outcome."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, TypedDict, cast

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb


class ToolCallStatus(StrEnum):
    PENDING = "pending"  # waiting for a human (a sensitive call, or a plan)
    APPROVED = "approved"
    REJECTED = "rejected"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


STATUSES = tuple(ToolCallStatus)


class ToolCallRow(TypedDict):
    id: str
    run_id: str
    session_id: str
    agent_id: str
    kind: str  # "tool" or "plan"
    name: str
    args: dict[str, Any]
    proposed_args: dict[str, Any] | None
    sensitive: bool
    status: ToolCallStatus
    output: Any
    error: dict[str, Any] | None
    decided_by: str | None
    decided_at: datetime | None
    decision_reason: str | None
    call_key: str | None
    created_at: datetime
    finished_at: datetime | None


COLUMNS = (
    "id, run_id, session_id, agent_id, kind, name, args, proposed_args, sensitive, status, output, error, "
    "decided_by, decided_at, decision_reason, call_key, created_at, finished_at"
)

INSERT_SQL = f"""
INSERT INTO tool_calls (id, org_id, run_id, session_id, agent_id, name, args, sensitive, status, call_key, kind)
VALUES (%s, agentos_current_org(), %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {COLUMNS}
"""
GET_SQL = f"SELECT {COLUMNS} FROM tool_calls WHERE id = %s"
GET_FOR_UPDATE_SQL = GET_SQL + " FOR UPDATE"
BY_KEY_SQL = f"SELECT {COLUMNS} FROM tool_calls WHERE run_id = %s AND call_key = %s"
SET_STATUS_SQL = f"UPDATE tool_calls SET status = %s WHERE id = %s RETURNING {COLUMNS}"
DECIDE_SQL = f"""
UPDATE tool_calls SET status = %(status)s, args = coalesce(%(args)s, args),
    proposed_args = CASE WHEN %(args)s::jsonb IS NOT NULL AND %(args)s::jsonb <> args THEN args ELSE NULL END,
    decided_by = %(by)s, decided_at = now(), decision_reason = %(reason)s
WHERE id = %(id)s AND status = 'pending' RETURNING {COLUMNS}
"""
PENDING_IN_RUN_SQL = "SELECT count(*) AS n FROM tool_calls WHERE run_id = %s AND status = 'pending'"

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
    status: ToolCallStatus = ToolCallStatus.RUNNING,
    call_key: str | None = None,
    kind: str = "tool",
) -> ToolCallRow:
    row = await (await conn.execute(
        INSERT_SQL, (tool_call_id, run_id, session_id, agent_id, name, Jsonb(args), sensitive, status, call_key, kind)
    )).fetchone()
    assert row is not None
    return cast(ToolCallRow, row)


async def finish(
    conn: AsyncConnection[DictRow], tool_call_id: str, *, output: Any = None, error: str | None = None
) -> ToolCallRow | None:
    status = ToolCallStatus.FAILED if error is not None else ToolCallStatus.SUCCEEDED
    return cast(ToolCallRow | None, await (await conn.execute(FINISH_SQL, (
        status, Jsonb(output) if error is None else None, Jsonb({"message": error}) if error is not None else None,
        tool_call_id,
    ))).fetchone())


async def list_for_run(conn: AsyncConnection[DictRow], run_id: str) -> list[ToolCallRow]:
    return cast(list[ToolCallRow], await (await conn.execute(LIST_FOR_RUN_SQL, (run_id,))).fetchall())


LIST_SQL = f"""
SELECT {COLUMNS} FROM tool_calls
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(cursor)s::text IS NULL OR id < %(cursor)s)
ORDER BY id DESC LIMIT %(limit)s
"""


async def list_calls(
    conn: AsyncConnection[DictRow], status: ToolCallStatus | None, cursor: str | None, limit: int
) -> list[ToolCallRow]:
    """The org's tool calls, newest first, optionally of one status."""
    params = {"status": status, "cursor": cursor, "limit": limit + 1}
    return cast(list[ToolCallRow], await (await conn.execute(LIST_SQL, params)).fetchall())


async def get(conn: AsyncConnection[DictRow], tool_call_id: str, *, for_update: bool = False) -> ToolCallRow | None:
    sql = GET_FOR_UPDATE_SQL if for_update else GET_SQL
    return cast(ToolCallRow | None, await (await conn.execute(sql, (tool_call_id,))).fetchone())


async def by_key(conn: AsyncConnection[DictRow], run_id: str, call_key: str) -> ToolCallRow | None:
    """The call a run already made under this key (a replayed step finds it here)."""
    return cast(ToolCallRow | None, await (await conn.execute(BY_KEY_SQL, (run_id, call_key))).fetchone())


async def set_status(conn: AsyncConnection[DictRow], tool_call_id: str, status: ToolCallStatus) -> ToolCallRow | None:
    return cast(ToolCallRow | None, await (await conn.execute(SET_STATUS_SQL, (status, tool_call_id))).fetchone())


async def decide(
    conn: AsyncConnection[DictRow], tool_call_id: str, *, approve: bool, by: str, args: dict[str, Any] | None = None,
    reason: str | None = None,
) -> ToolCallRow | None:
    """Approve (optionally with edited arguments) or reject a pending call; None if it is not pending."""
    return cast(ToolCallRow | None, await (await conn.execute(DECIDE_SQL, {
        "status": ToolCallStatus.APPROVED if approve else ToolCallStatus.REJECTED,
        "args": Jsonb(args) if args is not None else None, "by": by, "reason": reason, "id": tool_call_id,
    })).fetchone())


async def pending_in_run(conn: AsyncConnection[DictRow], run_id: str) -> int:
    row = await (await conn.execute(PENDING_IN_RUN_SQL, (run_id,))).fetchone()
    return int(row["n"]) if row else 0
