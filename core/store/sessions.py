"""Sessions (a conversation with one agent) and their messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict, cast

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from core.ids import new_id


class SessionRow(TypedDict):
    id: str
    agent_id: str
    user_id: str | None  # the app's end user the conversation is with (user-scoped memory)
    title: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class MessageRow(TypedDict):
    id: str
    session_id: str
    run_id: str | None
    role: str  # "user" or "assistant"
    content: str
    metadata: dict[str, Any]
    created_at: datetime


COLUMNS = "id, agent_id, user_id, title, metadata, created_at, updated_at"

INSERT_SESSION_SQL = f"""
INSERT INTO sessions (id, org_id, agent_id, user_id, title, metadata)
VALUES (%s, agentos_current_org(), %s, %s, %s, %s) RETURNING {COLUMNS}
"""
GET_SESSION_SQL = f"SELECT {COLUMNS} FROM sessions WHERE id = %s AND deleted_at IS NULL"
LIST_SESSIONS_SQL = f"""
SELECT {COLUMNS} FROM sessions WHERE deleted_at IS NULL
  AND (%(agent_id)s::text IS NULL OR agent_id = %(agent_id)s)
  AND (%(cursor)s::text IS NULL OR id < %(cursor)s)
ORDER BY id DESC LIMIT %(limit)s
"""
DELETE_SESSION_SQL = "UPDATE sessions SET deleted_at = now() WHERE id = %s AND deleted_at IS NULL RETURNING id"

MESSAGE_COLUMNS = "id, session_id, run_id, role, content, metadata, created_at"
LIST_MESSAGES_ASC_SQL = f"""
SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = %(session_id)s
  AND (%(cursor)s::text IS NULL OR id > %(cursor)s)
ORDER BY id ASC LIMIT %(limit)s
"""
LIST_MESSAGES_DESC_SQL = f"""
SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = %(session_id)s
  AND (%(cursor)s::text IS NULL OR id < %(cursor)s)
ORDER BY id DESC LIMIT %(limit)s
"""
INSERT_MESSAGE_SQL = f"""
INSERT INTO messages (id, org_id, session_id, run_id, role, content, metadata)
VALUES (%s, agentos_current_org(), %s, %s, %s, %s, %s) RETURNING {MESSAGE_COLUMNS}
"""


async def create(
    conn: AsyncConnection[DictRow],
    agent_id: str,
    user_id: str | None,
    title: str | None,
    metadata: dict[str, Any],
) -> SessionRow:
    row = await (
        await conn.execute(INSERT_SESSION_SQL, (new_id("session"), agent_id, user_id, title, Jsonb(metadata)))
    ).fetchone()
    assert row is not None
    return cast(SessionRow, row)


async def get(conn: AsyncConnection[DictRow], session_id: str) -> SessionRow | None:
    return cast(SessionRow | None, await (await conn.execute(GET_SESSION_SQL, (session_id,))).fetchone())


async def list_sessions(
    conn: AsyncConnection[DictRow], cursor: str | None, limit: int, agent_id: str | None = None
) -> list[SessionRow]:
    params = {"cursor": cursor, "limit": limit + 1, "agent_id": agent_id}
    return cast(list[SessionRow], await (await conn.execute(LIST_SESSIONS_SQL, params)).fetchall())


async def delete(conn: AsyncConnection[DictRow], session_id: str) -> bool:
    return await (await conn.execute(DELETE_SESSION_SQL, (session_id,))).fetchone() is not None


async def list_messages(
    conn: AsyncConnection[DictRow], session_id: str, cursor: str | None, limit: int, *, ascending: bool = True
) -> list[MessageRow]:
    sql = LIST_MESSAGES_ASC_SQL if ascending else LIST_MESSAGES_DESC_SQL
    params = {"session_id": session_id, "cursor": cursor, "limit": limit + 1}
    return cast(list[MessageRow], await (await conn.execute(sql, params)).fetchall())


async def add_message(
    conn: AsyncConnection[DictRow],
    session_id: str,
    role: str,
    content: str,
    run_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> MessageRow:
    row = await (
        await conn.execute(
            INSERT_MESSAGE_SQL, (new_id("message"), session_id, run_id, role, content, Jsonb(metadata or {}))
        )
    ).fetchone()
    assert row is not None
    return cast(MessageRow, row)
